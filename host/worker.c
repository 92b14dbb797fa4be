#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "backend.h"
#include "config.h"
#include "dns.h"
#include "host_metrics.h"
#include "plugin_host.h"
#include "workpool.h"
#include "conn_limits.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "session.h"

struct listener_ctx {
    struct loop *loop;
    const struct listen_conf *listen;
};

static void worker_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    struct listener_ctx *ctx = arg;
    session_accept(ctx->loop, fd, sa, salen, ctx->listen);
}

static void worker_accept_error(struct evconnlistener *l, void *arg)
{
    /* EMFILE and friends: keep the listener, the next accept may succeed. */
    log_err(NULL, "accept: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/* Loop threads report their plugin thread_init before the worker says ready. */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond = PTHREAD_COND_INITIALIZER;
static int start_reported, start_failed;
static char start_err[512];

static void worker_loop_started(bool ok, const char *err)
{
    pthread_mutex_lock(&start_lock);
    start_reported++;
    if (!ok && !start_failed) {
        start_failed = 1;
        snprintf(start_err, sizeof start_err, "%s", err);
    }
    pthread_cond_broadcast(&start_cond);
    pthread_mutex_unlock(&start_lock);
}

static int worker_wait_started(int n, char *err, size_t errlen)
{
    pthread_mutex_lock(&start_lock);
    while (start_reported < n)
        pthread_cond_wait(&start_cond, &start_lock);
    int failed = start_failed;
    if (failed)
        snprintf(err, errlen, "%s", start_err);
    pthread_mutex_unlock(&start_lock);
    return failed ? -1 : 0;
}

static void *worker_loop_main(void *arg)
{
    struct loop *loop = arg;
    char err[512] = "";
    int rc = chain_thread_init(loop->worker->chain, loop->index, err, sizeof err);
    worker_loop_started(rc == 0, err);
    if (rc == 0)
        event_base_dispatch(loop->base);
    /* Plugins' per-thread state goes on the thread that made it. */
    chain_thread_fini(loop->worker->chain, loop->index);
    return NULL;
}

static void worker_loop_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loop *loop = arg;
    for (size_t i = 0; i < loop->nlisteners; i++)
        if (loop->listeners[i])
            evconnlistener_disable(loop->listeners[i]);
    session_close_all(loop);
    backend_abort_all(loop);
    event_base_loopbreak(loop->base);
}

static int worker_loop_init(struct worker *w, struct loop *loop, int index, const int *fds,
                            struct listener_ctx *ctxs, char *err, size_t errlen)
{
    const struct sluice_config *cfg = w->cfg;
    loop->index = index;
    loop->worker = w;
    struct event_config *ec = event_config_new();
    if (ec)
        event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
    loop->base = ec ? event_base_new_with_config(ec) : NULL;
    if (ec)
        event_config_free(ec);
    if (!loop->base) {
        snprintf(err, errlen, "cannot create an event loop");
        return -1;
    }
    loop->dns = dns_ctx_new(loop->base, &cfg->dns, err, errlen);
    if (!loop->dns)
        return -1;
    loop->listeners = calloc(cfg->nlistens, sizeof *loop->listeners);
    if (!loop->listeners) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    loop->nlisteners = cfg->nlistens;
    for (size_t l = 0; l < cfg->nlistens; l++) {
        struct listener_ctx *ctx = &ctxs[l];
        ctx->loop = loop;
        ctx->listen = &cfg->listens[l];
        int fd = fds[l * (size_t)w->nloops + (size_t)index];
        loop->listeners[l] = evconnlistener_new(loop->base, worker_accept_cb, ctx,
                                                LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (!loop->listeners[l]) {
            snprintf(err, errlen, "cannot listen on %s:%s", ctx->listen->address,
                     ctx->listen->port);
            return -1;
        }
        evconnlistener_set_error_cb(loop->listeners[l], worker_accept_error);
    }
    return 0;
}

static void worker_loop_free(struct loop *loop)
{
    for (size_t i = 0; i < loop->nlisteners; i++)
        if (loop->listeners[i])
            evconnlistener_free(loop->listeners[i]);
    free(loop->listeners);
    if (loop->dns)
        dns_ctx_free(loop->dns);
    if (loop->base)
        event_base_free(loop->base);
}

static void worker_report(int ready_fd, const char *msg)
{
    if (ready_fd < 0)
        return;
    ssize_t n = write(ready_fd, msg, strlen(msg));
    (void)n;
}

static int worker_pools_init(struct worker *w)
{
    const struct sluice_config *cfg = w->cfg;
    w->pools = calloc(cfg->npools ? cfg->npools : 1, sizeof *w->pools);
    if (!w->pools)
        return -1;
    for (size_t i = 0; i < cfg->npools; i++) {
        w->pools[i] = pool_new(&cfg->pools[i]);
        if (!w->pools[i])
            return -1;
    }
    return 0;
}

static void worker_pools_free(struct worker *w)
{
    if (!w->pools)
        return;
    for (size_t i = 0; i < w->cfg->npools; i++)
        if (w->pools[i])
            pool_free(w->pools[i]);
    free(w->pools);
}

/* Blocks until SIGTERM or SIGINT arrives (signals are blocked in every
 * thread, so only this sigwait sees them). */
static void worker_wait_for_stop(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) == 0 && (sig == SIGTERM || sig == SIGINT))
            return;
    }
}

int worker_run(const struct sluice_config *cfg, const int *fds, int ready_fd)
{
    char err[512] = "";
    struct worker w = {.cfg = cfg, .nloops = cfg->threads};
    evthread_use_pthreads();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    w.loops = calloc((size_t)w.nloops, sizeof *w.loops);
    struct listener_ctx *ctxs = calloc((size_t)w.nloops * cfg->nlistens, sizeof *ctxs);
    int rc = 1, started = 0;
    w.limits = limits_new(&cfg->connections);
    w.workpool = workpool_new(cfg->thread_pool_size);
    if (!w.loops || !ctxs || !w.limits || !w.workpool || worker_pools_init(&w) < 0 ||
        host_metrics_init(cfg) < 0) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    w.chain = chain_build(cfg, &w, w.nloops, err, sizeof err);
    if (!w.chain)
        goto out;
    for (int i = 0; i < w.nloops; i++)
        if (worker_loop_init(&w, &w.loops[i], i, fds, &ctxs[(size_t)i * cfg->nlistens], err,
                             sizeof err) < 0)
            goto out;
    for (; started < w.nloops; started++)
        if (pthread_create(&w.loops[started].thread, NULL, worker_loop_main,
                           &w.loops[started]) != 0) {
            snprintf(err, sizeof err, "cannot start a loop thread");
            goto out;
        }
    if (worker_wait_started(w.nloops, err, sizeof err) < 0)
        goto out;
    if (cfg->metrics_listen && metrics_start(cfg->metrics_listen, err, sizeof err) < 0)
        goto out;
    worker_report(ready_fd, "ok\n");
    log_info(NULL, "worker: %d loop threads, %zu listeners each", w.nloops, cfg->nlistens);
    worker_wait_for_stop();
    rc = 0;
out:
    if (rc != 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "error: %s\n", err);
        worker_report(ready_fd, msg);
        log_err(NULL, "worker: %s", err);
    }
    metrics_stop();
    for (int i = 0; i < started; i++)
        event_base_once(w.loops[i].base, -1, EV_TIMEOUT, worker_loop_stop_cb, &w.loops[i], NULL);
    for (int i = 0; i < started; i++)
        pthread_join(w.loops[i].thread, NULL);
    if (w.workpool)
        workpool_free(w.workpool);
    w.workpool = NULL;
    for (int i = 0; w.loops && i < w.nloops; i++) {
        if (i >= started && w.loops[i].base) {
            session_close_all(&w.loops[i]);
            backend_abort_all(&w.loops[i]);
        }
        worker_loop_free(&w.loops[i]);
    }
    if (w.chain && chain_unref(w.chain))
        chain_free(w.chain);
    worker_pools_free(&w);
    limits_free(w.limits);
    free(w.loops);
    free(ctxs);
    host_metrics_free();
    metrics_free_all();
    return rc;
}
