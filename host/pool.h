/* Backend pools at run time: shared by every loop thread of the worker.
 * Connection slots (the cap is for the whole instance, kept idle connections
 * included), a FIFO of sessions waiting for a slot, the idle connections a
 * waiting session may close, weighted round-robin over servers, and servers marked
 * down after a failed connect. Thread-safe. */
#ifndef SLUICE_POOL_H
#define SLUICE_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

struct event;
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
/* Takes a slot not counted per client only when one is free and no
 * session waits: for work nobody waits on (a connection opened ahead of
 * need), which must never delay a session. Release with pool_release(p, NULL). */
bool pool_try_acquire(struct pool *p);
/* Withdraws a queued request (the session went away). Must be called on the
 * waiter's loop thread before its callback ran; a slot that was already
 * handed to it is passed on. The waiter is freed. */
void pool_cancel(struct pool_waiter *w);
/* Gives back a slot taken for client (the same address, or NULL as given
 * to pool_acquire); the oldest waiter that may take it (on any thread) gets it. */
void pool_release(struct pool *p, const struct sockaddr *client);

/* A backend connection kept idle after its session (backend.c) keeps its
 * slot: the cap counts it. The pool lists them, oldest first, so that a
 * session finding the pool full closes one instead of waiting for it: ev
 * (on the connection's own loop thread) is activated, under the pool's
 * lock, with evicted set; the owner then sends QUIT and releases the slot. */
struct pool_idle {
    struct event *ev;
    bool listed;  /* in the pool's list: reusable, evictable */
    bool evicted; /* taken off by pool_acquire: ev is active or has run */
    TAILQ_ENTRY(pool_idle) link;
};

/* Lists an idle connection (its slot stays held). False when a session
 * waits for a slot: the connection must go instead (its slot to the
 * waiter), not be kept. */
bool pool_idle_add(struct pool *p, struct pool_idle *e);
/* Takes it back for reuse by the client at address to: false when it was
 * evicted meanwhile, or when to's share is used up (the per-client count
 * moves from from, the previous holder, to to). */
bool pool_idle_take(struct pool *p, struct pool_idle *e, const struct sockaddr *from,
                    const struct sockaddr *to);
/* A held slot passes from the client at address from (NULL: not counted
 * per client) to the client at to: false when to's share is used up. */
bool pool_move_slot(struct pool *p, const struct sockaddr *from, const struct sockaddr *to);
/* Unlists it when it goes away (its slot is released with pool_release).
 * After this returns no thread activates e->ev any more. */
void pool_idle_remove(struct pool *p, struct pool_idle *e);

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
int pool_idle_count(const struct pool *p);
int pool_held_by(const struct pool *p, const struct sockaddr *client);

#endif
