/* The message at eom for plugins: its header fields, a streaming reader of
 * the whole message, and header changes applied when it is relayed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include <sluice/session.h>

#include "data_codec.h"
#include "log.h"
#include "session_internal.h"
#include "spool.h"

/* Caps that keep a hostile message's header from costing unbounded memory:
 * fields beyond them stay in the message but are not visible to plugins. */
#define HEADER_MAX_BYTES (1024 * 1024)
/* The first read of the header; most headers fit, bigger ones double it. */
#define HEADER_FIRST_READ 4096
#define HEADER_MAX_FIELDS 1000
#define HEADER_MAX_ADDS 100
#define READER_CHUNK 65536

struct header_field {
    char *name;
    size_t name_len;
    char *value; /* un-stuffed, folding kept, no final CRLF */
    size_t value_len;
    uint64_t off, len; /* the field's wire bytes in the spool, CRLFs included */
    bool removed;
};

struct message_info {
    struct header_field *fields;
    size_t n;
    uint64_t header_end; /* the spool offset where the header fields end */
    char *adds;          /* "Name: value\r\n" lines to put on top */
    size_t adds_len;
    size_t nadds;
    bool changed;
    bool oom; /* an allocation failed: the header seen by plugins is incomplete */
    bool truncated; /* the caps ended the parse inside the header: fields follow unseen */
    bool removes;   /* a plugin asked for a field to be removed */
};

#define S(ss) ((struct session *)(ss))
#define CS(ss) ((const struct session *)(ss))

void message_info_free(struct message_info *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->fields[i].name);
        free(m->fields[i].value);
    }
    free(m->fields);
    free(m->adds);
    free(m);
}

/* One physical line of the wire form: [p, eol) without CRLF; returns the
 * length including CRLF, or 0 when the buffer ends first. */
static size_t msg_line(const char *p, size_t avail, size_t *content_len)
{
    const char *lf = memchr(p, '\n', avail);
    if (!lf)
        return 0;
    size_t total = (size_t)(lf - p) + 1;
    *content_len = total >= 2 && lf[-1] == '\r' ? total - 2 : total - 1;
    return total;
}

static bool msg_append_value(struct header_field *f, const char *p, size_t len, bool fold)
{
    size_t extra = len + (fold ? 2 : 0);
    char *v = realloc(f->value, f->value_len + extra + 1);
    if (!v)
        return false;
    if (fold) {
        memcpy(v + f->value_len, "\r\n", 2);
        f->value_len += 2;
    }
    memcpy(v + f->value_len, p, len);
    f->value_len += len;
    v[f->value_len] = '\0';
    f->value = v;
    return true;
}

/* The field's name: the bytes before the colon, less the blanks RFC 5322's
 * obs-optional allows in front of it ("Name : value"), which MTAs and mail
 * readers take as a field too; 0 when the line is no field. */
static size_t msg_field_name(const char *line, size_t len, const char **colon_out)
{
    const char *colon = memchr(line, ':', len);
    if (!colon)
        return 0;
    size_t n = (size_t)(colon - line);
    while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t'))
        n--;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)line[i] <= ' ' || (unsigned char)line[i] >= 0x7f)
            return 0;
    *colon_out = colon;
    return n;
}

enum field_result { FIELD_ADDED, FIELD_NONE, FIELD_CAPPED, FIELD_OOM };

static enum field_result msg_new_field(struct message_info *m, const char *line, size_t len,
                                       uint64_t off, size_t total)
{
    const char *colon = NULL;
    size_t name_len = msg_field_name(line, len, &colon);
    if (name_len == 0)
        return FIELD_NONE;
    if (m->n >= HEADER_MAX_FIELDS)
        return FIELD_CAPPED;
    struct header_field *fs = realloc(m->fields, (m->n + 1) * sizeof *fs);
    if (!fs) {
        m->oom = true;
        return FIELD_OOM;
    }
    m->fields = fs;
    struct header_field *f = &fs[m->n++];
    memset(f, 0, sizeof *f);
    f->name_len = name_len;
    f->name = strndup(line, f->name_len);
    f->off = off;
    f->len = total;
    const char *v = colon + 1;
    if (!f->name || !msg_append_value(f, v, len - (size_t)(v - line), false)) {
        m->oom = true;
        return FIELD_OOM;
    }
    return FIELD_ADDED;
}

/* The header is read from the spool in growing pieces, so a large message
 * with a small header costs a small read, not a copy of the message. */
struct header_buf {
    struct spool *spool;
    char *p;
    size_t got; /* bytes of the spool in p */
    size_t cap;
    size_t want; /* at most this much: the spool or HEADER_MAX_BYTES */
};

/* More of the spool into hb (twice as much room each time); false at the
 * end of what is wanted, on a read error or out of memory (*oom). */
static bool header_buf_more(struct header_buf *hb, bool *oom)
{
    if (hb->got >= hb->want)
        return false;
    size_t cap = hb->cap ? hb->cap * 2 : HEADER_FIRST_READ;
    if (cap > hb->want)
        cap = hb->want;
    char *p = realloc(hb->p, cap);
    if (!p) {
        *oom = true;
        return false;
    }
    hb->p = p;
    hb->cap = cap;
    ssize_t n = spool_read(hb->spool, hb->got, p + hb->got, cap - hb->got);
    if (n <= 0)
        return false;
    hb->got += (size_t)n;
    return true;
}

bool message_info_parse(struct session *s)
{
    message_info_free(s->msg);
    s->msg = calloc(1, sizeof *s->msg);
    struct message_info *m = s->msg;
    if (!m)
        return false;
    uint64_t size = spool_size(s->spool);
    struct header_buf hb = {s->spool, NULL, 0, 0,
                            size < HEADER_MAX_BYTES ? (size_t)size : HEADER_MAX_BYTES};
    size_t pos = 0;
    for (;;) {
        size_t clen = 0;
        size_t total = pos < hb.got ? msg_line(hb.p + pos, hb.got - pos, &clen) : 0;
        if (total == 0 && header_buf_more(&hb, &m->oom))
            continue;
        if (total == 0) {
            /* The end of the message, or the byte cap inside the header. */
            m->truncated = hb.got < size;
            break;
        }
        if (clen == 0)
            break; /* the blank line that ends the header */
        const char *line = hb.p + pos;
        if (line[0] == '.') { /* un-stuff */
            line++;
            clen--;
        }
        if ((line[0] == ' ' || line[0] == '\t') && m->n > 0) {
            struct header_field *f = &m->fields[m->n - 1];
            if (!msg_append_value(f, line, clen, true)) {
                m->oom = true;
                break;
            }
            f->len += total;
        } else {
            enum field_result fr = msg_new_field(m, line, clen, pos, total);
            if (fr == FIELD_CAPPED)
                m->truncated = true;
            if (fr != FIELD_ADDED)
                break; /* not a header field (or past the caps): the body starts here */
        }
        pos += total;
    }
    m->header_end = pos;
    free(hb.p);
    return !m->oom;
}

/* ---- reading ------------------------------------------------------------- */

size_t sluice_header_count(const sluice_session *s)
{
    return CS(s)->msg ? CS(s)->msg->n : 0;
}

bool sluice_header_at(const sluice_session *ss, size_t i, const char **name, size_t *name_len,
                      const char **value, size_t *value_len)
{
    const struct message_info *m = CS(ss)->msg;
    if (!m || i >= m->n)
        return false;
    *name = m->fields[i].name;
    *name_len = m->fields[i].name_len;
    *value = m->fields[i].value;
    *value_len = m->fields[i].value_len;
    return true;
}

const char *sluice_header_get(const sluice_session *ss, const char *name, size_t idx,
                              size_t *value_len)
{
    const struct message_info *m = CS(ss)->msg;
    for (size_t i = 0; m && i < m->n; i++) {
        if (strcasecmp(m->fields[i].name, name) != 0 || idx-- > 0)
            continue;
        if (value_len)
            *value_len = m->fields[i].value_len;
        return m->fields[i].value;
    }
    return NULL;
}

uint64_t sluice_message_size(const sluice_session *s)
{
    /* RFC 1870's size (unstuffed), the one the size limit counts. */
    return CS(s)->txn.size;
}

/* Where the reader was at every READER_MARK_EVERY bytes of the spool, so a
 * read before the position restarts from the nearest mark, not the start. */
#define READER_MARK_EVERY (1024 * 1024)

struct reader_mark {
    uint64_t off, out_pos;
    bool at_bol;
};

/* A reader holds its own reference to the spool, so a thread-pool function
 * may read it after the session moved on (or ended). */
struct sluice_message_reader {
    struct spool *spool;
    uint64_t off;     /* in the spool (dot-stuffed) */
    uint64_t out_pos; /* in the un-stuffed message: bytes returned or skipped */
    int64_t length;   /* the un-stuffed length, -1 until counted */
    bool at_bol;
    struct evbuffer *pending;
    struct reader_mark *marks;
    size_t nmarks;
    char chunk[READER_CHUNK];
};

sluice_message_reader *sluice_message_open(sluice_session *ss)
{
    struct session *s = S(ss);
    if (!s->spool)
        return NULL;
    /* Not calloc: the chunk buffer is only ever read after a spool read
     * filled it, and zeroing it cost 2 % of a loop thread scanning mail. */
    sluice_message_reader *r = malloc(sizeof *r);
    if (!r)
        return NULL;
    r->spool = s->spool;
    r->off = 0;
    r->out_pos = 0;
    r->length = -1;
    r->at_bol = true;
    r->marks = NULL;
    r->nmarks = 0;
    r->pending = evbuffer_new();
    if (!r->pending) {
        free(r);
        return NULL;
    }
    spool_ref(r->spool);
    return r;
}

/* With nothing pending, the state at r->off is complete: mark it when it is
 * the next mark's place (reads advance a chunk at a time, so each is hit). */
static void reader_mark(sluice_message_reader *r)
{
    if (r->off != (uint64_t)r->nmarks * READER_MARK_EVERY)
        return;
    struct reader_mark *m = realloc(r->marks, (r->nmarks + 1) * sizeof *m);
    if (!m)
        return;
    r->marks = m;
    m[r->nmarks++] = (struct reader_mark){r->off, r->out_pos, r->at_bol};
}

/* Reads and un-stuffs the next chunk of the spool into pending. */
static ssize_t reader_fill(sluice_message_reader *r)
{
    reader_mark(r);
    ssize_t n = spool_read(r->spool, r->off, r->chunk, sizeof r->chunk);
    if (n <= 0)
        return n;
    r->off += (uint64_t)n;
    data_unstuff(r->chunk, (size_t)n, &r->at_bol, r->pending);
    return n;
}

ssize_t sluice_message_read(sluice_message_reader *r, void *buf, size_t len)
{
    while (evbuffer_get_length(r->pending) == 0) {
        ssize_t n = reader_fill(r);
        if (n <= 0)
            return n;
    }
    int got = evbuffer_remove(r->pending, buf, len);
    if (got > 0)
        r->out_pos += (uint64_t)got;
    return got;
}

/* Back to the last mark at or before pos (the start when none). */
static void reader_rewind(sluice_message_reader *r, uint64_t pos)
{
    struct reader_mark m = {0, 0, true};
    for (size_t i = 0; i < r->nmarks && r->marks[i].out_pos <= pos; i++)
        m = r->marks[i];
    evbuffer_drain(r->pending, evbuffer_get_length(r->pending));
    r->off = m.off;
    r->out_pos = m.out_pos;
    r->at_bol = m.at_bol;
}

/* Moves forward to pos without copying out what lies before it. */
static int reader_skip_to(sluice_message_reader *r, uint64_t pos)
{
    while (r->out_pos < pos) {
        size_t have = evbuffer_get_length(r->pending);
        if (have == 0) {
            ssize_t n = reader_fill(r);
            if (n <= 0)
                return (int)n;
            continue;
        }
        size_t step = pos - r->out_pos < have ? (size_t)(pos - r->out_pos) : have;
        evbuffer_drain(r->pending, step);
        r->out_pos += step;
    }
    return 1;
}

ssize_t sluice_message_pread(sluice_message_reader *r, void *buf, size_t len, uint64_t off)
{
    if (off < r->out_pos)
        reader_rewind(r, off);
    int rc = reader_skip_to(r, off);
    if (rc <= 0)
        return rc;
    size_t done = 0;
    while (done < len) {
        ssize_t n = sluice_message_read(r, (char *)buf + done, len - done);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

/* The spool's size less the dots stuffed at line starts, counted in one pass
 * over the spool with a cursor of its own. */
int64_t sluice_message_length(sluice_message_reader *r)
{
    if (r->length >= 0)
        return r->length;
    uint64_t off = 0, dots = 0;
    bool at_bol = true;
    for (;;) {
        ssize_t n = spool_read(r->spool, off, r->chunk, sizeof r->chunk);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        for (size_t i = 0; i < (size_t)n;) {
            if (at_bol && r->chunk[i] == '.')
                dots++;
            const char *lf = memchr(r->chunk + i, '\n', (size_t)n - i);
            at_bol = lf != NULL;
            i = lf ? (size_t)(lf - r->chunk) + 1 : (size_t)n;
        }
        off += (uint64_t)n;
    }
    /* The chunk served as scratch: the stream cursor keeps its bytes in
     * pending, so its position is untouched. */
    r->length = (int64_t)(off - dots);
    return r->length;
}

void sluice_message_close(sluice_message_reader *r)
{
    if (!r)
        return;
    spool_free(r->spool);
    evbuffer_free(r->pending);
    free(r->marks);
    free(r);
}

/* ---- changes ------------------------------------------------------------------ */

static bool msg_valid_name(const char *name)
{
    if (!name || !*name || strlen(name) > 200)
        return false;
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || *p == ':')
            return false;
    return true;
}

/* A value may fold ("\r\n" + SP/TAB) but holds no other CR or LF. */
static bool msg_valid_value(const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\r') {
            if (p[1] != '\n' || (p[2] != ' ' && p[2] != '\t'))
                return false;
            p++;
        } else if (*p == '\n' || *p == '\0') {
            return false;
        }
    }
    return strlen(v) < 8192;
}

int sluice_header_add(sluice_session *ss, const char *name, const char *value)
{
    struct session *s = S(ss);
    struct message_info *m = s->msg;
    if (!m || !msg_valid_name(name) || !value || !msg_valid_value(value) ||
        m->nadds >= HEADER_MAX_ADDS)
        return -1;
    size_t add = strlen(name) + strlen(value) + 4;
    char *n = realloc(m->adds, m->adds_len + add + 1);
    if (!n)
        return -1;
    m->adds = n;
    /* A field name never starts with '.', so no stuffing is needed. */
    m->adds_len += (size_t)snprintf(n + m->adds_len, add + 1, "%s: %s\r\n", name, value);
    m->nadds++;
    m->changed = true;
    return 0;
}

int sluice_header_remove(sluice_session *ss, const char *name, int idx)
{
    struct message_info *m = S(ss)->msg;
    if (!m || !msg_valid_name(name))
        return -1;
    m->removes = true;
    if (m->truncated)
        m->changed = true; /* the field may be past the caps: message_rewrite decides */
    int seen = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (strcasecmp(m->fields[i].name, name) != 0)
            continue;
        if (idx < 0 || seen == idx) {
            m->fields[i].removed = true;
            m->changed = true;
        }
        seen++;
    }
    return 0;
}

static bool msg_removes_any(const struct message_info *m)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->fields[i].removed)
            return true;
    return m->removes;
}

int message_rewrite(struct session *s, struct evbuffer *prefix, uint64_t *body_offset)
{
    struct message_info *m = s->msg;
    if (!m || !m->changed)
        return 0;
    /* Fields past the caps were never seen: a field a plugin removes (one
     * the client forged, vouching for a check) may be among them. */
    if (m->truncated && msg_removes_any(m))
        return -2;
    if (evbuffer_add(prefix, m->adds ? m->adds : "", m->adds_len) < 0)
        return -1;
    for (size_t i = 0; i < m->n; i++) {
        if (m->fields[i].removed)
            continue;
        char *raw = malloc((size_t)m->fields[i].len);
        if (!raw)
            return -1;
        ssize_t got = spool_read(s->spool, m->fields[i].off, raw, (size_t)m->fields[i].len);
        int rc = got == (ssize_t)m->fields[i].len ? evbuffer_add(prefix, raw, (size_t)got) : -1;
        free(raw);
        if (rc < 0)
            return -1;
    }
    *body_offset = m->header_end;
    return 1;
}
