#include "io.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mstime.h"
#include "spool.h"

/* A throttle's bucket refills every tick; its burst is one tick's worth. */
#define IO_RATE_TICKS_PER_SECOND 10
/* Writes tried to flush the plaintext before a TLS handshake. */
#define IO_PLAINTEXT_FLUSH_TRIES 8

struct io {
    struct bufferevent *bev;
    struct event *deadline;
    struct event *closing; /* delivers IO_CLOSED from the loop */
    bool close_requested;
    struct ev_token_bucket_cfg *rate;
    const struct io_callbacks *cb;
    void *arg;
    bool discarding; /* dropping the rest of an over-long line */
    bool tls;        /* bev is a TLS bufferevent */
    bool verify;     /* the peer's certificate is verified (client side) */
    char tls_error[160]; /* why the last TLS handshake failed */
    char peer_subject[256]; /* the peer certificate's subject, "" without one */
    bool peer_verified;     /* it chained to the configured CAs */
    size_t input_limit;
    int error;       /* errno of the last IO_ERROR */
};

static void io_read_cb(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->close_requested)
        return;
    if (io->cb->input)
        io->cb->input(io, io->arg);
}

static void io_write_cb(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->close_requested) {
        if (io_output_len(io) == 0)
            event_active(io->closing, 0, 0);
        return;
    }
    if (io->cb->drained)
        io->cb->drained(io, io->arg);
}

static void io_set_nodelay(struct io *io)
{
    int one = 1;
    evutil_socket_t fd = bufferevent_getfd(io->bev);
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* What OpenSSL says about a failed handshake, kept for io_error_text. */
static void io_note_tls_error(struct io *io)
{
    SSL *ssl = bufferevent_openssl_get_ssl(io->bev);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = bufferevent_get_openssl_error(io->bev);
    if (io->verify && vr != X509_V_OK)
        snprintf(io->tls_error, sizeof io->tls_error, "certificate: %s",
                 X509_verify_cert_error_string(vr));
    else if (e)
        ERR_error_string_n(e, io->tls_error, sizeof io->tls_error);
    else
        io->tls_error[0] = '\0';
    ERR_clear_error(); /* the failed handshake's queue: not ours to keep */
}

/* The peer's certificate, once the handshake is done. */
static void io_note_peer(struct io *io)
{
    SSL *ssl = bufferevent_openssl_get_ssl(io->bev);
    X509 *peer = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    io->peer_subject[0] = '\0';
    io->peer_verified = false;
    if (!peer)
        return;
    X509_NAME_oneline(X509_get_subject_name(peer), io->peer_subject, sizeof io->peer_subject);
    io->peer_verified = SSL_get_verify_result(ssl) == X509_V_OK;
    X509_free(peer);
}

static void io_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->close_requested) {
        /* Flushed, timed out or broken: either way the close is due. */
        event_active(io->closing, 0, 0);
        return;
    }
    enum io_event ev;
    if (what & BEV_EVENT_CONNECTED) {
        if (!io->tls)
            io_set_nodelay(io);
        else
            io_note_peer(io);
        ev = IO_CONNECTED;
    } else if (what & BEV_EVENT_TIMEOUT) {
        ev = (what & BEV_EVENT_READING) ? IO_READ_TIMEOUT : IO_WRITE_TIMEOUT;
    } else if (what & BEV_EVENT_EOF) {
        ev = IO_EOF;
    } else {
        io->error = EVUTIL_SOCKET_ERROR();
        if (io->tls)
            io_note_tls_error(io);
        ev = IO_ERROR;
    }
    io->cb->event(io, ev, io->arg);
}

static void io_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    io->cb->event(io, IO_DEADLINE, io->arg);
}

static void io_closing_cb(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    io->cb->event(io, IO_CLOSED, io->arg);
}

struct io *io_new(struct event_base *base, int fd, const struct io_callbacks *cb, void *arg)
{
    struct io *io = calloc(1, sizeof *io);
    if (!io)
        return NULL;
    io->cb = cb;
    io->arg = arg;
    io->deadline = event_new(base, -1, 0, io_deadline_cb, io);
    io->closing = event_new(base, -1, 0, io_closing_cb, io);
    io->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!io->deadline || !io->closing || !io->bev) {
        if (io->bev)
            bufferevent_setfd(io->bev, -1); /* fd stays the caller's */
        if (io->bev)
            bufferevent_free(io->bev);
        if (io->deadline)
            event_free(io->deadline);
        if (io->closing)
            event_free(io->closing);
        free(io);
        return NULL;
    }
    bufferevent_setcb(io->bev, io_read_cb, io_write_cb, io_event_cb, io);
    bufferevent_enable(io->bev, EV_READ | EV_WRITE);
    if (fd >= 0)
        io_set_nodelay(io);
    return io;
}

int io_connect(struct io *io, const struct sockaddr *sa, socklen_t len)
{
    if (bufferevent_socket_connect(io->bev, sa, (int)len) < 0) {
        io->error = errno;
        return -1;
    }
    return 0;
}

void io_free(struct io *io)
{
    if (!io)
        return;
    bufferevent_free(io->bev);
    event_free(io->deadline);
    event_free(io->closing);
    if (io->rate)
        ev_token_bucket_cfg_free(io->rate);
    free(io);
}

void io_close_when_flushed(struct io *io, int64_t flush_ms)
{
    if (io->close_requested)
        return;
    io->close_requested = true;
    io_clear_deadline(io);
    io_pause(io);
    io_set_timeouts(io, 0, flush_ms);
    if (io_output_len(io) == 0)
        event_active(io->closing, 0, 0);
}

/* ---- input ---- */

enum io_line io_read_line(struct io *io, char *buf, size_t max, size_t *len)
{
    struct evbuffer *in = bufferevent_get_input(io->bev);
    struct evbuffer_ptr p = evbuffer_search(in, "\n", 1, NULL);
    *len = 0;
    if (p.pos < 0) {
        size_t avail = evbuffer_get_length(in);
        if (avail < max)
            return IO_LINE_MORE;
        /* Over the limit with no end in sight: drop what is here. */
        evbuffer_drain(in, avail);
        if (io->discarding)
            return IO_LINE_MORE;
        io->discarding = true;
        return IO_LINE_LONG_OPEN;
    }
    size_t linelen = (size_t)p.pos + 1;
    if (io->discarding || linelen > max) {
        evbuffer_drain(in, linelen);
        bool reported = io->discarding;
        io->discarding = false;
        return reported ? IO_LINE_SKIPPED : IO_LINE_TOO_LONG;
    }
    evbuffer_remove(in, buf, linelen);
    size_t n = linelen - 1;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    *len = n;
    return IO_LINE_OK;
}

size_t io_input_len(const struct io *io)
{
    return evbuffer_get_length(bufferevent_get_input(io->bev));
}

const unsigned char *io_input_peek(struct io *io, size_t n)
{
    return evbuffer_pullup(bufferevent_get_input(io->bev), (ev_ssize_t)n);
}

bool io_input_chunk(struct io *io, const char **p, size_t *len)
{
    struct evbuffer_iovec v;
    if (evbuffer_peek(bufferevent_get_input(io->bev), -1, NULL, &v, 1) < 1 || v.iov_len == 0)
        return false;
    *p = v.iov_base;
    *len = v.iov_len;
    return true;
}

void io_input_drain(struct io *io, size_t n) { evbuffer_drain(bufferevent_get_input(io->bev), n); }

/* ---- output ---- */

int io_write(struct io *io, const void *buf, size_t len)
{
    return bufferevent_write(io->bev, buf, len);
}

int io_write_reply(struct io *io, enum reply_id id)
{
    return io_write(io, reply_text(id), reply_len(id));
}

int io_write_buffer(struct io *io, struct evbuffer *buf)
{
    return bufferevent_write_buffer(io->bev, buf);
}

int io_write_spool(struct io *io, struct spool *spool, uint64_t offset)
{
    return spool_add_range_to(spool, offset, bufferevent_get_output(io->bev));
}

size_t io_output_len(const struct io *io)
{
    return evbuffer_get_length(bufferevent_get_output(io->bev));
}

/* ---- what is awaited ---- */

void io_set_timeouts(struct io *io, int64_t read_ms, int64_t write_ms)
{
    struct timeval rt = ms_to_timeval(read_ms), wt = ms_to_timeval(write_ms);
    bufferevent_set_timeouts(io->bev, read_ms > 0 ? &rt : NULL, write_ms > 0 ? &wt : NULL);
}

void io_set_deadline(struct io *io, int64_t ms)
{
    struct timeval tv = ms_to_timeval(ms);
    event_add(io->deadline, &tv);
}

void io_clear_deadline(struct io *io) { event_del(io->deadline); }

/* ---- flow ---- */

void io_pause(struct io *io) { bufferevent_disable(io->bev, EV_READ); }

void io_resume(struct io *io) { bufferevent_enable(io->bev, EV_READ); }

void io_set_input_limit(struct io *io, size_t bytes)
{
    io->input_limit = bytes;
    bufferevent_setwatermark(io->bev, EV_READ, 0, bytes);
}

int io_set_read_rate(struct io *io, uint64_t bytes_per_second)
{
    if (bytes_per_second == 0) {
        bufferevent_set_rate_limit(io->bev, NULL);
        return 0;
    }
    struct timeval tick = ms_to_timeval(1000 / IO_RATE_TICKS_PER_SECOND);
    size_t per_tick = (size_t)(bytes_per_second / IO_RATE_TICKS_PER_SECOND);
    if (per_tick == 0)
        per_tick = 1;
    struct ev_token_bucket_cfg *cfg =
        ev_token_bucket_cfg_new(per_tick, per_tick, EV_RATE_LIMIT_MAX, EV_RATE_LIMIT_MAX, &tick);
    if (!cfg)
        return -1;
    bufferevent_set_rate_limit(io->bev, cfg);
    /* libevent keeps a pointer to the current one: the old one may go. */
    if (io->rate)
        ev_token_bucket_cfg_free(io->rate);
    io->rate = cfg;
    return 0;
}

const char *io_error_text(const struct io *io)
{
    if (io->tls && io->tls_error[0])
        return io->tls_error;
    return evutil_socket_error_to_string(io->error);
}

/* ---- TLS ---- */

/* What is queued in plaintext (the replies up to STARTTLS's 220) leaves
 * now, before the handshake; the client waits for the 220, so the socket
 * takes it at once. */
static int io_flush_plaintext(struct io *io, evutil_socket_t fd)
{
    struct evbuffer *out = bufferevent_get_output(io->bev);
    /* The bufferevent keeps its output's start frozen between its own
     * writes; this bufferevent is about to go, so this write is the last. */
    evbuffer_unfreeze(out, 1);
    for (int tries = 0; evbuffer_get_length(out) > 0 && tries < IO_PLAINTEXT_FLUSH_TRIES; tries++)
        if (evbuffer_write(out, fd) < 0 && errno != EAGAIN && errno != EINTR)
            break;
    int rc = evbuffer_get_length(out) == 0 ? 0 : -1;
    evbuffer_freeze(out, 1);
    return rc;
}

/* Moves the connection onto a TLS bufferevent for ssl (taken over). */
static int io_start_tls(struct io *io, SSL *ssl, enum bufferevent_ssl_state state)
{
    evutil_socket_t fd = bufferevent_getfd(io->bev);
    if (fd < 0 || io_flush_plaintext(io, fd) < 0) {
        io->error = errno;
        SSL_free(ssl);
        return -1;
    }
    struct bufferevent *tls = bufferevent_openssl_socket_new(bufferevent_get_base(io->bev), fd,
                                                             ssl, state, BEV_OPT_CLOSE_ON_FREE);
    if (!tls) {
        SSL_free(ssl);
        io->error = ENOMEM;
        return -1;
    }
    /* The plaintext bufferevent lets go of the socket without closing it;
     * what it read and did not hand out (pipelined behind STARTTLS) goes
     * with it. */
    bufferevent_setfd(io->bev, -1);
    bufferevent_free(io->bev);
    /* A peer closing without close_notify is an end of stream, not an
     * error (OpenSSL 3's unexpected EOF). */
    bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
    io->bev = tls;
    io->tls = true;
    io->discarding = false;
    bufferevent_setcb(tls, io_read_cb, io_write_cb, io_event_cb, io);
    if (io->input_limit)
        bufferevent_setwatermark(tls, EV_READ, 0, io->input_limit);
    if (io->rate)
        bufferevent_set_rate_limit(tls, io->rate);
    bufferevent_enable(tls, EV_READ | EV_WRITE);
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
    SSL_set_tlsext_host_name(ssl, name);
    if (verify) {
        SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        SSL_set1_host(ssl, name);
    } else {
        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    }
    io->verify = verify;
    return io_start_tls(io, ssl, BUFFEREVENT_SSL_CONNECTING);
}

bool io_tls_active(const struct io *io) { return io->tls; }

static SSL *io_ssl(const struct io *io)
{
    return io && io->tls ? bufferevent_openssl_get_ssl(io->bev) : NULL;
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
    return io && io->tls && io->peer_subject[0] ? io->peer_subject : NULL;
}

bool io_tls_peer_verified(const struct io *io) { return io && io->tls && io->peer_verified; }

const char *io_tls_cipher(const struct io *io)
{
    SSL *ssl = io_ssl(io);
    return ssl ? SSL_get_cipher_name(ssl) : NULL;
}

void io_tls_describe(const struct io *io, char *out, size_t cap)
{
    SSL *ssl = io->tls ? bufferevent_openssl_get_ssl(io->bev) : NULL;
    if (!ssl || cap == 0) {
        if (cap)
            out[0] = '\0';
        return;
    }
    snprintf(out, cap, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}
