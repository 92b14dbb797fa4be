/* What a loop thread does when accept(2) fails, most of all for want of
 * descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM). A listener
 * left armed after such a failure is woken again at once and spins: the
 * guard pauses the loop's listeners instead, answers a waiting client with
 * 421 through a descriptor kept in reserve, and logs once per interval with
 * counts. One guard per loop thread, used only on that thread. */
#ifndef SLUICE_ACCEPT_GUARD_H
#define SLUICE_ACCEPT_GUARD_H

#include <stddef.h>

struct event_base;
struct evconnlistener;
struct accept_guard;

/* Guards the n listeners of one loop (the array is the loop's, it must
 * outlive the guard). Takes the reserve descriptor. NULL when out of memory. */
struct accept_guard *accept_guard_new(struct event_base *base, struct evconnlistener **listeners,
                                      size_t n);
void accept_guard_free(struct accept_guard *g);

/* The listener l failed to accept with errno err: pause every listener of
 * the loop for a short while; for a resource error, answer one waiting
 * client with 421 4.3.2 through the reserve descriptor. */
void accept_guard_failed(struct accept_guard *g, struct evconnlistener *l, int err);

/* An accept succeeded: ends a failure episode (with a log line) if one was
 * running. Cheap when none was. */
void accept_guard_ok(struct accept_guard *g);

#endif
