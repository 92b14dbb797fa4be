/* The per-loop-thread cache of DNSBL answers: bounded (a fixed number of
 * slots, two candidates per name), each answer kept for its TTL. No locks:
 * one cache per loop thread and entry. */
#ifndef DNSBL_CACHE_H
#define DNSBL_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dnsbl_parts.h"

struct dnsbl_answer {
    bool listed;
    uint32_t codes[DNSBL_MAX_ANSWERS];
    size_t ncodes;
    char reason[DNSBL_REASON_MAX + 1]; /* "" when none */
};

struct dnsbl_cache;

/* slots == 0: a cache that never holds anything. NULL when out of memory. */
struct dnsbl_cache *dnsbl_cache_new(size_t slots);
void dnsbl_cache_free(struct dnsbl_cache *c);
bool dnsbl_cache_get(struct dnsbl_cache *c, const char *name, int64_t now_ms,
                     struct dnsbl_answer *out);
/* Replaces the name's earlier answer, or the candidate slot that expires first. */
void dnsbl_cache_put(struct dnsbl_cache *c, const char *name, int64_t expires_ms,
                     const struct dnsbl_answer *a);

#endif
