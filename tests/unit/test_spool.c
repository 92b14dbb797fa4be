/* The message spool: memory, then an unlinked file; content always byte-exact. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "spool.h"

#define THRESHOLD 1000
#define BIG_SIZE (30u * 1024u * 1024u)
#define BIG_CHUNK (64u * 1024u)

static const char *tmp_dir(void)
{
    const char *dir = getenv("TMPDIR");

    return dir != NULL && dir[0] != '\0' ? dir : "/tmp";
}

/* Every byte value, NUL and 8-bit included, in a sequence that does not
 * repeat with a short period (so an offset mistake cannot go unnoticed). */
static unsigned char *pattern_new(size_t len)
{
    unsigned char *p = malloc(len);
    uint32_t x = 2463534242u;

    assert_non_null(p);
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)(i < 256 ? i : x);
    }
    return p;
}

static int append_bytes(struct spool *s, const unsigned char *data, size_t len)
{
    struct evbuffer *src = evbuffer_new();
    int rc;

    assert_non_null(src);
    assert_int_equal(evbuffer_add(src, data, len), 0);
    rc = spool_append(s, src);
    assert_int_equal(evbuffer_get_length(src), 0);
    evbuffer_free(src);
    return rc;
}

/* Appends data in uneven chunks, as a client upload arrives. */
static void append_in_chunks(struct spool *s, const unsigned char *data, size_t len, size_t chunk)
{
    size_t off = 0;

    for (int i = 0; off < len && i < 100000; i++) {
        size_t n = chunk - (size_t)(i % 7);

        if (n > len - off)
            n = len - off;
        assert_int_equal(append_bytes(s, data + off, n), 0);
        off += n;
    }
    assert_int_equal(off, len);
    assert_int_equal(spool_size(s), len);
}

/* What a backend would receive: spool_add_to, then drain the output. */
/* out holds exactly want: taken out of it. */
static void assert_holds_exactly(struct evbuffer *out, const unsigned char *want, size_t len)
{
    unsigned char *got = malloc(len + 1);

    assert_non_null(got);
    assert_int_equal(evbuffer_remove(out, got, len + 1), (int)len);
    assert_memory_equal(got, want, len);
    free(got);
}

static void assert_sends_exactly(struct spool *s, const unsigned char *want, size_t len)
{
    struct evbuffer *out = evbuffer_new();

    assert_non_null(out);
    assert_int_equal(evbuffer_add(out, "DATA-PREFIX", 11), 0);
    assert_int_equal(spool_add_to(s, out), 0);
    assert_int_equal(evbuffer_get_length(out), len + 11);
    evbuffer_drain(out, 11);
    assert_holds_exactly(out, want, len);
    evbuffer_free(out);
}

static void assert_reads_exactly(struct spool *s, const unsigned char *want, size_t len)
{
    unsigned char *got = malloc(len + 1);

    assert_non_null(got);
    assert_int_equal(spool_read(s, 0, got, len + 1), (ssize_t)len);
    assert_memory_equal(got, want, len);
    free(got);
}

static void small_message_stays_in_memory_without_touching_the_disk(void **state)
{
    /* a directory that does not exist: any file creation would fail */
    struct spool *s = spool_new(THRESHOLD, "/nonexistent/sluice-spool-test");
    unsigned char *data = pattern_new(THRESHOLD);

    assert_non_null(s);
    append_in_chunks(s, data, THRESHOLD, 100);
    assert_false(spool_in_file(s));
    assert_reads_exactly(s, data, THRESHOLD);
    assert_sends_exactly(s, data, THRESHOLD);
    errno = 0;
    assert_int_equal(append_bytes(s, data, 1), -1);
    assert_int_not_equal(errno, 0);
    spool_free(s);
    free(data);
}

static void crossing_the_threshold_moves_to_a_file_byte_identical(void **state)
{
    struct spool *s = spool_new(THRESHOLD, tmp_dir());
    size_t len = 10 * THRESHOLD + 17;
    unsigned char *data = pattern_new(len);

    assert_non_null(s);
    append_in_chunks(s, data, len, 333);
    assert_true(spool_in_file(s));
    assert_reads_exactly(s, data, len);
    assert_sends_exactly(s, data, len);
    spool_free(s);
    free(data);
}

static void one_append_larger_than_the_threshold_goes_to_the_file(void **state)
{
    struct spool *s = spool_new(THRESHOLD, tmp_dir());
    size_t len = 3 * THRESHOLD;
    unsigned char *data = pattern_new(len);

    assert_non_null(s);
    assert_int_equal(append_bytes(s, data, len), 0);
    assert_true(spool_in_file(s));
    assert_reads_exactly(s, data, len);
    spool_free(s);
    free(data);
}

static void message_is_sent_twice_identically_from_memory_and_from_file(void **state)
{
    size_t sizes[] = {THRESHOLD / 2, 5 * THRESHOLD};

    for (size_t i = 0; i < 2; i++) {
        struct spool *s = spool_new(THRESHOLD, tmp_dir());
        unsigned char *data = pattern_new(sizes[i]);

        assert_non_null(s);
        append_in_chunks(s, data, sizes[i], 250);
        assert_int_equal(spool_in_file(s), i == 1);
        assert_sends_exactly(s, data, sizes[i]);
        assert_sends_exactly(s, data, sizes[i]);
        assert_int_equal(spool_size(s), sizes[i]);
        assert_reads_exactly(s, data, sizes[i]);
        spool_free(s);
        free(data);
    }
}

static void thirty_mib_in_chunks_reads_back_identical(void **state)
{
    struct spool *s = spool_new(1024 * 1024, tmp_dir());
    unsigned char *data = pattern_new(BIG_SIZE);
    unsigned char *got = malloc(BIG_CHUNK);
    uint64_t off = 0;

    assert_non_null(s);
    assert_non_null(got);
    append_in_chunks(s, data, BIG_SIZE, BIG_CHUNK);
    assert_true(spool_in_file(s));
    for (int i = 0; off < BIG_SIZE && i < 1000; i++) {
        ssize_t n = spool_read(s, off, got, BIG_CHUNK);

        assert_true(n > 0);
        assert_memory_equal(got, data + off, (size_t)n);
        off += (uint64_t)n;
    }
    assert_int_equal(off, BIG_SIZE);
    assert_sends_exactly(s, data, BIG_SIZE);
    spool_free(s);
    free(got);
    free(data);
}

static void read_at_offsets_in_memory_and_in_file(void **state)
{
    size_t sizes[] = {THRESHOLD, 4 * THRESHOLD};

    for (size_t i = 0; i < 2; i++) {
        size_t len = sizes[i];
        struct spool *s = spool_new(THRESHOLD, tmp_dir());
        unsigned char *data = pattern_new(len);
        unsigned char got[64];

        assert_non_null(s);
        append_in_chunks(s, data, len, 97);
        assert_int_equal(spool_read(s, 0, got, 10), 10);
        assert_memory_equal(got, data, 10);
        assert_int_equal(spool_read(s, 513, got, sizeof(got)), (ssize_t)sizeof(got));
        assert_memory_equal(got, data + 513, sizeof(got));
        /* a read across the end is short, at or past the end it is empty */
        assert_int_equal(spool_read(s, len - 5, got, sizeof(got)), 5);
        assert_memory_equal(got, data + len - 5, 5);
        assert_int_equal(spool_read(s, len, got, sizeof(got)), 0);
        assert_int_equal(spool_read(s, len + 1000, got, sizeof(got)), 0);
        spool_free(s);
        free(data);
    }
}

static void reset_empties_and_the_next_small_message_is_in_memory(void **state)
{
    struct spool *s = spool_new(THRESHOLD, tmp_dir());
    unsigned char *big = pattern_new(4 * THRESHOLD);
    const unsigned char small[] = "Subject: second\r\n\r\nhello\0world\xff\r\n";
    unsigned char got[8];

    assert_non_null(s);
    append_in_chunks(s, big, 4 * THRESHOLD, 500);
    assert_true(spool_in_file(s));
    spool_reset(s);
    assert_int_equal(spool_size(s), 0);
    assert_false(spool_in_file(s));
    assert_int_equal(spool_read(s, 0, got, sizeof(got)), 0);
    assert_int_equal(append_bytes(s, small, sizeof(small)), 0);
    assert_false(spool_in_file(s));
    assert_reads_exactly(s, small, sizeof(small));
    assert_sends_exactly(s, small, sizeof(small));
    /* and the file is reused for the next big one */
    spool_reset(s);
    append_in_chunks(s, big + 1, 3 * THRESHOLD, 700);
    assert_true(spool_in_file(s));
    assert_reads_exactly(s, big + 1, 3 * THRESHOLD);
    spool_free(s);
    free(big);
}

/* A backend write may still be queued when the session moves on: the bytes
 * already handed out must not change under it. */
static void reset_after_sending_leaves_the_queued_copy_intact(void **state)
{
    size_t sizes[] = {THRESHOLD / 2, 6 * THRESHOLD}; /* from memory, from the file */

    for (size_t i = 0; i < 2; i++) {
        size_t len = sizes[i];
        struct spool *s = spool_new(THRESHOLD, tmp_dir());
        unsigned char *first = pattern_new(len);
        unsigned char *second = malloc(len);
        struct evbuffer *out = evbuffer_new();

        assert_non_null(s);
        assert_non_null(second);
        assert_non_null(out);
        memset(second, 'x', len);
        append_in_chunks(s, first, len, 100);
        assert_int_equal(spool_add_to(s, out), 0);
        spool_reset(s);
        append_in_chunks(s, second, len, 100);
        assert_holds_exactly(out, first, len);
        assert_reads_exactly(s, second, len);
        evbuffer_free(out);
        spool_free(s);
        free(first);
        free(second);
    }
}

static void empty_spool_adds_nothing(void **state)
{
    struct spool *s = spool_new(THRESHOLD, tmp_dir());
    struct evbuffer *out = evbuffer_new();

    assert_non_null(s);
    assert_int_equal(spool_size(s), 0);
    assert_int_equal(spool_add_to(s, out), 0);
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
    spool_free(s);
}

/* The decoder writes runs of any size, down to the two bytes of a
 * normalised line end: in memory, across the threshold and on in the file
 * (past the write-behind more than once), the spool holds exactly the bytes
 * written, and reading or sending sees all of them before any flush. */
static void small_writes_across_the_threshold_and_the_write_behind_read_back_identical(
    void **state)
{
    (void)state;
    size_t len = 200 * 1024 + 3;
    unsigned char *data = pattern_new(len);
    static const size_t sizes[] = {1, 2, 333, 4096, 2, 7, 65536, 1};

    for (int flush_each = 0; flush_each < 2; flush_each++) {
        struct spool *s = spool_new(THRESHOLD, tmp_dir());
        size_t off = 0;

        assert_non_null(s);
        for (size_t i = 0; off < len && i < 100000; i++) {
            size_t n = sizes[i % (sizeof sizes / sizeof sizes[0])];

            if (n > len - off)
                n = len - off;
            assert_int_equal(spool_write(s, (const char *)data + off, n), 0);
            off += n;
            assert_int_equal(spool_size(s), off);
            if (flush_each)
                assert_int_equal(spool_flush(s), 0);
        }
        assert_true(spool_in_file(s));
        assert_reads_exactly(s, data, len);
        assert_sends_exactly(s, data, len);
        spool_reset(s);
        assert_int_equal(spool_write(s, (const char *)data, 10), 0);
        assert_false(spool_in_file(s));
        assert_reads_exactly(s, data, 10);
        spool_free(s);
    }
    free(data);
}

static int move_from_evbuffer(void *arg, size_t n, struct evbuffer *dst)
{
    return evbuffer_remove_buffer(arg, dst, n) == (int)n ? 0 : -1;
}

/* spool_take moves the input's bytes instead of copying them: mixed with
 * copied writes, in memory and across the threshold into the file, the
 * spool holds exactly the bytes in their order, and the source loses them. */
static void taken_and_written_bytes_read_back_identical_in_memory_and_file(void **state)
{
    (void)state;
    size_t len = 300 * 1024 + 5;
    unsigned char *data = pattern_new(len);
    static const size_t sizes[] = {40000, 3, 65536, 1, 70000, 512};
    struct spool *s = spool_new(THRESHOLD, tmp_dir());
    struct evbuffer *src = evbuffer_new();
    size_t off = 0;

    assert_non_null(s);
    assert_non_null(src);
    for (size_t i = 0; off < len && i < 100000; i++) {
        size_t n = sizes[i % (sizeof sizes / sizeof sizes[0])];

        if (n > len - off)
            n = len - off;
        if (i % 2 == 0) {
            assert_int_equal(evbuffer_add(src, data + off, n), 0);
            assert_int_equal(spool_take(s, n, move_from_evbuffer, src), 0);
            assert_int_equal(evbuffer_get_length(src), 0);
        } else {
            assert_int_equal(spool_write(s, (const char *)data + off, n), 0);
        }
        off += n;
        assert_int_equal(spool_size(s), off);
        if (off < THRESHOLD / 2) {
            assert_false(spool_in_file(s));
            assert_reads_exactly(s, data, off);
        }
    }
    assert_true(spool_in_file(s));
    assert_reads_exactly(s, data, len);
    assert_sends_exactly(s, data, len);
    spool_reset(s);
    assert_int_equal(evbuffer_add(src, data, 100), 0);
    assert_int_equal(spool_take(s, 100, move_from_evbuffer, src), 0);
    assert_false(spool_in_file(s));
    assert_reads_exactly(s, data, 100);
    assert_sends_exactly(s, data, 100);
    evbuffer_free(src);
    spool_free(s);
    free(data);
}

/* Cut-through: what spool_add_new_to hands out as the message grows is
 * exactly the bytes written since the last call, and stays so while later
 * writes follow (a chunk taken from a partly read input chain, which
 * libevent would realign in place for the next small write) and while the
 * message moves to the file; the spool still holds the whole message. */
static void bytes_handed_out_as_the_message_grows_arrive_exactly(void **state)
{
    (void)state;
    size_t len = 200 * 1024;
    unsigned char *data = pattern_new(len);
    struct spool *s = spool_new(64 * 1024, tmp_dir());
    struct evbuffer *src = evbuffer_new();
    struct evbuffer *out = evbuffer_new();
    size_t off = 0;

    assert_non_null(s);
    assert_non_null(src);
    assert_non_null(out);
    for (int i = 0; off < len && i < 10000; i++) {
        size_t n = i % 3 == 0 ? 1000 : 500 + (size_t)(i % 5) * 777;
        uint64_t added = 0;

        if (n > len - off)
            n = len - off;
        if (i % 3 == 0) {
            /* A chain whose first 3000 bytes were read already. */
            unsigned char skip[3000] = {0};
            assert_int_equal(evbuffer_add(src, skip, sizeof skip), 0);
            assert_int_equal(evbuffer_add(src, data + off, n), 0);
            evbuffer_drain(src, sizeof skip);
            assert_int_equal(spool_take(s, n, move_from_evbuffer, src), 0);
        } else {
            assert_int_equal(spool_write(s, (const char *)data + off, n), 0);
        }
        off += n;
        assert_int_equal(spool_add_new_to(s, out, &added), 0);
        assert_int_equal(added, n);
        assert_int_equal(evbuffer_get_length(out), off);
    }
    assert_true(spool_in_file(s));
    assert_holds_exactly(out, data, len);
    assert_reads_exactly(s, data, len);
    evbuffer_free(out);
    evbuffer_free(src);
    spool_free(s);
    free(data);
}

/* A file that cannot be created spoils the message at the write that
 * crosses the threshold, and every later write and flush fails too, until
 * the next message. */
static void a_failed_write_fails_every_later_write_until_reset(void **state)
{
    (void)state;
    struct spool *s = spool_new(THRESHOLD, "/nonexistent/sluice-spool-test");
    unsigned char *data = pattern_new(THRESHOLD + 1);

    assert_non_null(s);
    assert_int_equal(spool_write(s, (const char *)data, THRESHOLD), 0);
    errno = 0;
    assert_int_equal(spool_write(s, (const char *)data, 1), -1);
    assert_int_not_equal(errno, 0);
    assert_int_equal(spool_write(s, (const char *)data, 1), -1);
    assert_int_equal(spool_flush(s), -1);
    spool_reset(s);
    assert_int_equal(spool_write(s, (const char *)data, 5), 0);
    assert_int_equal(spool_flush(s), 0);
    assert_reads_exactly(s, data, 5);
    spool_free(s);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(small_message_stays_in_memory_without_touching_the_disk),
        cmocka_unit_test(crossing_the_threshold_moves_to_a_file_byte_identical),
        cmocka_unit_test(one_append_larger_than_the_threshold_goes_to_the_file),
        cmocka_unit_test(message_is_sent_twice_identically_from_memory_and_from_file),
        cmocka_unit_test(thirty_mib_in_chunks_reads_back_identical),
        cmocka_unit_test(read_at_offsets_in_memory_and_in_file),
        cmocka_unit_test(reset_empties_and_the_next_small_message_is_in_memory),
        cmocka_unit_test(reset_after_sending_leaves_the_queued_copy_intact),
        cmocka_unit_test(empty_spool_adds_nothing),
        cmocka_unit_test(small_writes_across_the_threshold_and_the_write_behind_read_back_identical),
        cmocka_unit_test(a_failed_write_fails_every_later_write_until_reset),
        cmocka_unit_test(taken_and_written_bytes_read_back_identical_in_memory_and_file),
        cmocka_unit_test(bytes_handed_out_as_the_message_grows_arrive_exactly),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
