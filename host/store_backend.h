/* Shared by the store modules: store.c (opening, dispatch), store_lmdb.c and
 * store_redis.c (the two backends). */
#ifndef SLUICE_STORE_BACKEND_H
#define SLUICE_STORE_BACKEND_H

#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

#define STORE_REDIS_DEFAULT_PORT "6379"
/* An LMDB record: this many bytes of expiry (absolute ms since the epoch,
 * 0 = none, host byte order), then the value. store_admin.c reads it too. */
#define STORE_LMDB_EXPIRY_LEN 8
#define STORE_REDIS_DEFAULT_TIMEOUT_MS 1000

struct store {
    enum store_backend backend;
    enum store_mode mode;
    struct workpool *wp;
    /* LMDB */
    MDB_env *env;
    MDB_dbi dbi;
    struct store_thread *purger; /* the thread whose timer purges expired keys */
    bool purge_running;          /* touched only on the purger's loop thread */
    _Atomic int64_t last_error_log_ms;
    /* Redis: host is numeric (resolved once at open) or a socket path */
    char *redis_host;
    int redis_port; /* 0: redis_host is a unix socket path */
    int64_t redis_timeout_ms;
    int redis_database;
};

struct store_redis_conn;
struct lmdb_job;

struct store_thread {
    struct store *st;
    struct event_base *base;
    struct event *purge_timer;     /* LMDB, on the purger thread only */
    struct store_redis_conn *redis; /* Redis */
    int lmdb_writes_in_flight; /* LMDB: a read waits behind them */
    /* LMDB, this loop's writes on the pool in submission order, and the
     * reads waiting for the writes submitted before them (store_lmdb.c). */
    struct lmdb_job *lmdb_writes_head, *lmdb_writes_tail;
    struct lmdb_job *lmdb_reads_head, *lmdb_reads_tail;
    uint64_t lmdb_write_seq;
};

/* Wall clock in ms: expiry times outlive the process. */
int64_t store_now_ms(void);

int store_lmdb_open(struct store *st, const struct store_conf *conf, char *err, size_t errlen);
/* An empty environment in a temporary file, unlinked once open (scratch). */
int store_lmdb_open_scratch(struct store *st, const struct store_conf *conf, char *err,
                            size_t errlen);
void store_lmdb_close(struct store *st);
int store_lmdb_thread_init(struct store_thread *t);
void store_lmdb_thread_free(struct store_thread *t);
int store_lmdb_get(struct store_thread *t, const void *key, size_t klen, store_get_cb cb,
                   void *arg);
int store_lmdb_set(struct store_thread *t, const void *key, size_t klen, const void *val,
                   size_t vlen, int64_t ttl_ms, store_done_cb cb, void *arg);
int store_lmdb_del(struct store_thread *t, const void *key, size_t klen, store_done_cb cb,
                   void *arg);
int store_lmdb_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
                    int64_t ttl_ms, store_int_cb cb, void *arg);

int store_redis_thread_init(struct store_thread *t);
void store_redis_thread_free(struct store_thread *t);
int store_redis_get(struct store_thread *t, const void *key, size_t klen, store_get_cb cb,
                    void *arg);
int store_redis_set(struct store_thread *t, const void *key, size_t klen, const void *val,
                    size_t vlen, int64_t ttl_ms, store_done_cb cb, void *arg);
int store_redis_del(struct store_thread *t, const void *key, size_t klen, store_done_cb cb,
                    void *arg);
int store_redis_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
                     int64_t ttl_ms, store_int_cb cb, void *arg);

#endif
