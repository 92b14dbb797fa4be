/* The client side: one SMTP connection from sluice to a backend server of a
 * pool, owned by one session at a time on one loop thread (kept idle between
 * sessions, see backend_close). Commands are queued and
 * their replies delivered in order (RFC 2920 pipelining is safe because every
 * command is answered exactly once, in order). */
#ifndef SLUICE_BACKEND_H
#define SLUICE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "backend_proto.h"
#include "dns.h"
#include "reply.h"

struct loop;
struct generation;
struct pool;
struct spool;
struct backend;
struct evbuffer;

enum backend_status {
    BACKEND_REPLY = 0,     /* the server answered: code/text are its reply */
    BACKEND_UNREACHABLE,   /* no server of the pool accepted a connection */
    BACKEND_POOL_FULL,     /* no slot within the pool's wait time */
    BACKEND_LOST,          /* connection closed, timed out or broke protocol */
    BACKEND_INTERNAL,      /* local failure (memory, spool) */
    BACKEND_REFUSED,       /* the server refused the handshake (EHLO, XCLIENT):
                            * misconfigured for sluice, its reply is logged */
};

struct backend_reply {
    enum backend_status status;
    int code;          /* with BACKEND_REPLY */
    const char *text;  /* the reply as received, all lines (valid during the callback) */
    size_t len;
    size_t nlines;
};

typedef void (*backend_cb)(void *arg, const struct backend_reply *r);

/* Who the client is, for XCLIENT and the PROXY header. Copied at open. */
struct backend_client {
    const char *sid;
    struct sockaddr_storage addr;  /* the real client */
    struct sockaddr_storage local; /* where the client connected to */
    const char *helo;              /* the client's HELO/EHLO argument */
    bool esmtp;                    /* the client said EHLO */
    enum dns_status name_status;   /* reverse lookup outcome */
    const char *name;              /* the confirmed reverse name when DNS_OK */
    bool name_pending;             /* the lookup still runs: backend_name_known follows */
};

/* The backend behind an interface (nginx's peer get/free): the SMTP client
 * of backend.c, or sluice-check's check mode, which relays nothing
 * (backend_check.c). The session only calls the functions below. */
struct backend_ops {
    struct backend *(*open)(struct loop *loop, struct generation *gen, struct pool *pool,
                            int pool_index, const struct backend_client *client, backend_cb cb,
                            void *arg);
    void (*command)(struct backend *b, enum backend_step step, const char *line, size_t len,
                    backend_cb cb, void *arg);
    void (*send_message)(struct backend *b, struct spool *spool, struct evbuffer *prefix,
                         uint64_t offset, backend_cb cb, void *arg);
    /* Cut-through; NULL where the implementation cannot (check mode): the
     * session then stores and forwards. */
    void (*stream_begin)(struct backend *b, struct spool *spool, backend_cb cb, void *arg);
    void (*stream_more)(struct backend *b);
    void (*stream_end)(struct backend *b);
    void (*keepalive)(struct backend *b, bool on);
    /* NULL where nothing is started apart (check mode). */
    void (*begin)(struct backend *b);
    /* NULL where nothing waits for the name (check mode). */
    void (*name_known)(struct backend *b, enum dns_status st, const char *name);
    void (*close)(struct backend *b);
    bool (*usable)(const struct backend *b);
    const struct ehlo_caps *(*caps)(const struct backend *b);
    const char *(*peer_name)(const struct backend *b);
    int (*pool_index)(const struct backend *b);
};

/* What every implementation's connection starts with. */
struct backend {
    const struct backend_ops *ops;
};

extern const struct backend_ops backend_smtp_ops;  /* backend.c */
extern const struct backend_ops backend_check_ops; /* backend_check.c */

/* Takes a connection of the pool kept idle on this loop thread and starts
 * the new client's session on it (RSET if a transaction was left open;
 * for XCLIENT, XCLIENT + new banner + EHLO; else nothing more), or else takes a slot of the pool (waiting for one if
 * needed), connects (trying the pool's servers in turn), and runs the
 * handshake: PROXY header, banner, EHLO, XCLIENT + new banner + EHLO. A
 * kept connection that fails its new start is replaced by a new one
 * unseen. Holds a reference on gen (where pool
 * lives) until the connection is gone. cb gets BACKEND_REPLY with the final
 * EHLO reply (2xx) when ready (a kept connection without XCLIENT: RSET's
 * reply, or a 250 of our own when nothing was sent), else the failing status: a refused handshake
 * is BACKEND_REFUSED (never the server's reply, which is about the server,
 * not the mail: relayed, a 5xx would bounce good mail). The callback never
 * runs inside backend_open. ops: the loop's implementation. */
struct backend *backend_open(const struct backend_ops *ops, struct loop *loop,
                             struct generation *gen, struct pool *pool, int pool_index,
                             const struct backend_client *client, backend_cb cb, void *arg);

/* The owner has stored the handle backend_open returned: what it set going
 * (a kept connection's new start, a new connection's attempt once it has a
 * slot) goes on now instead of at the loop's next turn, so cb may run
 * inside this call. Without it everything still goes on, a turn later. */
void backend_begin(struct backend *b);

/* Sends one command line (CRLF included); cb gets its reply. step names the
 * command for the reply-class check (backend_proto.h): a reply of a class
 * it may not get closes the connection, and cb gets BACKEND_LOST. */
void backend_command(struct backend *b, enum backend_step step, const char *line, size_t len,
                     backend_cb cb, void *arg);

/* DATA, then (after its 3xx go-ahead, normally 354) the spooled message in
 * wire form and ".\r\n"; cb gets the reply to DATA if it is an error (a 2xx
 * to DATA is a protocol violation: BACKEND_LOST), else the final reply. With a
 * prefix (taken over, freed by the backend), the prefix is sent first and
 * the spool from offset: a message whose header plugins changed. */
void backend_send_message(struct backend *b, struct spool *spool, struct evbuffer *prefix,
                          uint64_t offset, backend_cb cb, void *arg);

/* Cut-through, for a message no plugin reads at its end: DATA at once,
 * and after the server's 3xx the spooled bytes while the client still
 * sends. backend_stream_more: the spool grew (the caller has checked every
 * byte in it: no NUL, no refused bare newline; a message that turns bad
 * must be closed, never continued); what is new goes out by reference as
 * soon as the output has drained (the spool holds the rest, so a slow
 * server costs no memory). backend_stream_end: the rest and ".\r\n". cb
 * runs once: with the refusal of DATA, a refusal the server sent before the
 * end of data (the connection is then closed: it is out of step), the loss
 * of the connection, or the reply to the end of data. backend_close before
 * that reply closes the connection without the final dot (never QUIT, which
 * would be message text): the server discards the partial message, and the
 * connection is never kept for reuse. */
bool backend_can_stream(const struct backend *b);
void backend_stream_begin(struct backend *b, struct spool *spool, backend_cb cb, void *arg);
void backend_stream_more(struct backend *b);
void backend_stream_end(struct backend *b);

/* Keep the idle connection alive with NOOP while the client uploads. */
void backend_keepalive(struct backend *b, bool on);

/* The client's reverse lookup, open when the backend was (name_pending),
 * ended: XCLIENT, which waited for it, goes (from the loop, never inside
 * this call). */
void backend_name_known(struct backend *b, enum dns_status st, const char *name);

/* Lets go: no callback runs after this. A connection between transactions
 * is kept (with its slot) for the next session of the pool on this loop
 * thread, within the pool's idle_connections, idle_timeout and
 * max_transactions; otherwise it gets QUIT, and the connection and its slot
 * are released when the server answers or after a short wait. One retired
 * after max_transactions is replaced by a connection opened for no client,
 * kept idle once its handshake is done (or taken over by a session that
 * asks meanwhile), when the pool has a slot free. */
void backend_close(struct backend *b);

/* Reload and shutdown: QUIT to every connection of the loop kept idle for
 * a later session. */
void backend_close_idle(struct loop *loop);

/* Shutdown: frees every SMTP backend connection of the loop at once. */
void backend_abort_all(struct loop *loop);

bool backend_usable(const struct backend *b);
const struct ehlo_caps *backend_caps(const struct backend *b);
const char *backend_peer_name(const struct backend *b); /* "127.0.0.1:25" */
int backend_pool_index(const struct backend *b);

#endif
