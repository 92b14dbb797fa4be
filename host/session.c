#include "session.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "backend.h"
#include "conn_limits.h"
#include "host_metrics.h"
#include "config.h"
#include "data_codec.h"
#include "dns.h"
#include "hooks.h"
#include "log.h"
#include "netaddr.h"
#include "generation.h"
#include "plugin_host.h"
#include "pool.h"
#include "proxy_proto.h"
#include "reply.h"
#include "route.h"
#include "session_internal.h"
#include "smtp_cmd.h"
#include "spool.h"
#include "worker.h"

#include <sluice/session.h>

/* Input kept unread while a command waits (hook or backend); the kernel
 * buffers the rest, so a client that floods us costs bounded memory. */
#define SESSION_INPUT_HIGH_WATER (256 * 1024)
/* Replies a client has not read: stop reading commands until it does. */
#define SESSION_OUTPUT_HIGH_WATER (256 * 1024)
/* Relayed replies up to this size are formatted without an allocation. */
#define SESSION_REPLY_STACK 2048

static void session_process(struct session *s);
static void session_finish(struct session *s);
static void session_greet(struct session *s);

/* ---- replies ----------------------------------------------------------- */

void session_write(struct session *s, const char *buf, size_t len)
{
    if (s->bev)
        bufferevent_write(s->bev, buf, len);
}

void session_reply(struct session *s, enum reply_id id)
{
    session_write(s, reply_text(id), reply_len(id));
}

/* Closes after the reply has been flushed. */
void session_close_after(struct session *s, enum reply_id id)
{
    if (id != R_COUNT)
        session_reply(s, id);
    s->phase = PH_CLOSING;
    s->busy = true;
    if (s->wait_timer)
        event_del(s->wait_timer);
    if (s->bev) {
        bufferevent_disable(s->bev, EV_READ);
        struct timeval tv = {.tv_sec = 10};
        bufferevent_set_timeouts(s->bev, NULL, &tv);
        s->armed_wait = WAIT_UNSET;
        /* Never freed from inside a handler: the finish event does it. */
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
            event_active(s->finish_ev, 0, 0);
    } else {
        event_active(s->finish_ev, 0, 0);
    }
}

/* A client error: counted, and too many of them end the session. */
void session_error(struct session *s, enum reply_id id)
{
    if (++s->errors >= s->cfg->max_errors) {
        log_info(s->sid, "too many errors (%d), closing", s->errors);
        session_close_after(s, R_TOO_MANY_ERRORS);
        return;
    }
    session_reply(s, id);
}

/* Writes a backend reply for the client: verbatim, enhanced code added when
 * missing. */
void session_relay_reply(struct session *s, const struct backend_reply *r)
{
    struct smtp_reply sr = {.code = r->code, .len = r->len, .nlines = r->nlines};
    size_t cap = r->len + 8 * r->nlines + 16;
    char small[SESSION_REPLY_STACK];
    char *out = cap <= sizeof small ? small : malloc(cap);
    if (!out) {
        session_reply(s, R_INTERNAL);
        return;
    }
    size_t n = reply_format_relay(r->text, &sr, out, cap);
    session_write(s, out, n);
    if (out != small)
        free(out);
}

/* The reply a verdict gives at a hook, forced into its class. */
static void session_verdict_reply(struct session *s, enum hook_point point,
                                  const struct hook_verdict *v)
{
    enum reply_id def;
    int cls;
    if (v->kind == VERDICT_REJECT) {
        def = point == HOOK_CONNECT                          ? R_REJECT_CONNECT
              : (point == HOOK_DATA || point == HOOK_EOM) ? R_REJECT_DATA
                                                             : R_REJECT;
        cls = 5;
    } else if (v->kind == VERDICT_TEMPFAIL && point != HOOK_CONNECT) {
        def = R_TEMPFAIL;
        cls = 4;
    } else {
        def = v->kind == VERDICT_TEMPFAIL ? R_TEMPFAIL_CONNECT : R_DISCONNECT;
        cls = 4;
    }
    if (v->code == 0 && v->text[0] == '\0') {
        session_reply(s, def);
        return;
    }
    int code = v->code;
    if (code / 100 != cls)
        code = reply_code(def);
    if (v->kind == VERDICT_DISCONNECT || (v->kind == VERDICT_TEMPFAIL && point == HOOK_CONNECT))
        code = 421;
    char esc[16];
    if (v->esc[0] && v->esc[0] - '0' == cls)
        snprintf(esc, sizeof esc, "%s", v->esc);
    else
        snprintf(esc, sizeof esc, "%d.7.1", cls);
    char line[400];
    int n = snprintf(line, sizeof line, "%d %s %s\r\n", code, esc,
                     v->text[0] ? v->text : (cls == 5 ? "Rejected" : "Try again later"));
    if (n > 0)
        session_write(s, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Applies a verdict that is not continue/accept. Returns true when the
 * session must stop the current command (a reply was written). */
bool session_apply_verdict(struct session *s, enum hook_point point, const struct hook_verdict *v)
{
    if (v->kind == VERDICT_CONTINUE || v->kind == VERDICT_ACCEPT)
        return false;
    log_info(s->sid, "%s: %s by policy", hook_name(point),
             v->kind == VERDICT_REJECT     ? "rejected"
             : v->kind == VERDICT_TEMPFAIL ? "tempfailed"
                                           : "disconnected");
    bool closing = v->kind == VERDICT_DISCONNECT ||
                   (v->kind == VERDICT_TEMPFAIL && point == HOOK_CONNECT);
    if (closing) {
        session_verdict_reply(s, point, v);
        session_close_after(s, R_COUNT);
    } else {
        session_verdict_reply(s, point, v);
    }
    return true;
}

/* ---- flow control ------------------------------------------------------- */

static struct timeval session_ms_tv(int64_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* Starts the deadline of what the client must send whole: a PROXY header,
 * one command line. A read timeout would restart at every byte, so a client
 * dribbling a byte per period would never be cut; this timer does not move. */
static void session_deadline(struct session *s, int64_t ms)
{
    struct timeval tv = session_ms_tv(ms);
    event_add(s->wait_timer, &tv);
}

/* Sets the client's timeouts for what the session waits for now. A command
 * line's deadline starts when the session becomes ready for it (the previous
 * line was taken, or the session stopped being busy); DATA keeps a read
 * timeout, since data_block is the gap between chunks and data_total bounds
 * the whole. Only a change of what it waits for touches the bufferevent. */
static void session_arm_timeout(struct session *s)
{
    /* The PROXY header's deadline runs from accept until the header is
     * complete, whatever wakes the session meanwhile (a write event did
     * disarm it, and a balancer that sent nothing was never closed). */
    if (!s->bev || s->phase == PH_CLOSING || s->phase == PH_PROXY)
        return;
    enum session_wait wait = s->busy ? WAIT_US : s->phase == PH_DATA ? WAIT_DATA : WAIT_COMMAND;
    if (wait == WAIT_COMMAND && (wait != s->armed_wait || s->line_taken))
        session_deadline(s, s->cfg->command_timeout_ms);
    s->line_taken = false;
    if (wait == s->armed_wait)
        return;
    s->armed_wait = wait;
    if (wait != WAIT_COMMAND)
        event_del(s->wait_timer);
    if (wait == WAIT_US) {
        /* Waiting on a hook or the backend: the client is waiting on us. */
        bufferevent_set_timeouts(s->bev, NULL, NULL);
        return;
    }
    struct timeval wt = session_ms_tv(s->cfg->command_timeout_ms);
    struct timeval rt = session_ms_tv(s->cfg->data_block_timeout_ms);
    bufferevent_set_timeouts(s->bev, wait == WAIT_DATA ? &rt : NULL, &wt);
}

/* The current command is complete: go on with what the client pipelined. */
void session_done(struct session *s)
{
    if (s->phase == PH_CLOSING)
        return;
    s->busy = false;
    session_process(s);
}

/* The timeouts follow when the command goes asynchronous (the end of
 * session_process): a command answered at once never touches them. */
void session_busy(struct session *s)
{
    s->busy = true;
}

/* ---- transactions ------------------------------------------------------- */

static void session_txn_clear(struct session *s)
{
    struct txn *t = &s->txn;
    free(t->from);
    for (size_t i = 0; i < t->nrcpts; i++)
        free(t->rcpts[i].addr);
    free(t->rcpts);
    free(t->fail_reply);
    free(s->cur_rcpt_addr);
    s->cur_rcpt_addr = NULL;
    memset(t, 0, sizeof *t);
    t->pool = -1;
    session_notes_clear(s, SLUICE_TRANSACTION);
    message_info_free(s->msg);
    s->msg = NULL;
}

static void session_backend_rset_cb(void *arg, const struct backend_reply *r)
{
    struct session *s = arg;
    if (r->status != BACKEND_REPLY || r->code / 100 != 2)
        log_debug(s->sid, "backend RSET failed");
}

/* Ends the transaction on our side and, when one is open there, on the
 * backend's side too (the backend session is kept for the next one). */
void session_txn_reset(struct session *s)
{
    if (s->backend && s->txn.backend_open && backend_usable(s->backend))
        backend_command(s->backend, BSTEP_RSET, "RSET\r\n", 6, session_backend_rset_cb, s);
    session_txn_clear(s);
}

void session_txn_add_rcpt(struct session *s, int code)
{
    struct txn *t = &s->txn;
    if (t->nrcpts == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 4;
        struct rcpt_entry *n = realloc(t->rcpts, ncap * sizeof *n);
        if (!n)
            return;
        t->rcpts = n;
        t->cap = ncap;
    }
    t->rcpts[t->nrcpts].addr = s->cur_rcpt_addr;
    t->rcpts[t->nrcpts].code = code;
    s->cur_rcpt_addr = NULL;
    t->nrcpts++;
    host_metrics_rcpt(code);
    if (code / 100 == 2)
        t->naccepted++;
}

/* The one line per transaction that operators grep for. */
void session_log_txn(struct session *s, const char *result)
{
    struct txn *t = &s->txn;
    if (!t->active)
        return;
    char rcpts[2048] = "";
    size_t off = 0;
    for (size_t i = 0; i < t->nrcpts && off + 16 < sizeof rcpts; i++) {
        char addr[300];
        log_sanitize(addr, sizeof addr, t->rcpts[i].addr, strlen(t->rcpts[i].addr));
        int n = snprintf(rcpts + off, sizeof rcpts - off, "%s<%s>:%d", i ? "," : "", addr,
                         t->rcpts[i].code);
        if (n < 0 || (size_t)n >= sizeof rcpts - off)
            break;
        off += (size_t)n;
    }
    char from[300], helo[300];
    log_sanitize(from, sizeof from, t->from ? t->from : "", t->from ? t->from_len : 0);
    log_sanitize(helo, sizeof helo, s->helo ? s->helo : "", s->helo ? strlen(s->helo) : 0);
    struct timeval now, d;
    gettimeofday(&now, NULL);
    timersub(&now, &t->start, &d);
    host_metrics_transaction(atoi(result), t->size,
                             (double)d.tv_sec + (double)d.tv_usec / 1e6);
    log_info(s->sid, "tx client=%s helo=%s from=<%s> rcpt=%s size=%llu backend=%s result=%s "
             "duration=%ld.%03lds",
             s->client_ip, helo, from, rcpts[0] ? rcpts : "-", (unsigned long long)t->size,
             s->backend ? backend_peer_name(s->backend) : "-", result, (long)d.tv_sec,
             (long)(d.tv_usec / 1000));
}

/* ---- command input ------------------------------------------------------ */

static bool session_read_line(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t max = (size_t)s->cfg->max_line_length;
    struct evbuffer_ptr p = evbuffer_search(in, "\n", 1, NULL);
    if (p.pos < 0) {
        size_t avail = evbuffer_get_length(in);
        if (avail >= max) {
            /* Answer once, then drop bytes until the line ends. */
            evbuffer_drain(in, avail);
            if (!s->discarding_line) {
                s->discarding_line = true;
                session_error(s, R_LINE_TOO_LONG);
            }
        }
        return false;
    }
    size_t linelen = (size_t)p.pos + 1;
    s->line_taken = true;
    if (s->discarding_line || linelen > max) {
        evbuffer_drain(in, linelen);
        if (!s->discarding_line)
            session_error(s, R_LINE_TOO_LONG);
        s->discarding_line = false;
        return true;
    }
    evbuffer_remove(in, s->line, linelen);
    size_t len = linelen - 1;
    if (len > 0 && s->line[len - 1] == '\r')
        len--;
    session_command(s, s->line, len);
    return true;
}

static bool session_output_full(struct session *s)
{
    return evbuffer_get_length(bufferevent_get_output(s->bev)) > SESSION_OUTPUT_HIGH_WATER;
}

static void session_process(struct session *s)
{
    if (s->processing || !s->bev)
        return;
    s->processing = true;
    while (!s->busy && s->phase != PH_CLOSING && !session_output_full(s)) {
        if (s->phase == PH_DATA) {
            if (!session_data_input(s))
                break;
        } else if (s->phase == PH_COMMANDS) {
            if (!session_read_line(s))
                break;
        } else {
            break;
        }
    }
    s->processing = false;
    if (s->client_eof && !s->busy && s->phase != PH_CLOSING && !session_output_full(s)) {
        /* All the client sent is answered; what is left is an unfinished line. */
        log_info(s->sid, "client disconnected");
        session_log_txn(s, "disconnect");
        session_close_after(s, R_COUNT);
        return;
    }
    session_arm_timeout(s);
}

/* ---- greeting ----------------------------------------------------------- */

static void session_connect_done(struct session *s, const struct hook_verdict *v)
{
    if (v->kind == VERDICT_REJECT) {
        session_verdict_reply(s, HOOK_CONNECT, v);
        s->rejected = true;
        s->phase = PH_COMMANDS;
        session_done(s);
        return;
    }
    if (session_apply_verdict(s, HOOK_CONNECT, v))
        return;
    session_greet(s);
}

static void session_greet(struct session *s)
{
    if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
        s->early_talker = true;
        log_info(s->sid, "early talker: client spoke before the greeting");
    }
    char line[400];
    int n = snprintf(line, sizeof line, "220 %s ESMTP\r\n", s->cfg->hostname);
    session_write(s, line, (size_t)n);
    s->phase = PH_COMMANDS;
    session_done(s);
}

static void session_rdns_done(void *arg, enum dns_status st, const char *name)
{
    struct session *s = arg;
    s->rdns_query = NULL;
    s->rdns_status = st;
    if (st == DNS_OK && name)
        s->rdns_name = strdup(name);
    log_info(s->sid, "connect from %s[%s]:%d%s", s->rdns_name ? s->rdns_name : "unknown",
             s->client_ip, s->client_port, st == DNS_TEMPFAIL ? " (reverse lookup failed)" : "");
    s->phase = PH_CONNECT_HOOK;
    hooks_run(s, HOOK_CONNECT, session_connect_done);
}

/* Connection limits, on the real client address, before anything else costs. */
static bool session_admit(struct session *s)
{
    struct limits *l = s->loop->worker->limits;
    char why[200] = "";
    if (!l)
        return true;
    enum limits_verdict v = limits_admit(l, (struct sockaddr *)&s->peer, why, sizeof why);
    if (v == LIMITS_OK) {
        s->limits_admitted = true;
        return true;
    }
    log_info(s->sid, "connection from %s refused: %s (%s)", s->client_ip, limits_verdict_name(v),
             why);
    host_metrics_session_refused();
    session_close_after(s, R_LIMIT);
    return false;
}

static void session_identified(struct session *s)
{
    netaddr_ntop((struct sockaddr *)&s->peer, s->client_ip, sizeof s->client_ip);
    s->client_port = netaddr_port((struct sockaddr *)&s->peer);
    if (!session_admit(s))
        return;
    s->phase = PH_RDNS;
    s->rdns_status = DNS_TEMPFAIL;
    s->rdns_query = dns_reverse_confirmed(s->loop->dns, (struct sockaddr *)&s->peer,
                                          s->cfg->reverse_lookup_timeout_ms, session_rdns_done, s);
    if (!s->rdns_query)
        session_rdns_done(s, DNS_TEMPFAIL, NULL);
}

static void session_proxy_input(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t avail = evbuffer_get_length(in);
    size_t want = avail < PROXY_MAX_HEADER ? avail : PROXY_MAX_HEADER;
    const unsigned char *buf = evbuffer_pullup(in, (ev_ssize_t)want);
    struct proxy_info info;
    int n = proxy_parse(buf, want, &info);
    if (n == 0 && want < PROXY_MAX_HEADER)
        return;
    if (n <= 0) {
        log_info(s->sid, "invalid or missing PROXY header from %s, closing", s->client_ip);
        session_close_after(s, R_COUNT);
        return;
    }
    evbuffer_drain(in, (size_t)n);
    event_del(s->wait_timer);
    if (!info.local) {
        s->peer = info.src;
        s->local = info.dst;
    }
    session_identified(s);
}

/* ---- events ------------------------------------------------------------- */

static void session_wait_expired(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (s->phase == PH_PROXY) {
        log_info(s->sid, "no complete PROXY header from %s within %lld ms, closing",
                 s->client_ip, (long long)s->cfg->proxy_header_timeout_ms);
        session_close_after(s, R_IDLE_TIMEOUT);
        return;
    }
    if (s->phase != PH_COMMANDS || s->busy)
        return; /* armed for a wait that is over */
    log_info(s->sid, "timeout: no complete command line within %lld ms, closing",
             (long long)s->cfg->command_timeout_ms);
    session_log_txn(s, "timeout");
    session_close_after(s, R_IDLE_TIMEOUT);
}

static void session_read_cb(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    if (s->phase == PH_PROXY)
        session_proxy_input(s);
    else
        session_process(s);
}

static void session_write_cb(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    if (s->phase == PH_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            session_finish(s);
        return;
    }
    session_process(s); /* output drained below the high-water mark */
}

static void session_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;
    if ((what & BEV_EVENT_TIMEOUT) && s->phase != PH_CLOSING) {
        /* The command wait has its own deadline: this is data_block in DATA,
         * or a client that does not read its replies. */
        log_info(s->sid, "timeout %s, closing",
                 (what & BEV_EVENT_READING) ? "during DATA" : "writing to the client");
        session_log_txn(s, "timeout");
        session_close_after(s, s->phase == PH_DATA ? R_DATA_TIMEOUT : R_IDLE_TIMEOUT);
        return;
    }
    /* A client may pipeline up to QUIT and shut its side (shutdown(SHUT_WR)):
     * its commands are still carried out and answered. */
    if ((what & BEV_EVENT_EOF) && s->phase != PH_CLOSING && s->phase != PH_PROXY &&
        (s->busy || evbuffer_get_length(bufferevent_get_input(bev)) > 0)) {
        s->client_eof = true;
        session_process(s);
        return;
    }
    if (s->phase != PH_CLOSING) {
        log_info(s->sid, "client %s", (what & BEV_EVENT_EOF) ? "disconnected" : "connection error");
        session_log_txn(s, "disconnect");
    }
    session_finish(s);
}

/* ---- lifetime ----------------------------------------------------------- */

static void session_free(struct session *s)
{
    struct loop *loop = s->loop;
    if (s->rdns_query)
        dns_cancel(s->rdns_query);
    if (s->backend)
        backend_close(s->backend);
    if (s->bev)
        bufferevent_free(s->bev);
    if (s->data_timer)
        event_free(s->data_timer);
    if (s->finish_ev)
        event_free(s->finish_ev);
    if (s->wait_timer)
        event_free(s->wait_timer);
    if (s->spool)
        spool_free(s->spool);
    if (s->data_out)
        evbuffer_free(s->data_out);
    session_txn_clear(s);
    session_plugins_free(s);
    if (s->limits_admitted)
        limits_release(loop->worker->limits, (struct sockaddr *)&s->peer);
    if (s->throttle_cfg)
        ev_token_bucket_cfg_free(s->throttle_cfg);
    if (s->gen)
        generation_unref(s->gen);
    free(s->helo);
    free(s->rdns_name);
    free(s->line);
    if (s->prev)
        s->prev->next = s->next;
    else
        loop->session_list = s->next;
    if (s->next)
        s->next->prev = s->prev;
    loop->sessions--;
    atomic_fetch_sub(&loop->worker->sessions, 1);
    host_metrics_session_closed();
    free(s);
}

static void session_disconnect_done(struct session *s, const struct hook_verdict *v)
{
    session_free(s);
}

static void session_finish(struct session *s)
{
    if (s->finishing)
        return;
    s->finishing = true;
    s->phase = PH_CLOSING;
    if (s->bev) {
        bufferevent_free(s->bev);
        s->bev = NULL;
    }
    if (s->backend) {
        backend_close(s->backend);
        s->backend = NULL;
    }
    log_debug(s->sid, "session closed");
    hooks_run(s, HOOK_DISCONNECT, session_disconnect_done);
}

void session_shutdown_all(struct loop *loop)
{
    for (struct session *s = loop->session_list; s; s = s->next) {
        if (s->finishing || s->phase == PH_CLOSING)
            continue;
        log_info(s->sid, "shutdown: closing");
        session_log_txn(s, "shutdown");
        session_close_after(s, R_SHUTDOWN);
    }
}

void session_close_all(struct loop *loop)
{
    while (loop->session_list)
        session_free(loop->session_list);
}

static void session_finish_cb(evutil_socket_t fd, short what, void *arg)
{
    session_finish(arg);
}

static void session_make_id(struct session *s)
{
    uint32_t r = arc4random();
    snprintf(s->sid, sizeof s->sid, "%02X%06X%04X", (unsigned)(s->loop->index & 0xff),
             (unsigned)(r & 0xffffff), (unsigned)(s->loop->session_seq++ & 0xffff));
}

void session_accept(struct loop *loop, evutil_socket_t fd, const struct sockaddr *peer,
                    int peerlen, const struct listen_conf *listen)
{
    struct session *s = calloc(1, sizeof *s);
    if (!s) {
        evutil_closesocket(fd);
        return;
    }
    /* The session keeps the generation it started with through a reload. */
    s->gen = generation_current(loop->worker);
    const struct sluice_config *cfg = s->gen->cfg;
    s->loop = loop;
    s->cfg = cfg;
    s->listen = listen;
    s->txn.pool = -1;
    s->chain = s->gen->chain;
    session_plugins_init(s);
    memcpy(&s->peer, peer, (size_t)peerlen < sizeof s->peer ? (size_t)peerlen : sizeof s->peer);
    socklen_t llen = sizeof s->local;
    getsockname(fd, (struct sockaddr *)&s->local, &llen);
    session_make_id(s);
    netaddr_ntop(peer, s->client_ip, sizeof s->client_ip);
    s->client_port = netaddr_port(peer);
    s->next = loop->session_list;
    if (s->next)
        s->next->prev = s;
    loop->session_list = s;
    loop->sessions++;
    atomic_fetch_add(&loop->worker->sessions, 1);
    host_metrics_session_opened();

    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->line = malloc((size_t)cfg->max_line_length + 1);
    s->bev = bufferevent_socket_new(loop->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->spool = spool_new((size_t)cfg->spool_memory, cfg->spool_dir);
    s->data_out = evbuffer_new();
    s->finish_ev = event_new(loop->base, -1, 0, session_finish_cb, s);
    s->wait_timer = event_new(loop->base, -1, 0, session_wait_expired, s);
    if (!s->line || !s->bev || !s->spool || !s->data_out || !s->finish_ev || !s->wait_timer) {
        log_err(s->sid, "out of memory at accept");
        if (!s->bev)
            evutil_closesocket(fd);
        session_free(s);
        return;
    }
    bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, SESSION_INPUT_HIGH_WATER);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    s->busy = true;

    if (listen->proxy_protocol) {
        if (!netlist_match(listen->proxy_trusted, peer)) {
            log_info(s->sid, "PROXY listener: %s is not a trusted balancer, closing", s->client_ip);
            session_close_after(s, R_COUNT);
            return;
        }
        s->phase = PH_PROXY;
        session_deadline(s, cfg->proxy_header_timeout_ms);
        return;
    }
    session_identified(s);
}
