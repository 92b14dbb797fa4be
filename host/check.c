/* sluice-check: one loop, one session, driven over a socketpair by a
 * scripted client; the chain and the session code are the daemon's own. */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "config.h"
#include "data_codec.h"
#include "dns.h"
#include "generation.h"
#include "hooks.h"
#include "log.h"
#include "plugin_host.h"
#include "reply.h"
#include "session.h"
#include "session_internal.h"
#include "store.h"
#include "backend.h"
#include "worker.h"
#include "workpool.h"

/* A plugin that never answers must not hang the check. */
#define CHECK_MAX_SECONDS 300
#define CHECK_TRACE_TEXT_MAX 600

struct check_client {
    const struct check_opts *o;
    struct bufferevent *bev;
    struct event_base *base;
    size_t step;      /* index into the script */
    size_t accepted;  /* recipients that got 2xx */
    bool refused;
    bool done;
};

static void check_trace(const struct session *s, int hook, const char *entry,
                        enum sluice_verdict v, const char *text)
{
    printf("  %-10s %-24s %s%s%s\n", hook_name((enum hook_point)hook), entry,
           chain_verdict_name(v), text ? ": " : "", text ? text : "");
}

/* Store keys and values are bytes: shown printable, cut when long. */
static void check_printable(const void *data, size_t len, char *out, size_t outlen)
{
    const unsigned char *p = data;
    size_t n = 0;
    for (size_t i = 0; i < len && n + 4 < outlen; i++)
        out[n++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    if (len && n + 4 >= outlen)
        memcpy(out + n, "...", 3), n += 3;
    out[n] = '\0';
}

static bool check_live_store;

static void check_store_trace(const char *entry, const char *op, const void *key, size_t klen,
                              const void *val, size_t vlen, int64_t ttl_ms, int64_t delta)
{
    char k[CHECK_TRACE_TEXT_MAX], v[CHECK_TRACE_TEXT_MAX];
    check_printable(key, klen, k, sizeof k);
    check_printable(val, vlen, v, sizeof v);
    const char *where = check_live_store ? "not written: read-only" : "scratch store";
    if (strcmp(op, "set") == 0)
        printf("  %-10s %-24s set %s = %s (ttl %" PRId64 " ms; %s)\n", "store", entry, k, v,
               ttl_ms, where);
    else if (strcmp(op, "incr") == 0)
        printf("  %-10s %-24s incr %s by %" PRId64 " (ttl %" PRId64 " ms; %s)\n", "store", entry,
               k, delta, ttl_ms, where);
    else
        printf("  %-10s %-24s %s %s (%s)\n", "store", entry, op, k, where);
}

static void check_send(struct check_client *c, const char *verb, const char *arg)
{
    char line[1200];
    int n = arg ? snprintf(line, sizeof line, "%s%s\r\n", verb, arg)
                : snprintf(line, sizeof line, "%s\r\n", verb);
    if (n < 0 || (size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    printf(">>> %.*s", n, line);
    bufferevent_write(c->bev, line, (size_t)n);
}

static void check_send_path(struct check_client *c, const char *verb, const char *addr)
{
    char arg[1100];
    snprintf(arg, sizeof arg, "%s>", addr);
    check_send(c, verb, arg);
}

static int check_send_message(struct check_client *c)
{
    FILE *f = fopen(c->o->message_file, "rb");
    if (!f) {
        fprintf(stderr, "sluice-check: %s: %s\n", c->o->message_file, strerror(errno));
        return -1;
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char buf[65536];
    bool at_bol = true;
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        data_stuff(buf, n, &at_bol, out);
        total += n;
    }
    fclose(f);
    if (!at_bol)
        evbuffer_add(out, "\r\n", 2);
    evbuffer_add(out, ".\r\n", 3);
    printf(">>> (message, %zu bytes)\n>>> .\n", total);
    return 0;
}

/* The next command of the script, after a reply with code. */
static void check_next(struct check_client *c, int code)
{
    const struct check_opts *o = c->o;
    size_t step = c->step++;
    if (code >= 400 && step > 0)
        c->refused = true;
    if (step >= 3 && step - 3 < o->nrcpts && code < 400)
        c->accepted++;
    /* Nothing more to learn after a refused greeting, HELO or sender, or
     * when no recipient passed. */
    bool pointless = (step <= 2 && code >= 400) ||
                     (step - 2 == o->nrcpts && c->accepted == 0 && step >= 2);
    if (pointless) {
        check_send(c, "QUIT", NULL);
        c->step = SIZE_MAX - 1;
        return;
    }
    if (step == 0) {
        if (code >= 400) {
            check_send(c, "QUIT", NULL);
            c->step = SIZE_MAX - 1;
            return;
        }
        check_send(c, o->esmtp ? "EHLO " : "HELO ", o->helo);
    } else if (step == 1) {
        check_send_path(c, "MAIL FROM:<", o->sender);
    } else if (step - 2 < o->nrcpts) {
        check_send_path(c, "RCPT TO:<", o->rcpts[step - 2]);
    } else if (step - 2 == o->nrcpts && o->message_file) {
        check_send(c, "DATA", NULL);
    } else if (step - 2 == o->nrcpts + 1 && o->message_file && code == 354) {
        if (check_send_message(c) < 0) {
            c->refused = true;
            c->done = true;
            event_base_loopexit(c->base, NULL);
        }
    } else {
        check_send(c, "QUIT", NULL);
        c->step = SIZE_MAX - 1;
    }
}

static void check_read_cb(struct bufferevent *bev, void *arg)
{
    struct check_client *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        size_t len = evbuffer_get_length(in);
        const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
        struct smtp_reply r;
        if (len == 0 || reply_parse(buf, len, &r) != 1)
            return;
        printf("<<< %.*s", (int)r.len, buf);
        int code = r.code;
        evbuffer_drain(in, r.len);
        if (c->step == SIZE_MAX - 1) {
            c->done = true;
            event_base_loopexit(c->base, NULL);
            return;
        }
        if (code == 421) {
            c->refused = true;
            c->done = true;
            event_base_loopexit(c->base, NULL);
            return;
        }
        check_next(c, code);
    }
}

static void check_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct check_client *c = arg;
    c->done = true;
    event_base_loopexit(c->base, NULL);
}

static int check_client_addr(const struct check_opts *o, struct sockaddr_storage *ss, int *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, o->client, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)o->client_port);
        *len = sizeof *in4;
        return 0;
    }
    if (inet_pton(AF_INET6, o->client, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)o->client_port);
        *len = sizeof *in6;
        return 0;
    }
    return -1;
}

/* A dry run never changes the daemon's store: a scratch one by default, or
 * the live one read-only (--live-store). */
static void check_open_store(struct worker *w, struct loop *loop, const struct sluice_config *cfg,
                             bool live)
{
    char err[512];
    enum store_mode mode = live ? STORE_MODE_READ_ONLY : STORE_MODE_SCRATCH;
    w->store = store_open_mode(&cfg->store, mode, w->workpool, err, sizeof err);
    if (w->store)
        loop->store = store_thread_new(w->store, loop->base);
    if (!loop->store)
        printf("store: unavailable (%s); plugins using it fail open\n",
               w->store ? "out of memory" : err);
    else
        printf("store: %s\n", live ? "the configured store, read-only (writes are shown, "
                                     "not done)"
                                   : "scratch (empty, discarded at exit; the configured store "
                                     "is not touched)");
    check_live_store = live;
    store_write_trace = check_store_trace;
}

static int check_setup(struct worker *w, struct loop *loop, const struct sluice_config *cfg,
                       bool live_store)
{
    char err[512];
    w->cfg = cfg;
    w->nloops = 1;
    w->loops = loop;
    w->backend_ops = &backend_check_ops;
    pthread_mutex_init(&w->gen_lock, NULL);
    loop->worker = w;
    loop->base = event_base_new();
    loop_current = loop;
    w->workpool = workpool_new(cfg->thread_pool_size);
    if (!loop->base || !w->workpool)
        return -1;
    loop->dns = dns_ctx_new(loop->base, &cfg->dns, NULL, err, sizeof err);
    if (!loop->dns) {
        fprintf(stderr, "sluice-check: %s\n", err);
        return -1;
    }
    check_open_store(w, loop, cfg, live_store);
    w->gen = generation_new(w, (struct sluice_config *)cfg, false, 1, err, sizeof err);
    if (!w->gen || generation_thread_init(w->gen, loop, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    w->loops_running = true;
    return 0;
}

static void check_teardown(struct worker *w, struct loop *loop)
{
    session_close_all(loop);
    backend_abort_all(loop);
    w->loops_running = false;
    if (w->gen)
        generation_unref(w->gen);
    generation_retire_all(w);
    if (w->workpool)
        workpool_free(w->workpool);
    if (loop->store)
        store_thread_free(loop->store);
    if (loop->dns)
        dns_ctx_free(loop->dns);
    if (w->store)
        store_close(w->store);
    if (loop->base)
        event_base_free(loop->base);
    loop_current = NULL;
    pthread_mutex_destroy(&w->gen_lock);
}

int check_run(const struct sluice_config *cfg, const struct check_opts *o)
{
    struct worker w = {0};
    struct loop loop = {0};
    struct listen_conf listen = {.address = "check", .port = "0"};
    struct sockaddr_storage peer;
    int peerlen, sv[2], rc = 2;
    evthread_use_pthreads();
    if (check_client_addr(o, &peer, &peerlen) < 0) {
        fprintf(stderr, "sluice-check: --client: not an IP address: %s\n", o->client);
        return 2;
    }
    if (check_setup(&w, &loop, cfg, o->live_store) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        check_teardown(&w, &loop);
        return 2;
    }
    chain_trace = check_trace;
    evutil_make_socket_nonblocking(sv[0]);
    evutil_make_socket_nonblocking(sv[1]);
    struct check_client c = {.o = o, .base = loop.base};
    c.bev = bufferevent_socket_new(loop.base, sv[1], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c.bev, check_read_cb, NULL, check_event_cb, &c);
    bufferevent_enable(c.bev, EV_READ | EV_WRITE);
    session_accept(&loop, sv[0], (struct sockaddr *)&peer, peerlen, &listen, NULL);
    struct timeval limit = {.tv_sec = CHECK_MAX_SECONDS};
    event_base_loopexit(loop.base, &limit);
    event_base_dispatch(loop.base);
    /* Let the session see the end and run its disconnect hook. */
    bufferevent_free(c.bev);
    struct timeval settle = {.tv_sec = 0, .tv_usec = 100000};
    event_base_loopexit(loop.base, &settle);
    event_base_dispatch(loop.base);
    rc = !c.done ? 2 : c.refused ? 1 : 0;
    if (!c.done)
        fprintf(stderr, "sluice-check: no end within %d s\n", CHECK_MAX_SECONDS);
    chain_trace = NULL;
    check_teardown(&w, &loop);
    store_write_trace = NULL;
    return rc;
}
