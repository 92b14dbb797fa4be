/* Pausing accept on failure (nginx's accept_mutex_delay idea, without the
 * mutex: each loop thread has its own SO_REUSEPORT listeners), a reserve
 * descriptor to tell one waiting client why, and a log that counts instead
 * of writing a line per failure: at EMFILE a level-triggered listener would
 * otherwise fail hundreds of thousands of times a second. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include "accept_guard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "host_metrics.h"
#include "log.h"
#include "reply.h"
#include "mstime.h"

/* Long enough that a failing listener costs nothing, short enough that a
 * client queued in the backlog hardly notices once descriptors free up. */
#define ACCEPT_PAUSE_MS 100
/* While accept keeps failing, one summary line per interval per thread. */
#define ACCEPT_LOG_INTERVAL_MS 5000

struct accept_guard {
    struct event_base *base;
    struct evconnlistener **listeners;
    size_t nlisteners;
    struct event *resume_ev;
    int reserve_fd;     /* /dev/null, closed for a moment to take one client */
    bool failing;       /* an episode of failures is running */
    int last_err;
    unsigned long failures, shed; /* since the last log line */
    unsigned long total_failures, total_shed; /* in this episode */
    uint64_t last_log_ms;
};

static int guard_open_reserve(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void guard_set_listening(struct accept_guard *g, bool on)
{
    for (size_t i = 0; i < g->nlisteners; i++) {
        if (!g->listeners[i])
            continue;
        if (on)
            evconnlistener_enable(g->listeners[i]);
        else
            evconnlistener_disable(g->listeners[i]);
    }
}

static void guard_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct accept_guard *g = arg;
    /* A reserve lost to a race with another thread is taken back here. */
    if (g->reserve_fd < 0)
        g->reserve_fd = guard_open_reserve();
    guard_set_listening(g, true);
}

struct accept_guard *accept_guard_new(struct event_base *base, struct evconnlistener **listeners,
                                      size_t n)
{
    struct accept_guard *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->base = base;
    g->listeners = listeners;
    g->nlisteners = n;
    g->resume_ev = event_new(base, -1, 0, guard_resume_cb, g);
    g->reserve_fd = guard_open_reserve();
    if (!g->resume_ev || g->reserve_fd < 0) {
        accept_guard_free(g);
        return NULL;
    }
    return g;
}

void accept_guard_free(struct accept_guard *g)
{
    if (!g)
        return;
    if (g->resume_ev)
        event_free(g->resume_ev);
    if (g->reserve_fd >= 0)
        close(g->reserve_fd);
    free(g);
}

static bool guard_resource_error(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* Frees the reserve for a moment to take the client at the head of the
 * backlog and tell it to come back, rather than leave it waiting unanswered. */
static void guard_shed_one(struct accept_guard *g, evutil_socket_t lfd)
{
    if (g->reserve_fd < 0)
        return;
    close(g->reserve_fd);
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
        /* A few bytes into an empty socket buffer: the send never blocks. */
        ssize_t n = send(fd, reply_text(R_NO_DESCRIPTORS), reply_len(R_NO_DESCRIPTORS),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        shutdown(fd, SHUT_WR);
        close(fd);
        g->shed++;
        g->total_shed++;
        host_metrics_session_refused();
    }
    g->reserve_fd = guard_open_reserve();
}

static void guard_log(struct accept_guard *g, uint64_t now)
{
    if (g->failures == 0 && g->shed == 0)
        return;
    log_err(NULL, "accept: %lu failures (%s), %lu clients answered 421 4.3.2, in the last %d s",
            g->failures, strerror(g->last_err), g->shed, ACCEPT_LOG_INTERVAL_MS / 1000);
    g->failures = 0;
    g->shed = 0;
    g->last_log_ms = now;
}

void accept_guard_failed(struct accept_guard *g, struct evconnlistener *l, int err)
{
    uint64_t now = (uint64_t)mstime_now();
    g->last_err = err;
    if (!g->failing) {
        g->failing = true;
        g->last_log_ms = now;
        g->total_failures = g->total_shed = 0;
        log_err(NULL, "accept: %s: accepting paused %d ms at a time, clients over the limit get "
                "421 4.3.2; failures are counted and logged every %d s",
                strerror(err), ACCEPT_PAUSE_MS, ACCEPT_LOG_INTERVAL_MS / 1000);
    } else {
        g->failures++;
    }
    g->total_failures++;
    if (guard_resource_error(err))
        guard_shed_one(g, evconnlistener_get_fd(l));
    if (now - g->last_log_ms >= ACCEPT_LOG_INTERVAL_MS)
        guard_log(g, now);
    guard_set_listening(g, false);
    struct timeval tv = {.tv_sec = 0, .tv_usec = ACCEPT_PAUSE_MS * 1000};
    event_add(g->resume_ev, &tv);
}

void accept_guard_ok(struct accept_guard *g)
{
    if (!g->failing)
        return;
    g->failing = false;
    log_info(NULL, "accept: working again after %lu failures, %lu clients answered 421 4.3.2",
             g->total_failures, g->total_shed);
    g->failures = g->shed = 0;
}
