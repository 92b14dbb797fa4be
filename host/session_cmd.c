/* The SMTP commands: one table row per verb says in which states it is
 * allowed (and the reply where it is not), how it is checked, which hook
 * runs, and how it proceeds (OpenSMTPD's check / filter / proceed shape).
 * Adding a command is adding a row. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/buffer.h>

#include "ascii.h"
#include "config.h"
#include "host_metrics.h"
#include "io.h"
#include "log.h"
#include "netaddr.h"
#include "pool.h"
#include "relay_control.h"
#include "route.h"
#include "tls.h"
#include "session_internal.h"
#include "worker.h"

/* ---- HELO / EHLO -------------------------------------------------------- */

static bool cmd_all_pools_smtputf8(const struct sluice_config *cfg)
{
    for (size_t i = 0; i < cfg->npools; i++)
        if (!cfg->pools[i].smtputf8)
            return false;
    return cfg->npools > 0;
}

static void cmd_ehlo_reply(struct session *s)
{
    const struct sluice_config *cfg = s->cfg;
    char out[1024];
    if (!s->esmtp) {
        session_write(s, out, reply_format(RF_HELO, cfg->hostname, out, sizeof out));
        return;
    }
    struct reply_ehlo_offer offer = {
        .hostname = cfg->hostname,
        .size_max = (long long)cfg->max_message_size,
        .smtputf8 = cmd_all_pools_smtputf8(cfg),
        /* Not again once TLS runs (RFC 3207 4.2). */
        .starttls = s->listen->tls_cert && !io_tls_active(s->io),
    };
    size_t n = reply_ehlo(&offer, out, sizeof out);
    if (n == 0) {
        session_reply(s, R_INTERNAL);
        return;
    }
    session_write(s, out, n);
}

static void cmd_helo_proceed(struct session *s, const struct hook_verdict *v)
{
    if (session_apply_verdict(s, HOOK_HELO, v)) {
        free(s->helo);
        s->helo = NULL;
        s->state = SS_CONNECTED;
    } else {
        s->state = SS_HELO;
        cmd_ehlo_reply(s);
    }
    session_done(s);
}

static bool cmd_helo_check(struct session *s, const struct smtp_cmd *c)
{
    if (!smtp_helo_valid(c->arg, c->arg_len)) {
        session_error(s, R_SYNTAX_HELO);
        return false;
    }
    /* EHLO in the middle of a transaction resets it (RFC 5321 4.1.4). */
    if (s->txn.active)
        session_txn_reset(s);
    free(s->helo);
    s->helo = strndup(c->arg, c->arg_len);
    if (!s->helo) {
        log_err(s->sid, "out of memory at HELO");
        s->state = SS_CONNECTED;
        session_reply(s, R_INTERNAL);
        return false;
    }
    s->esmtp = c->verb == SMTP_EHLO;
    return true;
}

/* ---- MAIL --------------------------------------------------------------- */

static enum reply_id cmd_path_error(enum smtp_path_status st)
{
    switch (st) {
    case SMTP_PATH_BAD_ADDRESS:
        return R_BAD_ADDRESS;
    case SMTP_PATH_TOO_MANY_PARAMS:
        return R_PARAM_UNSUPPORTED;
    default:
        return R_SYNTAX_PATH;
    }
}

static enum reply_id cmd_param_error(enum smtp_param_status st)
{
    return st == SMTP_PARAM_UNSUPPORTED ? R_PARAM_UNSUPPORTED : R_SYNTAX_PATH;
}

static void cmd_mail_proceed(struct session *s, const struct hook_verdict *v)
{
    if (session_apply_verdict(s, HOOK_MAIL, v)) {
        free(s->txn.from);
        s->txn.from = NULL;
        s->txn.active = false;
        s->state = SS_HELO;
    } else {
        session_reply(s, R_MAIL_OK);
    }
    session_done(s);
}

static bool cmd_mail_check(struct session *s, const struct smtp_cmd *c)
{
    /* SMTPUTF8 changes only how 8-bit bytes are judged: a plain ASCII
     * argument (nearly every one) is parsed once, not twice. */
    bool utf8 = !ascii_only(c->arg, c->arg_len) && smtp_path_has_smtputf8(c->arg, c->arg_len);
    struct smtp_path path;
    enum smtp_path_status ps = smtp_path_parse(c->arg, c->arg_len, false, utf8, &path);
    if (ps != SMTP_PATH_OK) {
        session_error(s, cmd_path_error(ps));
        return false;
    }
    struct mail_params mp;
    enum smtp_param_status pst = smtp_mail_params(&path, &mp);
    if (pst != SMTP_PARAM_OK) {
        session_error(s, cmd_param_error(pst));
        return false;
    }
    if (mp.smtputf8 && !cmd_all_pools_smtputf8(s->cfg)) {
        session_error(s, R_PARAM_UNSUPPORTED);
        return false;
    }
    if (mp.size > s->cfg->max_message_size) {
        session_reply(s, R_TOO_BIG);
        return false;
    }
    session_txn_reset(s);
    s->txn.from = strndup(path.addr, path.addr_len);
    if (!s->txn.from) {
        log_err(s->sid, "out of memory at MAIL");
        session_reply(s, R_INTERNAL);
        return false;
    }
    s->txn.from_len = path.addr_len;
    s->txn.mp = mp;
    s->txn.active = true;
    s->state = SS_MAIL;
    gettimeofday(&s->txn.start, NULL);
    return true;
}

/* ---- RCPT --------------------------------------------------------------- */

static bool cmd_trusted(const struct session *s)
{
    return netlist_match(s->cfg->relay_networks, (const struct sockaddr *)&s->peer);
}

static void cmd_rcpt_proceed(struct session *s, const struct hook_verdict *v)
{
    if (session_apply_verdict(s, HOOK_RCPT, v)) {
        if (s->phase != PH_CLOSING) {
            session_txn_add_rcpt(s, v->kind == VERDICT_REJECT ? 550 : 451);
            session_done(s);
        }
        return;
    }
    if (s->txn.pool < 0)
        s->txn.pool = s->cur_rcpt_pool;
    /* With the greeting sent before the reverse lookup ended, a backend of
     * an XCLIENT pool is opened all the same: it waits for the name only
     * where it names the client (backend_name_known). */
    session_rcpt_relay(s);
}

static bool cmd_rcpt_check(struct session *s, const struct smtp_cmd *c)
{
    struct smtp_path path;
    enum smtp_path_status ps =
        smtp_path_parse(c->arg, c->arg_len, true, s->txn.mp.smtputf8, &path);
    if (ps != SMTP_PATH_OK) {
        session_error(s, cmd_path_error(ps));
        return false;
    }
    if (!s->cur_rcpt_params && !(s->cur_rcpt_params = malloc(sizeof *s->cur_rcpt_params))) {
        log_err(s->sid, "out of memory for the recipient's parameters");
        session_reply(s, R_INTERNAL);
        return false;
    }
    enum smtp_param_status pst = smtp_rcpt_params(&path, s->cur_rcpt_params);
    if (pst != SMTP_PARAM_OK) {
        session_error(s, cmd_param_error(pst));
        return false;
    }
    if (s->txn.nrcpts >= (size_t)s->cfg->max_recipients) {
        session_reply(s, R_TOO_MANY_RCPTS);
        return false;
    }
    struct relay_decision relay = relay_control(s->cfg, cmd_trusted(s), &path);
    int pool = relay.pool;
    if (relay.verdict != RELAY_OK) {
        char addr[300];
        log_sanitize(addr, sizeof addr, path.addr, path.addr_len);
        log_info(s->sid, "relay denied: client %s, recipient <%s>: %s", s->client_ip, addr,
                 relay_verdict_reason(relay.verdict));
        host_metrics_relay_denied();
        host_metrics_rcpt(550);
        session_error(s, R_RELAY_DENIED);
        return false;
    }
    if (s->txn.pool >= 0 && pool != s->txn.pool) {
        session_reply(s, R_ROUTE_CONFLICT);
        return false;
    }
    free(s->cur_rcpt_addr);
    s->cur_rcpt_addr = strndup(path.addr, path.addr_len);
    if (!s->cur_rcpt_addr || !session_txn_reserve_rcpt(s)) {
        log_err(s->sid, "out of memory at RCPT");
        session_reply(s, R_INTERNAL);
        return false;
    }
    s->cur_rcpt_pool = pool;
    return true;
}

/* ---- DATA and the simple ones ------------------------------------------- */

static bool cmd_data_check(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    if (s->txn.naccepted == 0) {
        session_data_refused(s);
        session_error(s, R_NO_VALID_RCPT);
        return false;
    }
    return true;
}

static void cmd_data_proceed(struct session *s, const struct hook_verdict *v)
{
    (void)v;
    session_busy(s);
    session_data_start(s); /* the data hook runs there, before the 354 */
}

static void cmd_rset_proceed(struct session *s, const struct hook_verdict *v)
{
    (void)v;
    if (s->txn.active && s->txn.nrcpts > 0)
        session_log_txn(s, "rset");
    session_txn_reset(s);
    session_reply(s, R_RSET_OK);
}

static void cmd_quit_proceed(struct session *s, const struct hook_verdict *v)
{
    (void)v;
    if (s->txn.active && s->txn.nrcpts > 0)
        session_log_txn(s, "quit");
    session_close_after(s, R_BYE);
}

/* ---- STARTTLS (RFC 3207) ------------------------------------------------- */

static bool cmd_starttls_check(struct session *s, const struct smtp_cmd *c)
{
    (void)c;
    if (!s->listen->tls_cert) {
        session_error(s, R_NOT_IMPLEMENTED);
        return false;
    }
    if (io_tls_active(s->io)) {
        session_error(s, R_BAD_SEQUENCE);
        return false;
    }
    return true;
}

static void cmd_starttls_proceed(struct session *s, const struct hook_verdict *v)
{
    (void)v;
    char err[300];
    SSL_CTX *ctx = tls_server_ctx(s->listen, err, sizeof err);
    if (!ctx) {
        log_err(s->sid, "STARTTLS: %s", err);
        session_reply(s, R_TLS_UNAVAILABLE);
        return;
    }
    session_reply(s, R_TLS_GO);
    int rc = io_start_tls_server(s->io, ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    if (rc < 0) {
        log_err(s->sid, "STARTTLS: cannot start TLS: %s", io_error_text(s->io));
        session_close_after(s, R_COUNT); /* the client already heard 220 */
        return;
    }
    /* Everything known before TLS is forgotten: EHLO is needed again. */
    session_txn_reset(s);
    /* A backend session opened in plain text was told the plain-text HELO
     * (XCLIENT HELO, PROTO): the messages sent over TLS get a new one,
     * opened with what the client says after the handshake (RFC 3207 4.2). */
    session_backend_drop(s);
    free(s->helo);
    s->helo = NULL;
    s->esmtp = false;
    s->state = SS_CONNECTED;
    s->armed_wait = WAIT_UNSET; /* the TLS connection's timeouts are set anew */
}

/* Commands answered from the table alone. */
static void cmd_noop_proceed(struct session *s, const struct hook_verdict *v)
{
    (void)v;
    session_reply(s, R_NOOP_OK);
}

static void cmd_help_proceed(struct session *s, const struct hook_verdict *v)
{
    (void)v;
    session_reply(s, R_HELP);
}

static void cmd_vrfy_proceed(struct session *s, const struct hook_verdict *v)
{
    (void)v;
    session_reply(s, R_VRFY);
}

/* ---- the table ---------------------------------------------------------- */

#define OK R_COUNT /* allowed in this state */
#define ANY_BUT_REJECTED {[SS_CONNECTED] = OK, [SS_HELO] = OK, [SS_MAIL] = OK, \
                          [SS_REJECTED] = R_BAD_SEQUENCE}
#define IN_TRANSACTION {[SS_CONNECTED] = R_NEED_MAIL, [SS_HELO] = R_NEED_MAIL, [SS_MAIL] = OK, \
                        [SS_REJECTED] = R_BAD_SEQUENCE}

struct cmd_row {
    enum smtp_verb verb;
    bool no_args;                       /* an argument is a syntax error (checked first) */
    enum reply_id refused[SS_COUNT];    /* per state: OK, or the reply (a counted error) */
    bool (*check)(struct session *s, const struct smtp_cmd *c); /* false: it answered */
    enum hook_point hook;               /* HOOK_COUNT: none */
    void (*proceed)(struct session *s, const struct hook_verdict *v); /* v NULL without hook */
    enum reply_id reply;                /* no proceed: this reply (a counted error when 5xx) */
};

static const struct cmd_row cmd_table[] = {
    {SMTP_HELO, false, ANY_BUT_REJECTED, cmd_helo_check, HOOK_HELO, cmd_helo_proceed, OK},
    {SMTP_EHLO, false, ANY_BUT_REJECTED, cmd_helo_check, HOOK_HELO, cmd_helo_proceed, OK},
    {SMTP_MAIL, false,
     {[SS_CONNECTED] = R_NEED_HELO, [SS_HELO] = OK, [SS_MAIL] = R_NESTED_MAIL,
      [SS_REJECTED] = R_BAD_SEQUENCE},
     cmd_mail_check, HOOK_MAIL, cmd_mail_proceed, OK},
    {SMTP_RCPT, false, IN_TRANSACTION, cmd_rcpt_check, HOOK_RCPT, cmd_rcpt_proceed, OK},
    {SMTP_DATA, true, IN_TRANSACTION, cmd_data_check, HOOK_COUNT, cmd_data_proceed, OK},
    {SMTP_RSET, true, ANY_BUT_REJECTED, NULL, HOOK_COUNT, cmd_rset_proceed, OK},
    {SMTP_NOOP, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, cmd_noop_proceed, OK},
    {SMTP_QUIT, false, {OK, OK, OK, OK}, NULL, HOOK_COUNT, cmd_quit_proceed, OK},
    {SMTP_HELP, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, cmd_help_proceed, OK},
    {SMTP_VRFY, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, cmd_vrfy_proceed, OK},
    {SMTP_EXPN, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, NULL, R_NOT_IMPLEMENTED},
    {SMTP_STARTTLS, true,
     {[SS_CONNECTED] = OK, [SS_HELO] = OK, [SS_MAIL] = R_BAD_SEQUENCE,
      [SS_REJECTED] = R_BAD_SEQUENCE},
     cmd_starttls_check, HOOK_COUNT, cmd_starttls_proceed, OK},
    {SMTP_AUTH, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, NULL, R_NOT_IMPLEMENTED},
    {SMTP_BDAT, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, NULL, R_NOT_IMPLEMENTED},
    {SMTP_XCLIENT, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, NULL, R_NOT_IMPLEMENTED},
    {SMTP_UNKNOWN, false, ANY_BUT_REJECTED, NULL, HOOK_COUNT, NULL, R_UNKNOWN_CMD},
};

static const struct cmd_row *cmd_find(enum smtp_verb verb)
{
    for (size_t i = 0; i < sizeof cmd_table / sizeof cmd_table[0]; i++)
        if (cmd_table[i].verb == verb)
            return &cmd_table[i];
    return &cmd_table[sizeof cmd_table / sizeof cmd_table[0] - 1]; /* SMTP_UNKNOWN */
}

/* The hook of the running command decided. */
static void cmd_hook_done(struct session *s, const struct hook_verdict *v)
{
    const struct cmd_row *row = s->cmd_row;
    s->cmd_row = NULL;
    row->proceed(s, v);
}

void session_command(struct session *s, const char *line, size_t len)
{
    struct smtp_cmd c;
    if (smtp_cmd_parse(line, len, &c) < 0) {
        session_error(s, R_BAD_BYTES);
        return;
    }
    const struct cmd_row *row = cmd_find(c.verb);
    enum reply_id refused = row->refused[s->state];
    /* A stray argument is named before the sequence (but not to a client
     * refused at connect, which only hears that it may QUIT). */
    if (s->state != SS_REJECTED && row->no_args && c.arg_len > 0)
        refused = R_SYNTAX_NOARGS;
    if (refused != OK) {
        session_error(s, refused);
        return;
    }
    if (!row->proceed) {
        session_error(s, row->reply);
        return;
    }
    if (row->check && !row->check(s, &c))
        return;
    if (row->hook == HOOK_COUNT) {
        row->proceed(s, NULL);
        return;
    }
    session_busy(s);
    s->cmd_row = row;
    hooks_run(s, row->hook, cmd_hook_done);
}
