/* The SMTP commands, each checked, passed through its hook, then carried
 * out (OpenSMTPD's check / filter / proceed shape). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/buffer.h>

#include "config.h"
#include "host_metrics.h"
#include "log.h"
#include "netaddr.h"
#include "pool.h"
#include "relay_control.h"
#include "route.h"
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
    };
    size_t n = reply_ehlo(&offer, out, sizeof out);
    if (n == 0) {
        session_reply(s, R_INTERNAL);
        return;
    }
    session_write(s, out, n);
}

static void cmd_helo_done(struct session *s, const struct hook_verdict *v)
{
    if (session_apply_verdict(s, HOOK_HELO, v)) {
        free(s->helo);
        s->helo = NULL;
    } else {
        cmd_ehlo_reply(s);
    }
    session_done(s);
}

static void cmd_helo(struct session *s, const struct smtp_cmd *c, bool esmtp)
{
    if (!smtp_helo_valid(c->arg, c->arg_len)) {
        session_error(s, R_SYNTAX_HELO);
        return;
    }
    /* EHLO in the middle of a transaction resets it (RFC 5321 4.1.4). */
    if (s->txn.active)
        session_txn_reset(s);
    free(s->helo);
    s->helo = strndup(c->arg, c->arg_len);
    if (!s->helo) {
        log_err(s->sid, "out of memory at HELO");
        session_reply(s, R_INTERNAL);
        return;
    }
    s->esmtp = esmtp;
    session_busy(s);
    hooks_run(s, HOOK_HELO, cmd_helo_done);
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

static void cmd_mail_done(struct session *s, const struct hook_verdict *v)
{
    if (session_apply_verdict(s, HOOK_MAIL, v)) {
        free(s->txn.from);
        s->txn.from = NULL;
        s->txn.active = false;
    } else {
        session_reply(s, R_MAIL_OK);
    }
    session_done(s);
}

static void cmd_mail(struct session *s, const struct smtp_cmd *c)
{
    if (!s->helo) {
        session_error(s, R_NEED_HELO);
        return;
    }
    if (s->txn.active) {
        session_error(s, R_NESTED_MAIL);
        return;
    }
    bool utf8 = smtp_path_has_smtputf8(c->arg, c->arg_len);
    struct smtp_path path;
    enum smtp_path_status ps = smtp_path_parse(c->arg, c->arg_len, false, utf8, &path);
    if (ps != SMTP_PATH_OK) {
        session_error(s, cmd_path_error(ps));
        return;
    }
    struct mail_params mp;
    enum smtp_param_status pst = smtp_mail_params(&path, &mp);
    if (pst != SMTP_PARAM_OK) {
        session_error(s, cmd_param_error(pst));
        return;
    }
    if (mp.smtputf8 && !cmd_all_pools_smtputf8(s->cfg)) {
        session_error(s, R_PARAM_UNSUPPORTED);
        return;
    }
    if (mp.size > s->cfg->max_message_size) {
        session_reply(s, R_TOO_BIG);
        return;
    }
    session_txn_reset(s);
    s->txn.from = strndup(path.addr, path.addr_len);
    if (!s->txn.from) {
        log_err(s->sid, "out of memory at MAIL");
        session_reply(s, R_INTERNAL);
        return;
    }
    s->txn.from_len = path.addr_len;
    s->txn.mp = mp;
    s->txn.active = true;
    gettimeofday(&s->txn.start, NULL);
    session_busy(s);
    hooks_run(s, HOOK_MAIL, cmd_mail_done);
}

/* ---- RCPT --------------------------------------------------------------- */

static bool cmd_trusted(const struct session *s)
{
    return netlist_match(s->cfg->relay_networks, (const struct sockaddr *)&s->peer);
}

static void cmd_rcpt_done(struct session *s, const struct hook_verdict *v)
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
    session_rcpt_relay(s);
}

static void cmd_rcpt(struct session *s, const struct smtp_cmd *c)
{
    if (!s->txn.active) {
        session_error(s, R_NEED_MAIL);
        return;
    }
    struct smtp_path path;
    enum smtp_path_status ps =
        smtp_path_parse(c->arg, c->arg_len, true, s->txn.mp.smtputf8, &path);
    if (ps != SMTP_PATH_OK) {
        session_error(s, cmd_path_error(ps));
        return;
    }
    enum smtp_param_status pst = smtp_rcpt_params(&path, &s->cur_rcpt_params);
    if (pst != SMTP_PARAM_OK) {
        session_error(s, cmd_param_error(pst));
        return;
    }
    if (s->txn.nrcpts >= (size_t)s->cfg->max_recipients) {
        session_reply(s, R_TOO_MANY_RCPTS);
        return;
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
        return;
    }
    if (s->txn.pool >= 0 && pool != s->txn.pool) {
        session_reply(s, R_ROUTE_CONFLICT);
        return;
    }
    free(s->cur_rcpt_addr);
    s->cur_rcpt_addr = strndup(path.addr, path.addr_len);
    if (!s->cur_rcpt_addr || !session_txn_reserve_rcpt(s)) {
        log_err(s->sid, "out of memory at RCPT");
        session_reply(s, R_INTERNAL);
        return;
    }
    s->cur_rcpt_pool = pool;
    session_busy(s);
    hooks_run(s, HOOK_RCPT, cmd_rcpt_done);
}

/* ---- DATA and the simple ones ------------------------------------------- */

static void cmd_data(struct session *s, const struct smtp_cmd *c)
{
    if (c->arg_len > 0) {
        session_error(s, R_SYNTAX_NOARGS);
        return;
    }
    if (!s->txn.active) {
        session_error(s, R_NEED_MAIL);
        return;
    }
    if (s->txn.naccepted == 0) {
        session_error(s, R_NO_VALID_RCPT);
        return;
    }
    session_busy(s);
    session_data_start(s);
}

static void cmd_rset(struct session *s, const struct smtp_cmd *c)
{
    if (c->arg_len > 0) {
        session_error(s, R_SYNTAX_NOARGS);
        return;
    }
    if (s->txn.active && s->txn.nrcpts > 0)
        session_log_txn(s, "rset");
    session_txn_reset(s);
    session_reply(s, R_RSET_OK);
}

static void cmd_quit(struct session *s)
{
    if (s->txn.active && s->txn.nrcpts > 0)
        session_log_txn(s, "quit");
    session_close_after(s, R_BYE);
}

void session_command(struct session *s, const char *line, size_t len)
{
    struct smtp_cmd c;
    if (smtp_cmd_parse(line, len, &c) < 0) {
        session_error(s, R_BAD_BYTES);
        return;
    }
    if (s->rejected && c.verb != SMTP_QUIT) {
        session_error(s, R_BAD_SEQUENCE);
        return;
    }
    switch (c.verb) {
    case SMTP_EHLO:
    case SMTP_HELO:
        cmd_helo(s, &c, c.verb == SMTP_EHLO);
        return;
    case SMTP_MAIL:
        cmd_mail(s, &c);
        return;
    case SMTP_RCPT:
        cmd_rcpt(s, &c);
        return;
    case SMTP_DATA:
        cmd_data(s, &c);
        return;
    case SMTP_RSET:
        cmd_rset(s, &c);
        return;
    case SMTP_NOOP:
        session_reply(s, R_NOOP_OK);
        return;
    case SMTP_QUIT:
        cmd_quit(s);
        return;
    case SMTP_HELP:
        session_reply(s, R_HELP);
        return;
    case SMTP_VRFY:
        session_reply(s, R_VRFY);
        return;
    case SMTP_EXPN:
    case SMTP_STARTTLS:
    case SMTP_AUTH:
    case SMTP_BDAT:
    case SMTP_XCLIENT:
        session_error(s, R_NOT_IMPLEMENTED);
        return;
    case SMTP_UNKNOWN:
    default:
        session_error(s, R_UNKNOWN_CMD);
        return;
    }
}
