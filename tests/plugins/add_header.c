/* Test plugin: adds one configured header field at end of message.
 * Settings: name (default "X-Test-Added"), value (default "yes"). */
#include <stdlib.h>

#include "test_plugin_util.h"

struct add_header {
    char *name;
    char *value;
};

static void add_header_fini(sluice_entry *e, void *state)
{
    struct add_header *ah = state;
    (void)e;
    if (ah != NULL) {
        free(ah->name);
        free(ah->value);
        free(ah);
    }
}

static int add_header_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    static const char *const known[] = {"name", "value", NULL};
    const char *name = "X-Test-Added", *value = "yes";
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_string(e, "name", &name, err, errlen) < 0
        || tp_string(e, "value", &value, err, errlen) < 0) {
        return -1;
    }
    struct add_header *ah = calloc(1, sizeof(*ah));
    if (ah == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    ah->name = strdup(name);
    ah->value = strdup(value);
    if (ah->name == NULL || ah->value == NULL) {
        snprintf(err, errlen, "out of memory");
        add_header_fini(e, ah);
        return -1;
    }
    *state = ah;
    return 0;
}

static enum sluice_verdict add_header_eom(sluice_session *s, void *state, void *ts)
{
    const struct add_header *ah = state;
    (void)ts;
    if (sluice_header_add(s, ah->name, ah->value) < 0) {
        /* The message must not go on without the header this entry adds. */
        sluice_log(s, SLUICE_LOG_ERR, "add_header: sluice_header_add failed");
        sluice_reply(s, 451, "4.3.0", "Internal error, try again later");
        return SLUICE_TEMPFAIL;
    }
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "add_header",
    .version = "1",
    .init = add_header_init,
    .fini = add_header_fini,
    .hooks = {[SLUICE_HOOK_EOM] = add_header_eom},
};
