/* Synchronous access to the store for the operator tool: LMDB through its
 * own read (or write) transactions next to the daemon's, Redis through a
 * blocking hiredis connection (SCAN, GET, PTTL, DEL). */
#include "store_admin.h"
#include "mstime.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "netaddr.h"
#include "store_backend.h"

#define ADMIN_HOST_TEXT_MAX 256
#define ADMIN_PORT_TEXT_MAX 8
#define ADMIN_SCAN_COUNT "1000"
#define ADMIN_PATTERN_MAX 2048

struct store_admin {
    enum store_backend backend;
    MDB_env *env;
    MDB_dbi dbi;
    redisContext *redis;
};

/* ---- LMDB ------------------------------------------------------------------------ */

static int admin_lmdb_open(struct store_admin *a, const struct store_conf *conf, bool write,
                           char *err, size_t errlen)
{
    MDB_txn *txn = NULL;
    unsigned flags = write ? 0 : MDB_RDONLY;
    int rc = mdb_env_create(&a->env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(a->env, (size_t)conf->map_size);
    if (rc == 0)
        rc = mdb_env_open(a->env, conf->path, MDB_NOTLS | flags, 0640);
    if (rc == 0)
        rc = mdb_txn_begin(a->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, &a->dbi);
    if (txn)
        mdb_txn_abort(txn);
    if (rc != 0) {
        snprintf(err, errlen, "cannot open the LMDB store in %s: %s", conf->path,
                 mdb_strerror(rc));
        return -1;
    }
    return 0;
}

/* A live record's value and time left; false when expired or malformed. */
static bool admin_lmdb_record(const MDB_val *v, int64_t now, const void **val, size_t *vlen,
                              int64_t *ttl_ms)
{
    int64_t at;
    if (v->mv_size < STORE_LMDB_EXPIRY_LEN)
        return false;
    memcpy(&at, v->mv_data, sizeof at);
    if (at != 0 && at <= now)
        return false;
    *val = (const char *)v->mv_data + STORE_LMDB_EXPIRY_LEN;
    *vlen = v->mv_size - STORE_LMDB_EXPIRY_LEN;
    *ttl_ms = at == 0 ? -1 : at - now;
    return true;
}

static int64_t admin_lmdb_scan(struct store_admin *a, const void *prefix, size_t plen,
                               store_admin_visit_fn visit, void *arg, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(a->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0 && (rc = mdb_cursor_open(txn, a->dbi, &cur)) != 0)
        mdb_txn_abort(txn);
    if (rc != 0) {
        snprintf(err, errlen, "LMDB: %s", mdb_strerror(rc));
        return -1;
    }
    int64_t now = store_now_ms(), n = 0;
    MDB_val k = {plen, (void *)prefix}, v;
    rc = mdb_cursor_get(cur, &k, &v, plen ? MDB_SET_RANGE : MDB_FIRST);
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
            break;
        const void *val;
        size_t vlen;
        int64_t ttl;
        if (!admin_lmdb_record(&v, now, &val, &vlen, &ttl))
            continue;
        n++;
        if (visit && visit(arg, k.mv_data, k.mv_size, val, vlen, ttl) != 0)
            break;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return n;
}

static int admin_lmdb_get(struct store_admin *a, const void *key, size_t klen,
                          store_admin_visit_fn visit, void *arg, char *err, size_t errlen)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(a->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        snprintf(err, errlen, "LMDB: %s", mdb_strerror(rc));
        return -1;
    }
    MDB_val k = {klen, (void *)key}, v;
    const void *val;
    size_t vlen;
    int64_t ttl;
    rc = mdb_get(txn, a->dbi, &k, &v);
    bool live = rc == 0 && admin_lmdb_record(&v, store_now_ms(), &val, &vlen, &ttl);
    if (live && visit)
        visit(arg, key, klen, val, vlen, ttl);
    mdb_txn_abort(txn);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        snprintf(err, errlen, "LMDB: %s", mdb_strerror(rc));
        return -1;
    }
    return live ? 1 : 0;
}

static int admin_lmdb_del(struct store_admin *a, const void *key, size_t klen, char *err,
                          size_t errlen)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(a->env, NULL, 0, &txn);
    MDB_val k = {klen, (void *)key}, v;
    const void *val;
    size_t vlen;
    int64_t ttl;
    bool live = false;
    if (rc == 0 && (rc = mdb_get(txn, a->dbi, &k, &v)) == 0) {
        live = admin_lmdb_record(&v, store_now_ms(), &val, &vlen, &ttl);
        rc = mdb_del(txn, a->dbi, &k, NULL);
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn)
        mdb_txn_abort(txn);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        snprintf(err, errlen, "LMDB: %s", mdb_strerror(rc));
        return -1;
    }
    return live ? 1 : 0;
}

/* ---- Redis ----------------------------------------------------------------------- */

static int admin_redis_open(struct store_admin *a, const struct store_conf *conf, char *err,
                            size_t errlen)
{
    const char *address = conf->redis_address ? conf->redis_address : "127.0.0.1";
    int64_t ms = conf->redis_timeout_ms > 0 ? conf->redis_timeout_ms
                                            : STORE_REDIS_DEFAULT_TIMEOUT_MS;
    struct timeval tv = ms_to_timeval(ms);
    char host[ADMIN_HOST_TEXT_MAX], port[ADMIN_PORT_TEXT_MAX];
    if (address[0] == '/') {
        a->redis = redisConnectUnixWithTimeout(address, tv);
    } else if (netaddr_split_hostport(address, host, sizeof host, port, sizeof port,
                                      STORE_REDIS_DEFAULT_PORT) == 0) {
        a->redis = redisConnectWithTimeout(host, atoi(port), tv);
    } else {
        snprintf(err, errlen, "bad redis_address \"%s\"", address);
        return -1;
    }
    if (!a->redis || a->redis->err) {
        snprintf(err, errlen, "cannot connect to redis at %s: %s", address,
                 a->redis ? a->redis->errstr : "out of memory");
        return -1;
    }
    redisSetTimeout(a->redis, tv);
    if (conf->redis_database != 0) {
        redisReply *r = redisCommand(a->redis, "SELECT %d", conf->redis_database);
        bool ok = r && r->type != REDIS_REPLY_ERROR;
        freeReplyObject(r);
        if (!ok) {
            snprintf(err, errlen, "redis SELECT %d failed", conf->redis_database);
            return -1;
        }
    }
    return 0;
}

static redisReply *admin_redis_argv(struct store_admin *a, int argc, const char **argv,
                                    const size_t *lens, char *err, size_t errlen)
{
    redisReply *r = redisCommandArgv(a->redis, argc, argv, lens);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis %s: %s", argv[0],
                 r ? r->str : a->redis->errstr[0] ? a->redis->errstr : "no reply");
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* A key's value and time left (pipelined GET and PTTL): 1, 0 when gone. */
static int admin_redis_show(struct store_admin *a, const char *key, size_t klen,
                            store_admin_visit_fn visit, void *arg, int *stop, char *err,
                            size_t errlen)
{
    const char *get[] = {"GET", key}, *pttl[] = {"PTTL", key};
    const size_t lens[] = {3, klen}, plens[] = {4, klen};
    redisAppendCommandArgv(a->redis, 2, get, lens);
    redisAppendCommandArgv(a->redis, 2, pttl, plens);
    redisReply *v = NULL, *t = NULL;
    if (redisGetReply(a->redis, (void **)&v) != REDIS_OK ||
        redisGetReply(a->redis, (void **)&t) != REDIS_OK) {
        snprintf(err, errlen, "redis: %s", a->redis->errstr);
        freeReplyObject(v);
        return -1;
    }
    int rc = 0;
    if (v->type == REDIS_REPLY_STRING || v->type == REDIS_REPLY_ERROR) {
        /* another plugin's hash or set (raw Redis): shown by its error */
        bool str = v->type == REDIS_REPLY_STRING;
        const char *val = str ? v->str : "(not a string value)";
        int64_t ttl = t->type == REDIS_REPLY_INTEGER && t->integer >= 0 ? t->integer : -1;
        if (visit)
            *stop = visit(arg, key, klen, val, str ? v->len : strlen(val), ttl);
        rc = 1;
    }
    freeReplyObject(v);
    freeReplyObject(t);
    return rc;
}

/* The prefix as a SCAN pattern: glob characters escaped, then '*'. */
static size_t admin_redis_pattern(const char *prefix, size_t plen, char *out, size_t outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < plen && n + 3 < outlen; i++) {
        if (strchr("*?[]\\", prefix[i]))
            out[n++] = '\\';
        out[n++] = prefix[i];
    }
    out[n++] = '*';
    return n;
}

static int64_t admin_redis_scan(struct store_admin *a, const char *prefix, size_t plen,
                                store_admin_visit_fn visit, void *arg, char *err, size_t errlen)
{
    char pattern[ADMIN_PATTERN_MAX], cursor[32] = "0";
    size_t patlen = admin_redis_pattern(prefix, plen, pattern, sizeof pattern);
    int64_t n = 0;
    int stop = 0;
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", ADMIN_SCAN_COUNT};
        const size_t lens[] = {4, strlen(cursor), 5, patlen, 5, strlen(ADMIN_SCAN_COUNT)};
        redisReply *r = admin_redis_argv(a, 6, argv, lens, err, errlen);
        if (!r)
            return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            snprintf(err, errlen, "redis SCAN: unexpected reply");
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements && !stop; i++) {
            int rc = admin_redis_show(a, keys->element[i]->str, keys->element[i]->len,
                                      visit, arg, &stop, err, errlen);
            if (rc < 0) {
                freeReplyObject(r);
                return -1;
            }
            n += rc;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0 && !stop);
    return n;
}

static int admin_redis_del(struct store_admin *a, const void *key, size_t klen, char *err,
                           size_t errlen)
{
    const char *argv[] = {"DEL", key};
    const size_t lens[] = {3, klen};
    redisReply *r = admin_redis_argv(a, 2, argv, lens, err, errlen);
    if (!r)
        return -1;
    int rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? 1 : 0;
    freeReplyObject(r);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------------------ */

struct store_admin *store_admin_open(const struct store_conf *conf, bool write, char *err,
                                     size_t errlen)
{
    struct store_admin *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->backend = conf->backend;
    int rc = a->backend == STORE_REDIS ? admin_redis_open(a, conf, err, errlen)
                                       : admin_lmdb_open(a, conf, write, err, errlen);
    if (rc < 0) {
        store_admin_close(a);
        return NULL;
    }
    return a;
}

void store_admin_close(struct store_admin *a)
{
    if (!a)
        return;
    if (a->env)
        mdb_env_close(a->env);
    if (a->redis)
        redisFree(a->redis);
    free(a);
}

int64_t store_admin_scan(struct store_admin *a, const void *prefix, size_t plen,
                         store_admin_visit_fn visit, void *arg, char *err, size_t errlen)
{
    if (a->backend == STORE_REDIS)
        return admin_redis_scan(a, prefix, plen, visit, arg, err, errlen);
    return admin_lmdb_scan(a, prefix, plen, visit, arg, err, errlen);
}

int store_admin_get(struct store_admin *a, const void *key, size_t klen,
                    store_admin_visit_fn visit, void *arg, char *err, size_t errlen)
{
    if (a->backend == STORE_REDIS) {
        int stop = 0;
        return admin_redis_show(a, key, klen, visit, arg, &stop, err, errlen);
    }
    return admin_lmdb_get(a, key, klen, visit, arg, err, errlen);
}

int store_admin_del(struct store_admin *a, const void *key, size_t klen, char *err,
                    size_t errlen)
{
    if (a->backend == STORE_REDIS)
        return admin_redis_del(a, key, klen, err, errlen);
    return admin_lmdb_del(a, key, klen, err, errlen);
}
