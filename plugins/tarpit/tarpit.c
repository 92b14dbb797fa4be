/*
 * tarpit: slows suspect clients down instead of refusing them outright.
 *
 * - a fixed delay and/or a delay per point of the connection's score, capped,
 *   before the verdict of the hooks the operator lists;
 * - a banner delay with postscreen's pregreet test: a client that talks
 *   before the greeting is rejected, disconnected or scored;
 * - a bandwidth throttle for clients whose score reaches a threshold.
 *
 * A delayed session costs one timer and its buffers: the hook returns
 * SLUICE_PENDING and the timer resumes it. Delays apply only while the
 * session holds no backend connection (a slow client must never hold a
 * pool's slot): sluice_backend_held() tells, and data and eom always have one.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/sluice.h>

#define TARPIT_DEFAULT_MAX_DELAY_MS 30000
#define TARPIT_DEFAULT_EARLY_TALKER_SCORE 5.0
#define TARPIT_NOTE_EARLY_TALKER "tarpit.early_talker"
/* Without an operator's `timeout`, the entry's pending timeout is the
 * longest delay plus this: a delay must end before its timeout does. */
#define TARPIT_TIMEOUT_MARGIN_MS 5000

enum tarpit_early_action { EARLY_IGNORE, EARLY_REJECT, EARLY_DISCONNECT, EARLY_SCORE };

struct tarpit_conf {
    bool hooks[SLUICE_HOOK_COUNT]; /* where delays are made */
    int64_t delay_ms;
    int64_t delay_per_score_ms;
    int64_t max_delay_ms;
    int64_t banner_delay_ms;
    enum tarpit_early_action early_action;
    double early_talker_score;
    int64_t throttle_bps; /* 0: no throttle */
    double throttle_score;
    sluice_counter *delayed;
    sluice_counter *early_talkers;
    sluice_counter *throttled;
};

static const char *const tarpit_settings[] = {
    "delay",        "delay_per_score", "max_delay",      "hooks",          "banner_delay",
    "early_talker", "early_talker_score", "throttle",    "throttle_score", NULL,
};

static const char *const tarpit_hook_names[SLUICE_HOOK_COUNT] = {
    [SLUICE_HOOK_CONNECT] = "connect", [SLUICE_HOOK_HELO] = "helo",
    [SLUICE_HOOK_MAIL] = "mail",       [SLUICE_HOOK_RCPT] = "rcpt",
    [SLUICE_HOOK_DATA] = "data",
};

static const char *const tarpit_early_names[] = {
    [EARLY_IGNORE] = "ignore",
    [EARLY_REJECT] = "reject",
    [EARLY_DISCONNECT] = "disconnect",
    [EARLY_SCORE] = "score",
};

/* ---- settings --------------------------------------------------------------- */

static int tarpit_bad(const sluice_entry *e, const char *path, const char *what, char *err,
                      size_t errlen)
{
    snprintf(err, errlen, "line %d: %s %s", sluice_setting_line(e, path), path, what);
    return -1;
}

static int tarpit_read_duration(const sluice_entry *e, const char *path, int64_t *ms, char *err,
                                size_t errlen)
{
    if (sluice_setting_duration(e, path, ms) < 0 || *ms < 0)
        return tarpit_bad(e, path, "must be a duration (\"5s\", \"250ms\")", err, errlen);
    return 0;
}

static int tarpit_read_hook(const sluice_entry *e, int i, struct tarpit_conf *c, char *err,
                            size_t errlen)
{
    char path[32];
    snprintf(path, sizeof path, "hooks.[%d]", i);
    const char *name = NULL;
    if (sluice_setting_string(e, path, &name) != 0)
        return tarpit_bad(e, "hooks", "must be an array of hook names", err, errlen);
    for (int h = 0; h < SLUICE_HOOK_COUNT; h++)
        if (tarpit_hook_names[h] && strcmp(name, tarpit_hook_names[h]) == 0) {
            c->hooks[h] = true;
            return 0;
        }
    snprintf(err, errlen, "line %d: hooks: unknown hook '%s' (connect, helo, mail, rcpt, data)",
             sluice_setting_line(e, "hooks"), name);
    return -1;
}

static int tarpit_read_hooks(const sluice_entry *e, struct tarpit_conf *c, char *err,
                             size_t errlen)
{
    int n = sluice_setting_count(e, "hooks");
    if (n < 0) {
        if (sluice_setting_line(e, "hooks") > 0)
            return tarpit_bad(e, "hooks", "must be an array of hook names", err, errlen);
        for (int h = SLUICE_HOOK_CONNECT; h <= SLUICE_HOOK_RCPT; h++)
            c->hooks[h] = true;
        return 0;
    }
    for (int i = 0; i < n; i++)
        if (tarpit_read_hook(e, i, c, err, errlen) < 0)
            return -1;
    return 0;
}

static int tarpit_read_early_talker(const sluice_entry *e, struct tarpit_conf *c, char *err,
                                    size_t errlen)
{
    const char *action = NULL;
    int rc = sluice_setting_string(e, "early_talker", &action);
    if (rc < 0)
        return tarpit_bad(e, "early_talker", "must be a string", err, errlen);
    if (rc == 0) {
        size_t i = 0;
        while (i < sizeof tarpit_early_names / sizeof *tarpit_early_names &&
               strcmp(action, tarpit_early_names[i]) != 0)
            i++;
        if (i == sizeof tarpit_early_names / sizeof *tarpit_early_names)
            return tarpit_bad(e, "early_talker",
                              "must be \"reject\", \"disconnect\", \"score\" or \"ignore\"", err,
                              errlen);
        c->early_action = (enum tarpit_early_action)i;
    }
    if (sluice_setting_double(e, "early_talker_score", &c->early_talker_score) < 0)
        return tarpit_bad(e, "early_talker_score", "must be a number", err, errlen);
    return 0;
}

static int tarpit_read_throttle(const sluice_entry *e, struct tarpit_conf *c, char *err,
                                size_t errlen)
{
    if (sluice_setting_size(e, "throttle", &c->throttle_bps) < 0 || c->throttle_bps < 0)
        return tarpit_bad(e, "throttle", "must be bytes per second (\"512\", \"64K\")", err,
                          errlen);
    if (sluice_setting_double(e, "throttle_score", &c->throttle_score) < 0)
        return tarpit_bad(e, "throttle_score", "must be a number", err, errlen);
    return 0;
}

/* The entry's pending timeout must outlast the longest delay, or every
 * delayed session would end in the timeout's outcome. Without the
 * operator's `timeout`, the tarpit gives itself one that does. */
static int tarpit_check_timeout(sluice_entry *e, const struct tarpit_conf *c, char *err,
                                size_t errlen)
{
    int64_t longest = c->max_delay_ms > c->banner_delay_ms ? c->max_delay_ms : c->banner_delay_ms;
    int64_t timeout_ms = 0;
    if (sluice_setting_duration(e, "timeout", &timeout_ms) != 0) {
        if (sluice_entry_timeout(e) <= longest &&
            sluice_entry_set_timeout(e, longest + TARPIT_TIMEOUT_MARGIN_MS) < 0) {
            snprintf(err, errlen, "max_delay/banner_delay (%lld ms) too long", (long long)longest);
            return -1;
        }
        return 0;
    }
    if (timeout_ms > longest)
        return 0;
    snprintf(err, errlen,
             "line %d: timeout (%lld ms) must be longer than max_delay and banner_delay "
             "(%lld ms)",
             sluice_setting_line(e, "timeout"), (long long)timeout_ms, (long long)longest);
    return -1;
}

static int tarpit_read_conf(sluice_entry *e, struct tarpit_conf *c, char *err,
                            size_t errlen)
{
    c->max_delay_ms = TARPIT_DEFAULT_MAX_DELAY_MS;
    c->early_action = EARLY_REJECT;
    c->early_talker_score = TARPIT_DEFAULT_EARLY_TALKER_SCORE;
    if (sluice_settings_check(e, "", tarpit_settings, err, errlen) < 0 ||
        tarpit_read_duration(e, "delay", &c->delay_ms, err, errlen) < 0 ||
        tarpit_read_duration(e, "delay_per_score", &c->delay_per_score_ms, err, errlen) < 0 ||
        tarpit_read_duration(e, "max_delay", &c->max_delay_ms, err, errlen) < 0 ||
        tarpit_read_duration(e, "banner_delay", &c->banner_delay_ms, err, errlen) < 0 ||
        tarpit_read_hooks(e, c, err, errlen) < 0 ||
        tarpit_read_early_talker(e, c, err, errlen) < 0 ||
        tarpit_read_throttle(e, c, err, errlen) < 0)
        return -1;
    return tarpit_check_timeout(e, c, err, errlen);
}

static int tarpit_init(sluice_entry *entry, void **entry_state, char *err, size_t errlen)
{
    struct tarpit_conf *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (tarpit_read_conf(entry, c, err, errlen) < 0) {
        free(c);
        return -1;
    }
    c->delayed = sluice_counter_new(entry, "tarpit_delays_total", "Replies delayed.");
    c->early_talkers = sluice_counter_new(entry, "tarpit_early_talkers_total",
                                          "Clients that talked before the greeting.");
    c->throttled = sluice_counter_new(entry, "tarpit_throttled_total",
                                      "Throttles applied to suspect clients.");
    *entry_state = c;
    return 0;
}

static void tarpit_fini(sluice_entry *entry, void *entry_state)
{
    free(entry_state);
}

/* ---- hooks ------------------------------------------------------------------ */

static void tarpit_count(sluice_counter *counter)
{
    if (counter)
        sluice_counter_add(counter, 1);
}

static void tarpit_maybe_throttle(sluice_session *s, const struct tarpit_conf *c)
{
    if (c->throttle_bps <= 0 || sluice_score(s) < c->throttle_score)
        return;
    sluice_throttle(s, (uint64_t)c->throttle_bps);
    tarpit_count(c->throttled);
}

/* Delaying while a backend connection is held would let a slow client keep
 * a pool's slot: the host says when one is held (data and eom always). */
static bool tarpit_backend_may_be_held(const sluice_session *s, enum sluice_hook hook)
{
    return hook == SLUICE_HOOK_DATA || hook == SLUICE_HOOK_EOM || sluice_backend_held(s);
}

static int64_t tarpit_delay_ms(const sluice_session *s, const struct tarpit_conf *c,
                               enum sluice_hook hook)
{
    if (!c->hooks[hook] || tarpit_backend_may_be_held(s, hook))
        return 0;
    double score = sluice_score(s);
    double ms = (double)c->delay_ms;
    if (score > 0 && isfinite(score))
        ms += score * (double)c->delay_per_score_ms;
    if (ms > (double)c->max_delay_ms)
        ms = (double)c->max_delay_ms;
    return (int64_t)ms;
}

static void tarpit_delay_done(sluice_session *s, void *arg)
{
    sluice_resume(s, SLUICE_CONTINUE);
}

static enum sluice_verdict tarpit_wait(sluice_session *s, const struct tarpit_conf *c,
                                       int64_t ms, sluice_timer_cb done, const char *what)
{
    if (ms <= 0)
        return SLUICE_CONTINUE;
    if (sluice_timer(s, ms, done, (void *)c) < 0) {
        sluice_log(s, SLUICE_LOG_WARN, "cannot start a timer: %s not delayed", what);
        return SLUICE_CONTINUE;
    }
    sluice_log(s, SLUICE_LOG_DEBUG, "delaying %s by %lld ms", what, (long long)ms);
    tarpit_count(c->delayed);
    return SLUICE_PENDING;
}

static enum sluice_verdict tarpit_hook(sluice_session *s, const struct tarpit_conf *c,
                                       enum sluice_hook hook)
{
    tarpit_maybe_throttle(s, c);
    return tarpit_wait(s, c, tarpit_delay_ms(s, c, hook), tarpit_delay_done,
                       tarpit_hook_names[hook]);
}

static enum sluice_verdict tarpit_early_talker_verdict(sluice_session *s,
                                                       const struct tarpit_conf *c)
{
    tarpit_count(c->early_talkers);
    switch (c->early_action) {
    case EARLY_REJECT:
        sluice_log(s, SLUICE_LOG_INFO, "early talker: rejected");
        sluice_reply(s, 554, "5.7.1", "Protocol error: talking before the greeting");
        return SLUICE_REJECT;
    case EARLY_DISCONNECT:
        sluice_log(s, SLUICE_LOG_INFO, "early talker: disconnected");
        sluice_reply(s, 421, "4.7.0", "Protocol error: talking before the greeting");
        return SLUICE_DISCONNECT;
    case EARLY_SCORE:
        sluice_log(s, SLUICE_LOG_INFO, "early talker: score %+.2f", c->early_talker_score);
        sluice_score_add(s, c->early_talker_score);
        sluice_note_set_int(s, SLUICE_CONNECTION, TARPIT_NOTE_EARLY_TALKER, 1);
        tarpit_maybe_throttle(s, c);
        return SLUICE_CONTINUE;
    case EARLY_IGNORE:
        break;
    }
    return SLUICE_CONTINUE;
}

static void tarpit_banner_done(sluice_session *s, void *arg)
{
    const struct tarpit_conf *c = arg;
    if (c->early_action != EARLY_IGNORE && sluice_early_talker(s)) {
        sluice_resume(s, tarpit_early_talker_verdict(s, c));
        return;
    }
    sluice_resume(s, SLUICE_CONTINUE);
}

static enum sluice_verdict tarpit_connect(sluice_session *s, void *entry_state, void *thread_state)
{
    const struct tarpit_conf *c = entry_state;
    tarpit_maybe_throttle(s, c);
    int64_t ms = tarpit_delay_ms(s, c, SLUICE_HOOK_CONNECT);
    if (c->banner_delay_ms > ms)
        ms = c->banner_delay_ms;
    return tarpit_wait(s, c, ms, tarpit_banner_done, "banner");
}

static enum sluice_verdict tarpit_helo(sluice_session *s, void *entry_state, void *thread_state)
{
    return tarpit_hook(s, entry_state, SLUICE_HOOK_HELO);
}

static enum sluice_verdict tarpit_mail(sluice_session *s, void *entry_state, void *thread_state)
{
    return tarpit_hook(s, entry_state, SLUICE_HOOK_MAIL);
}

static enum sluice_verdict tarpit_rcpt(sluice_session *s, void *entry_state, void *thread_state)
{
    return tarpit_hook(s, entry_state, SLUICE_HOOK_RCPT);
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "tarpit",
    .version = "1.0",
    .init = tarpit_init,
    .fini = tarpit_fini,
    .hooks =
        {
            [SLUICE_HOOK_CONNECT] = tarpit_connect,
            [SLUICE_HOOK_HELO] = tarpit_helo,
            [SLUICE_HOOK_MAIL] = tarpit_mail,
            [SLUICE_HOOK_RCPT] = tarpit_rcpt,
        },
};
