/* Test plugin: tells later entries things through notes. At connect it sets
 * the connection notes "writer.conn" (string) and "writer.int" (integer); at
 * mail the transaction note "writer.txn", for every sender or, with
 * txn_sender set, only for that one (so a test can see the note cleared in
 * the next transaction). Settings: conn_value, int_value, txn_value,
 * txn_sender. */
#include <stdlib.h>

#include "test_plugin_util.h"

struct note_writer {
    char *conn_value;
    int64_t int_value;
    char *txn_value;
    char *txn_sender; /* NULL: every sender */
};

static void note_writer_fini(sluice_entry *e, void *state)
{
    struct note_writer *nw = state;
    (void)e;
    if (nw != NULL) {
        free(nw->conn_value);
        free(nw->txn_value);
        free(nw->txn_sender);
        free(nw);
    }
}

static int note_writer_read(sluice_entry *e, struct note_writer *nw, char *err, size_t errlen)
{
    static const char *const known[] = {"conn_value", "int_value", "txn_value", "txn_sender",
                                        NULL};
    const char *conn = "conn-note", *txn = "txn-note", *only = NULL;
    nw->int_value = 42;
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_string(e, "conn_value", &conn, err, errlen) < 0
        || tp_string(e, "txn_value", &txn, err, errlen) < 0
        || tp_string(e, "txn_sender", &only, err, errlen) < 0
        || tp_int(e, "int_value", &nw->int_value, err, errlen) < 0) {
        return -1;
    }
    nw->conn_value = strdup(conn);
    nw->txn_value = strdup(txn);
    nw->txn_sender = only != NULL ? strdup(only) : NULL;
    if (nw->conn_value == NULL || nw->txn_value == NULL || (only != NULL && !nw->txn_sender)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int note_writer_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    struct note_writer *nw = calloc(1, sizeof(*nw));
    if (nw == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (note_writer_read(e, nw, err, errlen) < 0) {
        note_writer_fini(e, nw);
        return -1;
    }
    *state = nw;
    return 0;
}

static enum sluice_verdict note_writer_connect(sluice_session *s, void *state, void *ts)
{
    const struct note_writer *nw = state;
    (void)ts;
    if (sluice_note_set_string(s, SLUICE_CONNECTION, "writer.conn", nw->conn_value) < 0
        || sluice_note_set_int(s, SLUICE_CONNECTION, "writer.int", nw->int_value) < 0) {
        sluice_log(s, SLUICE_LOG_ERR, "note_writer: cannot set the connection notes");
    }
    return SLUICE_CONTINUE;
}

static enum sluice_verdict note_writer_mail(sluice_session *s, void *state, void *ts)
{
    const struct note_writer *nw = state;
    size_t len = 0;
    const char *sender = sluice_sender(s, &len);
    (void)ts;
    if (nw->txn_sender != NULL
        && (sender == NULL || len != strlen(nw->txn_sender)
            || strncasecmp(sender, nw->txn_sender, len) != 0)) {
        return SLUICE_CONTINUE;
    }
    if (sluice_note_set_string(s, SLUICE_TRANSACTION, "writer.txn", nw->txn_value) < 0) {
        sluice_log(s, SLUICE_LOG_ERR, "note_writer: cannot set the transaction note");
    }
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "note_writer",
    .version = "1",
    .init = note_writer_init,
    .fini = note_writer_fini,
    .hooks = {[SLUICE_HOOK_CONNECT] = note_writer_connect, [SLUICE_HOOK_MAIL] = note_writer_mail},
};
