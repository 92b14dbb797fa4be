/* The worker's DNS cache: a hash of kept answers with a least-recently-used
 * list, under one mutex. See dns_cache.h. */
#include "dns_cache.h"

#include <ares.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "config.h"

#define DNS_HEADER_LEN 12
#define DNS_RCODE_NXDOMAIN 3
#define DNS_TYPE_SOA 6
#define DNS_TYPE_OPT 41
#define DNS_FLAG_TC 0x0200
/* An answer bigger than this (a long TXT set over TCP) is not kept: one
 * entry must not take a large share of the budget. */
#define DNS_CACHE_ANSWER_MAX 4096
#define DNS_CACHE_ENTRY_OVERHEAD 64 /* what an entry costs besides its bytes */
#define DNS_CACHE_BUCKET_BYTES 256  /* budget per hash bucket: short chains */
#define DNS_NAME_MAX 255

struct dns_entry {
    TAILQ_ENTRY(dns_entry) lru; /* most recently used first */
    struct dns_entry *next;     /* in its bucket */
    uint32_t hash;
    int type;
    int status;
    int alen;
    int64_t expires_ms;
    size_t name_len;
    unsigned char *abuf; /* after the name, in the same allocation */
    char name[];
};

struct dns_cache {
    pthread_mutex_t lock;
    struct dns_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t budget, used;
    int64_t max_ttl_ms, negative_ttl_ms;
    TAILQ_HEAD(dns_entry_list, dns_entry) lru;
    uint64_t hits, misses, entries;
};

/* ---- reading an answer's TTLs ---- */

struct dns_reader {
    const unsigned char *p;
    size_t len, at;
};

static bool dns_read16(struct dns_reader *r, unsigned *v)
{
    if (r->len - r->at < 2)
        return false;
    *v = (unsigned)r->p[r->at] << 8 | r->p[r->at + 1];
    r->at += 2;
    return true;
}

static bool dns_read32(struct dns_reader *r, uint32_t *v)
{
    if (r->len - r->at < 4)
        return false;
    *v = (uint32_t)r->p[r->at] << 24 | (uint32_t)r->p[r->at + 1] << 16 |
         (uint32_t)r->p[r->at + 2] << 8 | r->p[r->at + 3];
    r->at += 4;
    return true;
}

/* Steps over a name where it is written: labels up to the root, or up to a
 * compression pointer (which ends the name here; where it points is not
 * read, so a loop of pointers cannot hold the reader). */
static bool dns_skip_name(struct dns_reader *r)
{
    for (unsigned labels = 0; labels < 128; labels++) {
        if (r->at >= r->len)
            return false;
        unsigned char c = r->p[r->at];
        if ((c & 0xc0) == 0xc0) {
            if (r->len - r->at < 2)
                return false;
            r->at += 2;
            return true;
        }
        if (c & 0xc0)
            return false; /* the reserved label types */
        r->at += 1u + c;
        if (c == 0)
            return true;
    }
    return false;
}

struct dns_rr {
    unsigned type;
    uint32_t ttl;
    size_t rdata, rdlen; /* offset and length of the data */
};

static bool dns_read_rr(struct dns_reader *r, struct dns_rr *rr)
{
    unsigned class, rdlen;
    if (!dns_skip_name(r) || !dns_read16(r, &rr->type) || !dns_read16(r, &class) ||
        !dns_read32(r, &rr->ttl) || !dns_read16(r, &rdlen) || r->len - r->at < rdlen)
        return false;
    /* RFC 2181 8: a TTL with the top bit set is read as 0. */
    if (rr->ttl & 0x80000000u)
        rr->ttl = 0;
    rr->rdata = r->at;
    rr->rdlen = rdlen;
    r->at += rdlen;
    return true;
}

static uint32_t dns_min(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

/* RFC 2308 5: the SOA of the authority section, the smaller of its TTL and
 * its MINIMUM (the last field of its data). */
static uint32_t dns_negative_ttl(struct dns_reader *r, unsigned nscount)
{
    for (unsigned i = 0; i < nscount; i++) {
        struct dns_rr rr;
        if (!dns_read_rr(r, &rr))
            return 0;
        if (rr.type != DNS_TYPE_SOA)
            continue;
        if (rr.rdlen < 22) /* two names of at least one byte, five numbers */
            return 0;
        struct dns_reader m = {r->p, rr.rdata + rr.rdlen, rr.rdata + rr.rdlen - 4};
        uint32_t minimum;
        dns_read32(&m, &minimum);
        if (minimum & 0x80000000u)
            minimum = 0;
        return dns_min(rr.ttl, minimum);
    }
    return 0; /* no SOA: not to be kept (RFC 2308 5) */
}

uint32_t dns_answer_ttl(const unsigned char *abuf, size_t alen, bool *negative)
{
    struct dns_reader r = {abuf, alen, 0};
    unsigned id, flags, qdcount, ancount, nscount, arcount;
    *negative = false;
    if (!abuf || !dns_read16(&r, &id) || !dns_read16(&r, &flags) || !dns_read16(&r, &qdcount) ||
        !dns_read16(&r, &ancount) || !dns_read16(&r, &nscount) || !dns_read16(&r, &arcount))
        return 0;
    unsigned rcode = flags & 0xf;
    if ((flags & DNS_FLAG_TC) || (rcode != 0 && rcode != DNS_RCODE_NXDOMAIN))
        return 0;
    for (unsigned i = 0; i < qdcount; i++) {
        unsigned qtype, qclass;
        if (!dns_skip_name(&r) || !dns_read16(&r, &qtype) || !dns_read16(&r, &qclass))
            return 0;
    }
    if (rcode == 0 && ancount > 0) {
        uint32_t ttl = UINT32_MAX;
        for (unsigned i = 0; i < ancount; i++) {
            struct dns_rr rr;
            if (!dns_read_rr(&r, &rr))
                return 0;
            ttl = dns_min(ttl, rr.ttl);
        }
        return ttl;
    }
    if (ancount > 0)
        return 0; /* NXDOMAIN with answers: not a shape to trust */
    *negative = true;
    return dns_negative_ttl(&r, nscount);
}

/* A kept answer handed out later says how long it has left, as a caching
 * resolver's would: a reader that keeps it itself (a plugin's own cache)
 * must not keep it past its time. The OPT pseudo-record's TTL field holds
 * flags, not a time. */
static void dns_age_answer(unsigned char *abuf, size_t alen, uint32_t left_s)
{
    struct dns_reader r = {abuf, alen, 4};
    unsigned qdcount, ancount, nscount, arcount;
    if (!dns_read16(&r, &qdcount) || !dns_read16(&r, &ancount) || !dns_read16(&r, &nscount) ||
        !dns_read16(&r, &arcount))
        return;
    for (unsigned i = 0; i < qdcount; i++) {
        unsigned qtype, qclass;
        if (!dns_skip_name(&r) || !dns_read16(&r, &qtype) || !dns_read16(&r, &qclass))
            return;
    }
    for (unsigned i = 0; i < ancount + nscount + arcount; i++) {
        struct dns_rr rr;
        if (!dns_read_rr(&r, &rr))
            return;
        if (rr.type == DNS_TYPE_OPT || rr.ttl <= left_s)
            continue;
        unsigned char *ttl = abuf + rr.rdata - 6; /* TTL, then RDLENGTH */
        ttl[0] = (unsigned char)(left_s >> 24);
        ttl[1] = (unsigned char)(left_s >> 16);
        ttl[2] = (unsigned char)(left_s >> 8);
        ttl[3] = (unsigned char)left_s;
    }
}

/* ---- the table ---- */

static uint32_t dns_hash(const char *name, size_t len, int type)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        h = (h ^ c) * 16777619u;
    }
    return (h ^ (uint32_t)type) * 16777619u;
}

/* The name as a key: without the root's trailing dot. */
static size_t dns_key_len(const char *name)
{
    size_t len = strnlen(name, DNS_NAME_MAX + 2);
    if (len > 0 && name[len - 1] == '.')
        len--;
    return len;
}

static size_t dns_entry_cost(const struct dns_entry *e)
{
    return sizeof *e + e->name_len + (size_t)e->alen + DNS_CACHE_ENTRY_OVERHEAD;
}

static struct dns_entry **dns_find(struct dns_cache *c, const char *name, size_t len, int type,
                                   uint32_t hash)
{
    struct dns_entry **p = &c->buckets[hash & (c->nbuckets - 1)];
    for (; *p; p = &(*p)->next) {
        struct dns_entry *e = *p;
        if (e->hash == hash && e->type == type && e->name_len == len &&
            strncasecmp(e->name, name, len) == 0)
            return p;
    }
    return p;
}

static void dns_unlink(struct dns_cache *c, struct dns_entry **slot)
{
    struct dns_entry *e = *slot;
    *slot = e->next;
    TAILQ_REMOVE(&c->lru, e, lru);
    c->used -= dns_entry_cost(e);
    c->entries--;
    free(e);
}

static void dns_evict_oldest(struct dns_cache *c)
{
    struct dns_entry *e = TAILQ_LAST(&c->lru, dns_entry_list);
    struct dns_entry **slot = dns_find(c, e->name, e->name_len, e->type, e->hash);
    dns_unlink(c, slot);
}

static void dns_forget_all(struct dns_cache *c)
{
    while (!TAILQ_EMPTY(&c->lru))
        dns_evict_oldest(c);
}

static size_t dns_bucket_count(size_t budget)
{
    size_t n = 64;
    while (n < budget / DNS_CACHE_BUCKET_BYTES && n < ((size_t)1 << 20))
        n <<= 1;
    return n;
}

static void dns_cache_limits(struct dns_cache *c, const struct dns_conf *conf)
{
    c->budget = (size_t)conf->cache_memory;
    c->max_ttl_ms = conf->cache_max_ttl_ms;
    c->negative_ttl_ms = conf->cache_negative_ttl_ms;
}

struct dns_cache *dns_cache_new(const struct dns_conf *conf)
{
    struct dns_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    dns_cache_limits(c, conf);
    c->nbuckets = dns_bucket_count(c->budget);
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    TAILQ_INIT(&c->lru);
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void dns_cache_reconfigure(struct dns_cache *c, const struct dns_conf *conf)
{
    if (!c)
        return;
    size_t n = dns_bucket_count((size_t)conf->cache_memory);
    struct dns_entry **fresh = n != c->nbuckets ? calloc(n, sizeof *fresh) : NULL;
    pthread_mutex_lock(&c->lock);
    dns_forget_all(c);
    dns_cache_limits(c, conf);
    /* Sized for the new budget; without memory for that, the old buckets
     * serve (longer chains, never wrong). */
    if (fresh) {
        free(c->buckets);
        c->buckets = fresh;
        c->nbuckets = n;
    }
    pthread_mutex_unlock(&c->lock);
}

void dns_cache_free(struct dns_cache *c)
{
    if (!c)
        return;
    dns_forget_all(c);
    free(c->buckets);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

bool dns_cache_get(struct dns_cache *c, const char *name, int type, int64_t now_ms, int *status,
                   unsigned char **abuf, int *alen)
{
    if (!c)
        return false;
    size_t len = dns_key_len(name);
    uint32_t hash = dns_hash(name, len, type);
    bool hit = false;
    pthread_mutex_lock(&c->lock);
    struct dns_entry **slot = dns_find(c, name, len, type, hash);
    struct dns_entry *e = *slot;
    if (e && e->expires_ms <= now_ms) {
        dns_unlink(c, slot);
        e = NULL;
    }
    if (e && (*abuf = malloc((size_t)e->alen)) != NULL) {
        memcpy(*abuf, e->abuf, (size_t)e->alen);
        dns_age_answer(*abuf, (size_t)e->alen, (uint32_t)((e->expires_ms - now_ms + 999) / 1000));
        *alen = e->alen;
        *status = e->status;
        TAILQ_REMOVE(&c->lru, e, lru);
        TAILQ_INSERT_HEAD(&c->lru, e, lru);
        hit = true;
    }
    if (hit)
        c->hits++;
    else
        c->misses++;
    pthread_mutex_unlock(&c->lock);
    return hit;
}

static int64_t dns_keep_ms(const struct dns_cache *c, const unsigned char *abuf, int alen)
{
    bool negative;
    uint32_t ttl = dns_answer_ttl(abuf, (size_t)alen, &negative);
    int64_t cap = negative ? c->negative_ttl_ms : c->max_ttl_ms;
    int64_t ms = (int64_t)ttl * 1000;
    return ms < cap ? ms : cap;
}

void dns_cache_put(struct dns_cache *c, const char *name, int type, int status,
                   const unsigned char *abuf, int alen, int64_t now_ms)
{
    if (!c || !abuf || alen <= 0 || alen > DNS_CACHE_ANSWER_MAX)
        return;
    if (status != ARES_SUCCESS && status != ARES_ENODATA && status != ARES_ENOTFOUND)
        return;
    size_t len = dns_key_len(name);
    if (len == 0 || len > DNS_NAME_MAX)
        return;
    int64_t keep_ms = dns_keep_ms(c, abuf, alen);
    if (keep_ms <= 0)
        return;
    struct dns_entry *e = malloc(sizeof *e + len + 1 + (size_t)alen);
    if (!e)
        return; /* only a cache */
    e->hash = dns_hash(name, len, type);
    e->type = type;
    e->status = status;
    e->alen = alen;
    e->expires_ms = now_ms + keep_ms;
    e->name_len = len;
    memcpy(e->name, name, len);
    e->name[len] = '\0';
    e->abuf = (unsigned char *)e->name + len + 1;
    memcpy(e->abuf, abuf, (size_t)alen);
    size_t cost = dns_entry_cost(e);

    pthread_mutex_lock(&c->lock);
    struct dns_entry **slot = dns_find(c, name, len, type, e->hash);
    if (*slot)
        dns_unlink(c, slot); /* a newer answer to the same question */
    while (!TAILQ_EMPTY(&c->lru) && c->used + cost > c->budget)
        dns_evict_oldest(c);
    if (c->used + cost > c->budget) {
        pthread_mutex_unlock(&c->lock);
        free(e);
        return;
    }
    slot = &c->buckets[e->hash & (c->nbuckets - 1)];
    e->next = *slot;
    *slot = e;
    TAILQ_INSERT_HEAD(&c->lru, e, lru);
    c->used += cost;
    c->entries++;
    pthread_mutex_unlock(&c->lock);
}

void dns_cache_stats(struct dns_cache *c, struct dns_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    out->hits = c->hits;
    out->misses = c->misses;
    out->entries = c->entries;
    out->bytes = c->used;
    pthread_mutex_unlock(&c->lock);
}
