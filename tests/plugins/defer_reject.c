/* Test plugin: marks every session at connect for a deferred rejection.
 * Settings: when ("rcpt" or "data", default "rcpt"), code, esc (absent: the
 * host's default 550 5.7.1), text. */
#include <stdlib.h>

#include "test_plugin_util.h"

struct defer_reject {
    int when;
    int64_t code;
    char *esc;  /* NULL: default */
    char *text; /* NULL: a fixed text */
};

static void defer_reject_fini(sluice_entry *e, void *state)
{
    struct defer_reject *dr = state;
    (void)e;
    if (dr != NULL) {
        free(dr->esc);
        free(dr->text);
        free(dr);
    }
}

static int defer_reject_read(sluice_entry *e, struct defer_reject *dr, char *err, size_t errlen)
{
    static const char *const known[] = {"when", "code", "esc", "text", NULL};
    const char *esc = NULL, *text = NULL;
    dr->when = SLUICE_HOOK_RCPT;
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_hook_setting(e, "when", &dr->when, err, errlen) < 0
        || tp_int(e, "code", &dr->code, err, errlen) < 0
        || tp_string(e, "esc", &esc, err, errlen) < 0
        || tp_string(e, "text", &text, err, errlen) < 0) {
        return -1;
    }
    if (dr->when != SLUICE_HOOK_RCPT && dr->when != SLUICE_HOOK_DATA) {
        snprintf(err, errlen, "line %d: 'when' must be \"rcpt\" or \"data\"",
                 sluice_setting_line(e, "when"));
        return -1;
    }
    if ((esc != NULL && (dr->esc = strdup(esc)) == NULL)
        || (text != NULL && (dr->text = strdup(text)) == NULL)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int defer_reject_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    struct defer_reject *dr = calloc(1, sizeof(*dr));
    if (dr == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (defer_reject_read(e, dr, err, errlen) < 0) {
        defer_reject_fini(e, dr);
        return -1;
    }
    *state = dr;
    return 0;
}

static enum sluice_verdict defer_reject_connect(sluice_session *s, void *state, void *ts)
{
    const struct defer_reject *dr = state;
    (void)ts;
    sluice_defer_reject(s, (enum sluice_hook)dr->when, (int)dr->code, dr->esc, "%s",
                        dr->text != NULL ? dr->text : "refused by a deferred rejection");
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "defer_reject",
    .version = "1",
    .init = defer_reject_init,
    .fini = defer_reject_fini,
    .hooks = {[SLUICE_HOOK_CONNECT] = defer_reject_connect},
};
