/* greylist: a recipient from an unknown (client network, sender, recipient)
 * triplet is refused with 451 at first sight; the same triplet retried
 * after min_delay and within retry_window passes, and is then known for
 * lifetime. State lives in the host's key/value store (LMDB or Redis, the
 * plugin does not know which), so it survives restarts and is shared by
 * every instance on one Redis. A failing store never stops mail (fail
 * open, or tempfail when configured). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "greylist.h"

#define COUNTER_TEXT_MAX 24

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- verdicts ------------------------------------------------------------------ */

static enum sluice_verdict store_failed(sluice_session *s, struct greylist_sess *ss,
                                        const char *what)
{
    const struct greylist_conf *c = ss->conf;
    sluice_counter_add(c->store_failures, 1);
    bool open = c->on_store_error == GREYLIST_FAIL_OPEN;
    sluice_log(s, SLUICE_LOG_WARN, "store failure (%s) for %s: %s", what, ss->key,
               open ? "passing (fail open)" : "tempfail");
    if (open)
        return SLUICE_CONTINUE;
    sluice_reply(s, 451, "4.7.1", "Greylisting temporarily unavailable, please try again later");
    return SLUICE_TEMPFAIL;
}

static enum sluice_verdict greylisted(sluice_session *s, struct greylist_sess *ss,
                                      int64_t wait_ms, bool first)
{
    int64_t secs = (wait_ms + 999) / 1000;
    sluice_counter_add(ss->conf->greylisted, 1);
    sluice_log(s, SLUICE_LOG_INFO, "greylisted (%s): %s", first ? "first sight" : "too soon",
               ss->key);
    sluice_reply(s, 451, "4.7.1", "Greylisted, please try again in %" PRId64 " seconds", secs);
    return SLUICE_TEMPFAIL;
}

/* ---- writes ---------------------------------------------------------------------- */

/* A write after the verdict: a failure is logged and counted, nothing more
 * (the triplet is simply seen again next time). */
static void write_done(sluice_session *s, void *arg, enum sluice_kv_status st)
{
    struct greylist_sess *ss = arg;
    if (st == SLUICE_KV_ERROR) {
        sluice_counter_add(ss->conf->store_failures, 1);
        sluice_log(s, SLUICE_LOG_WARN, "store failure (write) for a greylist record");
    }
}

static void counter_done(sluice_session *s, void *arg, enum sluice_kv_status st, int64_t v)
{
    write_done(s, arg, st);
}

static int write_record(sluice_session *s, struct greylist_sess *ss, enum greylist_state state,
                        int64_t first, int64_t now, int64_t ttl_ms, sluice_kv_done_cb cb)
{
    char rec[GREYLIST_RECORD_MAX];
    struct greylist_record r = {state, first, now};
    size_t n = greylist_record_format(&r, rec, sizeof rec);
    return sluice_kv_set(s, ss->key, ss->klen, rec, n, ttl_ms, cb, ss);
}

static void net_key(const struct greylist_sess *ss, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s:net:%s", ss->conf->key_prefix, ss->net);
}

/* A retry that passed: the network earns one more pass towards the
 * auto-allowlist. */
static void count_pass(sluice_session *s, struct greylist_sess *ss)
{
    if (ss->conf->auto_allowlist <= 0)
        return;
    char key[GREYLIST_KEY_MAX];
    net_key(ss, key, sizeof key);
    if (sluice_kv_incr(s, key, strlen(key), 1, ss->conf->times.lifetime_ms, counter_done, ss) < 0)
        write_done(s, ss, SLUICE_KV_ERROR);
}

/* ---- the triplet ------------------------------------------------------------------ */

static void first_written(sluice_session *s, void *arg, enum sluice_kv_status st)
{
    struct greylist_sess *ss = arg;
    if (st == SLUICE_KV_ERROR)
        sluice_resume(s, store_failed(s, ss, "write"));
    else
        sluice_resume(s, greylisted(s, ss, ss->conf->times.min_delay_ms, true));
}

static enum sluice_verdict known(sluice_session *s, struct greylist_sess *ss, const char *why)
{
    sluice_counter_add(ss->conf->passed, 1);
    sluice_log(s, SLUICE_LOG_DEBUG, "pass (%s): %s", why, ss->key);
    return SLUICE_CONTINUE;
}

/* Acts on what the store holds for the triplet; PENDING while the first
 * sight is being written. */
static enum sluice_verdict act(sluice_session *s, struct greylist_sess *ss,
                               const struct greylist_record *r)
{
    const struct greylist_times *t = &ss->conf->times;
    int64_t now = wall_ms(), wait_ms;
    switch (greylist_decide(r, now, t, &wait_ms)) {
    case GREYLIST_NEW:
        if (write_record(s, ss, GREYLIST_PENDING, now, now, t->retry_window_ms, first_written) < 0)
            return store_failed(s, ss, "write");
        return SLUICE_PENDING;
    case GREYLIST_TOO_SOON:
        return greylisted(s, ss, wait_ms, false);
    case GREYLIST_PASS:
        sluice_log(s, SLUICE_LOG_INFO, "retry after %" PRId64 " s passes: %s",
                   (now - r->first_ms) / 1000, ss->key);
        if (write_record(s, ss, GREYLIST_ALLOWED, r->first_ms, now, t->lifetime_ms, write_done) < 0)
            write_done(s, ss, SLUICE_KV_ERROR);
        count_pass(s, ss);
        return known(s, ss, "retried");
    case GREYLIST_REFRESH:
        if (!greylist_gate_take(&ss->conf->gate, ss->key, ss->klen, now,
                                t->refresh_ms < GREYLIST_GATE_HOLD_MS ? t->refresh_ms
                                                                      : GREYLIST_GATE_HOLD_MS))
            return known(s, ss, "known, being refreshed");
        if (write_record(s, ss, GREYLIST_ALLOWED, r->first_ms, now, t->lifetime_ms, write_done) < 0)
            write_done(s, ss, SLUICE_KV_ERROR);
        return known(s, ss, "known, refreshed");
    case GREYLIST_KNOWN:
        break;
    }
    return known(s, ss, "known");
}

static void triplet_found(sluice_session *s, void *arg, enum sluice_kv_status st,
                          const void *value, size_t len)
{
    struct greylist_sess *ss = arg;
    if (st == SLUICE_KV_ERROR) {
        sluice_resume(s, store_failed(s, ss, "read"));
        return;
    }
    struct greylist_record r;
    bool have = st == SLUICE_KV_OK && greylist_record_parse(value, len, &r);
    if (st == SLUICE_KV_OK && !have)
        sluice_log(s, SLUICE_LOG_WARN, "unreadable record for %s: treated as first sight",
                   ss->key);
    enum sluice_verdict v = act(s, ss, have ? &r : NULL);
    if (v != SLUICE_PENDING)
        sluice_resume(s, v);
}

static enum sluice_verdict lookup_triplet(sluice_session *s, struct greylist_sess *ss)
{
    sluice_counter_add(ss->conf->seen, 1);
    if (sluice_kv_get(s, ss->key, ss->klen, triplet_found, ss) < 0)
        return store_failed(s, ss, "read");
    return SLUICE_PENDING;
}

/* ---- the auto-allowlist ---------------------------------------------------------- */

static void net_found(sluice_session *s, void *arg, enum sluice_kv_status st, const void *value,
                      size_t len)
{
    struct greylist_sess *ss = arg;
    if (st == SLUICE_KV_ERROR) {
        sluice_resume(s, store_failed(s, ss, "read"));
        return;
    }
    char text[COUNTER_TEXT_MAX] = "";
    if (st == SLUICE_KV_OK && len < sizeof text)
        memcpy(text, value, len), text[len] = '\0';
    ss->net_status = atoll(text) >= ss->conf->auto_allowlist ? GREYLIST_NET_ALLOWED
                                                             : GREYLIST_NET_GREY;
    if (ss->net_status == GREYLIST_NET_ALLOWED) {
        sluice_counter_add(ss->conf->auto_allowed, 1);
        sluice_log(s, SLUICE_LOG_INFO, "network %s is auto-allowlisted", ss->net);
        sluice_resume(s, SLUICE_CONTINUE);
        return;
    }
    enum sluice_verdict v = lookup_triplet(s, ss);
    if (v != SLUICE_PENDING)
        sluice_resume(s, v);
}

static enum sluice_verdict check_network(sluice_session *s, struct greylist_sess *ss)
{
    if (ss->net_status == GREYLIST_NET_ALLOWED) {
        sluice_counter_add(ss->conf->auto_allowed, 1);
        return SLUICE_CONTINUE;
    }
    if (ss->conf->auto_allowlist <= 0 || ss->net_status == GREYLIST_NET_GREY)
        return lookup_triplet(s, ss);
    char key[GREYLIST_KEY_MAX];
    net_key(ss, key, sizeof key);
    if (sluice_kv_get(s, key, strlen(key), net_found, ss) < 0)
        return store_failed(s, ss, "read");
    return SLUICE_PENDING;
}

/* ---- what is never greylisted ------------------------------------------------------ */

static bool matches_any(char *const *patterns, size_t n, const char *address)
{
    for (size_t i = 0; i < n; i++)
        if (greylist_pattern_matches(patterns[i], address))
            return true;
    return false;
}

static bool has_note(const sluice_session *s, const char *key)
{
    static const enum sluice_scope scopes[] = {SLUICE_CONNECTION, SLUICE_TRANSACTION};
    for (size_t i = 0; i < 2; i++) {
        int64_t iv;
        double dv;
        if (sluice_note_get_int(s, scopes[i], key, &iv) ||
            sluice_note_get_double(s, scopes[i], key, &dv) ||
            sluice_note_get_string(s, scopes[i], key))
            return true;
    }
    return false;
}

/* Another entry vouched for the session (the dnsbl's allowlist note). */
static const char *vouched(const sluice_session *s, const struct greylist_conf *c)
{
    for (size_t i = 0; i < c->nskip_notes; i++)
        if (has_note(s, c->skip_notes[i]))
            return c->skip_notes[i];
    return NULL;
}

/* ---- hooks ----------------------------------------------------------------------- */

/* Made at the session's first RCPT rather than at connect: an earlier
 * entry's ACCEPT at connect skips this entry's connect hook, and must not
 * switch greylisting off for the whole session. */
static struct greylist_sess *sess_get(sluice_session *s, struct greylist_conf *c)
{
    struct greylist_sess *ss = sluice_session_data(s);
    if (ss)
        return ss;
    ss = calloc(1, sizeof *ss);
    if (!ss)
        return NULL; /* fail open */
    ss->conf = c;
    sluice_session_set_data(s, ss, free);
    const struct sockaddr *sa = sluice_client_addr(s);
    ss->skip = sluice_client_trusted(s) || sluice_netlist_match(c->allow_nets, sa) ||
               !greylist_client_net(sa, c->v4_prefix, c->v6_prefix, ss->net, sizeof ss->net);
    return ss;
}

/* Read at each RCPT, not at MAIL: an earlier entry's ACCEPT at MAIL skips
 * this entry's mail hook, and a stale sender must never key a triplet. */
static void read_sender(sluice_session *s, struct greylist_sess *ss)
{
    size_t len;
    const char *sender = sluice_sender(s, &len);
    ss->null_sender = !sender || len == 0;
    if (ss->null_sender ||
        !greylist_address_normalize(sender, len, ss->conf->strip_tags, ss->sender,
                                    sizeof ss->sender))
        ss->sender[0] = '\0'; /* too long to key: greylisted by recipient, as <> is */
}

static bool build_key(struct greylist_sess *ss)
{
    int n = snprintf(ss->key, sizeof ss->key, "%s:t:%s %s %s", ss->conf->key_prefix, ss->net,
                     ss->null_sender ? "<>" : ss->sender, ss->rcpt);
    ss->klen = n > 0 && (size_t)n < sizeof ss->key ? (size_t)n : 0;
    return ss->klen > 0;
}

static enum sluice_verdict greylist_rcpt(sluice_session *s, void *entry_state, void *thread_state)
{
    struct greylist_sess *ss = sess_get(s, entry_state);
    if (!ss || ss->skip)
        return SLUICE_CONTINUE;
    const struct greylist_conf *c = ss->conf;
    const char *note = vouched(s, c);
    if (note) {
        sluice_log(s, SLUICE_LOG_DEBUG, "not greylisted: note %s", note);
        return SLUICE_CONTINUE;
    }
    read_sender(s, ss);
    size_t len;
    const char *rcpt = sluice_rcpt(s, &len);
    if (!rcpt || !greylist_address_normalize(rcpt, len, false, ss->rcpt, sizeof ss->rcpt))
        return SLUICE_CONTINUE;
    if ((!ss->null_sender && matches_any(c->allow_senders, c->nallow_senders, ss->sender)) ||
        matches_any(c->allow_rcpts, c->nallow_rcpts, ss->rcpt) || !build_key(ss)) {
        sluice_log(s, SLUICE_LOG_DEBUG, "not greylisted: allowlisted sender or recipient");
        return SLUICE_CONTINUE;
    }
    return check_network(s, ss);
}

/* ---- lifecycle --------------------------------------------------------------------- */

static int greylist_init(sluice_entry *entry, void **entry_state, char *err, size_t errlen)
{
    struct greylist_conf *c;
    if (greylist_conf_load(entry, &c, err, errlen) < 0)
        return -1;
    *entry_state = c;
    return 0;
}

static void greylist_fini(sluice_entry *entry, void *entry_state)
{
    greylist_conf_free(entry_state);
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "greylist",
    .version = "1.0",
    .init = greylist_init,
    .fini = greylist_fini,
    .hooks =
        {
            [SLUICE_HOOK_RCPT] = greylist_rcpt,
        },
};
