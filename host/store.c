/* The key/value store: opening and the dispatch to the configured backend
 * (store_lmdb.c, store_redis.c). */
#include "store.h"

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
    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    st->backend = conf->backend;
    st->wp = wp;
    int rc = st->backend == STORE_REDIS ? store_redis_open(st, conf, err, errlen)
                                        : store_lmdb_open(st, conf, err, errlen);
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

int store_set(struct store_thread *t, const void *key, size_t klen, const void *val, size_t vlen,
              int64_t ttl_ms, store_done_cb cb, void *arg)
{
    if (t->st->backend == STORE_REDIS)
        return store_redis_set(t, key, klen, val, vlen, ttl_ms, cb, arg);
    return store_lmdb_set(t, key, klen, val, vlen, ttl_ms, cb, arg);
}

int store_del(struct store_thread *t, const void *key, size_t klen, store_done_cb cb, void *arg)
{
    if (t->st->backend == STORE_REDIS)
        return store_redis_del(t, key, klen, cb, arg);
    return store_lmdb_del(t, key, klen, cb, arg);
}

int store_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
               int64_t ttl_ms, store_int_cb cb, void *arg)
{
    if (t->st->backend == STORE_REDIS)
        return store_redis_incr(t, key, klen, delta, ttl_ms, cb, arg);
    return store_lmdb_incr(t, key, klen, delta, ttl_ms, cb, arg);
}
