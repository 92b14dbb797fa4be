#include "smtp_cmd.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "ascii.h"

/* RFC 5321 4.5.3.1 */
#define SMTP_MAX_LOCAL 64
#define SMTP_MAX_DOMAIN 255
#define SMTP_MAX_PATH 256
#define SMTP_MAX_LABEL 63
/* RFC 3461 4.4 and 4.2 */
#define SMTP_MAX_ENVID 100
#define SMTP_MAX_ORCPT 500

struct verb_entry {
    enum smtp_verb verb;
    const char *name;
};

static const struct verb_entry verb_table[] = {
    {SMTP_HELO, "HELO"},         {SMTP_EHLO, "EHLO"}, {SMTP_MAIL, "MAIL"},
    {SMTP_RCPT, "RCPT"},         {SMTP_DATA, "DATA"}, {SMTP_RSET, "RSET"},
    {SMTP_NOOP, "NOOP"},         {SMTP_QUIT, "QUIT"}, {SMTP_HELP, "HELP"},
    {SMTP_VRFY, "VRFY"},         {SMTP_EXPN, "EXPN"}, {SMTP_STARTTLS, "STARTTLS"},
    {SMTP_AUTH, "AUTH"},         {SMTP_BDAT, "BDAT"}, {SMTP_XCLIENT, "XCLIENT"},
};

#define NVERBS (sizeof verb_table / sizeof verb_table[0])

static bool is_alpha(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool is_alnum(unsigned char c) { return is_alpha(c) || is_digit(c); }
static bool is_space(unsigned char c) { return c == ' ' || c == '\t'; }

const char *smtp_verb_name(enum smtp_verb verb)
{
    for (size_t i = 0; i < NVERBS; i++) {
        if (verb_table[i].verb == verb)
            return verb_table[i].name;
    }
    return "UNKNOWN";
}

/* Four bytes in one word, letters folded to upper case: a byte folds onto
 * a capital only when it is that letter in either case, so a switch over
 * the four-letter verbs (most of them) matches them exactly. */
#define VERB4(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))

static enum smtp_verb verb_lookup4(const char *w)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 8 | ((unsigned char)w[i] & ~0x20u);
    switch (v) {
    case VERB4('M', 'A', 'I', 'L'): return SMTP_MAIL;
    case VERB4('R', 'C', 'P', 'T'): return SMTP_RCPT;
    case VERB4('D', 'A', 'T', 'A'): return SMTP_DATA;
    case VERB4('R', 'S', 'E', 'T'): return SMTP_RSET;
    case VERB4('Q', 'U', 'I', 'T'): return SMTP_QUIT;
    case VERB4('E', 'H', 'L', 'O'): return SMTP_EHLO;
    case VERB4('H', 'E', 'L', 'O'): return SMTP_HELO;
    case VERB4('N', 'O', 'O', 'P'): return SMTP_NOOP;
    case VERB4('H', 'E', 'L', 'P'): return SMTP_HELP;
    case VERB4('V', 'R', 'F', 'Y'): return SMTP_VRFY;
    case VERB4('E', 'X', 'P', 'N'): return SMTP_EXPN;
    case VERB4('A', 'U', 'T', 'H'): return SMTP_AUTH;
    case VERB4('B', 'D', 'A', 'T'): return SMTP_BDAT;
    default: return SMTP_UNKNOWN;
    }
}

static enum smtp_verb verb_lookup(const char *w, size_t n)
{
    if (n == 4)
        return verb_lookup4(w);
    for (size_t i = 0; i < NVERBS; i++) {
        if (strlen(verb_table[i].name) == n && ascii_caseeq(w, verb_table[i].name, n))
            return verb_table[i].verb;
    }
    return SMTP_UNKNOWN;
}

static bool has_control_byte(const unsigned char *p, size_t len)
{
    /* Eight bytes at a time past words with no byte below 0x20 and none
     * 0x7f (a word that may hold one, a tab included, goes byte by byte). */
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w, del;
        memcpy(&w, p + i, sizeof w);
        del = w ^ (0x7f * ones);
        if ((((w - 0x20 * ones) & ~w) | ((del - ones) & ~del)) & highs)
            break;
    }
    for (; i < len; i++) {
        if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f)
            return true;
    }
    return false;
}

int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *out)
{
    out->verb = SMTP_UNKNOWN;
    out->arg = line + len;
    out->arg_len = 0;
    if (has_control_byte((const unsigned char *)line, len))
        return -1;

    const char *sp = memchr(line, ' ', len);
    size_t wlen = sp ? (size_t)(sp - line) : len;
    out->verb = verb_lookup(line, wlen);

    size_t i = wlen;
    while (i < len && line[i] == ' ')
        i++;
    size_t end = len;
    while (end > i && is_space((unsigned char)line[end - 1]))
        end--;
    out->arg = line + i;
    out->arg_len = end - i;
    return 0;
}

/* ---- addresses ---- */

static bool is_atext(unsigned char c)
{
    if (is_alnum(c))
        return true;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '/': case '=': case '?': case '^': case '_': case '`': case '{':
    case '|': case '}': case '~':
        return true;
    default:
        return false;
    }
}

/* Length of the well-formed UTF-8 sequence at p (0 when malformed). */
static size_t utf8_seq_len(const unsigned char *p, size_t n)
{
    size_t want;
    unsigned min;
    unsigned cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        want = 2, min = 0x80, cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        want = 3, min = 0x800, cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        want = 4, min = 0x10000, cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (n < want)
        return 0;
    for (size_t i = 1; i < want; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return want;
}

/* Scans a run of characters accepted by ok(), plus UTF-8 when allowed.
 * Inlined at each caller so that ok() is a direct, inlined test: through
 * the pointer it was a call per character of every address. */
static inline __attribute__((always_inline)) size_t
scan_run(const unsigned char *p, size_t n, bool (*ok)(unsigned char), bool utf8)
{
    size_t i = 0;
    while (i < n) {
        if (ok(p[i])) {
            i++;
        } else if (utf8 && p[i] >= 0x80) {
            size_t k = utf8_seq_len(p + i, n - i);
            if (k == 0)
                return i;
            i += k;
        } else {
            break;
        }
    }
    return i;
}

/* Dot-string or quoted-string; returns its length, 0 when malformed. */
static size_t scan_local_part(const unsigned char *p, size_t n, bool utf8)
{
    size_t i = 0;
    if (n > 0 && p[0] == '"') {
        for (i = 1; i < n; i++) {
            if (p[i] == '"')
                return i + 1;
            if (p[i] == '\\') {
                if (i + 1 >= n || p[i + 1] < 32 || p[i + 1] > 126)
                    return 0;
                i++;
            } else if (p[i] >= 0x80 && utf8) {
                size_t k = utf8_seq_len(p + i, n - i);
                if (k == 0)
                    return 0;
                i += k - 1;
            } else if (p[i] < 32 || p[i] > 126) {
                return 0;
            }
        }
        return 0;
    }
    for (;;) {
        size_t atom = scan_run(p + i, n - i, is_atext, utf8);
        if (atom == 0)
            return 0;
        i += atom;
        if (i >= n || p[i] != '.')
            return i;
        i++;
    }
}

static bool is_ldh(unsigned char c) { return is_alnum(c) || c == '-'; }

static bool label_valid(const unsigned char *p, size_t n)
{
    return n >= 1 && n <= SMTP_MAX_LABEL && p[0] != '-' && p[n - 1] != '-';
}

/* sub-domain *("." sub-domain); returns its length, 0 when malformed. */
static size_t scan_dot_domain(const unsigned char *p, size_t n, bool utf8)
{
    size_t i = 0;
    for (;;) {
        size_t lab = scan_run(p + i, n - i, is_ldh, utf8);
        if (!label_valid(p + i, lab))
            return 0;
        i += lab;
        if (i >= n || p[i] != '.')
            return i;
        i++;
    }
}

static bool is_dcontent(unsigned char c)
{
    return c >= 33 && c <= 126 && c != '[' && c != ']' && c != '\\';
}

static bool literal_valid(const char *p, size_t n)
{
    char tmp[64];
    struct in6_addr a6;
    if (n == 0 || n >= sizeof tmp)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!is_dcontent((unsigned char)p[i]))
            return false;
    }
    if (n > 5 && ascii_caseeq(p, "IPv6:", 5)) {
        memcpy(tmp, p + 5, n - 5);
        tmp[n - 5] = '\0';
        return inet_pton(AF_INET6, tmp, &a6) == 1;
    }
    if (is_digit((unsigned char)p[0])) {
        memcpy(tmp, p, n);
        tmp[n] = '\0';
        return inet_pton(AF_INET, tmp, &a6) == 1;
    }
    /* General-address-literal: Standardized-tag ":" 1*dcontent */
    const char *colon = memchr(p, ':', n);
    if (colon == NULL || colon == p || colon == p + n - 1)
        return false;
    for (const char *q = p; q < colon; q++) {
        if (!is_ldh((unsigned char)*q))
            return false;
    }
    return true;
}

/* Domain or address literal; returns its length, 0 when malformed. */
static size_t scan_domain(const unsigned char *p, size_t n, bool utf8)
{
    if (n > 0 && p[0] == '[') {
        const unsigned char *close = memchr(p, ']', n);
        if (close == NULL || !literal_valid((const char *)p + 1, (size_t)(close - p) - 1))
            return 0;
        return (size_t)(close - p) + 1;
    }
    return scan_dot_domain(p, n, utf8);
}

/* A-d-l = At-domain *( "," At-domain ) ":"; returns its length, 0 when malformed. */
static size_t scan_source_route(const unsigned char *p, size_t n, bool utf8)
{
    size_t i = 0;
    for (;;) {
        if (i >= n || p[i] != '@')
            return 0;
        i++;
        size_t d = scan_domain(p + i, n - i, utf8);
        if (d == 0)
            return 0;
        i += d;
        if (i < n && p[i] == ':')
            return i + 1;
        if (i >= n || p[i] != ',')
            return 0;
        i++;
    }
}

struct mailbox_scan {
    size_t route_len, local_len, domain_len; /* domain_len 0: no "@domain" */
    size_t total;
};

static enum smtp_path_status scan_mailbox(const unsigned char *p, size_t n, bool utf8,
                                          struct mailbox_scan *m)
{
    size_t i = 0;
    memset(m, 0, sizeof *m);
    if (n > 0 && p[0] == '@') {
        m->route_len = scan_source_route(p, n, utf8);
        if (m->route_len == 0)
            return SMTP_PATH_BAD_ADDRESS;
        i = m->route_len;
    }
    m->local_len = scan_local_part(p + i, n - i, utf8);
    if (m->local_len == 0)
        return SMTP_PATH_BAD_ADDRESS;
    i += m->local_len;
    if (i < n && p[i] == '@') {
        i++;
        m->domain_len = scan_domain(p + i, n - i, utf8);
        if (m->domain_len == 0)
            return SMTP_PATH_BAD_ADDRESS;
        i += m->domain_len;
    }
    m->total = i;
    return SMTP_PATH_OK;
}

/* ---- parameters ---- */

static bool is_value_char(unsigned char c) { return c >= 33 && c <= 126 && c != '='; }

static enum smtp_path_status parse_params(const char *s, size_t n, bool utf8,
                                          struct smtp_path *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] == ' ') {
            i++;
            continue;
        }
        if (out->nparams == SMTP_MAX_PARAMS)
            return SMTP_PATH_TOO_MANY_PARAMS;
        struct smtp_param *prm = &out->params[out->nparams++];
        size_t k = (size_t)is_alnum(p[i]);
        if (k == 0)
            return SMTP_PATH_SYNTAX;
        k += scan_run(p + i + 1, n - i - 1, is_ldh, false);
        prm->key = s + i;
        prm->key_len = k;
        i += k;
        if (i < n && p[i] == '=') {
            i++;
            size_t v = scan_run(p + i, n - i, is_value_char, utf8);
            if (v == 0)
                return SMTP_PATH_SYNTAX;
            prm->value = s + i;
            prm->value_len = v;
            i += v;
        }
        if (i < n && p[i] != ' ')
            return SMTP_PATH_SYNTAX;
    }
    return SMTP_PATH_OK;
}

static bool is_postmaster(const char *p, size_t n)
{
    return n == 10 && ascii_caseeq(p, "postmaster", 10);
}

/* Skips "FROM:" / "TO:" and the tolerated spaces; returns the offset or 0. */
static size_t skip_path_prefix(const char *arg, size_t len, bool is_rcpt)
{
    const char *prefix = is_rcpt ? "TO:" : "FROM:";
    size_t plen = strlen(prefix);
    if (len < plen || !ascii_caseeq(arg, prefix, plen))
        return 0;
    while (plen < len && arg[plen] == ' ')
        plen++;
    return plen;
}

/* Everything between '<' and '>' once the brackets are known to be there. */
static enum smtp_path_status check_mailbox(const char *inner, size_t n, bool is_rcpt,
                                           const struct mailbox_scan *m)
{
    size_t addr_len = n - m->route_len;
    if (n + 2 > SMTP_MAX_PATH || m->local_len > SMTP_MAX_LOCAL ||
        m->domain_len > SMTP_MAX_DOMAIN)
        return SMTP_PATH_TOO_LONG;
    if (m->domain_len == 0 &&
        !(is_rcpt && m->route_len == 0 && is_postmaster(inner, addr_len)))
        return SMTP_PATH_BAD_ADDRESS;
    return SMTP_PATH_OK;
}

enum smtp_path_status smtp_path_parse(const char *arg, size_t len, bool is_rcpt, bool allow_utf8,
                                      struct smtp_path *out)
{
    memset(out, 0, sizeof *out);
    out->addr = "";
    size_t i = skip_path_prefix(arg, len, is_rcpt);
    if (i == 0 || i >= len || arg[i] != '<')
        return SMTP_PATH_SYNTAX;
    i++;
    const char *inner = arg + i;
    size_t inner_max = len - i;
    size_t n = 0;

    if (inner_max > 0 && inner[0] == '>') {
        if (is_rcpt)
            return SMTP_PATH_BAD_ADDRESS;
    } else {
        struct mailbox_scan m;
        enum smtp_path_status st =
            scan_mailbox((const unsigned char *)inner, inner_max, allow_utf8, &m);
        if (st == SMTP_PATH_OK && (m.total >= inner_max || inner[m.total] != '>'))
            st = SMTP_PATH_BAD_ADDRESS;
        if (st != SMTP_PATH_OK)
            return memchr(inner, '>', inner_max) ? st : SMTP_PATH_SYNTAX;
        n = m.total;
        st = check_mailbox(inner, n, is_rcpt, &m);
        if (st != SMTP_PATH_OK)
            return st;
        out->addr = inner + m.route_len;
        out->addr_len = n - m.route_len;
        out->local_len = m.local_len;
        out->source_route = m.route_len > 0;
    }
    if (n >= inner_max || inner[n] != '>')
        return SMTP_PATH_SYNTAX;
    i += n + 1;
    if (i < len && arg[i] != ' ')
        return SMTP_PATH_SYNTAX;
    return parse_params(arg + i, len - i, allow_utf8, out);
}

static bool key_is(const struct smtp_param *prm, const char *name)
{
    return prm->key_len == strlen(name) && ascii_caseeq(prm->key, name, prm->key_len);
}

static bool value_is(const struct smtp_param *prm, const char *name)
{
    return prm->value != NULL && prm->value_len == strlen(name) &&
           ascii_caseeq(prm->value, name, prm->value_len);
}

bool smtp_path_has_smtputf8(const char *arg, size_t len)
{
    struct smtp_path path;
    if (smtp_path_parse(arg, len, false, true, &path) != SMTP_PATH_OK)
        return false;
    for (size_t i = 0; i < path.nparams; i++) {
        if (key_is(&path.params[i], "SMTPUTF8"))
            return true;
    }
    return false;
}

/* RFC 3461 4: xchar is "!" to "~" but "+" and "="; "+" is followed by two
 * upper-case hex digits. */
static bool xtext_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            if (i + 2 >= n)
                return false;
            for (size_t k = 1; k <= 2; k++) {
                unsigned char h = (unsigned char)s[i + k];
                if (!is_digit(h) && !(h >= 'A' && h <= 'F'))
                    return false;
            }
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
    }
    return true;
}

static bool parse_size(const struct smtp_param *prm, int64_t *out)
{
    int64_t v = 0;
    if (prm->value == NULL || prm->value_len == 0 || prm->value_len > 19)
        return false;
    for (size_t i = 0; i < prm->value_len; i++) {
        unsigned char c = (unsigned char)prm->value[i];
        if (!is_digit(c))
            return false;
        if (v > (INT64_MAX - (c - '0')) / 10)
            return false;
        v = v * 10 + (c - '0');
    }
    *out = v;
    return true;
}

static bool copy_value(const struct smtp_param *prm, char *dst, size_t cap)
{
    if (prm->value == NULL || prm->value_len >= cap)
        return false;
    memcpy(dst, prm->value, prm->value_len);
    dst[prm->value_len] = '\0';
    return true;
}

enum mail_param_bit { MP_SIZE = 1, MP_BODY = 2, MP_UTF8 = 4, MP_RET = 8, MP_ENVID = 16 };

static int mail_param_bit(const struct smtp_param *prm)
{
    if (key_is(prm, "SIZE"))
        return MP_SIZE;
    if (key_is(prm, "BODY"))
        return MP_BODY;
    if (key_is(prm, "SMTPUTF8"))
        return MP_UTF8;
    if (key_is(prm, "RET"))
        return MP_RET;
    if (key_is(prm, "ENVID"))
        return MP_ENVID;
    return 0;
}

static bool mail_param_apply(const struct smtp_param *prm, int bit, struct mail_params *out)
{
    switch (bit) {
    case MP_SIZE:
        return parse_size(prm, &out->size);
    case MP_BODY:
        out->body = value_is(prm, "7BIT")       ? SMTP_BODY_7BIT
                    : value_is(prm, "8BITMIME") ? SMTP_BODY_8BITMIME
                                                : SMTP_BODY_UNSET;
        return out->body != SMTP_BODY_UNSET;
    case MP_UTF8:
        out->smtputf8 = true;
        return prm->value == NULL;
    case MP_RET:
        out->ret = value_is(prm, "FULL")   ? SMTP_RET_FULL
                   : value_is(prm, "HDRS") ? SMTP_RET_HDRS
                                           : SMTP_RET_UNSET;
        return out->ret != SMTP_RET_UNSET;
    case MP_ENVID:
        return prm->value != NULL && prm->value_len <= SMTP_MAX_ENVID &&
               xtext_valid(prm->value, prm->value_len) &&
               copy_value(prm, out->envid, sizeof out->envid);
    }
    return false;
}

enum smtp_param_status smtp_mail_params(const struct smtp_path *p, struct mail_params *out)
{
    int seen = 0;
    memset(out, 0, sizeof *out);
    out->size = -1;
    for (size_t i = 0; i < p->nparams; i++) {
        int bit = mail_param_bit(&p->params[i]);
        if (bit == 0)
            return SMTP_PARAM_UNSUPPORTED;
        if ((seen & bit) || !mail_param_apply(&p->params[i], bit, out))
            return SMTP_PARAM_SYNTAX;
        seen |= bit;
    }
    return SMTP_PARAM_OK;
}

static unsigned notify_word(const char *w, size_t n)
{
    static const struct {
        const char *name;
        unsigned bit;
    } words[] = {{"NEVER", SMTP_NOTIFY_NEVER},
                 {"SUCCESS", SMTP_NOTIFY_SUCCESS},
                 {"FAILURE", SMTP_NOTIFY_FAILURE},
                 {"DELAY", SMTP_NOTIFY_DELAY}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (n == strlen(words[i].name) && ascii_caseeq(w, words[i].name, n))
            return words[i].bit;
    }
    return 0;
}

static bool parse_notify(const struct smtp_param *prm, unsigned *out)
{
    unsigned set = 0;
    size_t i = 0;
    if (prm->value == NULL)
        return false;
    while (i <= prm->value_len) {
        const char *w = prm->value + i;
        const char *comma = memchr(w, ',', prm->value_len - i);
        size_t wlen = comma ? (size_t)(comma - w) : prm->value_len - i;
        unsigned bit = notify_word(w, wlen);
        if (bit == 0 || (set & bit))
            return false;
        set |= bit;
        i += wlen + 1;
    }
    if ((set & SMTP_NOTIFY_NEVER) && set != SMTP_NOTIFY_NEVER)
        return false;
    *out = set;
    return true;
}

/* addr-type ";" xtext, e.g. "rfc822;user+40example.org" */
static bool orcpt_valid(const struct smtp_param *prm)
{
    if (prm->value == NULL || prm->value_len > SMTP_MAX_ORCPT)
        return false;
    const char *semi = memchr(prm->value, ';', prm->value_len);
    if (semi == NULL || semi == prm->value)
        return false;
    size_t type_len = (size_t)(semi - prm->value);
    for (size_t i = 0; i < type_len; i++) {
        if (!is_atext((unsigned char)prm->value[i]))
            return false;
    }
    size_t xlen = prm->value_len - type_len - 1;
    return xlen > 0 && xtext_valid(semi + 1, xlen);
}

enum smtp_param_status smtp_rcpt_params(const struct smtp_path *p, struct rcpt_params *out)
{
    bool seen_notify = false, seen_orcpt = false;
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < p->nparams; i++) {
        const struct smtp_param *prm = &p->params[i];
        if (key_is(prm, "NOTIFY")) {
            if (seen_notify || !parse_notify(prm, &out->notify))
                return SMTP_PARAM_SYNTAX;
            seen_notify = true;
        } else if (key_is(prm, "ORCPT")) {
            if (seen_orcpt || !orcpt_valid(prm) || !copy_value(prm, out->orcpt, sizeof out->orcpt))
                return SMTP_PARAM_SYNTAX;
            seen_orcpt = true;
        } else {
            return SMTP_PARAM_UNSUPPORTED;
        }
    }
    return SMTP_PARAM_OK;
}

const char *smtp_addr_domain(const char *addr, size_t len, size_t *dlen)
{
    for (size_t i = len; i > 0; i--) {
        if (addr[i - 1] == '@') {
            *dlen = len - i;
            return addr + i;
        }
        /* A domain never holds a quote: the '@' is inside a quoted local part. */
        if (addr[i - 1] == '"')
            break;
    }
    *dlen = 0;
    return "";
}

int smtp_xtext_encode(const char *in, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = c >= 33 && c <= 126 && c != '+' && c != '=';
        size_t need = plain ? 1 : 3;
        if (outlen - n <= need || outlen <= n)
            return -1;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '+';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 0xf];
        }
    }
    if (outlen == 0 || n > INT_MAX)
        return -1;
    out[n] = '\0';
    return (int)n;
}

bool smtp_helo_valid(const char *arg, size_t len)
{
    if (len == 0 || len > SMTP_MAX_DOMAIN)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)arg[i];
        if (c < 33 || c > 126)
            return false;
    }
    /* Clients send all sorts of names; only an address literal is held to its grammar. */
    if (arg[0] == '[' || memchr(arg, '[', len) || memchr(arg, ']', len))
        return arg[0] == '[' && arg[len - 1] == ']' && literal_valid(arg + 1, len - 2);
    return true;
}
