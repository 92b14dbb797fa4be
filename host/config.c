#include "config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <libconfig.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config_opt.h"
#include "paths.h"
#include "route.h"

/* libconfig 1.5 silently wraps integers of 2^31 and more, so no integer
 * setting may accept more than this; bigger values are written as "4G". */
#define CONFIG_INT_MAX INT32_MAX
#define CONFIG_THREADS_MAX 256
#define CONFIG_DEFAULT_PORT "25"
#define CONFIG_DNS_DEFAULT_PORT "53"
#define CONFIG_HOST_TEXT_MAX 256
#define CONFIG_REDIS_DEFAULT_PORT "6379"
#define CONFIG_THREAD_POOL_MAX 256
/* By default one client address may hold a quarter of a pool's slots: with
 * the default limits (20 sessions per address, 20 slots per pool) one
 * address would otherwise hold the whole pool through DATA for up to
 * data_total, and every other sender would wait for a slot. */
#define POOL_SHARE_DIVISOR 4

static bool is_numeric_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* listen */

static const struct copt tls_sni_opts[] = {
    {.name = "name", .kind = OPT_STRING, FIELD(struct tls_sni_conf, name), .required = true},
    {.name = "cert", .kind = OPT_STRING, FIELD(struct tls_sni_conf, cert), .required = true},
    OSTRING("key", struct tls_sni_conf, key, NULL),
    OEND,
};

static int load_tls_sni(struct copt_loader *ld, const config_setting_t *s, void *obj)
{
    struct listen_conf *l = obj;
    static const struct copt_list spec = {sizeof(struct tls_sni_conf), tls_sni_opts, NULL,
                                          "a group { name = ...; cert = ...; }"};
    return copt_load_list(ld, s, &spec, (void **)&l->tls_sni, &l->ntls_sni);
}

static bool is_tls_protocol(const char *v)
{
    return strcmp(v, "TLSv1.2") == 0 || strcmp(v, "TLSv1.3") == 0;
}

static const struct copt listen_opts[] = {
    {.name = "address",
     .kind = OPT_STRING,
     FIELD(struct listen_conf, address),
     .required = true,
     .valid = is_numeric_ip,
     .expect = "must be a numeric IPv4 or IPv6 address"},
    OPORT("port", struct listen_conf, port, CONFIG_DEFAULT_PORT),
    OBOOL("proxy_protocol", struct listen_conf, proxy_protocol, false),
    ONETLIST("proxy_trusted", struct listen_conf, proxy_trusted),
    OSTRING("tls_cert", struct listen_conf, tls_cert, NULL),
    OSTRING("tls_key", struct listen_conf, tls_key, NULL),
    OBOOL("tls_implicit", struct listen_conf, tls_implicit, false),
    {.name = "tls_min_protocol",
     .kind = OPT_STRING,
     FIELD(struct listen_conf, tls_min_protocol),
     .sdef = "TLSv1.2",
     .valid = is_tls_protocol,
     .expect = "must be \"TLSv1.2\" or \"TLSv1.3\""},
    OSTRING("tls_ciphers", struct listen_conf, tls_ciphers, NULL),
    OSTRING("tls_client_ca", struct listen_conf, tls_client_ca, NULL),
    OCUSTOM("tls_sni", load_tls_sni),
    OEND,
};

static int load_listens(struct copt_loader *ld, const config_setting_t *s, void *obj)
{
    struct sluice_config *cfg = obj;
    static const struct copt_list spec = {sizeof(struct listen_conf), listen_opts, NULL,
                                          "a group { ... }"};
    if (copt_load_list(ld, s, &spec, (void **)&cfg->listens, &cfg->nlistens) < 0)
        return -1;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        struct listen_conf *l = &cfg->listens[i];
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        l->line = (int)config_setting_source_line(e);
        if (l->proxy_protocol && netlist_count(l->proxy_trusted) == 0)
            return copt_fail(ld, e, "'proxy_protocol' needs a non-empty 'proxy_trusted'");
        if (l->tls_key && !l->tls_cert)
            return copt_fail(ld, e, "'tls_key' needs 'tls_cert'");
        if (l->ntls_sni > 0 && !l->tls_cert)
            return copt_fail(ld, e, "'tls_sni' needs 'tls_cert' (the certificate without SNI)");
        if (l->tls_implicit && !l->tls_cert)
            return copt_fail(ld, e, "'tls_implicit' needs 'tls_cert'");
        /* The bytes after the header would be the TLS handshake: not yet. */
        if (l->tls_implicit && l->proxy_protocol)
            return copt_fail(ld, e, "'tls_implicit' with 'proxy_protocol' is not supported");
    }
    return 0;
}

/* pools */

static const struct copt server_opts[] = {
    {.name = "host", .kind = OPT_STRING, FIELD(struct server_conf, host), .required = true},
    OPORT("port", struct server_conf, port, CONFIG_DEFAULT_PORT),
    OINT("weight", struct server_conf, weight, 1, 1000, 1),
    OEND,
};

/* "host", "host:port" or "[v6]:port", with the defaults of the group form. */
static int server_from_string(struct copt_loader *ld, const config_setting_t *e, void *elem)
{
    struct server_conf *srv = elem;
    char host[CONFIG_HOST_TEXT_MAX], port[CONFIG_PORT_TEXT_MAX];
    const char *v = config_setting_get_string(e);
    if (netaddr_split_hostport(v, host, sizeof host, port, sizeof port, CONFIG_DEFAULT_PORT) < 0)
        return copt_fail(ld, e, "'servers': \"%s\" is not \"host\", \"host:port\" or \"[v6]:port\"",
                         v);
    srv->weight = 1;
    if (copt_replace_string(ld, e, &srv->host, host) < 0)
        return -1;
    return copt_replace_string(ld, e, &srv->port, port);
}

static int load_servers(struct copt_loader *ld, const config_setting_t *s, void *obj)
{
    struct pool_conf *pool = obj;
    static const struct copt_list spec = {sizeof(struct server_conf), server_opts,
                                          server_from_string,
                                          "\"host:port\" or a group { host = ...; }"};
    return copt_load_list(ld, s, &spec, (void **)&pool->servers, &pool->nservers);
}

static bool is_tls_mode(const char *v)
{
    return strcmp(v, "off") == 0 || strcmp(v, "opportunistic") == 0 ||
           strcmp(v, "required") == 0;
}

static bool is_nonempty(const char *v) { return v[0] != '\0'; }

static const struct copt pool_opts[] = {
    {.name = "name", .kind = OPT_STRING, FIELD(struct pool_conf, name), .required = true},
    {.name = "servers", .kind = OPT_CUSTOM, .custom = load_servers, .required = true},
    OINT("max_connections", struct pool_conf, max_connections, 1, 100000, 20),
    /* -1: unset, a quarter of max_connections (fill_computed_defaults) */
    OINT("max_connections_per_client", struct pool_conf, max_per_client, 0, 100000, -1),
    ODURATION("wait", struct pool_conf, wait_ms, 0, "30s"),
    OBOOL("xclient", struct pool_conf, xclient, true),
    OBOOL("proxy_protocol", struct pool_conf, proxy_protocol, false),
    OBOOL("smtputf8", struct pool_conf, smtputf8, false),
    OBOOL("allow_untrusted_routing", struct pool_conf, allow_untrusted_routing, false),
    OSTRING("helo_name", struct pool_conf, helo_name, NULL),
    {.name = "tls",
     .kind = OPT_STRING,
     FIELD(struct pool_conf, tls),
     .sdef = "off",
     .valid = is_tls_mode,
     .expect = "must be \"off\", \"opportunistic\" or \"required\""},
    OSTRING("tls_ca", struct pool_conf, tls_ca, NULL),
    /* OpenSSL takes an empty name as "check no name": verification would
     * accept any certificate the CA signed. */
    {.name = "tls_name",
     .kind = OPT_STRING,
     FIELD(struct pool_conf, tls_name),
     .valid = is_nonempty,
     .expect = "must not be empty (the name the backend's certificate must show)"},
    ODURATION("connect_timeout", struct pool_conf, connect_timeout_ms, 1, "30s"),
    ODURATION("command_timeout", struct pool_conf, command_timeout_ms, 1, "5m"),
    ODURATION("final_timeout", struct pool_conf, final_timeout_ms, 1, "5m"),
    ODURATION("noop_interval", struct pool_conf, noop_interval_ms, 1, "60s"),
    ODURATION("down_time", struct pool_conf, down_ms, 0, "30s"),
    OINT("idle_connections", struct pool_conf, idle_max, 0, 100000, 100),
    ODURATION("idle_timeout", struct pool_conf, idle_timeout_ms, 1, "5s"),
    OINT("max_transactions", struct pool_conf, max_transactions, 0, 1000000000, 100),
    OEND,
};

static int load_pools(struct copt_loader *ld, const config_setting_t *s, void *obj)
{
    struct sluice_config *cfg = obj;
    static const struct copt_list spec = {sizeof(struct pool_conf), pool_opts, NULL,
                                          "a group { ... }"};
    if (copt_load_list(ld, s, &spec, (void **)&cfg->pools, &cfg->npools) < 0)
        return -1;
    for (size_t i = 0; i < cfg->npools; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        cfg->pools[i].line = (int)config_setting_source_line(e);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->pools[j].name, cfg->pools[i].name) == 0)
                return copt_fail(ld, config_setting_get_member(e, "name"),
                                 "pool \"%s\" is already defined at line %d", cfg->pools[i].name,
                                 cfg->pools[j].line);
        }
    }
    return 0;
}

/* routes: the match is checked, and the pool resolved, by route_table_build() */

static const struct copt route_opts[] = {
    {.name = "match", .kind = OPT_STRING, FIELD(struct route_conf, match), .required = true},
    {.name = "pool", .kind = OPT_STRING, FIELD(struct route_conf, pool), .required = true},
    OEND,
};

static int load_routes(struct copt_loader *ld, const config_setting_t *s, void *obj)
{
    struct sluice_config *cfg = obj;
    static const struct copt_list spec = {sizeof(struct route_conf), route_opts, NULL,
                                          "a group { ... }"};
    if (config_setting_length(s) == 0 && copt_is_array_like(s))
        return 0; /* "routes = ();" is a valid way to say none */
    if (copt_load_list(ld, s, &spec, (void **)&cfg->routes, &cfg->nroutes) < 0)
        return -1;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        cfg->routes[i].line = (int)config_setting_source_line(e);
    }
    return 0;
}

static int note_default_pool(struct copt_loader *ld, const config_setting_t *s, void *obj)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return copt_fail(ld, s, "'default_pool' must be a string");
    ld->default_pool = s;
    return 0;
}

/* dns */

static bool is_dns_server(const char *v)
{
    char host[INET6_ADDRSTRLEN + 1], port[CONFIG_PORT_TEXT_MAX];
    if (netaddr_split_hostport(v, host, sizeof host, port, sizeof port, CONFIG_DNS_DEFAULT_PORT) <
        0)
        return false;
    return is_numeric_ip(host);
}

static int load_dns_servers(struct copt_loader *ld, const config_setting_t *s, void *obj)
{
    struct dns_conf *dns = &((struct sluice_config *)obj)->dns;
    if (!copt_is_array_like(s))
        return copt_fail(ld, s, "'servers' must be an array like [ \"127.0.0.1:53\" ]");
    size_t n = (size_t)config_setting_length(s);
    dns->servers = calloc(n ? n : 1, sizeof *dns->servers);
    if (dns->servers == NULL)
        return copt_fail(ld, s, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_get_string(e);
        if (v == NULL || !is_dns_server(v))
            return copt_fail(ld, e, "'servers': each entry must be \"ip\" or \"ip:port\"");
        dns->servers[i] = strdup(v);
        if (dns->servers[i] == NULL)
            return copt_fail(ld, e, "out of memory");
        dns->nservers = i + 1;
    }
    return 0;
}

/* the tables of the whole file */

static const char *const log_levels[] = {"err", "warn", "info", "debug", NULL};
static const char *const bare_newline_modes[] = {"reject", "normalize", NULL};

static const struct copt limits_opts[] = {
    OSIZE("max_line_length", struct sluice_config, max_line_length, 512, 1 << 20, "2048"),
    OINT64("max_recipients", struct sluice_config, max_recipients, 1, CONFIG_INT_MAX, 1000),
    OSIZE("max_message_size", struct sluice_config, max_message_size, 1, INT64_MAX, "50M"),
    OINT64("max_errors", struct sluice_config, max_errors, 1, CONFIG_INT_MAX, 20),
    OEND,
};

static const struct copt timeouts_opts[] = {
    ODURATION("command", struct sluice_config, command_timeout_ms, 1, "5m"),
    ODURATION("data_block", struct sluice_config, data_block_timeout_ms, 1, "3m"),
    ODURATION("data_total", struct sluice_config, data_total_timeout_ms, 1, "30m"),
    ODURATION("reverse_lookup", struct sluice_config, reverse_lookup_timeout_ms, 1, "5s"),
    ODURATION("proxy_header", struct sluice_config, proxy_header_timeout_ms, 1, "5s"),
    ODURATION("shutdown", struct sluice_config, shutdown_timeout_ms, 0, "30s"),
    OEND,
};

static const struct copt data_opts[] = {
    {.name = "bare_newline",
     .kind = OPT_ENUM,
     FIELD(struct sluice_config, bare_newline),
     .idef = BARE_NEWLINE_REJECT,
     .choices = bare_newline_modes},
    OSIZE("spool_memory", struct sluice_config, spool_memory, 0, INT64_MAX, "1M"),
    OSTRING("spool_dir", struct sluice_config, spool_dir, "/var/tmp"),
    OEND,
};

static const struct copt dns_opts[] = {
    OCUSTOM("servers", load_dns_servers),
    ODURATION("timeout", struct sluice_config, dns.timeout_ms, 1, "5s"),
    OINT("tries", struct sluice_config, dns.tries, 1, 100, 2),
    OSIZE("cache_memory", struct sluice_config, dns.cache_memory, 0, (int64_t)1 << 30, "4M"),
    ODURATION("cache_max_ttl", struct sluice_config, dns.cache_max_ttl_ms, 0, "1h"),
    ODURATION("cache_negative_ttl", struct sluice_config, dns.cache_negative_ttl_ms, 0, "5m"),
    OEND,
};

/* "ip:port", with a numeric address and an explicit port. */
static bool is_numeric_hostport(const char *v)
{
    char host[INET6_ADDRSTRLEN + 1], port[CONFIG_PORT_TEXT_MAX];
    if (netaddr_split_hostport(v, host, sizeof host, port, sizeof port, NULL) < 0)
        return false;
    return port[0] != '\0' && is_numeric_ip(host);
}

/* "host:port", "host" (port 6379) or the path of a unix socket. */
static bool is_redis_address(const char *v)
{
    char host[CONFIG_HOST_TEXT_MAX], port[CONFIG_PORT_TEXT_MAX];
    return v[0] == '/' || netaddr_split_hostport(v, host, sizeof host, port, sizeof port,
                                                 CONFIG_REDIS_DEFAULT_PORT) == 0;
}

static const char *const store_backends[] = {"lmdb", "redis", NULL};

static const struct copt store_opts[] = {
    {.name = "backend",
     .kind = OPT_ENUM,
     FIELD(struct sluice_config, store.backend),
     .idef = STORE_LMDB,
     .choices = store_backends},
    OSTRING("path", struct sluice_config, store.path, "/var/lib/sluice/store"),
    OSIZE("map_size", struct sluice_config, store.map_size, 1 << 20, INT64_MAX, "256M"),
    {.name = "redis_address",
     .kind = OPT_STRING,
     FIELD(struct sluice_config, store.redis_address),
     .sdef = "127.0.0.1:6379",
     .valid = is_redis_address,
     .expect = "must be \"host:port\" or the path of a unix socket"},
    ODURATION("redis_timeout", struct sluice_config, store.redis_timeout_ms, 1, "1s"),
    OINT("redis_database", struct sluice_config, store.redis_database, 0, CONFIG_INT_MAX, 0),
    OEND,
};

static const struct copt connections_opts[] = {
    OINT64("max_sessions", struct sluice_config, connections.max_sessions, 0, CONFIG_INT_MAX,
           1000),
    OINT64("per_address", struct sluice_config, connections.per_address, 0, CONFIG_INT_MAX, 20),
    OINT64("per_network", struct sluice_config, connections.per_network, 0, CONFIG_INT_MAX, 50),
    OINT("network_v4", struct sluice_config, connections.network_v4, 0, 32, 24),
    OINT("network_v6", struct sluice_config, connections.network_v6, 0, 128, 64),
    OINT64("rate", struct sluice_config, connections.rate, 0, CONFIG_INT_MAX, 60),
    ODURATION("rate_interval", struct sluice_config, connections.rate_interval_ms, 1, "1m"),
    ONETLIST("allowlist", struct sluice_config, connections.allowlist),
    OEND,
};

static const struct copt root_opts[] = {
    OSTRING("hostname", struct sluice_config, hostname, NULL),
    OINT("threads", struct sluice_config, threads, 0, CONFIG_THREADS_MAX, 0),
    {.name = "log_level",
     .kind = OPT_STRING,
     FIELD(struct sluice_config, log_level),
     .sdef = "info",
     .choices = log_levels},
    OSTRING("conf_dir", struct sluice_config, conf_dir, NULL),
    OSTRING("user", struct sluice_config, user, "sluice"),
    OSTRING("group", struct sluice_config, group, NULL),
    OBOOL("run_as_root", struct sluice_config, run_as_root, false),
    OSTRING("state_file", struct sluice_config, state_file, "/run/sluice/running.state"),
    {.name = "listen", .kind = OPT_CUSTOM, .custom = load_listens, .required = true},
    ONETLIST("relay_networks", struct sluice_config, relay_networks),
    {.name = "pools", .kind = OPT_CUSTOM, .custom = load_pools, .required = true},
    OCUSTOM("routes", load_routes),
    OSTRING("route_table", struct sluice_config, route_table_file, NULL),
    OCUSTOM("default_pool", note_default_pool),
    OGROUP("limits", limits_opts),
    OGROUP("timeouts", timeouts_opts),
    OGROUP("data", data_opts),
    OGROUP("dns", dns_opts),
    OGROUP("store", store_opts),
    OGROUP("connections", connections_opts),
    {.name = "metrics_listen",
     .kind = OPT_STRING,
     FIELD(struct sluice_config, metrics_listen),
     .valid = is_numeric_hostport,
     .expect = "must be \"ip:port\" with a numeric address"},
    OINT("thread_pool_size", struct sluice_config, thread_pool_size, 1, CONFIG_THREAD_POOL_MAX, 4),
    OSTRING("plugin_dir", struct sluice_config, plugin_dir, NULL), /* paths_plugin_dir() */
    ODURATION("plugin_timeout", struct sluice_config, plugin_timeout_ms, 1, "10s"),
    OEND,
};

/* ---- paths and computed defaults ---- */

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* A relative path in sluice.conf is relative to the directory of sluice.conf. */
static char *resolve_path(const char *base_dir, const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    size_t len = strlen(base_dir) + strlen(path) + 2;
    char *out = malloc(len);
    if (out)
        snprintf(out, len, "%s/%s", base_dir, path);
    return out;
}

/* Replaces a relative *path with one under dir; NULL stays NULL. */
static int resolve_in_place(const char *dir, char **path)
{
    if (*path == NULL)
        return 0;
    char *resolved = resolve_path(dir, *path);
    if (resolved == NULL)
        return -1;
    free(*path);
    *path = resolved;
    return 0;
}

static int resolve_paths(struct copt_loader *ld, struct sluice_config *cfg)
{
    char *dir = dir_of(cfg->path);
    if (dir == NULL)
        return copt_fail(ld, NULL, "out of memory");
    int rc = 0;
    if (cfg->conf_dir == NULL)
        rc = (cfg->conf_dir = strdup("conf.d")) ? 0 : -1;
    if (rc == 0)
        rc = resolve_in_place(dir, &cfg->conf_dir);
    if (rc == 0)
        rc = resolve_in_place(dir, &cfg->route_table_file);
    if (rc == 0)
        rc = resolve_in_place(dir, &cfg->plugin_dir);
    if (rc == 0)
        rc = resolve_in_place(dir, &cfg->store.path);
    if (rc == 0)
        rc = resolve_in_place(dir, &cfg->spool_dir);
    if (rc == 0)
        rc = resolve_in_place(dir, &cfg->state_file);
    free(dir);
    return rc == 0 ? 0 : copt_fail(ld, NULL, "out of memory");
}

static int fill_computed_defaults(struct copt_loader *ld, struct sluice_config *cfg)
{
    if (cfg->hostname == NULL) {
        char name[CONFIG_HOST_TEXT_MAX] = "";
        if (gethostname(name, sizeof name - 1) < 0 || name[0] == '\0')
            snprintf(name, sizeof name, "localhost");
        if (copt_replace_string(ld, NULL, &cfg->hostname, name) < 0)
            return -1;
    }
    if (cfg->plugin_dir == NULL &&
        copt_replace_string(ld, NULL, &cfg->plugin_dir, paths_plugin_dir()) < 0)
        return -1;
    if (cfg->threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->threads = cores < 1 ? 1 : cores > CONFIG_THREADS_MAX ? CONFIG_THREADS_MAX : (int)cores;
    }
    for (size_t i = 0; i < cfg->npools; i++) {
        struct pool_conf *p = &cfg->pools[i];
        if (p->helo_name == NULL && copt_replace_string(ld, NULL, &p->helo_name, cfg->hostname) < 0)
            return -1;
        if (p->max_per_client < 0)
            p->max_per_client = (p->max_connections + POOL_SHARE_DIVISOR - 1) / POOL_SHARE_DIVISOR;
    }
    cfg->default_pool = -1;
    if (ld->default_pool) {
        const char *name = config_setting_get_string(ld->default_pool);
        cfg->default_pool = config_pool_index(cfg, name);
        if (cfg->default_pool < 0)
            return copt_fail(ld, ld->default_pool, "'default_pool': no pool is named \"%s\"", name);
    }
    return resolve_paths(ld, cfg);
}

/* ---- files ---- */

static int read_file(struct copt_loader *ld, config_t *cf, const char *path)
{
    config_init(cf);
    config_set_options(cf, CONFIG_OPTION_AUTOCONVERT);
    char *dir = dir_of(path);
    if (dir == NULL)
        return copt_fail(ld, NULL, "out of memory");
    config_set_include_dir(cf, dir);
    errno = 0;
    int ok = config_read_file(cf, path);
    int saved = errno;
    free(dir); /* libconfig keeps its own copy */
    if (ok)
        return 0;
    if (config_error_type(cf) == CONFIG_ERR_FILE_IO)
        snprintf(ld->err, ld->errlen, "%s: cannot read: %s", path,
                 saved ? strerror(saved) : config_error_text(cf));
    else
        copt_report_syntax_error(ld, cf);
    return -1;
}

static const struct copt entry_opts[] = {
    {.name = "plugin",
     .kind = OPT_STRING,
     FIELD(struct chain_entry_conf, plugin),
     .required = true},
    OBOOL("enabled", struct chain_entry_conf, enabled, true),
    OEND,
};

/* The plugin's own settings share the file, so only ours are checked here. */
static int load_entry(struct copt_loader *ld, const char *dir, const char *file_name,
                      struct chain_entry_conf *e)
{
    size_t stem = strlen(file_name) - strlen(".conf");
    e->name = strndup(file_name, stem);
    e->file = resolve_path(dir, file_name);
    config_t *cf = calloc(1, sizeof *cf);
    if (e->name == NULL || e->file == NULL || cf == NULL) {
        free(cf);
        return copt_fail(ld, NULL, "out of memory");
    }
    ld->path = e->file;
    if (read_file(ld, cf, e->file) < 0) {
        config_destroy(cf);
        free(cf);
        return -1;
    }
    e->settings = cf;
    const config_setting_t *root = config_root_setting(cf);
    for (const struct copt *o = entry_opts; o->name; o++) {
        if (copt_set_default(ld, root, o, e) < 0)
            return -1;
        const config_setting_t *s = config_setting_get_member(root, o->name);
        if (s == NULL && o->required)
            return copt_fail(ld, root, "missing '%s': a chain entry names its plugin", o->name);
        if (s != NULL && copt_read(ld, s, o, e) < 0)
            return -1;
    }
    return 0;
}

static bool is_entry_file(const char *name)
{
    size_t len = strlen(name);
    return name[0] != '.' && len > strlen(".conf") &&
           strcmp(name + len - strlen(".conf"), ".conf") == 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The *.conf names of dir, sorted; a missing directory has none. */
static int list_entry_files(struct copt_loader *ld, const char *dir, char ***out, size_t *count)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : copt_fail(ld, NULL, "conf_dir %s: %s", dir, strerror(errno));
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_entry_file(de->d_name))
            continue;
        if (*count == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(*out, cap * sizeof *grown);
            if (grown == NULL)
                break;
            *out = grown;
        }
        if (((*out)[*count] = strdup(de->d_name)) == NULL)
            break;
        (*count)++;
    }
    bool complete = de == NULL;
    closedir(d);
    if (!complete)
        return copt_fail(ld, NULL, "out of memory");
    if (*count > 0)
        qsort(*out, *count, sizeof **out, compare_names);
    return 0;
}

static int load_entries(struct copt_loader *ld, struct sluice_config *cfg)
{
    char **names;
    size_t n;
    if (list_entry_files(ld, cfg->conf_dir, &names, &n) < 0) {
        return -1;
    }
    int rc = 0;
    if (n > 0) {
        cfg->entries = calloc(n, sizeof *cfg->entries);
        rc = cfg->entries ? 0 : copt_fail(ld, NULL, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        cfg->nentries = i + 1;
        rc = load_entry(ld, cfg->conf_dir, names[i], &cfg->entries[i]);
        if (rc == 0 && (cfg->entries[i].config_dir = dir_of(cfg->path)) == NULL)
            rc = copt_fail(ld, NULL, "out of memory");
    }
    free_names(names, n);
    return rc;
}

static int load_main(struct copt_loader *ld, struct sluice_config *cfg)
{
    config_t cf;
    if (read_file(ld, &cf, cfg->path) < 0) {
        config_destroy(&cf);
        return -1;
    }
    const config_setting_t *root = config_root_setting(&cf);
    int rc = copt_load_section(ld, root, root_opts, cfg);
    if (rc == 0)
        rc = fill_computed_defaults(ld, cfg);
    config_destroy(&cf);
    return rc;
}

int config_load(const char *path, struct sluice_config **out, char *err, size_t errlen)
{
    struct copt_loader ld = {.path = path, .err = err, .errlen = errlen};
    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    struct sluice_config *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL || (cfg->path = strdup(path)) == NULL) {
        free(cfg);
        return copt_fail(&ld, NULL, "out of memory");
    }
    cfg->default_pool = -1;
    int rc = load_main(&ld, cfg);
    if (rc == 0)
        rc = load_entries(&ld, cfg);
    if (rc == 0) {
        cfg->route_table = route_table_build(cfg, err, errlen);
        rc = cfg->route_table ? 0 : -1;
    }
    if (rc < 0) {
        config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

void config_keep_listeners(struct sluice_config *next, struct sluice_config *running)
{
    struct listen_conf *listens = next->listens;
    size_t nlistens = next->nlistens;
    int threads = next->threads;
    next->listens = running->listens;
    next->nlistens = running->nlistens;
    next->threads = running->threads;
    running->listens = listens;
    running->nlistens = nlistens;
    running->threads = threads;
}

int config_pool_index(const struct sluice_config *cfg, const char *name)
{
    for (size_t i = 0; name && i < cfg->npools; i++) {
        if (cfg->pools[i].name && strcmp(cfg->pools[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* ---- freeing ---- */

static void free_pool(struct pool_conf *p)
{
    for (size_t i = 0; i < p->nservers; i++) {
        free(p->servers[i].host);
        free(p->servers[i].port);
    }
    free(p->servers);
    free(p->name);
    free(p->helo_name);
    free(p->tls);
    free(p->tls_ca);
    free(p->tls_name);
}

static void free_entry(struct chain_entry_conf *e)
{
    free(e->name);
    free(e->file);
    free(e->config_dir);
    free(e->plugin);
    if (e->settings) {
        config_destroy(e->settings);
        free(e->settings);
    }
}

void config_free(struct sluice_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        free(cfg->listens[i].address);
        free(cfg->listens[i].port);
        netlist_free(cfg->listens[i].proxy_trusted);
        free(cfg->listens[i].tls_cert);
        free(cfg->listens[i].tls_key);
        free(cfg->listens[i].tls_min_protocol);
        free(cfg->listens[i].tls_ciphers);
        free(cfg->listens[i].tls_client_ca);
        for (size_t k = 0; k < cfg->listens[i].ntls_sni; k++) {
            free(cfg->listens[i].tls_sni[k].name);
            free(cfg->listens[i].tls_sni[k].cert);
            free(cfg->listens[i].tls_sni[k].key);
        }
        free(cfg->listens[i].tls_sni);
    }
    free(cfg->listens);
    for (size_t i = 0; i < cfg->npools; i++)
        free_pool(&cfg->pools[i]);
    free(cfg->pools);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        free(cfg->routes[i].match);
        free(cfg->routes[i].pool);
    }
    free(cfg->routes);
    for (size_t i = 0; i < cfg->dns.nservers; i++)
        free(cfg->dns.servers[i]);
    free(cfg->dns.servers);
    for (size_t i = 0; i < cfg->nentries; i++)
        free_entry(&cfg->entries[i]);
    free(cfg->entries);
    netlist_free(cfg->relay_networks);
    netlist_free(cfg->connections.allowlist);
    free(cfg->store.path);
    free(cfg->store.redis_address);
    free(cfg->metrics_listen);
    free(cfg->plugin_dir);
    route_table_free(cfg->route_table);
    free(cfg->path);
    free(cfg->conf_dir);
    free(cfg->hostname);
    free(cfg->log_level);
    free(cfg->user);
    free(cfg->group);
    free(cfg->state_file);
    free(cfg->route_table_file);
    free(cfg->spool_dir);
    free(cfg);
}
