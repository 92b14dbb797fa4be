/* The key/value store behind the SDK (sdk/include/sluice/store.h): LMDB
 * embedded (every LMDB call on the thread pool) or Redis (hiredis with its
 * libevent adapter, one connection per loop thread, a timeout per command). */
#ifndef SLUICE_HOST_STORE_H
#define SLUICE_HOST_STORE_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct store_conf;
struct workpool;
struct store;        /* process-wide: the LMDB environment, or the Redis settings */
struct store_thread; /* per loop thread: the Redis connection */

/* Opens the store in the worker (after fork). LMDB: creates the directory
 * and the environment. Redis: only checks the settings (connections are per
 * thread, made lazily and re-made after a failure). NULL + err on failure. */
struct store *store_open(const struct store_conf *conf, struct workpool *wp, char *err,
                         size_t errlen);

/* How sluice-check opens a store: never the daemon's data by surprise. */
enum store_mode {
    STORE_MODE_LIVE,      /* the configured store, read and written (the daemon) */
    STORE_MODE_SCRATCH,   /* an empty LMDB in an unlinked temporary file: gone at
                             close, whatever the configured backend; no directory made */
    STORE_MODE_READ_ONLY, /* the configured store, read; writes are not done but
                             answered as if they were (incr: the value read + delta);
                             raw Redis commands that write are refused (-1) */
};
struct store *store_open_mode(const struct store_conf *conf, enum store_mode mode,
                              struct workpool *wp, char *err, size_t errlen);

/* sluice-check: told of every write a plugin asks for through the SDK, with
 * the entry's name (op "set", "del" or "incr"; n is the TTL in ms for set
 * and incr, the delta in delta). Loop thread. NULL: nobody listens. */
typedef void (*store_write_trace_fn)(const char *entry, const char *op, const void *key,
                                     size_t klen, const void *val, size_t vlen, int64_t ttl_ms,
                                     int64_t delta);
extern store_write_trace_fn store_write_trace;
void store_close(struct store *st);

struct store_thread *store_thread_new(struct store *st, struct event_base *base);
void store_thread_free(struct store_thread *t);

enum store_status { STORE_OK, STORE_NOTFOUND, STORE_ERROR };

/* Callbacks run on the loop thread of t. value is valid during the call. */
typedef void (*store_get_cb)(void *arg, enum store_status st, const void *value, size_t len);
typedef void (*store_done_cb)(void *arg, enum store_status st);
typedef void (*store_int_cb)(void *arg, enum store_status st, int64_t value);

/* Each returns 0 (callback will run exactly once, never from inside the
 * call) or -1 (it will not). */
int store_get(struct store_thread *t, const void *key, size_t klen, store_get_cb cb, void *arg);
int store_set(struct store_thread *t, const void *key, size_t klen, const void *val, size_t vlen,
              int64_t ttl_ms, store_done_cb cb, void *arg);
int store_del(struct store_thread *t, const void *key, size_t klen, store_done_cb cb, void *arg);
int store_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
               int64_t ttl_ms, store_int_cb cb, void *arg);

/* LMDB: deletes every expired record (the first store thread also does so
 * every few minutes); cb gets how many. -1 when the store is Redis. */
int store_purge_expired(struct store_thread *t, store_int_cb cb, void *arg);

/* Raw Redis; -1 when the store is LMDB. reply is a redisReply * (hiredis),
 * NULL on a failure/timeout (errstr says why). */
typedef void (*store_redis_cb)(void *arg, void *reply, const char *errstr);
int store_redis_argv(struct store_thread *t, int argc, const char *const *argv,
                     const size_t *argvlen, store_redis_cb cb, void *arg);

#endif
