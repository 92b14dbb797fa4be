/* The key/value store: opening and the dispatch to the configured backend
 * (store_lmdb.c, store_redis.c). */
#include "store.h"

#include <event2/event.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "netaddr.h"
#include "store_backend.h"

#define STORE_HOST_TEXT_MAX 256
#define STORE_PORT_TEXT_MAX 8
#define STORE_INT_TEXT_MAX 24

int64_t store_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Resolved here, once, before the loops run: hiredis would otherwise call the
 * blocking getaddrinfo() on a loop thread at every reconnection. */
static int store_redis_resolve(struct store *st, const char *address, char *err,
                               size_t errlen)
{
    char host[STORE_HOST_TEXT_MAX], port[STORE_PORT_TEXT_MAX];
    if (netaddr_split_hostport(address, host, sizeof host, port, sizeof port,
                               STORE_REDIS_DEFAULT_PORT) < 0) {
        snprintf(err, errlen, "store: bad redis_address \"%s\"", address);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "store: cannot resolve redis address %s: %s", host,
                 gai_strerror(rc));
        return -1;
    }
    char numeric[NI_MAXHOST];
    rc = getnameinfo(res->ai_addr, res->ai_addrlen, numeric, sizeof numeric, NULL, 0,
                     NI_NUMERICHOST);
    freeaddrinfo(res);
    if (rc != 0) {
        snprintf(err, errlen, "store: cannot resolve redis address %s", host);
        return -1;
    }
    st->redis_host = strdup(numeric);
    st->redis_port = atoi(port);
    return st->redis_host ? 0 : -1;
}

static int store_redis_open(struct store *st, const struct store_conf *conf, char *err,
                            size_t errlen)
{
    const char *address = conf->redis_address ? conf->redis_address : "127.0.0.1";
    st->redis_timeout_ms =
        conf->redis_timeout_ms > 0 ? conf->redis_timeout_ms : STORE_REDIS_DEFAULT_TIMEOUT_MS;
    st->redis_database = conf->redis_database;
    if (address[0] == '/') {
        st->redis_host = strdup(address);
        st->redis_port = 0;
        if (!st->redis_host)
            snprintf(err, errlen, "out of memory");
        return st->redis_host ? 0 : -1;
    }
    return store_redis_resolve(st, address, err, errlen);
}

struct store *store_open(const struct store_conf *conf, struct workpool *wp, char *err,
                         size_t errlen)
{
    return store_open_mode(conf, STORE_MODE_LIVE, wp, err, errlen);
}

struct store *store_open_mode(const struct store_conf *conf, enum store_mode mode,
                              struct workpool *wp, char *err, size_t errlen)
{
    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    st->backend = mode == STORE_MODE_SCRATCH ? STORE_LMDB : conf->backend;
    st->mode = mode;
    st->wp = wp;
    int rc;
    if (mode == STORE_MODE_SCRATCH)
        rc = store_lmdb_open_scratch(st, conf, err, errlen);
    else if (st->backend == STORE_REDIS)
        rc = store_redis_open(st, conf, err, errlen);
    else
        rc = store_lmdb_open(st, conf, err, errlen);
    if (rc < 0) {
        store_close(st);
        return NULL;
    }
    return st;
}

void store_close(struct store *st)
{
    if (!st)
        return;
    store_lmdb_close(st);
    free(st->redis_host);
    free(st);
}

struct store_thread *store_thread_new(struct store *st, struct event_base *base)
{
    struct store_thread *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->st = st;
    t->base = base;
    int rc = st->backend == STORE_REDIS ? store_redis_thread_init(t) : store_lmdb_thread_init(t);
    if (rc < 0) {
        free(t);
        return NULL;
    }
    return t;
}

void store_thread_free(struct store_thread *t)
{
    if (!t)
        return;
    if (t->st->backend == STORE_REDIS)
        store_redis_thread_free(t);
    else
        store_lmdb_thread_free(t);
    free(t);
}

int store_get(struct store_thread *t, const void *key, size_t klen, store_get_cb cb, void *arg)
{
    if (t->st->backend == STORE_REDIS)
        return store_redis_get(t, key, klen, cb, arg);
    return store_lmdb_get(t, key, klen, cb, arg);
}

/* ---- read-only: writes answered, not done ------------------------------------ */

struct store_ro_write {
    union {
        store_done_cb done;
        store_int_cb incr;
    } cb;
    void *arg;
    int64_t delta;
};

static void store_ro_done(evutil_socket_t fd, short what, void *p)
{
    struct store_ro_write *w = p;
    w->cb.done(w->arg, STORE_OK);
    free(w);
}

/* set and del: "done", from the loop as every store answer is. */
static int store_ro_ack(struct store_thread *t, store_done_cb cb, void *arg)
{
    struct store_ro_write *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->cb.done = cb;
    w->arg = arg;
    struct timeval now = {0, 0};
    if (event_base_once(t->base, -1, EV_TIMEOUT, store_ro_done, w, &now) < 0) {
        free(w);
        return -1;
    }
    return 0;
}

static void store_ro_incr_read(void *p, enum store_status status, const void *value, size_t len)
{
    struct store_ro_write *w = p;
    char text[STORE_INT_TEXT_MAX] = "0";
    if (status == STORE_OK && len < sizeof text) {
        memcpy(text, value, len);
        text[len] = '\0';
    }
    if (status == STORE_ERROR)
        w->cb.incr(w->arg, STORE_ERROR, 0);
    else
        w->cb.incr(w->arg, STORE_OK, strtoll(text, NULL, 10) + w->delta);
    free(w);
}

/* incr: what the counter would become. */
static int store_ro_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
                         store_int_cb cb, void *arg)
{
    struct store_ro_write *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->cb.incr = cb;
    w->arg = arg;
    w->delta = delta;
    if (store_get(t, key, klen, store_ro_incr_read, w) < 0) {
        free(w);
        return -1;
    }
    return 0;
}

static bool store_read_only(const struct store_thread *t)
{
    return t->st->mode == STORE_MODE_READ_ONLY;
}

int store_set(struct store_thread *t, const void *key, size_t klen, const void *val, size_t vlen,
              int64_t ttl_ms, store_done_cb cb, void *arg)
{
    if (store_read_only(t))
        return store_ro_ack(t, cb, arg);
    if (t->st->backend == STORE_REDIS)
        return store_redis_set(t, key, klen, val, vlen, ttl_ms, cb, arg);
    return store_lmdb_set(t, key, klen, val, vlen, ttl_ms, cb, arg);
}

int store_del(struct store_thread *t, const void *key, size_t klen, store_done_cb cb, void *arg)
{
    if (store_read_only(t))
        return store_ro_ack(t, cb, arg);
    if (t->st->backend == STORE_REDIS)
        return store_redis_del(t, key, klen, cb, arg);
    return store_lmdb_del(t, key, klen, cb, arg);
}

int store_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
               int64_t ttl_ms, store_int_cb cb, void *arg)
{
    if (store_read_only(t))
        return store_ro_incr(t, key, klen, delta, cb, arg);
    if (t->st->backend == STORE_REDIS)
        return store_redis_incr(t, key, klen, delta, ttl_ms, cb, arg);
    return store_lmdb_incr(t, key, klen, delta, ttl_ms, cb, arg);
}
