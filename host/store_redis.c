/* The Redis backend: per loop thread one hiredis asynchronous connection on
 * the loop's base, made at first use and re-made after a failure (with a
 * backoff while the server refuses). Every command has a record with its own
 * timer: whichever comes first, the reply or the timer, decides what the
 * caller gets; the other is ignored. hiredis owns a record from the command
 * until its callback (with a reply, or NULL when the connection goes away). */
#include <sys/queue.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "mstime.h"
#include "store_backend.h"

#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_BACKOFF_MAX_MS 5000
#define REDIS_INT_TEXT_MAX 24

/* Sets the TTL only when INCRBY created the key: a rate counter's window
 * starts with its first hit. */
static const char redis_incr_script[] =
    "local e=redis.call('EXISTS',KEYS[1]) "
    "local v=redis.call('INCRBY',KEYS[1],ARGV[1]) "
    "if e==0 and tonumber(ARGV[2])>0 then redis.call('PEXPIRE',KEYS[1],ARGV[2]) end "
    "return v";

enum rcmd_kind { RC_GET, RC_SET, RC_DEL, RC_INCR, RC_RAW, RC_SELECT };

union rcmd_cb {
    store_get_cb get;
    store_done_cb done;
    store_int_cb incr;
    store_redis_cb raw;
};

struct redis_cmd {
    struct store_thread *t;
    enum rcmd_kind kind;
    union rcmd_cb cb;
    void *arg;
    struct event *timer;
    bool delivered;      /* the caller got its answer */
    bool in_hiredis;     /* hiredis still holds the record */
    const char *errstr;  /* why a command that never reached hiredis failed */
    LIST_ENTRY(redis_cmd) link; /* the connection's cmds */
};

struct store_redis_conn {
    redisAsyncContext *ac; /* NULL: none (yet, or any more) */
    bool connected;
    bool freeing;
    int64_t retry_at_ms; /* monotonic: no connection attempt before */
    int backoff_ms;
    LIST_HEAD(, redis_cmd) cmds; /* every record not yet freed */
};

static int64_t redis_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void redis_backoff(struct store_redis_conn *conn)
{
    conn->retry_at_ms = redis_mono_ms() + conn->backoff_ms;
    conn->backoff_ms *= 2;
    if (conn->backoff_ms > REDIS_BACKOFF_MAX_MS)
        conn->backoff_ms = REDIS_BACKOFF_MAX_MS;
}

/* ---- delivering results --------------------------------------------------------- */

static void rcmd_deliver_get(struct redis_cmd *cmd, const redisReply *r)
{
    if (r && r->type == REDIS_REPLY_STRING)
        cmd->cb.get(cmd->arg, STORE_OK, r->str, r->len);
    else if (r && r->type == REDIS_REPLY_NIL)
        cmd->cb.get(cmd->arg, STORE_NOTFOUND, NULL, 0);
    else
        cmd->cb.get(cmd->arg, STORE_ERROR, NULL, 0);
}

static void rcmd_deliver(struct redis_cmd *cmd, redisReply *r, const char *errstr)
{
    switch (cmd->kind) {
    case RC_GET:
        rcmd_deliver_get(cmd, r);
        break;
    case RC_SET:
        cmd->cb.done(cmd->arg, r && r->type == REDIS_REPLY_STATUS ? STORE_OK : STORE_ERROR);
        break;
    case RC_DEL:
        if (r && r->type == REDIS_REPLY_INTEGER)
            cmd->cb.done(cmd->arg, r->integer > 0 ? STORE_OK : STORE_NOTFOUND);
        else
            cmd->cb.done(cmd->arg, STORE_ERROR);
        break;
    case RC_INCR:
        if (r && r->type == REDIS_REPLY_INTEGER)
            cmd->cb.incr(cmd->arg, STORE_OK, r->integer);
        else
            cmd->cb.incr(cmd->arg, STORE_ERROR, 0);
        break;
    case RC_RAW:
        cmd->cb.raw(cmd->arg, r, r ? NULL : errstr);
        break;
    case RC_SELECT:
        if (!r || r->type == REDIS_REPLY_ERROR)
            log_warn(NULL, "store: redis SELECT %d failed: %s", cmd->t->st->redis_database,
                     r ? r->str : errstr);
        break;
    }
}

static void rcmd_finish(struct redis_cmd *cmd, redisReply *r, const char *errstr)
{
    if (cmd->delivered)
        return;
    cmd->delivered = true;
    event_del(cmd->timer);
    if (!r && cmd->kind != RC_RAW && cmd->kind != RC_SELECT)
        log_debug(NULL, "store: redis command failed: %s", errstr);
    rcmd_deliver(cmd, r, errstr);
}

static void rcmd_free(struct redis_cmd *cmd)
{
    LIST_REMOVE(cmd, link);
    event_free(cmd->timer);
    free(cmd);
}

/* ---- the connection ------------------------------------------------------------- */

static void redis_forget(struct store_redis_conn *conn, const redisAsyncContext *ac)
{
    if (conn->ac == ac) {
        conn->ac = NULL;
        conn->connected = false;
    }
}

static void redis_connect_cb(const redisAsyncContext *ac, int status)
{
    struct store_thread *t = ac->data;
    struct store_redis_conn *conn = t->redis;
    if (status != REDIS_OK) {
        log_warn(NULL, "store: cannot connect to redis: %s", ac->errstr);
        redis_forget(conn, ac);
        redis_backoff(conn);
        return;
    }
    if (conn->ac == ac) {
        conn->connected = true;
        conn->backoff_ms = REDIS_BACKOFF_MIN_MS;
    }
}

static void redis_disconnect_cb(const redisAsyncContext *ac, int status)
{
    struct store_thread *t = ac->data;
    if (status != REDIS_OK && !t->redis->freeing)
        log_warn(NULL, "store: redis connection lost: %s", ac->errstr);
    redis_forget(t->redis, ac);
}

/* Drops a connection that never came up: its commands fail now, the next one
 * tries again after the backoff. */
static void redis_drop(struct store_thread *t)
{
    struct store_redis_conn *conn = t->redis;
    redisAsyncContext *ac = conn->ac;
    if (!ac)
        return;
    log_warn(NULL, "store: redis connection attempt timed out");
    redis_forget(conn, ac);
    redis_backoff(conn);
    redisAsyncFree(ac);
}

static int rcmd_start(struct store_thread *t, enum rcmd_kind kind, union rcmd_cb cb, void *arg,
                      int argc, const char **argv, const size_t *argvlen);

static redisAsyncContext *redis_connect(struct store *st)
{
    if (st->redis_port)
        return redisAsyncConnect(st->redis_host, st->redis_port);
    return redisAsyncConnectUnix(st->redis_host);
}

static int redis_ensure(struct store_thread *t)
{
    struct store_redis_conn *conn = t->redis;
    if (conn->ac)
        return 0;
    if (redis_mono_ms() < conn->retry_at_ms)
        return -1;
    redisAsyncContext *ac = redis_connect(t->st);
    if (!ac || ac->err || redisLibeventAttach(ac, t->base) != REDIS_OK) {
        log_warn(NULL, "store: cannot connect to redis: %s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        redis_backoff(conn);
        return -1;
    }
    ac->data = t;
    redisAsyncSetConnectCallback(ac, redis_connect_cb);
    redisAsyncSetDisconnectCallback(ac, redis_disconnect_cb);
    conn->ac = ac;
    conn->connected = false;
    if (t->st->redis_database != 0) {
        char db[REDIS_INT_TEXT_MAX];
        int n = snprintf(db, sizeof db, "%d", t->st->redis_database);
        const char *argv[] = {"SELECT", db};
        const size_t lens[] = {6, (size_t)n};
        rcmd_start(t, RC_SELECT, (union rcmd_cb){NULL}, NULL, 2, argv, lens);
    }
    return 0;
}

/* ---- commands -------------------------------------------------------------------- */

static void rcmd_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_cmd *cmd = privdata;
    cmd->in_hiredis = false;
    const char *errstr = NULL;
    if (!reply) {
        /* hiredis only says NULL when this connection is going away: let the
         * callbacks below start commands on a new one */
        errstr = ac->errstr[0] ? ac->errstr : "redis connection lost";
        redis_forget(cmd->t->redis, ac);
    }
    rcmd_finish(cmd, reply, errstr);
    rcmd_free(cmd);
}

static void rcmd_timer_cb(evutil_socket_t fd, short what, void *p)
{
    struct redis_cmd *cmd = p;
    struct store_thread *t = cmd->t;
    rcmd_finish(cmd, NULL, cmd->in_hiredis ? "redis command timed out" : cmd->errstr);
    if (!cmd->in_hiredis) {
        rcmd_free(cmd);
        return;
    }
    /* A late reply on a working connection is just ignored; a connection
     * still not up after a whole timeout is given up (frees cmd). */
    if (!t->redis->connected)
        redis_drop(t);
}

static int rcmd_start(struct store_thread *t, enum rcmd_kind kind, union rcmd_cb cb, void *arg,
                      int argc, const char **argv, const size_t *argvlen)
{
    struct store_redis_conn *conn = t->redis;
    if (conn->freeing)
        return -1;
    struct redis_cmd *cmd = calloc(1, sizeof *cmd);
    if (!cmd)
        return -1;
    cmd->timer = event_new(t->base, -1, 0, rcmd_timer_cb, cmd);
    if (!cmd->timer) {
        free(cmd);
        return -1;
    }
    cmd->t = t;
    cmd->kind = kind;
    cmd->cb = cb;
    cmd->arg = arg;
    LIST_INSERT_HEAD(&conn->cmds, cmd, link);
    struct timeval tv = {0, 0};
    if (redis_ensure(t) == 0 &&
        redisAsyncCommandArgv(conn->ac, rcmd_reply_cb, cmd, argc, argv, argvlen) == REDIS_OK) {
        cmd->in_hiredis = true;
        tv = ms_to_timeval(t->st->redis_timeout_ms);
    } else {
        /* never from inside the call: the failure is told from the loop */
        cmd->errstr = "redis not connected";
    }
    event_add(cmd->timer, &tv);
    return 0;
}

int store_redis_get(struct store_thread *t, const void *key, size_t klen, store_get_cb cb,
                    void *arg)
{
    const char *argv[] = {"GET", key};
    const size_t lens[] = {3, klen};
    return rcmd_start(t, RC_GET, (union rcmd_cb){.get = cb}, arg, 2, argv, lens);
}

int store_redis_set(struct store_thread *t, const void *key, size_t klen, const void *val,
                    size_t vlen, int64_t ttl_ms, store_done_cb cb, void *arg)
{
    char ttl[REDIS_INT_TEXT_MAX];
    int n = snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *argv[] = {"SET", key, val, "PX", ttl};
    const size_t lens[] = {3, klen, vlen, 2, (size_t)n};
    return rcmd_start(t, RC_SET, (union rcmd_cb){.done = cb}, arg, ttl_ms > 0 ? 5 : 3, argv, lens);
}

int store_redis_del(struct store_thread *t, const void *key, size_t klen, store_done_cb cb,
                    void *arg)
{
    const char *argv[] = {"DEL", key};
    const size_t lens[] = {3, klen};
    return rcmd_start(t, RC_DEL, (union rcmd_cb){.done = cb}, arg, 2, argv, lens);
}

int store_redis_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
                     int64_t ttl_ms, store_int_cb cb, void *arg)
{
    char d[REDIS_INT_TEXT_MAX], ttl[REDIS_INT_TEXT_MAX];
    int nd = snprintf(d, sizeof d, "%" PRId64, delta);
    int nt = snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms > 0 ? ttl_ms : 0);
    const char *argv[] = {"EVAL", redis_incr_script, "1", key, d, ttl};
    const size_t lens[] = {4, sizeof redis_incr_script - 1, 1, klen, (size_t)nd, (size_t)nt};
    return rcmd_start(t, RC_INCR, (union rcmd_cb){.incr = cb}, arg, 6, argv, lens);
}

/* Commands that only read: what a read-only view (sluice-check --live-store)
 * lets a plugin send. */
static bool redis_read_only_command(const char *name, size_t len)
{
    static const char *const reads[] = {
        "GET",   "MGET",     "EXISTS",    "TTL",    "PTTL",   "TYPE",    "STRLEN",
        "HGET",  "HMGET",    "HGETALL",   "HEXISTS", "HLEN",  "HKEYS",   "HVALS",
        "SMEMBERS", "SISMEMBER", "SMISMEMBER", "SCARD", "LRANGE", "LLEN", "LINDEX",
        "ZSCORE", "ZRANGE",  "ZRANGEBYSCORE", "ZCARD", "ZCOUNT", "ZRANK", "PING",
    };
    for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++)
        if (strlen(reads[i]) == len && strncasecmp(reads[i], name, len) == 0)
            return true;
    return false;
}

int store_redis_argv(struct store_thread *t, int argc, const char *const *argv,
                     const size_t *argvlen, store_redis_cb cb, void *arg)
{
    if (t->st->backend != STORE_REDIS || argc < 1)
        return -1;
    if (t->st->mode == STORE_MODE_READ_ONLY && !redis_read_only_command(argv[0], argvlen[0]))
        return -1;
    return rcmd_start(t, RC_RAW, (union rcmd_cb){.raw = cb}, arg, argc, (const char **)argv,
                      argvlen);
}

/* ---- per thread ---------------------------------------------------------------------- */

int store_redis_thread_init(struct store_thread *t)
{
    t->redis = calloc(1, sizeof *t->redis);
    if (!t->redis)
        return -1;
    t->redis->backoff_ms = REDIS_BACKOFF_MIN_MS;
    return 0;
}

/* Every outstanding command gets its STORE_ERROR now, so whoever waits can
 * release what it holds. */
void store_redis_thread_free(struct store_thread *t)
{
    struct store_redis_conn *conn = t->redis;
    conn->freeing = true;
    if (conn->ac) {
        redisAsyncContext *ac = conn->ac;
        redis_forget(conn, ac);
        redisAsyncFree(ac);
    }
    while (!LIST_EMPTY(&conn->cmds)) {
        struct redis_cmd *cmd = LIST_FIRST(&conn->cmds);
        rcmd_finish(cmd, NULL, "store closing");
        rcmd_free(cmd);
    }
    free(conn);
    t->redis = NULL;
}
