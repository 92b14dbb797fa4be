/* The backend side of a transaction: opening the backend session at the
 * first recipient, replaying MAIL FROM, relaying RCPT replies, and the
 * message itself (DATA, spool, end of message). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "ascii.h"
#include "config.h"
#include "mstime.h"
#include "generation.h"
#include "io.h"
#include "linebuf.h"
#include "log.h"
#include "pool.h"
#include "session_internal.h"
#include "spool.h"
#include "worker.h"

#define LINE_MAX_OUT 1200

static enum reply_id relay_status_reply(enum backend_status st)
{
    switch (st) {
    case BACKEND_UNREACHABLE:
        return R_BACKEND_UNREACHABLE;
    case BACKEND_POOL_FULL:
        return R_POOL_FULL;
    case BACKEND_INTERNAL:
        return R_INTERNAL;
    case BACKEND_REFUSED:
        return R_BACKEND_HANDSHAKE;
    default:
        return R_BACKEND_LOST;
    }
}

/* Remembers the reply from the table that answers this and every later RCPT. */
static void relay_fail_status(struct session *s, enum backend_status st)
{
    free(s->txn.fail_reply);
    s->txn.fail_reply = NULL;
    s->txn.failed = true;
    s->txn.fail_id = relay_status_reply(st);
}

/* The backend's own reply answers this and every later RCPT (its refusal of
 * MAIL FROM, about the sender); without memory for it, 451 4.3.0 does. */
static void relay_fail_reply(struct session *s, const struct backend_reply *r)
{
    struct smtp_reply sr = {.code = r->code, .len = r->len, .nlines = r->nlines};
    size_t cap = r->len + 8 * r->nlines + 16;
    char *out = malloc(cap);
    if (!out) {
        log_err(s->sid, "out of memory for the backend's refusal (%d)", r->code);
        relay_fail_status(s, BACKEND_INTERNAL);
        return;
    }
    free(s->txn.fail_reply);
    s->txn.fail_reply = out;
    s->txn.fail_len = reply_format_relay(r->text, &sr, out, cap);
    s->txn.fail_code = r->code;
    s->txn.fail_id = R_COUNT;
    s->txn.failed = true;
}

/* Answers the current RCPT with the transaction's failure reply. */
static void relay_rcpt_failed(struct session *s)
{
    if (s->txn.fail_id == R_COUNT) {
        session_write(s, s->txn.fail_reply, s->txn.fail_len);
        session_txn_add_rcpt(s, s->txn.fail_code);
    } else {
        session_reply(s, s->txn.fail_id);
        session_txn_add_rcpt(s, reply_code(s->txn.fail_id));
    }
    session_done(s);
}

static void relay_drop_backend(struct session *s)
{
    if (s->backend) {
        backend_close(s->backend);
        s->backend = NULL;
        session_apply_throttle(s);
    }
    s->txn.backend_open = false;
}

void session_backend_drop(struct session *s) { relay_drop_backend(s); }

/* ---- RCPT ------------------------------------------------------------- */

static void relay_rcpt_reply(void *arg, const struct backend_reply *r)
{
    struct session *s = arg;
    s->txn.rcpt_waiting = false;
    if (s->txn.failed) {
        /* Pipelined behind a MAIL the backend refused: its 503 here says
         * nothing the client needs, the refusal of MAIL does. */
        relay_rcpt_failed(s);
        return;
    }
    if (r->status == BACKEND_INTERNAL) {
        /* The RCPT was never sent: the backend session is as it was. Behind
         * a MAIL still unanswered, the MAIL's reply sends it again (or
         * answers it); otherwise the client hears of it now. */
        if (s->txn.rcpt_pipelined) {
            s->txn.rcpt_pipelined = false;
            return;
        }
        session_reply(s, R_INTERNAL);
        session_txn_add_rcpt(s, reply_code(R_INTERNAL));
        session_done(s);
        return;
    }
    if (r->status != BACKEND_REPLY) {
        log_warn(s->sid, "backend lost at RCPT");
        relay_drop_backend(s);
        relay_fail_status(s, r->status);
        relay_rcpt_failed(s);
        return;
    }
    session_relay_reply(s, r);
    session_txn_add_rcpt(s, r->code);
    session_done(s);
}

static bool relay_may_stream(const struct session *s);
static bool relay_spool_reset(struct session *s);
static void relay_stream_reply(void *arg, const struct backend_reply *r);

/* The client pipelined DATA right behind this RCPT (RFC 2920; Postfix and
 * Exim send MAIL, RCPT and DATA as one group), nothing needs to see DATA
 * or the message before the backend does (no data or eom hook), and the
 * backend takes pipelined commands: DATA can go in the same group as the
 * RCPT, one round trip to the backend less per message. */
static bool relay_data_follows(struct session *s)
{
    static const char data[] = "DATA\r\n";
    const size_t n = sizeof data - 1;
    if (s->txn.stream != STREAM_OFF || !s->io || !s->backend ||
        !backend_caps(s->backend)->pipelining ||
        !relay_may_stream(s) || hooks_wanted(s, HOOK_DATA) || io_input_len(s->io) < n)
        return false;
    const unsigned char *next = io_input_peek(s->io, n);
    return next && ascii_caseeq((const char *)next, data, n);
}

/* The backend's 354 only opens the stream: the body waits for the
 * client's own DATA (relay_data_done), which may yet be refused here
 * (session_data_refused). */
static void relay_send_data_early(struct session *s)
{
    if (!relay_spool_reset(s))
        return; /* the client's DATA meets the same failure in its own turn */
    s->txn.stream = STREAM_EARLY;
    backend_stream_begin(s->backend, s->spool, relay_stream_reply, s);
}

static void relay_send_rcpt(struct session *s)
{
    char line[LINE_MAX_OUT];
    struct linebuf lb = linebuf_on(line, sizeof line);
    const struct rcpt_params *rp = s->cur_rcpt_params;
    bool dsn = backend_caps(s->backend)->dsn;
    linebuf_str(&lb, "RCPT TO:<");
    linebuf_str(&lb, s->cur_rcpt_addr);
    linebuf_str(&lb, ">");
    if (dsn && rp->notify) {
        static const char *const names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
        const char *sep = " NOTIFY=";
        for (unsigned i = 0; i < 4; i++) {
            if (rp->notify & (1u << i)) {
                linebuf_str(&lb, sep);
                linebuf_str(&lb, names[i]);
                sep = ",";
            }
        }
    }
    if (dsn && rp->orcpt[0]) {
        linebuf_str(&lb, " ORCPT=");
        linebuf_str(&lb, rp->orcpt);
    }
    if (!dsn && (rp->notify || rp->orcpt[0]))
        log_info(s->sid, "backend %s lacks DSN: NOTIFY/ORCPT dropped",
                 backend_peer_name(s->backend));
    linebuf_str(&lb, "\r\n");
    if (lb.overflow) {
        /* The parser's limits keep a recipient's line far below this. */
        log_err(s->sid, "RCPT line for the backend too long");
        relay_rcpt_reply(s, &(struct backend_reply){.status = BACKEND_INTERNAL});
        return;
    }
    s->txn.rcpt_waiting = true;
    backend_command(s->backend, BSTEP_RCPT, line, lb.len, relay_rcpt_reply, s);
    /* Not when the RCPT failed at once: its reply already went. */
    if (s->txn.rcpt_waiting && relay_data_follows(s))
        relay_send_data_early(s);
}

/* ---- MAIL FROM replay ------------------------------------------------- */

static void relay_mail_reply(void *arg, const struct backend_reply *r)
{
    struct session *s = arg;
    bool rcpt_queued = s->txn.rcpt_pipelined;
    s->txn.rcpt_pipelined = false;
    if (r->status != BACKEND_REPLY) {
        /* Dropping the backend drops the queued RCPT too: answer it here. */
        relay_drop_backend(s);
        relay_fail_status(s, r->status);
        relay_rcpt_failed(s);
        return;
    }
    if (r->code / 100 != 2) {
        log_info(s->sid, "backend %s refused MAIL FROM with %d", backend_peer_name(s->backend),
                 r->code);
        relay_fail_reply(s, r);
        if (!rcpt_queued)
            relay_rcpt_failed(s);
        return;
    }
    s->txn.backend_open = true;
    if (!rcpt_queued)
        relay_send_rcpt(s);
}

static void relay_mail_params(const struct session *s, struct linebuf *lb)
{
    const struct mail_params *mp = &s->txn.mp;
    const struct ehlo_caps *caps = backend_caps(s->backend);
    if (mp->size >= 0 && caps->size) {
        linebuf_str(lb, " SIZE=");
        linebuf_u64(lb, (uint64_t)mp->size);
    }
    if (mp->body != SMTP_BODY_UNSET && caps->eightbitmime)
        linebuf_str(lb, mp->body == SMTP_BODY_8BITMIME ? " BODY=8BITMIME" : " BODY=7BIT");
    if (mp->smtputf8)
        linebuf_str(lb, " SMTPUTF8");
    if (caps->dsn && mp->ret != SMTP_RET_UNSET)
        linebuf_str(lb, mp->ret == SMTP_RET_FULL ? " RET=FULL" : " RET=HDRS");
    if (caps->dsn && mp->envid[0]) {
        linebuf_str(lb, " ENVID=");
        linebuf_str(lb, mp->envid);
    }
    if (!caps->dsn && (mp->ret != SMTP_RET_UNSET || mp->envid[0]))
        log_info(s->sid, "backend %s lacks DSN: RET/ENVID dropped", backend_peer_name(s->backend));
}

static void relay_send_mail(struct session *s)
{
    const struct ehlo_caps *caps = backend_caps(s->backend);
    if ((s->txn.mp.smtputf8 && !caps->smtputf8) ||
        (s->txn.mp.body == SMTP_BODY_8BITMIME && !caps->eightbitmime)) {
        s->txn.failed = true;
        s->txn.fail_id = s->txn.mp.smtputf8 && !caps->smtputf8 ? R_NEED_SMTPUTF8 : R_NEED_8BITMIME;
        relay_rcpt_failed(s);
        return;
    }
    char line[LINE_MAX_OUT];
    struct linebuf lb = linebuf_on(line, sizeof line);
    linebuf_str(&lb, "MAIL FROM:<");
    linebuf_add(&lb, s->txn.from, s->txn.from_len);
    linebuf_str(&lb, ">");
    relay_mail_params(s, &lb);
    linebuf_str(&lb, "\r\n");
    if (lb.overflow) {
        log_err(s->sid, "MAIL line for the backend too long");
        relay_fail_status(s, BACKEND_INTERNAL);
        relay_rcpt_failed(s);
        return;
    }
    backend_command(s->backend, BSTEP_MAIL, line, lb.len, relay_mail_reply, s);
    /* With PIPELINING the first RCPT follows at once: one round trip less
     * per transaction (RFC 2920 allows MAIL and RCPT in one group). */
    if (s->backend && backend_caps(s->backend)->pipelining) {
        s->txn.rcpt_pipelined = true;
        relay_send_rcpt(s);
    }
}

/* ---- opening the backend session -------------------------------------- */

static void relay_backend_ready(void *arg, const struct backend_reply *r)
{
    struct session *s = arg;
    if (r->status != BACKEND_REPLY || r->code / 100 != 2) {
        if (r->status == BACKEND_REPLY)
            relay_fail_reply(s, r);
        else
            relay_fail_status(s, r->status);
        relay_drop_backend(s);
        relay_rcpt_failed(s);
        return;
    }
    log_debug(s->sid, "backend %s: session open", backend_peer_name(s->backend));
    relay_send_mail(s);
}

static void relay_open_backend(struct session *s)
{
    struct backend_client c = {
        .sid = s->sid,
        .addr = s->peer,
        .local = s->local,
        .helo = s->helo,
        .esmtp = s->esmtp,
        .name_status = s->rdns_status,
        .name = s->rdns_name,
        .name_pending = s->rdns_query != NULL,
    };
    s->backend = backend_open(s->loop->worker->backend_ops, s->loop, s->gen,
                              s->gen->pools[s->txn.pool], s->txn.pool, &c, relay_backend_ready, s);
    /* A throttle applies only while no backend connection is held. */
    session_apply_throttle(s);
    if (!s->backend) {
        relay_fail_status(s, BACKEND_INTERNAL);
        relay_rcpt_failed(s);
        return;
    }
    /* s->backend is set: relay_backend_ready may run from here on. */
    backend_begin(s->backend);
}

/* The recipient passed relay control and every hook: hand it to the
 * backend, opening or reusing the backend session as needed. */
void session_rcpt_relay(struct session *s)
{
    if (s->txn.failed) {
        relay_rcpt_failed(s);
        return;
    }
    if (s->txn.naccepted > 0 && (!s->backend || !backend_usable(s->backend))) {
        /* The connection that holds the recipients told 250 is gone (the
         * server closed it between two RCPTs): a new one would get the
         * message without them. */
        log_warn(s->sid, "backend lost between recipients");
        relay_drop_backend(s);
        relay_fail_status(s, BACKEND_LOST);
        relay_rcpt_failed(s);
        return;
    }
    if (s->backend &&
        (backend_pool_index(s->backend) != s->txn.pool || !backend_usable(s->backend)))
        relay_drop_backend(s);
    if (!s->backend)
        relay_open_backend(s);
    else if (!s->txn.backend_open)
        relay_send_mail(s);
    else
        relay_send_rcpt(s);
}

/* ---- DATA ------------------------------------------------------------- */

static void relay_message_reply(void *arg, const struct backend_reply *r);
static void relay_stream_reply(void *arg, const struct backend_reply *r);

/* Cut-through when nobody needs the whole message first: no plugin reads
 * or changes it at its end (no eom hook, so no header changes either).
 * Otherwise it is stored and forwarded at the client's end of data. */
static bool relay_may_stream(const struct session *s)
{
    return s->backend && backend_can_stream(s->backend) && !hooks_wanted(s, HOOK_EOM);
}

static void relay_data_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    log_info(s->sid, "DATA took longer than %lld ms, closing",
             (long long)s->cfg->data_total_timeout_ms);
    session_log_txn(s, "timeout");
    session_close_after(s, R_DATA_TIMEOUT);
}

/* Makes the spool at the first DATA, empties it for a later one. A spool a
 * plugin's reader still holds (a scan that outlived its transaction) is left
 * to it: the message goes into a new one. */
static bool relay_spool_reset(struct session *s)
{
    if (!session_data_buffers(s))
        return false;
    if (!spool_shared(s->spool)) {
        spool_reset(s->spool);
        return true;
    }
    struct spool *fresh = spool_new((size_t)s->cfg->spool_memory, s->cfg->spool_dir);
    if (!fresh)
        return false;
    log_debug(s->sid, "the last message is still being read by a plugin: a new spool");
    spool_free(s->spool);
    s->spool = fresh;
    return true;
}

static void relay_data_done(struct session *s, const struct hook_verdict *v)
{
    if (session_apply_verdict(s, HOOK_DATA, v)) {
        session_done(s);
        return;
    }
    if (!s->backend || !backend_usable(s->backend)) {
        session_reply(s, R_BACKEND_LOST);
        session_log_txn(s, "451");
        relay_drop_backend(s);
        session_txn_reset(s);
        session_done(s);
        return;
    }
    /* DATA went ahead with the last RCPT: the spool is ready and the
     * backend holds it (a reset could replace it under the backend). */
    bool early = s->txn.stream != STREAM_OFF;
    if (!early && !relay_spool_reset(s)) {
        log_err(s->sid, "out of memory for the message spool");
        session_reply(s, R_INTERNAL);
        session_log_txn(s, "451");
        session_txn_reset(s);
        session_done(s);
        return;
    }
    session_reply(s, R_DATA_GO);
    io_expect_bulk(s->io);
    data_decoder_init(&s->decoder, s->cfg->bare_newline);
    s->spool_failed = false; /* a failed write refused its own message only */
    if (!s->data_timer)
        s->data_timer = event_new(s->loop->base, -1, 0, relay_data_timeout, s);
    if (s->data_timer) {
        int64_t ms = s->cfg->data_total_timeout_ms;
        struct timeval tv = ms_to_timeval(ms);
        event_add(s->data_timer, &tv);
    }
    if (early) {
        /* Answered already (a refusal kept for the end of data), or on. */
        if (s->txn.stream == STREAM_EARLY)
            s->txn.stream = STREAM_ON;
    } else if (relay_may_stream(s)) {
        /* DATA goes now; the 354 the client already has was ours. */
        s->txn.stream = STREAM_ON;
        backend_stream_begin(s->backend, s->spool, relay_stream_reply, s);
    } else if (s->backend) {
        backend_keepalive(s->backend, true);
    }
    s->phase = PH_DATA;
    session_done(s);
}

void session_data_start(struct session *s)
{
    hooks_run(s, HOOK_DATA, relay_data_done);
}

void session_data_refused(struct session *s)
{
    /* Still unanswered, or answered 354: the backend may be waiting for a
     * message, and only closing ends that without one (no dot). A refusal
     * it gave left it in command mode. */
    if (s->txn.stream == STREAM_EARLY && s->backend) {
        log_info(s->sid, "backend %s: closed, DATA went ahead but no recipient was accepted",
                 backend_peer_name(s->backend));
        relay_drop_backend(s);
    }
    s->txn.stream = STREAM_OFF;
    free(s->txn.stream_text);
    s->txn.stream_text = NULL;
}

static void relay_message_reply(void *arg, const struct backend_reply *r)
{
    struct session *s = arg;
    if (r->status != BACKEND_REPLY) {
        enum reply_id id = relay_status_reply(r->status);
        log_warn(s->sid, "backend %s during the message: the client gets %d",
                 r->status == BACKEND_INTERNAL ? "unusable (out of memory)" : "lost",
                 reply_code(id));
        session_reply(s, id);
        session_log_txn_code(s, reply_code(id));
        relay_drop_backend(s);
    } else {
        session_relay_reply(s, r);
        session_log_txn_code(s, r->code);
        /* After a 2xx the backend's transaction is over; otherwise RSET it. */
        if (r->code / 100 == 2)
            s->txn.backend_open = false;
    }
    session_txn_reset(s);
    session_done(s);
}

static void relay_eom_done(struct session *s, const struct hook_verdict *v)
{
    if (session_apply_verdict(s, HOOK_EOM, v)) {
        session_log_txn(s, v->kind == VERDICT_REJECT ? "554" : "451");
        session_txn_reset(s);
        session_done(s);
        return;
    }
    if (!s->backend || !backend_usable(s->backend)) {
        relay_message_reply(s, &(struct backend_reply){.status = BACKEND_LOST});
        return;
    }
    struct evbuffer *prefix = evbuffer_new();
    uint64_t offset = 0;
    if (!prefix) {
        /* Without it, header changes plugins asked for would be lost. */
        relay_message_reply(s, &(struct backend_reply){.status = BACKEND_INTERNAL});
        return;
    }
    int rw = message_rewrite(s, prefix, &offset);
    if (rw <= 0) {
        evbuffer_free(prefix);
        prefix = NULL;
    }
    if (rw == -2) {
        /* A field to remove may be past what was parsed: relayed, the
         * client's forged field would go through. */
        log_info(s->sid, "message refused: header fields past the parser's caps, and a "
                         "plugin removes fields");
        session_reply(s, R_HEADER_TOO_BIG);
        session_log_txn_code(s, reply_code(R_HEADER_TOO_BIG));
        session_txn_reset(s);
        session_done(s);
        return;
    }
    if (rw < 0) {
        log_err(s->sid, "cannot build the changed header");
        relay_message_reply(s, &(struct backend_reply){.status = BACKEND_INTERNAL});
        return;
    }
    backend_send_message(s->backend, s->spool, prefix, offset, relay_message_reply, s);
}

/* Why sluice refuses the message (so far) itself, or R_COUNT: the message
 * is clean, and what is spooled may reach the backend. */
static enum reply_id relay_refusal_of(const struct session *s)
{
    /* In both bare-newline modes (so first: the reply does not depend on
     * the mode): a backend that drops NULs would see an end of data in
     * "<CRLF><NUL>.<CRLF>" and commands behind it. */
    if (s->decoder.saw_nul)
        return R_NUL_IN_DATA;
    if (s->decoder.saw_bare_newline && s->cfg->bare_newline == BARE_NEWLINE_REJECT)
        return R_BARE_NEWLINE;
    if (s->decoder.over_limit)
        return R_TOO_BIG;
    if (s->spool_failed)
        return R_INTERNAL;
    return R_COUNT;
}

static enum reply_id relay_refusal(const struct session *s)
{
    enum reply_id id = relay_refusal_of(s);
    if (id == R_NUL_IN_DATA)
        log_info(s->sid, "message refused: it contains NUL bytes");
    return id;
}

/* ---- cut-through ------------------------------------------------------- */

/* The backend answered before the client's end of data (DATA refused, a
 * refusal mid-body, the connection lost): kept whole for that end, where
 * it answers as a reply to the complete message would (never a 2xx: the
 * backend's class checks let none through before the dot). */
static void relay_stream_keep(struct session *s, const struct backend_reply *r)
{
    s->txn.stream = STREAM_ANSWERED;
    s->txn.stream_status = r->status;
    if (r->status != BACKEND_REPLY) {
        log_warn(s->sid, "backend lost while the message streamed");
        return;
    }
    log_info(s->sid, "backend %s answered %d before the end of data",
             backend_peer_name(s->backend), r->code);
    char *copy = malloc(r->len ? r->len : 1);
    if (!copy) {
        log_err(s->sid, "out of memory for the backend's reply (%d)", r->code);
        s->txn.stream_status = BACKEND_INTERNAL;
        return;
    }
    memcpy(copy, r->text, r->len);
    free(s->txn.stream_text);
    s->txn.stream_text = copy;
    s->txn.stream_code = r->code;
    s->txn.stream_len = r->len;
    s->txn.stream_nlines = r->nlines;
}

static void relay_stream_reply(void *arg, const struct backend_reply *r)
{
    struct session *s = arg;
    if (s->txn.stream == STREAM_EARLY && s->txn.rcpt_waiting) {
        /* DATA could not even be queued behind the RCPT (out of memory):
         * nothing went, and that RCPT still waits for its reply, so the
         * connection stays; the client's DATA takes the usual way. */
        s->txn.stream = STREAM_OFF;
        return;
    }
    if (s->txn.stream == STREAM_ENDED) {
        relay_message_reply(s, r);
        return;
    }
    relay_stream_keep(s, r);
    if (s->backend && (r->status != BACKEND_REPLY || !backend_usable(s->backend)))
        relay_drop_backend(s);
}

/* The message turned bad: the backend connection closes without the end of
 * data, so the backend discards what it got; the client gets sluice's
 * refusal at its end of data, as with a stored message. */
static void relay_stream_abort(struct session *s)
{
    log_info(s->sid, "message refused while streaming: backend closed without the end of data");
    relay_drop_backend(s);
    s->txn.stream = STREAM_ABORTED;
}

/* After a chunk was decoded and spooled: forward it only while the message
 * is clean (the chunk that carries a bad byte never leaves). */
static void relay_stream_forward(struct session *s)
{
    if (relay_refusal_of(s) != R_COUNT)
        relay_stream_abort(s);
    else if (s->backend)
        backend_stream_more(s->backend);
}

/* The client's end of data, the message clean: the backend's early answer,
 * or the rest and the dot. */
static void relay_stream_finish(struct session *s)
{
    if (s->txn.stream == STREAM_ANSWERED) {
        struct backend_reply r = {
            .status = s->txn.stream_status,
            .code = s->txn.stream_code,
            .text = s->txn.stream_text,
            .len = s->txn.stream_len,
            .nlines = s->txn.stream_nlines,
        };
        relay_message_reply(s, &r);
        return;
    }
    if (!s->backend || !backend_usable(s->backend)) {
        relay_message_reply(s, &(struct backend_reply){.status = BACKEND_LOST});
        return;
    }
    s->txn.stream = STREAM_ENDED;
    backend_stream_end(s->backend);
}

/* The message is complete: refuse it locally or pass it on. */
static void relay_end_of_data(struct session *s)
{
    if (s->data_timer)
        event_del(s->data_timer);
    if (s->backend)
        backend_keepalive(s->backend, false);
    s->phase = PH_COMMANDS;
    s->txn.size = data_decoder_size(&s->decoder);
    enum reply_id refuse = relay_refusal(s);
    if (refuse != R_COUNT) {
        if (s->txn.stream == STREAM_ON)
            relay_stream_abort(s);
        session_reply(s, refuse);
        session_log_txn_code(s, reply_code(refuse));
        session_txn_reset(s);
        session_done(s);
        return;
    }
    if (s->txn.stream != STREAM_OFF) {
        relay_stream_finish(s);
        return;
    }
    /* The header is parsed for plugins only (sluice_header_*, header
     * changes at eom): without an eom hook nobody reads it. */
    if (hooks_wanted(s, HOOK_EOM) && !message_info_parse(s)) {
        log_err(s->sid, "out of memory parsing the message header");
        session_reply(s, R_INTERNAL);
        session_log_txn(s, "451");
        session_txn_reset(s);
        session_done(s);
        return;
    }
    hooks_run(s, HOOK_EOM, relay_eom_done);
}

static void relay_spool_failed(struct session *s)
{
    if (!s->spool_failed)
        log_err(s->sid, "spool write failed: %s", strerror(errno));
    s->spool_failed = true;
}

/* A run of at least this many bytes that the decoder passes unchanged from
 * the start of an input chunk goes into the spool by reference instead of
 * copied: the whole chunk, or the part of the last one before the end of
 * data. Shorter ones are copied, so a spooled chain is never mostly empty
 * room (a read's chain holds at most twice IO_READ_MAX). */
#define RELAY_MOVE_MIN (32 * 1024)

/* Where the decoder's output of one input chunk goes. */
struct relay_sink {
    struct session *s;
    const char *chunk;
    size_t chunk_len;
    size_t held; /* the chunk's first bytes came out unchanged, not yet spooled */
};

static int relay_spool_write(struct session *s, const char *p, size_t n)
{
    if (spool_write(s->spool, p, n) == 0)
        return 0;
    relay_spool_failed(s);
    return -1;
}

/* The decoder's output goes straight into the spool: the input is copied
 * once, in whole runs, and a large chunk that needs no change is not copied
 * at all (moved after the decoder is done with it, see relay_sink_finish).
 * A failed write spoils the message (451 at its end); the rest is still read
 * up to the terminator. */
static int relay_spool_sink(void *arg, const char *p, size_t n)
{
    struct relay_sink *k = arg;
    if (k->held) { /* more output after it: keep the order, copy it now */
        size_t held = k->held;
        k->held = 0;
        if (relay_spool_write(k->s, k->chunk, held) != 0)
            return -1;
    }
    if (p == k->chunk && n >= RELAY_MOVE_MIN) {
        k->held = n;
        return 0;
    }
    return relay_spool_write(k->s, p, n);
}

static int relay_move_input(void *arg, size_t n, struct evbuffer *dst)
{
    return io_input_move(arg, n, dst);
}

static int relay_hand_over_input(void *arg, size_t n, struct evbuffer *dst)
{
    return io_input_hand_over(arg, n, dst);
}

/* The decoder consumed used bytes of the chunk: they leave the input. The
 * run it passed unchanged goes into the spool without a copy where it can:
 * the whole chunk moved, or, when the chunk ends the input and the message
 * (the end of data after the run), the input handed over. */
static void relay_sink_finish(struct relay_sink *k, size_t used)
{
    struct session *s = k->s;
    spool_move_fn move = NULL;
    if (k->held == k->chunk_len && used == k->chunk_len)
        move = relay_move_input;
    else if (k->held && used == k->chunk_len && io_input_len(s->io) == used &&
             io_input_all_one_chunk(s->io))
        move = relay_hand_over_input;
    if (!move) {
        if (k->held)
            relay_spool_write(s, k->chunk, k->held);
        io_input_drain(s->io, used);
        return;
    }
    /* On a failure the caller drains what the move left in the input. */
    if (spool_take(s->spool, k->held, move, s->io) != 0)
        relay_spool_failed(s);
}

/* Feeds buffered client bytes through the decoder into the spool. Returns
 * true when the end of data was reached (the session is then busy with the
 * message), false when more input is needed. */
bool session_data_input(struct session *s)
{
    uint64_t limit = (uint64_t)s->cfg->max_message_size;
    bool done = false;
    struct relay_sink k = {s, NULL, 0, 0};
    while (!done && io_input_chunk(s->io, &k.chunk, &k.chunk_len)) {
        k.held = 0;
        size_t before = io_input_len(s->io);
        size_t used =
            data_decode_to(&s->decoder, k.chunk, k.chunk_len, relay_spool_sink, &k, limit);
        relay_sink_finish(&k, used);
        /* After a failed move the input must still lose exactly used bytes. */
        size_t gone = before - io_input_len(s->io);
        if (gone < used)
            io_input_drain(s->io, used - gone);
        done = s->decoder.done;
    }
    /* Once the message is in the file, what this input added is written
     * now: a session holds at most one read's worth beyond spool_memory, and
     * a failed write is known before the end of data is answered. */
    if (spool_flush(s->spool) != 0)
        relay_spool_failed(s);
    if (!done) {
        if (s->txn.stream == STREAM_ON)
            relay_stream_forward(s);
        return false;
    }
    session_busy(s);
    relay_end_of_data(s);
    return true;
}
