/* Test plugin: a third-party plugin with a fatal bug. At the rcpt hook, a
 * recipient equal to `rcpt` makes it crash the worker (SIGSEGV, like a bad
 * pointer would); every other recipient continues. Settings: rcpt
 * (required). */
#include <signal.h>
#include <stdlib.h>

#include "test_plugin_util.h"

static void crash_on_rcpt_fini(sluice_entry *e, void *state)
{
    (void)e;
    free(state);
}

static int crash_on_rcpt_init(sluice_entry *e, void **state, char *err, size_t errlen)
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

static enum sluice_verdict crash_on_rcpt_rcpt(sluice_session *s, void *state, void *ts)
{
    const char *crash = state;
    size_t len = 0;
    const char *rcpt = sluice_rcpt(s, &len);
    (void)ts;
    if (rcpt != NULL && len == strlen(crash) && strncasecmp(rcpt, crash, len) == 0) {
        sluice_log(s, SLUICE_LOG_INFO, "crash_on_rcpt: crashing the worker");
        raise(SIGSEGV);
    }
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "crash_on_rcpt",
    .version = "1",
    .init = crash_on_rcpt_init,
    .fini = crash_on_rcpt_fini,
    .hooks = {[SLUICE_HOOK_RCPT] = crash_on_rcpt_rcpt},
};
