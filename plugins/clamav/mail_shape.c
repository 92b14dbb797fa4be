/* Is a message single-part plain text with nothing for libclamav's mail
 * parser to decode? See mail_shape.h for why it matters.
 *
 * The rules lean one way: a false "MIME" costs a slower scan, a false
 * "plain" would cost a scan that misses what the parser would have decoded.
 * So every shape not recognised as plain is MIME, and the marks the parser
 * reacts to are looked for anywhere in the body, not only where the parser
 * would look. */
#include "mail_shape.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes kept from one read to the next, so that a mark cut by a read is
 * seen whole: longer than any mark plus the blanks a "begin" may follow. */
#define CARRY 256
#define LEAD_BLANKS_MAX (CARRY - 16)
/* Bytes kept before where a round starts: longer than any mark. */
#define BACK 16
#define BUF_SIZE MAIL_SHAPE_HEADER_MAX

#if BUF_SIZE < 2 * (CARRY + BACK)
#error "MAIL_SHAPE_HEADER_MAX must be at least twice CARRY"
#endif

struct reader {
    mail_shape_pread_fn pread;
    void *handle;
    uint64_t off;
    bool eof;
};

struct verdict {
    char *why;
    size_t whylen;
};

static enum mail_shape mime(struct verdict *v, const char *why)
{
    snprintf(v->why, v->whylen, "%s", why);
    return MAIL_SHAPE_MIME;
}

/* Fills buf with up to want bytes; fewer only at the end (eof set). */
static ssize_t fill(struct reader *rd, unsigned char *buf, size_t want)
{
    size_t got = 0;
    while (got < want) {
        ssize_t n = rd->pread(rd->handle, buf + got, want - got, rd->off);
        if (n < 0)
            return -1;
        if (n == 0) {
            rd->eof = true;
            break;
        }
        got += (size_t)n;
        rd->off += (uint64_t)n;
    }
    return (ssize_t)got;
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Does p (n bytes, NULs allowed) start with lit, ignoring ASCII case? */
static bool prefix_ci(const unsigned char *p, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (n < m)
        return false;
    for (size_t i = 0; i < m; i++)
        if (lower(p[i]) != (unsigned char)lit[i])
            return false;
    return true;
}

static bool equal_ci(const unsigned char *p, size_t n, const char *lit)
{
    return n == strlen(lit) && prefix_ci(p, n, lit);
}

static bool contains_ci(const unsigned char *p, size_t n, const char *lit)
{
    for (size_t i = 0; i < n; i++)
        if (prefix_ci(p + i, n - i, lit))
            return true;
    return false;
}

static bool blank(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* ---- the header section --------------------------------------------------------------- */

struct header_state {
    int content_types, encodings;
    bool last_was_encoding; /* a continuation would change its value */
};

static bool value_is_text_plain(const unsigned char *v, size_t n)
{
    while (n && blank(*v))
        v++, n--;
    if (!prefix_ci(v, n, "text/plain"))
        return false;
    return n == 10 || v[10] == ';' || blank(v[10]);
}

/* Not "7bit": libclamav's parser decodes a 7bit body that looks like
 * base64 (found by comparing its verdicts with and without the parser). */
static bool value_is_identity_encoding(const unsigned char *v, size_t n)
{
    while (n && blank(*v))
        v++, n--;
    while (n && blank(v[n - 1]))
        n--;
    return equal_ci(v, n, "8bit") || equal_ci(v, n, "binary");
}

static enum mail_shape continuation_line(const unsigned char *line, size_t n,
                                         struct header_state *h, struct verdict *v)
{
    size_t i = 0;
    while (i < n && blank(line[i]))
        i++;
    /* Some parsers end the header section at a line of blanks. */
    if (i == n)
        return mime(v, "a line of blanks in the header section");
    if (h->last_was_encoding)
        return mime(v, "a folded Content-Transfer-Encoding field");
    if (contains_ci(line, n, "content-"))
        return mime(v, "\"content-\" in a header field");
    return MAIL_SHAPE_PLAIN;
}

static enum mail_shape field_line(const unsigned char *line, size_t n, struct header_state *h,
                                  struct verdict *v)
{
    size_t name_len = 0;
    while (name_len < n && line[name_len] > ' ' && line[name_len] < 0x7f && line[name_len] != ':')
        name_len++;
    if (name_len == 0 || name_len == n || line[name_len] != ':')
        return mime(v, "a header line that is not a field");
    const unsigned char *value = line + name_len + 1;
    size_t value_len = n - name_len - 1;
    h->last_was_encoding = false;
    if (equal_ci(line, name_len, "content-type")) {
        if (++h->content_types > 1)
            return mime(v, "two Content-Type fields");
        if (!value_is_text_plain(value, value_len))
            return mime(v, "Content-Type is not text/plain");
    } else if (equal_ci(line, name_len, "content-transfer-encoding")) {
        if (++h->encodings > 1)
            return mime(v, "two Content-Transfer-Encoding fields");
        if (!value_is_identity_encoding(value, value_len))
            return mime(v, "Content-Transfer-Encoding is not 8bit or binary");
        h->last_was_encoding = true;
        return MAIL_SHAPE_PLAIN;
    } else if (prefix_ci(line, name_len, "content-") &&
               !equal_ci(line, name_len, "content-language")) {
        return mime(v, "a Content- field other than Type, Transfer-Encoding or Language");
    }
    if (contains_ci(value, value_len, "content-"))
        return mime(v, "\"content-\" in a header field");
    return MAIL_SHAPE_PLAIN;
}

static enum mail_shape header_line(const unsigned char *line, size_t n, struct header_state *h,
                                   struct verdict *v)
{
    for (size_t i = 0; i < n; i++)
        if ((line[i] < ' ' && line[i] != '\t') || line[i] == 0x7f)
            return mime(v, "a control character in the header section");
    return blank(line[0]) ? continuation_line(line, n, h, v) : field_line(line, n, h, v);
}

/* Checks the fields in buf and sets *body to where the body starts (len when
 * the message is all header). */
static enum mail_shape header_section(const unsigned char *buf, size_t len, bool eof,
                                      size_t *body, struct verdict *v)
{
    struct header_state h = {0};
    size_t pos = 0;
    if (len && blank(buf[0]))
        return mime(v, "a message that starts with a blank");
    while (pos < len) {
        const unsigned char *nl = memchr(buf + pos, '\n', len - pos);
        if (!nl && !eof)
            return mime(v, "a header section longer than the shape check reads");
        size_t end = nl ? (size_t)(nl - buf) : len;
        size_t n = end - pos;
        if (n && buf[end - 1] == '\r' && nl)
            n--;
        if (n == 0 && nl) {
            *body = end + 1;
            return MAIL_SHAPE_PLAIN;
        }
        if (n && header_line(buf + pos, n, &h, v) != MAIL_SHAPE_PLAIN)
            return MAIL_SHAPE_MIME;
        pos = nl ? end + 1 : len;
    }
    /* The buffer ended with a whole line: the empty one may still come. */
    if (!eof)
        return mime(v, "a header section longer than the shape check reads");
    *body = len;
    return MAIL_SHAPE_PLAIN;
}

/* ---- the body ----------------------------------------------------------------------------- */

/* Each mark is found by its rarest byte, so that ordinary text is a table
 * lookup per byte: "content-" by its '-', "binhex" by its 'x' (both looked
 * back from), "=ybegin" by its '=' and a "begin" line by the LF before it
 * (both looked forward from). */
enum body_class { BODY_PLAIN, BODY_STOP, BODY_DASH, BODY_X, BODY_EQUALS, BODY_LINE };

static unsigned char body_classes[256];
static pthread_once_t body_classes_once = PTHREAD_ONCE_INIT;

static void body_classes_init(void)
{
    /* Controls other than tab, CR, LF, FF and ESC (ISO-2022 text) mean
     * binary content, which a part file would be typed and unpacked as. */
    for (int c = 0; c < ' '; c++)
        body_classes[c] = BODY_STOP;
    body_classes['\t'] = body_classes['\r'] = body_classes['\f'] = body_classes[0x1b] = BODY_PLAIN;
    body_classes[0x7f] = BODY_STOP;
    body_classes['<'] = BODY_STOP; /* HTML, whose links the parser checks for phishing */
    body_classes['\n'] = BODY_LINE;
    body_classes['-'] = BODY_DASH;
    body_classes['x'] = body_classes['X'] = BODY_X;
    body_classes['='] = BODY_EQUALS;
}

/* A uuencoded block starts a line with "begin"; blanks before it are
 * allowed here although the parser does not, to lean towards MIME. */
static enum mail_shape line_start(const unsigned char *buf, size_t pos, size_t len,
                                  struct verdict *v)
{
    size_t i = pos;
    while (i < len && blank(buf[i])) {
        if (i - pos >= LEAD_BLANKS_MAX)
            return mime(v, "a run of blanks at a line start too long to look past");
        i++;
    }
    if (prefix_ci(buf + i, len - i, "begin "))
        return mime(v, "a uuencoded block (\"begin\" at a line start)");
    return MAIL_SHAPE_PLAIN;
}

/* Does lit end just before buf[i]? */
static bool ends_before(const unsigned char *buf, size_t i, const char *lit, size_t n)
{
    return i >= n && prefix_ci(buf + i - n, n, lit);
}

/* Looks at the marks around buf[from, to): back to buf[0], forward to len. */
static enum mail_shape scan_span(const unsigned char *buf, size_t from, size_t to, size_t len,
                                 struct verdict *v)
{
    for (size_t i = from; i < to; i++) {
        /* The common case as a tight loop, not a switch's jump per byte. */
        while (i < to && body_classes[buf[i]] == BODY_PLAIN)
            i++;
        if (i == to)
            break;
        switch (body_classes[buf[i]]) {
        case BODY_PLAIN:
            break;
        case BODY_STOP:
            return mime(v, buf[i] == '<' ? "'<' in the body (HTML or links)"
                                         : "a control character in the body (binary content)");
        case BODY_DASH:
            if (ends_before(buf, i, "content", 7))
                return mime(v, "a Content- field in the body (an embedded message)");
            break;
        case BODY_X:
            if (ends_before(buf, i, "binhe", 5))
                return mime(v, "a BinHex block");
            break;
        case BODY_EQUALS:
            if (prefix_ci(buf + i + 1, len - i - 1, "ybegin"))
                return mime(v, "a yEnc block");
            break;
        case BODY_LINE:
            if (line_start(buf, i + 1, len, v) != MAIL_SHAPE_PLAIN)
                return MAIL_SHAPE_MIME;
            break;
        }
    }
    return MAIL_SHAPE_PLAIN;
}

/* buf holds len bytes, the body from pos; the rest comes from rd. Each
 * round scans up to CARRY bytes short of the buffer's end (unless it is the
 * message's), so that a forward look sees a mark whole, and keeps BACK
 * bytes before where the next round starts, for a look back. */
static enum mail_shape body(struct reader *rd, unsigned char *buf, size_t len, size_t pos,
                            struct verdict *v)
{
    pthread_once(&body_classes_once, body_classes_init);
    bool first_line = true; /* the body's first line starts at pos */
    for (;;) {
        /* A buffer not at the end is full, so len >= CARRY here. */
        size_t limit = rd->eof ? len : len - CARRY;
        /* Looked at once it has its full look ahead: a header section that
         * ends near the buffer's end leaves it for the next round. */
        if (first_line && pos <= limit) {
            first_line = false;
            if (line_start(buf, pos, len, v) != MAIL_SHAPE_PLAIN)
                return MAIL_SHAPE_MIME;
        }
        if (pos < limit && scan_span(buf, pos, limit, len, v) != MAIL_SHAPE_PLAIN)
            return MAIL_SHAPE_MIME;
        if (rd->eof)
            return MAIL_SHAPE_PLAIN;
        size_t from = pos > limit ? pos : limit;
        size_t back = from < BACK ? from : BACK;
        size_t keep = len - from + back;
        memmove(buf, buf + from - back, keep);
        ssize_t n = fill(rd, buf + keep, BUF_SIZE - keep);
        if (n < 0) {
            snprintf(v->why, v->whylen, "cannot read the message");
            return MAIL_SHAPE_ERROR;
        }
        len = keep + (size_t)n;
        pos = back;
    }
}

enum mail_shape mail_shape_read(mail_shape_pread_fn pread, void *handle, char *why, size_t whylen)
{
    struct verdict v = {why, whylen};
    struct reader rd = {pread, handle, 0, false};
    snprintf(why, whylen, "plain text");
    unsigned char *buf = malloc(BUF_SIZE);
    if (!buf) {
        snprintf(why, whylen, "out of memory");
        return MAIL_SHAPE_ERROR;
    }
    enum mail_shape shape;
    size_t pos = 0;
    ssize_t n = fill(&rd, buf, BUF_SIZE);
    if (n < 0) {
        snprintf(why, whylen, "cannot read the message");
        shape = MAIL_SHAPE_ERROR;
    } else {
        shape = header_section(buf, (size_t)n, rd.eof, &pos, &v);
        if (shape == MAIL_SHAPE_PLAIN)
            shape = body(&rd, buf, (size_t)n, pos, &v);
    }
    free(buf);
    return shape;
}
