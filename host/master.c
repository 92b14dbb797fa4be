#include "master.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "fd_limits.h"
#include "log.h"
#include "privileges.h"
#include "restart_only.h"
#include "worker.h"
#include "mstime.h"

#if defined(__SANITIZE_ADDRESS__)
#define MASTER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MASTER_ASAN 1
#endif
#endif
#ifdef MASTER_ASAN
#include <sanitizer/lsan_interface.h>
/* _exit skips LeakSanitizer's exit hook: without this the worker, where every
 * session lives, would never be checked for leaks. */
#define MASTER_WORKER_LEAK_CHECK() __lsan_do_leak_check()
#else
#define MASTER_WORKER_LEAK_CHECK() ((void)0)
#endif

#define MASTER_LISTEN_BACKLOG 1024
/* Plugins initialise during a start or a reload: give them time, but not
 * forever. */
#define MASTER_RELOAD_WAIT_MS 60000
#define MASTER_START_WAIT_MS 60000
/* A worker that dies sooner than this after its start counts as one more
 * death in a row, and the next restart waits longer. */
#define MASTER_STABLE_MS 30000
#define MASTER_BACKOFF_FIRST_MS 1000
#define MASTER_BACKOFF_MAX_MS 30000
/* A worker still there this long after its shutdown deadline is killed. */
#define MASTER_STOP_SLACK_MS 5000

struct master {
    struct sluice_config *cfg; /* what the next worker starts with */
    struct run_as run_as;
    int *fds; /* fds[l * threads + t], open from start to stop */
    size_t nfds;
    pid_t worker; /* 0: none running */
    int status_fd; /* the worker's reports: readiness, reloads */
    int64_t started_ms;
    int deaths; /* in a row, each soon after its start */
    int64_t restart_at_ms;
    bool stopping;
    int64_t kill_at_ms;
};

/* The signals the master handles, all by sigwait. */
static void master_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGCHLD);
}

static int master_open_socket(const struct listen_conf *lc, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(lc->address, lc->port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "%s:%s: %s", lc->address, lc->port, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        /* Inherited by every accepted socket (io.h). */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
        (ai->ai_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, MASTER_LISTEN_BACKLOG) < 0) {
        snprintf(err, errlen, "cannot listen on %s port %s: %s", lc->address, lc->port,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

/* One SO_REUSEPORT socket per listen address per loop thread: the kernel
 * spreads connections over the threads. */
static int *master_open_sockets(const struct sluice_config *cfg)
{
    size_t n = cfg->nlistens * (size_t)cfg->threads;
    int *fds = calloc(n, sizeof *fds);
    if (!fds)
        return NULL;
    for (size_t i = 0; i < n; i++)
        fds[i] = -1;
    for (size_t l = 0; l < cfg->nlistens; l++) {
        for (int t = 0; t < cfg->threads; t++) {
            char err[300];
            int fd = master_open_socket(&cfg->listens[l], err, sizeof err);
            if (fd < 0) {
                fprintf(stderr, "%s:%d: %s\n", cfg->path, cfg->listens[l].line, err);
                for (size_t i = 0; i < n; i++)
                    if (fds[i] >= 0)
                        close(fds[i]);
                free(fds);
                return NULL;
            }
            fds[l * (size_t)cfg->threads + (size_t)t] = fd;
        }
    }
    return fds;
}

/* systemd's readiness protocol, without libsystemd. */
static void master_notify_systemd(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    sendto(fd, state, strlen(state), 0, (struct sockaddr *)&sa,
           (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    close(fd);
}

/* ---- the worker's reports ------------------------------------------------ */

/* Reads one line of the worker (readiness, reload result), waiting at most
 * timeout_ms in all. */
static int master_read_line(int fd, char *buf, size_t len, int timeout_ms)
{
    size_t got = 0;
    int64_t deadline = mstime_now() + timeout_ms;
    while (got + 1 < len) {
        int64_t left = deadline - mstime_now();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = left > 0 ? poll(&p, 1, (int)left) : 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        ssize_t n = read(fd, buf + got, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (buf[got++] == '\n') {
            buf[got] = '\0';
            return 0;
        }
    }
    buf[got] = '\0';
    return -1;
}

/* 0 when the worker says it is serving; otherwise why not, in err. */
static int master_wait_ready(int fd, char *err, size_t errlen)
{
    char line[800];
    if (master_read_line(fd, line, sizeof line, MASTER_START_WAIT_MS) == 0 &&
        strcmp(line, "ok\n") == 0)
        return 0;
    if (strncmp(line, "error: ", 7) == 0 && errlen > 0) {
        /* The worker's message, cut to fit. */
        size_t n = strcspn(line + 7, "\n");
        n = n < errlen ? n : errlen - 1;
        memcpy(err, line + 7, n);
        err[n] = '\0';
    } else {
        snprintf(err, errlen, "the worker exited or hung before it was ready");
    }
    return -1;
}

/* ---- starting a worker ------------------------------------------------------ */

static void master_child(struct master *m, int report_fd)
{
    int rc = worker_run(m->cfg, &m->run_as, m->fds, report_fd);
    close(report_fd);
    free(m->fds);
    config_free(m->cfg);
    MASTER_WORKER_LEAK_CHECK();
    _exit(rc);
}

/* Forks a worker and waits for its report: 0 when it serves. */
static int master_spawn(struct master *m, char *err, size_t errlen)
{
    int pipefd[2];
    if (pipe(pipefd) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    if (pid == 0) {
        close(pipefd[0]);
        master_child(m, pipefd[1]);
    }
    close(pipefd[1]);
    m->worker = pid;
    m->status_fd = pipefd[0];
    m->started_ms = mstime_now();
    return master_wait_ready(m->status_fd, err, errlen);
}

/* What the running worker cannot change until a restart, for sluice -t. */
static void master_write_state(const struct master *m)
{
    char *text = malloc(RESTART_ONLY_TEXT_MAX);
    if (!text || restart_only_describe(m->cfg, text, RESTART_ONLY_TEXT_MAX) < 0 ||
        restart_only_write_state(m->cfg->state_file, text) < 0)
        log_warn(NULL,
                 "cannot write state_file %s (%s): sluice -t will not say which changes "
                 "need a restart",
                 m->cfg->state_file, strerror(errno));
    free(text);
}

/* ---- a worker that died ------------------------------------------------------ */

static void master_describe_status(int status, char *out, size_t outlen)
{
    if (WIFSIGNALED(status))
        snprintf(out, outlen, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(out, outlen, "status %d", WEXITSTATUS(status));
}

/* 0 for the first death after a worker that served a while, then 1 s,
 * 2 s, 4 s ... up to MASTER_BACKOFF_MAX_MS: a plugin that crashes at once
 * every time must not make the master fork in a loop. */
static int64_t master_backoff_ms(int deaths)
{
    if (deaths <= 1)
        return 0;
    int64_t delay = MASTER_BACKOFF_FIRST_MS;
    for (int i = 2; i < deaths && delay < MASTER_BACKOFF_MAX_MS; i++)
        delay *= 2;
    return delay < MASTER_BACKOFF_MAX_MS ? delay : MASTER_BACKOFF_MAX_MS;
}

static void master_forget_worker(struct master *m)
{
    if (m->status_fd >= 0)
        close(m->status_fd);
    m->status_fd = -1;
    m->worker = 0;
}

static void master_worker_died(struct master *m, int status)
{
    int64_t lived = mstime_now() - m->started_ms;
    char why[128];
    master_describe_status(status, why, sizeof why);
    master_forget_worker(m);
    if (m->stopping) {
        log_info(NULL, "master: the worker stopped (%s)", why);
        return;
    }
    m->deaths = lived < MASTER_STABLE_MS ? m->deaths + 1 : 1;
    int64_t delay = master_backoff_ms(m->deaths);
    m->restart_at_ms = mstime_now() + delay;
    log_err(NULL,
            "master: the worker exited (%s) after %lld.%01lld s; restarting it in %lld ms (%d "
            "death%s in a row)",
            why, (long long)(lived / 1000), (long long)(lived % 1000 / 100), (long long)delay,
            m->deaths, m->deaths == 1 ? "" : "s");
}

/* Reaps every child; the worker's death is handled, others are forgotten. */
static void master_reap(struct master *m)
{
    int status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        if (pid == m->worker)
            master_worker_died(m, status);
}

/* The listening sockets never closed meanwhile: clients waited in the
 * backlog. */
static void master_restart(struct master *m)
{
    char err[700];
    if (master_spawn(m, err, sizeof err) == 0) {
        log_info(NULL, "master: worker restarted (pid %ld)", (long)m->worker);
        master_write_state(m);
        return;
    }
    log_err(NULL, "master: the restarted worker did not start: %s", err);
    if (m->worker > 0) {
        kill(m->worker, SIGKILL);
        int status = 0;
        while (waitpid(m->worker, &status, 0) < 0 && errno == EINTR)
            ;
        master_worker_died(m, status);
    }
}

/* ---- reload ---------------------------------------------------------------- */

/* The next worker (after a crash) starts with what the running one
 * reloaded; the sockets stay those of the boot configuration. */
static void master_adopt(struct master *m, struct sluice_config *next)
{
    config_keep_listeners(next, m->cfg);
    config_free(m->cfg);
    m->cfg = next;
    enum log_level level = SLOG_INFO;
    if (next->log_level && log_level_parse(next->log_level, &level) == 0)
        log_set_level(level);
}

/* A report that came after its reload timed out must not answer this one. */
static void master_drain_stale(int fd)
{
    char buf[512];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN) && read(fd, buf, sizeof buf) > 0)
        ;
}

/* SIGHUP: check the files here (no plugin code runs in the master), then
 * let the worker build the new chain and say how it went. */
static void master_reload(struct master *m)
{
    struct sluice_config *next = NULL;
    char err[1024];
    if (config_load(m->cfg->path, &next, err, sizeof err) < 0) {
        log_err(NULL, "master: reload refused, the running configuration stays: %s", err);
        return;
    }
    if (m->worker <= 0) {
        log_info(NULL, "master: reload: no worker running; the next one starts with it");
        master_adopt(m, next);
        return;
    }
    master_notify_systemd("RELOADING=1");
    master_drain_stale(m->status_fd);
    kill(m->worker, SIGHUP);
    char line[800];
    if (master_read_line(m->status_fd, line, sizeof line, MASTER_RELOAD_WAIT_MS) < 0) {
        log_err(NULL, "master: the worker did not report on the reload");
        config_free(next);
    } else if (strncmp(line, "reload ok", 9) == 0) {
        log_info(NULL, "master: reload done");
        master_adopt(m, next);
    } else {
        log_err(NULL, "master: %s", line);
        config_free(next);
    }
    master_notify_systemd("READY=1");
}

/* ---- stopping ---------------------------------------------------------------- */

static void master_close_listeners(struct master *m)
{
    for (size_t i = 0; i < m->nfds; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    for (size_t i = 0; i < m->nfds; i++)
        m->fds[i] = -1;
}

/* The first SIGTERM/SIGINT drains; a second one has the worker close every
 * session at once. */
static void master_stop_signal(struct master *m, int sig)
{
    if (m->stopping) {
        log_info(NULL, "master: %s again: stopping at once", strsignal(sig));
        if (m->worker > 0)
            kill(m->worker, SIGTERM);
        return;
    }
    m->stopping = true;
    log_info(NULL, "master: %s: stopping, sessions may finish within %lld ms", strsignal(sig),
             (long long)m->cfg->shutdown_timeout_ms);
    master_notify_systemd("STOPPING=1");
    /* New clients are refused now and try the next MX. */
    master_close_listeners(m);
    if (m->worker > 0)
        kill(m->worker, SIGTERM);
    m->kill_at_ms = mstime_now() + m->cfg->shutdown_timeout_ms + MASTER_STOP_SLACK_MS;
}

/* How long sigtimedwait may sleep: until the next restart or the forced
 * stop; -1 for no timer. */
static int64_t master_next_timer(const struct master *m)
{
    if (m->stopping && m->worker > 0)
        return m->kill_at_ms;
    if (!m->stopping && m->worker <= 0)
        return m->restart_at_ms;
    return -1;
}

static void master_timer(struct master *m)
{
    int64_t now = mstime_now();
    if (m->stopping && m->worker > 0 && now >= m->kill_at_ms) {
        log_err(NULL, "master: the worker did not stop in time: killing it");
        kill(m->worker, SIGKILL);
        m->kill_at_ms = now + MASTER_STOP_SLACK_MS;
    } else if (!m->stopping && m->worker <= 0 && now >= m->restart_at_ms) {
        master_restart(m);
    }
}

static int master_wait_signal(sigset_t *set, int64_t at_ms)
{
    if (at_ms < 0)
        return sigwaitinfo(set, NULL);
    int64_t left = at_ms - mstime_now();
    if (left < 0)
        left = 0;
    struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (long)(left % 1000) * 1000000L};
    return sigtimedwait(set, NULL, &ts);
}

static int master_supervise(struct master *m)
{
    sigset_t set;
    master_signals(&set);
    while (!(m->stopping && m->worker <= 0)) {
        int sig = master_wait_signal(&set, master_next_timer(m));
        if (sig < 0) {
            if (errno == EAGAIN)
                master_timer(m);
            continue;
        }
        if (sig == SIGTERM || sig == SIGINT)
            master_stop_signal(m, sig);
        else if (sig == SIGHUP && !m->stopping)
            master_reload(m);
        else if (sig == SIGCHLD)
            master_reap(m);
    }
    log_info(NULL, "master: stopped");
    return 0;
}

/* ---- start ------------------------------------------------------------------- */

/* Everything the worker needs that only root can do, before the first fork. */
static int master_prepare(struct master *m)
{
    char err[1024];
    if (privileges_resolve(m->cfg, &m->run_as, err, sizeof err) < 0 ||
        privileges_check_layout(m->cfg, err, sizeof err) < 0 ||
        privileges_prepare_dirs(m->cfg, &m->run_as, err, sizeof err) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        return -1;
    }
    if (m->run_as.keep_root)
        log_warn(NULL, "run_as_root = true: every plugin and script runs as root");
    /* Before the fork: the worker inherits the raised limit. */
    fd_limits_check(m->cfg, "start");
    m->nfds = m->cfg->nlistens * (size_t)m->cfg->threads;
    m->fds = master_open_sockets(m->cfg);
    return m->fds ? 0 : -1;
}

int master_run(struct sluice_config *cfg)
{
    sigset_t set;
    master_signals(&set);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct master m = {.cfg = cfg, .status_fd = -1};
    int rc = 1;
    char err[700];
    if (master_prepare(&m) < 0)
        goto out;
    if (master_spawn(&m, err, sizeof err) < 0) {
        /* At boot a worker that cannot start makes the start fail. */
        fprintf(stderr, "sluice: %s\n", err);
        if (m.worker > 0) {
            kill(m.worker, SIGTERM);
            waitpid(m.worker, NULL, 0);
        }
        goto out;
    }
    log_info(NULL, "sluice ready: %zu listen addresses, %d loop threads", m.cfg->nlistens,
             m.cfg->threads);
    master_write_state(&m);
    master_notify_systemd("READY=1");
    rc = master_supervise(&m);
    unlink(m.cfg->state_file);
out:
    master_forget_worker(&m);
    if (m.fds)
        master_close_listeners(&m);
    free(m.fds);
    config_free(m.cfg);
    return rc;
}
