/* sluice-check's backend: recipients and messages go nowhere. It answers
 * like a server that accepts everything, naming the pool a recipient would
 * have gone to, so the relay code runs exactly as it does in the daemon.
 * Replies come from the loop, never inside the call, as a server's would. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "backend.h"
#include "config.h"
#include "generation.h"
#include "pool.h"
#include "reply.h"
#include "worker.h"

struct check_reply {
    backend_cb cb;
    void *arg;
    enum reply_id id; /* R_COUNT: the recipient's RF_CHECK_RCPT */
    struct check_reply *next;
};

struct check_backend {
    struct backend base;
    int pool_index;
    char pool_name[128];
    struct event *deliver_ev;
    struct check_reply *head, *tail;
    bool delivering, closed;
};

/* What a server offering everything says it offers. */
static const struct ehlo_caps check_caps = {
    .pipelining = true, .size = true, .eightbitmime = true, .smtputf8 = true, .dsn = true};

#define CHECK(base) ((struct check_backend *)(base))

static void check_deliver_one(struct check_backend *c, struct check_reply *r)
{
    char text[REPLY_FORMAT_MAX];
    size_t len = r->id == R_COUNT ? reply_format(RF_CHECK_RCPT, c->pool_name, text, sizeof text)
                                  : (memcpy(text, reply_text(r->id), reply_len(r->id) + 1),
                                     reply_len(r->id));
    int code = r->id == R_COUNT ? 250 : reply_code(r->id);
    struct backend_reply br = {
        .status = BACKEND_REPLY, .code = code, .text = text, .len = len, .nlines = 1};
    r->cb(r->arg, &br);
}

static void check_free(struct check_backend *c);

/* Delivers the queued replies in order; a callback that closes the backend
 * drops the rest (the free waits until the loop is out of it). */
static void check_deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct check_backend *c = arg;
    (void)fd;
    (void)what;
    c->delivering = true;
    while (c->head && !c->closed) {
        struct check_reply r = *c->head;
        free(c->head);
        c->head = r.next;
        if (!c->head)
            c->tail = NULL;
        check_deliver_one(c, &r);
    }
    c->delivering = false;
    if (c->closed)
        check_free(c);
}

static void check_queue(struct check_backend *c, enum reply_id id, backend_cb cb, void *arg)
{
    struct check_reply *r = calloc(1, sizeof *r);
    if (!r) {
        struct backend_reply br = {.status = BACKEND_INTERNAL};
        cb(arg, &br);
        return;
    }
    r->cb = cb;
    r->arg = arg;
    r->id = id;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    event_active(c->deliver_ev, 0, 0);
}

static void check_free(struct check_backend *c)
{
    while (c->head) {
        struct check_reply *r = c->head;
        c->head = r->next;
        free(r);
    }
    if (c->deliver_ev)
        event_free(c->deliver_ev);
    free(c);
}

static void check_close(struct backend *b)
{
    struct check_backend *c = CHECK(b);
    if (c->delivering)
        c->closed = true;
    else
        check_free(c);
}

static struct backend *check_open(struct loop *loop, struct generation *gen, struct pool *pool,
                                  int pool_index, const struct backend_client *client,
                                  backend_cb cb, void *arg)
{
    (void)client;
    (void)pool;
    struct check_backend *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base.ops = &backend_check_ops;
    c->pool_index = pool_index;
    snprintf(c->pool_name, sizeof c->pool_name, "%s", gen->cfg->pools[pool_index].name);
    c->deliver_ev = event_new(loop->base, -1, 0, check_deliver_cb, c);
    struct check_reply *r = calloc(1, sizeof *r);
    if (!c->deliver_ev || !r) {
        free(r);
        check_free(c);
        return NULL;
    }
    /* The EHLO reply that says it is open. */
    *r = (struct check_reply){.cb = cb, .arg = arg, .id = R_GENERIC_OK};
    c->head = c->tail = r;
    event_active(c->deliver_ev, 0, 0);
    return &c->base;
}

static void check_command(struct backend *b, enum backend_step step, const char *line,
                          size_t len, backend_cb cb, void *arg)
{
    (void)line;
    (void)len;
    enum reply_id id = step == BSTEP_MAIL   ? R_MAIL_OK
                       : step == BSTEP_RCPT ? R_COUNT
                       : step == BSTEP_RSET ? R_RSET_OK
                       : step == BSTEP_NOOP ? R_NOOP_OK
                                            : R_GENERIC_OK;
    check_queue(CHECK(b), id, cb, arg);
}

static void check_send_message(struct backend *b, struct spool *spool, struct evbuffer *prefix,
                               uint64_t offset, backend_cb cb, void *arg)
{
    (void)spool;
    (void)offset;
    if (prefix)
        evbuffer_free(prefix);
    check_queue(CHECK(b), R_CHECK_EOM, cb, arg);
}

static void check_keepalive(struct backend *b, bool on)
{
    (void)b;
    (void)on;
}

static bool check_usable(const struct backend *b)
{
    (void)b;
    return true;
}

static const struct ehlo_caps *check_get_caps(const struct backend *b)
{
    (void)b;
    return &check_caps;
}

static const char *check_peer_name(const struct backend *b)
{
    (void)b;
    return "-";
}

static int check_pool_index(const struct backend *b) { return CHECK(b)->pool_index; }

const struct backend_ops backend_check_ops = {
    .open = check_open,
    .command = check_command,
    .send_message = check_send_message,
    .keepalive = check_keepalive,
    .close = check_close,
    .usable = check_usable,
    .caps = check_get_caps,
    .peer_name = check_peer_name,
    .pool_index = check_pool_index,
};
