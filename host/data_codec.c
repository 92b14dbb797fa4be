#include "data_codec.h"

#include <stdatomic.h>
#include <string.h>
#include <sys/types.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include <event2/buffer.h>

/* Decoder states. The pending ones hold bytes already consumed whose meaning
 * depends on what follows: a CR, a '.' at the start of a line that began after
 * CRLF, or that '.' and a CR (the terminator but for its LF). */
enum {
    DS_BOL_CRLF = 0, /* at a line start after CRLF (or right after DATA) */
    DS_BOL_BARE,     /* at a line start after a bare CR or LF */
    DS_MID,          /* inside a line */
    DS_CR,           /* pending "\r" */
    DS_DOT,          /* pending "." */
    DS_DOT_CR,       /* pending ".\r" */
};

/* One call's view: the input, the start of the run of input bytes that go out
 * unchanged, and where the pending bytes began (-1: in an earlier call). */
struct decode_ctx {
    struct data_decoder *d;
    const char *in;
    data_sink_fn sink;
    void *sink_arg;
    uint64_t limit;
    size_t run_start;
    ssize_t pend_at;
    bool wide; /* plain 64-byte blocks are skipped with AVX2 */
};

/* -1: not chosen yet; then whether the CPU has AVX2 (tests may turn it off).
 * Every loop thread may make the first choice: the same one. */
static atomic_int wide_scan = -1;

void data_decoder_init(struct data_decoder *d, enum bare_newline_mode mode)
{
    memset(d, 0, sizeof *d);
    d->mode = mode;
    d->state = DS_BOL_CRLF;
    d->line_after_crlf = true;
}

uint64_t data_decoder_size(const struct data_decoder *d)
{
    return d->out_bytes - d->stuff_dots;
}

/* Wire bytes that may still go out. The limit counts content; every stuffing
 * dot is counted (in stuff_dots) before the bytes holding it are emitted, so
 * the room is never short for a message within the limit. */
static uint64_t emit_room(const struct data_decoder *d, uint64_t limit)
{
    uint64_t wire_cap = limit > UINT64_MAX - d->stuff_dots ? UINT64_MAX : limit + d->stuff_dots;
    return wire_cap > d->out_bytes ? wire_cap - d->out_bytes : 0;
}

/* Counted when the dot is decided on, before the bytes holding it go out;
 * past the limit nothing more goes out, so nothing more is counted (the size
 * then stays at the limit). */
static void count_stuffing_dot(struct data_decoder *d)
{
    if (!d->over_limit)
        d->stuff_dots++;
}

static void emit(struct decode_ctx *c, const char *p, size_t n)
{
    struct data_decoder *d = c->d;
    if (n == 0 || d->over_limit)
        return;
    uint64_t room = emit_room(d, c->limit);
    if (n > room) {
        n = (size_t)room;
        d->over_limit = true;
    }
    if (n == 0)
        return;
    if (c->sink(c->sink_arg, p, n) == 0)
        d->out_bytes += n;
    else
        d->out_failed = true; /* the owner must not send what is left */
}

static void flush_run(struct decode_ctx *c, size_t upto)
{
    if (upto > c->run_start)
        emit(c, c->in + c->run_start, upto - c->run_start);
    c->run_start = upto;
}

/* The pending bytes go out as repl; output resumes verbatim at resume. */
static void pending_replace(struct decode_ctx *c, const char *repl, size_t rlen, size_t resume)
{
    if (c->pend_at >= 0)
        flush_run(c, (size_t)c->pend_at);
    emit(c, repl, rlen);
    c->run_start = resume;
}

/* The pending bytes go out unchanged: a no-op when they are in this input. */
static void pending_keep(struct decode_ctx *c, const char *literal, size_t n, size_t i)
{
    if (c->pend_at < 0) {
        emit(c, literal, n);
        c->run_start = i;
    }
}

static void bare_newline(struct decode_ctx *c)
{
    c->d->saw_bare_newline = true;
    c->d->state = DS_BOL_BARE;
    c->d->line_after_crlf = false;
}

/* The first CR or LF at or after i, or len: one pass for both bytes, 16 at
 * a time where SSE2 is there (every x86-64), so a line costs a few vector
 * compares instead of two memchr calls. */
static size_t find_line_end(const char *in, size_t i, size_t len)
{
#ifdef __SSE2__
    const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    for (; i + 16 <= len; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
        unsigned mask = (unsigned)_mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
        if (mask != 0)
            return i + (size_t)__builtin_ctz(mask);
    }
#endif
    for (; i < len; i++)
        if (in[i] == '\r' || in[i] == '\n')
            return i;
    return len;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DATA_CODEC_WIDE 1
#include <immintrin.h>

/* Bit k of the result: byte k of the 64 bytes in lo, hi equals want. */
#define WIDE_MASK(lo, hi, want)                                                                    \
    ((uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, want)) |                     \
     (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, want)) << 32)

/* Skips whole 64-byte blocks of plain lines from i: every CR followed by
 * its LF inside the block, every LF preceded by its CR, no line starting
 * with '.'. A few compares per block instead of a line end search and its
 * branch per line; a block the test refuses is left to the per-line walk.
 * The block needs one byte after it (a dot after its last LF). */
__attribute__((target("avx2"))) static size_t skip_plain_avx2(const char *in, size_t i,
                                                               size_t len)
{
    const __m256i cr = _mm256_set1_epi8('\r'), lf = _mm256_set1_epi8('\n');
    const __m256i dot = _mm256_set1_epi8('.');
    while (len - i > 64) {
        __m256i lo = _mm256_loadu_si256((const __m256i *)(const void *)(in + i));
        __m256i hi = _mm256_loadu_si256((const __m256i *)(const void *)(in + i + 32));
        uint64_t crs = WIDE_MASK(lo, hi, cr), lfs = WIDE_MASK(lo, hi, lf);
        if ((crs << 1) != lfs || (crs >> 63) != 0)
            break;
        if (lfs != 0) {
            uint64_t dots = WIDE_MASK(lo, hi, dot);
            if (((lfs << 1) & dots) != 0 || ((lfs >> 63) != 0 && in[i + 64] == '.'))
                break;
        }
        i += 64;
    }
    return i;
}
#endif

/* After a plain line the next ones are likely plain too: skip them in
 * blocks where the CPU allows. Only there, so input full of bare newlines
 * or dot lines never pays a block test per line. The state stays as the
 * plain line left it: every line skipped ends in CRLF. */
static size_t skip_plain_blocks(struct decode_ctx *c, size_t i, size_t len)
{
#ifdef DATA_CODEC_WIDE
    if (c->wide && len - i > 64)
        i = skip_plain_avx2(c->in, i, len);
#else
    (void)c;
    (void)len;
#endif
    return i;
}

void data_codec_set_wide(bool on)
{
#ifdef DATA_CODEC_WIDE
    atomic_store_explicit(&wide_scan, on && __builtin_cpu_supports("avx2"), memory_order_relaxed);
#else
    (void)on;
    atomic_store_explicit(&wide_scan, 0, memory_order_relaxed);
#endif
}

/* A bare LF at `at`: written as CRLF, and the next line is plain body text. */
static size_t decode_bare_lf(struct decode_ctx *c, size_t at)
{
    flush_run(c, at);
    emit(c, "\r\n", 2);
    c->run_start = at + 1;
    bare_newline(c);
    return at + 1;
}

/* Inside a line, the common case at memchr speed: from one line end to the
 * next, a CRLF followed by anything but '.' starts a line that needs no
 * change, so the run of verbatim bytes just grows, line after line, with no
 * state change. Everything else (a bare LF or CR, a dot at a line start, a
 * CR or CRLF at the end of the input) goes to the state machine. Returns the
 * new index. */
static size_t decode_mid(struct decode_ctx *c, size_t i, size_t len)
{
    const char *in = c->in;
    for (;;) {
        size_t eol = find_line_end(in, i, len);
        if (eol == len)
            return len;
        if (in[eol] == '\n')
            return decode_bare_lf(c, eol);
        if (eol + 2 >= len || in[eol + 1] != '\n' || in[eol + 2] == '.') {
            c->d->state = DS_CR;
            c->pend_at = (ssize_t)eol;
            return eol + 1;
        }
        c->d->line_after_crlf = true;
        i = skip_plain_blocks(c, eol + 2, len);
    }
}

static size_t decode_cr(struct decode_ctx *c, size_t i)
{
    if (c->in[i] == '\n') {
        pending_keep(c, "\r", 1, i);
        c->d->state = DS_BOL_CRLF;
        c->d->line_after_crlf = true;
        return i + 1;
    }
    pending_replace(c, "\r\n", 2, i);
    bare_newline(c);
    return i;
}

static size_t decode_dot(struct decode_ctx *c, size_t i)
{
    switch (c->in[i]) {
    case '.':
        count_stuffing_dot(c->d);
        pending_keep(c, ".", 1, i);
        c->d->state = DS_MID;
        return i + 1;
    case '\r':
        c->d->state = DS_DOT_CR;
        return i + 1;
    case '\n':
        pending_replace(c, "\r\n", 2, i + 1);
        bare_newline(c);
        return i + 1;
    default:
        /* A lone leading dot is stuffing: the line is the rest. */
        pending_replace(c, "", 0, i);
        c->d->state = DS_MID;
        return i;
    }
}

/* Returns the index after the terminator, or i when the CR was bare. */
static size_t decode_dot_cr(struct decode_ctx *c, size_t i)
{
    if (c->in[i] == '\n') {
        if (c->pend_at >= 0)
            flush_run(c, (size_t)c->pend_at);
        c->run_start = i + 1;
        c->d->done = true;
        return i + 1;
    }
    pending_replace(c, "\r\n", 2, i);
    bare_newline(c);
    return i;
}

static size_t decode_step(struct decode_ctx *c, size_t i, size_t len)
{
    struct data_decoder *d = c->d;
    switch (d->state) {
    case DS_BOL_CRLF:
        if (c->in[i] == '.') {
            d->state = DS_DOT;
            c->pend_at = (ssize_t)i;
            return i + 1;
        }
        d->state = DS_MID;
        return i;
    case DS_BOL_BARE:
        /* Not un-stuffed, so a leading dot is body text and gets stuffed. */
        if (c->in[i] == '.') {
            flush_run(c, i);
            count_stuffing_dot(d);
            emit(c, ".", 1);
        }
        d->state = DS_MID;
        d->line_after_crlf = false;
        return i + (c->in[i] == '.');
    case DS_MID:
        return decode_mid(c, i, len);
    case DS_CR:
        return decode_cr(c, i);
    case DS_DOT:
        return decode_dot(c, i);
    default:
        return decode_dot_cr(c, i);
    }
}

static bool state_is_pending(int state)
{
    return state == DS_CR || state == DS_DOT || state == DS_DOT_CR;
}

size_t data_decode_to(struct data_decoder *d, const char *in, size_t len, data_sink_fn sink,
                      void *sink_arg, uint64_t out_limit)
{
    int wide = atomic_load_explicit(&wide_scan, memory_order_relaxed);
    if (wide < 0) {
        data_codec_set_wide(true);
        wide = atomic_load_explicit(&wide_scan, memory_order_relaxed);
    }
    struct decode_ctx c = {d, in, sink, sink_arg, out_limit, 0, -1, wide == 1};
    size_t i = 0;

    while (i < len && !d->done)
        i = decode_step(&c, i, len);
    /* The terminator holds no NUL, so where the input was split cannot
     * matter; bytes after it belong to the next command. */
    if (!d->saw_nul && i > 0 && memchr(in, '\0', i) != NULL)
        d->saw_nul = true;
    if (d->done)
        return i;
    if (state_is_pending(d->state))
        flush_run(&c, c.pend_at >= 0 ? (size_t)c.pend_at : c.run_start);
    else
        flush_run(&c, len);
    return len;
}

static int evbuffer_sink(void *arg, const char *p, size_t n)
{
    return evbuffer_add(arg, p, n);
}

size_t data_decode(struct data_decoder *d, const char *in, size_t len, struct evbuffer *out,
                   uint64_t out_limit)
{
    return data_decode_to(d, in, len, evbuffer_sink, out, out_limit);
}

static void add_span(struct evbuffer *out, const char *p, size_t n)
{
    if (n > 0)
        evbuffer_add(out, p, n);
}

void data_unstuff(const char *in, size_t len, bool *at_bol, struct evbuffer *out)
{
    size_t i = 0, run = 0;
    if (len == 0)
        return; /* in may be NULL (an empty evbuffer's pullup) */
    while (i < len) {
        if (*at_bol && in[i] == '.') {
            add_span(out, in + run, i - run);
            run = i + 1;
        }
        const char *lf = memchr(in + i, '\n', len - i);
        *at_bol = lf != NULL;
        i = lf ? (size_t)(lf - in) + 1 : len;
    }
    add_span(out, in + run, len - run);
}

void data_stuff(const char *in, size_t len, bool *at_bol, struct evbuffer *out)
{
    size_t i = 0, run = 0;
    if (len == 0)
        return;
    while (i < len) {
        if (*at_bol && in[i] == '.') {
            add_span(out, in + run, i - run);
            add_span(out, ".", 1);
            run = i;
        }
        *at_bol = false;
        const char *p = in + i;
        const char *lf = memchr(p, '\n', len - i);
        size_t span = lf ? (size_t)(lf - p) : len - i;
        const char *cr = memchr(p, '\r', span);
        if (cr != NULL) {
            size_t at = (size_t)(cr - in);
            if (at + 1 < len && in[at + 1] == '\n') {
                i = at + 2;
            } else {
                add_span(out, in + run, at + 1 - run);
                add_span(out, "\n", 1);
                run = i = at + 1;
            }
            *at_bol = true;
        } else if (lf != NULL) {
            size_t at = (size_t)(lf - in);
            add_span(out, in + run, at - run);
            add_span(out, "\r", 1);
            run = at;
            i = at + 1;
            *at_bol = true;
        } else {
            i = len;
        }
    }
    add_span(out, in + run, len - run);
}
