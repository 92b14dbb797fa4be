/* The store for the operator (sluice-store): synchronous listing, reading,
 * counting and deleting of keys in the configured LMDB or Redis store, safe
 * while sluice runs (LMDB's lock serialises the writers of both processes;
 * Redis is shared by nature). Not for the daemon: every call blocks. */
#ifndef SLUICE_STORE_ADMIN_H
#define SLUICE_STORE_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store_conf;
struct store_admin;

/* Opens the configured store; write: deletes will be asked for. LMDB: the
 * environment must exist (nothing is created). NULL + err on failure. */
struct store_admin *store_admin_open(const struct store_conf *conf, bool write, char *err,
                                     size_t errlen);
void store_admin_close(struct store_admin *a);

/* One live key: its value and the time it has left (ttl_ms < 0: none). A
 * non-zero return stops the walk. */
typedef int (*store_admin_visit_fn)(void *arg, const void *key, size_t klen, const void *val,
                                    size_t vlen, int64_t ttl_ms);

/* Every live key starting with prefix (plen 0: every key); visit may be NULL
 * (a count). Returns how many, or -1 + err. Redis walks with SCAN: keys
 * written meanwhile may or may not be seen. */
int64_t store_admin_scan(struct store_admin *a, const void *prefix, size_t plen,
                         store_admin_visit_fn visit, void *arg, char *err, size_t errlen);
/* 1 found (visit called), 0 absent or expired, -1 + err. */
int store_admin_get(struct store_admin *a, const void *key, size_t klen,
                    store_admin_visit_fn visit, void *arg, char *err, size_t errlen);
/* 1 deleted, 0 absent or expired, -1 + err. */
int store_admin_del(struct store_admin *a, const void *key, size_t klen, char *err,
                    size_t errlen);

#endif
