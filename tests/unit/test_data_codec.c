#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "data_codec.h"

#define S(lit) (lit), (sizeof(lit) - 1)
#define NO_LIMIT UINT64_MAX

struct decoded {
    char *out;
    size_t out_len;
    size_t consumed;
    uint64_t size; /* data_decoder_size */
    bool done, bare, nul, over;
};

static void decoded_free(struct decoded *r) { free(r->out); }

/* Feeds in chunks of the given sizes (cycled; 0 means "all the rest"). */
static struct decoded decode_chunks(const char *in, size_t len, enum bare_newline_mode mode,
                                    const size_t *chunks, size_t nchunks, uint64_t limit)
{
    struct data_decoder d;
    struct evbuffer *out = evbuffer_new();
    struct decoded r = {0};
    size_t pos = 0, k = 0;
    data_decoder_init(&d, mode);
    while (pos < len && !d.done) {
        size_t n = chunks[k++ % nchunks];
        if (n == 0 || n > len - pos)
            n = len - pos;
        size_t used = data_decode(&d, in + pos, n, out, limit);
        assert_true(used <= n);
        if (!d.done)
            assert_int_equal(used, n);
        pos += used;
    }
    r.out_len = evbuffer_get_length(out);
    r.out = malloc(r.out_len + 1);
    evbuffer_remove(out, r.out, r.out_len);
    r.out[r.out_len] = '\0';
    r.consumed = pos;
    r.done = d.done;
    r.bare = d.saw_bare_newline;
    r.nul = d.saw_nul;
    r.over = d.over_limit;
    r.size = data_decoder_size(&d);
    assert_int_equal(d.out_bytes, r.out_len);
    assert_true(r.size <= limit);
    evbuffer_free(out);
    return r;
}

static struct decoded decode_all(const char *in, size_t len, enum bare_newline_mode mode)
{
    static const size_t all[] = {0};
    return decode_chunks(in, len, mode, all, 1, NO_LIMIT);
}

static void assert_same(const struct decoded *a, const struct decoded *b)
{
    assert_int_equal(a->out_len, b->out_len);
    assert_memory_equal(a->out, b->out, a->out_len);
    assert_int_equal(a->consumed, b->consumed);
    assert_int_equal(a->done, b->done);
    assert_int_equal(a->bare, b->bare);
    assert_int_equal(a->nul, b->nul);
    assert_int_equal(a->size, b->size);
    assert_int_equal(a->over, b->over);
}

static void expect(const char *in, size_t len, const char *want, size_t want_len, bool done,
                   bool bare)
{
    for (int mode = BARE_NEWLINE_REJECT; mode <= BARE_NEWLINE_NORMALIZE; mode++) {
        struct decoded r = decode_all(in, len, (enum bare_newline_mode)mode);
        assert_int_equal(r.out_len, want_len);
        assert_memory_equal(r.out, want, want_len);
        assert_int_equal(r.done, done);
        assert_int_equal(r.bare, bare);
        decoded_free(&r);
    }
}

static void test_compliant_message_passes_unchanged(void **state)
{
    (void)state;
    const char *body = "Subject: x\r\n\r\n..leading dot\r\nplain\r\n...\r\n";
    char in[128];
    size_t n = strlen(body);
    memcpy(in, body, n);
    memcpy(in + n, ".\r\n", 3);
    struct decoded r = decode_all(in, n + 3, BARE_NEWLINE_REJECT);
    assert_true(r.done);
    assert_false(r.bare);
    assert_int_equal(r.consumed, n + 3);
    assert_int_equal(r.out_len, n);
    assert_memory_equal(r.out, body, n);
    decoded_free(&r);
}

static void test_dot_crlf_right_after_data_is_an_empty_message(void **state)
{
    (void)state;
    expect(S(".\r\n"), "", 0, true, false);
}

static void test_bytes_after_terminator_are_not_consumed(void **state)
{
    (void)state;
    struct decoded r = decode_all(S("a\r\n.\r\nQUIT\r\n"), BARE_NEWLINE_REJECT);
    assert_true(r.done);
    assert_int_equal(r.consumed, 6);
    assert_string_equal(r.out, "a\r\n");
    decoded_free(&r);
}

static void test_decoder_consumes_nothing_once_done(void **state)
{
    (void)state;
    struct data_decoder d;
    struct evbuffer *out = evbuffer_new();
    data_decoder_init(&d, BARE_NEWLINE_REJECT);
    assert_int_equal(data_decode(&d, S(".\r\n"), out, NO_LIMIT), 3);
    assert_int_equal(data_decode(&d, S("x\r\n.\r\n"), out, NO_LIMIT), 0);
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

static void test_lone_leading_dot_is_unstuffed(void **state)
{
    (void)state;
    expect(S("a\r\n.b\r\n.\r\n"), S("a\r\nb\r\n"), true, false);
}

static void test_bare_lf_dot_lf_never_ends_data(void **state)
{
    (void)state;
    expect(S("a\n.\nb"), S("a\r\n..\r\nb"), false, true);
}

static void test_crlf_dot_lf_never_ends_data(void **state)
{
    (void)state;
    /* The dot line began after CRLF: un-stuffed, then ended by a bare LF. */
    expect(S("a\r\n.\nb"), S("a\r\n\r\nb"), false, true);
}

static void test_lf_dot_crlf_never_ends_data(void **state)
{
    (void)state;
    expect(S("a\n.\r\nb"), S("a\r\n..\r\nb"), false, true);
}

static void test_cr_dot_cr_never_ends_data(void **state)
{
    (void)state;
    expect(S("a\r.\rb"), S("a\r\n..\r\nb"), false, true);
}

static void test_crlf_dot_cr_never_ends_data(void **state)
{
    (void)state;
    expect(S("a\r\n.\rb"), S("a\r\n\r\nb"), false, true);
    expect(S("a\r\n.\r"), S("a\r\n"), false, false);
}

static void test_crlf_dot_cr_cr_lf_never_ends_data(void **state)
{
    (void)state;
    expect(S("a\r\n.\r\r\nb"), S("a\r\n\r\n\r\nb"), false, true);
}

static void test_lf_dot_cr_dot_never_ends_data(void **state)
{
    (void)state;
    expect(S("a\r\n\n.\r\nb"), S("a\r\n\r\n..\r\nb"), false, true);
    expect(S("a\r\r\n.\r\n"), S("a\r\n\r\n"), true, true);
}

static void test_only_crlf_dot_crlf_ends_data_after_smuggling_attempts(void **state)
{
    (void)state;
    const char in[] = "x\n.\nMAIL FROM:<evil@x>\r\n\r\n.\r\nNEXT";
    const char want[] = "x\r\n..\r\nMAIL FROM:<evil@x>\r\n\r\n";
    struct decoded r = decode_all(in, sizeof in - 1, BARE_NEWLINE_NORMALIZE);
    assert_true(r.done);
    assert_true(r.bare);
    assert_int_equal(r.consumed, sizeof in - 1 - 4);
    assert_int_equal(r.out_len, sizeof want - 1);
    assert_memory_equal(r.out, want, r.out_len);
    decoded_free(&r);
}

static void test_nul_bytes_are_flagged_in_both_modes(void **state)
{
    (void)state;
    for (int mode = BARE_NEWLINE_REJECT; mode <= BARE_NEWLINE_NORMALIZE; mode++) {
        struct decoded r =
            decode_all(S("a\0b\r\n\0.\r\n.\r\n"), (enum bare_newline_mode)mode);
        assert_true(r.done);
        assert_true(r.nul);
        assert_false(r.bare);
        decoded_free(&r);
        r = decode_all(S("ab\r\n.\r\n"), (enum bare_newline_mode)mode);
        assert_false(r.nul);
        decoded_free(&r);
    }
}

/* Every way a NUL can sit next to a (fake) end of data, each cut at every
 * byte, in both modes: the flag and the output never depend on the cut. */
static void test_nul_is_flagged_at_every_split_point_in_both_modes(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
    } cases[] = {
        {S("a\r\n\0.\r\nMAIL FROM:<evil@x>\r\n.\r\n")},
        {S("a\r\n.\0\r\nRCPT TO:<v@x>\r\n.\r\n")},
        {S("\0\r\n.\r\n")},
        {S("a\n\0.\n\r\n.\r\n")},
        {S("a\r\0\n.\r\n.\r\n")},
        {S("..\0\r\n.\r\n")},
        {S("x\r\n\0\r\n.\r\n")},
        {S("x\r\n.\r\0\n.\r\n")},
        {S("body\0")},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        for (int m = BARE_NEWLINE_REJECT; m <= BARE_NEWLINE_NORMALIZE; m++) {
            enum bare_newline_mode mode = (enum bare_newline_mode)m;
            struct decoded whole = decode_all(cases[k].in, cases[k].len, mode);
            assert_true(whole.nul);
            for (size_t cut = 1; cut < cases[k].len; cut++) {
                size_t chunks[2] = {cut, 0};
                struct decoded r =
                    decode_chunks(cases[k].in, cases[k].len, mode, chunks, 2, NO_LIMIT);
                assert_same(&whole, &r);
                decoded_free(&r);
            }
            decoded_free(&whole);
        }
    }
}

static void test_nul_after_the_terminator_belongs_to_the_next_command(void **state)
{
    (void)state;
    const char in[] = "a\r\n.\r\n\0QUIT\r\n";
    size_t len = sizeof in - 1;
    for (size_t cut = 1; cut < len; cut++) {
        size_t chunks[2] = {cut, 0};
        struct decoded r = decode_chunks(in, len, BARE_NEWLINE_REJECT, chunks, 2, NO_LIMIT);
        assert_true(r.done);
        assert_false(r.nul);
        assert_int_equal(r.consumed, 6);
        decoded_free(&r);
    }
}

/* Reference model: whole lines, written plainly from the rules in the header. */
struct model {
    size_t out_len;
    uint64_t size; /* content: the output without its stuffing dots */
    bool done, bare, nul;
};

static size_t model_lines(const char *in, size_t len, char *out, struct model *m);

static size_t model_decode(const char *in, size_t len, char *out, struct model *m)
{
    memset(m, 0, sizeof *m);
    size_t used = model_lines(in, len, out, m);
    m->nul = memchr(in, '\0', used) != NULL;
    return used;
}

static size_t model_lines(const char *in, size_t len, char *out, struct model *m)
{
    size_t i = 0, o = 0, line_start = 0, stuffed = 0;
    bool after_crlf = true;
    while (i < len) {
        if (in[i] != '\r' && in[i] != '\n') {
            i++;
            continue;
        }
        bool crlf = in[i] == '\r' && i + 1 < len && in[i + 1] == '\n';
        if (in[i] == '\r' && i + 1 >= len)
            break; /* undecided */
        const char *raw = in + line_start;
        size_t raw_len = i - line_start;
        if (after_crlf && crlf && raw_len == 1 && raw[0] == '.') {
            m->done = true;
            m->out_len = o;
            m->size = o - stuffed;
            return i + 2;
        }
        if (after_crlf && raw_len > 0 && raw[0] == '.') {
            raw++;
            raw_len--;
        }
        if (raw_len > 0 && raw[0] == '.') {
            out[o++] = '.';
            stuffed++;
        }
        memcpy(out + o, raw, raw_len);
        o += raw_len;
        out[o++] = '\r';
        out[o++] = '\n';
        m->bare |= !crlf;
        after_crlf = crlf;
        i += crlf ? 2 : 1;
        line_start = i;
    }
    m->out_len = o;
    m->size = o - stuffed;
    return len;
}

/* Bytes that matter to the decoder; a NUL only now and then, so most
 * messages have none. */
static void random_message(char *buf, size_t n, unsigned *seed)
{
    static const char alphabet[] = {'\r', '\n', '.', 'a'};
    for (size_t i = 0; i < n; i++)
        buf[i] = rand_r(seed) % 64 == 0 ? '\0' : alphabet[rand_r(seed) % 4];
}

static void test_decoder_matches_line_model_on_random_input(void **state)
{
    (void)state;
    unsigned seed = 12345;
    char in[80], want[300];
    for (int iter = 0; iter < 20000; iter++) {
        size_t body = (size_t)(rand_r(&seed) % 60);
        random_message(in, body, &seed);
        memcpy(in + body, "\r\n.\r\nZZ", 7);
        size_t len = body + 7;
        struct model m;
        size_t used = model_decode(in, len, want, &m);
        assert_true(m.done);
        for (int mode = BARE_NEWLINE_REJECT; mode <= BARE_NEWLINE_NORMALIZE; mode++) {
            struct decoded r = decode_all(in, len, (enum bare_newline_mode)mode);
            assert_true(r.done);
            assert_int_equal(r.consumed, used);
            assert_int_equal(r.bare, m.bare);
            assert_int_equal(r.nul, m.nul);
            assert_int_equal(r.size, m.size);
            assert_int_equal(r.out_len, m.out_len);
            assert_memory_equal(r.out, want, m.out_len);
            decoded_free(&r);
        }
    }
}

/* Mostly plain CRLF lines of any length, now and then one the block scan must
 * hand back to the line walk: a dot line, a bare LF or CR, a NUL, a CR LF
 * split by a byte. */
static size_t plain_text_message(char *buf, size_t cap, unsigned *seed)
{
    static const char *const odd[] = {".x", "a\nb", "a\rb", "a\0b", "a\rx\nb", "..", "\n."};
    size_t n = 0;
    while (n + 120 < cap) {
        if (rand_r(seed) % 12 == 0) {
            const char *o = odd[rand_r(seed) % 7];
            size_t olen = o[0] == 'a' && o[1] == '\0' ? 3 : strlen(o);
            memcpy(buf + n, o, olen);
            n += olen;
        }
        size_t line = (size_t)(rand_r(seed) % 100);
        memset(buf + n, 'x', line);
        n += line;
        memcpy(buf + n, "\r\n", 2);
        n += 2;
    }
    memcpy(buf + n, ".\r\nQUIT", 7);
    return n + 7;
}

static void test_block_scan_and_line_walk_give_the_same_output(void **state)
{
    (void)state;
    unsigned seed = 4242;
    static char in[8192], want[16384];
    for (int iter = 0; iter < 400; iter++) {
        size_t len = plain_text_message(in, sizeof in - 16, &seed);
        size_t splits[3] = {1 + (size_t)(rand_r(&seed) % 700), 64, 65};
        for (int mode = BARE_NEWLINE_REJECT; mode <= BARE_NEWLINE_NORMALIZE; mode++) {
            enum bare_newline_mode m = (enum bare_newline_mode)mode;
            struct decoded wide = decode_chunks(in, len, m, splits, 3, NO_LIMIT);
            data_codec_set_wide(false);
            struct decoded narrow = decode_chunks(in, len, m, splits, 3, NO_LIMIT);
            data_codec_set_wide(true);
            assert_same(&wide, &narrow);
            struct model model;
            size_t used = model_decode(in, len, want, &model);
            assert_true(wide.done);
            assert_int_equal(wide.consumed, used);
            assert_int_equal(wide.out_len, model.out_len);
            assert_memory_equal(wide.out, want, model.out_len);
            assert_int_equal(wide.bare, model.bare);
            assert_int_equal(wide.nul, model.nul);
            decoded_free(&wide);
            decoded_free(&narrow);
        }
    }
}

static void test_output_is_identical_byte_by_byte_and_in_random_splits(void **state)
{
    (void)state;
    unsigned seed = 777;
    char in[200];
    static const size_t one[] = {1};
    for (int iter = 0; iter < 3000; iter++) {
        size_t body = (size_t)(rand_r(&seed) % 180);
        random_message(in, body, &seed);
        memcpy(in + body, "\r\n.\r\nQUIT", 9);
        size_t len = body + 9;
        struct decoded whole = decode_all(in, len, BARE_NEWLINE_REJECT);
        struct decoded bytes = decode_chunks(in, len, BARE_NEWLINE_REJECT, one, 1, NO_LIMIT);
        assert_same(&whole, &bytes);
        size_t splits[5];
        for (int k = 0; k < 5; k++)
            splits[k] = 1 + (size_t)(rand_r(&seed) % 7);
        struct decoded rnd = decode_chunks(in, len, BARE_NEWLINE_REJECT, splits, 5, NO_LIMIT);
        assert_same(&whole, &rnd);
        /* A limit around the size: over exactly when the content is bigger. */
        uint64_t limit = whole.size + (uint64_t)(rand_r(&seed) % 3);
        limit = limit > 0 ? limit - 1 : 0; /* size - 1, size or size + 1 */
        struct decoded lim = decode_chunks(in, len, BARE_NEWLINE_REJECT, splits, 5, limit);
        assert_int_equal(lim.over, whole.size > limit);
        assert_int_equal(lim.consumed, whole.consumed);
        if (!lim.over)
            assert_same(&whole, &lim);
        decoded_free(&lim);
        decoded_free(&whole);
        decoded_free(&bytes);
        decoded_free(&rnd);
    }
}

static void test_terminator_split_at_every_boundary_is_found(void **state)
{
    (void)state;
    const char in[] = "line\r\n..x\r\n.\r\nRSET\r\n";
    size_t len = sizeof in - 1;
    struct decoded whole = decode_all(in, len, BARE_NEWLINE_REJECT);
    for (size_t cut = 1; cut < len; cut++) {
        size_t chunks[2] = {cut, 0};
        struct decoded r = decode_chunks(in, len, BARE_NEWLINE_REJECT, chunks, 2, NO_LIMIT);
        assert_same(&whole, &r);
        decoded_free(&r);
    }
    assert_int_equal(whole.consumed, len - 6);
    decoded_free(&whole);
}

static void test_output_stops_at_limit_but_terminator_is_still_found(void **state)
{
    (void)state;
    static const size_t three[] = {3};
    const char in[] = "0123456789\r\nabcdef\r\n.\r\n";
    struct decoded r = decode_chunks(in, sizeof in - 1, BARE_NEWLINE_REJECT, three, 1, 8);
    assert_true(r.done);
    assert_true(r.over);
    assert_int_equal(r.out_len, 8);
    assert_memory_equal(r.out, "01234567", 8);
    decoded_free(&r);

    r = decode_chunks(in, sizeof in - 1, BARE_NEWLINE_REJECT, three, 1, 20);
    assert_false(r.over);
    assert_int_equal(r.out_len, 20);
    decoded_free(&r);
}

static void test_size_counts_content_without_stuffing_dots(void **state)
{
    (void)state;
    for (int mode = BARE_NEWLINE_REJECT; mode <= BARE_NEWLINE_NORMALIZE; mode++) {
        /* content ".a\r\n" ".\r\n" "b\r\n" "..\r\n" */
        struct decoded r =
            decode_all(S("..a\r\n..\r\n.b\r\n...\r\n.\r\n"), (enum bare_newline_mode)mode);
        assert_int_equal(r.out_len, 17);
        assert_int_equal(r.size, 14);
        decoded_free(&r);
        /* after a bare LF a leading dot is content, stuffed on the way out:
         * content "a\r\n" ".x\r\n" "..\r\n" */
        r = decode_all(S("a\n.x\n..\r\n.\r\n"), (enum bare_newline_mode)mode);
        assert_int_equal(r.out_len, 13);
        assert_int_equal(r.size, 11);
        decoded_free(&r);
    }
}

/* RFC 1870 counts the message unstuffed: one of exactly the limit fits
 * however many of its lines start with a dot, one byte more does not. */
static void test_message_of_exactly_the_limit_with_dot_lines_fits_at_every_split(void **state)
{
    (void)state;
    static const char *const lines[] = {"..\r\n", "..x\r\n", "...\r\n", "plain\r\n",
                                        "..y\n", ".z\n"};
    char in[600];
    size_t len = 0;
    for (size_t i = 0; i < 60; i++) {
        /* bare LF lines only in the second half: the first is plain RFC 5321 */
        const char *l = lines[i < 30 ? i % 4 : i % 6];
        memcpy(in + len, l, strlen(l));
        len += strlen(l);
    }
    static const char end[] = "\r\n.\r\nQUIT\r\n";
    memcpy(in + len, end, sizeof end - 1);
    len += sizeof end - 1;
    for (int m = BARE_NEWLINE_REJECT; m <= BARE_NEWLINE_NORMALIZE; m++) {
        enum bare_newline_mode mode = (enum bare_newline_mode)m;
        struct decoded whole = decode_all(in, len, mode);
        char model_out[800];
        struct model want;
        model_decode(in, len, model_out, &want);
        assert_true(whole.done);
        assert_int_equal(whole.size, want.size);
        assert_true(whole.size < whole.out_len);
        for (size_t cut = 1; cut < len; cut++) {
            size_t chunks[2] = {cut, 0};
            struct decoded fits = decode_chunks(in, len, mode, chunks, 2, whole.size);
            assert_false(fits.over);
            assert_same(&whole, &fits);
            struct decoded big = decode_chunks(in, len, mode, chunks, 2, whole.size - 1);
            assert_true(big.over);
            assert_true(big.done);
            assert_int_equal(big.consumed, whole.consumed);
            assert_true(big.size <= whole.size - 1);
            decoded_free(&fits);
            decoded_free(&big);
        }
        decoded_free(&whole);
    }
}

static void test_large_message_is_decoded_in_few_buffer_chunks(void **state)
{
    (void)state;
    size_t lines = 100000, n = lines * 10 + 3;
    char *in = malloc(n);
    for (size_t i = 0; i < lines; i++)
        memcpy(in + i * 10, i % 7 ? "abcdefgh\r\n" : "..cdefgh\r\n", 10);
    memcpy(in + lines * 10, ".\r\n", 3);
    struct data_decoder d;
    struct evbuffer *out = evbuffer_new();
    data_decoder_init(&d, BARE_NEWLINE_REJECT);
    assert_int_equal(data_decode(&d, in, n, out, NO_LIMIT), n);
    assert_true(d.done);
    assert_int_equal(evbuffer_get_length(out), n - 3);
    /* A verbatim span goes out as one evbuffer_add, not one per line. */
    assert_true(evbuffer_peek(out, -1, NULL, NULL, 0) <= 4);
    evbuffer_free(out);
    free(in);
}

static char *buf_take(struct evbuffer *b, size_t *len)
{
    *len = evbuffer_get_length(b);
    char *s = malloc(*len + 1);
    evbuffer_remove(b, s, *len);
    s[*len] = '\0';
    return s;
}

static void test_unstuff_removes_one_leading_dot_per_line(void **state)
{
    (void)state;
    struct evbuffer *out = evbuffer_new();
    bool bol = true;
    data_unstuff(S("..a\r\nb.\r\n...\r\n\r\n"), &bol, out);
    size_t n;
    char *s = buf_take(out, &n);
    assert_string_equal(s, ".a\r\nb.\r\n..\r\n\r\n");
    assert_true(bol);
    free(s);
    evbuffer_free(out);
}

static void test_stuff_adds_a_dot_and_normalises_bare_newlines(void **state)
{
    (void)state;
    struct evbuffer *out = evbuffer_new();
    bool bol = true;
    data_stuff(S(".a\r\nb\n.c\r.\r\nd"), &bol, out);
    size_t n;
    char *s = buf_take(out, &n);
    assert_string_equal(s, "..a\r\nb\r\n..c\r\n..\r\nd");
    assert_false(bol);
    free(s);
    evbuffer_free(out);
}

static void test_stuff_then_unstuff_round_trips_in_any_split(void **state)
{
    (void)state;
    unsigned seed = 99;
    char content[120];
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = (size_t)(rand_r(&seed) % 100);
        for (size_t i = 0; i < n; i++)
            content[i] = ".a\r\n"[rand_r(&seed) % 2 ? 0 : 1];
        /* content with CRLF endings only, so the round trip is exact */
        for (size_t i = 0; i + 1 < n; i += 5) {
            content[i] = '\r';
            content[i + 1] = '\n';
        }
        struct evbuffer *wire = evbuffer_new(), *back = evbuffer_new();
        bool bol = true;
        size_t cut = n ? (size_t)(rand_r(&seed) % (n + 1)) : 0;
        if (cut > 0 && content[cut - 1] == '\r')
            cut--;
        data_stuff(content, cut, &bol, wire);
        data_stuff(content + cut, n - cut, &bol, wire);
        size_t wn;
        char *w = buf_take(wire, &wn);
        bol = true;
        size_t wcut = wn ? (size_t)(rand_r(&seed) % (wn + 1)) : 0;
        data_unstuff(w, wcut, &bol, back);
        data_unstuff(w + wcut, wn - wcut, &bol, back);
        size_t bn;
        char *b = buf_take(back, &bn);
        assert_int_equal(bn, n);
        assert_memory_equal(b, content, n);

        /* the wire form never holds a line that is a lone dot */
        for (size_t i = 0; i + 2 < wn; i++) {
            bool bol_here = i == 0 || w[i - 1] == '\n';
            assert_false(bol_here && w[i] == '.' && w[i + 1] == '\r' && w[i + 2] == '\n');
        }
        free(w);
        free(b);
        evbuffer_free(wire);
        evbuffer_free(back);
    }
}

static void test_empty_input_with_null_pointer_writes_nothing(void **state)
{
    (void)state;
    struct evbuffer *out = evbuffer_new();
    struct data_decoder d;
    bool bol = true;
    data_unstuff(NULL, 0, &bol, out);
    data_stuff(NULL, 0, &bol, out);
    data_decoder_init(&d, BARE_NEWLINE_REJECT);
    assert_int_equal(data_decode(&d, NULL, 0, out, NO_LIMIT), 0);
    assert_true(bol);
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

static void test_decode_then_unstuff_gives_content(void **state)
{
    (void)state;
    struct decoded r = decode_all(S("..x\r\ny\r\n.\r\n"), BARE_NEWLINE_REJECT);
    struct evbuffer *out = evbuffer_new();
    bool bol = true;
    data_unstuff(r.out, r.out_len, &bol, out);
    size_t n;
    char *s = buf_take(out, &n);
    assert_string_equal(s, ".x\r\ny\r\n");
    free(s);
    evbuffer_free(out);
    decoded_free(&r);
}

/* The scanner skips whole lines between CRs; every sequence that leaves that
 * fast path (end of data, bare CR or LF, NUL, a dot at a line start, CRLF
 * at a chunk's end) is cut at every pair of points, so each byte of it can
 * end one chunk and start the next: the result is the model's every time,
 * in both modes, with and without a limit just under the size. */
static void test_every_sequence_split_at_every_pair_of_points_matches_the_model(void **state)
{
    (void)state;
#define SEQ(lit) {(lit), sizeof(lit) - 1}
    static const struct {
        const char *p;
        size_t len;
    } seqs[] = {
        SEQ("\r\n.\r\n"), SEQ("..x\r\n"),   SEQ(".x\r\n"),    SEQ("..\r\n"),
        SEQ("...\r\n"),    SEQ("a\rb\r\n"),   SEQ("a\nb\r\n"),  SEQ("a\0b\r\n"),
        SEQ("\r\n\r\n"),   SEQ("a\r\r\n"),    SEQ("\n.\r\n"),   SEQ("\r.\r\n"),
        SEQ("\n..\n"),     SEQ(".\r.\r\n"),   SEQ("x\r\n.\n"),  SEQ("\0\r\n.\r\n"),
        SEQ("\r\n\0.\r\n"), SEQ(".\r\r\n"),    SEQ("\n\n\r\r"), SEQ("..\r\n.\r"),
    };
#undef SEQ
    for (size_t k = 0; k < sizeof seqs / sizeof seqs[0]; k++) {
        char in[64];
        size_t len = 0;
        memcpy(in, "ab\r\n", 4);
        len = 4;
        memcpy(in + len, seqs[k].p, seqs[k].len);
        len += seqs[k].len;
        memcpy(in + len, "cd\r\n.\r\nQUIT\r\n", 14);
        len += 14;
        for (int m = BARE_NEWLINE_REJECT; m <= BARE_NEWLINE_NORMALIZE; m++) {
            enum bare_newline_mode mode = (enum bare_newline_mode)m;
            char model_out[128];
            struct model want;
            size_t used = model_decode(in, len, model_out, &want);
            struct decoded whole = decode_all(in, len, mode);
            assert_int_equal(whole.consumed, used);
            assert_int_equal(whole.out_len, want.out_len);
            assert_memory_equal(whole.out, model_out, want.out_len);
            assert_int_equal(whole.done, want.done);
            assert_int_equal(whole.bare, want.bare);
            assert_int_equal(whole.nul, want.nul);
            assert_int_equal(whole.size, want.size);
            for (size_t a = 1; a < len; a++) {
                for (size_t b = 0; a + b < len; b++) {
                    size_t chunks[3] = {a, b ? b : len, 0};
                    struct decoded r = decode_chunks(in, len, mode, chunks, 3, NO_LIMIT);
                    assert_same(&whole, &r);
                    decoded_free(&r);
                    if (whole.size == 0 || b > 8)
                        continue;
                    struct decoded lim = decode_chunks(in, len, mode, chunks, 3, whole.size - 1);
                    assert_true(lim.over);
                    assert_int_equal(lim.consumed, whole.consumed);
                    assert_int_equal(lim.nul, whole.nul);
                    assert_int_equal(lim.bare, whole.bare);
                    decoded_free(&lim);
                }
            }
            decoded_free(&whole);
        }
    }
}

struct sink_count {
    size_t calls, bytes;
    bool fail;
};

static int count_sink(void *arg, const char *p, size_t n)
{
    struct sink_count *c = arg;
    (void)p;
    if (c->fail)
        return -1;
    c->calls++;
    c->bytes += n;
    return 0;
}

/* The point of the fast path: a compliant message, dot-stuffed lines
 * included, reaches the sink as one run per input chunk (chunks that end
 * after a CRLF), never line by line. */
static void test_compliant_chunks_reach_the_sink_in_one_run_each(void **state)
{
    (void)state;
    enum { LINE = 64, LINES = 1600, CHUNK = 4096 };
    size_t len = LINE * LINES;
    char *in = malloc(len + 5);
    for (size_t i = 0; i < LINES; i++) {
        char *l = in + i * LINE;
        memset(l, 'a' + (char)(i % 26), LINE - 2);
        if (i % 5 == 0)
            memcpy(l, "..", 2); /* a stuffed dot: kept as it is */
        memcpy(l + LINE - 2, "\r\n", 2);
    }
    memcpy(in + len, ".\r\n", 3);
    struct data_decoder d;
    struct sink_count c = {0};
    data_decoder_init(&d, BARE_NEWLINE_REJECT);
    size_t pos = 0, chunks = 0;
    while (pos < len + 3 && !d.done) {
        size_t n = len + 3 - pos < CHUNK ? len + 3 - pos : CHUNK;
        pos += data_decode_to(&d, in + pos, n, count_sink, &c, NO_LIMIT);
        chunks++;
    }
    assert_true(d.done);
    assert_int_equal(pos, len + 3);
    assert_int_equal(c.bytes, len);
    assert_int_equal(c.calls, len / CHUNK);
    assert_int_equal(data_decoder_size(&d), len - LINES / 5);
    assert_false(d.saw_bare_newline);
    free(in);
}

/* A sink that cannot keep the bytes: nothing is counted as written, and the
 * rest is still read up to the terminator (the session answers 451 then). */
static void test_a_failing_sink_counts_nothing_and_the_terminator_is_still_found(void **state)
{
    (void)state;
    const char in[] = "abc\r\n..d\r\ne\nf\r\n.\r\nQUIT\r\n";
    struct data_decoder d;
    struct sink_count c = {.fail = true};
    data_decoder_init(&d, BARE_NEWLINE_NORMALIZE);
    size_t used = data_decode_to(&d, in, sizeof in - 1, count_sink, &c, NO_LIMIT);
    assert_true(d.done);
    assert_int_equal(used, sizeof in - 1 - 6);
    assert_int_equal(d.out_bytes, 0);
    assert_int_equal(c.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compliant_message_passes_unchanged),
        cmocka_unit_test(test_dot_crlf_right_after_data_is_an_empty_message),
        cmocka_unit_test(test_bytes_after_terminator_are_not_consumed),
        cmocka_unit_test(test_decoder_consumes_nothing_once_done),
        cmocka_unit_test(test_lone_leading_dot_is_unstuffed),
        cmocka_unit_test(test_bare_lf_dot_lf_never_ends_data),
        cmocka_unit_test(test_crlf_dot_lf_never_ends_data),
        cmocka_unit_test(test_lf_dot_crlf_never_ends_data),
        cmocka_unit_test(test_cr_dot_cr_never_ends_data),
        cmocka_unit_test(test_crlf_dot_cr_never_ends_data),
        cmocka_unit_test(test_crlf_dot_cr_cr_lf_never_ends_data),
        cmocka_unit_test(test_lf_dot_cr_dot_never_ends_data),
        cmocka_unit_test(test_only_crlf_dot_crlf_ends_data_after_smuggling_attempts),
        cmocka_unit_test(test_nul_bytes_are_flagged_in_both_modes),
        cmocka_unit_test(test_nul_is_flagged_at_every_split_point_in_both_modes),
        cmocka_unit_test(test_nul_after_the_terminator_belongs_to_the_next_command),
        cmocka_unit_test(test_decoder_matches_line_model_on_random_input),
        cmocka_unit_test(test_block_scan_and_line_walk_give_the_same_output),
        cmocka_unit_test(test_output_is_identical_byte_by_byte_and_in_random_splits),
        cmocka_unit_test(test_terminator_split_at_every_boundary_is_found),
        cmocka_unit_test(test_output_stops_at_limit_but_terminator_is_still_found),
        cmocka_unit_test(test_size_counts_content_without_stuffing_dots),
        cmocka_unit_test(test_message_of_exactly_the_limit_with_dot_lines_fits_at_every_split),
        cmocka_unit_test(test_large_message_is_decoded_in_few_buffer_chunks),
        cmocka_unit_test(test_unstuff_removes_one_leading_dot_per_line),
        cmocka_unit_test(test_stuff_adds_a_dot_and_normalises_bare_newlines),
        cmocka_unit_test(test_stuff_then_unstuff_round_trips_in_any_split),
        cmocka_unit_test(test_empty_input_with_null_pointer_writes_nothing),
        cmocka_unit_test(test_decode_then_unstuff_gives_content),
        cmocka_unit_test(test_every_sequence_split_at_every_pair_of_points_matches_the_model),
        cmocka_unit_test(test_compliant_chunks_reach_the_sink_in_one_run_each),
        cmocka_unit_test(test_a_failing_sink_counts_nothing_and_the_terminator_is_still_found),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
