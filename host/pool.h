/* Backend pools at run time: shared by every loop thread of the worker.
 * Connection slots (the cap is for the whole instance), a FIFO of sessions
 * waiting for a slot, weighted round-robin over servers, and servers marked
 * down after a failed connect. Thread-safe. */
#ifndef SLUICE_POOL_H
#define SLUICE_POOL_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct sockaddr;
struct pool_conf;
struct pool;
struct pool_waiter;

struct pool *pool_new(const struct pool_conf *conf);
void pool_free(struct pool *p); /* no slot may be held or awaited */
const struct pool_conf *pool_conf(const struct pool *p);

/* Called on the waiter's own loop thread: granted=true means the caller now
 * holds a slot (release it with pool_release); false means conf->wait_ms
 * passed without one. The waiter is freed by the pool after the call. */
typedef void (*pool_slot_cb)(void *arg, bool granted);

/* Takes a slot for the client at address client (NULL: not counted per
 * client). A client address holds at most conf->max_per_client slots at
 * once (0: no such cap): beyond its share it waits like everyone else, for
 * one of its own slots to come back. Returns 1 when taken at once (no
 * callback), 0 when queued (*waiter set; cb runs later on base's thread),
 * -1 on allocation failure. */
int pool_acquire(struct pool *p, struct event_base *base, const struct sockaddr *client,
                 pool_slot_cb cb, void *arg, struct pool_waiter **waiter);
/* Withdraws a queued request (the session went away). Must be called on the
 * waiter's loop thread before its callback ran; a slot that was already
 * handed to it is passed on. The waiter is freed. */
void pool_cancel(struct pool_waiter *w);
/* Gives back a slot taken for client (the same address, or NULL as given
 * to pool_acquire); the oldest waiter that may take it (on any thread) gets it. */
void pool_release(struct pool *p, const struct sockaddr *client);

/* Server choice for one connection attempt sequence: start with
 * pool_first_server(), after a failure call pool_server_failed() and then
 * pool_next_server() with the count of servers tried so far. Returns a server
 * index, or -1 when every server was tried. Servers marked down are skipped
 * unless all are down (then they are tried anyway, oldest failure first). */
int pool_first_server(struct pool *p);
int pool_next_server(struct pool *p, int prev, int tried);
void pool_server_failed(struct pool *p, int idx);
void pool_server_ok(struct pool *p, int idx);

/* For tests and metrics. */
int pool_in_use(const struct pool *p);
int pool_waiting(const struct pool *p);
int pool_held_by(const struct pool *p, const struct sockaddr *client);

#endif
