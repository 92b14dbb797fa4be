#include "conn_limits.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "netaddr.h"
#include "mstime.h"

#define LIMITS_INITIAL_BUCKETS 256
/* Idle entries are swept at most this often (and at least once per
 * rate_interval, after which every idle bucket is full again). */
#define LIMITS_SWEEP_MIN_MS 1000

/* An address (plen 128 or 32) or a network prefix; v4 stored in addr[0..3]. */
struct limits_key {
    uint8_t family; /* 4 or 6 */
    uint8_t plen;
    uint8_t addr[16];
};

struct limits_entry {
    struct limits_entry *next;
    struct limits_key key;
    int64_t sessions;
    double tokens;      /* rate bucket, addresses only */
    uint64_t refill_ms; /* when tokens was last brought up to date */
};

struct limits_table {
    struct limits_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
};

struct limits {
    const struct connection_conf *conf;
    pthread_mutex_t mu;
    struct limits_table addresses;
    struct limits_table networks;
    uint64_t seed; /* per process, so nobody can pick colliding sources */
    uint64_t networks_epoch; /* bumped when a new prefix restarts the network table */
    int64_t total;
    uint64_t last_sweep_ms;
    bool full_logged;
    atomic_uint_least64_t refused[LIMITS_VERDICT_COUNT];
};

static const char *const limits_verdict_names[LIMITS_VERDICT_COUNT] = {
    [LIMITS_OK] = "ok",
    [LIMITS_OVER_TOTAL] = "total",
    [LIMITS_OVER_ADDRESS] = "address",
    [LIMITS_OVER_NETWORK] = "network",
    [LIMITS_OVER_RATE] = "rate",
};

const char *limits_verdict_name(enum limits_verdict v)
{
    return (unsigned)v < LIMITS_VERDICT_COUNT ? limits_verdict_names[v] : "?";
}

/* ---- keys ---------------------------------------------------------------- */

static void limits_mask(uint8_t *addr, int len, int plen)
{
    for (int i = 0; i < len; i++) {
        int bits = plen - i * 8;
        if (bits >= 8)
            continue;
        addr[i] &= bits <= 0 ? 0 : (uint8_t)(0xff << (8 - bits));
    }
}

/* The key of client's address (network false) or of its network. Returns
 * -1 for an address family that is not IP. */
static int limits_key_of(const struct limits *l, const struct sockaddr *sa, bool network,
                         struct limits_key *k)
{
    memset(k, 0, sizeof *k);
    if (sa->sa_family == AF_INET) {
        k->family = 4;
        memcpy(k->addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            k->family = 4;
            memcpy(k->addr, &a6->s6_addr[12], 4);
        } else {
            k->family = 6;
            memcpy(k->addr, a6->s6_addr, 16);
        }
    } else {
        return -1;
    }
    int len = k->family == 4 ? 4 : 16;
    k->plen = (uint8_t)(len * 8);
    if (network) {
        k->plen = (uint8_t)(k->family == 4 ? l->conf->network_v4 : l->conf->network_v6);
        limits_mask(k->addr, len, k->plen);
    }
    return 0;
}

static const char *limits_key_text(const struct limits_key *k, char *buf, size_t buflen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (k->family == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, k->addr, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, k->addr, 16);
    }
    char ip[64];
    netaddr_ntop((struct sockaddr *)&ss, ip, sizeof ip);
    if (k->plen == (k->family == 4 ? 32 : 128))
        snprintf(buf, buflen, "%s", ip);
    else
        snprintf(buf, buflen, "%s/%u", ip, (unsigned)k->plen);
    return buf;
}

/* ---- the hash tables ------------------------------------------------------ */

static size_t limits_hash(const struct limits *l, const struct limits_table *t,
                          const struct limits_key *k)
{
    /* FNV-1a, seeded, then a final mix so the low bits depend on every byte. */
    uint64_t h = 14695981039346656037ULL ^ l->seed;
    const uint8_t *p = (const uint8_t *)k;
    for (size_t i = 0; i < sizeof *k; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (size_t)h & (t->nbuckets - 1);
}

static int limits_table_init(struct limits_table *t)
{
    t->nbuckets = LIMITS_INITIAL_BUCKETS;
    t->count = 0;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    if (!t->buckets)
        t->nbuckets = 0; /* tracks nothing */
    return t->buckets ? 0 : -1;
}

static void limits_table_free(struct limits_table *t)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct limits_entry *e = t->buckets[i];
        while (e) {
            struct limits_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(t->buckets);
}

static void limits_table_grow(struct limits *l, struct limits_table *t)
{
    struct limits_table bigger = {.nbuckets = t->nbuckets * 2, .count = t->count};
    bigger.buckets = calloc(bigger.nbuckets, sizeof *bigger.buckets);
    if (!bigger.buckets)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct limits_entry *e = t->buckets[i];
        while (e) {
            struct limits_entry *next = e->next;
            size_t b = limits_hash(l, &bigger, &e->key);
            e->next = bigger.buckets[b];
            bigger.buckets[b] = e;
            e = next;
        }
    }
    free(t->buckets);
    *t = bigger;
}

static struct limits_entry *limits_table_find(const struct limits *l,
                                              const struct limits_table *t,
                                              const struct limits_key *k)
{
    if (!t->buckets)
        return NULL;
    for (struct limits_entry *e = t->buckets[limits_hash(l, t, k)]; e; e = e->next)
        if (memcmp(&e->key, k, sizeof *k) == 0)
            return e;
    return NULL;
}

static void limits_table_remove(struct limits *l, struct limits_table *t, struct limits_entry *e)
{
    struct limits_entry **pp = &t->buckets[limits_hash(l, t, &e->key)];
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = e->next;
        t->count--;
        free(e);
    }
}

/* ---- token buckets and idle entries --------------------------------------- */

static double limits_capacity(const struct limits *l)
{
    return (double)l->conf->rate;
}

static void limits_refill(const struct limits *l, struct limits_entry *e, uint64_t now)
{
    if (l->conf->rate <= 0 || now <= e->refill_ms)
        return;
    double gained = (double)(now - e->refill_ms) * (double)l->conf->rate /
                    (double)l->conf->rate_interval_ms;
    e->tokens += gained;
    if (e->tokens > limits_capacity(l))
        e->tokens = limits_capacity(l);
    e->refill_ms = now;
}

/* An entry that holds no session and would admit a burst as a new one would
 * carries no information: forget it. */
static bool limits_entry_idle(const struct limits *l, const struct limits_entry *e)
{
    return e->sessions <= 0 && (l->conf->rate <= 0 || e->tokens >= limits_capacity(l));
}

static void limits_sweep_table(struct limits *l, struct limits_table *t, uint64_t now)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct limits_entry **pp = &t->buckets[i];
        while (*pp) {
            struct limits_entry *e = *pp;
            limits_refill(l, e, now);
            if (limits_entry_idle(l, e)) {
                *pp = e->next;
                t->count--;
                free(e);
            } else {
                pp = &e->next;
            }
        }
    }
}

static bool limits_table_full(const struct limits_table *t)
{
    return t->count >= LIMITS_MAX_TRACKED;
}

/* Once per rate_interval; and, while a table is at its cap, as often as
 * LIMITS_SWEEP_MIN_MS allows: the entries of sources seen once turn idle
 * when their bucket is full again (a second at the default rate), and a
 * flood of one-off sources (an IPv6 /64 walked address by address) must
 * not leave every new client untracked until the interval is over. */
static void limits_sweep_if_due(struct limits *l, uint64_t now)
{
    uint64_t period = (uint64_t)l->conf->rate_interval_ms;
    if (period < LIMITS_SWEEP_MIN_MS ||
        limits_table_full(&l->addresses) || limits_table_full(&l->networks))
        period = LIMITS_SWEEP_MIN_MS;
    if (now < l->last_sweep_ms + period)
        return;
    l->last_sweep_ms = now;
    limits_sweep_table(l, &l->addresses, now);
    limits_sweep_table(l, &l->networks, now);
}

/* The entry of k, created when absent; NULL when the table is at its cap
 * (logged once) or out of memory: the client is then not tracked. */
static struct limits_entry *limits_entry_get(struct limits *l, struct limits_table *t,
                                             const struct limits_key *k, uint64_t now)
{
    struct limits_entry *e = limits_table_find(l, t, k);
    if (e) {
        limits_refill(l, e, now);
        return e;
    }
    if (!t->buckets)
        return NULL;
    if (limits_table_full(t)) {
        if (!l->full_logged)
            log_warn(NULL, "connection limits: %d clients tracked, newer ones are admitted "
                           "untracked", LIMITS_MAX_TRACKED);
        l->full_logged = true;
        return NULL;
    }
    e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->key = *k;
    e->tokens = limits_capacity(l);
    e->refill_ms = now;
    if (t->count >= t->nbuckets)
        limits_table_grow(l, t);
    size_t b = limits_hash(l, t, k);
    e->next = t->buckets[b];
    t->buckets[b] = e;
    t->count++;
    return e;
}

/* ---- admission ------------------------------------------------------------- */

struct limits_lookup {
    struct limits_key addr_key, net_key;
    struct limits_entry *addr, *net;
};

static bool limits_tracks_addresses(const struct limits *l)
{
    return l->conf->per_address > 0 || l->conf->rate > 0;
}

static bool limits_tracks_networks(const struct limits *l)
{
    return l->conf->per_network > 0;
}

static enum limits_verdict limits_check(struct limits *l, struct limits_lookup *q, char *why,
                                        size_t whylen)
{
    const struct connection_conf *c = l->conf;
    char text[80];
    if (q->addr && c->per_address > 0 && q->addr->sessions >= c->per_address) {
        snprintf(why, whylen, "too many connections from %s: %lld",
                 limits_key_text(&q->addr_key, text, sizeof text), (long long)q->addr->sessions);
        return LIMITS_OVER_ADDRESS;
    }
    if (q->net && q->net->sessions >= c->per_network) {
        snprintf(why, whylen, "too many connections from %s: %lld",
                 limits_key_text(&q->net_key, text, sizeof text), (long long)q->net->sessions);
        return LIMITS_OVER_NETWORK;
    }
    if (q->addr && c->rate > 0 && q->addr->tokens < 1.0) {
        snprintf(why, whylen, "connection rate of %s over %lld per %lld ms",
                 limits_key_text(&q->addr_key, text, sizeof text), (long long)c->rate,
                 (long long)c->rate_interval_ms);
        return LIMITS_OVER_RATE;
    }
    return LIMITS_OK;
}

static void limits_count_in(struct limits *l, struct limits_lookup *q, struct limits_ticket *t)
{
    l->total++;
    if (q->addr) {
        q->addr->sessions++;
        if (l->conf->rate > 0)
            q->addr->tokens -= 1.0;
    }
    if (q->net)
        q->net->sessions++;
    *t = (struct limits_ticket){.total = true, .address = q->addr != NULL,
                                .network = q->net != NULL, .networks = l->networks_epoch};
}

static void limits_forget_idle(struct limits *l, struct limits_lookup *q)
{
    if (q->addr && limits_entry_idle(l, q->addr))
        limits_table_remove(l, &l->addresses, q->addr);
    if (q->net && q->net->sessions <= 0)
        limits_table_remove(l, &l->networks, q->net);
}

static enum limits_verdict limits_admit_locked(struct limits *l, const struct sockaddr *client,
                                               char *why, size_t whylen, uint64_t now,
                                               struct limits_ticket *t)
{
    const struct connection_conf *c = l->conf;
    if (c->max_sessions > 0 && l->total >= c->max_sessions) {
        snprintf(why, whylen, "too many sessions: %lld", (long long)l->total);
        return LIMITS_OVER_TOTAL;
    }
    limits_sweep_if_due(l, now);
    struct limits_lookup q = {0};
    bool ip = limits_key_of(l, client, false, &q.addr_key) == 0 &&
              limits_key_of(l, client, true, &q.net_key) == 0;
    if (ip && limits_tracks_addresses(l))
        q.addr = limits_entry_get(l, &l->addresses, &q.addr_key, now);
    if (ip && limits_tracks_networks(l))
        q.net = limits_entry_get(l, &l->networks, &q.net_key, now);
    enum limits_verdict v = limits_check(l, &q, why, whylen);
    if (v == LIMITS_OK)
        limits_count_in(l, &q, t);
    else
        limits_forget_idle(l, &q);
    return v;
}

enum limits_verdict limits_admit_at(struct limits *l, const struct sockaddr *client, char *why,
                                    size_t whylen, uint64_t now_ms, struct limits_ticket *ticket)
{
    char scratch[1];
    struct limits_ticket unused;
    if (!why || whylen == 0) {
        why = scratch;
        whylen = sizeof scratch;
    }
    if (!ticket)
        ticket = &unused;
    why[0] = '\0';
    *ticket = (struct limits_ticket){0};
    pthread_mutex_lock(&l->mu);
    enum limits_verdict v = LIMITS_OK;
    if (!netlist_match(l->conf->allowlist, client))
        v = limits_admit_locked(l, client, why, whylen, now_ms, ticket);
    pthread_mutex_unlock(&l->mu);
    if (v != LIMITS_OK)
        atomic_fetch_add(&l->refused[v], 1);
    return v;
}

enum limits_verdict limits_admit(struct limits *l, const struct sockaddr *client, char *why,
                                 size_t whylen, struct limits_ticket *ticket)
{
    return limits_admit_at(l, client, why, whylen, (uint64_t)mstime_now(), ticket);
}

static void limits_count_out(struct limits *l, struct limits_table *t, const struct limits_key *k,
                             uint64_t now)
{
    struct limits_entry *e = limits_table_find(l, t, k);
    if (!e)
        return; /* admitted untracked */
    limits_refill(l, e, now);
    if (e->sessions > 0)
        e->sessions--;
    if (limits_entry_idle(l, e))
        limits_table_remove(l, t, e);
}

/* Counts out what t says was counted in: neither the allowlist nor the
 * limits in force now decide it (a reload may have changed both). A network
 * count made under other prefixes is gone with its table. */
static void limits_release_locked(struct limits *l, const struct sockaddr *client,
                                  const struct limits_ticket *t, uint64_t now_ms)
{
    struct limits_key addr_key, net_key;
    bool ip = limits_key_of(l, client, false, &addr_key) == 0 &&
              limits_key_of(l, client, true, &net_key) == 0;
    if (l->total > 0)
        l->total--;
    if (ip && t->address)
        limits_count_out(l, &l->addresses, &addr_key, now_ms);
    if (ip && t->network && t->networks == l->networks_epoch)
        limits_count_out(l, &l->networks, &net_key, now_ms);
}

void limits_release_at(struct limits *l, const struct sockaddr *client,
                       const struct limits_ticket *ticket, uint64_t now_ms)
{
    if (!ticket || !ticket->total)
        return; /* allowlisted when admitted: nothing was counted */
    pthread_mutex_lock(&l->mu);
    limits_release_locked(l, client, ticket, now_ms);
    pthread_mutex_unlock(&l->mu);
}

void limits_release(struct limits *l, const struct sockaddr *client,
                    const struct limits_ticket *ticket)
{
    limits_release_at(l, client, ticket, (uint64_t)mstime_now());
}

/* ---- lifetime and introspection -------------------------------------------- */

struct limits *limits_new(const struct connection_conf *c)
{
    struct limits *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->conf = c;
    l->seed = ((uint64_t)arc4random() << 32) | arc4random();
    if (pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l);
        return NULL;
    }
    if (limits_table_init(&l->addresses) < 0 || limits_table_init(&l->networks) < 0) {
        limits_free(l);
        return NULL;
    }
    return l;
}

void limits_reconfigure(struct limits *l, const struct connection_conf *c)
{
    pthread_mutex_lock(&l->mu);
    bool same_networks = c->network_v4 == l->conf->network_v4 &&
                         c->network_v6 == l->conf->network_v6;
    l->conf = c;
    if (!same_networks) {
        /* Counts under the old prefixes cannot be found again: start afresh
         * (sessions counted in the old table count nothing out of the new). */
        limits_table_free(&l->networks);
        l->networks_epoch++;
        if (limits_table_init(&l->networks) < 0)
            log_err(NULL, "connection limits: out of memory, per_network not enforced");
    }
    for (size_t i = 0; i < l->addresses.nbuckets; i++)
        for (struct limits_entry *e = l->addresses.buckets[i]; e; e = e->next)
            if (e->tokens > limits_capacity(l))
                e->tokens = limits_capacity(l);
    pthread_mutex_unlock(&l->mu);
}

void limits_free(struct limits *l)
{
    if (!l)
        return;
    if (l->addresses.buckets)
        limits_table_free(&l->addresses);
    if (l->networks.buckets)
        limits_table_free(&l->networks);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

int64_t limits_total(struct limits *l)
{
    pthread_mutex_lock(&l->mu);
    int64_t n = l->total;
    pthread_mutex_unlock(&l->mu);
    return n;
}

static int64_t limits_sessions_of(struct limits *l, struct limits_table *t,
                                  const struct sockaddr *client, bool network)
{
    struct limits_key k;
    if (limits_key_of(l, client, network, &k) < 0)
        return 0;
    pthread_mutex_lock(&l->mu);
    const struct limits_entry *e = limits_table_find(l, t, &k);
    int64_t n = e ? e->sessions : 0;
    pthread_mutex_unlock(&l->mu);
    return n;
}

int64_t limits_address_sessions(struct limits *l, const struct sockaddr *client)
{
    return limits_sessions_of(l, &l->addresses, client, false);
}

int64_t limits_network_sessions(struct limits *l, const struct sockaddr *client)
{
    return limits_sessions_of(l, &l->networks, client, true);
}

size_t limits_tracked_addresses(struct limits *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->addresses.count;
    pthread_mutex_unlock(&l->mu);
    return n;
}

uint64_t limits_refused(struct limits *l, enum limits_verdict v)
{
    return (unsigned)v < LIMITS_VERDICT_COUNT ? atomic_load(&l->refused[v]) : 0;
}
