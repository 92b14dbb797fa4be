#include "session.h"
#include "mstime.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <event2/buffer.h> /* the decoded message on its way to the spool */
#include <event2/event.h>

#include "backend.h"
#include "conn_limits.h"
#include "host_metrics.h"
#include "config.h"
#include "data_codec.h"
#include "dns.h"
#include "hooks.h"
#include "io.h"
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
#include "tls.h"
#include "worker.h"

#include <sluice/session.h>

/* Input kept unread while a command waits (hook or backend); the kernel
 * buffers the rest, so a client that floods us costs bounded memory. */
#define SESSION_INPUT_HIGH_WATER (256 * 1024)
/* Replies a client has not read: stop reading commands until it does. */
#define SESSION_OUTPUT_HIGH_WATER (256 * 1024)
/* How long a closing session waits for the client to take its last reply. */
#define SESSION_CLOSE_FLUSH_MS 10000
/* Relayed replies up to this size are formatted without an allocation. */
#define SESSION_REPLY_STACK 2048

static void session_process(struct session *s);
static void session_finish(struct session *s);
static void session_greet(struct session *s);
static void session_free(struct session *s);

/* ---- replies ----------------------------------------------------------- */

void session_write(struct session *s, const char *buf, size_t len)
{
    if (!s->io || io_write(s->io, buf, len) == 0)
        return;
    /* No reply can be sent when the output cannot take one: the session
     * ends (io drops what was queued; IO_CLOSED comes from the loop). */
    log_err(s->sid, "out of memory in the output buffer, closing the session");
    if (s->phase != PH_CLOSING)
        session_close_after(s, R_COUNT);
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
    s->armed_wait = WAIT_UNSET;
    /* Never freed from inside a handler: IO_CLOSED comes from the loop. No
     * io means the session is finishing already. */
    if (s->io)
        io_close_when_flushed(s->io, SESSION_CLOSE_FLUSH_MS);
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

/* The reply table's default for a verdict at a hook. */
static enum reply_id session_verdict_default(enum hook_point point, enum hook_verdict_kind kind)
{
    if (kind == VERDICT_REJECT)
        return point == HOOK_CONNECT                          ? R_REJECT_CONNECT
               : (point == HOOK_DATA || point == HOOK_EOM) ? R_REJECT_DATA
                                                              : R_REJECT;
    if (kind == VERDICT_TEMPFAIL)
        return point == HOOK_CONNECT ? R_TEMPFAIL_CONNECT : R_TEMPFAIL;
    return R_DISCONNECT;
}

/* The reply a verdict gives at a hook, forced into its class. */
static void session_verdict_reply(struct session *s, enum hook_point point,
                                  const struct hook_verdict *v)
{
    char line[REPLY_FORMAT_MAX];
    size_t n = reply_verdict(session_verdict_default(point, v->kind), v->code, v->esc, v->text,
                             line, sizeof line);
    session_write(s, line, n);
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

/* Starts the deadline of what the client must send whole: a PROXY header,
 * one command line. A read timeout would restart at every byte, so a client
 * dribbling a byte per period would never be cut; this timer does not move. */
static void session_deadline(struct session *s, int64_t ms)
{
    io_set_deadline(s->io, ms);
}

/* Sets the client's timeouts for what the session waits for now. A command
 * line's deadline starts when the session becomes ready for it (the previous
 * line was taken, or the session stopped being busy); DATA keeps a read
 * timeout, since data_block is the gap between chunks and data_total bounds
 * the whole. Only a change of what it waits for touches the connection. */
static void session_arm_timeout(struct session *s)
{
    /* The PROXY header's deadline runs from accept until the header is
     * complete, whatever wakes the session meanwhile (a write event did
     * disarm it, and a balancer that sent nothing was never closed). */
    if (!s->io || s->phase == PH_CLOSING || s->phase == PH_PROXY)
        return;
    enum session_wait wait = s->busy ? WAIT_US : s->phase == PH_DATA ? WAIT_DATA : WAIT_COMMAND;
    if (wait == WAIT_COMMAND && (wait != s->armed_wait || s->line_taken))
        session_deadline(s, s->cfg->command_timeout_ms);
    s->line_taken = false;
    if (wait == s->armed_wait)
        return;
    s->armed_wait = wait;
    if (wait != WAIT_COMMAND)
        io_clear_deadline(s->io);
    if (wait == WAIT_US) {
        /* Waiting on a hook or the backend: the client is waiting on us. */
        io_set_timeouts(s->io, 0, 0);
        return;
    }
    io_set_timeouts(s->io, wait == WAIT_DATA ? s->cfg->data_block_timeout_ms : 0,
                    s->cfg->command_timeout_ms);
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
    free(t->stream_text);
    if (s->state == SS_MAIL)
        s->state = SS_HELO;
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

bool session_txn_reserve_rcpt(struct session *s)
{
    struct txn *t = &s->txn;
    if (t->nrcpts < t->cap)
        return true;
    size_t ncap = t->cap ? t->cap * 2 : 4;
    struct rcpt_entry *n = realloc(t->rcpts, ncap * sizeof *n);
    if (!n)
        return false;
    t->rcpts = n;
    t->cap = ncap;
    return true;
}

/* Records the reply the current recipient got; its slot was reserved
 * (session_txn_reserve_rcpt) before the RCPT went on. */
void session_txn_add_rcpt(struct session *s, int code)
{
    struct txn *t = &s->txn;
    host_metrics_rcpt(code);
    if (t->nrcpts == t->cap) {
        log_err(s->sid, "recipient recorded without a reserved slot");
        return;
    }
    t->rcpts[t->nrcpts].addr = s->cur_rcpt_addr;
    t->rcpts[t->nrcpts].code = code;
    s->cur_rcpt_addr = NULL;
    t->nrcpts++;
    if (code / 100 == 2)
        t->naccepted++;
}

/* The one line per transaction that operators grep for. */
static void session_log_txn_as(struct session *s, int code, const char *result)
{
    struct txn *t = &s->txn;
    if (!t->active)
        return;
    struct timeval now, d;
    gettimeofday(&now, NULL);
    timersub(&now, &t->start, &d);
    host_metrics_transaction(code, t->size, (double)d.tv_sec + (double)d.tv_usec / 1e6);
    /* Below the level, the line's formatting (every recipient sanitized and
     * printed) would be thrown away: the metrics above are all it costs. */
    if (log_get_level() < SLOG_INFO)
        return;
    char rcpts[2048] = "";
    size_t off = 0;
    for (size_t i = 0; i < t->nrcpts && off + 16 < sizeof rcpts; i++) {
        char addr[300];
        const char *a = t->rcpts[i].addr ? t->rcpts[i].addr : "";
        log_sanitize(addr, sizeof addr, a, strlen(a));
        int n = snprintf(rcpts + off, sizeof rcpts - off, "%s<%s>:%d", i ? "," : "", addr,
                         t->rcpts[i].code);
        if (n < 0 || (size_t)n >= sizeof rcpts - off)
            break;
        off += (size_t)n;
    }
    char from[300], helo[300];
    log_sanitize(from, sizeof from, t->from ? t->from : "", t->from ? t->from_len : 0);
    log_sanitize(helo, sizeof helo, s->helo ? s->helo : "", s->helo ? strlen(s->helo) : 0);
    const char *tls = s->io ? io_tls_version(s->io) : NULL;
    log_info(s->sid, "tx client=%s helo=%s from=<%s> rcpt=%s size=%llu backend=%s result=%s "
             "duration=%ld.%03lds tls=%s%s%s",
             s->client_ip, helo, from, rcpts[0] ? rcpts : "-", (unsigned long long)t->size,
             s->backend ? backend_peer_name(s->backend) : "-", result, (long)d.tv_sec,
             (long)(d.tv_usec / 1000), tls ? tls : "-", tls ? "/" : "",
             tls ? io_tls_cipher(s->io) : "");
}

void session_log_txn(struct session *s, const char *result)
{
    session_log_txn_as(s, atoi(result), result);
}

void session_log_txn_code(struct session *s, int code)
{
    char result[16] = "";
    /* Formatted only for a line that is written. */
    if (log_get_level() >= SLOG_INFO)
        snprintf(result, sizeof result, "%d", code);
    session_log_txn_as(s, code, result);
}

/* ---- message buffers ---------------------------------------------------- */

bool session_data_buffers(struct session *s)
{
    if (!s->spool)
        s->spool = spool_new((size_t)s->cfg->spool_memory, s->cfg->spool_dir);
    if (s->spool)
        return true;
    log_err(s->sid, "out of memory for the message spool");
    return false;
}

/* ---- command input ------------------------------------------------------ */

/* The command line buffer comes with the first command, not at accept: a
 * session held before its greeting (tarpit, DNS) never reads one. Out of
 * memory: the session cannot read commands, so it says so and closes. */
static bool session_line_buffer(struct session *s)
{
    if (s->line)
        return true;
    s->line = malloc((size_t)s->cfg->max_line_length + 1);
    if (s->line)
        return true;
    log_err(s->sid, "out of memory for the command line buffer");
    session_close_after(s, R_INTERNAL_CLOSE);
    return false;
}

static bool session_read_line(struct session *s)
{
    size_t len;
    if (!session_line_buffer(s))
        return false;
    switch (io_read_line(s->io, s->line, (size_t)s->cfg->max_line_length, &len)) {
    case IO_LINE_MORE:
        return false;
    case IO_LINE_LONG_OPEN:
        /* Answered once; the rest of the line is dropped up to its end. */
        session_error(s, R_LINE_TOO_LONG);
        return false;
    case IO_LINE_TOO_LONG:
        s->line_taken = true;
        session_error(s, R_LINE_TOO_LONG);
        return true;
    case IO_LINE_SKIPPED:
        s->line_taken = true;
        return true;
    case IO_LINE_OK:
    default:
        s->line_taken = true;
        session_command(s, s->line, len);
        return true;
    }
}

static bool session_output_full(struct session *s)
{
    return io_output_len(s->io) > SESSION_OUTPUT_HIGH_WATER;
}

static void session_process(struct session *s)
{
    if (s->processing || !s->io)
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
        s->state = SS_REJECTED;
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
    if (io_input_len(s->io) > 0) {
        s->early_talker = true;
        log_info(s->sid, "early talker: client spoke before the greeting");
    }
    char line[REPLY_FORMAT_MAX];
    session_write(s, line, reply_format(RF_GREETING, s->cfg->hostname, line, sizeof line));
    s->phase = PH_COMMANDS;
    session_done(s);
}

static void session_log_connect(const struct session *s, const char *why)
{
    log_info(s->sid, "connect from %s[%s]:%d%s", s->rdns_name ? s->rdns_name : "unknown",
             s->client_ip, s->client_port, why);
}

/* The lookup ended after the greeting: a hook that waited for the name goes
 * on, unless the session is closing (shutdown, an output error): its
 * command is not carried out. A finishing session's disconnect hook goes on. */
static void session_name_known(struct session *s)
{
    if (s->phase == PH_CLOSING && !s->finishing)
        return;
    hooks_name_known(s);
}

static void session_rdns_done(void *arg, enum dns_status st, const char *name)
{
    struct session *s = arg;
    s->rdns_query = NULL;
    if (st == DNS_NOMEM) {
        /* Plugins see a lookup that failed for now, as it did. */
        log_err(s->sid, "out of memory in the reverse lookup");
        st = DNS_TEMPFAIL;
    }
    s->rdns_status = st;
    if (st == DNS_OK && name) {
        s->rdns_name = strdup(name);
        if (!s->rdns_name) {
            log_err(s->sid, "out of memory keeping the reverse name");
            s->rdns_status = DNS_TEMPFAIL;
        }
    }
    session_log_connect(s, st == DNS_TEMPFAIL ? " (reverse lookup failed)" : "");
    if (s->disconnect_done) {
        session_free(s);
        return;
    }
    if (s->backend)
        backend_name_known(s->backend, s->rdns_status, s->rdns_name);
    if (s->greeted_early) {
        session_name_known(s);
        return;
    }
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
    enum limits_verdict v =
        limits_admit(l, (struct sockaddr *)&s->peer, why, sizeof why, &s->limits_ticket);
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

/* Implicit TLS (RFC 8314): the handshake comes before anything else; the
 * greeting waits in the TLS output until it is done. */
static bool session_start_implicit_tls(struct session *s)
{
    char err[300];
    SSL_CTX *ctx = tls_server_ctx(s->listen, err, sizeof err);
    int rc = ctx ? io_start_tls_server(s->io, ctx) : -1;
    SSL_CTX_free(ctx); /* the SSL holds its own reference; NULL is a no-op */
    if (rc < 0) {
        log_err(s->sid, "implicit TLS: %s", ctx ? io_error_text(s->io) : err);
        session_close_after(s, R_COUNT); /* nothing can be said in plain text */
        return false;
    }
    return true;
}

static void session_identified(struct session *s)
{
    if (s->listen->tls_implicit && !io_tls_active(s->io) && !session_start_implicit_tls(s))
        return;
    netaddr_ntop((struct sockaddr *)&s->peer, s->client_ip, sizeof s->client_ip);
    s->client_port = netaddr_port((struct sockaddr *)&s->peer);
    if (!session_admit(s))
        return;
    s->phase = PH_RDNS;
    s->rdns_status = DNS_TEMPFAIL;
    s->rdns_query = dns_reverse_confirmed(s->loop->dns, (struct sockaddr *)&s->peer,
                                          s->cfg->reverse_lookup_timeout_ms, session_rdns_done, s);
    if (!s->rdns_query) {
        session_rdns_done(s, DNS_TEMPFAIL, NULL);
        return;
    }
    /* A connect hook may read the name or refuse by it: the greeting waits
     * for the lookup, then for the hook. Without one nothing before the
     * greeting needs the name, so the client is greeted now and each reader
     * of the name waits for the lookup instead (hooks_run, XCLIENT). */
    if (!hooks_wanted(s, HOOK_CONNECT)) {
        s->greeted_early = true;
        session_greet(s);
    }
}

static void session_proxy_input(struct session *s)
{
    size_t avail = io_input_len(s->io);
    size_t want = avail < PROXY_MAX_HEADER ? avail : PROXY_MAX_HEADER;
    const unsigned char *buf = io_input_peek(s->io, want);
    struct proxy_info info;
    int n = proxy_parse(buf, want, &info);
    if (n == 0 && want < PROXY_MAX_HEADER)
        return;
    if (n <= 0) {
        log_info(s->sid, "invalid or missing PROXY header from %s, closing", s->client_ip);
        session_close_after(s, R_COUNT);
        return;
    }
    io_input_drain(s->io, (size_t)n);
    io_clear_deadline(s->io);
    if (!info.local) {
        s->peer = info.src;
        s->local = info.dst;
    }
    session_identified(s);
}

/* ---- events ------------------------------------------------------------- */

/* The deadline of what the client must send whole passed. */
static void session_deadline_passed(struct session *s)
{
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

static void session_input(struct io *io, void *arg)
{
    struct session *s = arg;
    (void)io;
    if (s->phase == PH_PROXY)
        session_proxy_input(s);
    else
        session_process(s);
}

static void session_drained(struct io *io, void *arg)
{
    struct session *s = arg;
    (void)io;
    session_process(s); /* output drained below the high-water mark */
}

static bool session_before_greeting(const struct session *s, struct io *io)
{
    return (s->phase == PH_RDNS || s->phase == PH_CONNECT_HOOK) && io_input_len(io) == 0;
}

static void session_io_event(struct io *io, enum io_event ev, void *arg)
{
    struct session *s = arg;
    if (ev == IO_CLOSED) {
        session_finish(s);
        return;
    }
    if (ev == IO_DEADLINE) {
        session_deadline_passed(s);
        return;
    }
    if (ev == IO_CONNECTED) {
        char tls[128];
        io_tls_describe(io, tls, sizeof tls);
        log_info(s->sid, "TLS established: %s", tls);
        return;
    }
    if ((ev == IO_READ_TIMEOUT || ev == IO_WRITE_TIMEOUT) && s->phase != PH_CLOSING) {
        /* The command wait has its own deadline: this is data_block in DATA,
         * or a client that does not read its replies. */
        log_info(s->sid, "timeout %s, closing",
                 ev == IO_READ_TIMEOUT ? "during DATA" : "writing to the client");
        session_log_txn(s, "timeout");
        session_close_after(s, s->phase == PH_DATA ? R_DATA_TIMEOUT : R_IDLE_TIMEOUT);
        return;
    }
    /* A client may pipeline up to QUIT and shut its side (shutdown(SHUT_WR)):
     * its commands are still carried out and answered. One gone before its
     * greeting with nothing sent has nothing to be answered: its session
     * (and its connection slot) ends now, not when a tarpit's delay does. */
    if (ev == IO_EOF && s->phase != PH_CLOSING && s->phase != PH_PROXY &&
        !session_before_greeting(s, io) && (s->busy || io_input_len(io) > 0)) {
        s->client_eof = true;
        session_process(s);
        return;
    }
    if (s->phase != PH_CLOSING) {
        if (ev == IO_EOF)
            log_info(s->sid, "client disconnected");
        else
            log_info(s->sid, "client connection error: %s", io_error_text(io));
        session_log_txn(s, "disconnect");
    }
    session_finish(s);
}

static const struct io_callbacks session_io_callbacks = {
    .input = session_input,
    .drained = session_drained,
    .event = session_io_event,
};

/* ---- lifetime ----------------------------------------------------------- */

/* The connection's place under the connection limits is given back when
 * the connection closes: a session kept after it (its reverse lookup
 * still running for the disconnect hook and the connect line) holds no
 * descriptor, and must not turn a client's next connection away. */
static void session_release_limits(struct session *s)
{
    if (!s->limits_admitted)
        return;
    s->limits_admitted = false;
    limits_release(s->loop->worker->limits, (struct sockaddr *)&s->peer, &s->limits_ticket);
}

static void session_free(struct session *s)
{
    struct loop *loop = s->loop;
    if (s->rdns_query)
        dns_cancel(s->rdns_query);
    if (s->backend)
        backend_close(s->backend);
    io_free(s->io);
    if (s->data_timer)
        event_free(s->data_timer);
    if (s->spool)
        spool_free(s->spool);
    session_txn_clear(s);
    session_plugins_free(s);
    session_release_limits(s);
    if (s->gen)
        generation_unref(s->gen);
    free(s->helo);
    free(s->rdns_name);
    free(s->line);
    free(s->cur_rcpt_params);
    LIST_REMOVE(s, loop_link);
    loop->sessions--;
    atomic_fetch_sub(&loop->worker->sessions, 1);
    host_metrics_session_closed();
    free(s);
}

static void session_disconnect_done(struct session *s, const struct hook_verdict *v)
{
    if (s->op_depth > 0) {
        /* Resumed from a plugin's callback, which still uses the session
         * (sdk_op_end, sluice_resume): freed when it returns. */
        s->free_deferred = true;
        return;
    }
    if (s->rdns_query) {
        s->disconnect_done = true; /* freed when the lookup ends */
        return;
    }
    session_free(s);
}

void session_free_deferred(struct session *s)
{
    if (s->op_depth > 0 || !s->free_deferred)
        return;
    s->free_deferred = false;
    session_disconnect_done(s, NULL);
}

/* A client gone during its reverse lookup before its greeting: the lookup
 * is cancelled, so the connect hook never starts once the disconnect hook
 * runs. Greeted already (no connect hook), the lookup goes on: a disconnect
 * hook waits for the name like any hook (hooks_run), and the session,
 * without its connection, stays until the connect line is written. */
static void session_end_lookup(struct session *s)
{
    if (s->greeted_early)
        return;
    dns_cancel(s->rdns_query);
    s->rdns_query = NULL;
}

static void session_finish(struct session *s)
{
    if (s->finishing)
        return;
    s->finishing = true;
    s->phase = PH_CLOSING;
    session_end_lookup(s);
    io_free(s->io);
    s->io = NULL;
    session_release_limits(s);
    if (s->backend) {
        backend_close(s->backend);
        s->backend = NULL;
    }
    log_debug(s->sid, "session closed");
    hooks_run(s, HOOK_DISCONNECT, session_disconnect_done);
}

void session_shutdown_all(struct loop *loop)
{
    struct session *s;
    LIST_FOREACH(s, &loop->sessions_of_loop, loop_link) {
        if (s->finishing || s->phase == PH_CLOSING)
            continue;
        log_info(s->sid, "shutdown: closing");
        session_log_txn(s, "shutdown");
        session_close_after(s, R_SHUTDOWN);
    }
}

void session_close_all(struct loop *loop)
{
    while (!LIST_EMPTY(&loop->sessions_of_loop))
        session_free(LIST_FIRST(&loop->sessions_of_loop));
}

/* A session id must not repeat across restarts, not be secret: one
 * arc4random per loop thread seeds a splitmix64 sequence (glibc's
 * arc4random is a getrandom system call per call: one per connection). */
static uint32_t session_id_random(void)
{
    static _Thread_local uint64_t state;
    static _Thread_local bool seeded;
    if (!seeded) {
        state = ((uint64_t)arc4random() << 32) | arc4random();
        seeded = true;
    }
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (uint32_t)(z ^ (z >> 31));
}

/* digits upper-case hex digits of v at out. */
static void session_hex(char *out, uint32_t v, int digits)
{
    static const char hex[] = "0123456789ABCDEF";
    for (int i = digits - 1; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 0xf];
}

/* Loop index, random, sequence: "%02X%06X%04X", by hand (a printf per
 * connection for it was 600 instructions). */
static void session_make_id(struct session *s)
{
    uint32_t r = session_id_random();
    session_hex(s->sid, (uint32_t)s->loop->index & 0xff, 2);
    session_hex(s->sid + 2, r & 0xffffff, 6);
    session_hex(s->sid + 8, s->loop->session_seq++ & 0xffff, 4);
    s->sid[12] = '\0';
}

/* Out of memory at accept: the client still hears why (one reply fits any
 * fresh socket's send buffer), then the socket closes. */
static void session_refuse_fd(evutil_socket_t fd)
{
    if (send(fd, reply_text(R_INTERNAL_CLOSE), reply_len(R_INTERNAL_CLOSE),
             MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        log_debug(NULL, "cannot tell a refused client why: %s", strerror(errno));
}

void session_accept(struct loop *loop, evutil_socket_t fd, const struct sockaddr *peer,
                    int peerlen, const struct listen_conf *listen,
                    const struct sockaddr_storage *local)
{
    struct session *s = calloc(1, sizeof *s);
    if (!s) {
        session_refuse_fd(fd);
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
    if (local) {
        s->local = *local;
    } else {
        socklen_t llen = sizeof s->local;
        getsockname(fd, (struct sockaddr *)&s->local, &llen);
    }
    session_make_id(s);
    netaddr_ntop(peer, s->client_ip, sizeof s->client_ip);
    s->client_port = netaddr_port(peer);
    LIST_INSERT_HEAD(&loop->sessions_of_loop, s, loop_link);
    loop->sessions++;
    atomic_fetch_add(&loop->worker->sessions, 1);
    host_metrics_session_opened();

    /* The line buffer and the spool come when first needed
     * (session_line_buffer, session_data_buffers): a held session has none. */
    s->io = io_new(loop->base, fd, &session_io_callbacks, s);
    if (!s->io) {
        log_err(s->sid, "out of memory at accept");
        session_refuse_fd(fd);
        evutil_closesocket(fd);
        session_free(s);
        return;
    }
    io_set_input_limit(s->io, SESSION_INPUT_HIGH_WATER);
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
