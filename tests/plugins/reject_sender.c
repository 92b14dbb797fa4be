/* Test plugin: rejects MAIL FROM of one configured sender with a configured
 * reply. Settings: sender (required), code, esc, text. */
#include <stdlib.h>

#include "test_plugin_util.h"

struct reject_sender {
    char *sender;
    int64_t code;
    char *esc;
    char *text;
};

static void reject_sender_fini(sluice_entry *e, void *state)
{
    struct reject_sender *rs = state;
    (void)e;
    if (rs != NULL) {
        free(rs->sender);
        free(rs->esc);
        free(rs->text);
        free(rs);
    }
}

static int reject_sender_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    static const char *const known[] = {"sender", "code", "esc", "text", NULL};
    const char *sender = NULL, *esc = "5.7.1", *text = "sender refused";
    int64_t code = 550;
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_string(e, "sender", &sender, err, errlen) < 0
        || tp_string(e, "esc", &esc, err, errlen) < 0
        || tp_string(e, "text", &text, err, errlen) < 0
        || tp_int(e, "code", &code, err, errlen) < 0) {
        return -1;
    }
    if (sender == NULL) {
        snprintf(err, errlen, "missing 'sender'");
        return -1;
    }
    struct reject_sender *rs = calloc(1, sizeof(*rs));
    if (rs == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rs->sender = strdup(sender);
    rs->esc = strdup(esc);
    rs->text = strdup(text);
    rs->code = code;
    if (rs->sender == NULL || rs->esc == NULL || rs->text == NULL) {
        snprintf(err, errlen, "out of memory");
        reject_sender_fini(e, rs);
        return -1;
    }
    *state = rs;
    return 0;
}

static enum sluice_verdict reject_sender_mail(sluice_session *s, void *state, void *ts)
{
    const struct reject_sender *rs = state;
    size_t len = 0;
    const char *sender = sluice_sender(s, &len);
    (void)ts;
    if (sender == NULL || len != strlen(rs->sender) || strncasecmp(sender, rs->sender, len) != 0) {
        return SLUICE_CONTINUE;
    }
    sluice_reply(s, (int)rs->code, rs->esc, "%s", rs->text);
    return SLUICE_REJECT;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "reject_sender",
    .version = "1",
    .init = reject_sender_init,
    .fini = reject_sender_fini,
    .hooks = {[SLUICE_HOOK_MAIL] = reject_sender_mail},
};
