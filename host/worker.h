/* The worker process: N loop threads sharing one configuration and the
 * backend pools. */
#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include <sys/queue.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>

struct event_base;
struct evconnlistener;
struct sluice_config;
struct dns_ctx;
struct pool;
struct chain;
struct generation;
struct workpool;
struct store;
struct store_thread;
struct dns_cache;
struct limits;
struct session;
struct backend_ops;
struct smtp_backend;
struct accept_guard;
struct run_as;

struct loop {
    int index;
    struct event_base *base;
    struct dns_ctx *dns;
    struct dns_ctx **dns_retired; /* replaced at reloads, freed once idle */
    size_t ndns_retired;
    struct event *dns_sweep;      /* looks for idle retired contexts */
    struct store_thread *store;
    struct worker *worker;
    struct evconnlistener **listeners;
    size_t nlisteners;
    struct accept_guard *accept_guard; /* pauses the listeners when accept fails */
    pthread_t thread;
    uint32_t session_seq;
    unsigned sessions;
    LIST_HEAD(, session) sessions_of_loop;   /* every session of this loop */
    LIST_HEAD(, smtp_backend) backend_list;  /* every SMTP backend connection, closing ones too */
    LIST_HEAD(, smtp_backend) backend_idle;  /* kept for the next session, newest first */
    LIST_HEAD(, smtp_backend) backend_spares; /* opened ahead of need, not ready yet */
};

/* The loop whose thread is running, NULL on any other thread: the SDK's
 * entry-level services (sdk_entry_async.c) run on the caller's loop. */
extern _Thread_local struct loop *loop_current;

struct worker {
    const struct sluice_config *cfg;
    struct generation *gen;      /* what new sessions start with */
    struct generation *retiring; /* released, waiting for thread_fini */
    pthread_mutex_t gen_lock;
    bool loops_running;
    unsigned gen_seq;
    struct workpool *workpool;
    struct store *store;
    struct limits *limits; /* connection limits, shared by the loops */
    struct dns_cache *dns_cache; /* DNS answers, shared by the loops */
    struct loop *loops;
    int nloops;
    atomic_int sessions; /* open sessions, all threads */
    atomic_int backends; /* SMTP backend connections (backend.c), all threads */
    atomic_bool stopping;
    /* Where transactions go: backend_smtp_ops, or sluice-check's
     * backend_check_ops (recipients and messages go nowhere). */
    const struct backend_ops *backend_ops;
    char *metrics_listen; /* where the metrics endpoint listens now, or NULL */
};

/* fds[l * nloops + t]: the listening socket of listen entry l for loop t.
 * First becomes run_as's user (before any plugin loads). Runs until
 * SIGTERM/SIGINT, then lets sessions finish within timeouts.shutdown (a
 * second signal: at once); ready_fd (or -1) receives "ok\n" once every loop
 * listens, or "error: ...\n". Returns the process exit status. */
int worker_run(const struct sluice_config *cfg, const struct run_as *run_as, const int *fds,
               int ready_fd);

#endif
