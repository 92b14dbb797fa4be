/* The configuration: sluice.conf plus the *.conf files of conf.d, parsed with libconfig.
 * One immutable struct sluice_config per loaded generation; the daemon never
 * modifies it after config_load() returns. */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "netaddr.h"

struct route_table;

enum bare_newline_mode {
    BARE_NEWLINE_REJECT,    /* a message with a bare CR or LF is refused (default) */
    BARE_NEWLINE_NORMALIZE, /* bare CR / LF become CRLF, as body text */
};

/* Another certificate of a listener, chosen when the client asks for name
 * (SNI). */
struct tls_sni_conf {
    char *name; /* "mx2.example.org" */
    char *cert;
    char *key;  /* default: cert */
};

struct listen_conf {
    char *address;               /* numeric IP, e.g. "127.0.0.1" or "::1" */
    char *port;                  /* e.g. "2525" */
    bool proxy_protocol;         /* PROXY v1/v2 header required first */
    struct netlist *proxy_trusted; /* who may send it; others are closed */
    char *tls_cert;              /* PEM certificate chain: STARTTLS is offered; NULL: no TLS */
    char *tls_key;               /* its private key (PEM), default: tls_cert */
    bool tls_implicit;           /* TLS from the first byte (RFC 8314, port 465), no STARTTLS */
    char *tls_min_protocol;      /* "TLSv1.2" (default) or "TLSv1.3" */
    char *tls_ciphers;           /* OpenSSL cipher list for TLS 1.2, NULL: OpenSSL's default */
    char *tls_client_ca;         /* ask clients for a certificate, verify it with these CAs */
    struct tls_sni_conf *tls_sni; /* more certificates, by the name the client asks for */
    size_t ntls_sni;
    int line;                    /* where it was configured, for messages */
};

struct server_conf {
    char *host; /* name or numeric address */
    char *port; /* default "25" */
    int weight; /* default 1, 1..1000 */
};

struct pool_conf {
    char *name;
    struct server_conf *servers;
    size_t nservers;
    int max_connections;       /* cap for the whole instance, default 20 */
    int max_per_client;        /* slots one client address may hold; default a quarter of
                                * max_connections (rounded up), 0: no per-client cap */
    int64_t wait_ms;           /* how long a session waits for a slot, default 30s */
    bool xclient;              /* send XCLIENT when the backend offers it, default true */
    bool proxy_protocol;       /* send a PROXY v2 header first, default false */
    bool smtputf8;             /* every server of this pool accepts SMTPUTF8, default false */
    bool allow_untrusted_routing; /* %, !, @ local parts from untrusted clients, default false */
    char *helo_name;           /* our EHLO name towards it; default: hostname */
    char *tls;                 /* "off" (default), "opportunistic", "required" */
    char *tls_ca;              /* CA file to verify servers with; default: the system's */
    char *tls_name;            /* the name a server's certificate must carry; default: its host */
    int64_t connect_timeout_ms; /* default 30s */
    int64_t command_timeout_ms; /* banner, EHLO, XCLIENT, MAIL, RCPT, RSET, NOOP, DATA; default 5m */
    int64_t final_timeout_ms;  /* the reply to the end of message, default 5m */
    int64_t noop_interval_ms;  /* keep-alive while the client uploads, default 60s */
    int64_t down_ms;           /* a server that failed a connect is skipped this long, default 30s */
    int idle_max;              /* idle connections kept per loop thread, default 100; 0: no reuse */
    int64_t idle_timeout_ms;   /* how long one is kept idle, default 5s */
    int max_transactions;      /* transactions per connection, default 100; 0: no limit */
    int line;
};

struct route_conf {
    char *match; /* "user@example.com", "example.com" or "*.example.com" */
    char *pool;
    int line;
};

struct dns_conf {
    char **servers; /* "ip" or "ip:port"; empty: /etc/resolv.conf */
    size_t nservers;
    int64_t timeout_ms; /* per query, default 5s */
    int tries;          /* default 2 */
    int64_t cache_memory;          /* the answers kept, default "4M"; 0: none */
    int64_t cache_max_ttl_ms;      /* longest an answer is kept, default "1h" */
    int64_t cache_negative_ttl_ms; /* longest a "no such name/data" is kept, default "5m" */
};

enum store_backend { STORE_LMDB, STORE_REDIS };

/* The key/value store behind the SDK's sluice_kv_* (group "store"). */
struct store_conf {
    enum store_backend backend; /* "lmdb" (default) or "redis" */
    char *path;                 /* LMDB directory, default "/var/lib/sluice/store" */
    int64_t map_size;           /* LMDB map size, default "256M" */
    char *redis_address;        /* "127.0.0.1:6379" (default) or "/run/redis/redis.sock" */
    int64_t redis_timeout_ms;   /* per command, default 1s */
    int redis_database;         /* SELECT, default 0 */
};

/* Connection limits, checked at accept on the real client address (group
 * "connections"). 0 disables a limit. */
struct connection_conf {
    int64_t max_sessions;    /* all sessions of the instance, default 1000 */
    int64_t per_address;     /* concurrent sessions per client address, default 20 */
    int64_t per_network;     /* per /network_v4 or /network_v6, default 50 */
    int network_v4;          /* prefix length, default 24 */
    int network_v6;          /* prefix length, default 64 */
    int64_t rate;            /* new connections per address per rate_interval, default 60 */
    int64_t rate_interval_ms;/* default 1m */
    struct netlist *allowlist; /* exempt from every limit */
};

/* One conf.d file: a chain entry. Filled in by config, interpreted by the
 * plugin host. */
struct chain_entry_conf {
    char *name;   /* file stem: "20-dnsbl" */
    char *file;   /* full path */
    char *config_dir; /* directory of sluice.conf: relative paths in the entry resolve here */
    char *plugin; /* "dnsbl", "/path/x.so" or "lua" */
    bool enabled;
    void *settings; /* the libconfig config_t of the file (owned) */
};

struct sluice_config {
    char *path;      /* sluice.conf */
    char *conf_dir;  /* directory of conf.d entries; default: <dir of sluice.conf>/conf.d */
    char *hostname;  /* banner and EHLO name; default: gethostname() */
    int threads;     /* loop threads; 0 in the file means one per core */
    char *log_level; /* "err", "warn", "info" (default), "debug" */
    char *user;       /* the worker's user, default "sluice" */
    char *group;      /* the worker's group; NULL: the user's primary group */
    bool run_as_root; /* the worker keeps root: explicit, and logged */
    char *state_file; /* the running restart-only settings, for sluice -t */

    struct listen_conf *listens;
    size_t nlistens;

    struct netlist *relay_networks; /* trusted clients may relay anywhere with default_pool */

    struct pool_conf *pools;
    size_t npools;
    struct route_conf *routes;
    size_t nroutes;
    char *route_table_file;  /* "address-or-domain pool" lines; optional */
    int default_pool;        /* index into pools, or -1 */
    struct route_table *route_table; /* built from routes + route_table_file */

    /* limits */
    int64_t max_line_length;  /* command line incl. CRLF, default 2048 */
    int64_t max_recipients;   /* per transaction, default 1000 */
    int64_t max_message_size; /* default 50M; advertised in SIZE */
    int64_t max_errors;       /* bad commands before 421, default 20 */

    /* client timeouts (RFC 5321 4.5.3.2) */
    int64_t command_timeout_ms;    /* the whole wait for one command line, default 5m */
    int64_t proxy_header_timeout_ms; /* the whole wait for the PROXY header, default 5s */
    int64_t data_block_timeout_ms; /* between DATA chunks, default 3m */
    int64_t data_total_timeout_ms; /* the whole upload, default 30m */
    int64_t reverse_lookup_timeout_ms; /* FCrDNS from accept (what waits for it), default 5s */
    int64_t shutdown_timeout_ms; /* SIGTERM: sessions may finish this long, default 30s */

    /* data */
    int64_t spool_memory;  /* bytes kept in memory before spilling to a file, default 1M */
    char *spool_dir;       /* default "/var/tmp" */
    enum bare_newline_mode bare_newline;

    struct dns_conf dns;
    struct store_conf store;
    struct connection_conf connections;
    char *metrics_listen;  /* "127.0.0.1:9125": Prometheus text on /metrics; NULL: off */
    int thread_pool_size;  /* blocking work threads, default 4 */
    char *plugin_dir;      /* shipped plugins; default paths_plugin_dir() */
    int64_t plugin_timeout_ms; /* default pending timeout of an entry, 10s */

    struct chain_entry_conf *entries;
    size_t nentries;
};

/* Loads and checks path and its conf.d. On failure returns -1 and writes
 * "file:line: what is wrong" (or "file: what is wrong") into err. */
int config_load(const char *path, struct sluice_config **out, char *err, size_t errlen);
void config_free(struct sluice_config *cfg);

/* "30s", "10m", "2h", "36d", "250ms" or a plain number of milliseconds. */
int config_parse_duration(const char *s, int64_t *ms);
/* "25M", "512K", "1G" (binary units) or a plain number of bytes. */
int config_parse_size(const char *s, int64_t *bytes);

/* The listening sockets follow the configuration sluice started with:
 * next takes running's listen entries and thread count (a swap, so each
 * still frees what it holds). */
void config_keep_listeners(struct sluice_config *next, struct sluice_config *running);

/* Index of the pool named name, or -1. */
int config_pool_index(const struct sluice_config *cfg, const char *name);

#endif
