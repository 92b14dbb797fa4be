#include "reply.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "linebuf.h"

struct reply_entry {
    const char *text;
    size_t len;
};

#define REPLY(s) {s "\r\n", sizeof(s "\r\n") - 1}

/* The greeting and the EHLO reply are built by the session; everything else
 * sluice says itself is here, each with its enhanced status code. */
static const struct reply_entry reply_table[R_COUNT] = {
    [R_GENERIC_OK] = REPLY("250 2.0.0 Ok"),
    [R_MAIL_OK] = REPLY("250 2.1.0 Ok"),
    [R_RCPT_OK] = REPLY("250 2.1.5 Ok"),
    [R_RSET_OK] = REPLY("250 2.0.0 Ok"),
    [R_NOOP_OK] = REPLY("250 2.0.0 Ok"),
    [R_DATA_GO] = REPLY("354 End data with <CR><LF>.<CR><LF>"),
    [R_BYE] = REPLY("221 2.0.0 Bye"),
    [R_HELP] = REPLY("214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY"),
    [R_VRFY] = REPLY("252 2.5.0 Cannot VRFY user, but will accept message"),
    [R_REJECT_CONNECT] = REPLY("554 5.7.1 Rejected"),
    [R_REJECT] = REPLY("550 5.7.1 Rejected"),
    [R_REJECT_DATA] = REPLY("554 5.7.1 Rejected"),
    [R_REJECT_VIRUS] = REPLY("554 5.7.0 Rejected: message contains a virus"),
    [R_TEMPFAIL] = REPLY("451 4.7.1 Try again later"),
    [R_TEMPFAIL_CONNECT] = REPLY("421 4.7.0 Try again later, closing"),
    [R_DISCONNECT] = REPLY("421 4.7.0 closing"),
    [R_LIMIT] = REPLY("421 4.7.0 Too many connections, closing"),
    [R_TOO_MANY_ERRORS] = REPLY("421 4.7.0 Too many errors, closing"),
    [R_RELAY_DENIED] = REPLY("550 5.7.1 Relay access denied"),
    [R_ROUTE_CONFLICT] =
        REPLY("452 4.5.3 Recipient of another route, send it again in a new transaction"),
    [R_TOO_MANY_RCPTS] = REPLY("452 4.5.3 Too many recipients"),
    [R_BACKEND_UNREACHABLE] = REPLY("451 4.4.1 Backend unreachable, try again later"),
    [R_BACKEND_LOST] = REPLY("451 4.4.2 Backend connection lost, try again later"),
    [R_POOL_FULL] = REPLY("451 4.4.5 Server busy, try again later"),
    [R_BACKEND_HANDSHAKE] = REPLY("451 4.4.0 Backend not ready for this session, try again later"),
    [R_INTERNAL] = REPLY("451 4.3.0 Internal error, try again later"),
    [R_INTERNAL_CLOSE] = REPLY("421 4.3.0 Internal error, try again later, closing"),
    [R_NO_VALID_RCPT] = REPLY("554 5.5.1 No valid recipients"),
    [R_LINE_TOO_LONG] = REPLY("500 5.5.2 Line too long"),
    [R_BAD_BYTES] = REPLY("500 5.5.2 Syntax error (NUL or control byte)"),
    [R_UNKNOWN_CMD] = REPLY("500 5.5.1 Command unrecognized"),
    [R_BAD_SEQUENCE] = REPLY("503 5.5.1 Bad sequence of commands"),
    [R_NEED_HELO] = REPLY("503 5.5.1 Send HELO/EHLO first"),
    [R_NESTED_MAIL] = REPLY("503 5.5.1 Sender already specified"),
    [R_NEED_MAIL] = REPLY("503 5.5.1 Need MAIL before RCPT"),
    [R_SYNTAX_HELO] = REPLY("501 5.5.4 Syntax: EHLO hostname"),
    [R_SYNTAX_PATH] = REPLY("501 5.5.4 Syntax error in parameters"),
    [R_BAD_ADDRESS] = REPLY("501 5.1.3 Bad address syntax"),
    [R_SYNTAX_NOARGS] = REPLY("501 5.5.4 No arguments allowed"),
    [R_PARAM_UNSUPPORTED] = REPLY("555 5.5.4 Unsupported parameter"),
    [R_NOT_IMPLEMENTED] = REPLY("502 5.5.1 Command not implemented"),
    [R_TOO_BIG] = REPLY("552 5.3.4 Message too big"),
    [R_HEADER_TOO_BIG] = REPLY("552 5.3.4 Message header too big"),
    [R_NEED_SMTPUTF8] = REPLY("550 5.6.7 SMTPUTF8 is not supported for this recipient"),
    [R_NEED_8BITMIME] = REPLY("550 5.6.3 8BITMIME is not supported for this recipient"),
    [R_BARE_NEWLINE] = REPLY("550 5.5.2 Message contains bare CR or LF"),
    [R_NUL_IN_DATA] = REPLY("554 5.6.0 Message contains NUL bytes"),
    [R_IDLE_TIMEOUT] = REPLY("421 4.4.2 Timeout, closing"),
    [R_DATA_TIMEOUT] = REPLY("421 4.4.2 Timeout during data transfer, closing"),
    [R_SHUTDOWN] = REPLY("421 4.3.2 Service shutting down"),
    [R_NO_DESCRIPTORS] = REPLY("421 4.3.2 Too busy, try again later, closing"),
    [R_CHECK_EOM] = REPLY("250 2.0.0 Ok (check mode: not relayed)"),
    [R_TLS_GO] = REPLY("220 2.0.0 Ready to start TLS"),
    [R_TLS_UNAVAILABLE] = REPLY("454 4.7.0 TLS not available due to temporary reason"),
};

/* The text before and after the name each carries. */
static const struct {
    const char *before, *after;
} reply_fmt_table[RF_COUNT] = {
    [RF_GREETING] = {"220 ", " ESMTP"},
    [RF_HELO] = {"250 ", ""},
    [RF_CHECK_RCPT] = {"250 2.1.5 Ok (check mode: pool ", ")"},
};

/* An id outside the table still yields a well-formed reply. */
static const struct reply_entry *reply_entry(enum reply_id id)
{
    if ((unsigned)id >= R_COUNT || reply_table[id].text == NULL)
        return &reply_table[R_INTERNAL];
    return &reply_table[id];
}

const char *reply_text(enum reply_id id) { return reply_entry(id)->text; }

size_t reply_len(enum reply_id id) { return reply_entry(id)->len; }

int reply_code(enum reply_id id)
{
    const char *t = reply_entry(id)->text;
    return (t[0] - '0') * 100 + (t[1] - '0') * 10 + (t[2] - '0');
}

/* snprintf's result as a length: what was written, ending in CRLF even
 * when cut. */
static size_t reply_fit(int n, char *out, size_t cap)
{
    if (n < 0 || cap < 3)
        return 0;
    if ((size_t)n < cap)
        return (size_t)n;
    memcpy(out + cap - 3, "\r\n", 3);
    return cap - 1;
}

/* Replies every connection gets (the greeting, EHLO's) are built by
 * copies: through printf they were 2,000 instructions a connection. */
size_t reply_format(enum reply_fmt id, const char *arg, char *out, size_t cap)
{
    if ((unsigned)id >= RF_COUNT)
        id = RF_GREETING;
    if (cap < 3)
        return 0;
    /* What does not fit is cut, and the line still ends in CRLF. */
    struct linebuf lb = linebuf_on(out, cap - 3);
    linebuf_str(&lb, reply_fmt_table[id].before);
    linebuf_cut(&lb, arg ? arg : "");
    linebuf_cut(&lb, reply_fmt_table[id].after);
    memcpy(out + lb.len, "\r\n", 3);
    return lb.len + 2;
}

size_t reply_ehlo(const struct reply_ehlo_offer *o, char *out, size_t cap)
{
    if (cap == 0)
        return 0;
    struct linebuf lb = linebuf_on(out, cap - 1);
    linebuf_str(&lb, "250-");
    linebuf_str(&lb, o->hostname);
    linebuf_str(&lb, "\r\n250-PIPELINING\r\n250-SIZE ");
    linebuf_u64(&lb, o->size_max > 0 ? (uint64_t)o->size_max : 0);
    linebuf_str(&lb, "\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n");
    if (o->starttls)
        linebuf_str(&lb, "250-STARTTLS\r\n");
    if (o->smtputf8)
        linebuf_str(&lb, "250-SMTPUTF8\r\n");
    linebuf_str(&lb, "250 DSN\r\n");
    if (lb.overflow)
        return 0;
    out[lb.len] = '\0';
    return lb.len;
}

size_t reply_verdict(enum reply_id def, int code, const char *esc, const char *text, char *out,
                     size_t cap)
{
    int dcode = reply_code(def);
    if (code == 0 && (!text || !text[0]))
        return reply_fit(snprintf(out, cap, "%s", reply_text(def)), out, cap);
    int cls = dcode / 100;
    if (code / 100 != cls || dcode == 421)
        code = dcode;
    char e[16];
    if (esc && esc[0] - '0' == cls && strlen(esc) < sizeof e)
        snprintf(e, sizeof e, "%s", esc);
    else
        snprintf(e, sizeof e, "%d.7.1", cls);
    if (!text || !text[0])
        text = cls == 5 ? "Rejected" : "Try again later";
    return reply_fit(snprintf(out, cap, "%d %s %s\r\n", code, e, text), out, cap);
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* One line of a reply: where it starts, its length without the line ending,
 * and the length of the line ending (1 or 2). */
struct reply_line {
    const char *start;
    size_t text_end; /* offset of CR or LF */
    size_t total;    /* including the ending */
};

/* Checks what is known of a line (complete or not) for code shape and
 * consistency with the first line. Returns the code, or -1. */
static int reply_line_code(const char *p, size_t n, int first_code)
{
    size_t known = n < 3 ? n : 3;
    for (size_t i = 0; i < known; i++) {
        if (!is_digit(p[i]))
            return -1;
    }
    /* RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39 */
    if (n >= 1 && (p[0] < '2' || p[0] > '5'))
        return -1;
    if (n >= 2 && p[1] > '5')
        return -1;
    if (n < 3)
        return 0;
    int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (first_code != 0 && code != first_code)
        return -1;
    if (n >= 4 && p[3] != ' ' && p[3] != '-' && p[3] != '\r' && p[3] != '\n')
        return -1;
    return code;
}

/* Returns 1 when a whole line was found, 0 when incomplete, -1 on a violation. */
static int reply_next_line(const char *p, size_t n, struct reply_line *line)
{
    size_t window = n < REPLY_MAX_LINE ? n : REPLY_MAX_LINE;
    const char *lf = memchr(p, '\n', window);
    size_t upto = lf ? (size_t)(lf - p) : window;
    const char *nul = memchr(p, '\0', upto);
    const char *cr = memchr(p, '\r', upto);
    if (nul != NULL)
        return -1;
    /* A CR is only allowed right before the LF. */
    if (cr != NULL && (lf == NULL ? cr != p + n - 1 : cr != lf - 1))
        return -1;
    if (lf == NULL)
        return n >= REPLY_MAX_LINE ? -1 : 0;
    line->start = p;
    line->text_end = cr != NULL ? (size_t)(cr - p) : upto;
    line->total = upto + 1;
    return 1;
}

int reply_parse(const char *buf, size_t len, struct smtp_reply *out)
{
    size_t pos = 0, nlines = 0;
    int code = 0;

    while (pos < len) {
        struct reply_line line;
        int line_code = reply_line_code(buf + pos, len - pos, code);
        if (line_code < 0)
            return -1;
        int rc = reply_next_line(buf + pos, len - pos, &line);
        if (rc < 0)
            return -1;
        if (rc == 0)
            return pos + (len - pos) >= REPLY_MAX_LEN ? -1 : 0;
        if (line.text_end < 3)
            return -1;
        code = line_code;
        pos += line.total;
        nlines++;
        if (pos > REPLY_MAX_LEN)
            return -1;
        if (line.text_end == 3 || buf[pos - line.total + 3] != '-') {
            out->code = code;
            out->len = pos;
            out->nlines = nlines;
            return 1;
        }
    }
    return 0;
}

bool reply_has_esc(const char *text, size_t len, int code)
{
    size_t i = 0;
    if (len < 5 || text[0] != (char)('0' + code / 100) || text[1] != '.')
        return false;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t digits = 0;
        while (i < len && is_digit(text[i]) && digits < 4) {
            i++;
            digits++;
        }
        if (digits < 1 || digits > 3)
            return false;
        if (part == 0) {
            if (i >= len || text[i] != '.')
                return false;
            i++;
        }
    }
    return i == len || text[i] == ' ' || text[i] == '\t';
}

bool reply_esc_valid(const char *esc)
{
    size_t len = strlen(esc);
    if (len == 0 || (esc[0] != '2' && esc[0] != '4' && esc[0] != '5'))
        return false;
    return strspn(esc, "0123456789.") == len && reply_has_esc(esc, len, (esc[0] - '0') * 100);
}

/* Calls back for each line of a complete reply: text after "ddd" + separator. */
struct reply_iter {
    const char *buf;
    size_t len, pos;
};

static bool reply_iter_next(struct reply_iter *it, const char **text, size_t *text_len,
                            bool *has_sep)
{
    if (it->pos >= it->len)
        return false;
    const char *p = it->buf + it->pos;
    size_t n = it->len - it->pos;
    const char *lf = memchr(p, '\n', n);
    size_t line_len = lf ? (size_t)(lf - p) : n;
    size_t consumed = lf ? line_len + 1 : n;
    if (line_len > 0 && p[line_len - 1] == '\r')
        line_len--;
    *has_sep = line_len >= 4;
    *text = *has_sep ? p + 4 : p + line_len;
    *text_len = *has_sep ? line_len - 4 : 0;
    it->pos += consumed;
    return true;
}

/* Code, separator, "C.0.0 " and CRLF around the text stay within a line. */
#define REPLY_RELAY_TEXT_MAX (REPLY_MAX_LINE - 3 - 1 - 6 - 2)

static size_t reply_relay_line(char *out, const char *code3, char sep, const char *text,
                               size_t text_len, int code)
{
    size_t n = 0;
    memcpy(out, code3, 3);
    n += 3;
    out[n++] = sep;
    if (!reply_has_esc(text, text_len, code)) {
        out[n++] = (char)('0' + code / 100);
        memcpy(out + n, ".0.0", 4);
        n += 4;
        if (text_len > 0)
            out[n++] = ' ';
    }
    memcpy(out + n, text, text_len);
    n += text_len;
    out[n++] = '\r';
    out[n++] = '\n';
    return n;
}

size_t reply_format_relay(const char *buf, const struct smtp_reply *r, char *out, size_t outlen)
{
    struct reply_iter it = {buf, r->len, 0};
    const char *text;
    size_t text_len, n = 0, line_no = 0;
    bool has_sep;

    while (reply_iter_next(&it, &text, &text_len, &has_sep)) {
        const char *line_start = has_sep ? text - 4 : text - 3;
        /* The enhanced code added must not push a line over what a parser
         * takes (ours included): the longest text loses its tail instead. */
        if (text_len > REPLY_RELAY_TEXT_MAX)
            text_len = REPLY_RELAY_TEXT_MAX;
        /* Worst case per line: separator, "C.0.0 " and a CR are added. */
        if (outlen - n < text_len + 4 + 8)
            return 0;
        line_no++;
        char sep = line_no < r->nlines ? '-' : ' ';
        n += reply_relay_line(out + n, line_start, sep, text, text_len, r->code);
    }
    return n;
}

static bool word_is(const char *w, size_t wlen, const char *name)
{
    return wlen == strlen(name) && strncasecmp(w, name, wlen) == 0;
}

static size_t word_len(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && p[i] != ' ' && p[i] != '\t')
        i++;
    return i;
}

static long long ehlo_size_value(const char *p, size_t n)
{
    long long v = 0;
    if (n == 0 || n > 18)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(p[i]))
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static void ehlo_xclient_attrs(const char *p, size_t n, struct ehlo_caps *c)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        size_t w = word_len(p + i, n - i);
        const char *a = p + i;
        c->xclient_addr |= word_is(a, w, "ADDR");
        c->xclient_port |= word_is(a, w, "PORT");
        c->xclient_name |= word_is(a, w, "NAME");
        c->xclient_helo |= word_is(a, w, "HELO");
        c->xclient_proto |= word_is(a, w, "PROTO");
        c->xclient_login |= word_is(a, w, "LOGIN");
        c->xclient_destaddr |= word_is(a, w, "DESTADDR");
        c->xclient_destport |= word_is(a, w, "DESTPORT");
        i += w;
    }
}

static void ehlo_keyword(const char *text, size_t len, struct ehlo_caps *c)
{
    size_t w = word_len(text, len);
    const char *rest = text + w;
    size_t rest_len = len - w;
    while (rest_len > 0 && (*rest == ' ' || *rest == '\t')) {
        rest++;
        rest_len--;
    }
    c->pipelining |= word_is(text, w, "PIPELINING");
    c->eightbitmime |= word_is(text, w, "8BITMIME");
    c->smtputf8 |= word_is(text, w, "SMTPUTF8");
    c->dsn |= word_is(text, w, "DSN");
    c->starttls |= word_is(text, w, "STARTTLS");
    c->chunking |= word_is(text, w, "CHUNKING");
    if (word_is(text, w, "SIZE")) {
        c->size = true;
        c->size_max = ehlo_size_value(rest, word_len(rest, rest_len));
    }
    if (word_is(text, w, "XCLIENT")) {
        c->xclient = true;
        ehlo_xclient_attrs(rest, rest_len, c);
    }
}

void reply_ehlo_caps(const char *buf, const struct smtp_reply *r, struct ehlo_caps *out)
{
    struct reply_iter it = {buf, r->len, 0};
    const char *text;
    size_t text_len;
    bool has_sep;

    memset(out, 0, sizeof *out);
    if (!reply_iter_next(&it, &text, &text_len, &has_sep))
        return;
    while (reply_iter_next(&it, &text, &text_len, &has_sep))
        ehlo_keyword(text, text_len, out);
}
