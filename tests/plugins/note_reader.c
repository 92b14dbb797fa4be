/* Test plugin: reads what note_writer left. At mail it rejects when the
 * transaction note "writer.txn" equals reject_txn (the reply names the
 * note); at eom it copies the notes into X-Note-Conn, X-Note-Int and
 * X-Note-Txn headers ("none" when absent) so a test sees them at the
 * backend. Settings: reject_txn. */
#include <inttypes.h>
#include <stdlib.h>

#include "test_plugin_util.h"

static void note_reader_fini(sluice_entry *e, void *state)
{
    (void)e;
    free(state);
}

static int note_reader_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    static const char *const known[] = {"reject_txn", NULL};
    const char *reject_txn = NULL;
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_string(e, "reject_txn", &reject_txn, err, errlen) < 0) {
        return -1;
    }
    if (reject_txn != NULL && (*state = strdup(reject_txn)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static enum sluice_verdict note_reader_mail(sluice_session *s, void *state, void *ts)
{
    const char *reject_txn = state;
    const char *txn = sluice_note_get_string(s, SLUICE_TRANSACTION, "writer.txn");
    (void)ts;
    if (reject_txn == NULL || txn == NULL || strcmp(txn, reject_txn) != 0) {
        return SLUICE_CONTINUE;
    }
    sluice_reply(s, 550, "5.7.1", "note said %s", txn);
    return SLUICE_REJECT;
}

static enum sluice_verdict note_reader_eom(sluice_session *s, void *state, void *ts)
{
    const char *conn = sluice_note_get_string(s, SLUICE_CONNECTION, "writer.conn");
    const char *txn = sluice_note_get_string(s, SLUICE_TRANSACTION, "writer.txn");
    int64_t n = 0;
    char num[24] = "none";
    (void)state;
    (void)ts;
    if (sluice_note_get_int(s, SLUICE_CONNECTION, "writer.int", &n)) {
        snprintf(num, sizeof(num), "%" PRId64, n);
    }
    if (sluice_header_add(s, "X-Note-Conn", conn != NULL ? conn : "none") < 0
        || sluice_header_add(s, "X-Note-Int", num) < 0
        || sluice_header_add(s, "X-Note-Txn", txn != NULL ? txn : "none") < 0) {
        sluice_log(s, SLUICE_LOG_ERR, "note_reader: sluice_header_add failed");
    }
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "note_reader",
    .version = "1",
    .init = note_reader_init,
    .fini = note_reader_fini,
    .hooks = {[SLUICE_HOOK_MAIL] = note_reader_mail, [SLUICE_HOOK_EOM] = note_reader_eom},
};
