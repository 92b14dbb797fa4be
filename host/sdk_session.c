/* The SDK's view of a session: accessors, notes, per-entry data, throttle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include <sluice/session.h>

#include "config.h"
#include "io.h"
#include "log.h"
#include "netaddr.h"
#include "plugin_host.h"
#include "sdk_op.h"
#include "session_internal.h"
#include "worker.h"

/* Per-session caps: a plugin cannot make a session grow without bound. */
#define NOTES_MAX 64
#define NOTES_FIRST 2 /* slots at the first note; doubled up to NOTES_MAX */
#define NOTE_KEY_MAX 64
#define NOTE_STRING_MAX 1024
#define SCORE_NOTE "score"

enum note_type { NOTE_INT, NOTE_DOUBLE, NOTE_STRING };

struct note {
    char key[NOTE_KEY_MAX];
    enum sluice_scope scope;
    enum note_type type;
    int64_t i;
    double d;
    char *str;
};

#define S(ss) ((struct session *)(ss))
#define CS(ss) ((const struct session *)(ss))

/* ---- lifetime ----------------------------------------------------------- */

void session_plugins_init(struct session *s)
{
    size_t n = s->chain ? s->chain->n : 0;
    if (n == 0)
        return;
    s->entry_data = calloc(n, sizeof *s->entry_data);
    s->entry_data_free = calloc(n, sizeof *s->entry_data_free);
}

void session_plugins_free(struct session *s)
{
    sdk_op_abandon_all(s);
    if (s->run.timeout_ev)
        event_free(s->run.timeout_ev);
    s->run.timeout_ev = NULL;
    size_t n = s->chain ? s->chain->n : 0;
    for (size_t i = 0; s->entry_data && i < n; i++)
        if (s->entry_data[i] && s->entry_data_free[i])
            s->entry_data_free[i](s->entry_data[i]);
    free(s->entry_data);
    free(s->entry_data_free);
    s->entry_data = NULL;
    s->entry_data_free = NULL;
    session_notes_clear(s, -1);
    free(s->notes);
    s->notes = NULL;
    s->notes_cap = 0;
    message_info_free(s->msg);
    s->msg = NULL;
}

/* ---- the connection ------------------------------------------------------- */

const char *sluice_session_id(const sluice_session *s) { return CS(s)->sid; }

const struct sockaddr *sluice_client_addr(const sluice_session *s)
{
    return (const struct sockaddr *)&CS(s)->peer;
}

const struct sockaddr *sluice_local_addr(const sluice_session *s)
{
    return (const struct sockaddr *)&CS(s)->local;
}

const char *sluice_client_ip(const sluice_session *s) { return CS(s)->client_ip; }
int sluice_client_port(const sluice_session *s) { return CS(s)->client_port; }

const char *sluice_client_name(const sluice_session *s)
{
    return CS(s)->rdns_status == DNS_OK ? CS(s)->rdns_name : NULL;
}

enum sluice_rdns sluice_client_name_status(const sluice_session *s)
{
    switch (CS(s)->rdns_status) {
    case DNS_OK:
        return SLUICE_RDNS_OK;
    case DNS_NOTFOUND:
        return SLUICE_RDNS_NONE;
    default:
        return SLUICE_RDNS_TEMPFAIL;
    }
}

bool sluice_client_trusted(const sluice_session *s)
{
    return netlist_match(CS(s)->cfg->relay_networks, sluice_client_addr(s));
}

bool sluice_early_talker(const sluice_session *ss)
{
    const struct session *s = CS(ss);
    if (s->early_talker)
        return true;
    /* Before the greeting any byte the client sent is early talk. */
    return s->phase < PH_COMMANDS && s->io && io_input_len(s->io) > 0;
}

void session_apply_throttle(struct session *s)
{
    if (!s->io)
        return;
    /* A throttle applies only while no backend connection is held. */
    uint64_t rate = s->backend ? 0 : s->throttle_bps;
    if (io_set_read_rate(s->io, rate) < 0)
        log_err(s->sid, "out of memory setting the read throttle: reads are not throttled");
}

void sluice_throttle(sluice_session *s, uint64_t bytes_per_second)
{
    S(s)->throttle_bps = bytes_per_second;
    session_apply_throttle(S(s));
}

bool sluice_backend_held(const sluice_session *s) { return CS(s)->backend != NULL; }

bool sluice_tls_active(const sluice_session *s) { return CS(s)->io && io_tls_active(CS(s)->io); }
const char *sluice_tls_version(const sluice_session *s) { return io_tls_version(CS(s)->io); }
const char *sluice_tls_cipher(const sluice_session *s) { return io_tls_cipher(CS(s)->io); }
const char *sluice_tls_sni(const sluice_session *s) { return io_tls_sni(CS(s)->io); }
const char *sluice_tls_client_subject(const sluice_session *s)
{
    return io_tls_peer_subject(CS(s)->io);
}
bool sluice_tls_client_verified(const sluice_session *s) { return io_tls_peer_verified(CS(s)->io); }

/* ---- the conversation ------------------------------------------------------ */

const char *sluice_helo(const sluice_session *s) { return CS(s)->helo; }
bool sluice_esmtp(const sluice_session *s) { return CS(s)->esmtp; }

const char *sluice_sender(const sluice_session *ss, size_t *len)
{
    const struct session *s = CS(ss);
    if (!s->txn.active || !s->txn.from)
        return NULL;
    if (len)
        *len = s->txn.from_len;
    return s->txn.from;
}

int64_t sluice_declared_size(const sluice_session *s)
{
    return CS(s)->txn.active ? CS(s)->txn.mp.size : -1;
}

bool sluice_body_8bitmime(const sluice_session *s)
{
    return CS(s)->txn.active && CS(s)->txn.mp.body == SMTP_BODY_8BITMIME;
}

bool sluice_smtputf8(const sluice_session *s) { return CS(s)->txn.active && CS(s)->txn.mp.smtputf8; }

const char *sluice_rcpt(const sluice_session *ss, size_t *len)
{
    const struct session *s = CS(ss);
    if (!s->run.active || s->run.point != HOOK_RCPT || !s->cur_rcpt_addr)
        return NULL;
    if (len)
        *len = strlen(s->cur_rcpt_addr);
    return s->cur_rcpt_addr;
}

size_t sluice_rcpt_count(const sluice_session *s) { return CS(s)->txn.naccepted; }

const char *sluice_rcpt_at(const sluice_session *ss, size_t i, size_t *len)
{
    const struct session *s = CS(ss);
    size_t seen = 0;
    for (size_t k = 0; k < s->txn.nrcpts; k++) {
        if (s->txn.rcpts[k].code / 100 != 2)
            continue;
        if (seen++ == i) {
            if (len)
                *len = strlen(s->txn.rcpts[k].addr);
            return s->txn.rcpts[k].addr;
        }
    }
    return NULL;
}

/* ---- notes ------------------------------------------------------------------ */

static struct note *note_find(const struct session *s, enum sluice_scope scope, const char *key)
{
    for (size_t i = 0; i < s->nnotes; i++)
        if (s->notes[i].scope == scope && strcmp(s->notes[i].key, key) == 0)
            return &s->notes[i];
    return NULL;
}

/* Room for one more note. The array grows as notes are set (most sessions
 * hold one or two, a held tarpit session the score alone): 64 slots up front
 * were 6 KB per session. */
static bool notes_reserve(struct session *s)
{
    if (s->nnotes < s->notes_cap)
        return true;
    size_t cap = s->notes_cap ? s->notes_cap * 2 : NOTES_FIRST;
    if (cap > NOTES_MAX)
        cap = NOTES_MAX;
    struct note *n = realloc(s->notes, cap * sizeof *n);
    if (!n)
        return false;
    s->notes = n;
    s->notes_cap = cap;
    return true;
}

static struct note *note_slot(struct session *s, enum sluice_scope scope, const char *key)
{
    if (!key || strlen(key) >= NOTE_KEY_MAX ||
        (scope != SLUICE_CONNECTION && scope != SLUICE_TRANSACTION))
        return NULL;
    struct note *n = note_find(s, scope, key);
    if (n) {
        free(n->str);
        n->str = NULL;
        return n;
    }
    if (s->nnotes >= NOTES_MAX || !notes_reserve(s))
        return NULL;
    n = &s->notes[s->nnotes++];
    memset(n, 0, sizeof *n);
    snprintf(n->key, sizeof n->key, "%s", key);
    n->scope = scope;
    return n;
}

void session_notes_clear(struct session *s, int scope)
{
    size_t j = 0;
    for (size_t i = 0; i < s->nnotes; i++) {
        if (scope < 0 || s->notes[i].scope == (enum sluice_scope)scope) {
            free(s->notes[i].str);
            continue;
        }
        s->notes[j++] = s->notes[i];
    }
    s->nnotes = j;
}

int sluice_note_set_int(sluice_session *s, enum sluice_scope scope, const char *key, int64_t v)
{
    struct note *n = note_slot(S(s), scope, key);
    if (!n)
        return -1;
    n->type = NOTE_INT;
    n->i = v;
    return 0;
}

int sluice_note_set_double(sluice_session *s, enum sluice_scope scope, const char *key, double v)
{
    struct note *n = note_slot(S(s), scope, key);
    if (!n)
        return -1;
    n->type = NOTE_DOUBLE;
    n->d = v;
    return 0;
}

int sluice_note_set_string(sluice_session *s, enum sluice_scope scope, const char *key,
                           const char *v)
{
    if (!v || strlen(v) > NOTE_STRING_MAX)
        return -1;
    char *copy = strdup(v);
    if (!copy)
        return -1;
    struct note *n = note_slot(S(s), scope, key);
    if (!n) {
        free(copy);
        return -1;
    }
    n->type = NOTE_STRING;
    n->str = copy;
    return 0;
}

bool sluice_note_get_int(const sluice_session *s, enum sluice_scope scope, const char *key,
                         int64_t *v)
{
    const struct note *n = note_find(CS(s), scope, key);
    if (!n || n->type != NOTE_INT)
        return false;
    *v = n->i;
    return true;
}

bool sluice_note_get_double(const sluice_session *s, enum sluice_scope scope, const char *key,
                            double *v)
{
    const struct note *n = note_find(CS(s), scope, key);
    if (!n || n->type != NOTE_DOUBLE)
        return false;
    *v = n->d;
    return true;
}

const char *sluice_note_get_string(const sluice_session *s, enum sluice_scope scope,
                                   const char *key)
{
    const struct note *n = note_find(CS(s), scope, key);
    return n && n->type == NOTE_STRING ? n->str : NULL;
}

double sluice_score(const sluice_session *s)
{
    double v = 0;
    return sluice_note_get_double(s, SLUICE_CONNECTION, SCORE_NOTE, &v) ? v : 0.0;
}

void sluice_score_add(sluice_session *s, double delta)
{
    sluice_note_set_double(s, SLUICE_CONNECTION, SCORE_NOTE, sluice_score(s) + delta);
}

/* ---- per-entry data ------------------------------------------------------------ */

void *sluice_session_data(const sluice_session *ss)
{
    const struct session *s = CS(ss);
    if (!s->current_entry || !s->entry_data)
        return NULL;
    return s->entry_data[s->current_entry->index];
}

void sluice_session_set_data(sluice_session *ss, void *data, void (*free_fn)(void *))
{
    struct session *s = S(ss);
    if (!s->current_entry || !s->entry_data)
        return;
    int i = s->current_entry->index;
    if (s->entry_data[i] && s->entry_data[i] != data && s->entry_data_free[i])
        s->entry_data_free[i](s->entry_data[i]);
    s->entry_data[i] = data;
    s->entry_data_free[i] = free_fn;
}
