/* DNS answers kept in worker memory for every loop thread, each for its own
 * TTL (capped by the configuration): a client that comes back, or a DNSBL
 * zone asked about many clients of one network, costs no round trip.
 *
 * An answer is kept as the bytes the server sent, keyed by the name asked
 * (case-insensitive) and the type, so every reader parses a kept answer
 * exactly as a fresh one. Negative answers (NXDOMAIN, no data) are kept
 * for their SOA's negative TTL (RFC 2308); failures, truncated answers and
 * answers with a TTL of 0 never. The cache holds at most its memory budget
 * and forgets the least recently used answer first.
 *
 * Any thread: every call takes the cache's lock, held only to copy. */
#ifndef SLUICE_DNS_CACHE_H
#define SLUICE_DNS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dns_conf;
struct dns_cache;

/* NULL when out of memory. A budget of 0 keeps nothing (every get misses). */
struct dns_cache *dns_cache_new(const struct dns_conf *conf);
/* A reload: the new budget and caps, and every kept answer forgotten (the
 * servers may have changed). */
void dns_cache_reconfigure(struct dns_cache *c, const struct dns_conf *conf);
void dns_cache_free(struct dns_cache *c);

/* A fresh kept answer to (name, type): a copy the caller frees, and the
 * c-ares status it came with. */
bool dns_cache_get(struct dns_cache *c, const char *name, int type, int64_t now_ms, int *status,
                   unsigned char **abuf, int *alen);
/* Keeps an answer c-ares gave with status (success, no data, not found) for
 * as long as it may be kept; anything else is ignored. */
void dns_cache_put(struct dns_cache *c, const char *name, int type, int status,
                   const unsigned char *abuf, int alen, int64_t now_ms);

struct dns_cache_stats {
    uint64_t hits, misses, entries, bytes;
};
void dns_cache_stats(struct dns_cache *c, struct dns_cache_stats *out);

/* How long an answer may be kept, in seconds, read from its records: the
 * smallest TTL of the answer section, or for a negative answer the smaller
 * of its SOA's TTL and MINIMUM. 0: not to be kept (a failure, truncated,
 * malformed, or a TTL of 0). *negative tells which of the two it was. */
uint32_t dns_answer_ttl(const unsigned char *abuf, size_t alen, bool *negative);

#endif
