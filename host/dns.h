/* Asynchronous DNS for one loop thread: a c-ares channel whose sockets are
 * driven by the thread's event_base. Every callback runs on that thread.
 * Never blocks.
 *
 * A query start returns NULL, and never calls cb, only when out of memory or
 * while the ctx is being freed. A callback may start new queries, cancel
 * others and free the objects behind arg. timeout_ms <= 0 means no overall
 * timer: c-ares' own timeout and tries bound the query. */
#ifndef SLUICE_DNS_H
#define SLUICE_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct dns_cache;
struct dns_conf;
struct dns_ctx;
struct dns_query;

enum dns_status {
    DNS_OK = 0,
    DNS_NOTFOUND, /* NXDOMAIN or no data: a definite "no" */
    DNS_TEMPFAIL, /* timeout, SERVFAIL, refused, network error */
    DNS_NOMEM,    /* our own allocation failed: says nothing of the name */
};

/* servers from conf override /etc/resolv.conf. Answers are kept in cache
 * (dns_cache.h; NULL: none) and taken from it. Returns NULL and writes err. */
struct dns_ctx *dns_ctx_new(struct event_base *base, const struct dns_conf *conf,
                            struct dns_cache *cache, char *err, size_t errlen);
/* Cancels outstanding queries without calling their callbacks. May be called
 * from inside a dns callback: the teardown then waits until it returns. */
void dns_ctx_free(struct dns_ctx *ctx);
/* A reload's new context takes over the backend names' addresses the old
 * one remembered (dns_resolve), to be asked again but still served while
 * the resolvers fail. The old one shares them for its lookups in flight
 * (both on the same loop thread). */
void dns_ctx_take_names(struct dns_ctx *fresh, struct dns_ctx *old);
/* True while a query of ctx has not ended: a context replaced at a reload
 * is freed only once this is false, so no caller loses its answer. */
bool dns_ctx_busy(const struct dns_ctx *ctx);

/* Addresses of a host name (A and AAAA; a numeric address answers at once,
 * still through the callback but never synchronously from inside the call). */
typedef void (*dns_addr_cb)(void *arg, enum dns_status st, const struct sockaddr_storage *addrs,
                            size_t naddrs);
struct dns_query *dns_resolve(struct dns_ctx *ctx, const char *name, int port, dns_addr_cb cb,
                              void *arg);

/* Forward-confirmed reverse name: PTR of addr, then A/AAAA of the name, which
 * must contain addr. name is NULL unless st == DNS_OK. DNS_NOTFOUND covers
 * "no PTR" and "not confirmed"; DNS_TEMPFAIL a lookup failure or the timeout. */
typedef void (*dns_name_cb)(void *arg, enum dns_status st, const char *name);
struct dns_query *dns_reverse_confirmed(struct dns_ctx *ctx, const struct sockaddr *addr,
                                        int64_t timeout_ms, dns_name_cb cb, void *arg);

/* Records of one type (for plugins: TXT for DNSBL reasons, MX, PTR, A, AAAA).
 * rr[i] is the text form: an address, a name, "pref name" for MX, or the
 * joined strings of one TXT record. ttl is the smallest TTL seen (A/AAAA
 * only; 0 otherwise). TXT bytes below 0x20 (NUL, CR, LF) and 0x7f come out
 * as '?', so a record is safe to quote in a reply. */
enum dns_type { DNS_A = 1, DNS_AAAA = 28, DNS_TXT = 16, DNS_PTR = 12, DNS_MX = 15 };
typedef void (*dns_records_cb)(void *arg, enum dns_status st, const char *const *rr, size_t nrr,
                               uint32_t ttl);
struct dns_query *dns_query_records(struct dns_ctx *ctx, const char *name, enum dns_type type,
                                    int64_t timeout_ms, dns_records_cb cb, void *arg);

/* The callback of q will not run. q must not have completed yet. NULL is a
 * no-op, so the result of a failed start can be passed as is. */
void dns_cancel(struct dns_query *q);

#endif
