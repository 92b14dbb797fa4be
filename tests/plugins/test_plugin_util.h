/*
 * Helpers shared by the test plugins: hook and verdict names as the tests
 * write them in conf.d entries, and settings read with a message on error.
 * Header-only so each test plugin stays one .c file built on its own.
 */
#ifndef TEST_PLUGIN_UTIL_H
#define TEST_PLUGIN_UTIL_H

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <sluice/sluice.h>

static const char *const tp_hook_names[SLUICE_HOOK_COUNT] = {
    "connect", "helo", "mail", "rcpt", "data", "eom", "disconnect",
};

static const char *const tp_verdict_names[] = {
    "continue", "accept", "reject", "tempfail", "disconnect",
};

static inline int tp_hook_from_name(const char *name)
{
    for (int i = 0; i < SLUICE_HOOK_COUNT; i++) {
        if (strcmp(name, tp_hook_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

static inline int tp_verdict_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof(tp_verdict_names) / sizeof(tp_verdict_names[0]); i++) {
        if (strcmp(name, tp_verdict_names[i]) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Absent settings keep *out; a wrong type fails with a message naming the line. */
static inline int tp_string(sluice_entry *e, const char *path, const char **out, char *err,
                            size_t errlen)
{
    if (sluice_setting_string(e, path, out) < 0) {
        snprintf(err, errlen, "line %d: '%s' must be a string", sluice_setting_line(e, path),
                 path);
        return -1;
    }
    return 0;
}

static inline int tp_int(sluice_entry *e, const char *path, int64_t *out, char *err,
                         size_t errlen)
{
    if (sluice_setting_int(e, path, out) < 0) {
        snprintf(err, errlen, "line %d: '%s' must be an integer", sluice_setting_line(e, path),
                 path);
        return -1;
    }
    return 0;
}

static inline int tp_hook_setting(sluice_entry *e, const char *path, int *hook, char *err,
                                  size_t errlen)
{
    const char *name = NULL;
    if (tp_string(e, path, &name, err, errlen) < 0) {
        return -1;
    }
    if (name != NULL && (*hook = tp_hook_from_name(name)) < 0) {
        snprintf(err, errlen, "line %d: unknown hook '%s'", sluice_setting_line(e, path), name);
        return -1;
    }
    return 0;
}

static inline int tp_verdict_setting(sluice_entry *e, const char *path, int *verdict, char *err,
                                     size_t errlen)
{
    const char *name = NULL;
    if (tp_string(e, path, &name, err, errlen) < 0) {
        return -1;
    }
    if (name != NULL && (*verdict = tp_verdict_from_name(name)) < 0) {
        snprintf(err, errlen, "line %d: unknown verdict '%s'", sluice_setting_line(e, path),
                 name);
        return -1;
    }
    return 0;
}

/* One hook function per hook point, so a plugin told "act at <hook>" knows
 * where it is called from (the hook signature does not say). */
#define TP_HOOK_WRAPPERS(dispatch)                                                            \
    static enum sluice_verdict dispatch##_connect(sluice_session *s, void *st, void *ts)       \
    {                                                                                         \
        (void)ts;                                                                             \
        return dispatch(s, st, SLUICE_HOOK_CONNECT);                                          \
    }                                                                                         \
    static enum sluice_verdict dispatch##_helo(sluice_session *s, void *st, void *ts)          \
    {                                                                                         \
        (void)ts;                                                                             \
        return dispatch(s, st, SLUICE_HOOK_HELO);                                             \
    }                                                                                         \
    static enum sluice_verdict dispatch##_mail(sluice_session *s, void *st, void *ts)          \
    {                                                                                         \
        (void)ts;                                                                             \
        return dispatch(s, st, SLUICE_HOOK_MAIL);                                             \
    }                                                                                         \
    static enum sluice_verdict dispatch##_rcpt(sluice_session *s, void *st, void *ts)          \
    {                                                                                         \
        (void)ts;                                                                             \
        return dispatch(s, st, SLUICE_HOOK_RCPT);                                             \
    }                                                                                         \
    static enum sluice_verdict dispatch##_data(sluice_session *s, void *st, void *ts)          \
    {                                                                                         \
        (void)ts;                                                                             \
        return dispatch(s, st, SLUICE_HOOK_DATA);                                             \
    }                                                                                         \
    static enum sluice_verdict dispatch##_eom(sluice_session *s, void *st, void *ts)           \
    {                                                                                         \
        (void)ts;                                                                             \
        return dispatch(s, st, SLUICE_HOOK_EOM);                                              \
    }

#define TP_HOOK_TABLE(dispatch)                                                                \
    {                                                                                          \
        [SLUICE_HOOK_CONNECT] = dispatch##_connect, [SLUICE_HOOK_HELO] = dispatch##_helo,      \
        [SLUICE_HOOK_MAIL] = dispatch##_mail, [SLUICE_HOOK_RCPT] = dispatch##_rcpt,            \
        [SLUICE_HOOK_DATA] = dispatch##_data, [SLUICE_HOOK_EOM] = dispatch##_eom,              \
    }

#endif
