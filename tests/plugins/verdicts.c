/* Test plugin: returns `verdict` at `hook` and CONTINUE everywhere else, for
 * the verdict x hook matrix. The reply is always the host's default. */
#include <stdlib.h>

#include "test_plugin_util.h"

struct verdicts {
    int hook;
    int verdict;
};

static int verdicts_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    static const char *const known[] = {"hook", "verdict", NULL};
    struct verdicts v = {.hook = -1, .verdict = -1};
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_hook_setting(e, "hook", &v.hook, err, errlen) < 0
        || tp_verdict_setting(e, "verdict", &v.verdict, err, errlen) < 0) {
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
    (void)s;
    return hook == v->hook ? (enum sluice_verdict)v->verdict : SLUICE_CONTINUE;
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
