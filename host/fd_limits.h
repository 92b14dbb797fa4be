/* The descriptors the configuration can need at once, checked against
 * RLIMIT_NOFILE: at start (the master, before the worker is forked) and
 * after a reload (the worker). A limit too low is raised towards the hard
 * limit where that is allowed; otherwise a warning gives the numbers. The
 * daemon runs either way: at the limit, accept pauses (accept_guard.c). */
#ifndef SLUICE_FD_LIMITS_H
#define SLUICE_FD_LIMITS_H

#include <stdbool.h>

struct sluice_config;

/* Descriptors one chain entry is allowed for its own use (a socket to
 * clamd or Redis per loop thread, a file or two). */
#define FD_BUDGET_PER_ENTRY 8
/* Per loop thread besides its listeners: the event base, its wake-up
 * descriptors, the c-ares sockets, the Redis connection, the reserve. */
#define FD_BUDGET_PER_THREAD 8
/* The process: standard streams, the log, the store, the metrics listener,
 * the thread pool's wake-up pipes, the master's status pipe. */
#define FD_BUDGET_PROCESS 32

struct fd_budget {
    long sessions; /* connections.max_sessions x 2: a client socket and a spool file each */
    long backends; /* the sum of the pools' max_connections */
    long plugins;  /* FD_BUDGET_PER_ENTRY per enabled chain entry, per loop thread */
    long fixed;    /* listeners, loop threads, the process */
    long total;
    bool unbounded_sessions; /* max_sessions = 0: sessions count is not in total */
};

void fd_budget_of(const struct sluice_config *cfg, struct fd_budget *out);

struct fd_limit {
    unsigned long before; /* the soft limit found */
    unsigned long soft;   /* the soft limit now */
    unsigned long hard;
    bool raised;
    bool fits; /* need <= soft */
};

/* Raises the soft RLIMIT_NOFILE to the hard limit when need is above it (to
 * need when the hard limit is unlimited). Returns -1 when the limit cannot be
 * read. */
int fd_limit_fit(long need, struct fd_limit *out);

/* Both, and the log line: info when it fits, a warning with the numbers
 * when it does not. who names the caller ("start", "reload"). Returns true
 * when the budget fits. */
bool fd_limits_check(const struct sluice_config *cfg, const char *who);

#endif
