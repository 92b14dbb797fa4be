#include "io.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "block_cache.h"
#include "mstime.h"
#include "spool.h"

/* A throttle's bucket refills every tick; its burst is one tick's worth. */
#define IO_RATE_TICKS_PER_SECOND 10
/* Writes tried to flush the plaintext before a TLS handshake. */
#define IO_PLAINTEXT_FLUSH_TRIES 8
/* Reads per wakeup (level-triggered) go on only while each fills its room,
 * up to IO_READ_BURST, so a busy peer is served in turns with the others.
 * A read's size follows the peer: a read that fills what was
 * reserved doubles the next one up to IO_READ_MAX (a message streaming in),
 * one that takes less than a quarter halves it down to IO_READ_MIN (the
 * commands of a conversation, which then cost a small chain, not 64 KiB). */
#define IO_READ_MIN (2 * 1024)
#define IO_READ_MAX (64 * 1024)
/* Output a flush at the end of a callback sent in full, this large, may
 * have stopped its writer (the session's output high-water mark is above
 * it): tell it, as if the write event had drained it. */
#define IO_DRAIN_NOTIFY_BYTES (64 * 1024)

/* Pieces of the output one send takes: a 100 KiB message is two or three
 * chains, a burst of replies one. */
#define IO_SEND_PIECES 64

/* Deferred reports, delivered from the loop (never inside a caller's stack). */
#define IO_LATER_ERROR 0x1
#define IO_LATER_CLOSED 0x2
#define IO_LATER_DRAINED 0x4
#define IO_LATER_READ 0x8 /* reading may resume: memory for it may be back */
/* A read that found no memory for its buffer waits this long and tries
 * again: the bytes wait in the kernel, the timeouts of what is awaited
 * still run, and nothing is lost to a passing shortage. */
#define IO_NOMEM_RETRY_MS 50

/* What only a TLS connection needs: allocated at the upgrade. TLS runs on a
 * libevent OpenSSL bufferevent on the same socket. */
struct io_tls {
    struct bufferevent *bev;
    struct ev_token_bucket_cfg *rate;
    bool verify;            /* the peer's certificate is verified (client side) */
    bool peer_verified;     /* it chained to the configured CAs */
    char error[160];        /* why the last TLS handshake failed */
    char peer_subject[256]; /* the peer certificate's subject, "" without one */
};

/* A plaintext connection runs on the socket itself: the read event is
 * registered once (persistent), reads go into reserved buffer space,
 * output is written at once (or once per callback, see io_cork), and the
 * write event is armed only while the kernel does not take everything.
 *
 * The read and write timeouts and the deadline share one timer, moved
 * lazily: activity only notes when each is due, and the timer is re-added
 * only when something falls due before it rings. Re-adding a timer at each
 * read and each command (libevent's persistent timeouts) was one
 * instruction in eight of a relayed small message. */
struct io {
    struct event_base *base;
    int fd;
    struct evbuffer *in, *out; /* plaintext only; NULL under TLS */
    struct event rev;          /* EV_READ|EV_PERSIST */
    struct event wev;          /* EV_WRITE|EV_PERSIST; connect */
    struct event timer;        /* rings at timer_at for the *_due below */
    struct event later;        /* deferred reports (IO_LATER_*) */
    struct event *rate_timer;  /* refills the read throttle; only when throttled */
    struct io_tls *tls;
    const struct io_callbacks *cb;
    void *arg;
    struct io *next_flush;     /* on this thread's list of corked output */
    int64_t read_ms, write_ms;
    /* Monotonic microseconds; 0: not running. */
    int64_t read_due, write_due, deadline_due, timer_at;
    size_t input_limit;
    size_t read_size; /* the next read's reservation (IO_READ_MIN..IO_READ_MAX) */
    size_t rate_per_tick, rate_tokens;
    int error; /* errno of the last IO_ERROR */
    unsigned later_what;
    unsigned depth;            /* callbacks of this io on the stack */
    bool want_read;            /* not paused by the owner */
    bool read_stopped;         /* EOF or a read error: reading is over */
    bool rev_added, wev_added;
    bool connecting;
    bool corked;               /* on the flush list */
    bool close_requested;
    bool discarding;           /* dropping the rest of an over-long line */
    bool freed;                /* io_free from inside a callback: free at its end */
    bool broken;               /* a write failed: output is dropped from now on */
    bool read_nomem;           /* the last read had no buffer: waiting to retry */
    bool out_holds_file;       /* a spool file's segment is queued (sendfile) */
};

/* Writes made while a callback of an io runs on this thread (to it or to
 * any other io of the thread: a client command relayed to its backend)
 * collect here and leave once, when the outermost callback returns. */
static _Thread_local unsigned io_cork_depth;
static _Thread_local struct io *io_flush_list;

static void io_flush(struct io *io);
static void io_update_read(struct io *io, bool retime);
static void io_read_later(struct io *io);

static struct evbuffer *io_in(const struct io *io)
{
    return io->tls ? bufferevent_get_input(io->tls->bev) : io->in;
}

static struct evbuffer *io_out(const struct io *io)
{
    return io->tls ? bufferevent_get_output(io->tls->bev) : io->out;
}

/* ---- delivering callbacks ---------------------------------------------- */

static void io_unlist(struct io *io)
{
    if (!io->corked)
        return;
    for (struct io **pp = &io_flush_list; *pp; pp = &(*pp)->next_flush)
        if (*pp == io) {
            *pp = io->next_flush;
            break;
        }
    io->corked = false;
    io->next_flush = NULL;
}

static void io_destroy(struct io *io);

void io_cork(void) { io_cork_depth++; }

void io_uncork(void)
{
    if (--io_cork_depth != 0)
        return;
    while (io_flush_list) {
        struct io *f = io_flush_list;
        io_unlist(f);
        size_t queued = evbuffer_get_length(io_out(f));
        io_flush(f);
        if (queued >= IO_DRAIN_NOTIFY_BYTES && evbuffer_get_length(io_out(f)) == 0 &&
            !f->close_requested) {
            f->later_what |= IO_LATER_DRAINED;
            event_active(&f->later, 0, 0);
        }
    }
}

static void io_enter(struct io *io)
{
    io->depth++;
    io_cork_depth++;
}

/* Ends a delivery: false when the owner freed the io meanwhile (it is gone
 * now). The outermost delivery on the thread flushes what was corked. */
static bool io_leave(struct io *io)
{
    bool alive = true;
    if (--io->depth == 0 && io->freed) {
        io_destroy(io);
        alive = false;
    }
    io_uncork();
    return alive;
}

static void io_deliver_event(struct io *io, enum io_event ev)
{
    io_enter(io);
    io->cb->event(io, ev, io->arg);
    io_leave(io);
}

/* Reports ev from the loop: for what a caller's own call discovered. */
static void io_report_later(struct io *io, unsigned what)
{
    io->later_what |= what;
    event_active(&io->later, 0, 0);
}

static void io_later_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    unsigned todo = io->later_what;
    io->later_what = 0;
    if (todo & IO_LATER_READ) {
        io->read_nomem = false;
        io_update_read(io, false);
    }
    if (todo & IO_LATER_CLOSED) {
        io_deliver_event(io, IO_CLOSED);
        return;
    }
    if (io->close_requested)
        return;
    if (todo & IO_LATER_ERROR) {
        io_deliver_event(io, IO_ERROR);
        return;
    }
    if ((todo & IO_LATER_DRAINED) && io->cb->drained) {
        io_enter(io);
        io->cb->drained(io, io->arg);
        io_leave(io);
    }
}

/* The close is due: flushed, timed out or broken. */
static void io_close_now(struct io *io) { io_report_later(io, IO_LATER_CLOSED); }

/* ---- timeouts and the deadline ----------------------------------------- */

static void io_read_timed_out(struct io *io);
static void io_write_timed_out(struct io *io);

/* An event could not be added (libevent's allocation for it failed): the
 * io cannot wait any more, which its owner hears as an error. */
static void io_cannot_wait(struct io *io)
{
    io->error = ENOMEM;
    io->read_stopped = true;
    io_report_later(io, IO_LATER_ERROR);
}

static int64_t io_due_in(int64_t ms) { return ms > 0 ? mstime_now_us() + ms * 1000 : 0; }

static int64_t io_earliest_due(const struct io *io)
{
    int64_t due = 0;
    const int64_t all[] = {io->read_due, io->write_due, io->deadline_due};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i] && (!due || all[i] < due))
            due = all[i];
    return due;
}

/* A timer that rings early finds nothing due and moves itself on; one that
 * would ring late is moved now. */
static void io_timer_schedule(struct io *io)
{
    int64_t due = io_earliest_due(io);
    if (!due || (io->timer_at && io->timer_at <= due))
        return;
    int64_t left = due - mstime_now_us();
    struct timeval tv = {.tv_sec = 0, .tv_usec = 0};
    if (left > 0) {
        tv.tv_sec = (time_t)(left / 1000000);
        tv.tv_usec = (suseconds_t)(left % 1000000);
    }
    if (event_add(&io->timer, &tv) < 0) {
        io_cannot_wait(io);
        return;
    }
    io->timer_at = due;
}

/* One expiry per ring: the next one due is rescheduled before it is
 * reported, since the report may free the io. */
static void io_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    io->timer_at = 0;
    int64_t now = mstime_now_us();
    int64_t *due = NULL;
    if (io->deadline_due && io->deadline_due <= now)
        due = &io->deadline_due;
    else if (io->write_due && io->write_due <= now)
        due = &io->write_due;
    else if (io->read_due && io->read_due <= now)
        due = &io->read_due;
    if (due)
        *due = 0;
    io_timer_schedule(io);
    if (due == &io->deadline_due)
        io_deliver_event(io, IO_DEADLINE);
    else if (due == &io->write_due)
        io_write_timed_out(io);
    else if (due == &io->read_due)
        io_read_timed_out(io);
}

static void io_set_read_due(struct io *io, int64_t due)
{
    io->read_due = due;
    io_timer_schedule(io);
}

static void io_set_write_due(struct io *io, int64_t due)
{
    io->write_due = due;
    io_timer_schedule(io);
}

/* ---- plaintext: reading ------------------------------------------------ */

static size_t io_read_room(const struct io *io)
{
    size_t room = io->read_size;
    if (io->input_limit) {
        size_t have = evbuffer_get_length(io->in);
        size_t left = have >= io->input_limit ? 0 : io->input_limit - have;
        if (room > left)
            room = left;
    }
    if (io->rate_per_tick && room > io->rate_tokens)
        room = io->rate_tokens;
    return room;
}

/* Whether the read event should be registered. */
static bool io_should_read(const struct io *io)
{
    return io->fd >= 0 && !io->tls && !io->connecting && io->want_read && !io->read_stopped &&
           !io->close_requested && !io->read_nomem && io_read_room(io) > 0;
}

/* Reading waits for the peer: the event is registered and the read
 * timeout, if any, runs. */
static bool io_read_armed(const struct io *io)
{
    return io->rev_added && (io->read_ms <= 0 || io->read_due != 0);
}

/* Registers or removes the read event as the state wants, and starts or
 * stops the read timeout; retime when the read timeout changed. Pausing is
 * lazy: the registered event stays (no epoll_ctl) until it fires while the
 * read must wait, so a pause that ends before the peer speaks costs
 * nothing; only its timeout stops at once. */
static void io_update_read(struct io *io, bool retime)
{
    if (io->tls || io->fd < 0)
        return;
    if (io_should_read(io)) {
        if (io_read_armed(io) && !retime)
            return;
        if (!io->rev_added && event_add(&io->rev, NULL) < 0) {
            io_read_later(io);
            return;
        }
        io->rev_added = true;
        io_set_read_due(io, io_due_in(io->read_ms));
        return;
    }
    io->read_due = 0; /* lazily: the timer finds nothing due */
    if (io->rev_added && (io->read_stopped || io->close_requested)) {
        event_del(&io->rev);
        io->rev_added = false;
    }
}

static void io_rate_refill(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    io->rate_tokens = io->rate_per_tick;
    io_update_read(io, false);
}

static void io_rate_spent(struct io *io, size_t n)
{
    if (!io->rate_per_tick)
        return;
    io->rate_tokens -= n < io->rate_tokens ? n : io->rate_tokens;
    /* The bucket refills a tick after spending began, like libevent's. */
    if (!evtimer_pending(io->rate_timer, NULL)) {
        struct timeval tick = ms_to_timeval(1000 / IO_RATE_TICKS_PER_SECOND);
        evtimer_add(io->rate_timer, &tick);
    }
}

/* Reads once into reserved input space: no FIONREAD, no copy. */
static ssize_t io_read_some(struct io *io, size_t room)
{
    struct evbuffer_iovec v[2];
    int nv = evbuffer_reserve_space(io->in, (ev_ssize_t)room, v, 2);
    if (nv < 1) {
        errno = ENOMEM;
        return -1;
    }
    size_t left = room;
    for (int i = 0; i < nv; i++) {
        if (v[i].iov_len > left)
            v[i].iov_len = left;
        left -= v[i].iov_len;
    }
    ssize_t n;
    do /* recv skips the VFS layer readv goes through: a little less per read */
        n = nv == 1 ? recv(io->fd, v[0].iov_base, v[0].iov_len, 0)
                    : readv(io->fd, (struct iovec *)v, nv);
    while (n < 0 && errno == EINTR);
    int saved = errno;
    size_t got = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < nv; i++) {
        size_t take = v[i].iov_len < got ? v[i].iov_len : got;
        v[i].iov_len = take;
        got -= take;
    }
    evbuffer_commit_space(io->in, v, nv);
    errno = saved;
    return n;
}

/* An empty input holds no memory: the chain reserved for a read that
 * brought nothing goes (an idle connection keeps no buffer). */
static void io_release_input(struct io *io)
{
    if (evbuffer_get_length(io->in) > 0)
        return;
    struct evbuffer *fresh = evbuffer_new();
    if (fresh) {
        evbuffer_free(io->in);
        io->in = fresh;
    }
}

static void io_adapt_read_size(struct io *io, size_t asked, size_t got)
{
    if (got == asked && io->read_size == asked && io->read_size < IO_READ_MAX)
        io->read_size *= 2;
    else if (got < io->read_size / 4 && io->read_size > IO_READ_MIN)
        io->read_size /= 2;
}

/* No memory for the read buffer: the input stays in the kernel a while. */
static void io_read_later(struct io *io)
{
    io->read_nomem = true;
    event_del(&io->rev);
    io->rev_added = false;
    io->read_due = 0;
    io->later_what |= IO_LATER_READ;
    struct timeval tv = ms_to_timeval(IO_NOMEM_RETRY_MS);
    if (event_add(&io->later, &tv) < 0) {
        io->later_what &= ~(unsigned)IO_LATER_READ;
        io_cannot_wait(io);
    }
}

/* One read into the input and its delivery. Returns the bytes read when
 * the io is alive and may read on, 0 when this wakeup is over (nothing
 * there, an end reported, or the io gone). */
static size_t io_read_once(struct io *io, size_t room)
{
    ssize_t n = io_read_some(io, room);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        io_release_input(io);
        return 0;
    }
    if (n < 0 && errno == ENOMEM) {
        io_read_later(io);
        return 0;
    }
    if (n <= 0) {
        io->error = n < 0 ? errno : 0;
        io_release_input(io);
        io->read_stopped = true;
        io_update_read(io, false);
        io_deliver_event(io, n == 0 ? IO_EOF : IO_ERROR);
        return 0;
    }
    io_rate_spent(io, (size_t)n);
    io_adapt_read_size(io, room, (size_t)n);
    io_enter(io);
    if (io->cb->input)
        io->cb->input(io, io->arg);
    if (!io_leave(io))
        return 0;
    io_update_read(io, false);
    return (size_t)n;
}

static void io_read_timed_out(struct io *io)
{
    /* Reading stops until io_resume, as a bufferevent's did. */
    io->want_read = false;
    io_update_read(io, false);
    io_deliver_event(io, IO_READ_TIMEOUT);
}

static void io_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    size_t room = io_read_room(io);
    if (!io_should_read(io) || room == 0) {
        /* A lazy pause meets input: now stop reading for real. */
        event_del(&io->rev);
        io->rev_added = false;
        io->read_due = 0;
        return;
    }
    /* The peer spoke: the read timeout starts again (later, so the timer
     * stays where it is). */
    if (io->read_ms > 0)
        io->read_due = io_due_in(io->read_ms);
    /* A read that filled its room likely left more in the kernel: read on,
     * up to IO_READ_BURST, so a message passes in one turn instead of one
     * read per turn of every busy session on the thread. */
    size_t burst = 0;
    for (;;) {
        size_t got = io_read_once(io, room);
        burst += got;
        if (got < room || burst >= IO_READ_BURST || !io_should_read(io))
            return;
        room = io_read_room(io);
    }
}

/* ---- plaintext: writing ------------------------------------------------ */

static void io_arm_write(struct io *io)
{
    if (!io->wev_added && event_add(&io->wev, NULL) < 0) {
        io->broken = true;
        io_cannot_wait(io);
        return;
    }
    io->wev_added = true;
    io_set_write_due(io, io_due_in(io->write_ms));
}

static void io_disarm_write(struct io *io)
{
    io->write_due = 0;
    if (!io->wev_added)
        return;
    event_del(&io->wev);
    io->wev_added = false;
}

/* One send of the queued bytes. In memory they go by send (one piece) or
 * sendmsg: socket calls skip the VFS layer writev goes through, a little
 * less per write. A spool file's segment is libevent's to send (sendfile);
 * evbuffer_peek cannot see into one. */
static ssize_t io_send_queued(struct io *io)
{
    if (io->out_holds_file) {
        /* libevent's sendfile says 0, not -1, when the socket is full:
         * errno tells that from a file that ended early. */
        errno = 0;
        int n = evbuffer_write(io->out, io->fd);
        if (n == 0 && errno == 0)
            errno = EIO;
        return n == 0 ? -1 : n;
    }
    struct evbuffer_iovec v[IO_SEND_PIECES];
    int nv = evbuffer_peek(io->out, -1, NULL, v, IO_SEND_PIECES);
    if (nv > IO_SEND_PIECES)
        nv = IO_SEND_PIECES;
    ssize_t n;
    if (nv == 1) {
        n = send(io->fd, v[0].iov_base, v[0].iov_len, MSG_NOSIGNAL);
    } else {
        struct msghdr m = {.msg_iov = (struct iovec *)v, .msg_iovlen = (size_t)nv};
        n = sendmsg(io->fd, &m, MSG_NOSIGNAL);
    }
    if (n > 0)
        evbuffer_drain(io->out, (size_t)n);
    return n;
}

/* Writes what is queued, in one send (or sendfile for a file spool):
 * 1 when all of it left, 0 when the kernel took less, -1 when the
 * connection broke (reported from the loop: the caller may be deep in its
 * own handler). */
static int io_write_out(struct io *io)
{
    while (!io->broken && evbuffer_get_length(io->out) > 0) {
        ssize_t n = io_send_queued(io);
        if (n > 0 || (n < 0 && errno == EINTR))
            continue; /* the kernel may take more: a short write ends with EAGAIN */
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        io->error = n < 0 ? errno : EPIPE;
        io->broken = true;
        io->read_stopped = true;
        io_update_read(io, false);
        io_disarm_write(io);
        io_report_later(io, io->close_requested ? IO_LATER_CLOSED : IO_LATER_ERROR);
    }
    if (io->broken) {
        evbuffer_drain(io->out, evbuffer_get_length(io->out));
        io->out_holds_file = false;
        return -1;
    }
    io->out_holds_file = false;
    if (io->close_requested)
        io_close_now(io);
    return 1;
}

/* Writes now; the write event waits for the rest when the kernel did not
 * take it all. */
static void io_flush(struct io *io)
{
    if (io->tls || io->fd < 0 || io->connecting || io->wev_added)
        return; /* TLS writes itself; the write event owns a blocked output */
    if (io_write_out(io) == 0)
        io_arm_write(io);
}

/* Output queued by the owner: now, or at the end of the running callback. */
static void io_output_queued(struct io *io)
{
    if (io_cork_depth == 0) {
        io_flush(io);
        return;
    }
    if (!io->corked) {
        io->corked = true;
        io->next_flush = io_flush_list;
        io_flush_list = io;
    }
}

static void io_connected(struct io *io)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == EINPROGRESS || err == EALREADY || err == EINTR)
        return; /* not yet */
    io->connecting = false;
    io_disarm_write(io);
    if (err) {
        io->error = err;
        io->read_stopped = true;
        io->broken = true;
        if (io->close_requested)
            io_close_now(io);
        else
            io_deliver_event(io, IO_ERROR);
        return;
    }
    int one = 1;
    setsockopt(io->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    io_flush(io); /* a PROXY header queued before the connect */
    io_update_read(io, false);
    io_deliver_event(io, IO_CONNECTED);
}

static void io_write_timed_out(struct io *io)
{
    if (io->close_requested) {
        io_close_now(io);
        return;
    }
    io_deliver_event(io, IO_WRITE_TIMEOUT); /* connecting too */
}

static void io_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    if (io->connecting) {
        io_connected(io);
        return;
    }
    /* The event stays registered while the output stays blocked; its
     * timeout starts again with every write the peer lets through. */
    if (io->write_ms > 0)
        io->write_due = io_due_in(io->write_ms);
    if (io_write_out(io) != 1)
        return;
    io_disarm_write(io);
    if (io->close_requested)
        return;
    if (io->cb->drained) {
        io_enter(io);
        io->cb->drained(io, io->arg);
        io_leave(io);
    }
}

/* ---- TLS callbacks (the OpenSSL bufferevent) --------------------------- */

static void io_tls_read_cb(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->close_requested || !io->cb->input)
        return;
    io_enter(io);
    io->cb->input(io, io->arg);
    io_leave(io);
}

static void io_tls_write_cb(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->close_requested) {
        if (io_output_len(io) == 0)
            io_close_now(io);
        return;
    }
    if (io->cb->drained) {
        io_enter(io);
        io->cb->drained(io, io->arg);
        io_leave(io);
    }
}

/* What OpenSSL says about a failed handshake, kept for io_error_text. */
static void io_note_tls_error(struct io *io)
{
    SSL *ssl = bufferevent_openssl_get_ssl(io->tls->bev);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = bufferevent_get_openssl_error(io->tls->bev);
    if (io->tls->verify && vr != X509_V_OK)
        snprintf(io->tls->error, sizeof io->tls->error, "certificate: %s",
                 X509_verify_cert_error_string(vr));
    else if (e)
        ERR_error_string_n(e, io->tls->error, sizeof io->tls->error);
    else
        io->tls->error[0] = '\0';
    ERR_clear_error(); /* the failed handshake's queue: not ours to keep */
}

/* The peer's certificate, once the handshake is done. */
static void io_note_peer(struct io *io)
{
    SSL *ssl = bufferevent_openssl_get_ssl(io->tls->bev);
    X509 *peer = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    io->tls->peer_subject[0] = '\0';
    io->tls->peer_verified = false;
    if (!peer)
        return;
    X509_NAME_oneline(X509_get_subject_name(peer), io->tls->peer_subject,
                      sizeof io->tls->peer_subject);
    io->tls->peer_verified = SSL_get_verify_result(ssl) == X509_V_OK;
    X509_free(peer);
}

static void io_tls_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->close_requested) {
        io_close_now(io);
        return;
    }
    enum io_event ev;
    if (what & BEV_EVENT_CONNECTED) {
        io_note_peer(io);
        ev = IO_CONNECTED;
    } else if (what & BEV_EVENT_TIMEOUT) {
        ev = (what & BEV_EVENT_READING) ? IO_READ_TIMEOUT : IO_WRITE_TIMEOUT;
    } else if (what & BEV_EVENT_EOF) {
        ev = IO_EOF;
    } else {
        io->error = EVUTIL_SOCKET_ERROR();
        io_note_tls_error(io);
        ev = IO_ERROR;
    }
    io_deliver_event(io, ev);
}

/* ---- libevent's allocations ------------------------------------------- */

/* Through sluice's own malloc, with freed buffer chains kept for the next
 * (block_cache.h): the test build that fails sluice's allocations one at a
 * time (sluice-failalloc) then fails the buffers' too. */
static void *io_ev_malloc(size_t n) { return block_cache_alloc(n); }
static void *io_ev_realloc(void *p, size_t n) { return block_cache_realloc(p, n); }
static void io_ev_free(void *p) { block_cache_free(p); }

void io_use_own_allocator(void)
{
    event_set_mem_functions(io_ev_malloc, io_ev_realloc, io_ev_free);
}

/* ---- life ---------------------------------------------------------------- */

struct io *io_new(struct event_base *base, int fd, const struct io_callbacks *cb, void *arg)
{
    struct io *io = calloc(1, sizeof *io);
    if (!io)
        return NULL;
    io->base = base;
    io->fd = fd;
    io->cb = cb;
    io->arg = arg;
    io->want_read = true;
    io->read_size = IO_READ_MIN;
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    if (!io->in || !io->out) {
        if (io->in)
            evbuffer_free(io->in);
        if (io->out)
            evbuffer_free(io->out);
        free(io); /* fd stays the caller's */
        return NULL;
    }
    /* Only written to the socket, never read back: a spool file added to it
     * becomes a sendfile segment instead of a mapping of the file. */
    evbuffer_set_flags(io->out, EVBUFFER_FLAG_DRAINS_TO_FD);
    event_assign(&io->timer, base, -1, 0, io_timer_cb, io);
    event_assign(&io->later, base, -1, 0, io_later_cb, io);
    if (fd >= 0) {
        event_assign(&io->rev, base, fd, EV_READ | EV_PERSIST, io_read_cb, io);
        event_assign(&io->wev, base, fd, EV_WRITE | EV_PERSIST, io_write_cb, io);
        io_update_read(io, false);
    }
    return io;
}

int io_connect(struct io *io, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        io->error = errno;
        return -1;
    }
    event_assign(&io->rev, io->base, fd, EV_READ | EV_PERSIST, io_read_cb, io);
    event_assign(&io->wev, io->base, fd, EV_WRITE | EV_PERSIST, io_write_cb, io);
    io->fd = fd;
    io->connecting = true;
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        /* Refused at once: reported from the loop like any failed connect. */
        io->error = errno;
        io->connecting = false;
        io->read_stopped = true;
        io->broken = true;
        io_report_later(io, IO_LATER_ERROR);
        return 0;
    }
    /* Writable means connected (or failed: SO_ERROR says). */
    io_arm_write(io);
    return 0;
}

static void io_tls_free(struct io_tls *t)
{
    if (!t)
        return;
    bufferevent_free(t->bev); /* closes the socket */
    if (t->rate)
        ev_token_bucket_cfg_free(t->rate);
    free(t);
}

static void io_destroy(struct io *io)
{
    io_unlist(io);
    event_del(&io->timer);
    event_del(&io->later);
    if (io->rate_timer)
        event_free(io->rate_timer);
    if (io->tls) {
        io_tls_free(io->tls);
    } else if (io->fd >= 0) {
        event_del(&io->rev);
        event_del(&io->wev);
        close(io->fd);
    }
    if (io->in)
        evbuffer_free(io->in);
    if (io->out)
        evbuffer_free(io->out);
    free(io);
}

void io_free(struct io *io)
{
    if (!io)
        return;
    if (io->depth > 0) {
        /* Inside one of its callbacks: stop everything now, free at its end. */
        io->freed = true;
        io->close_requested = true;
        io_unlist(io);
        event_del(&io->timer);
        event_del(&io->later);
        if (io->tls)
            bufferevent_disable(io->tls->bev, EV_READ | EV_WRITE);
        else if (io->fd >= 0) {
            event_del(&io->rev);
            event_del(&io->wev);
        }
        return;
    }
    io_destroy(io);
}

void io_close_when_flushed(struct io *io, int64_t flush_ms)
{
    if (io->close_requested)
        return;
    io->close_requested = true;
    io_clear_deadline(io);
    io_pause(io);
    io_set_timeouts(io, 0, flush_ms);
    /* The bufferevent's write timeout runs only while its write event
     * waits: in a TLS handshake the peer never finishes (or with reading
     * paused above), none does, and the close would wait for ever. The
     * io's own timer bounds it (io_write_timed_out closes). */
    if (io->tls)
        io_set_write_due(io, io_due_in(flush_ms));
    if (io_output_len(io) == 0 || (!io->tls && io->fd < 0))
        io_close_now(io);
    else if (!io->tls && io_cork_depth == 0)
        io_flush(io);
}

/* ---- input ---- */

enum io_line io_read_line(struct io *io, char *buf, size_t max, size_t *len)
{
    struct evbuffer *in = io_in(io);
    struct evbuffer_ptr p = evbuffer_search(in, "\n", 1, NULL);
    *len = 0;
    if (p.pos < 0) {
        size_t avail = evbuffer_get_length(in);
        if (avail < max)
            return IO_LINE_MORE;
        /* Over the limit with no end in sight: drop what is here. */
        io_input_drain(io, avail);
        if (io->discarding)
            return IO_LINE_MORE;
        io->discarding = true;
        return IO_LINE_LONG_OPEN;
    }
    size_t linelen = (size_t)p.pos + 1;
    if (io->discarding || linelen > max) {
        io_input_drain(io, linelen);
        bool reported = io->discarding;
        io->discarding = false;
        return reported ? IO_LINE_SKIPPED : IO_LINE_TOO_LONG;
    }
    evbuffer_remove(in, buf, linelen);
    if (!io->tls && !io_read_armed(io))
        io_update_read(io, false); /* room again under the input limit */
    size_t n = linelen - 1;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    *len = n;
    return IO_LINE_OK;
}

size_t io_input_len(const struct io *io) { return evbuffer_get_length(io_in(io)); }

bool io_peer_quiet(const struct io *io)
{
    if (io->fd < 0 || io_input_len(io) > 0)
        return false;
    char byte;
    ssize_t n = recv(io->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

const unsigned char *io_input_peek(struct io *io, size_t n)
{
    return evbuffer_pullup(io_in(io), (ev_ssize_t)n);
}

bool io_input_chunk(struct io *io, const char **p, size_t *len)
{
    struct evbuffer_iovec v;
    if (evbuffer_peek(io_in(io), -1, NULL, &v, 1) < 1 || v.iov_len == 0)
        return false;
    *p = v.iov_base;
    *len = v.iov_len;
    return true;
}

void io_input_drain(struct io *io, size_t n)
{
    evbuffer_drain(io_in(io), n);
    if (!io->tls && !io_read_armed(io))
        io_update_read(io, false); /* room again under the input limit */
}

int io_input_move(struct io *io, size_t n, struct evbuffer *dst)
{
    int moved = evbuffer_remove_buffer(io_in(io), dst, n);
    if (!io->tls && !io_read_armed(io))
        io_update_read(io, false); /* room again under the input limit */
    return moved == (int)n ? 0 : -1;
}

bool io_input_all_one_chunk(const struct io *io)
{
    size_t len = io->tls ? 0 : evbuffer_get_length(io->in);
    return len > 0 && evbuffer_get_contiguous_space(io->in) == len;
}

static void io_handed_input_free(const void *data, size_t len, void *buffer)
{
    (void)data;
    (void)len;
    evbuffer_free(buffer);
}

int io_input_hand_over(struct io *io, size_t n, struct evbuffer *dst)
{
    if (!io_input_all_one_chunk(io) || n > evbuffer_get_length(io->in))
        return -1;
    struct evbuffer *fresh = evbuffer_new();
    if (!fresh)
        return -1;
    struct evbuffer *old = io->in;
    const void *p = evbuffer_pullup(old, -1); /* one chain: no copy */
    if (!p || evbuffer_add_reference(dst, p, n, io_handed_input_free, old) != 0) {
        evbuffer_free(fresh);
        return -1;
    }
    io->in = fresh;
    if (!io_read_armed(io))
        io_update_read(io, false); /* room again under the input limit */
    return 0;
}

/* ---- output ---- */

/* The output could not take a write (out of memory): the peer would see
 * the conversation out of step, so the connection ends as broken, reported
 * from the loop; what was queued is dropped, so a close needs no flush. */
static int io_write_failed(struct io *io)
{
    io->error = ENOMEM;
    io->broken = true;
    io->read_stopped = true;
    evbuffer_drain(io_out(io), evbuffer_get_length(io_out(io)));
    if (io->tls) {
        bufferevent_disable(io->tls->bev, EV_READ | EV_WRITE);
        io->tls->error[0] = '\0';
    } else {
        io_unlist(io);
        io_update_read(io, false);
        io_disarm_write(io);
    }
    io_report_later(io, io->close_requested ? IO_LATER_CLOSED : IO_LATER_ERROR);
    return -1;
}

int io_write(struct io *io, const void *buf, size_t len)
{
    if (io->broken)
        return 0; /* IO_ERROR is on its way; the bytes have nowhere to go */
    int rc = io->tls ? bufferevent_write(io->tls->bev, buf, len) : evbuffer_add(io->out, buf, len);
    if (rc < 0)
        return io_write_failed(io);
    if (!io->tls)
        io_output_queued(io);
    return 0;
}

int io_write_reply(struct io *io, enum reply_id id)
{
    return io_write(io, reply_text(id), reply_len(id));
}

int io_write_spool(struct io *io, struct spool *spool, uint64_t offset)
{
    if (io->broken)
        return 0;
    size_t before = evbuffer_get_length(io_out(io));
    uint64_t want = spool_size(spool) - offset;
    io->out_holds_file |= spool_in_file(spool);
    /* Counted, not trusted: libevent 2.1's evbuffer_add_buffer_reference
     * says 0 when a chain allocation failed half way, and a message cut
     * short would be accepted by the server as it is. */
    if (spool_add_range_to(spool, offset, io_out(io)) < 0 ||
        evbuffer_get_length(io_out(io)) - before != want)
        return io_write_failed(io);
    if (!io->tls)
        io_output_queued(io);
    return 0;
}

int io_write_spool_new(struct io *io, struct spool *spool, uint64_t *added)
{
    *added = 0;
    if (io->broken)
        return 0;
    size_t before = evbuffer_get_length(io_out(io));
    io->out_holds_file |= spool_in_file(spool);
    /* Counted, as in io_write_spool: a reference cut short would send a
     * message with a hole. */
    if (spool_add_new_to(spool, io_out(io), added) < 0 ||
        evbuffer_get_length(io_out(io)) - before != *added)
        return io_write_failed(io);
    if (!io->tls && *added > 0)
        io_output_queued(io);
    return 0;
}

size_t io_output_len(const struct io *io) { return evbuffer_get_length(io_out(io)); }

/* ---- what is awaited ---- */

void io_set_timeouts(struct io *io, int64_t read_ms, int64_t write_ms)
{
    io->read_ms = read_ms;
    io->write_ms = write_ms;
    if (io->tls) {
        struct timeval rt = ms_to_timeval(read_ms), wt = ms_to_timeval(write_ms);
        bufferevent_set_timeouts(io->tls->bev, read_ms > 0 ? &rt : NULL,
                                 write_ms > 0 ? &wt : NULL);
        return;
    }
    if (io->rev_added)
        io_update_read(io, true);
    if (io->wev_added)
        io_arm_write(io); /* a new timer only: the event stays registered */
}

void io_set_deadline(struct io *io, int64_t ms)
{
    io->deadline_due = mstime_now_us() + (ms > 0 ? ms : 0) * 1000;
    io_timer_schedule(io);
}

void io_clear_deadline(struct io *io) { io->deadline_due = 0; }

/* ---- flow ---- */

void io_pause(struct io *io)
{
    if (io->tls) {
        bufferevent_disable(io->tls->bev, EV_READ);
        return;
    }
    io->want_read = false;
    io_update_read(io, false);
}

void io_resume(struct io *io)
{
    if (io->tls) {
        bufferevent_enable(io->tls->bev, EV_READ);
        return;
    }
    io->want_read = true;
    io_update_read(io, false);
}

void io_expect_bulk(struct io *io) { io->read_size = IO_READ_MAX; }

void io_set_input_limit(struct io *io, size_t bytes)
{
    io->input_limit = bytes;
    if (io->tls)
        bufferevent_setwatermark(io->tls->bev, EV_READ, 0, bytes);
    else
        io_update_read(io, false);
}

static int io_tls_set_rate(struct io *io, uint64_t bytes_per_second)
{
    if (bytes_per_second == 0) {
        bufferevent_set_rate_limit(io->tls->bev, NULL);
        return 0;
    }
    struct timeval tick = ms_to_timeval(1000 / IO_RATE_TICKS_PER_SECOND);
    size_t per_tick = io->rate_per_tick;
    struct ev_token_bucket_cfg *cfg =
        ev_token_bucket_cfg_new(per_tick, per_tick, EV_RATE_LIMIT_MAX, EV_RATE_LIMIT_MAX, &tick);
    if (!cfg)
        return -1;
    bufferevent_set_rate_limit(io->tls->bev, cfg);
    /* libevent keeps a pointer to the current one: the old one may go. */
    if (io->tls->rate)
        ev_token_bucket_cfg_free(io->tls->rate);
    io->tls->rate = cfg;
    return 0;
}

int io_set_read_rate(struct io *io, uint64_t bytes_per_second)
{
    size_t per_tick = (size_t)(bytes_per_second / IO_RATE_TICKS_PER_SECOND);
    if (bytes_per_second > 0 && per_tick == 0)
        per_tick = 1;
    if (per_tick && !io->rate_timer) {
        io->rate_timer = evtimer_new(io->base, io_rate_refill, io);
        if (!io->rate_timer)
            return -1;
    }
    size_t was = io->rate_per_tick;
    io->rate_per_tick = per_tick;
    if (io->tls) {
        if (io_tls_set_rate(io, bytes_per_second) < 0) {
            io->rate_per_tick = was;
            return -1;
        }
        return 0;
    }
    io->rate_tokens = per_tick; /* a new rate starts with a full bucket */
    if (!per_tick && io->rate_timer)
        evtimer_del(io->rate_timer);
    io_update_read(io, false);
    return 0;
}

const char *io_error_text(const struct io *io)
{
    if (io->tls && io->tls->error[0])
        return io->tls->error;
    return evutil_socket_error_to_string(io->error);
}

/* ---- TLS ---- */

/* What is queued in plaintext (the replies up to STARTTLS's 220) leaves
 * now, before the handshake; the client waits for the 220, so the socket
 * takes it at once. */
static int io_flush_plaintext(struct io *io)
{
    for (int tries = 0; evbuffer_get_length(io->out) > 0 && tries < IO_PLAINTEXT_FLUSH_TRIES;
         tries++)
        if (evbuffer_write(io->out, io->fd) < 0 && errno != EAGAIN && errno != EINTR)
            break;
    return evbuffer_get_length(io->out) == 0 ? 0 : -1;
}

/* Moves the connection onto a TLS bufferevent for ssl (taken over). */
static int io_start_tls(struct io *io, SSL *ssl, enum bufferevent_ssl_state state)
{
    if (io->tls || io->fd < 0 || io->connecting || io_flush_plaintext(io) < 0) {
        io->error = io->fd < 0 || io->tls ? EINVAL : errno;
        SSL_free(ssl);
        return -1;
    }
    struct io_tls *t = calloc(1, sizeof *t);
    struct bufferevent *bev =
        t ? bufferevent_openssl_socket_new(io->base, io->fd, ssl, state, BEV_OPT_CLOSE_ON_FREE)
          : NULL;
    if (!bev) {
        free(t);
        SSL_free(ssl);
        io->error = ENOMEM;
        return -1;
    }
    t->bev = bev;
    /* The plaintext events let go of the socket; what was read and not
     * handed out (pipelined behind STARTTLS) goes with the buffers. */
    io_unlist(io);
    event_del(&io->rev);
    event_del(&io->wev);
    io->rev_added = io->wev_added = false;
    io->read_due = io->write_due = 0; /* the bufferevent times its own */
    if (io->rate_timer)
        evtimer_del(io->rate_timer);
    evbuffer_free(io->in);
    evbuffer_free(io->out);
    io->in = io->out = NULL;
    /* A peer closing without close_notify is an end of stream, not an
     * error (OpenSSL 3's unexpected EOF). */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    io->tls = t;
    io->discarding = false;
    bufferevent_setcb(bev, io_tls_read_cb, io_tls_write_cb, io_tls_event_cb, io);
    if (io->input_limit)
        bufferevent_setwatermark(bev, EV_READ, 0, io->input_limit);
    if (io->rate_per_tick && io_tls_set_rate(io, (uint64_t)io->rate_per_tick *
                                                      IO_RATE_TICKS_PER_SECOND) < 0)
        return -1; /* the owner closes; io_free frees the TLS part */
    io_set_timeouts(io, io->read_ms, io->write_ms);
    bufferevent_enable(bev, io->want_read ? EV_READ | EV_WRITE : EV_WRITE);
    return 0;
}

int io_start_tls_server(struct io *io, void *ssl_ctx)
{
    SSL *ssl = SSL_new(ssl_ctx);
    if (!ssl) {
        io->error = ENOMEM;
        return -1;
    }
    return io_start_tls(io, ssl, BUFFEREVENT_SSL_ACCEPTING);
}

int io_start_tls_client(struct io *io, void *ssl_ctx, const char *name, bool verify)
{
    SSL *ssl = SSL_new(ssl_ctx);
    if (!ssl) {
        io->error = ENOMEM;
        return -1;
    }
    /* A name OpenSSL did not take would leave the certificate's name
     * unchecked (SSL_set1_host), or the server without SNI. */
    if (!name || !*name || SSL_set_tlsext_host_name(ssl, name) != 1 ||
        (verify && SSL_set1_host(ssl, name) != 1)) {
        SSL_free(ssl);
        io->error = EINVAL;
        return -1;
    }
    SSL_set_verify(ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    int rc = io_start_tls(io, ssl, BUFFEREVENT_SSL_CONNECTING);
    if (rc == 0)
        io->tls->verify = verify;
    return rc;
}

bool io_tls_active(const struct io *io) { return io && io->tls; }

static SSL *io_ssl(const struct io *io)
{
    return io && io->tls ? bufferevent_openssl_get_ssl(io->tls->bev) : NULL;
}

const char *io_tls_version(const struct io *io)
{
    SSL *ssl = io_ssl(io);
    return ssl ? SSL_get_version(ssl) : NULL;
}

const char *io_tls_sni(const struct io *io)
{
    SSL *ssl = io_ssl(io);
    return ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

const char *io_tls_peer_subject(const struct io *io)
{
    return io && io->tls && io->tls->peer_subject[0] ? io->tls->peer_subject : NULL;
}

bool io_tls_peer_verified(const struct io *io) { return io && io->tls && io->tls->peer_verified; }

const char *io_tls_cipher(const struct io *io)
{
    SSL *ssl = io_ssl(io);
    return ssl ? SSL_get_cipher_name(ssl) : NULL;
}

void io_tls_describe(const struct io *io, char *out, size_t cap)
{
    SSL *ssl = io_ssl(io);
    if (!ssl || cap == 0) {
        if (cap)
            out[0] = '\0';
        return;
    }
    snprintf(out, cap, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}
