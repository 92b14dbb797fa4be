/* Operations bound to a session and an entry (sdk_op.h), and the SDK's
 * asynchronous services built on them: DNS, timers, the thread pool. */
#include <sys/queue.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include <sluice/async.h>

#include "dns.h"
#include "mstime.h"
#include "log.h"
#include "plugin_host.h"
#include "sdk_op.h"
#include "session_internal.h"
#include "worker.h"
#include "workpool.h"

struct sdk_op {
    struct session *s; /* NULL once abandoned */
    struct plugin_entry *entry;
    sdk_op_cancel_fn cancel;
    void *cancel_arg;
    LIST_ENTRY(sdk_op) link; /* the session's ops */
    bool linked;
    struct plugin_entry *saved_entry; /* restored by sdk_op_end */
};

static void op_unlink(struct sdk_op *op)
{
    if (op->linked)
        LIST_REMOVE(op, link);
    op->linked = false;
}

struct sdk_op *sdk_op_new(struct session *s, sdk_op_cancel_fn cancel, void *cancel_arg)
{
    struct sdk_op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->s = s;
    op->entry = s->current_entry;
    op->cancel = cancel;
    op->cancel_arg = cancel_arg;
    LIST_INSERT_HEAD(&s->ops, op, link);
    op->linked = true;
    return op;
}

bool sdk_op_begin(struct sdk_op *op, struct session **out)
{
    struct session *s = op->s;
    if (!s) {
        free(op);
        return false;
    }
    op_unlink(op);
    /* The callback runs as the entry that started the operation. */
    s->saved_entry_stack = s->current_entry;
    s->current_entry = op->entry;
    s->op_depth++;
    *out = s;
    free(op);
    return true;
}

void sdk_op_end(struct session *s)
{
    s->current_entry = s->saved_entry_stack;
    s->saved_entry_stack = NULL;
    s->op_depth--;
    /* The callback may have ended the session (its disconnect hook resumed):
     * s must not be touched after this. */
    session_free_deferred(s);
}

static void op_abandon(struct sdk_op *op)
{
    op_unlink(op);
    op->s = NULL;
    if (op->cancel) {
        /* Cancelled for good: no result will come back for this op. */
        op->cancel(op->cancel_arg);
        free(op);
    }
}

void sdk_op_abandon_all(struct session *s)
{
    while (!LIST_EMPTY(&s->ops))
        op_abandon(LIST_FIRST(&s->ops));
}

void sdk_op_abandon_entry(struct session *s, const struct plugin_entry *e)
{
    struct sdk_op *op = LIST_FIRST(&s->ops);
    while (op) {
        struct sdk_op *next = LIST_NEXT(op, link);
        if (op->entry == e)
            op_abandon(op);
        op = next;
    }
}

/* ---- DNS ------------------------------------------------------------------ */

struct dns_req {
    struct sdk_op *op;
    struct dns_query *q;
    sluice_dns_cb cb;
    void *arg;
};

static void dns_req_cancel(void *arg)
{
    struct dns_req *r = arg;
    dns_cancel(r->q);
    free(r);
}

static void dns_req_done(void *arg, enum dns_status st, const char *const *rr, size_t nrr,
                         uint32_t ttl)
{
    struct dns_req *r = arg;
    struct session *s;
    if (sdk_op_begin(r->op, &s)) {
        enum sluice_dns_status sst = st == DNS_OK         ? SLUICE_DNS_OK
                                     : st == DNS_NOTFOUND ? SLUICE_DNS_NOTFOUND
                                                          : SLUICE_DNS_TEMPFAIL;
        r->cb((sluice_session *)s, r->arg, sst, rr, nrr, ttl);
        sdk_op_end(s);
    }
    free(r);
}

int sluice_dns_query(sluice_session *ss, const char *name, enum sluice_dns_type type,
                     int64_t timeout_ms, sluice_dns_cb cb, void *arg)
{
    struct session *s = (struct session *)ss;
    if (!cb || !name)
        return -1;
    struct dns_req *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->cb = cb;
    r->arg = arg;
    r->q = dns_query_records(s->loop->dns, name, (enum dns_type)type, timeout_ms, dns_req_done,
                             r);
    if (!r->q) {
        free(r);
        return -1;
    }
    r->op = sdk_op_new(s, dns_req_cancel, r);
    if (!r->op) {
        dns_cancel(r->q);
        free(r);
        return -1;
    }
    return 0;
}

/* ---- timers ------------------------------------------------------------------ */

struct timer_req {
    struct sdk_op *op;
    struct event *ev;
    sluice_timer_cb cb;
    void *arg;
};

static void timer_req_cancel(void *arg)
{
    struct timer_req *r = arg;
    event_free(r->ev);
    free(r);
}

static void timer_req_fire(evutil_socket_t fd, short what, void *arg)
{
    struct timer_req *r = arg;
    struct session *s;
    event_free(r->ev);
    if (sdk_op_begin(r->op, &s)) {
        r->cb((sluice_session *)s, r->arg);
        sdk_op_end(s);
    }
    free(r);
}

int sluice_timer(sluice_session *ss, int64_t ms, sluice_timer_cb cb, void *arg)
{
    struct session *s = (struct session *)ss;
    if (!cb || ms < 0)
        return -1;
    struct timer_req *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->cb = cb;
    r->arg = arg;
    r->ev = event_new(s->loop->base, -1, 0, timer_req_fire, r);
    r->op = r->ev ? sdk_op_new(s, timer_req_cancel, r) : NULL;
    if (!r->op) {
        if (r->ev)
            event_free(r->ev);
        free(r);
        return -1;
    }
    struct timeval tv = ms_to_timeval(ms);
    event_add(r->ev, &tv);
    return 0;
}

/* ---- the thread pool ------------------------------------------------------------ */

struct work_req {
    struct sdk_op *op;
    sluice_work_fn work;
    sluice_work_done_fn done;
    void *arg;
};

static void work_req_run(void *arg)
{
    struct work_req *r = arg;
    r->work(r->arg);
}

static void work_req_done(void *arg)
{
    struct work_req *r = arg;
    struct session *s;
    if (sdk_op_begin(r->op, &s)) {
        r->done((sluice_session *)s, r->arg);
        sdk_op_end(s);
    } else if (r->done) {
        r->done(NULL, r->arg);
    }
    free(r);
}

int sluice_work(sluice_session *ss, sluice_work_fn work, sluice_work_done_fn done, void *arg)
{
    struct session *s = (struct session *)ss;
    struct workpool *wp = s->loop->worker->workpool;
    if (!work || !done || !wp)
        return -1;
    struct work_req *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->work = work;
    r->done = done;
    r->arg = arg;
    r->op = sdk_op_new(s, NULL, NULL);
    if (!r->op || workpool_submit(wp, s->loop->base, work_req_run, work_req_done, r) < 0) {
        if (r->op) {
            struct session *tmp;
            if (sdk_op_begin(r->op, &tmp))
                sdk_op_end(tmp);
        }
        free(r);
        return -1;
    }
    return 0;
}
