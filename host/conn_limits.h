/* Connection limits: sessions of the instance, per client address, per
 * client network, and a per-address rate of new connections (token bucket).
 * One object per worker, shared by every loop thread (one mutex inside).
 * Checked on the real client address (after a PROXY header), before any
 * plugin runs. */
#ifndef SLUICE_CONN_LIMITS_H
#define SLUICE_CONN_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct connection_conf;
struct limits;

enum limits_verdict {
    LIMITS_OK,
    LIMITS_OVER_TOTAL,   /* max_sessions */
    LIMITS_OVER_ADDRESS, /* per_address */
    LIMITS_OVER_NETWORK, /* per_network */
    LIMITS_OVER_RATE,    /* rate per rate_interval */
    LIMITS_VERDICT_COUNT
};

/* What the admission of one session counted, so that its release counts
 * out exactly that, whatever a reload changed meanwhile (the allowlist, a
 * limit switched off or on, the network prefixes). */
struct limits_ticket {
    bool total;         /* counted in the instance's total: not allowlisted */
    bool address;       /* counted in its address's entry */
    bool network;       /* counted in its network's entry */
    uint64_t networks;  /* the network table it was counted in (a new prefix starts another) */
};

/* Addresses (and networks) tracked at most; beyond, new clients are admitted
 * untracked, so a flood of distinct sources cannot exhaust memory. */
#define LIMITS_MAX_TRACKED 100000

/* c must outlive the object (it is the worker's configuration). NULL when
 * out of memory. */
struct limits *limits_new(const struct connection_conf *c);
void limits_free(struct limits *l);

/* After a reload: the new limits apply from the next admission; the sessions
 * counted so far stay counted (a changed network prefix restarts the network
 * counts). c replaces the previous configuration, which may be freed once
 * this returns. Any thread. */
void limits_reconfigure(struct limits *l, const struct connection_conf *c);

/* Counts a new session of client in, or refuses it: LIMITS_OK, or the limit
 * it is over with a one-line explanation in why ("too many connections from
 * 192.0.2.1: 5"). Allowlisted clients are always admitted and never counted.
 * A v4-mapped IPv6 address counts as the IPv4 one. *ticket says what was
 * counted (nothing unless LIMITS_OK); the session keeps it for its release.
 * Any thread. */
enum limits_verdict limits_admit(struct limits *l, const struct sockaddr *client, char *why,
                                 size_t whylen, struct limits_ticket *ticket);
/* The same at a given time of a monotonic clock in milliseconds (tests). */
enum limits_verdict limits_admit_at(struct limits *l, const struct sockaddr *client, char *why,
                                    size_t whylen, uint64_t now_ms, struct limits_ticket *ticket);

/* Counts out a session that limits_admit admitted with ticket: what was
 * counted then, not what the configuration of now would count. Any thread. */
void limits_release(struct limits *l, const struct sockaddr *client,
                    const struct limits_ticket *ticket);
void limits_release_at(struct limits *l, const struct sockaddr *client,
                       const struct limits_ticket *ticket, uint64_t now_ms);

/* "total", "address", "network", "rate" ("ok" for LIMITS_OK): for logs and
 * metric labels. */
const char *limits_verdict_name(enum limits_verdict v);

/* Introspection for tests and metrics: sessions counted in, sessions of the
 * client's address and of its network, addresses tracked, refusals so far. */
int64_t limits_total(struct limits *l);
int64_t limits_address_sessions(struct limits *l, const struct sockaddr *client);
int64_t limits_network_sessions(struct limits *l, const struct sockaddr *client);
size_t limits_tracked_addresses(struct limits *l);
uint64_t limits_refused(struct limits *l, enum limits_verdict v);

#endif
