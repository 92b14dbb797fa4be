/* The I/O layer on a real socket pair and a real event loop: lines in,
 * replies out, the close delivered from the loop, the input limit, no
 * buffer memory held by an idle connection, a bulk read in one turn up to
 * the burst, a write the output cannot take reported from the loop, and
 * memory and a spool file's segment leaving in order, and the timeouts and
 * the deadline (one lazily moved timer) ringing when due and not before.
 * libevent allocates through a counting allocator here (what sluice's
 * io_use_own_allocator does with malloc). */
#include <errno.h>
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "io.h"
#include "spool.h"

#define LOOP_TURNS 200 /* bound on loop iterations waiting for one thing */

static size_t live_bytes;  /* held by libevent's allocations now */
static bool fail_next;     /* the next libevent allocation fails */

static void *count_malloc(size_t n)
{
    if (fail_next) {
        fail_next = false;
        return NULL;
    }
    void *p = malloc(n);
    if (p)
        live_bytes += malloc_usable_size(p);
    return p;
}

static void *count_realloc(void *p, size_t n)
{
    if (fail_next) {
        fail_next = false;
        return NULL;
    }
    size_t was = p ? malloc_usable_size(p) : 0;
    void *q = realloc(p, n);
    if (q)
        live_bytes += malloc_usable_size(q) - was;
    return q;
}

static void count_free(void *p)
{
    if (p)
        live_bytes -= malloc_usable_size(p);
    free(p);
}

struct peer {
    struct event_base *base;
    struct io *io;
    int fd;  /* the other end */
    int own; /* io's end */
    char line[64];
    size_t line_len;
    int lines;
    int events[IO_CLOSED + 1];
    bool in_call;       /* inside a call into io: no callback may arrive */
    bool reentered;
    bool reply_in_callback;
    bool read_in_callback;
};

static void on_input(struct io *io, void *arg)
{
    struct peer *p = arg;
    if (p->in_call)
        p->reentered = true;
    if (!p->read_in_callback)
        return;
    size_t len;
    while (io_read_line(io, p->line, sizeof p->line, &len) == IO_LINE_OK) {
        p->line_len = len;
        p->lines++;
        if (p->reply_in_callback) {
            assert_int_equal(io_write(io, "250 a\r\n", 7), 0);
            assert_int_equal(io_write(io, "250 b\r\n", 7), 0);
        }
    }
}

static void on_event(struct io *io, enum io_event ev, void *arg)
{
    struct peer *p = arg;
    (void)io;
    if (p->in_call)
        p->reentered = true;
    p->events[ev]++;
}

static const struct io_callbacks callbacks = {.input = on_input, .event = on_event};

static void peer_open(struct peer *p)
{
    memset(p, 0, sizeof *p);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    p->base = event_base_new();
    assert_non_null(p->base);
    p->own = sv[0];
    p->io = io_new(p->base, sv[0], &callbacks, p);
    assert_non_null(p->io);
    p->fd = sv[1];
    p->read_in_callback = true;
}

static void peer_close(struct peer *p)
{
    if (p->io)
        io_free(p->io);
    close(p->fd);
    event_base_free(p->base);
}

static void turn(struct peer *p) { event_base_loop(p->base, EVLOOP_ONCE | EVLOOP_NONBLOCK); }

/* Loop turns until *counter moves, bounded. */
static bool turn_until(struct peer *p, const int *counter)
{
    int was = *counter;
    for (int i = 0; i < LOOP_TURNS && *counter == was; i++) {
        turn(p);
        if (*counter == was)
            usleep(1000);
    }
    return *counter != was;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Loop turns for ms milliseconds (bounded by the clock); returns how often
 * *counter moved meanwhile. */
static int turn_for(struct peer *p, const int *counter, int64_t ms)
{
    int was = *counter;
    int64_t end = now_ms() + ms;
    while (now_ms() < end) {
        turn(p);
        usleep(1000);
    }
    return *counter - was;
}

/* Milliseconds until *counter moves, turning the loop; -1 past max_ms. */
static int64_t ms_until(struct peer *p, const int *counter, int64_t max_ms)
{
    int was = *counter;
    int64_t start = now_ms();
    while (*counter == was && now_ms() - start <= max_ms) {
        turn(p);
        if (*counter == was)
            usleep(1000);
    }
    return *counter == was ? -1 : now_ms() - start;
}

/* *counter moves no sooner than ms and well before ms + 1 s. */
static void assert_rings_after(struct peer *p, const int *counter, int64_t ms)
{
    int64_t waited = ms_until(p, counter, ms + 2000);
    assert_true(waited >= ms - 2); /* the clocks' millisecond rounding */
    assert_true(waited < ms + 1000);
}

static size_t peer_read(struct peer *p, char *buf, size_t cap)
{
    ssize_t n = read(p->fd, buf, cap);
    return n > 0 ? (size_t)n : 0;
}

static void test_a_line_with_nul_is_read_whole_and_the_replies_of_one_callback_leave_in_one_write(
    void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    p.reply_in_callback = true;
    assert_int_equal(write(p.fd, "HE\0LO x\r\n", 9), 9);
    assert_true(turn_until(&p, &p.lines));
    assert_int_equal(p.line_len, 7);
    assert_memory_equal(p.line, "HE\0LO x", 7);
    /* Both replies were queued inside the callback and left when it
     * returned: the peer finds them together, and io holds nothing. */
    char buf[64];
    assert_int_equal(peer_read(&p, buf, sizeof buf), 14);
    assert_memory_equal(buf, "250 a\r\n250 b\r\n", 14);
    assert_int_equal(io_output_len(p.io), 0);
    peer_close(&p);
}

static void test_an_idle_connection_holds_no_buffer_memory(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    size_t idle = live_bytes;
    p.reply_in_callback = true;
    assert_int_equal(write(p.fd, "NOOP\r\n", 6), 6);
    assert_true(turn_until(&p, &p.lines));
    char buf[64];
    assert_int_equal(peer_read(&p, buf, sizeof buf), 14);
    /* The line was taken and the replies written: what the read and the
     * write needed is given back. */
    assert_int_equal(live_bytes, idle);
    peer_close(&p);
}

static void test_close_when_flushed_writes_everything_then_closes_from_the_loop(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    p.in_call = true;
    assert_int_equal(io_write(p.io, "221 bye\r\n", 9), 0);
    io_close_when_flushed(p.io, 1000);
    io_close_when_flushed(p.io, 1000); /* idempotent */
    p.in_call = false;
    assert_false(p.reentered);
    assert_int_equal(p.events[IO_CLOSED], 0);
    assert_true(turn_until(&p, &p.events[IO_CLOSED]));
    assert_int_equal(p.events[IO_CLOSED], 1);
    char buf[64];
    assert_int_equal(peer_read(&p, buf, sizeof buf), 9);
    assert_memory_equal(buf, "221 bye\r\n", 9);
    /* Nothing but IO_CLOSED follows the close. */
    for (int ev = IO_CONNECTED; ev < IO_CLOSED; ev++)
        assert_int_equal(p.events[ev], 0);
    peer_close(&p);
}

static void test_the_input_limit_stops_reading_until_input_is_taken(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    p.read_in_callback = false;
    io_set_input_limit(p.io, 16);
    char data[64];
    memset(data, 'x', sizeof data);
    assert_int_equal(write(p.fd, data, sizeof data), (ssize_t)sizeof data);
    for (int i = 0; i < 20; i++)
        turn(&p);
    assert_int_equal(io_input_len(p.io), 16);
    io_input_drain(p.io, 16);
    for (int i = 0; i < 20 && io_input_len(p.io) == 0; i++)
        turn(&p);
    assert_int_equal(io_input_len(p.io), 16);
    peer_close(&p);
}

/* Writes up to want bytes without blocking; returns how many the socket took. */
static size_t peer_write_bulk(struct peer *p, size_t want)
{
    int big = 1 << 20;
    setsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    static char chunk[16384];
    memset(chunk, 'x', sizeof chunk);
    size_t sent = 0;
    while (sent < want) {
        size_t n = want - sent < sizeof chunk ? want - sent : sizeof chunk;
        ssize_t w = write(p->fd, chunk, n);
        if (w <= 0)
            break;
        sent += (size_t)w;
    }
    return sent;
}

static void test_a_bulk_waiting_in_the_kernel_is_read_in_one_turn_up_to_the_burst(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    p.read_in_callback = false;
    io_expect_bulk(p.io);
    /* A message of 160 KiB: the whole of it in one turn of the loop, not a
     * read per turn. */
    size_t sent = peer_write_bulk(&p, 160 * 1024);
    assert_int_equal(sent, 160 * 1024);
    turn(&p);
    assert_int_equal(io_input_len(p.io), sent);
    io_input_drain(p.io, sent);
    /* More than a burst waiting: one turn takes exactly the burst, the rest
     * waits for the next turn (the other sessions of the thread run between). */
    sent = peer_write_bulk(&p, IO_READ_BURST + 64 * 1024);
    assert_true(sent > IO_READ_BURST);
    turn(&p);
    assert_int_equal(io_input_len(p.io), IO_READ_BURST);
    turn(&p);
    assert_int_equal(io_input_len(p.io), sent);
    peer_close(&p);
}

static void test_a_write_the_output_cannot_take_breaks_the_connection_from_the_loop(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    p.in_call = true;
    fail_next = true;
    assert_int_equal(io_write(p.io, "250 ok\r\n", 8), -1);
    fail_next = false;
    assert_int_equal(io_output_len(p.io), 0);
    assert_int_equal(io_write(p.io, "more\r\n", 6), 0); /* dropped: the connection broke */
    p.in_call = false;
    assert_false(p.reentered);
    assert_true(turn_until(&p, &p.events[IO_ERROR]));
    assert_string_equal(io_error_text(p.io), strerror(ENOMEM));
    char buf[64];
    assert_int_equal(peer_read(&p, buf, sizeof buf), 0);
    peer_close(&p);
}

/* A spool in its file between two memory writes, through a socket that
 * takes little at a time: the bytes arrive whole and in order (the file's
 * part by libevent's sendfile, the rest by send), and the memory written
 * after the output drained goes by send again. */
static void test_memory_and_a_spool_file_leave_whole_and_in_order_through_a_small_buffer(
    void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    int small = 4096;
    assert_int_equal(setsockopt(p.own, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    enum { FILE_BYTES = 300 * 1024 };
    char *body = malloc(FILE_BYTES);
    assert_non_null(body);
    for (size_t i = 0; i < FILE_BYTES; i++)
        body[i] = (char)('a' + i % 23);
    struct spool *sp = spool_new(1024, "/tmp");
    assert_int_equal(spool_write(sp, body, FILE_BYTES), 0);
    assert_true(spool_in_file(sp));

    assert_int_equal(io_write(p.io, "head\r\n", 6), 0);
    assert_int_equal(io_write_spool(p.io, sp, 0), 0);
    assert_int_equal(io_write(p.io, "tail\r\n", 6), 0);
    size_t want = 6 + FILE_BYTES + 6, got = 0;
    char *seen = malloc(want + 64);
    assert_non_null(seen);
    for (int i = 0; i < LOOP_TURNS * 10 && got < want; i++) {
        turn(&p);
        got += peer_read(&p, seen + got, want + 64 - got);
    }
    assert_int_equal(got, want);
    assert_memory_equal(seen, "head\r\n", 6);
    assert_memory_equal(seen + 6, body, FILE_BYTES);
    assert_memory_equal(seen + 6 + FILE_BYTES, "tail\r\n", 6);
    assert_int_equal(io_output_len(p.io), 0);

    assert_int_equal(io_write(p.io, "250 after\r\n", 11), 0);
    char buf[64];
    size_t n = 0;
    for (int i = 0; i < LOOP_TURNS && n < 11; i++) {
        turn(&p);
        n += peer_read(&p, buf + n, sizeof buf - n);
    }
    assert_int_equal(n, 11);
    assert_memory_equal(buf, "250 after\r\n", 11);
    for (int ev = IO_CONNECTED; ev <= IO_CLOSED; ev++)
        assert_int_equal(p.events[ev], 0);
    spool_free(sp);
    free(seen);
    free(body);
    peer_close(&p);
}

static void test_the_read_timeout_starts_again_with_every_arrival(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    io_set_timeouts(p.io, 150, 0);
    /* Bytes every 60 ms for 300 ms: twice the timeout, yet never silent for it. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(write(p.fd, "x", 1), 1);
        assert_int_equal(turn_for(&p, &p.events[IO_READ_TIMEOUT], 60), 0);
    }
    int64_t waited = ms_until(&p, &p.events[IO_READ_TIMEOUT], 2000);
    assert_true(waited >= 150 - 60 - 2); /* the last arrival was up to 60 ms ago */
    assert_true(waited < 150 + 1000);
    peer_close(&p);
}

static void test_a_paused_read_does_not_time_out_and_times_again_from_the_resume(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    io_set_timeouts(p.io, 100, 0);
    io_pause(p.io);
    assert_int_equal(turn_for(&p, &p.events[IO_READ_TIMEOUT], 250), 0);
    io_resume(p.io);
    assert_rings_after(&p, &p.events[IO_READ_TIMEOUT], 100);
    peer_close(&p);
}

static void test_a_deadline_rings_before_a_later_read_timeout_and_a_cleared_one_never(
    void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    io_set_timeouts(p.io, 5000, 0);
    /* A far deadline then a near one: the timer moves earlier at once. */
    io_set_deadline(p.io, 3000);
    io_set_deadline(p.io, 80);
    assert_rings_after(&p, &p.events[IO_DEADLINE], 80);
    assert_int_equal(p.events[IO_READ_TIMEOUT], 0);
    /* A near deadline cleared, then a later one: only the later rings. */
    io_set_deadline(p.io, 50);
    io_clear_deadline(p.io);
    io_set_deadline(p.io, 200);
    assert_rings_after(&p, &p.events[IO_DEADLINE], 200);
    io_set_deadline(p.io, 50);
    io_clear_deadline(p.io);
    assert_int_equal(turn_for(&p, &p.events[IO_DEADLINE], 200), 0);
    assert_int_equal(p.events[IO_DEADLINE], 2);
    peer_close(&p);
}

static void test_output_the_peer_does_not_take_times_out(void **state)
{
    (void)state;
    struct peer p;
    peer_open(&p);
    int small = 4096;
    setsockopt(p.own, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    io_set_timeouts(p.io, 0, 120);
    static char block[256 * 1024];
    memset(block, 'y', sizeof block);
    assert_int_equal(io_write(p.io, block, sizeof block), 0);
    assert_true(io_output_len(p.io) > 0); /* the kernel took only part */
    assert_rings_after(&p, &p.events[IO_WRITE_TIMEOUT], 120);
    peer_close(&p);
}

int main(void)
{
    event_set_mem_functions(count_malloc, count_realloc, count_free);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_a_line_with_nul_is_read_whole_and_the_replies_of_one_callback_leave_in_one_write),
        cmocka_unit_test(test_an_idle_connection_holds_no_buffer_memory),
        cmocka_unit_test(test_close_when_flushed_writes_everything_then_closes_from_the_loop),
        cmocka_unit_test(test_the_input_limit_stops_reading_until_input_is_taken),
        cmocka_unit_test(test_a_bulk_waiting_in_the_kernel_is_read_in_one_turn_up_to_the_burst),
        cmocka_unit_test(test_a_write_the_output_cannot_take_breaks_the_connection_from_the_loop),
        cmocka_unit_test(
            test_memory_and_a_spool_file_leave_whole_and_in_order_through_a_small_buffer),
        cmocka_unit_test(test_the_read_timeout_starts_again_with_every_arrival),
        cmocka_unit_test(test_a_paused_read_does_not_time_out_and_times_again_from_the_resume),
        cmocka_unit_test(
            test_a_deadline_rings_before_a_later_read_timeout_and_a_cleared_one_never),
        cmocka_unit_test(test_output_the_peer_does_not_take_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
