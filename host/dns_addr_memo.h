/* The addresses of the backend servers' host names, remembered by one loop
 * thread: a name is resolved once per TTL instead of once per backend
 * connection, and while the resolver fails (timeout, SERVFAIL, refused) the
 * last addresses it gave stay in use (serve-stale, RFC 8767), so a resolver
 * outage does not stop the mail to backends whose addresses have not
 * changed. A definite "no such name" is never covered up.
 *
 * After a failure the name is not asked again for a recheck period: the
 * connections opened meanwhile get the stale addresses at once instead of
 * each waiting for the resolver's timeout first. When it is over, one
 * caller asks (DNS_ADDR_ASK) and the others still get the stale addresses
 * while that question is out (for another recheck period at most).
 *
 * One thread only; no lock. Names come from the configuration, so the
 * memo is small; it holds at most DNS_ADDR_MEMO_NAMES and forgets the one
 * used longest ago. */
#ifndef SLUICE_DNS_ADDR_MEMO_H
#define SLUICE_DNS_ADDR_MEMO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define DNS_ADDR_MEMO_NAMES 64
#define DNS_ADDR_MEMO_ADDRS 16           /* addresses kept per name */
#define DNS_ADDR_STALE_MAX_MS 86400000LL /* a day, within RFC 8767's 1 to 3 */
#define DNS_ADDR_RECHECK_MS 30000LL      /* RFC 8767's failure recheck timer */

struct dns_addr_memo;

/* NULL when out of memory (the caller then resolves every time). */
struct dns_addr_memo *dns_addr_memo_new(void);
/* One more holder of m (a reload's old and new resolver contexts, both on
 * m's thread): m goes with the last dns_addr_memo_free. */
struct dns_addr_memo *dns_addr_memo_share(struct dns_addr_memo *m);
void dns_addr_memo_free(struct dns_addr_memo *m);

enum dns_addr_use {
    DNS_ADDR_ASK,   /* nothing usable without asking */
    DNS_ADDR_FRESH, /* within its TTL */
    DNS_ADDR_STALE, /* the resolver failed lately: these, without asking */
};

/* What the memo holds for name at now_ms; for FRESH and STALE the addresses
 * are copied to out (at most max) and their count to *n. */
enum dns_addr_use dns_addr_memo_find(struct dns_addr_memo *m, const char *name, int64_t now_ms,
                                     struct sockaddr_storage *out, size_t max, size_t *n);

/* A fresh answer: kept for fresh_ms (0: asked again next time, still
 * served stale after a failure). */
void dns_addr_memo_keep(struct dns_addr_memo *m, const char *name,
                        const struct sockaddr_storage *addrs, size_t n, int64_t fresh_ms,
                        int64_t now_ms);

/* The resolver failed for name: its last addresses when they are younger
 * than DNS_ADDR_STALE_MAX_MS (true; the name is then not asked again for
 * DNS_ADDR_RECHECK_MS), and *age_ms how old they are. */
bool dns_addr_memo_failed(struct dns_addr_memo *m, const char *name, int64_t now_ms,
                          struct sockaddr_storage *out, size_t max, size_t *n, int64_t *age_ms);

/* The address families (DNS_ADDR_V4 | DNS_ADDR_V6) of the addresses kept
 * for name that could still be served stale at now_ms; 0 when none. */
#define DNS_ADDR_V4 1u
#define DNS_ADDR_V6 2u
unsigned dns_addr_memo_families(const struct dns_addr_memo *m, const char *name, int64_t now_ms);

/* The name does not exist (any more): nothing of it stays. */
void dns_addr_memo_forget(struct dns_addr_memo *m, const char *name);

/* A reload: every name is asked again at its next use (the resolvers may
 * have changed), and its last addresses still serve if they fail. */
void dns_addr_memo_expire(struct dns_addr_memo *m);

#endif
