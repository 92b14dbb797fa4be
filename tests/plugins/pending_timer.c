/* Test plugin: at one hook, goes PENDING on a timer of `delay`, then resumes
 * with `verdict` (and `text`, when set). Settings: hook (default "mail"),
 * delay (duration, default 500ms), verdict (default "tempfail"), text. */
#include <stdlib.h>

#include "test_plugin_util.h"

struct pending_timer {
    int hook;
    int64_t delay_ms;
    int verdict;
    char *text;
};

static void pending_timer_fini(sluice_entry *e, void *state)
{
    struct pending_timer *pt = state;
    (void)e;
    if (pt != NULL) {
        free(pt->text);
        free(pt);
    }
}

static int pending_timer_read(sluice_entry *e, struct pending_timer *pt, char *err, size_t errlen)
{
    static const char *const known[] = {"hook", "delay", "verdict", "text", NULL};
    const char *text = NULL;
    pt->hook = SLUICE_HOOK_MAIL;
    pt->delay_ms = 500;
    pt->verdict = SLUICE_TEMPFAIL;
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_hook_setting(e, "hook", &pt->hook, err, errlen) < 0
        || tp_verdict_setting(e, "verdict", &pt->verdict, err, errlen) < 0
        || tp_string(e, "text", &text, err, errlen) < 0) {
        return -1;
    }
    if (sluice_setting_duration(e, "delay", &pt->delay_ms) < 0 || pt->delay_ms < 0) {
        snprintf(err, errlen, "line %d: bad 'delay'", sluice_setting_line(e, "delay"));
        return -1;
    }
    if (text != NULL && (pt->text = strdup(text)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int pending_timer_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    struct pending_timer *pt = calloc(1, sizeof(*pt));
    if (pt == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (pending_timer_read(e, pt, err, errlen) < 0) {
        pending_timer_fini(e, pt);
        return -1;
    }
    *state = pt;
    return 0;
}

static void pending_timer_fired(sluice_session *s, void *arg)
{
    const struct pending_timer *pt = arg;
    sluice_log(s, SLUICE_LOG_INFO, "pending_timer: timer fired, resuming with %s",
               tp_verdict_names[pt->verdict]);
    if (pt->text != NULL) {
        sluice_reply(s, 0, NULL, "%s", pt->text);
    }
    sluice_resume(s, (enum sluice_verdict)pt->verdict);
}

static enum sluice_verdict pending_timer_at(sluice_session *s, void *state, int hook)
{
    struct pending_timer *pt = state;
    if (hook != pt->hook) {
        return SLUICE_CONTINUE;
    }
    if (sluice_timer(s, pt->delay_ms, pending_timer_fired, pt) < 0) {
        sluice_log(s, SLUICE_LOG_ERR, "pending_timer: sluice_timer failed");
        return SLUICE_CONTINUE;
    }
    return SLUICE_PENDING;
}

TP_HOOK_WRAPPERS(pending_timer_at)

/* The disconnect hook too (hook = "disconnect"): the other test plugins
 * have none. */
static enum sluice_verdict pending_timer_at_disconnect(sluice_session *s, void *st, void *ts)
{
    (void)ts;
    return pending_timer_at(s, st, SLUICE_HOOK_DISCONNECT);
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "pending_timer",
    .version = "1",
    .init = pending_timer_init,
    .fini = pending_timer_fini,
    .hooks =
        {
            [SLUICE_HOOK_CONNECT] = pending_timer_at_connect,
            [SLUICE_HOOK_HELO] = pending_timer_at_helo,
            [SLUICE_HOOK_MAIL] = pending_timer_at_mail,
            [SLUICE_HOOK_RCPT] = pending_timer_at_rcpt,
            [SLUICE_HOOK_DATA] = pending_timer_at_data,
            [SLUICE_HOOK_EOM] = pending_timer_at_eom,
            [SLUICE_HOOK_DISCONNECT] = pending_timer_at_disconnect,
        },
};
