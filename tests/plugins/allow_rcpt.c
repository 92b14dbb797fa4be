/* Test plugin: an allowlist of one recipient: ACCEPT at rcpt for `rcpt`
 * (which also clears a deferred rejection for that recipient). */
#include <stdlib.h>

#include "test_plugin_util.h"

static void allow_rcpt_fini(sluice_entry *e, void *state)
{
    (void)e;
    free(state);
}

static int allow_rcpt_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    static const char *const known[] = {"rcpt", NULL};
    const char *rcpt = NULL;
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_string(e, "rcpt", &rcpt, err, errlen) < 0) {
        return -1;
    }
    if (rcpt == NULL) {
        snprintf(err, errlen, "missing 'rcpt'");
        return -1;
    }
    if ((*state = strdup(rcpt)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static enum sluice_verdict allow_rcpt_rcpt(sluice_session *s, void *state, void *ts)
{
    const char *allowed = state;
    size_t len = 0;
    const char *rcpt = sluice_rcpt(s, &len);
    (void)ts;
    if (rcpt != NULL && len == strlen(allowed) && strncasecmp(rcpt, allowed, len) == 0) {
        return SLUICE_ACCEPT;
    }
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "allow_rcpt",
    .version = "1",
    .init = allow_rcpt_init,
    .fini = allow_rcpt_fini,
    .hooks = {[SLUICE_HOOK_RCPT] = allow_rcpt_rcpt},
};
