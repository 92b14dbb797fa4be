/* DATA decoding: split invariance, the 64-byte block scan against the line
 * walk, the same output as a plain line-by-line model (so the scanner's fast
 * paths cannot drift from the rules), canonical output, no smuggled end of
 * data, stuff/unstuff round trip. The first byte picks the split points, the
 * limit and the bare-newline mode. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "data_codec.h"

struct result {
    struct evbuffer *out;
    size_t consumed;
    uint64_t size;
    bool done, bare, nul, over;
};

static enum bare_newline_mode mode;

static struct result decode(const char *in, size_t len, size_t step, uint64_t limit)
{
    struct data_decoder d;
    struct result r = {evbuffer_new(), 0, 0, false, false, false, false};
    data_decoder_init(&d, mode);
    while (r.consumed < len && !d.done) {
        size_t n = len - r.consumed < step ? len - r.consumed : step;
        size_t used = data_decode(&d, in + r.consumed, n, r.out, limit);
        if (used > n || (!d.done && used != n))
            abort();
        r.consumed += used;
    }
    /* the limit counts content (RFC 1870: unstuffed), never the wire form */
    if (d.out_bytes != evbuffer_get_length(r.out) || data_decoder_size(&d) > limit ||
        d.stuff_dots > d.out_bytes)
        abort();
    r.size = data_decoder_size(&d);
    r.done = d.done;
    r.bare = d.saw_bare_newline;
    r.nul = d.saw_nul;
    r.over = d.over_limit;
    return r;
}

static void check_canonical(const unsigned char *o, size_t n, bool done)
{
    for (size_t i = 0; i < n; i++) {
        bool bol = i == 0 || o[i - 1] == '\n';
        if (o[i] == '\n' && (i == 0 || o[i - 1] != '\r'))
            abort();
        if (o[i] == '\r' && i + 1 < n && o[i + 1] != '\n')
            abort();
        /* a lone dot line in the output would end the data at the backend */
        if (bol && o[i] == '.' && i + 1 < n && o[i + 1] == '\r')
            abort();
    }
    if (done && n > 0 && (n < 2 || o[n - 2] != '\r' || o[n - 1] != '\n'))
        abort();
}

static void check_round_trip(const char *wire, size_t n)
{
    struct evbuffer *content = evbuffer_new(), *again = evbuffer_new();
    bool bol = true;
    data_unstuff(wire, n, &bol, content);
    size_t cn = evbuffer_get_length(content);
    const char *c = (const char *)evbuffer_pullup(content, -1);
    bol = true;
    data_stuff(c, cn, &bol, again);
    if (evbuffer_get_length(again) != n ||
        (n > 0 && memcmp(evbuffer_pullup(again, -1), wire, n) != 0))
        abort();
    evbuffer_free(content);
    evbuffer_free(again);
}

/* The rules of data_codec.h applied a whole line at a time. Returns the
 * bytes consumed; out gets the wire form (at most 2 * len bytes). */
static size_t model(const char *in, size_t len, char *out, size_t *out_len, bool *done,
                    bool *bare)
{
    size_t i = 0, o = 0, line_start = 0;
    bool after_crlf = true;
    *done = *bare = false;
    while (i < len) {
        if (in[i] != '\r' && in[i] != '\n') {
            i++;
            continue;
        }
        bool crlf = in[i] == '\r' && i + 1 < len && in[i + 1] == '\n';
        if (in[i] == '\r' && i + 1 >= len)
            break; /* undecided: the data is unfinished */
        const char *raw = in + line_start;
        size_t raw_len = i - line_start;
        if (after_crlf && crlf && raw_len == 1 && raw[0] == '.') {
            *done = true;
            *out_len = o;
            return i + 2;
        }
        if (after_crlf && raw_len > 0 && raw[0] == '.') {
            raw++;
            raw_len--;
        }
        if (raw_len > 0 && raw[0] == '.')
            out[o++] = '.';
        memcpy(out + o, raw, raw_len);
        o += raw_len;
        out[o++] = '\r';
        out[o++] = '\n';
        *bare |= !crlf;
        after_crlf = crlf;
        i += crlf ? 2 : 1;
        line_start = i;
    }
    *out_len = o;
    return len;
}

static void check_model(const char *in, size_t len, const struct result *whole)
{
    char *want = malloc(2 * len + 2);
    size_t want_len;
    bool done, bare;
    size_t used = model(in, len, want, &want_len, &done, &bare);
    size_t n = evbuffer_get_length(whole->out);
    if (done != whole->done || bare != whole->bare || (done && used != whole->consumed))
        abort();
    /* unfinished data: the model writes complete lines only, the decoder
     * also the start of the last one */
    if (done ? n != want_len : n < want_len)
        abort();
    if (want_len > 0 && memcmp(evbuffer_pullup(whole->out, -1), want, want_len) != 0)
        abort();
    free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = 1 + data[0] % 16;
    mode = data[0] & 0x10 ? BARE_NEWLINE_REJECT : BARE_NEWLINE_NORMALIZE;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;

    struct result whole = decode(in, len, len ? len : 1, UINT64_MAX);
    struct result split = decode(in, len, step, UINT64_MAX);
    /* the 64-byte block scan and the line walk agree byte for byte */
    data_codec_set_wide(false);
    struct result narrow = decode(in, len, step, UINT64_MAX);
    data_codec_set_wide(true);
    if (evbuffer_get_length(narrow.out) != evbuffer_get_length(whole.out) ||
        narrow.consumed != whole.consumed || narrow.done != whole.done ||
        narrow.bare != whole.bare || narrow.nul != whole.nul || narrow.size != whole.size ||
        (evbuffer_get_length(whole.out) > 0 &&
         memcmp(evbuffer_pullup(narrow.out, -1), evbuffer_pullup(whole.out, -1),
                evbuffer_get_length(whole.out)) != 0))
        abort();
    evbuffer_free(narrow.out);
    size_t n = evbuffer_get_length(whole.out);
    if (n != evbuffer_get_length(split.out) || whole.consumed != split.consumed ||
        whole.done != split.done || whole.bare != split.bare || whole.nul != split.nul ||
        whole.size != split.size)
        abort();
    /* a NUL is the message's only if it comes before the end of data */
    if (whole.nul != (memchr(in, '\0', whole.consumed) != NULL))
        abort();
    const unsigned char *o = evbuffer_pullup(whole.out, -1);
    if (n > 0 && memcmp(o, evbuffer_pullup(split.out, -1), n) != 0)
        abort();
    check_canonical(o, n, whole.done);
    check_model(in, len, &whole);
    /* the decoder output of a finished message is a complete wire form */
    if (whole.done)
        check_round_trip((const char *)o, n);

    struct result limited = decode(in, len, step, data[0]);
    if (limited.consumed != whole.consumed || limited.done != whole.done ||
        limited.over != (whole.size > data[0]))
        abort();
    /* within the limit, the limit changes nothing */
    if (!limited.over && (limited.size != whole.size ||
                          evbuffer_get_length(limited.out) != n ||
                          (n > 0 && memcmp(evbuffer_pullup(limited.out, -1), o, n) != 0)))
        abort();
    evbuffer_free(whole.out);
    evbuffer_free(split.out);
    evbuffer_free(limited.out);
    return 0;
}
