/* One connection's buffered I/O, under both the client session and the
 * backend connection (OpenSMTPD's ioev.c): it owns the socket and its
 * buffers, frames lines and replies, keeps the deadline of what is awaited
 * and the idle timeouts, throttles reads, and upgrades to TLS. Its users
 * never see a socket, a libevent buffer or the input buffer.
 *
 * In plain text it works on the socket itself, to spend as few system calls
 * per message as a byte pump: the read event is registered once
 * (persistent) and each wakeup reads into reserved buffer space with recv,
 * no FIONREAD first, on while each read fills its room (IO_READ_BURST);
 * output goes out at once in one send or sendmsg (sendfile for a spool
 * file), and writes made while one of io's callbacks runs on
 * the thread (to any io: a reply relayed from the backend, a command to
 * it) leave together when the callback returns; the write event is armed
 * only while the kernel does not take everything. libevent's bufferevent,
 * which it replaced, made an epoll_ctl to arm and disarm the write event
 * for every reply and an ioctl(FIONREAD) before every read.
 *
 * Under TLS (after io_start_tls_*, or for implicit TLS) it runs a libevent
 * OpenSSL bufferevent on the same socket behind the same interface; only
 * then is its TLS state allocated.
 *
 * An idle plaintext connection holds no buffer memory: input and output
 * chains are freed as soon as they are empty. */
#ifndef SLUICE_IO_H
#define SLUICE_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "reply.h"

struct event_base;
struct evbuffer;
struct spool;
struct io;

enum io_event {
    IO_CONNECTED,     /* io_connect succeeded, or the TLS handshake completed */
    IO_EOF,           /* the peer closed its side */
    IO_ERROR,         /* the connection broke (io_error_text says how) */
    IO_READ_TIMEOUT,  /* nothing arrived for the read timeout */
    IO_WRITE_TIMEOUT, /* the peer did not take our output for the write timeout */
    IO_DEADLINE,      /* the deadline set by io_set_deadline passed */
    IO_CLOSED,        /* after io_close_when_flushed: now free the connection */
};

struct io_callbacks {
    void (*input)(struct io *io, void *arg);   /* new input is buffered */
    void (*drained)(struct io *io, void *arg); /* all output was written */
    void (*event)(struct io *io, enum io_event ev, void *arg);
};

/* A connection on fd (taken over: closed by io_free), or, with fd -1, one
 * to connect with io_connect, which sets TCP_NODELAY on it. An accepted fd
 * has it from its listener (the master sets it there: Linux passes it on
 * to every accepted socket, one system call less per connection). NULL
 * when out of memory (fd is then still the caller's). */
/* libevent allocates through sluice's malloc/realloc/free from here on:
 * once, first thing in main, before any libevent object exists. */
void io_use_own_allocator(void);

struct io *io_new(struct event_base *base, int fd, const struct io_callbacks *cb, void *arg);
int io_connect(struct io *io, const struct sockaddr *sa, socklen_t len);
void io_free(struct io *io);

/* ---- input ---- */

enum io_line {
    IO_LINE_MORE,     /* no complete line yet */
    IO_LINE_OK,       /* a line, without its LF or CRLF */
    IO_LINE_TOO_LONG, /* a line over the limit ended: tell the peer once */
    IO_LINE_LONG_OPEN,/* a line is over the limit and goes on: tell the peer; its
                       * rest is dropped up to its end (then IO_LINE_SKIPPED) */
    IO_LINE_SKIPPED,  /* the end of a line already reported too long */
};
/* Takes one line of at most max bytes (LF included) into buf (max bytes),
 * its length in *len. Lines may hold NUL bytes: use *len, not strlen. */
enum io_line io_read_line(struct io *io, char *buf, size_t max, size_t *len);
size_t io_input_len(const struct io *io);
/* Nothing waits to be read, in our buffer or the kernel's (no byte, no EOF,
 * no error): an idle connection the peer has not closed or spoken on. One
 * recv(MSG_PEEK), no wait. */
bool io_peer_quiet(const struct io *io);
/* The first n input bytes made contiguous (n <= io_input_len), or NULL. */
const unsigned char *io_input_peek(struct io *io, size_t n);
/* The first contiguous chunk of input, without copying; false when none. */
bool io_input_chunk(struct io *io, const char **p, size_t *len);
void io_input_drain(struct io *io, size_t n);
/* Moves the first n input bytes to the end of dst: whole buffer chains by
 * reference (no copy), a chain's part copied. Returns 0, or -1 when fewer
 * than n bytes could be moved (out of memory). */
int io_input_move(struct io *io, size_t n, struct evbuffer *dst);
/* All of the input is one chunk, and the owner is done with all of it:
 * io_input_hand_over may give its first bytes away without a copy. */
bool io_input_all_one_chunk(const struct io *io);
/* Ends all of the input (io_input_all_one_chunk must hold), its first n
 * bytes added to the end of dst by reference: dst keeps the chunk's memory
 * until it drops those bytes, and the io reads on into a new buffer. For
 * the part of a read before what it must not keep (the end of data), which
 * io_input_move would copy. Returns 0, or -1 with the input unchanged (out
 * of memory). */
int io_input_hand_over(struct io *io, size_t n, struct evbuffer *dst);

/* ---- output ---- */

/* Queues len bytes (sent at once, or when the running io callback
 * returns). -1 when the output cannot take them (out of memory): the
 * connection is then broken, its queued output dropped, and IO_ERROR (or
 * IO_CLOSED after io_close_when_flushed) follows from the loop. A
 * connection that broke otherwise takes writes and drops them until its
 * IO_ERROR arrives; no callback ever comes from inside io_write. */
/* Writes made between io_cork and io_uncork (on this thread, to any io)
 * leave at the outermost io_uncork, one write per io: what an io callback
 * gets by itself, for a plain event callback that writes more than once. */
void io_cork(void);
void io_uncork(void);
int io_write(struct io *io, const void *buf, size_t len);
int io_write_reply(struct io *io, enum reply_id id);
/* The spooled message from offset, by reference where the spool allows. */
int io_write_spool(struct io *io, struct spool *spool, uint64_t offset);
/* Cut-through: the bytes spooled since the last call (spool_add_new_to),
 * by reference; *added their count. Fails as io_write. */
int io_write_spool_new(struct io *io, struct spool *spool, uint64_t *added);
size_t io_output_len(const struct io *io);

/* ---- what is awaited ---- */

/* Idle timeouts: read_ms without input, write_ms without output taken by
 * the peer; 0 switches one off. */
void io_set_timeouts(struct io *io, int64_t read_ms, int64_t write_ms);
/* A fixed deadline for something whole (a command line, a reply): unlike a
 * read timeout it does not move with every byte, so a peer dribbling a
 * byte at a time is cut as surely as a silent one. */
void io_set_deadline(struct io *io, int64_t ms);
void io_clear_deadline(struct io *io);

/* ---- closing ---- */

/* Ends the connection once what is queued has been written, or after
 * flush_ms: reading stops now, the deadline is cleared, and no callback but
 * IO_CLOSED follows. IO_CLOSED arrives from the event loop, never from
 * inside the caller's stack, so the owner may free everything there
 * (io_free included) whatever handler asked for the close. Idempotent. */
void io_close_when_flushed(struct io *io, int64_t flush_ms);

/* ---- flow ---- */

void io_pause(struct io *io);  /* stop reading (the kernel buffers the rest) */
void io_resume(struct io *io);
/* What one wakeup reads from one peer at most: reads go on while each fills
 * its room, so a message of common size passes in one turn (its latency is
 * the turns it takes, each as long as every busy session's reads), and a
 * larger one takes a bounded share of the thread per turn. */
#define IO_READ_BURST (256 * 1024)

/* The peer is about to send a bulk of bytes (a message after 354): the next
 * read reserves the most at once instead of growing up to it, read after
 * read, while the bytes wait in the kernel. Later reads adapt as before. */
void io_expect_bulk(struct io *io);
/* Reading stops while this much input is buffered unread. */
void io_set_input_limit(struct io *io, size_t bytes);
/* Reads at most bytes_per_second (0: no limit). */
int io_set_read_rate(struct io *io, uint64_t bytes_per_second);

/* ---- TLS ---- */

/* Starts TLS as the server on this connection (STARTTLS, RFC 3207). Input
 * not yet read is discarded: plaintext pipelined behind STARTTLS must never
 * be taken as if it came over TLS (CVE-2011-0411). Output already queued
 * (the 220 go-ahead) is written in plaintext first. IO_CONNECTED follows
 * when the handshake is done, IO_ERROR when it fails. ctx (an SSL_CTX) is
 * borrowed. Returns -1 when the plaintext cannot be flushed or memory runs
 * out: close the connection then. */
int io_start_tls_server(struct io *io, void *ssl_ctx);
/* Starts TLS as the client (STARTTLS to a backend): name is sent as SNI
 * and, when verify, the certificate must chain to the context's CAs and
 * carry name. Unread input is an error the caller checks first (a server
 * that talks between its 220 and the handshake). IO_CONNECTED when done,
 * IO_ERROR when it fails (io_error_text then names the verification
 * failure). */
int io_start_tls_client(struct io *io, void *ssl_ctx, const char *name, bool verify);
bool io_tls_active(const struct io *io);
/* The protocol ("TLSv1.3") and cipher of the TLS connection, static strings,
 * or NULL in plain text. */
const char *io_tls_version(const struct io *io);
const char *io_tls_cipher(const struct io *io);
/* The server name the client asked for (SNI), the subject of the peer's
 * certificate ("/CN=..."), NULL when none; whether it verified. */
const char *io_tls_sni(const struct io *io);
const char *io_tls_peer_subject(const struct io *io);
bool io_tls_peer_verified(const struct io *io);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384", or "" without TLS. */
void io_tls_describe(const struct io *io, char *out, size_t cap);

/* errno's text of the last IO_ERROR. */
const char *io_error_text(const struct io *io);

#endif
