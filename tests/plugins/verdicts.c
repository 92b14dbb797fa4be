/* Test plugin: returns `verdict` at `hook` and CONTINUE everywhere else, for
 * the verdict x hook matrix. The reply is the host's default unless `code`,
 * `esc` or `text` is set: then it is set with sluice_reply() as given (the
 * tests of replies the host must refuse). */
#include <stdlib.h>

#include "test_plugin_util.h"

struct verdicts {
    int hook;
    int verdict;
    int64_t code;
    const char *esc;
    const char *text;
};

static int verdicts_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    static const char *const known[] = {"hook", "verdict", "code", "esc", "text", NULL};
    struct verdicts v = {.hook = -1, .verdict = -1};
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_hook_setting(e, "hook", &v.hook, err, errlen) < 0
        || tp_verdict_setting(e, "verdict", &v.verdict, err, errlen) < 0
        || tp_int(e, "code", &v.code, err, errlen) < 0
        || tp_string(e, "esc", &v.esc, err, errlen) < 0
        || tp_string(e, "text", &v.text, err, errlen) < 0) {
        return -1;
    }
    if (v.hook < 0 || v.verdict < 0) {
        snprintf(err, errlen, "'hook' and 'verdict' are required");
        return -1;
    }
    struct verdicts *copy = malloc(sizeof(*copy));
    if (copy == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *copy = v;
    *state = copy;
    return 0;
}

static void verdicts_fini(sluice_entry *e, void *state)
{
    (void)e;
    free(state);
}

static enum sluice_verdict verdicts_at(sluice_session *s, void *state, int hook)
{
    const struct verdicts *v = state;
    if (hook != v->hook)
        return SLUICE_CONTINUE;
    if (v->code || v->esc || v->text)
        sluice_reply(s, (int)v->code, v->esc, "%s", v->text ? v->text : "");
    return (enum sluice_verdict)v->verdict;
}

TP_HOOK_WRAPPERS(verdicts_at)

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "verdicts",
    .version = "1",
    .init = verdicts_init,
    .fini = verdicts_fini,
    .hooks = TP_HOOK_TABLE(verdicts_at),
};
