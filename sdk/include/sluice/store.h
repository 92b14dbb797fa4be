/*
 * sluice plugin SDK: the key/value store with TTLs. One API over two
 * backends chosen in sluice.conf (`store = { backend = "lmdb"; ... }` or
 * "redis"): LMDB embedded (reads and writes run on the thread pool) or Redis
 * (hiredis, asynchronous, one connection per loop thread, a timeout on every
 * command). Keys and values are byte strings; prefix keys with your plugin's
 * name. A store failure is reported as SLUICE_KV_ERROR: plugins fail open.
 *
 * Under sluice-check the store is an empty scratch one, or (--live-store)
 * the configured one read-only: there set and del report SLUICE_KV_OK
 * without writing, incr gives the value read plus delta, and sluice_redis()
 * refuses (-1) a command that writes. Either way
 * the check prints every write asked for. `sluice-store` lists, counts,
 * reads and deletes keys of the configured store for the operator.
 */
#ifndef SLUICE_STORE_H
#define SLUICE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

enum sluice_kv_status {
    SLUICE_KV_OK,
    SLUICE_KV_NOTFOUND, /* absent or expired */
    SLUICE_KV_ERROR,    /* store unavailable, full, timed out */
};

typedef void (*sluice_kv_get_cb)(sluice_session *s, void *arg, enum sluice_kv_status st,
                                 const void *value, size_t len);
typedef void (*sluice_kv_done_cb)(sluice_session *s, void *arg, enum sluice_kv_status st);
typedef void (*sluice_kv_int_cb)(sluice_session *s, void *arg, enum sluice_kv_status st,
                                 int64_t value);

/* Each returns 0 when started (the callback will run, bound to the session
 * like every service of <sluice/async.h>), -1 when it could not start. */

int sluice_kv_get(sluice_session *s, const void *key, size_t klen, sluice_kv_get_cb cb,
                  void *arg);
/* ttl_ms <= 0: no expiry. cb may be NULL. */
int sluice_kv_set(sluice_session *s, const void *key, size_t klen, const void *value,
                  size_t vlen, int64_t ttl_ms, sluice_kv_done_cb cb, void *arg);
int sluice_kv_del(sluice_session *s, const void *key, size_t klen, sluice_kv_done_cb cb,
                  void *arg);
/* Adds delta to an integer value (absent: 0), sets the TTL when the key is
 * created, gives the new value: a rate counter in one call. */
int sluice_kv_incr(sluice_session *s, const void *key, size_t klen, int64_t delta,
                   int64_t ttl_ms, sluice_kv_int_cb cb, void *arg);

/* ---- raw Redis (only with the redis backend) ------------------------------ */

enum sluice_redis_type {
    SLUICE_REDIS_NIL,
    SLUICE_REDIS_INTEGER,
    SLUICE_REDIS_STRING, /* bulk and status strings */
    SLUICE_REDIS_ARRAY,
    SLUICE_REDIS_ERROR, /* an error reply, or a failed/timed-out command (str says why) */
};

struct sluice_redis_reply {
    enum sluice_redis_type type;
    long long integer;
    const char *str;
    size_t len;
    const struct sluice_redis_reply *const *elements;
    size_t nelements;
};

typedef void (*sluice_redis_cb)(sluice_session *s, void *arg, const struct sluice_redis_reply *r);
/* argv/argvlen as redisCommandArgv. Returns -1 when the store is not Redis. */
int sluice_redis(sluice_session *s, int argc, const char *const *argv, const size_t *argvlen,
                 sluice_redis_cb cb, void *arg);

#ifdef __cplusplus
}
#endif

#endif
