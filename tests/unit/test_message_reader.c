/* The SDK's message reader (ABI 1.2): random access and length of the
 * un-stuffed message, from memory and from the spool file, on another
 * thread, and after the session let go of the spool. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include <sluice/session.h>

#include "session_internal.h"
#include "spool.h"

#define MEM_THRESHOLD 4096
#define LINES 80000 /* about 2.7 MB: past a few of the reader's 1 MiB marks */
#define PROBES 200

struct message {
    char *stuffed; /* as spooled */
    size_t stuffed_len;
    char *plain; /* what the reader must give */
    size_t plain_len;
};

/* Lines of varied length, every third one starting with a dot (stuffed
 * once more in the spool), one with NUL bytes. */
static struct message message_new(size_t lines)
{
    struct message m = {0};
    m.stuffed = malloc(lines * 64 * 2);
    m.plain = malloc(lines * 64 * 2);
    assert_non_null(m.stuffed);
    assert_non_null(m.plain);
    for (size_t i = 0; i < lines; i++) {
        char line[64];
        int n = snprintf(line, sizeof line, "%sline %zu %.*s\r\n", i % 3 == 0 ? "." : "", i,
                         (int)(i % 37), "abcdefghijklmnopqrstuvwxyz0123456789!");
        if (i == 5) {
            memcpy(line, "a\0b\0\r\n", 6);
            n = 6;
        }
        if (line[0] == '.')
            m.stuffed[m.stuffed_len++] = '.';
        memcpy(m.stuffed + m.stuffed_len, line, (size_t)n);
        m.stuffed_len += (size_t)n;
        memcpy(m.plain + m.plain_len, line, (size_t)n);
        m.plain_len += (size_t)n;
    }
    return m;
}

static void message_free(struct message *m)
{
    free(m->stuffed);
    free(m->plain);
}

/* A session with only what the reader touches: its spool. */
static struct session *session_with(const struct message *m, size_t threshold)
{
    struct session *s = calloc(1, sizeof *s);
    assert_non_null(s);
    const char *dir = getenv("TMPDIR");
    s->spool = spool_new(threshold, dir && *dir ? dir : "/tmp");
    assert_non_null(s->spool);
    struct evbuffer *src = evbuffer_new();
    assert_int_equal(evbuffer_add(src, m->stuffed, m->stuffed_len), 0);
    assert_int_equal(spool_append(s->spool, src), 0);
    evbuffer_free(src);
    return s;
}

static void session_drop(struct session *s)
{
    spool_free(s->spool);
    free(s);
}

static void assert_reads_like(sluice_message_reader *r, const struct message *m)
{
    assert_int_equal(sluice_message_length(r), (int64_t)m->plain_len);
    char buf[3000];
    uint32_t x = 2463534242u;
    for (int i = 0; i < PROBES; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        uint64_t off = x % (m->plain_len + 10);
        size_t len = 1 + (x >> 7) % sizeof buf;
        ssize_t got = sluice_message_pread(r, buf, len, off);
        size_t want = off >= m->plain_len ? 0
                      : len < m->plain_len - off ? len
                                                 : m->plain_len - off;
        assert_int_equal(got, (ssize_t)want);
        assert_memory_equal(buf, m->plain + (off < m->plain_len ? off : 0), want);
    }
}

static void pread_and_length_match_the_unstuffed_message_in_memory_and_in_file(void **state)
{
    struct message m = message_new(LINES);
    for (int file = 0; file < 2; file++) {
        struct session *s = session_with(&m, file ? MEM_THRESHOLD : m.stuffed_len);
        assert_int_equal(spool_in_file(s->spool), file);
        sluice_message_reader *r = sluice_message_open((sluice_session *)s);
        assert_non_null(r);
        assert_reads_like(r, &m);
        sluice_message_close(r);
        session_drop(s);
    }
    message_free(&m);
}

static void pread_moves_the_stream_position(void **state)
{
    struct message m = message_new(100);
    struct session *s = session_with(&m, MEM_THRESHOLD);
    sluice_message_reader *r = sluice_message_open((sluice_session *)s);
    char buf[16];
    assert_int_equal(sluice_message_pread(r, buf, 4, 10), 4);
    assert_int_equal(sluice_message_read(r, buf, sizeof buf), sizeof buf);
    assert_memory_equal(buf, m.plain + 14, sizeof buf);
    sluice_message_close(r);
    session_drop(s);
    message_free(&m);
}

struct thread_read {
    sluice_message_reader *r;
    const struct message *m;
    bool same;
};

static void *read_on_a_thread(void *arg)
{
    struct thread_read *t = arg;
    char *all = malloc(t->m->plain_len + 1);
    size_t have = 0;
    ssize_t n;
    while ((n = sluice_message_read(t->r, all + have, t->m->plain_len + 1 - have)) > 0)
        have += (size_t)n;
    t->same = have == t->m->plain_len && memcmp(all, t->m->plain, have) == 0;
    free(all);
    sluice_message_close(t->r);
    return NULL;
}

static void reader_outlives_the_sessions_spool_and_reads_on_another_thread(void **state)
{
    struct message m = message_new(LINES);
    for (int file = 0; file < 2; file++) {
        struct session *s = session_with(&m, file ? MEM_THRESHOLD : m.stuffed_len);
        struct thread_read t = {.r = sluice_message_open((sluice_session *)s), .m = &m};
        assert_non_null(t.r);
        assert_true(spool_shared(s->spool));
        /* The session moves on: its reference goes, the reader's stays. */
        session_drop(s);
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, read_on_a_thread, &t), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_true(t.same);
    }
    message_free(&m);
}

static void a_closed_reader_leaves_the_spool_to_the_session(void **state)
{
    struct message m = message_new(10);
    struct session *s = session_with(&m, MEM_THRESHOLD);
    sluice_message_reader *r = sluice_message_open((sluice_session *)s);
    assert_true(spool_shared(s->spool));
    sluice_message_close(r);
    assert_false(spool_shared(s->spool));
    spool_reset(s->spool);
    assert_int_equal(spool_size(s->spool), 0);
    session_drop(s);
    message_free(&m);
}

/* A header bigger than the parser's first reads (fields across every read
 * boundary, a folded one, a dot-stuffed one) over a large body: every field
 * is found, the header ends at the blank line, in memory and in the file. */
static void header_larger_than_one_read_is_parsed_whole_and_ends_at_the_blank_line(void **state)
{
    (void)state;
    enum { FIELDS = 700, BODY_LINES = 20000 };
    size_t cap = FIELDS * 64 + BODY_LINES * 16 + 64;
    struct message m = {.stuffed = malloc(cap)};
    assert_non_null(m.stuffed);
    for (size_t i = 0; i < FIELDS; i++) {
        int n = i == 3 ? snprintf(m.stuffed + m.stuffed_len, 64, "X-Fold: a\r\n\tb\r\n")
                : i == 4 ? snprintf(m.stuffed + m.stuffed_len, 64, "..Dot: d\r\n")
                         : snprintf(m.stuffed + m.stuffed_len, 64, "X-H%zu: value %zu %.*s\r\n",
                                    i, i, (int)(i % 29), "abcdefghijklmnopqrstuvwxyz01");
        m.stuffed_len += (size_t)n;
    }
    memcpy(m.stuffed + m.stuffed_len, "\r\n", 2);
    m.stuffed_len += 2;
    for (size_t i = 0; i < BODY_LINES; i++)
        m.stuffed_len += (size_t)snprintf(m.stuffed + m.stuffed_len, 16, "Body: %zu\r\n", i);
    for (int file = 0; file < 2; file++) {
        struct session *s = session_with(&m, file ? MEM_THRESHOLD : m.stuffed_len);
        assert_true(message_info_parse(s));
        assert_int_equal(sluice_header_count((sluice_session *)s), FIELDS);
        size_t len;
        const char *v = sluice_header_get((sluice_session *)s, "X-Fold", 0, &len);
        assert_non_null(v);
        assert_int_equal(len, strlen(" a\r\n\tb"));
        assert_memory_equal(v, " a\r\n\tb", len);
        assert_non_null(sluice_header_get((sluice_session *)s, ".Dot", 0, NULL));
        v = sluice_header_get((sluice_session *)s, "X-H699", 0, &len);
        assert_non_null(v);
        assert_memory_equal(v, " value 699 ", strlen(" value 699 "));
        assert_null(sluice_header_get((sluice_session *)s, "Body", 0, NULL));
        message_info_free(s->msg);
        session_drop(s);
    }
    free(m.stuffed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pread_and_length_match_the_unstuffed_message_in_memory_and_in_file),
        cmocka_unit_test(pread_moves_the_stream_position),
        cmocka_unit_test(reader_outlives_the_sessions_spool_and_reads_on_another_thread),
        cmocka_unit_test(a_closed_reader_leaves_the_spool_to_the_session),
        cmocka_unit_test(header_larger_than_one_read_is_parsed_whole_and_ends_at_the_blank_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
