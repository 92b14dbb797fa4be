#include "backend.h"
#include "mstime.h"

#include <sys/queue.h>
#include <errno.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "generation.h"
#include "host_metrics.h"
#include "io.h"
#include "log.h"
#include "netaddr.h"
#include "pool.h"
#include "proxy_proto.h"
#include "smtp_cmd.h"
#include "spool.h"
#include "tls.h"
#include "worker.h"

/* Waiting for QUIT's answer is a courtesy; it must not hold a slot long. */
#define BACKEND_QUIT_WAIT_MS 5000
#define BACKEND_REPLY_STACK 2048
/* A streamed message goes on in pieces of at least this much (the rest at
 * its end): each piece costs a write, and a piece per client read would add
 * writes for no gain in time. */
#define BACKEND_STREAM_PIECE (32 * 1024)
/* Command entries a connection keeps for reuse: a pipelined transaction's. */
#define BACKEND_SPARE_PENDING 4

enum backend_state {
    B_WAIT_SLOT,
    B_RESOLVING,
    B_CONNECTING,
    B_GREETING,
    B_EHLO,
    B_STARTTLS,      /* STARTTLS sent, its 220 awaited */
    B_TLS_HANDSHAKE, /* the TLS handshake runs */
    B_XCLIENT,
    B_XCLIENT_EHLO,
    B_REUSE_RSET,    /* a kept connection: RSET, before XCLIENT for an XCLIENT pool */
    B_NAME_WAIT,     /* XCLIENT waits for the client's reverse name (backend_name_known) */
    B_READY,
    B_IDLE,          /* kept for the next session of the pool (loop->backend_idle) */
    B_CLOSING,
    B_DEAD,
};

/* P_BODY: a streamed message after the server's 3xx, before its final dot:
 * no reply is awaited. */
enum pending_kind { P_USER, P_NOOP, P_DATA, P_BODY, P_FINAL };

struct pending {
    enum pending_kind kind;
    enum backend_step step; /* what the reply answers, for the class check */
    backend_cb cb;
    void *arg;
    struct spool *spool;
    struct evbuffer *prefix; /* a rewritten header, sent before the spool from offset */
    uint64_t offset;         /* sent from here; cut-through: how much of the spool went */
    bool stream;      /* cut-through: the body follows the spool as it grows */
    bool end;         /* cut-through: the client's end of data came, the dot follows */
    bool held;        /* not written yet: the server takes one command at a time */
    uint64_t sent_at; /* bytes_out once its command (or body) is written */
    uint64_t mails_at; /* the connection's mails_sent when it was queued */
    char *line;       /* P_USER's command, kept while it may go again (backend_replay) */
    size_t line_len;
    TAILQ_ENTRY(pending) link;
};

struct smtp_backend {
    struct backend base; /* first: the handle the session holds */
    struct loop *loop;
    struct generation *gen; /* its pool and pool_conf live there */
    LIST_ENTRY(smtp_backend) loop_link; /* the loop's backend_list */
    struct pool *pool;
    const struct pool_conf *pc;
    int pool_index;
    enum backend_state state;

    char sid[32];
    struct sockaddr_storage client_addr, client_local;
    char *client_helo;
    char *client_name; /* confirmed name, "[UNAVAILABLE]" or "[TEMPUNAVAIL]" */
    bool client_esmtp;

    struct pool_waiter *waiter;
    bool has_slot;
    int server, tried;
    struct dns_query *dnsq;
    struct io *io; /* the connection to the current server; NULL between servers */
    char peer[300];

    struct ehlo_caps caps;
    bool tls_done; /* the connection runs TLS: the EHLO after it is the one that counts */
    backend_cb open_cb;
    void *open_arg;

    TAILQ_HEAD(pending_queue, pending) awaited; /* commands sent, replies not yet in, in order */
    struct pending_queue spare_pending;         /* done with, for the next commands */
    int nspare_pending;
    struct event *noop_timer;
    bool keepalive;
    struct event *quit_timer;
    struct event *start_ev;
    struct event *name_ev; /* XCLIENT goes once the client's name is known */
    uint64_t bytes_out; /* everything ever put into the output buffer */

    int in_handler;
    bool free_when_idle;

    /* Kept across client sessions (backend_park). */
    LIST_ENTRY(smtp_backend) idle_link; /* loop->backend_idle while B_IDLE, or
                                           loop->backend_spares while spare */
    struct pool_idle idle;              /* the pool's view: evictable */
    struct event *idle_timer;
    bool parked;        /* in loop->backend_idle */
    bool reusing;       /* a kept connection's new-session handshake runs */
    bool dirty;         /* a MAIL was sent and its transaction not ended */
    uint64_t mails_sent; /* MAIL commands ever written: an RSET ends only those before it */
    bool xclient_sent;  /* pipelined behind the reuse's RSET */
    bool name_pending;  /* the client's reverse lookup still runs */
    int transactions;   /* MAIL commands on this connection */
    bool out_of_memory; /* a write failed for memory: the loss is ours (451 4.3.0) */
    bool unconfirmed;   /* a clean kept connection taken without a word: no reply yet */
    bool replaying;     /* its commands wait for a new connection (backend_replay) */
    bool streaming;     /* DATA of a streamed message sent, its final dot not yet */
    bool spare;         /* opened for no session, to be kept idle (backend_renew) */
};

#define SMTP(base) ((struct smtp_backend *)(base))
#define CSMTP(base) ((const struct smtp_backend *)(base))

static void backend_try_server(struct smtp_backend *b);
static void backend_spare_ready(struct smtp_backend *b);
static void backend_reuse_begin(struct smtp_backend *b);
static bool backend_reuse_xclient(const struct smtp_backend *b);
static const char *backend_client_name(const struct backend_client *c);
static void backend_reuse_failed(struct smtp_backend *b, const char *why);
static void backend_replay_send(struct smtp_backend *b);
static bool backend_replay(struct smtp_backend *b, const char *why);
static void backend_confirmed(struct smtp_backend *b);
static enum backend_step backend_awaited(const struct smtp_backend *b);
static void backend_violation(struct smtp_backend *b, const char *what, const char *text,
                              size_t len);
static void backend_input(struct io *io, void *arg);
static void backend_drained(struct io *io, void *arg);
static void backend_io_event(struct io *io, enum io_event ev, void *arg);

static const struct io_callbacks backend_io_callbacks = {
    .input = backend_input,
    .drained = backend_drained,
    .event = backend_io_event,
};

static struct timeval ms_to_tv(int64_t ms)
{
    struct timeval tv = ms_to_timeval(ms);
    return tv;
}

/* ---- lifetime --------------------------------------------------------- */

static void pending_free(struct pending *p)
{
    if (p->prefix)
        evbuffer_free(p->prefix);
    free(p->line);
    free(p);
}

/* A command's entry is done with: kept for the connection's next commands
 * (three or four a transaction, a malloc and a free each otherwise). */
static void pending_release(struct smtp_backend *b, struct pending *p)
{
    if (b->nspare_pending >= BACKEND_SPARE_PENDING) {
        pending_free(p);
        return;
    }
    if (p->prefix)
        evbuffer_free(p->prefix);
    free(p->line);
    *p = (struct pending){0};
    TAILQ_INSERT_HEAD(&b->spare_pending, p, link);
    b->nspare_pending++;
}

static struct pending *pending_take(struct smtp_backend *b)
{
    struct pending *p = TAILQ_FIRST(&b->spare_pending);
    if (!p)
        return calloc(1, sizeof *p);
    TAILQ_REMOVE(&b->spare_pending, p, link);
    b->nspare_pending--;
    return p;
}

static void backend_unpark(struct smtp_backend *b)
{
    if (!b->parked)
        return;
    b->parked = false;
    LIST_REMOVE(b, idle_link);
    pool_idle_remove(b->pool, &b->idle);
    if (b->idle_timer)
        event_del(b->idle_timer);
}

static void backend_spare_unlist(struct smtp_backend *b)
{
    if (!b->spare)
        return;
    b->spare = false;
    LIST_REMOVE(b, idle_link);
}

static void backend_free(struct smtp_backend *b)
{
    if (b->in_handler > 0) {
        b->free_when_idle = true;
        return;
    }
    backend_unpark(b);
    backend_spare_unlist(b);
    if (b->idle.ev)
        event_free(b->idle.ev);
    if (b->idle_timer)
        event_free(b->idle_timer);
    if (b->waiter)
        pool_cancel(b->waiter);
    if (b->dnsq)
        dns_cancel(b->dnsq);
    io_free(b->io);
    if (b->has_slot)
        pool_release(b->pool, (const struct sockaddr *)&b->client_addr);
    if (b->noop_timer)
        event_free(b->noop_timer);
    if (b->quit_timer)
        event_free(b->quit_timer);
    if (b->start_ev)
        event_free(b->start_ev);
    if (b->name_ev)
        event_free(b->name_ev);
    while (!TAILQ_EMPTY(&b->awaited)) {
        struct pending *p = TAILQ_FIRST(&b->awaited);
        TAILQ_REMOVE(&b->awaited, p, link);
        pending_free(p);
    }
    while (!TAILQ_EMPTY(&b->spare_pending)) {
        struct pending *p = TAILQ_FIRST(&b->spare_pending);
        TAILQ_REMOVE(&b->spare_pending, p, link);
        pending_free(p);
    }
    free(b->client_helo);
    free(b->client_name);
    LIST_REMOVE(b, loop_link);
    atomic_fetch_sub(&b->loop->worker->backends, 1);
    struct generation *gen = b->gen;
    free(b);
    if (gen)
        generation_unref(gen);
}

void backend_abort_all(struct loop *loop)
{
    while (!LIST_EMPTY(&loop->backend_list)) {
        struct smtp_backend *b = LIST_FIRST(&loop->backend_list);
        b->in_handler = 0;
        backend_free(b);
    }
}

static void backend_enter(struct smtp_backend *b) { b->in_handler++; }

static void backend_quit_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_backend *b = arg;
    b->state = B_DEAD;
    backend_free(b);
}

/* Returns false when the backend was freed meanwhile and must not be touched. */
static bool backend_leave(struct smtp_backend *b)
{
    if (--b->in_handler == 0 && b->free_when_idle) {
        b->free_when_idle = false;
        backend_free(b);
        return false;
    }
    return true;
}

static void backend_drop_connection(struct smtp_backend *b)
{
    io_free(b->io);
    b->io = NULL;
}

/* ---- replies to the owner --------------------------------------------- */

static void backend_deliver(backend_cb cb, void *arg, enum backend_status st, int code,
                            const char *text, size_t len, size_t nlines)
{
    struct backend_reply r = {
        .status = st, .code = code, .text = text, .len = len, .nlines = nlines};
    if (cb)
        cb(arg, &r);
}

/* A dead connection's queued commands learn it, in order. */
static void backend_fail_awaited(struct smtp_backend *b, enum backend_status st)
{
    b->replaying = false;
    while (!TAILQ_EMPTY(&b->awaited) && b->state == B_DEAD) {
        struct pending *p = TAILQ_FIRST(&b->awaited);
        TAILQ_REMOVE(&b->awaited, p, link);
        backend_cb cb = p->cb;
        void *arg = p->arg;
        pending_release(b, p);
        backend_deliver(cb, arg, st, 0, NULL, 0, 0);
    }
}

static void backend_open_done(struct smtp_backend *b, enum backend_status st, const char *text,
                              size_t len, int code, size_t nlines)
{
    if (b->spare) {
        /* Opened for nobody: a failure costs nothing but the attempt. */
        b->state = B_DEAD;
        backend_free(b);
        return;
    }
    if (b->replaying) {
        /* The session was told long ago: the new connection failed under
         * the commands it carries. */
        b->state = B_DEAD;
        backend_fail_awaited(b, st == BACKEND_INTERNAL ? st : BACKEND_LOST);
        return;
    }
    backend_cb cb = b->open_cb;
    b->open_cb = NULL;
    backend_deliver(cb, b->open_arg, st, code, text, len, nlines);
}

/* How a lost connection is told: our memory (451 4.3.0) or the server. */
static enum backend_status backend_lost_status(const struct smtp_backend *b)
{
    return b->out_of_memory ? BACKEND_INTERNAL : BACKEND_LOST;
}

/* The connection is unusable: every queued command learns it. */
static void backend_fail(struct smtp_backend *b, const char *why)
{
    if (b->state == B_DEAD)
        return;
    if (b->reusing && b->state < B_READY) {
        backend_reuse_failed(b, why);
        return;
    }
    if (b->state == B_IDLE) {
        log_info(NULL, "backend %s: idle connection (last session %s): %s", b->peer, b->sid,
                 why);
        backend_unpark(b);
        b->state = B_DEAD;
        backend_free(b);
        return;
    }
    if (b->spare) {
        log_info(NULL, "backend %s: connection opened ahead of need: %s", b->peer, why);
        b->state = B_DEAD;
        backend_free(b);
        return;
    }
    bool was_open = b->state >= B_READY;
    if (b->state != B_CLOSING)
        log_warn(b->sid, "backend %s: %s", b->peer, why);
    b->state = B_DEAD;
    backend_drop_connection(b);
    if (b->noop_timer)
        event_del(b->noop_timer);
    enum backend_status st = backend_lost_status(b);
    if (!was_open && b->open_cb) {
        backend_open_done(b, st, NULL, 0, 0, 0);
        return;
    }
    backend_fail_awaited(b, st);
}

/* ---- writing ------------------------------------------------------------ */

/* The whole reply must arrive within ms of this call: a server dribbling a
 * byte at a time is cut as surely as a silent one (a read timeout would
 * restart at every byte). */
static void backend_await(struct smtp_backend *b, int64_t ms)
{
    if (b->io)
        io_set_deadline(b->io, ms);
}

static void backend_await_none(struct smtp_backend *b)
{
    if (b->io)
        io_clear_deadline(b->io);
}

static void backend_write(struct smtp_backend *b, const char *line, size_t len)
{
    if (io_write(b->io, line, len) < 0) {
        /* The connection fails from the loop (io reports IO_ERROR), not in
         * this caller's stack: backend_fail's callbacks may free us. */
        log_err(b->sid, "backend %s: out of memory in the output buffer", b->peer);
        b->out_of_memory = true;
        return;
    }
    b->bytes_out += len;
    if (!TAILQ_EMPTY(&b->awaited))
        TAILQ_LAST(&b->awaited, pending_queue)->sent_at = b->bytes_out;
}

/* A reply to a command that has not fully left our output buffer cannot be
 * its answer: the server is out of step (a stray or early reply), and taking
 * it would pair every later reply with the wrong command. The greeting is
 * exempt: a PROXY header may still be queued when it arrives. */
static bool backend_reply_premature(struct smtp_backend *b)
{
    size_t unsent = io_output_len(b->io);
    if (b->state < B_READY)
        return b->state != B_GREETING && unsent > 0;
    struct pending *head = TAILQ_FIRST(&b->awaited);
    return head && b->bytes_out - unsent < head->sent_at;
}

static int backend_queue(struct smtp_backend *b, enum pending_kind kind, enum backend_step step,
                         backend_cb cb, void *arg)
{
    struct pending *p = pending_take(b);
    if (!p)
        return -1;
    p->kind = kind;
    p->step = step;
    p->cb = cb;
    p->arg = arg;
    p->mails_at = b->mails_sent;
    TAILQ_INSERT_TAIL(&b->awaited, p, link);
    /* A command pipelined behind another waits its turn: its deadline
     * starts when the reply before it is complete. */
    if (TAILQ_FIRST(&b->awaited) == p)
        backend_await(b, b->pc->command_timeout_ms);
    return 0;
}

/* ---- the handshake ------------------------------------------------------ */

static void backend_send_ehlo(struct smtp_backend *b, const char *name)
{
    char line[600];
    int n = snprintf(line, sizeof line, "EHLO %s\r\n", name);
    if (n < 0 || (size_t)n >= sizeof line)
        n = snprintf(line, sizeof line, "EHLO %s\r\n", b->pc->helo_name);
    backend_write(b, line, (size_t)n);
}

static size_t backend_xclient_attr(char *out, size_t cap, const char *key, const char *value)
{
    char enc[1100];
    if (smtp_xtext_encode(value, strlen(value), enc, sizeof enc) < 0)
        return 0;
    int n = snprintf(out, cap, " %s=%s", key, enc);
    return (n > 0 && (size_t)n < cap) ? (size_t)n : 0;
}

static void backend_send_xclient(struct smtp_backend *b)
{
    char line[2400] = "XCLIENT";
    size_t len = strlen(line);
    char addr[INET6_ADDRSTRLEN + 8], port[16];
    const struct sockaddr *ca = (const struct sockaddr *)&b->client_addr;
    char ip[INET6_ADDRSTRLEN];
    netaddr_ntop(ca, ip, sizeof ip);
    if (strchr(ip, ':'))
        snprintf(addr, sizeof addr, "IPV6:%s", ip);
    else
        snprintf(addr, sizeof addr, "%s", ip);
    snprintf(port, sizeof port, "%d", netaddr_port(ca));
    if (b->caps.xclient_addr)
        len += backend_xclient_attr(line + len, sizeof line - len, "ADDR", addr);
    if (b->caps.xclient_port)
        len += backend_xclient_attr(line + len, sizeof line - len, "PORT", port);
    if (b->caps.xclient_name)
        len += backend_xclient_attr(line + len, sizeof line - len, "NAME", b->client_name);
    /* Always, [UNAVAILABLE] when unknown: on a kept connection the last
     * client's HELO would otherwise stay with the backend. */
    if (b->caps.xclient_helo)
        len += backend_xclient_attr(line + len, sizeof line - len, "HELO",
                                    b->client_helo[0] ? b->client_helo : "[UNAVAILABLE]");
    if (b->caps.xclient_proto)
        len += backend_xclient_attr(line + len, sizeof line - len, "PROTO",
                                    b->client_esmtp ? "ESMTP" : "SMTP");
    if (len + 3 > sizeof line) {
        backend_fail(b, "XCLIENT line too long");
        return;
    }
    memcpy(line + len, "\r\n", 3);
    backend_write(b, line, len + 2);
}

static void backend_name_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_backend *b = arg;
    if (b->state != B_NAME_WAIT)
        return;
    backend_enter(b);
    backend_await(b, b->pc->command_timeout_ms);
    b->state = B_XCLIENT;
    backend_send_xclient(b);
    backend_leave(b);
}

/* XCLIENT names the client. A client greeted before its reverse lookup
 * ended may get here first: the connection, its greeting and EHLO done
 * meanwhile, then waits for the name (at most the session's
 * timeouts.reverse_lookup), asking nothing. */
static void backend_xclient_or_wait(struct smtp_backend *b)
{
    if (!b->name_pending) {
        b->state = B_XCLIENT;
        backend_send_xclient(b);
        return;
    }
    if (!b->name_ev && !(b->name_ev = event_new(b->loop->base, -1, 0, backend_name_cb, b))) {
        backend_fail(b, "out of memory");
        return;
    }
    b->state = B_NAME_WAIT;
    backend_await_none(b);
    log_debug(b->sid, "backend %s: XCLIENT waits for the client's reverse name", b->peer);
}

static void backend_ready(struct smtp_backend *b, const char *text, const struct smtp_reply *r)
{
    b->state = B_READY;
    if (b->reusing) {
        host_metrics_backend_reused(b->pc->name);
    } else {
        pool_server_ok(b->pool, b->server);
        host_metrics_backend_connect(b->pc->name, true);
    }
    backend_await_none(b);
    log_debug(b->sid, "backend %s: ready%s", b->peer, b->reusing ? " (kept connection)" : "");
    b->reusing = false;
    if (b->replaying) {
        backend_replay_send(b);
        return;
    }
    backend_open_done(b, BACKEND_REPLY, text, r->len, r->code, r->nlines);
}

/* A server that does not greet with 2xx is treated like one that refused
 * the connection: the next server of the pool gets the session. */
static void backend_next_server(struct smtp_backend *b, const char *why)
{
    log_warn(b->sid, "backend %s: %s", b->peer, why);
    pool_server_failed(b->pool, b->server);
    host_metrics_backend_connect(b->pc->name, false);
    backend_drop_connection(b);
    b->tried++;
    b->server = pool_next_server(b->pool, b->server, b->tried);
    if (b->server < 0) {
        b->state = B_DEAD;
        backend_open_done(b, BACKEND_UNREACHABLE, NULL, 0, 0, 0);
        return;
    }
    backend_try_server(b);
}

/* ---- TLS to the backend -------------------------------------------------- */

static bool backend_tls_wanted(const struct smtp_backend *b)
{
    return b->pc->tls && strcmp(b->pc->tls, "off") != 0;
}

static bool backend_tls_required(const struct smtp_backend *b)
{
    return b->pc->tls && strcmp(b->pc->tls, "required") == 0;
}

/* The backend cannot serve this session as the pool demands: its owner
 * gets BACKEND_REFUSED (the client 451 4.4.0), the reason goes to the log. */
static void backend_refuse(struct smtp_backend *b, const char *why)
{
    log_warn(b->sid, "backend %s: %s", b->peer, why);
    b->state = B_DEAD;
    backend_drop_connection(b);
    backend_open_done(b, BACKEND_REFUSED, NULL, 0, 0, 0);
}

static void backend_start_tls(struct smtp_backend *b)
{
    /* Anything after the 220 and before the handshake would be read as if
     * it came over TLS (the response-injection class). */
    if (io_input_len(b->io) > 0) {
        backend_refuse(b, "sent plain text after its 220 to STARTTLS");
        return;
    }
    char err[300];
    const struct server_conf *sc = &b->pc->servers[b->server];
    const char *name = b->pc->tls_name ? b->pc->tls_name : sc->host;
    SSL_CTX *ctx = tls_client_ctx(b->pc->tls_ca, err, sizeof err);
    if (!ctx) {
        backend_refuse(b, err);
        return;
    }
    /* Opportunistic TLS encrypts without asking who is there (RFC 7435). */
    if (io_start_tls_client(b->io, ctx, name, backend_tls_required(b)) < 0) {
        backend_refuse(b, "cannot start TLS");
        return;
    }
    b->state = B_TLS_HANDSHAKE;
    io_set_timeouts(b->io, 0, b->pc->final_timeout_ms);
}

/* The handshake is done: EHLO again, over TLS (RFC 3207 4.2). */
static void backend_tls_ready(struct smtp_backend *b)
{
    log_info(b->sid, "backend %s: TLS established: %s %s%s", b->peer, io_tls_version(b->io),
             io_tls_cipher(b->io), backend_tls_required(b) ? ", certificate verified" : "");
    b->tls_done = true;
    memset(&b->caps, 0, sizeof b->caps);
    b->state = B_EHLO;
    backend_await(b, b->pc->command_timeout_ms);
    backend_send_ehlo(b, b->pc->helo_name);
}

static void backend_handshake_reply(struct smtp_backend *b, const char *text, const struct smtp_reply *r)
{
    bool ok = r->code >= 200 && r->code < 300;
    backend_await(b, b->pc->command_timeout_ms); /* the next step's reply */
    switch (b->state) {
    case B_GREETING:
        if (!ok) {
            backend_next_server(b, "refused the session at its greeting");
            return;
        }
        b->state = B_EHLO;
        backend_send_ehlo(b, b->pc->helo_name);
        return;
    case B_EHLO:
        if (!ok)
            break;
        reply_ehlo_caps(text, r, &b->caps);
        if (!b->tls_done && backend_tls_wanted(b)) {
            if (b->caps.starttls) {
                b->state = B_STARTTLS;
                backend_write(b, "STARTTLS\r\n", 10);
                return;
            }
            if (backend_tls_required(b)) {
                backend_refuse(b, "does not offer STARTTLS and the pool requires TLS");
                return;
            }
            log_info(b->sid, "backend %s: does not offer STARTTLS, going on in plain text",
                     b->peer);
        }
        if (b->spare) {
            backend_spare_ready(b);
            return;
        }
        if (b->pc->xclient && b->caps.xclient) {
            backend_xclient_or_wait(b);
            return;
        }
        if (b->pc->xclient)
            log_debug(b->sid, "backend %s: does not offer XCLIENT", b->peer);
        backend_ready(b, text, r);
        return;
    case B_STARTTLS:
        if (!ok && !backend_tls_required(b)) {
            log_info(b->sid, "backend %s: STARTTLS refused with %d, going on in plain text",
                     b->peer, r->code);
            b->tls_done = true; /* not tried again on this connection */
            b->state = B_EHLO;
            backend_send_ehlo(b, b->pc->helo_name);
            return;
        }
        if (!ok)
            break;
        backend_start_tls(b);
        return;
    case B_XCLIENT:
        if (!ok)
            break;
        /* Postfix answers XCLIENT with a new greeting; EHLO again as the client. */
        b->state = B_XCLIENT_EHLO;
        backend_send_ehlo(b, b->client_helo[0] ? b->client_helo : b->pc->helo_name);
        return;
    case B_XCLIENT_EHLO:
        if (!ok)
            break;
        reply_ehlo_caps(text, r, &b->caps);
        backend_ready(b, text, r);
        return;
    case B_REUSE_RSET:
        if (!ok)
            break;
        b->dirty = false;
        if (!backend_reuse_xclient(b)) {
            backend_ready(b, text, r);
            return;
        }
        if (b->xclient_sent)
            b->state = B_XCLIENT;
        else
            backend_xclient_or_wait(b);
        return;
    default:
        return;
    }
    char excerpt[160];
    backend_reply_excerpt(text, r->len, excerpt, sizeof excerpt);
    if (b->reusing) {
        char why[300];
        snprintf(why, sizeof why, "%s refused: \"%s\"", backend_step_name(backend_awaited(b)),
                 excerpt);
        backend_reuse_failed(b, why);
        return;
    }
    log_warn(b->sid, "backend %s: %s refused: \"%s\"", b->peer,
             backend_step_name(backend_awaited(b)), excerpt);
    b->state = B_DEAD;
    backend_drop_connection(b);
    backend_open_done(b, BACKEND_REFUSED, NULL, 0, 0, 0);
}

/* ---- replies in the ready state --------------------------------------- */

static void backend_noop_arm(struct smtp_backend *b)
{
    if (b->keepalive && b->noop_timer && TAILQ_EMPTY(&b->awaited) && b->state == B_READY) {
        struct timeval tv = ms_to_tv(b->pc->noop_interval_ms);
        event_add(b->noop_timer, &tv);
    }
}

/* The rewritten header, chunk by chunk: no libevent buffer crosses io's
 * interface. */
static int backend_write_prefix(struct smtp_backend *b, struct evbuffer *prefix)
{
    struct evbuffer_iovec v[8];
    while (evbuffer_get_length(prefix) > 0) {
        int n = evbuffer_peek(prefix, -1, NULL, v, 8);
        size_t taken = 0;
        for (int i = 0; i < n && i < 8; i++) {
            if (io_write(b->io, v[i].iov_base, v[i].iov_len) < 0)
                return -1;
            taken += v[i].iov_len;
        }
        evbuffer_drain(prefix, taken);
    }
    return 0;
}

static void backend_start_body(struct smtp_backend *b, struct pending *p)
{
    /* Counted before: io may send it at once, so the output's growth
     * would not tell. */
    uint64_t body = (p->prefix ? evbuffer_get_length(p->prefix) : 0) +
                    (spool_size(p->spool) - p->offset) + 3;
    if ((p->prefix && backend_write_prefix(b, p->prefix) < 0) ||
        io_write_spool(b->io, p->spool, p->offset) < 0 || io_write(b->io, ".\r\n", 3) < 0) {
        b->out_of_memory = true; /* ours, not the server's: 451 4.3.0 */
        backend_fail(b, "cannot queue the spooled message");
        return;
    }
    b->bytes_out += body;
    p->sent_at = b->bytes_out;
    p->kind = P_FINAL;
    p->step = BSTEP_END_OF_DATA;
    backend_await(b, b->pc->final_timeout_ms);
}

/* ---- cut-through ------------------------------------------------------- */

/* A write that failed for memory breaks the connection from the loop (io
 * reports IO_ERROR), not in this caller's stack. */
static void backend_stream_nomem(struct smtp_backend *b)
{
    log_err(b->sid, "backend %s: out of memory queueing the message", b->peer);
    b->out_of_memory = true;
}

/* Sends what was spooled since the last time; after the client's end of
 * data the rest and the dot, and the final reply is awaited. Otherwise only
 * a piece of BACKEND_STREAM_PIECE or more, into a drained output: what the
 * server has not taken yet stays in the spool, and backend_drained (or the
 * next backend_stream_more) comes back for it. */
static void backend_stream_forward(struct smtp_backend *b, struct pending *p)
{
    uint64_t added = 0;
    if (!b->io)
        return;
    if (!p->end && (io_output_len(b->io) > 0 ||
                    spool_size(p->spool) - p->offset < BACKEND_STREAM_PIECE))
        return;
    if (io_write_spool_new(b->io, p->spool, &added) < 0) {
        backend_stream_nomem(b);
        return;
    }
    b->bytes_out += added;
    p->offset += added; /* what of the spool has gone */
    if (!p->end)
        return;
    if (io_write(b->io, ".\r\n", 3) < 0) {
        backend_stream_nomem(b);
        return;
    }
    b->bytes_out += 3;
    b->streaming = false;
    p->sent_at = b->bytes_out;
    p->kind = P_FINAL;
    backend_await(b, b->pc->final_timeout_ms);
}

/* The server's 3xx to a streamed message's DATA. */
static void backend_stream_go(struct smtp_backend *b, struct pending *p)
{
    p->kind = P_BODY;
    p->step = BSTEP_END_OF_DATA;
    /* No reply is due until the dot: the write timeout bounds a server
     * that stops taking the body. */
    backend_await_none(b);
    backend_stream_forward(b, p);
}

/* A reply while the body streams, before its dot. A refusal (4xx/5xx: a
 * server over its size limit, or going down) is the message's answer; the
 * connection cannot go on (the rest of the body would be read as commands),
 * so it is given up first. Anything else is out of step: lost, never a
 * 250 for a message the server did not get whole. */
static bool backend_stream_reply(struct smtp_backend *b, const char *text, const struct smtp_reply *r)
{
    struct pending *p = TAILQ_FIRST(&b->awaited);
    if (b->state != B_READY || !p || p->kind != P_BODY)
        return false;
    if (r->code / 100 != 4 && r->code / 100 != 5) {
        backend_violation(b, "reply before the end of data", text, r->len);
        return true;
    }
    TAILQ_REMOVE(&b->awaited, p, link);
    backend_cb cb = p->cb;
    void *arg = p->arg;
    pending_release(b, p);
    backend_fail(b, "refused the message before its end");
    backend_deliver(cb, arg, BACKEND_REPLY, r->code, text, r->len, r->nlines);
    return true;
}

static void backend_drained(struct io *io, void *arg)
{
    struct smtp_backend *b = arg;
    struct pending *p = TAILQ_FIRST(&b->awaited);
    if (b->io != io || b->state != B_READY || !p || p->kind != P_BODY)
        return;
    backend_enter(b);
    backend_stream_forward(b, p);
    backend_leave(b);
}

/* A server that does not offer PIPELINING gets one command at a time
 * (RFC 2920; Exim without it answers a command sent before the last reply
 * with "554 SMTP synchronization error" and closes): a command queued
 * behind an unanswered one waits for that reply. */
static bool backend_must_hold(const struct smtp_backend *b, const struct pending *p)
{
    return b->state == B_READY && !b->caps.pipelining && TAILQ_FIRST(&b->awaited) != p;
}

/* A queued command written now: held until the reply before it, or sent
 * again on a new connection (backend_replay_send). */
static void backend_write_pending(struct smtp_backend *b, struct pending *p)
{
    p->held = false;
    if (p->kind == P_USER)
        backend_write(b, p->line, p->line_len);
    else
        backend_write(b, p->kind == P_DATA ? "DATA\r\n" : "NOOP\r\n", 6);
    p->sent_at = b->bytes_out;
}

/* The reply before it came: the command that waited goes now. */
static void backend_release_held(struct smtp_backend *b)
{
    struct pending *p = TAILQ_FIRST(&b->awaited);
    if (b->state != B_READY || !b->io || !p || !p->held)
        return;
    backend_write_pending(b, p);
    if (!b->unconfirmed) {
        free(p->line);
        p->line = NULL;
    }
}

static void backend_command_reply(struct smtp_backend *b, const char *text, const struct smtp_reply *r)
{
    struct pending *p = TAILQ_FIRST(&b->awaited);
    if (!p) {
        /* Unsolicited: typically 421 before the server closes an idle session. */
        backend_fail(b, r->code == 421 ? "closed the idle session (421)" : "unexpected reply");
        return;
    }
    /* The class table let only DATA's 3xx through (as Postfix, any 3xx is
     * the go-ahead). */
    if (p->kind == P_DATA && r->code / 100 == 3) {
        if (p->stream)
            backend_stream_go(b, p);
        else
            backend_start_body(b, p);
        return;
    }
    TAILQ_REMOVE(&b->awaited, p, link);
    if (p->kind == P_DATA && p->stream)
        b->streaming = false; /* DATA refused: no body was sent */
    struct pending *next = TAILQ_FIRST(&b->awaited);
    if (next)
        backend_await(b, next->kind == P_FINAL ? b->pc->final_timeout_ms
                                                  : b->pc->command_timeout_ms);
    else
        backend_await_none(b);
    backend_cb cb = p->cb;
    void *arg = p->arg;
    enum pending_kind kind = p->kind;
    /* A transaction ends with the end of data's 2xx or an RSET's. */
    if (r->code / 100 == 2 && (p->step == BSTEP_END_OF_DATA || p->step == BSTEP_RSET) &&
        p->mails_at == b->mails_sent)
        b->dirty = false;
    pending_release(b, p);
    if (r->code == 421) {
        /* 421 means the server is closing; nothing more will work here. */
        backend_deliver(cb, arg, BACKEND_REPLY, r->code, text, r->len, r->nlines);
        backend_fail(b, "closing (421)");
        return;
    }
    if (kind != P_NOOP)
        backend_deliver(cb, arg, BACKEND_REPLY, r->code, text, r->len, r->nlines);
    backend_release_held(b);
    if (b->state == B_READY)
        backend_noop_arm(b);
}

/* What the next reply answers; BSTEP_COUNT when nothing is awaited. */
static enum backend_step backend_awaited(const struct smtp_backend *b)
{
    switch (b->state) {
    case B_GREETING:
        return BSTEP_BANNER;
    case B_EHLO:
    case B_XCLIENT_EHLO:
        return BSTEP_EHLO;
    case B_STARTTLS:
        return BSTEP_STARTTLS;
    case B_XCLIENT:
        return BSTEP_XCLIENT;
    case B_CLOSING:
        return BSTEP_QUIT;
    case B_REUSE_RSET:
        return BSTEP_RSET;
    case B_READY:
        return TAILQ_EMPTY(&b->awaited) ? BSTEP_COUNT : TAILQ_FIRST(&b->awaited)->step;
    default:
        return BSTEP_COUNT;
    }
}

/* Logs what was sent and what came back (with the session id) and gives
 * the backend up: its owner gets BACKEND_LOST, the client 451 4.4.2. */
static void backend_violation(struct smtp_backend *b, const char *what, const char *text, size_t len)
{
    char excerpt[160], why[300];
    enum backend_step step = backend_awaited(b);
    backend_reply_excerpt(text, len, excerpt, sizeof excerpt);
    snprintf(why, sizeof why, "protocol violation: %s to %s: \"%s\"", what,
             backend_step_name(step), excerpt);
    if (b->state == B_CLOSING) {
        /* Nobody waits for QUIT's answer: it only lets go of the slot sooner. */
        log_info(b->sid, "backend %s: %s", b->peer, why);
        b->state = B_DEAD;
        backend_free(b);
        return;
    }
    backend_fail(b, why);
}

static void backend_handle_reply(struct smtp_backend *b, const char *text, const struct smtp_reply *r)
{
    if (b->state == B_IDLE || (b->state == B_WAIT_SLOT && b->reusing)) {
        /* Nobody asked: typically 421 before the server drops an idle session. */
        char excerpt[160], why[200];
        backend_reply_excerpt(text, r->len, excerpt, sizeof excerpt);
        snprintf(why, sizeof why, "unsolicited reply: \"%s\"", excerpt);
        if (b->state == B_WAIT_SLOT) {
            backend_reuse_failed(b, why);
            return;
        }
        log_info(NULL, "backend %s: idle connection (last session %s) closed after an %s",
                 b->peer, b->sid, why);
        backend_unpark(b);
        b->state = B_DEAD;
        backend_free(b);
        return;
    }
    if (b->state == B_NAME_WAIT) {
        backend_violation(b, "reply while nothing was asked", text, r->len);
        return;
    }
    enum backend_step step = backend_awaited(b);
    if (step != BSTEP_COUNT && !backend_reply_expected(step, r->code)) {
        backend_violation(b, "reply of an unexpected class", text, r->len);
        return;
    }
    if (b->state == B_CLOSING) {
        b->state = B_DEAD;
        backend_free(b);
        return;
    }
    if (b->unconfirmed && b->state == B_READY) {
        /* The first reply, whatever takes it: a 421 here is the server's
         * idle close crossing our commands, not an answer to them. */
        if (r->code == 421 && backend_replay(b, "closing (421)"))
            return;
        backend_confirmed(b);
    }
    if (backend_stream_reply(b, text, r))
        return;
    if (backend_reply_premature(b)) {
        backend_fail(b, "replied before the command was sent");
        return;
    }
    if (b->state < B_READY)
        backend_handshake_reply(b, text, r);
    else if (b->state == B_READY)
        backend_command_reply(b, text, r);
}

static void backend_input(struct io *io, void *arg)
{
    struct smtp_backend *b = arg;
    backend_enter(b);
    while (b->io == io && b->state != B_DEAD && !b->free_when_idle) {
        size_t avail = io_input_len(io);
        if (avail == 0)
            break;
        size_t want = avail < REPLY_MAX_LEN ? avail : REPLY_MAX_LEN;
        const char *buf = (const char *)io_input_peek(io, want);
        struct smtp_reply r;
        int rc = reply_parse(buf, want, &r);
        if (rc == 0 && want < REPLY_MAX_LEN)
            break;
        if (rc <= 0) {
            backend_violation(b, "malformed reply", buf, want);
            break;
        }
        /* The callback may write to the input's neighbours: it gets a copy,
         * on the stack for the usual short reply (no allocation per reply). */
        char small[BACKEND_REPLY_STACK];
        char *copy = r.len <= sizeof small ? small : malloc(r.len);
        if (!copy) {
            backend_fail(b, "out of memory");
            break;
        }
        memcpy(copy, buf, r.len);
        io_input_drain(io, r.len);
        backend_handle_reply(b, copy, &r);
        if (copy != small)
            free(copy);
    }
    backend_leave(b);
}

/* The awaited reply is not complete in time. */
static void backend_reply_late(struct smtp_backend *b)
{
    if (b->state == B_GREETING)
        backend_next_server(b, "greeting: no complete reply in time");
    else if (b->state == B_TLS_HANDSHAKE)
        backend_refuse(b, "TLS handshake not done in time");
    else if (b->state != B_CLOSING && b->state != B_DEAD)
        backend_fail(b, "no complete reply in time");
}

static void backend_io_event(struct io *io, enum io_event ev, void *arg)
{
    struct smtp_backend *b = arg;
    backend_enter(b);
    if (ev == IO_DEADLINE) {
        backend_reply_late(b);
        backend_leave(b);
        return;
    }
    if (ev == IO_ERROR && b->out_of_memory && b->state != B_CLOSING) {
        /* Our failure, whatever the state: not the server's (no next server). */
        backend_fail(b, "out of memory in the output buffer");
        backend_leave(b);
        return;
    }
    if (ev == IO_CONNECTED && b->state == B_TLS_HANDSHAKE) {
        backend_tls_ready(b);
        backend_leave(b);
        return;
    }
    if (b->state == B_TLS_HANDSHAKE) {
        char why[300];
        snprintf(why, sizeof why, "TLS handshake failed: %s",
                 ev == IO_ERROR ? io_error_text(io) : "closed or timed out");
        backend_refuse(b, why);
        backend_leave(b);
        return;
    }
    if (ev == IO_CONNECTED) {
        b->state = B_GREETING;
        /* From here the deadline bounds replies; writes keep a timeout of their own. */
        io_set_timeouts(io, 0, b->pc->final_timeout_ms);
        backend_await(b, b->pc->command_timeout_ms);
        backend_leave(b);
        return;
    }
    const char *why = (ev == IO_READ_TIMEOUT || ev == IO_WRITE_TIMEOUT) ? "timed out"
                      : ev == IO_EOF                                    ? "closed the connection"
                                                                        : "connection error";
    if (b->state == B_CLOSING) {
        b->state = B_DEAD;
        backend_free(b);
    } else if (b->state == B_CONNECTING || b->state == B_GREETING) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s: %s", b->state == B_CONNECTING ? "connect" : "greeting",
                 ev == IO_ERROR ? io_error_text(io) : why);
        backend_next_server(b, msg);
    } else if ((ev != IO_EOF && ev != IO_ERROR) || !backend_replay(b, why)) {
        backend_fail(b, why);
    }
    backend_leave(b);
}

/* ---- connecting --------------------------------------------------------- */

/* Out of descriptors or memory is our failure, not the server's: marking
 * the servers down for it would send later sessions away from good ones. */
static void backend_connect_failed(struct smtp_backend *b, int err)
{
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
        backend_next_server(b, "connect failed");
        return;
    }
    log_warn(b->sid, "backend %s: cannot open a socket: %s", b->peer, strerror(err));
    backend_drop_connection(b);
    b->state = B_DEAD;
    backend_open_done(b, BACKEND_INTERNAL, NULL, 0, 0, 0);
}

static void backend_connect_addr(struct smtp_backend *b, const struct sockaddr_storage *ss)
{
    const struct sockaddr *sa = (const struct sockaddr *)ss;
    socklen_t salen =
        sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    b->io = io_new(b->loop->base, -1, &backend_io_callbacks, b);
    if (!b->io) {
        backend_connect_failed(b, ENOMEM);
        return;
    }
    io_set_timeouts(b->io, b->pc->connect_timeout_ms, b->pc->connect_timeout_ms);
    b->state = B_CONNECTING;
    if (b->pc->proxy_protocol) {
        unsigned char hdr[PROXY_MAX_HEADER];
        size_t n = proxy_v2_build(hdr, sizeof hdr, (const struct sockaddr *)&b->client_addr,
                                  (const struct sockaddr *)&b->client_local);
        backend_write(b, (const char *)hdr, n);
    }
    if (io_connect(b->io, sa, salen) < 0)
        backend_connect_failed(b, errno);
}

static void backend_resolved(void *arg, enum dns_status st, const struct sockaddr_storage *addrs,
                             size_t n)
{
    struct smtp_backend *b = arg;
    b->dnsq = NULL;
    backend_enter(b);
    if (st == DNS_NOMEM)
        backend_connect_failed(b, ENOMEM);
    else if (st != DNS_OK || n == 0)
        backend_next_server(b, "cannot resolve the server's name");
    else
        backend_connect_addr(b, &addrs[0]);
    backend_leave(b);
}

static void backend_try_server(struct smtp_backend *b)
{
    const struct server_conf *sc = &b->pc->servers[b->server];
    snprintf(b->peer, sizeof b->peer, "%s:%s", sc->host, sc->port);
    b->state = B_RESOLVING;
    b->dnsq = dns_resolve(b->loop->dns, sc->host, atoi(sc->port), backend_resolved, b);
    if (!b->dnsq)
        backend_connect_failed(b, ENOMEM); /* our failure, not the server's */
}

static void backend_slot_cb(void *arg, bool granted)
{
    struct smtp_backend *b = arg;
    b->waiter = NULL;
    backend_enter(b);
    if (!granted) {
        log_warn(b->sid, "backend pool %s: no free connection within %lld ms (this client "
                 "address holds %d, its share is %d)", b->pc->name, (long long)b->pc->wait_ms,
                 pool_held_by(b->pool, (const struct sockaddr *)&b->client_addr),
                 b->pc->max_per_client);
        b->state = B_DEAD;
        backend_open_done(b, BACKEND_POOL_FULL, NULL, 0, 0, 0);
    } else {
        b->has_slot = true;
        b->tried = 0;
        b->server = pool_first_server(b->pool);
        backend_try_server(b);
    }
    backend_leave(b);
}

static void backend_start_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_backend *b = arg;
    /* A kept connection that failed meanwhile is already being replaced. */
    if (b->state != B_WAIT_SLOT)
        return;
    backend_enter(b);
    if (b->reusing) {
        /* A clean kept connection is ready here: the owner's MAIL and
         * pipelined RCPT leave in one write. */
        io_cork();
        backend_reuse_begin(b);
        io_uncork();
    } else {
        b->tried = 0;
        b->server = pool_first_server(b->pool);
        backend_try_server(b);
    }
    backend_leave(b);
}

static void backend_noop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_backend *b = arg;
    if (b->state != B_READY || !TAILQ_EMPTY(&b->awaited) || !b->keepalive)
        return;
    if (backend_queue(b, P_NOOP, BSTEP_NOOP, NULL, NULL) == 0)
        backend_write(b, "NOOP\r\n", 6);
}

static const char *backend_client_name(const struct backend_client *c)
{
    if (c->name_status == DNS_OK && c->name)
        return c->name;
    return c->name_status == DNS_TEMPFAIL ? "[TEMPUNAVAIL]" : "[UNAVAILABLE]";
}

/* ---- kept connections ---------------------------------------------------- */

/* A kept connection of an XCLIENT pool tells the server who the new client is. */
static bool backend_reuse_xclient(const struct smtp_backend *b)
{
    return b->pc->xclient && b->caps.xclient;
}

/* A clean kept connection without XCLIENT is ready as it is: its EHLO state
 * (our name, the server's capabilities, TLS) is what a new EHLO would give
 * again, so the next MAIL goes out at once, as Postfix's connection cache
 * does. A server that closed it or spoke meanwhile has left something to
 * read: then the session gets a new connection, unseen. */
static void backend_reuse_ready(struct smtp_backend *b)
{
    if (!io_peer_quiet(b->io)) {
        backend_reuse_failed(b, "closed or spoke while idle");
        return;
    }
    static const char kept[] = "250 kept connection\r\n";
    const struct smtp_reply r = {.code = 250, .len = sizeof kept - 1, .nlines = 1};
    b->unconfirmed = true;
    backend_ready(b, kept, &r);
}

/* A kept connection starts the new client's session: RSET when its last
 * transaction is open (XCLIENT is refused inside one, and a new MAIL would
 * be out of sequence), then for an XCLIENT pool XCLIENT with every
 * attribute anew (its 220 is followed by EHLO as the client). */
static void backend_reuse_begin(struct smtp_backend *b)
{
    if (!backend_reuse_xclient(b) && !b->dirty) {
        backend_reuse_ready(b);
        return;
    }
    backend_await(b, b->pc->command_timeout_ms);
    b->xclient_sent = false;
    if (!b->dirty) {
        backend_xclient_or_wait(b);
        return;
    }
    b->state = B_REUSE_RSET;
    backend_write(b, "RSET\r\n", 6);
    /* RSET may open a PIPELINING group (RFC 2920 3.1): XCLIENT goes in
     * the same write, its reply read after RSET's. */
    b->xclient_sent = backend_reuse_xclient(b) && b->caps.pipelining && !b->name_pending;
    if (b->xclient_sent)
        backend_send_xclient(b);
}

/* The server closed or refused the kept connection: the session gets a
 * new one (same slot) as if none had been kept; the client sees nothing. */
static void backend_reconnect(struct smtp_backend *b)
{
    backend_drop_connection(b);
    b->reusing = false;
    b->dirty = false;
    b->transactions = 0;
    b->tls_done = false;
    memset(&b->caps, 0, sizeof b->caps);
    b->tried = 0;
    b->server = pool_first_server(b->pool);
    backend_try_server(b);
}

static void backend_reuse_failed(struct smtp_backend *b, const char *why)
{
    log_info(b->sid, "backend %s: kept connection unusable (%s), opening a new one", b->peer, why);
    backend_reconnect(b);
}

/* The first reply on a clean kept connection: from here a loss is the
 * session's, as on any connection. */
static void backend_confirmed(struct smtp_backend *b)
{
    b->unconfirmed = false;
    struct pending *p;
    TAILQ_FOREACH(p, &b->awaited, link) {
        if (p->held)
            continue; /* still to go: backend_release_held */
        free(p->line);
        p->line = NULL;
    }
}

/* A clean kept connection goes to a session without a word to the server
 * (backend_reuse_ready), so a server closing it just then (its own idle
 * timeout) crosses our first commands. Until its first reply the server
 * took nothing: the commands go again, once, on a new connection, and the
 * client sees nothing, as with any kept connection found unusable. A
 * timeout is not replayed: the client has waited long enough. */
static bool backend_replay(struct smtp_backend *b, const char *why)
{
    if (!b->unconfirmed || b->state != B_READY || b->out_of_memory)
        return false;
    struct pending *p;
    int mails = 0;
    TAILQ_FOREACH(p, &b->awaited, link) {
        if ((p->kind == P_USER && !p->line) || p->kind == P_BODY || p->kind == P_FINAL)
            return false;
        mails += p->step == BSTEP_MAIL;
    }
    log_info(b->sid, "backend %s: kept connection lost before its first reply (%s): its "
             "commands go again on a new connection", b->peer, why);
    b->unconfirmed = false;
    b->replaying = true;
    if (b->noop_timer)
        event_del(b->noop_timer);
    backend_reconnect(b);
    b->transactions = mails;
    b->dirty = mails > 0;
    return true;
}

/* The new connection is ready: what was queued goes out as it went the
 * first time, in one write (a pipelined group stays one). */
static void backend_replay_send(struct smtp_backend *b)
{
    b->replaying = false;
    struct pending *p;
    int queued = 0;
    TAILQ_FOREACH(p, &b->awaited, link)
        queued++;
    if (queued > 1 && !b->caps.pipelining) {
        backend_fail(b, "the new connection's server does not offer PIPELINING for the "
                        "commands that go again");
        return;
    }
    io_cork();
    TAILQ_FOREACH(p, &b->awaited, link) {
        backend_write_pending(b, p);
        free(p->line);
        p->line = NULL;
    }
    io_uncork();
    if (queued > 0)
        backend_await(b, b->pc->command_timeout_ms);
}

/* QUIT and let go: the slot is released when the server answers or after
 * a short wait. */
static void backend_quit(struct smtp_backend *b)
{
    b->state = B_CLOSING;
    backend_write(b, "QUIT\r\n", 6);
    if (!b->quit_timer)
        b->quit_timer = event_new(b->loop->base, -1, 0, backend_quit_timeout, b);
    if (!b->quit_timer) {
        backend_free(b);
        return;
    }
    struct timeval tv = ms_to_tv(BACKEND_QUIT_WAIT_MS);
    io_set_timeouts(b->io, BACKEND_QUIT_WAIT_MS, BACKEND_QUIT_WAIT_MS);
    backend_await_none(b);
    event_add(b->quit_timer, &tv);
}

static void backend_idle_end(struct smtp_backend *b, const char *why)
{
    log_debug(NULL, "backend %s: idle connection (last session %s) closed: %s", b->peer, b->sid,
              why);
    backend_unpark(b);
    backend_quit(b);
}

static void backend_idle_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    backend_idle_end(arg, "idle_timeout");
}

/* The pool was full and a session waits: this one's slot goes to it. */
static void backend_evict_cb(evutil_socket_t fd, short what, void *arg)
{
    struct smtp_backend *b = arg;
    if (b->state == B_IDLE)
        backend_idle_end(b, "a session waits for a slot");
}

static bool backend_gen_current(const struct smtp_backend *b)
{
    struct generation *g = generation_current(b->loop->worker);
    bool current = g == b->gen;
    generation_unref(g);
    return current;
}

static int backend_idle_of_pool(const struct loop *loop, const struct pool *pool)
{
    int n = 0;
    const struct smtp_backend *i;
    LIST_FOREACH(i, &loop->backend_idle, idle_link)
        n += i->pool == pool;
    return n;
}

/* Whether the connection may serve a later session, its wear aside (see
 * backend_worn): between transactions (nothing awaited, nothing unread),
 * within the pool's idle bounds, of the generation new sessions get (a
 * reloaded pool never gets an old one), and never for PROXY pools (the
 * header names one client connection). */
static bool backend_keepable(const struct smtp_backend *b)
{
    const struct pool_conf *pc = b->pc;
    if (b->state != B_READY || !b->io || !TAILQ_EMPTY(&b->awaited) || pc->idle_max <= 0 ||
        pc->proxy_protocol || io_input_len(b->io) > 0)
        return false;
    if (atomic_load(&b->loop->worker->stopping) || !backend_gen_current(b))
        return false;
    return backend_idle_of_pool(b->loop, b->pool) < pc->idle_max;
}

/* It carried max_transactions: it goes, and a new one takes its place. */
static bool backend_worn(const struct smtp_backend *b)
{
    return b->pc->max_transactions > 0 && b->transactions >= b->pc->max_transactions;
}

static bool backend_may_keep(const struct smtp_backend *b)
{
    return backend_keepable(b) && !backend_worn(b);
}

static bool backend_park(struct smtp_backend *b)
{
    if (!b->idle.ev)
        b->idle.ev = event_new(b->loop->base, -1, 0, backend_evict_cb, b);
    if (!b->idle_timer)
        b->idle_timer = evtimer_new(b->loop->base, backend_idle_timeout_cb, b);
    if (!b->idle.ev || !b->idle_timer || !pool_idle_add(b->pool, &b->idle))
        return false;
    struct timeval tv = ms_to_tv(b->pc->idle_timeout_ms);
    b->state = B_IDLE;
    b->keepalive = false;
    backend_await_none(b);
    event_add(b->idle_timer, &tv);
    LIST_INSERT_HEAD(&b->loop->backend_idle, b, idle_link);
    b->parked = true;
    log_debug(b->sid, "backend %s: kept for the next session (%d transactions)", b->peer,
              b->transactions);
    return true;
}

void backend_close_idle(struct loop *loop)
{
    while (!LIST_EMPTY(&loop->backend_idle))
        backend_idle_end(LIST_FIRST(&loop->backend_idle), "reload or shutdown");
}

/* The newest kept connection of the pool that this client may take. */
static struct smtp_backend *backend_idle_take(struct loop *loop, struct pool *pool,
                                              const struct sockaddr *client)
{
    struct smtp_backend *b;
    LIST_FOREACH(b, &loop->backend_idle, idle_link) {
        if (b->pool == pool &&
            pool_idle_take(pool, &b->idle, (const struct sockaddr *)&b->client_addr, client))
            return b;
    }
    return NULL;
}

/* The connection is the client's from now: helo and name (allocated) are
 * taken over. */
static void backend_set_client(struct smtp_backend *b, const struct backend_client *client,
                               char *helo, char *name, backend_cb cb, void *arg)
{
    snprintf(b->sid, sizeof b->sid, "%s", client->sid);
    b->client_addr = client->addr;
    b->client_local = client->local;
    free(b->client_helo);
    free(b->client_name);
    b->client_helo = helo;
    b->client_name = name;
    b->client_esmtp = client->esmtp;
    b->name_pending = client->name_pending;
    b->open_cb = cb;
    b->open_arg = arg;
}

/* helo and name (allocated) are taken over. */
static struct backend *backend_reuse(struct smtp_backend *b, const struct backend_client *client,
                                     char *helo, char *name, backend_cb cb, void *arg)
{
    backend_unpark(b);
    backend_set_client(b, client, helo, name, cb, arg);
    b->reusing = true;
    b->unconfirmed = false; /* until backend_reuse_ready finds it clean */
    b->state = B_WAIT_SLOT;
    event_active(b->start_ev, 0, 0);
    return &b->base;
}

/* A backend of the pool, not yet connected, listed in the loop. */
static struct smtp_backend *backend_new(struct loop *loop, struct generation *gen,
                                        struct pool *pool, int pool_index)
{
    struct smtp_backend *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->base.ops = &backend_smtp_ops;
    TAILQ_INIT(&b->awaited);
    TAILQ_INIT(&b->spare_pending);
    b->loop = loop;
    b->gen = gen;
    generation_ref(gen);
    LIST_INSERT_HEAD(&loop->backend_list, b, loop_link);
    atomic_fetch_add(&loop->worker->backends, 1);
    b->pool = pool;
    b->pc = pool_conf(pool);
    b->pool_index = pool_index;
    snprintf(b->peer, sizeof b->peer, "pool %s", b->pc->name);
    b->state = B_WAIT_SLOT;
    b->noop_timer = event_new(loop->base, -1, 0, backend_noop_cb, b);
    /* The slot callback never runs inside backend_open: the owner always
     * has the handle before it hears anything. */
    b->start_ev = event_new(loop->base, -1, 0, backend_start_cb, b);
    if (!b->noop_timer || !b->start_ev) {
        backend_free(b);
        return NULL;
    }
    return b;
}

/* A connection of the pool opened ahead of need and still in its
 * handshake: the session waits for the rest of it rather than for a whole
 * new one. The slot passes to the client. */
static struct smtp_backend *backend_spare_take(struct loop *loop, struct pool *pool,
                                               const struct sockaddr *client)
{
    struct smtp_backend *b;
    LIST_FOREACH(b, &loop->backend_spares, idle_link) {
        if (b->pool == pool && b->state < B_READY && pool_move_slot(pool, NULL, client)) {
            backend_spare_unlist(b);
            return b;
        }
    }
    return NULL;
}

/* A connection made before this session asked: a kept one, else one
 * opened ahead of need still in its handshake. NULL: none (or no memory to
 * take one: a new connection is tried). */
static struct backend *backend_take_made(struct loop *loop, struct pool *pool,
                                         const struct backend_client *client, backend_cb cb,
                                         void *arg)
{
    const struct sockaddr *addr = (const struct sockaddr *)&client->addr;
    char *helo = strdup(client->helo ? client->helo : "");
    char *name = strdup(backend_client_name(client));
    struct smtp_backend *b;
    if (helo && name) {
        if (pool_conf(pool)->idle_max > 0 && (b = backend_idle_take(loop, pool, addr)))
            return backend_reuse(b, client, helo, name, cb, arg);
        if ((b = backend_spare_take(loop, pool, addr))) {
            backend_set_client(b, client, helo, name, cb, arg);
            return &b->base;
        }
    }
    free(helo);
    free(name);
    return NULL;
}

static struct backend *smtp_open(struct loop *loop, struct generation *gen, struct pool *pool,
                                  int pool_index, const struct backend_client *client,
                                  backend_cb cb, void *arg)
{
    if (!LIST_EMPTY(&loop->backend_idle) || !LIST_EMPTY(&loop->backend_spares)) {
        struct backend *made = backend_take_made(loop, pool, client, cb, arg);
        if (made)
            return made;
    }
    struct smtp_backend *b = backend_new(loop, gen, pool, pool_index);
    if (!b)
        return NULL;
    snprintf(b->sid, sizeof b->sid, "%s", client->sid);
    b->client_addr = client->addr;
    b->client_local = client->local;
    b->client_helo = strdup(client->helo ? client->helo : "");
    b->client_name = strdup(backend_client_name(client));
    b->client_esmtp = client->esmtp;
    b->name_pending = client->name_pending;
    b->open_cb = cb;
    b->open_arg = arg;
    int rc = b->client_helo && b->client_name
                 ? pool_acquire(pool, loop->base, (const struct sockaddr *)&b->client_addr,
                                backend_slot_cb, b, &b->waiter)
                 : -1;
    if (rc < 0) {
        b->waiter = NULL;
        backend_free(b);
        return NULL;
    }
    if (rc == 1) {
        b->has_slot = true;
        event_active(b->start_ev, 0, 0);
    }
    return &b->base;
}

/* A connection retired after max_transactions is replaced at once, ahead
 * of need: the next session of the pool takes a connection already greeted
 * and EHLOed from the idle list instead of waiting for those round trips
 * itself (one session in max_transactions did). Only with a slot free and
 * nobody waiting for one; it belongs to no client until a session takes it. */
static void backend_renew(const struct smtp_backend *old)
{
    if (!pool_try_acquire(old->pool))
        return;
    struct smtp_backend *b = backend_new(old->loop, old->gen, old->pool, old->pool_index);
    if (!b) {
        pool_release(old->pool, NULL);
        return;
    }
    b->has_slot = true; /* client_addr is AF_UNSPEC: released as not counted per client */
    b->spare = true;
    LIST_INSERT_HEAD(&b->loop->backend_spares, b, idle_link);
    /* Its own lines (a failed connect) belong to no session until one
     * takes it: the session that retired the old one has moved on. */
    snprintf(b->sid, sizeof b->sid, "-");
    b->client_helo = strdup("");
    b->client_name = strdup("[UNAVAILABLE]");
    if (!b->client_helo || !b->client_name) {
        backend_free(b);
        return;
    }
    log_debug(old->sid, "backend %s: opening a connection to replace one retired after %d "
              "transactions", b->peer, old->transactions);
    event_active(b->start_ev, 0, 0);
}

/* A connection opened ahead of need has its greeting and EHLO (and TLS):
 * from here it is a kept connection like any other. */
static void backend_spare_ready(struct smtp_backend *b)
{
    b->state = B_READY;
    backend_spare_unlist(b);
    pool_server_ok(b->pool, b->server);
    host_metrics_backend_connect(b->pc->name, true);
    backend_await_none(b);
    if (!backend_may_keep(b) || !backend_park(b))
        backend_quit(b);
}

/* ---- commands ----------------------------------------------------------- */

/* Commands are taken when ready, and queued while a new connection is
 * opened under them (backend_replay). */
static bool backend_takes_commands(const struct smtp_backend *b)
{
    return b->state == B_READY || b->replaying;
}

/* The last queued command's line, for backend_replay_send. */
static bool backend_keep_line(struct smtp_backend *b, const char *line, size_t len)
{
    struct pending *p = TAILQ_LAST(&b->awaited, pending_queue);
    p->line = malloc(len);
    if (!p->line)
        return false;
    memcpy(p->line, line, len);
    p->line_len = len;
    return true;
}

static void smtp_command(struct backend *base, enum backend_step step, const char *line,
                         size_t len, backend_cb cb, void *arg)
{
    struct smtp_backend *b = SMTP(base);
    if (!backend_takes_commands(b)) {
        backend_deliver(cb, arg, backend_lost_status(b), 0, NULL, 0, 0);
        return;
    }
    if (backend_queue(b, P_USER, step, cb, arg) < 0) {
        log_err(b->sid, "backend %s: out of memory queueing a command", b->peer);
        backend_deliver(cb, arg, BACKEND_INTERNAL, 0, NULL, 0, 0);
        return;
    }
    struct pending *queued = TAILQ_LAST(&b->awaited, pending_queue);
    queued->held = backend_must_hold(b, queued);
    if ((b->unconfirmed || b->replaying || queued->held) && !backend_keep_line(b, line, len)) {
        if (b->replaying || queued->held) {
            struct pending *p = TAILQ_LAST(&b->awaited, pending_queue);
            TAILQ_REMOVE(&b->awaited, p, link);
            pending_release(b, p);
            log_err(b->sid, "backend %s: out of memory queueing a command", b->peer);
            backend_deliver(cb, arg, BACKEND_INTERNAL, 0, NULL, 0, 0);
            return;
        }
        backend_confirmed(b); /* cannot go again: a loss is the session's */
    }
    if (step == BSTEP_MAIL) {
        b->dirty = true;
        b->transactions++;
        b->mails_sent++;
    }
    if (b->noop_timer)
        event_del(b->noop_timer);
    if (b->state == B_READY && !queued->held)
        backend_write(b, line, len);
}

/* DATA goes out for the message of spool, queued just before as the last
 * awaited reply; returns that pending entry for the caller's details. */
static struct pending *backend_data_sent(struct smtp_backend *b, struct spool *spool)
{
    struct pending *p = TAILQ_LAST(&b->awaited, pending_queue);
    p->spool = spool;
    p->held = backend_must_hold(b, p);
    if (b->noop_timer)
        event_del(b->noop_timer);
    if (b->state == B_READY && !p->held)
        backend_write(b, "DATA\r\n", 6);
    return p;
}

static void smtp_send_message(struct backend *base, struct spool *spool, struct evbuffer *prefix,
                              uint64_t offset, backend_cb cb, void *arg)
{
    struct smtp_backend *b = SMTP(base);
    enum backend_status st = backend_lost_status(b);
    if (backend_takes_commands(b)) {
        if (backend_queue(b, P_DATA, BSTEP_DATA, cb, arg) == 0)
            st = BACKEND_REPLY;
        else
            st = BACKEND_INTERNAL;
    }
    if (st != BACKEND_REPLY) {
        if (prefix)
            evbuffer_free(prefix);
        backend_deliver(cb, arg, st, 0, NULL, 0, 0);
        return;
    }
    struct pending *p = backend_data_sent(b, spool);
    p->prefix = prefix;
    p->offset = offset;
}

static void smtp_stream_begin(struct backend *base, struct spool *spool, backend_cb cb, void *arg)
{
    struct smtp_backend *b = SMTP(base);
    if (!backend_takes_commands(b)) {
        backend_deliver(cb, arg, backend_lost_status(b), 0, NULL, 0, 0);
        return;
    }
    if (backend_queue(b, P_DATA, BSTEP_DATA, cb, arg) < 0) {
        log_err(b->sid, "backend %s: out of memory queueing DATA", b->peer);
        backend_deliver(cb, arg, BACKEND_INTERNAL, 0, NULL, 0, 0);
        return;
    }
    backend_data_sent(b, spool)->stream = true;
    b->streaming = true;
}

static struct pending *backend_stream_pending(struct smtp_backend *b)
{
    struct pending *p = TAILQ_LAST(&b->awaited, pending_queue);
    return backend_takes_commands(b) && b->streaming && p && p->stream ? p : NULL;
}

static void smtp_stream_more(struct backend *base)
{
    struct smtp_backend *b = SMTP(base);
    struct pending *p = backend_stream_pending(b);
    if (p && p->kind == P_BODY)
        backend_stream_forward(b, p);
}

static void smtp_stream_end(struct backend *base)
{
    struct smtp_backend *b = SMTP(base);
    struct pending *p = backend_stream_pending(b);
    if (!p)
        return;
    p->end = true;
    if (p->kind == P_BODY)
        backend_stream_forward(b, p);
}

/* The owner holds the handle: a kept connection's first commands, or a new
 * connection's attempt, go now rather than after every other event the
 * loop has ready (under load that turn was most of a kept connection's
 * extra latency at RCPT). A connection still waiting for a slot waits on. */
static void smtp_begin(struct backend *base)
{
    struct smtp_backend *b = SMTP(base);
    if (b->state != B_WAIT_SLOT || (!b->reusing && !b->has_slot))
        return;
    event_del(b->start_ev);
    backend_start_cb(-1, 0, b);
}

static void smtp_keepalive(struct backend *base, bool on)
{
    struct smtp_backend *b = SMTP(base);
    b->keepalive = on;
    if (!on) {
        if (b->noop_timer)
            event_del(b->noop_timer);
        return;
    }
    backend_noop_arm(b);
}

static void smtp_close(struct backend *base)
{
    struct smtp_backend *b = SMTP(base);
    bool keepable = backend_keepable(b);
    bool keep = keepable && !backend_worn(b);
    while (!TAILQ_EMPTY(&b->awaited)) {
        struct pending *p = TAILQ_FIRST(&b->awaited);
        TAILQ_REMOVE(&b->awaited, p, link);
        pending_free(p);
    }
    b->open_cb = NULL;
    if (b->noop_timer)
        event_del(b->noop_timer);
    if (b->streaming && b->state == B_READY) {
        /* A message begun without its end: closing is the only way out
         * (QUIT would be message text); the server discards it. */
        log_info(b->sid, "backend %s: message not complete, closing without its end", b->peer);
        b->state = B_DEAD;
    }
    if (b->state != B_READY || !b->io) {
        b->state = B_DEAD;
        backend_free(b);
        return;
    }
    if (keep && backend_park(b))
        return;
    if (keepable && !keep)
        backend_renew(b);
    backend_quit(b);
}

/* The session's reverse lookup ended: the name XCLIENT gives (a kept
 * [TEMPUNAVAIL] when there is no memory for it), and a connection waiting
 * for it goes on from its own loop turn, not in the session's stack. */
static void smtp_name_known(struct backend *base, enum dns_status st, const char *name)
{
    struct smtp_backend *b = SMTP(base);
    if (!b->name_pending)
        return;
    b->name_pending = false;
    const struct backend_client known = {.name_status = st, .name = name};
    char *copy = strdup(backend_client_name(&known));
    if (copy) {
        free(b->client_name);
        b->client_name = copy;
    } else {
        log_err(b->sid, "backend %s: out of memory for the client's name", b->peer);
    }
    if (b->state == B_NAME_WAIT)
        event_active(b->name_ev, 0, 0);
}

static bool smtp_usable(const struct backend *b) { return backend_takes_commands(CSMTP(b)); }
static const struct ehlo_caps *smtp_caps(const struct backend *b) { return &CSMTP(b)->caps; }
static const char *smtp_peer_name(const struct backend *b) { return CSMTP(b)->peer; }
static int smtp_pool_index(const struct backend *b) { return CSMTP(b)->pool_index; }

const struct backend_ops backend_smtp_ops = {
    .open = smtp_open,
    .command = smtp_command,
    .send_message = smtp_send_message,
    .stream_begin = smtp_stream_begin,
    .stream_more = smtp_stream_more,
    .stream_end = smtp_stream_end,
    .begin = smtp_begin,
    .keepalive = smtp_keepalive,
    .name_known = smtp_name_known,
    .close = smtp_close,
    .usable = smtp_usable,
    .caps = smtp_caps,
    .peer_name = smtp_peer_name,
    .pool_index = smtp_pool_index,
};
