/* Backend replies: parse, relay formatting, EHLO keywords. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reply.h"

/* A relayed reply must itself parse, with the same code and line count, and
 * every line must carry an enhanced code of its class. */
static void check_relay(const char *buf, const struct smtp_reply *r)
{
    size_t cap = r->len + 8 * r->nlines + 16;
    char *out = malloc(cap);
    size_t n = reply_format_relay(buf, r, out, cap);
    struct smtp_reply again;
    if (n == 0 || n > cap || reply_parse(out, n, &again) != 1)
        abort();
    if (again.code != r->code || again.nlines != r->nlines || again.len != n)
        abort();
    for (size_t pos = 0; pos < n;) {
        const char *lf = memchr(out + pos, '\n', n - pos);
        size_t line = (size_t)(lf - (out + pos));
        if (line < 5 || out[pos + line - 1] != '\r' ||
            !reply_has_esc(out + pos + 4, line - 5, r->code))
            abort();
        pos += line + 1;
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct smtp_reply r;
    int rc = reply_parse(buf, size, &r);
    if (rc != 1)
        return 0;
    /* RFC 5321's reply-code grammar: 2..5, 0..5, 0..9 */
    if (r.len > size || r.len == 0 || r.nlines == 0 || r.code < 200 || r.code > 599 ||
        (r.code / 10) % 10 > 5)
        abort();
    check_relay(buf, &r);
    struct ehlo_caps caps;
    reply_ehlo_caps(buf, &r, &caps);
    if (caps.size_max < 0)
        abort();
    return 0;
}
