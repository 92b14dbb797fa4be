#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "accept_guard.h"
#include "backend.h"
#include "config.h"
#include "dns.h"
#include "dns_cache.h"
#include "fd_limits.h"
#include "host_metrics.h"
#include "generation.h"
#include "plugin_host.h"
#include "store.h"
#include "workpool.h"
#include "conn_limits.h"
#include "log.h"
#include "mem_trim.h"
#include "metrics.h"
#include "pool.h"
#include "privileges.h"
#include "restart_only.h"
#include "session.h"
#include "tls.h"
#include "mstime.h"

/* How often a loop looks for DNS contexts a reload replaced that have no
 * query left. */
#define WORKER_DNS_SWEEP_MS 1000
/* How often freed memory is looked at, and how much makes a trim worth it
 * (a few thousand sessions' worth). */
#define WORKER_TRIM_TICK_MS 5000
#define WORKER_TRIM_MIN_BYTES (8u << 20)
/* After the shutdown deadline, sessions answered 421 4.3.2 get this long
 * to flush it before they are cut. */
#define WORKER_CLOSE_WAIT_MS 2000
/* How long a stop waits for the backends' answers to QUIT. */
#define WORKER_BACKEND_QUIT_WAIT_MS 1000
/* How often the drain looks at the session count. */
#define WORKER_DRAIN_TICK_MS 100

struct listener_ctx {
    struct loop *loop;
    const struct listen_conf *listen;
    struct sockaddr_storage local; /* the address every accepted socket has */
    bool local_known;              /* false on a wildcard address: asked per socket */
};

static void worker_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    struct listener_ctx *ctx = arg;
    accept_guard_ok(ctx->loop->accept_guard);
    session_accept(ctx->loop, fd, sa, salen, ctx->listen,
                   ctx->local_known ? &ctx->local : NULL);
}

/* A listener bound to one address gives every connection that address as
 * its local one: no getsockname per connection. */
static void worker_listener_local(struct listener_ctx *ctx, int fd)
{
    socklen_t len = sizeof ctx->local;
    ctx->local_known = false;
    if (getsockname(fd, (struct sockaddr *)&ctx->local, &len) < 0)
        return;
    if (ctx->local.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ctx->local;
        ctx->local_known = sin->sin_addr.s_addr != htonl(INADDR_ANY);
    } else if (ctx->local.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ctx->local;
        ctx->local_known = !IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr);
    }
}

/* EMFILE and friends: the guard pauses accepting rather than let the
 * listener spin, and counts the failures rather than log each. */
static void worker_accept_error(struct evconnlistener *l, void *arg)
{
    struct listener_ctx *ctx = arg;
    accept_guard_failed(ctx->loop->accept_guard, l, EVUTIL_SOCKET_ERROR());
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

_Thread_local struct loop *loop_current;

static void *worker_loop_main(void *arg)
{
    struct loop *loop = arg;
    char err[512] = "";
    loop_current = loop;
    int rc = generation_thread_init(loop->worker->gen, loop, err, sizeof err);
    worker_loop_started(rc == 0, err);
    if (rc == 0)
        event_base_dispatch(loop->base);
    /* Plugins' per-thread state goes on the thread that made it. */
    chain_thread_fini(loop->worker->gen->chain, loop->index);
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

/* Shutdown: the listeners close (the master closed its copies too), so new
 * clients are refused and try another MX, while sessions carry on. */
static void worker_loop_unlisten_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loop *loop = arg;
    backend_close_idle(loop);
    accept_guard_free(loop->accept_guard);
    loop->accept_guard = NULL;
    for (size_t i = 0; i < loop->nlisteners; i++) {
        if (loop->listeners[i])
            evconnlistener_free(loop->listeners[i]);
        loop->listeners[i] = NULL;
    }
}

static void worker_loop_shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
    session_shutdown_all(arg);
}

static int worker_loop_init(struct worker *w, struct loop *loop, int index, const int *fds,
                            struct listener_ctx *ctxs, char *err, size_t errlen)
{
    const struct sluice_config *cfg = w->cfg;
    loop->index = index;
    loop->worker = w;
    /* No EVENT_BASE_FLAG_PRECISE_TIMER: its timerfd costs a system call per
     * loop iteration, and millisecond precision is all SMTP timeouts need. */
    loop->base = event_base_new();
    if (!loop->base) {
        snprintf(err, errlen, "cannot create an event loop");
        return -1;
    }
    loop->dns = dns_ctx_new(loop->base, &cfg->dns, w->dns_cache, err, errlen);
    if (!loop->dns)
        return -1;
    if (w->store) {
        loop->store = store_thread_new(w->store, loop->base);
        if (!loop->store) {
            snprintf(err, errlen, "cannot set up the store for a loop thread");
            return -1;
        }
    }
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
        worker_listener_local(ctx, fd);
        loop->listeners[l] = evconnlistener_new(loop->base, worker_accept_cb, ctx,
                                                LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (!loop->listeners[l]) {
            snprintf(err, errlen, "cannot listen on %s:%s", ctx->listen->address,
                     ctx->listen->port);
            return -1;
        }
        evconnlistener_set_error_cb(loop->listeners[l], worker_accept_error);
    }
    loop->accept_guard = accept_guard_new(loop->base, loop->listeners, loop->nlisteners);
    if (!loop->accept_guard) {
        snprintf(err, errlen, "cannot set up the accept guard: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static void worker_loop_free(struct loop *loop)
{
    if (loop->dns_sweep)
        event_free(loop->dns_sweep);
    for (size_t i = 0; i < loop->ndns_retired; i++)
        dns_ctx_free(loop->dns_retired[i]);
    free(loop->dns_retired);
    accept_guard_free(loop->accept_guard);
    for (size_t i = 0; i < loop->nlisteners; i++)
        if (loop->listeners[i])
            evconnlistener_free(loop->listeners[i]);
    free(loop->listeners);
    if (loop->dns)
        dns_ctx_free(loop->dns);
    if (loop->store)
        store_thread_free(loop->store);
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

/* ---- reload ---------------------------------------------------------------- */

struct reload_call {
    struct generation *g;
    struct loop *loop;
    pthread_mutex_t *lock;
    pthread_cond_t *cond;
    int *done;
    int *failed;
    char *err;
    size_t errlen;
};

static void worker_reload_thread_init(evutil_socket_t fd, short what, void *arg)
{
    struct reload_call *rc = arg;
    char err[512] = "";
    int r = generation_thread_init(rc->g, rc->loop, err, sizeof err);
    pthread_mutex_lock(rc->lock);
    if (r != 0 && !*rc->failed) {
        *rc->failed = 1;
        snprintf(rc->err, rc->errlen, "%s", err);
    }
    (*rc->done)++;
    pthread_cond_broadcast(rc->cond);
    pthread_mutex_unlock(rc->lock);
    free(rc);
}

/* thread_init of the new chain on every loop thread, each on its own. */
static int worker_reload_threads(struct worker *w, struct generation *g, char *err, size_t errlen)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    int done = 0, failed = 0, posted = 0;
    for (int i = 0; i < w->nloops; i++) {
        struct reload_call *rc = calloc(1, sizeof *rc);
        if (!rc)
            break;
        *rc = (struct reload_call){g, &w->loops[i], &lock, &cond, &done, &failed, err, errlen};
        if (event_base_once(w->loops[i].base, -1, EV_TIMEOUT, worker_reload_thread_init, rc,
                            NULL) < 0) {
            free(rc);
            break;
        }
        posted++;
    }
    pthread_mutex_lock(&lock);
    while (done < posted)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    if (posted < w->nloops && !failed) {
        snprintf(err, errlen, "cannot reach every loop thread");
        failed = 1;
    }
    return failed ? -1 : 0;
}

static void worker_report_reload(int fd, bool ok, const char *err)
{
    char msg[700];
    snprintf(msg, sizeof msg, ok ? "reload ok\n" : "reload error: %s\n", err);
    worker_report(fd, msg);
}

/* What the worker set up once at start keeps running until a restart: say
 * so for each such setting a reload would change. */
static void worker_warn_restart_only(const struct sluice_config *running,
                                     const struct sluice_config *next)
{
    char *a = malloc(RESTART_ONLY_TEXT_MAX), *b = malloc(RESTART_ONLY_TEXT_MAX);
    if (a && b && restart_only_describe(running, a, RESTART_ONLY_TEXT_MAX) == 0 &&
        restart_only_describe(next, b, RESTART_ONLY_TEXT_MAX) == 0) {
        const char *names[RESTART_ONLY_MAX_CHANGED];
        size_t n = restart_only_changed(a, b, names, RESTART_ONLY_MAX_CHANGED);
        for (size_t i = 0; i < n; i++)
            log_warn(NULL, "reload: '%s' changed: it applies only after a restart", names[i]);
    }
    free(a);
    free(b);
}

static void worker_post_all(struct worker *w, event_callback_fn fn)
{
    for (int i = 0; i < w->nloops; i++)
        event_base_once(w->loops[i].base, -1, EV_TIMEOUT, fn, &w->loops[i], NULL);
}

/* Kept backend connections belong to the old generation's pools: new
 * sessions must not get them (a pool may have changed). */
static void worker_loop_backend_idle_cb(evutil_socket_t fd, short what, void *arg)
{
    backend_close_idle(arg);
}

/* ---- dns and metrics at a reload ------------------------------------------- */

static void worker_dns_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loop *loop = arg;
    size_t kept = 0;
    for (size_t i = 0; i < loop->ndns_retired; i++) {
        if (dns_ctx_busy(loop->dns_retired[i]))
            loop->dns_retired[kept++] = loop->dns_retired[i];
        else
            dns_ctx_free(loop->dns_retired[i]);
    }
    loop->ndns_retired = kept;
    if (kept > 0) {
        struct timeval tv = {.tv_sec = WORKER_DNS_SWEEP_MS / 1000};
        evtimer_add(loop->dns_sweep, &tv);
    }
}

/* The old context keeps serving its queries in flight; new ones go to the
 * new servers (or a re-read /etc/resolv.conf). */
static void worker_loop_dns_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loop *loop = arg;
    struct generation *g = generation_current(loop->worker);
    char err[256];
    struct dns_ctx *fresh =
        dns_ctx_new(loop->base, &g->cfg->dns, loop->worker->dns_cache, err, sizeof err);
    struct dns_ctx **grown =
        fresh ? realloc(loop->dns_retired, (loop->ndns_retired + 1) * sizeof *grown) : NULL;
    if (!loop->dns_sweep)
        loop->dns_sweep = evtimer_new(loop->base, worker_dns_sweep_cb, loop);
    if (!fresh || !grown || !loop->dns_sweep) {
        log_err(NULL, "reload: loop %d keeps its DNS settings: %s", loop->index,
                fresh ? "out of memory" : err);
        if (grown)
            loop->dns_retired = grown;
        dns_ctx_free(fresh);
        generation_unref(g);
        return;
    }
    loop->dns_retired = grown;
    loop->dns_retired[loop->ndns_retired++] = loop->dns;
    dns_ctx_take_names(fresh, loop->dns);
    loop->dns = fresh;
    worker_dns_sweep_cb(-1, 0, loop);
    generation_unref(g);
}

static bool same_string(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int worker_metrics_start(struct worker *w, const char *where, char *err, size_t errlen)
{
    free(w->metrics_listen);
    w->metrics_listen = NULL;
    if (!where)
        return 0;
    if (metrics_start(where, err, errlen) < 0)
        return -1;
    w->metrics_listen = strdup(where);
    return 0;
}

/* A new address: the endpoint moves; one that cannot listen leaves the
 * old one serving. */
static void worker_reload_metrics(struct worker *w, const char *where)
{
    if (same_string(w->metrics_listen, where))
        return;
    char *old = w->metrics_listen ? strdup(w->metrics_listen) : NULL;
    char err[256];
    metrics_stop();
    if (worker_metrics_start(w, where, err, sizeof err) == 0) {
        log_info(NULL, "reload: metrics endpoint %s", where ? where : "off");
    } else {
        log_err(NULL, "reload: metrics stay on %s: %s", old ? old : "(off)", err);
        if (worker_metrics_start(w, old, err, sizeof err) < 0)
            log_err(NULL, "reload: metrics endpoint lost: %s", err);
    }
    free(old);
}

static void worker_apply_log_level(const struct sluice_config *cfg)
{
    enum log_level level = SLOG_INFO;
    if (cfg->log_level && log_level_parse(cfg->log_level, &level) == 0)
        log_set_level(level);
}

/* SIGHUP: a new generation for new sessions, or the old one stays. */
static void worker_reload(struct worker *w, int status_fd)
{
    char err[512] = "";
    struct sluice_config *cfg = NULL;
    if (config_load(w->cfg->path, &cfg, err, sizeof err) < 0) {
        log_err(NULL, "reload refused, the running configuration stays: %s", err);
        worker_report_reload(status_fd, false, err);
        return;
    }
    worker_warn_restart_only(w->cfg, cfg);
    fd_limits_check(cfg, "reload");
    worker_apply_log_level(cfg);
    struct generation *g = generation_new(w, cfg, true, ++w->gen_seq, err, sizeof err);
    if (!g) {
        log_err(NULL, "reload refused, the running configuration stays: %s", err);
        worker_report_reload(status_fd, false, err);
        return;
    }
    if (worker_reload_threads(w, g, err, sizeof err) < 0) {
        log_err(NULL, "reload refused, the running configuration stays: %s", err);
        generation_unref(g);
        worker_report_reload(status_fd, false, err);
        return;
    }
    /* Before the install: the old generation (whose cfg the limits read)
     * may be retired and freed as soon as it is no longer current. */
    limits_reconfigure(w->limits, &g->cfg->connections);
    dns_cache_reconfigure(w->dns_cache, &g->cfg->dns);
    generation_install(w, g);
    worker_post_all(w, worker_loop_dns_cb);
    worker_post_all(w, worker_loop_backend_idle_cb);
    worker_reload_metrics(w, g->cfg->metrics_listen);
    tls_reload(g->cfg->listens, g->cfg->nlistens);
    log_info(NULL, "reload: configuration generation %u serves new sessions", g->id);
    worker_report_reload(status_fd, true, "");
}

static void worker_stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

/* Blocks until SIGTERM or SIGINT arrives (signals are blocked in every
 * thread, so only this wait sees them); SIGHUP reloads meanwhile, and
 * between signals freed memory goes back to the system (mem_trim.h). */
static void worker_wait_for_stop(struct worker *w, int status_fd)
{
    sigset_t set;
    worker_stop_signals(&set);
    struct mem_trim trim = {0};
    const struct timespec tick = {WORKER_TRIM_TICK_MS / 1000, 0};
    for (;;) {
        siginfo_t info;
        int sig = sigtimedwait(&set, &info, &tick);
        if (sig < 0) {
            if (errno == EAGAIN)
                mem_trim_check(&trim, WORKER_TRIM_MIN_BYTES);
            continue;
        }
        if (sig != SIGHUP)
            return;
        /* The master waits for one report per SIGHUP it sends: a report
         * for one sent by anyone else (pkill, systemctl kill) would be read
         * as the answer to its next reload, and the master would keep a
         * configuration this worker refused. The master forwards its own. */
        if (info.si_code == SI_USER && info.si_pid != getppid()) {
            log_warn(NULL, "worker: SIGHUP from pid %ld ignored: a reload is the master's "
                     "(pid %ld) to ask for", (long)info.si_pid, (long)getppid());
            continue;
        }
        worker_reload(w, status_fd);
    }
}

/* Waits until no session is left or deadline_ms passes; false when a
 * second SIGTERM/SIGINT asks to stop at once. */
static bool worker_wait_zero(atomic_int *count, int64_t deadline_ms)
{
    sigset_t set;
    worker_stop_signals(&set);
    while (atomic_load(count) > 0 && mstime_now() < deadline_ms) {
        struct timespec tick = {.tv_nsec = WORKER_DRAIN_TICK_MS * 1000000L};
        int sig = sigtimedwait(&set, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) {
            log_info(NULL, "worker: %s again: closing every session now", strsignal(sig));
            return false;
        }
        if (sig == SIGHUP)
            log_warn(NULL, "worker: reload ignored: stopping");
    }
    return true;
}

static bool worker_wait_sessions(struct worker *w, int64_t deadline_ms)
{
    return worker_wait_zero(&w->sessions, deadline_ms);
}

/* The QUITs to kept (and just released) backend connections get their
 * answer, briefly: the backend should not log a lost connection. */
static void worker_wait_backends(struct worker *w)
{
    worker_wait_zero(&w->backends, mstime_now() + WORKER_BACKEND_QUIT_WAIT_MS);
}

/* SIGTERM: no new sessions; those in flight finish within the deadline,
 * then the rest are answered 421 4.3.2 and closed. */
static void worker_drain(struct worker *w)
{
    atomic_store(&w->stopping, true);
    worker_post_all(w, worker_loop_unlisten_cb);
    int64_t timeout = w->gen->cfg->shutdown_timeout_ms;
    log_info(NULL, "worker: stopping: %d sessions may finish within %lld ms",
             atomic_load(&w->sessions), (long long)timeout);
    bool patient = worker_wait_sessions(w, mstime_now() + timeout);
    int left = atomic_load(&w->sessions);
    if (left == 0) {
        log_info(NULL, "worker: every session finished");
        worker_wait_backends(w);
        return;
    }
    log_info(NULL, "worker: %s: closing %d sessions with 421 4.3.2",
             patient ? "shutdown deadline passed" : "stopping at once", left);
    worker_post_all(w, worker_loop_shutdown_cb);
    worker_wait_sessions(w, mstime_now() + WORKER_CLOSE_WAIT_MS);
}

/* Before any plugin, script or store file is opened. */
static int worker_become_user(const struct sluice_config *cfg, const struct run_as *run_as,
                              char *err, size_t errlen)
{
    char who[200], why[400];
    privileges_describe(run_as, who, sizeof who);
    if (privileges_drop(run_as, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    if (privileges_check_paths(cfg, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: the worker (user %s) %s", cfg->path, run_as->user, why);
        return -1;
    }
    log_info(NULL, "worker: running as %s", who);
    return 0;
}

int worker_run(const struct sluice_config *cfg, const struct run_as *run_as, const int *fds,
               int ready_fd)
{
    char err[512] = "";
    struct worker w = {.cfg = cfg, .nloops = cfg->threads, .backend_ops = &backend_smtp_ops};
    pthread_mutex_init(&w.gen_lock, NULL);
    sigset_t set;
    worker_stop_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (worker_become_user(cfg, run_as, err, sizeof err) < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "error: %s\n", err);
        worker_report(ready_fd, msg);
        pthread_mutex_destroy(&w.gen_lock);
        return 1;
    }
    evthread_use_pthreads();

    w.loops = calloc((size_t)w.nloops, sizeof *w.loops);
    struct listener_ctx *ctxs = calloc((size_t)w.nloops * cfg->nlistens, sizeof *ctxs);
    int rc = 1, started = 0;
    w.limits = limits_new(&cfg->connections);
    w.dns_cache = dns_cache_new(&cfg->dns);
    w.workpool = workpool_new(cfg->thread_pool_size);
    if (!w.loops || !ctxs || !w.limits || !w.dns_cache || !w.workpool ||
        host_metrics_init(cfg) < 0) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    /* A store that cannot open is a store failure: plugins fail open. */
    w.store = store_open(&cfg->store, w.workpool, err, sizeof err);
    if (!w.store)
        log_err(NULL, "store unavailable, plugins using it fail open: %s", err);
    w.gen = generation_new(&w, (struct sluice_config *)cfg, false, ++w.gen_seq, err, sizeof err);
    if (!w.gen)
        goto out;
    for (int i = 0; i < w.nloops; i++)
        if (worker_loop_init(&w, &w.loops[i], i, fds, &ctxs[(size_t)i * cfg->nlistens], err,
                             sizeof err) < 0)
            goto out;
    w.loops_running = true;
    for (; started < w.nloops; started++)
        if (pthread_create(&w.loops[started].thread, NULL, worker_loop_main,
                           &w.loops[started]) != 0) {
            snprintf(err, sizeof err, "cannot start a loop thread");
            goto out;
        }
    if (worker_wait_started(w.nloops, err, sizeof err) < 0)
        goto out;
    if (worker_metrics_start(&w, cfg->metrics_listen, err, sizeof err) < 0)
        goto out;
    worker_report(ready_fd, "ok\n");
    log_info(NULL, "worker: %d loop threads, %zu listeners each", w.nloops, cfg->nlistens);
    worker_wait_for_stop(&w, ready_fd);
    worker_drain(&w);
    rc = 0;
out:
    if (rc != 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "error: %s\n", err);
        worker_report(ready_fd, msg);
        log_err(NULL, "worker: %s", err);
    }
    metrics_stop();
    free(w.metrics_listen);
    for (int i = 0; i < started; i++)
        event_base_once(w.loops[i].base, -1, EV_TIMEOUT, worker_loop_stop_cb, &w.loops[i], NULL);
    for (int i = 0; i < started; i++)
        pthread_join(w.loops[i].thread, NULL);
    pthread_mutex_lock(&w.gen_lock);
    w.loops_running = false;
    pthread_mutex_unlock(&w.gen_lock);
    for (int i = started; w.loops && i < w.nloops; i++) {
        if (w.loops[i].base) {
            session_close_all(&w.loops[i]);
            backend_abort_all(&w.loops[i]);
        }
    }
    if (w.gen)
        generation_unref(w.gen);
    generation_retire_all(&w);
    /* The pool's queued completions belong to the loops' bases: free it first. */
    if (w.workpool)
        workpool_free(w.workpool);
    for (int i = 0; w.loops && i < w.nloops; i++)
        worker_loop_free(&w.loops[i]);
    if (w.store)
        store_close(w.store);
    limits_free(w.limits);
    dns_cache_free(w.dns_cache);
    free(w.loops);
    free(ctxs);
    host_metrics_free();
    metrics_free_all();
    pthread_mutex_destroy(&w.gen_lock);
    return rc;
}
