/* dnsbl: DNS blocklists and allowlists for the client address, its HELO
 * name and its sender's domain, weighted against a threshold (postscreen's
 * model). Lookups start at connect and run while the session goes on; a
 * hook waits only when it needs the answers: when rejecting there
 * (defer = false), when score zones look its subject up (the entries after
 * this one read the score), and the first RCPT otherwise, which gets the
 * deferred rejection so the client's log shows the recipient. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dnsbl.h"

#define POSTMASTER "postmaster"

static struct dnsbl_sess *sess_of(sluice_session *s)
{
    return sluice_session_data(s);
}

static void sess_free(void *p)
{
    struct dnsbl_sess *ss = p;
    dnsbl_batches_free(ss);
    free(ss->helo);
    free(ss->sender_domain);
    free(ss);
}

/* ---- verdicts ------------------------------------------------------------------ */

static bool is_postmaster(const char *rcpt, size_t len)
{
    size_t n = strlen(POSTMASTER);
    return rcpt && len >= n && strncasecmp(rcpt, POSTMASTER, n) == 0 &&
           (len == n || rcpt[n] == '@');
}

/* The reply text of the phase whose reject-mode listing decided. */
static void reply_text(const struct dnsbl_sess *ss, enum dnsbl_phase_id ph, char *out,
                       size_t outlen)
{
    static const char *const what[DNSBL_PH_COUNT] = {"client", "helo name", "sender domain"};
    const char *subject = ph == DNSBL_PH_CONNECT ? ss->client
                          : ph == DNSBL_PH_HELO  ? ss->helo
                                                 : ss->sender_domain;
    if (!subject)
        subject = "?";
    const struct dnsbl_result *r = &ss->result[ph];
    dnsbl_reply_text(out, outlen, what[ph], subject, r->culprit ? r->culprit->name : "?",
                     r->reason);
}

static enum dnsbl_phase_id culprit_phase(const struct dnsbl_sess *ss, int last)
{
    for (int ph = 0; ph <= last; ph++)
        if (ss->result[ph].culprit)
            return (enum dnsbl_phase_id)ph;
    return DNSBL_PH_CONNECT;
}

static double reject_sum(const struct dnsbl_sess *ss, int last)
{
    double sum = 0;
    for (int ph = 0; ph <= last; ph++)
        sum += ss->result[ph].reject_sum;
    return sum;
}

static enum sluice_verdict reject_now(sluice_session *s, struct dnsbl_sess *ss, int last,
                                      int code)
{
    char text[256];
    reply_text(ss, culprit_phase(ss, last), text, sizeof text);
    sluice_counter_add(ss->conf->rejects, 1);
    sluice_log(s, SLUICE_LOG_INFO, "reject: %s", text);
    sluice_reply(s, code, "5.7.1", "%s", text);
    return SLUICE_REJECT;
}

/* The connection's listings (client and HELO) go into the deferred mark,
 * once both are known. */
static void mark_session(sluice_session *s, struct dnsbl_sess *ss)
{
    if (ss->mark_set || !dnsbl_phase_done(ss, DNSBL_PH_CONNECT) ||
        !dnsbl_phase_done(ss, DNSBL_PH_HELO) ||
        reject_sum(ss, DNSBL_PH_HELO) < ss->conf->threshold)
        return;
    char text[256];
    reply_text(ss, culprit_phase(ss, DNSBL_PH_HELO), text, sizeof text);
    ss->mark_set = true;
    sluice_counter_add(ss->conf->rejects, 1);
    sluice_log(s, SLUICE_LOG_INFO, "deferred rejection: %s", text);
    sluice_defer_reject(s, SLUICE_HOOK_RCPT, 550, "5.7.1", "%s", text);
}

static enum sluice_verdict allow_verdict(struct dnsbl_sess *ss, enum sluice_hook hook)
{
    /* At rcpt an accept clears the deferred mark for that recipient only. */
    if (hook == SLUICE_HOOK_RCPT)
        return ss->session_accept_given ? SLUICE_CONTINUE : SLUICE_ACCEPT;
    if (ss->session_accept_given)
        return SLUICE_CONTINUE;
    ss->session_accept_given = true;
    return SLUICE_ACCEPT;
}

/* The targets whose answers the hook must have before it goes on: reject
 * zones' when refusing there (defer = false), and score zones' always, since
 * the entries after this one (the tarpit) read the score at that hook. */
static unsigned wait_targets(const struct dnsbl_conf *c)
{
    return (c->defer ? 0 : c->reject_targets) | c->score_targets;
}

static bool needs_wait(const struct dnsbl_sess *ss, enum sluice_hook hook)
{
    unsigned t = wait_targets(ss->conf);
    bool connect = dnsbl_phase_done(ss, DNSBL_PH_CONNECT);
    bool helo = dnsbl_phase_done(ss, DNSBL_PH_HELO);
    bool sender = dnsbl_phase_done(ss, DNSBL_PH_SENDER);
    switch (hook) {
    case SLUICE_HOOK_CONNECT:
        return (t & DNSBL_T_IP) && !connect;
    case SLUICE_HOOK_HELO:
        return (t & DNSBL_T_HELO) && !(connect && helo);
    case SLUICE_HOOK_MAIL:
        return (t & DNSBL_T_SENDER) && !(connect && helo && sender);
    default:
        return !(connect && helo && sender);
    }
}

/* Without deferral each hook refuses as soon as what is known so far adds
 * up; the phase of the hook is known because it waited. */
static enum sluice_verdict decide_now(sluice_session *s, struct dnsbl_sess *ss,
                                      enum sluice_hook hook)
{
    int last = hook == SLUICE_HOOK_CONNECT ? DNSBL_PH_CONNECT
               : hook == SLUICE_HOOK_HELO  ? DNSBL_PH_HELO
                                           : DNSBL_PH_SENDER;
    if (reject_sum(ss, last) >= ss->conf->threshold)
        return reject_now(s, ss, last, hook == SLUICE_HOOK_CONNECT ? 554 : 550);
    return SLUICE_CONTINUE;
}

/* With deferral: the connection's mark, and the sender's listings refuse
 * this transaction's recipients (postmaster@ excepted) themselves, as the
 * host's mark lasts the whole session. */
static enum sluice_verdict decide_deferred(sluice_session *s, struct dnsbl_sess *ss,
                                           enum sluice_hook hook)
{
    mark_session(s, ss);
    if (hook != SLUICE_HOOK_RCPT || ss->mark_set ||
        reject_sum(ss, DNSBL_PH_SENDER) < ss->conf->threshold)
        return SLUICE_CONTINUE;
    size_t len;
    const char *rcpt = sluice_rcpt(s, &len);
    if (is_postmaster(rcpt, len))
        return SLUICE_CONTINUE;
    return reject_now(s, ss, DNSBL_PH_SENDER, 550);
}

static enum sluice_verdict decide(sluice_session *s, struct dnsbl_sess *ss, enum sluice_hook hook)
{
    if (needs_wait(ss, hook))
        return SLUICE_PENDING;
    if (ss->allowlisted)
        return allow_verdict(ss, hook);
    if (ss->conf->defer)
        return decide_deferred(s, ss, hook);
    return decide_now(s, ss, hook);
}

/* ---- a phase's answers are in ------------------------------------------------------ */

static void publish(sluice_session *s, struct dnsbl_sess *ss, enum dnsbl_phase_id ph)
{
    static const char *const listed_key[DNSBL_PH_COUNT] = {
        "dnsbl.listed", "dnsbl.helo_listed", "dnsbl.sender_listed"};
    const struct dnsbl_result *r = &ss->result[ph];
    enum sluice_scope scope = ph == DNSBL_PH_SENDER ? SLUICE_TRANSACTION : SLUICE_CONNECTION;
    if (r->allow) {
        ss->allowlisted = true;
        sluice_note_set_int(s, SLUICE_CONNECTION, "dnsbl.allowlisted", 1);
    }
    if (r->score_sum != 0)
        sluice_score_add(s, r->score_sum);
    if (!r->listed)
        return;
    sluice_note_set_string(s, scope, listed_key[ph], r->listed);
    double total = 0;
    sluice_note_get_double(s, SLUICE_CONNECTION, "dnsbl.score", &total);
    sluice_note_set_double(s, SLUICE_CONNECTION, "dnsbl.score", total + r->score_sum);
    sluice_log(s, SLUICE_LOG_INFO, "%s score=%g reject=%g listed=%s",
               ph == DNSBL_PH_CONNECT ? "client" : ph == DNSBL_PH_HELO ? "helo" : "sender",
               r->score_sum, r->reject_sum, r->listed);
}

void dnsbl_phase_finished(sluice_session *s, struct dnsbl_sess *ss, enum dnsbl_phase_id ph)
{
    publish(s, ss, ph);
    if (ss->waiting_hook < 0)
        return;
    enum sluice_verdict v = decide(s, ss, (enum sluice_hook)ss->waiting_hook);
    if (v == SLUICE_PENDING)
        return;
    ss->waiting_hook = -1;
    sluice_resume(s, v);
}

/* ---- hooks ----------------------------------------------------------------------- */

static enum sluice_verdict wait_or_decide(sluice_session *s, struct dnsbl_sess *ss,
                                          enum sluice_hook hook)
{
    enum sluice_verdict v = decide(s, ss, hook);
    if (v == SLUICE_PENDING)
        ss->waiting_hook = hook;
    return v;
}

static unsigned family_target(int family)
{
    return family == 4 ? DNSBL_T_IP4 : DNSBL_T_IP6;
}

static enum sluice_verdict dnsbl_connect(sluice_session *s, void *entry_state, void *thread_state)
{
    struct dnsbl_conf *c = entry_state;
    struct dnsbl_sess *ss = calloc(1, sizeof *ss);
    if (!ss)
        return SLUICE_CONTINUE; /* fail open */
    ss->conf = c;
    ss->cache = ((struct dnsbl_thread *)thread_state)->cache;
    ss->waiting_hook = -1;
    snprintf(ss->client, sizeof ss->client, "%s", sluice_client_ip(s));
    sluice_session_set_data(s, ss, sess_free);
    const struct sockaddr *sa = sluice_client_addr(s);
    if (sluice_client_trusted(s))
        return SLUICE_CONTINUE;
    if (sluice_netlist_match(c->allow, sa)) {
        ss->allowlisted = true;
        sluice_note_set_int(s, SLUICE_CONNECTION, "dnsbl.allowlisted", 1);
        return allow_verdict(ss, SLUICE_HOOK_CONNECT);
    }
    char rev[DNSBL_NAME_MAX];
    int family = dnsbl_reverse_addr(sa, rev, sizeof rev);
    if (family < 0)
        return SLUICE_CONTINUE;
    ss->active = true;
    if (dnsbl_phase_start(s, ss, DNSBL_PH_CONNECT, family_target(family), rev) < 0)
        return SLUICE_CONTINUE;
    return wait_or_decide(s, ss, SLUICE_HOOK_CONNECT);
}

/* A hook still marked waiting was decided by the entry's pending timeout,
 * and the host cancelled every outstanding lookup of the entry: what is
 * unanswered will never be, so it counts as nothing (fail open). */
static void recover_from_timeout(sluice_session *s, struct dnsbl_sess *ss)
{
    if (ss->waiting_hook < 0)
        return;
    sluice_log(s, SLUICE_LOG_WARN, "the entry's timeout cut the wait for the lists; "
               "unanswered lookups are ignored (keep query_timeout below the entry's timeout)");
    ss->waiting_hook = -1;
    for (int ph = 0; ph < DNSBL_PH_COUNT; ph++)
        dnsbl_phase_abandon(ss, (enum dnsbl_phase_id)ph);
}

/* Hooks after connect see no state when connect skipped it (trusted). */
static struct dnsbl_sess *active_sess(sluice_session *s)
{
    struct dnsbl_sess *ss = sess_of(s);
    if (!ss || !(ss->active || ss->allowlisted))
        return NULL;
    recover_from_timeout(s, ss);
    return ss;
}

static bool has_targets(const struct dnsbl_conf *c, unsigned t)
{
    for (size_t i = 0; i < c->nzones; i++)
        if (c->zones[i].targets & t)
            return true;
    return false;
}

/* The name a phase looks up, kept for its reply text; allocated only for a
 * session that gets that far. False: out of memory, not looked up (fail
 * open, as a failed query is). */
static bool keep_name(char **slot, const char *name)
{
    free(*slot);
    *slot = strdup(name);
    return *slot != NULL;
}

static enum sluice_verdict dnsbl_helo(sluice_session *s, void *entry_state, void *thread_state)
{
    struct dnsbl_sess *ss = active_sess(s);
    if (!ss)
        return SLUICE_CONTINUE;
    const char *helo = sluice_helo(s);
    dnsbl_phase_reset(ss, DNSBL_PH_HELO);
    char name[DNSBL_NAME_MAX];
    if (!ss->allowlisted && helo && has_targets(ss->conf, DNSBL_T_HELO) &&
        dnsbl_domain_normalize(helo, strlen(helo), name, sizeof name) &&
        keep_name(&ss->helo, name))
        dnsbl_phase_start(s, ss, DNSBL_PH_HELO, DNSBL_T_HELO, ss->helo);
    return wait_or_decide(s, ss, SLUICE_HOOK_HELO);
}

static enum sluice_verdict dnsbl_mail(sluice_session *s, void *entry_state, void *thread_state)
{
    struct dnsbl_sess *ss = active_sess(s);
    if (!ss)
        return SLUICE_CONTINUE;
    size_t len;
    const char *sender = sluice_sender(s, &len);
    dnsbl_phase_reset(ss, DNSBL_PH_SENDER); /* the last transaction's listings */
    char name[DNSBL_NAME_MAX];
    if (!ss->allowlisted && sender && has_targets(ss->conf, DNSBL_T_SENDER) &&
        dnsbl_sender_domain(sender, len, name, sizeof name) &&
        keep_name(&ss->sender_domain, name))
        dnsbl_phase_start(s, ss, DNSBL_PH_SENDER, DNSBL_T_SENDER, ss->sender_domain);
    return wait_or_decide(s, ss, SLUICE_HOOK_MAIL);
}

static enum sluice_verdict dnsbl_rcpt(sluice_session *s, void *entry_state, void *thread_state)
{
    struct dnsbl_sess *ss = active_sess(s);
    return ss ? wait_or_decide(s, ss, SLUICE_HOOK_RCPT) : SLUICE_CONTINUE;
}

/* ---- lifecycle --------------------------------------------------------------------- */

static int dnsbl_init(sluice_entry *entry, void **entry_state, char *err, size_t errlen)
{
    struct dnsbl_conf *c;
    if (dnsbl_conf_load(entry, &c, err, errlen) < 0)
        return -1;
    *entry_state = c;
    return 0;
}

static void dnsbl_fini(sluice_entry *entry, void *entry_state)
{
    dnsbl_conf_free(entry_state);
}

static int dnsbl_thread_init(sluice_entry *entry, void *entry_state, void **thread_state)
{
    struct dnsbl_conf *c = entry_state;
    struct dnsbl_thread *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->cache = dnsbl_cache_new((size_t)c->cache_size);
    if (!t->cache) {
        free(t);
        return -1;
    }
    t->health = dnsbl_health_start(entry, c);
    *thread_state = t;
    return 0;
}

/* The host cancelled this thread's health check timer and queries first. */
static void dnsbl_thread_fini(sluice_entry *entry, void *entry_state, void *thread_state)
{
    struct dnsbl_thread *t = thread_state;
    if (!t)
        return;
    dnsbl_health_free(t->health);
    dnsbl_cache_free(t->cache);
    free(t);
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "dnsbl",
    .version = "1.0",
    .init = dnsbl_init,
    .fini = dnsbl_fini,
    .thread_init = dnsbl_thread_init,
    .thread_fini = dnsbl_thread_fini,
    .hooks =
        {
            [SLUICE_HOOK_CONNECT] = dnsbl_connect,
            [SLUICE_HOOK_HELO] = dnsbl_helo,
            [SLUICE_HOOK_MAIL] = dnsbl_mail,
            [SLUICE_HOOK_RCPT] = dnsbl_rcpt,
        },
};
