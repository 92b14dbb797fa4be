/* The SDK's entry-level timers and DNS: operations bound to a chain entry
 * and the loop thread that started them, not to a session. Each thread keeps
 * its own list per entry (only that thread touches it), so retiring the
 * chain on a thread cancels exactly what that thread started. */
#include <sys/queue.h>
#include <stdlib.h>

#include <event2/event.h>

#include <sluice/async.h>

#include "dns.h"
#include "mstime.h"
#include "plugin_host.h"
#include "worker.h"

struct entry_op {
    struct plugin_entry *entry;
    int index;
    LIST_ENTRY(entry_op) link; /* the entry's thread_ops[index] */
    bool linked;
    struct event *timer;     /* a timer op */
    struct dns_query *query; /* a DNS op */
    sluice_entry_timer_cb timer_cb;
    sluice_entry_dns_cb dns_cb;
    void *arg;
};

/* The calling thread's loop, when e may start an operation there. */
static struct loop *entry_op_loop(const struct plugin_entry *e)
{
    struct loop *loop = loop_current;
    if (!e || !loop || loop->worker != e->worker || loop->index < 0 ||
        loop->index >= e->nthreads || e->thread_retired[loop->index])
        return NULL;
    return loop;
}

static struct entry_op *entry_op_new(struct plugin_entry *e, const struct loop *loop, void *arg)
{
    struct entry_op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->entry = e;
    op->index = loop->index;
    op->arg = arg;
    return op;
}

static void entry_op_link(struct entry_op *op)
{
    LIST_INSERT_HEAD(&op->entry->thread_ops[op->index], op, link);
    op->linked = true;
}

static void entry_op_unlink(struct entry_op *op)
{
    if (op->linked)
        LIST_REMOVE(op, link);
    op->linked = false;
}

void entry_ops_cancel(struct plugin_entry *e, int index)
{
    while (!LIST_EMPTY(&e->thread_ops[index])) {
        struct entry_op *op = LIST_FIRST(&e->thread_ops[index]);
        entry_op_unlink(op);
        if (op->timer)
            event_free(op->timer);
        dns_cancel(op->query);
        free(op);
    }
}

/* ---- timers ------------------------------------------------------------------ */

static void entry_timer_fire(evutil_socket_t fd, short what, void *arg)
{
    struct entry_op *op = arg;
    struct plugin_entry *e = op->entry;
    void *thread_state = e->thread_state[op->index];
    sluice_entry_timer_cb cb = op->timer_cb;
    void *cb_arg = op->arg;
    entry_op_unlink(op);
    event_free(op->timer);
    free(op);
    cb((sluice_entry *)e, thread_state, cb_arg);
}

int sluice_entry_timer(sluice_entry *se, int64_t ms, sluice_entry_timer_cb cb, void *arg)
{
    struct plugin_entry *e = (struct plugin_entry *)se;
    struct loop *loop = entry_op_loop(e);
    if (!loop || !cb || ms < 0)
        return -1;
    struct entry_op *op = entry_op_new(e, loop, arg);
    if (!op)
        return -1;
    op->timer_cb = cb;
    op->timer = evtimer_new(loop->base, entry_timer_fire, op);
    struct timeval tv = ms_to_timeval(ms);
    if (!op->timer || evtimer_add(op->timer, &tv) < 0) {
        if (op->timer)
            event_free(op->timer);
        free(op);
        return -1;
    }
    entry_op_link(op);
    return 0;
}

/* ---- DNS ------------------------------------------------------------------------ */

static void entry_dns_done(void *arg, enum dns_status st, const char *const *rr, size_t nrr,
                           uint32_t ttl)
{
    struct entry_op *op = arg;
    struct plugin_entry *e = op->entry;
    void *thread_state = e->thread_state[op->index];
    sluice_entry_dns_cb cb = op->dns_cb;
    void *cb_arg = op->arg;
    entry_op_unlink(op);
    free(op);
    enum sluice_dns_status sst = st == DNS_OK         ? SLUICE_DNS_OK
                                 : st == DNS_NOTFOUND ? SLUICE_DNS_NOTFOUND
                                                      : SLUICE_DNS_TEMPFAIL;
    cb((sluice_entry *)e, thread_state, cb_arg, sst, rr, nrr, ttl);
}

int sluice_entry_dns_query(sluice_entry *se, const char *name, enum sluice_dns_type type,
                           int64_t timeout_ms, sluice_entry_dns_cb cb, void *arg)
{
    struct plugin_entry *e = (struct plugin_entry *)se;
    struct loop *loop = entry_op_loop(e);
    if (!loop || !loop->dns || !cb || !name)
        return -1;
    struct entry_op *op = entry_op_new(e, loop, arg);
    if (!op)
        return -1;
    op->dns_cb = cb;
    /* The answer never comes from inside this call (dns.h), so the op is
     * linked before it can be looked for. */
    op->query = dns_query_records(loop->dns, name, (enum dns_type)type, timeout_ms,
                                  entry_dns_done, op);
    if (!op->query) {
        free(op);
        return -1;
    }
    entry_op_link(op);
    return 0;
}
