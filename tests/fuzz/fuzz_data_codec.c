/* DATA decoding: split invariance, canonical output, no smuggled end of data,
 * stuff/unstuff round trip. The first byte picks the split points. */
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

static struct result decode(const char *in, size_t len, size_t step, uint64_t limit)
{
    struct data_decoder d;
    struct result r = {evbuffer_new(), 0, 0, false, false, false, false};
    data_decoder_init(&d, BARE_NEWLINE_NORMALIZE);
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = 1 + data[0] % 16;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;

    struct result whole = decode(in, len, len ? len : 1, UINT64_MAX);
    struct result split = decode(in, len, step, UINT64_MAX);
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
