/* The server side of one client session: the SMTP state machine. A session
 * lives on one loop thread from accept to close. */
#ifndef SLUICE_SESSION_H
#define SLUICE_SESSION_H

#include <event2/util.h>
#include <sys/socket.h>

struct loop;
struct listen_conf;
struct session;

/* Takes ownership of fd. local: its local address when the listener
 * knows it (bound to one address); NULL: asked of the socket. */
void session_accept(struct loop *loop, evutil_socket_t fd, const struct sockaddr *peer,
                    int peerlen, const struct listen_conf *listen,
                    const struct sockaddr_storage *local);

/* The shutdown deadline passed: every session not already closing is
 * answered 421 4.3.2 and closed once that reply is written. */
void session_shutdown_all(struct loop *loop);

/* Closes every session of the loop at once (shutdown). */
void session_close_all(struct loop *loop);

#endif
