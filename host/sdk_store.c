/* The SDK's key/value store (<sluice/store.h>): the store of the session's
 * loop thread, with every result bound to the session and entry that asked
 * (sdk_op.h). The store's result always arrives, so the operations need no
 * cancel function: an abandoned one is simply not shown to the plugin. */
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/store.h>

#include "plugin_host.h"
#include "sdk_op.h"
#include "session_internal.h"
#include "store.h"
#include "worker.h"

struct kv_req {
    struct sdk_op *op;
    union {
        sluice_kv_get_cb get;
        sluice_kv_done_cb done;
        sluice_kv_int_cb incr;
        sluice_redis_cb redis;
    } cb;
    void *arg;
};

static enum sluice_kv_status kv_status(enum store_status st)
{
    switch (st) {
    case STORE_OK:
        return SLUICE_KV_OK;
    case STORE_NOTFOUND:
        return SLUICE_KV_NOTFOUND;
    case STORE_ERROR:
        break;
    }
    return SLUICE_KV_ERROR;
}

store_write_trace_fn store_write_trace;

static void kv_trace(const struct session *s, const char *op, const void *key, size_t klen,
                     const void *val, size_t vlen, int64_t ttl_ms, int64_t delta)
{
    if (store_write_trace)
        store_write_trace(s->current_entry ? s->current_entry->name : "?", op, key, klen, val,
                          vlen, ttl_ms, delta);
}

static struct store_thread *kv_store(struct session *s)
{
    return s->loop ? s->loop->store : NULL;
}

static struct kv_req *kv_req_new(struct session *s, void *arg)
{
    struct kv_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->arg = arg;
    r->op = sdk_op_new(s, NULL, NULL);
    if (!r->op) {
        free(r);
        return NULL;
    }
    return r;
}

/* The store call did not start: consume the op without telling the plugin. */
static int kv_req_fail(struct kv_req *r)
{
    struct session *s;
    if (sdk_op_begin(r->op, &s))
        sdk_op_end(s);
    free(r);
    return -1;
}

/* ---- get / set / del / incr ---------------------------------------------------- */

static void kv_get_done(void *arg, enum store_status st, const void *value, size_t len)
{
    struct kv_req *r = arg;
    struct session *s;
    if (sdk_op_begin(r->op, &s)) {
        r->cb.get((sluice_session *)s, r->arg, kv_status(st), value, len);
        sdk_op_end(s);
    }
    free(r);
}

static void kv_done_done(void *arg, enum store_status st)
{
    struct kv_req *r = arg;
    struct session *s;
    if (sdk_op_begin(r->op, &s)) {
        if (r->cb.done)
            r->cb.done((sluice_session *)s, r->arg, kv_status(st));
        sdk_op_end(s);
    }
    free(r);
}

static void kv_incr_done(void *arg, enum store_status st, int64_t value)
{
    struct kv_req *r = arg;
    struct session *s;
    if (sdk_op_begin(r->op, &s)) {
        r->cb.incr((sluice_session *)s, r->arg, kv_status(st), value);
        sdk_op_end(s);
    }
    free(r);
}

int sluice_kv_get(sluice_session *ss, const void *key, size_t klen, sluice_kv_get_cb cb,
                  void *arg)
{
    struct session *s = (struct session *)ss;
    struct store_thread *t = kv_store(s);
    if (!t || !cb || (!key && klen))
        return -1;
    struct kv_req *r = kv_req_new(s, arg);
    if (!r)
        return -1;
    r->cb.get = cb;
    if (store_get(t, key, klen, kv_get_done, r) < 0)
        return kv_req_fail(r);
    return 0;
}

int sluice_kv_set(sluice_session *ss, const void *key, size_t klen, const void *value,
                  size_t vlen, int64_t ttl_ms, sluice_kv_done_cb cb, void *arg)
{
    struct session *s = (struct session *)ss;
    struct store_thread *t = kv_store(s);
    if (!t || (!key && klen) || (!value && vlen))
        return -1;
    struct kv_req *r = kv_req_new(s, arg);
    if (!r)
        return -1;
    r->cb.done = cb;
    kv_trace(s, "set", key, klen, value, vlen, ttl_ms, 0);
    if (store_set(t, key, klen, value, vlen, ttl_ms > 0 ? ttl_ms : 0, kv_done_done, r) < 0)
        return kv_req_fail(r);
    return 0;
}

int sluice_kv_del(sluice_session *ss, const void *key, size_t klen, sluice_kv_done_cb cb,
                  void *arg)
{
    struct session *s = (struct session *)ss;
    struct store_thread *t = kv_store(s);
    if (!t || (!key && klen))
        return -1;
    struct kv_req *r = kv_req_new(s, arg);
    if (!r)
        return -1;
    r->cb.done = cb;
    kv_trace(s, "del", key, klen, NULL, 0, 0, 0);
    if (store_del(t, key, klen, kv_done_done, r) < 0)
        return kv_req_fail(r);
    return 0;
}

int sluice_kv_incr(sluice_session *ss, const void *key, size_t klen, int64_t delta,
                   int64_t ttl_ms, sluice_kv_int_cb cb, void *arg)
{
    struct session *s = (struct session *)ss;
    struct store_thread *t = kv_store(s);
    if (!t || !cb || (!key && klen))
        return -1;
    struct kv_req *r = kv_req_new(s, arg);
    if (!r)
        return -1;
    r->cb.incr = cb;
    kv_trace(s, "incr", key, klen, NULL, 0, ttl_ms, delta);
    if (store_incr(t, key, klen, delta, ttl_ms > 0 ? ttl_ms : 0, kv_incr_done, r) < 0)
        return kv_req_fail(r);
    return 0;
}

/* ---- raw Redis ---------------------------------------------------------------------- */

static void redis_reply_free(struct sluice_redis_reply *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nelements; i++)
        redis_reply_free((struct sluice_redis_reply *)r->elements[i]);
    free((void *)r->elements);
    free(r);
}

/* The copy points into hiredis's reply: valid while that reply is. */
static struct sluice_redis_reply *redis_reply_convert(const redisReply *in)
{
    struct sluice_redis_reply *out = calloc(1, sizeof *out);
    if (!out)
        return NULL;
    switch (in->type) {
    case REDIS_REPLY_INTEGER:
        out->type = SLUICE_REDIS_INTEGER;
        out->integer = in->integer;
        return out;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        out->type = in->type == REDIS_REPLY_ERROR ? SLUICE_REDIS_ERROR : SLUICE_REDIS_STRING;
        out->str = in->str;
        out->len = in->len;
        return out;
    case REDIS_REPLY_ARRAY:
        break;
    default:
        out->type = SLUICE_REDIS_NIL;
        return out;
    }
    out->type = SLUICE_REDIS_ARRAY;
    if (in->elements == 0)
        return out;
    const struct sluice_redis_reply **elems = calloc(in->elements, sizeof *elems);
    out->elements = elems;
    if (!elems) {
        free(out);
        return NULL;
    }
    for (; out->nelements < in->elements; out->nelements++) {
        elems[out->nelements] = redis_reply_convert(in->element[out->nelements]);
        if (!elems[out->nelements]) {
            redis_reply_free(out);
            return NULL;
        }
    }
    return out;
}

static void redis_req_done(void *arg, void *reply, const char *errstr)
{
    struct kv_req *r = arg;
    struct session *s;
    if (sdk_op_begin(r->op, &s)) {
        struct sluice_redis_reply *conv = reply ? redis_reply_convert(reply) : NULL;
        struct sluice_redis_reply failed = {.type = SLUICE_REDIS_ERROR};
        if (!conv) {
            failed.str = reply ? "out of memory" : errstr ? errstr : "redis failure";
            failed.len = strlen(failed.str);
        }
        r->cb.redis((sluice_session *)s, r->arg, conv ? conv : &failed);
        redis_reply_free(conv);
        sdk_op_end(s);
    }
    free(r);
}

int sluice_redis(sluice_session *ss, int argc, const char *const *argv, const size_t *argvlen,
                 sluice_redis_cb cb, void *arg)
{
    struct session *s = (struct session *)ss;
    struct store_thread *t = kv_store(s);
    if (!t || !cb || argc < 1 || !argv || !argvlen)
        return -1;
    struct kv_req *r = kv_req_new(s, arg);
    if (!r)
        return -1;
    r->cb.redis = cb;
    if (store_redis_argv(t, argc, argv, argvlen, redis_req_done, r) < 0)
        return kv_req_fail(r);
    return 0;
}
