#include "master.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "fd_limits.h"
#include "log.h"
#include "worker.h"

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
/* Plugins initialise during a reload: give them time, but not forever. */
#define MASTER_RELOAD_WAIT_MS 60000

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

/* Reads the worker's one-line report: 0 when it is serving. */
static int master_wait_ready(int fd)
{
    char buf[700];
    size_t len = 0;
    while (len + 1 < sizeof buf) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (memchr(buf, '\n', len))
            break;
    }
    buf[len] = '\0';
    if (strncmp(buf, "ok\n", 3) == 0)
        return 0;
    if (strncmp(buf, "error: ", 7) == 0)
        fprintf(stderr, "sluice: %s", buf + 7);
    else
        fprintf(stderr, "sluice: the worker exited before it was ready\n");
    return -1;
}

/* Reads one status line of the worker (reload result), waiting at most
 * timeout_ms. */
static int master_read_line(int fd, char *buf, size_t len, int timeout_ms)
{
    size_t got = 0;
    while (got + 1 < len) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        ssize_t n = read(fd, buf + got, 1);
        if (n <= 0)
            return -1;
        if (buf[got++] == '\n')
            break;
    }
    buf[got] = '\0';
    return 0;
}

/* SIGHUP: check the files here (no plugin code runs in the master), then
 * let the worker build the new chain and say how it went. */
static void master_reload(const struct sluice_config *cfg, pid_t worker, int status_fd)
{
    struct sluice_config *next = NULL;
    char err[1024];
    if (config_load(cfg->path, &next, err, sizeof err) < 0) {
        log_err(NULL, "master: reload refused, the running configuration stays: %s", err);
        return;
    }
    config_free(next);
    master_notify_systemd("RELOADING=1");
    kill(worker, SIGHUP);
    char line[800];
    if (master_read_line(status_fd, line, sizeof line, MASTER_RELOAD_WAIT_MS) < 0)
        log_err(NULL, "master: the worker did not report on the reload");
    else if (strncmp(line, "reload ok", 9) == 0)
        log_info(NULL, "master: reload done");
    else
        log_err(NULL, "master: %s", line);
    master_notify_systemd("READY=1");
}

/* The signals the master handles, all by sigwait. */
static void master_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGCHLD);
}

static int master_supervise(const struct sluice_config *cfg, pid_t worker, int status_fd)
{
    sigset_t set;
    master_signals(&set);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGTERM || sig == SIGINT) {
            log_info(NULL, "master: stopping");
            master_notify_systemd("STOPPING=1");
            kill(worker, SIGTERM);
            int status = 0;
            while (waitpid(worker, &status, 0) < 0 && errno == EINTR)
                ;
            return 0;
        }
        if (sig == SIGHUP) {
            master_reload(cfg, worker, status_fd);
            continue;
        }
        int status = 0;
        pid_t pid = waitpid(worker, &status, WNOHANG);
        if (pid == worker) {
            log_err(NULL, "master: worker exited (%s %d)",
                    WIFSIGNALED(status) ? "signal" : "status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            return 1;
        }
    }
}

int master_run(struct sluice_config *cfg)
{
    sigset_t set;
    master_signals(&set);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Before the fork: the worker inherits the raised limit. */
    fd_limits_check(cfg, "start");
    int *fds = master_open_sockets(cfg);
    if (!fds)
        return 1;
    int pipefd[2];
    if (pipe(pipefd) < 0) {
        fprintf(stderr, "sluice: pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "sluice: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        close(pipefd[0]);
        int rc = worker_run(cfg, fds, pipefd[1]);
        close(pipefd[1]);
        free(fds);
        config_free(cfg);
        MASTER_WORKER_LEAK_CHECK();
        _exit(rc);
    }
    close(pipefd[1]);
    int ready = master_wait_ready(pipefd[0]);
    if (ready < 0) {
        close(pipefd[0]);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        free(fds);
        return 1;
    }
    log_info(NULL, "sluice ready: %zu listen addresses, %d loop threads", cfg->nlistens,
             cfg->threads);
    master_notify_systemd("READY=1");
    int rc = master_supervise(cfg, pid, pipefd[0]);
    close(pipefd[0]);
    size_t n = cfg->nlistens * (size_t)cfg->threads;
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    return rc;
}
