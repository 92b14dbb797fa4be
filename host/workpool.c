/* The worker's thread pool: a FIFO of jobs under one mutex, N threads taking
 * from it. Finished jobs are handed back to their loop thread through one
 * event per loop base: a pool thread appends the job to that base's list of
 * finished jobs and activates the event only when the list was empty, and
 * the loop runs every finished job in one callback. So a burst of
 * completions costs one wake-up of the loop, not one each, and no job needs
 * an event of its own (libevent runs with evthread_use_pthreads(), so
 * event_active() from another thread is safe and wakes the loop).
 *
 * Shutdown order (worker.c): stop the loops and join their threads, then
 * workpool_free(), then free the loop bases. The bases' events and every
 * job still owned by the pool are freed then, on bases that still exist
 * but no longer run. */
#include "workpool.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "log.h"

struct wp_base;

struct wp_job {
    struct wp_base *home;
    void (*work)(void *);
    void (*done)(void *);
    void *arg;
    struct wp_job *next; /* in the queue, then in its base's finished list */
    /* every job the pool owns, until its done callback starts */
    struct wp_job *prev_live, *next_live;
};

/* A loop base that submitted work: its finished jobs, and the event that
 * runs them on its loop. */
struct wp_base {
    struct workpool *wp;
    struct event_base *base;
    struct event *ev;
    struct wp_job *finished_head, *finished_tail;
    struct wp_base *next;
};

struct workpool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct wp_job *queue_head, *queue_tail;
    struct wp_job *live;
    struct wp_base *bases;
    bool stopping;
    pthread_t *threads;
    int nthreads;
};

static void workpool_unlink_live(struct workpool *wp, struct wp_job *job)
{
    if (job->prev_live)
        job->prev_live->next_live = job->next_live;
    else
        wp->live = job->next_live;
    if (job->next_live)
        job->next_live->prev_live = job->prev_live;
    job->prev_live = job->next_live = NULL;
}

static struct wp_job *workpool_take(struct workpool *wp)
{
    pthread_mutex_lock(&wp->mu);
    while (!wp->queue_head && !wp->stopping)
        pthread_cond_wait(&wp->cv, &wp->mu);
    struct wp_job *job = NULL;
    if (!wp->stopping) {
        job = wp->queue_head;
        wp->queue_head = job->next;
        if (!wp->queue_head)
            wp->queue_tail = NULL;
        job->next = NULL;
    }
    pthread_mutex_unlock(&wp->mu);
    return job;
}

/* The loop is woken only by the first of a batch: while the list is not
 * empty, its event is already active. */
static void workpool_finish(struct workpool *wp, struct wp_job *job)
{
    struct wp_base *home = job->home;
    pthread_mutex_lock(&wp->mu);
    bool wake = home->finished_head == NULL;
    if (home->finished_tail)
        home->finished_tail->next = job;
    else
        home->finished_head = job;
    home->finished_tail = job;
    pthread_mutex_unlock(&wp->mu);
    if (wake)
        event_active(home->ev, EV_TIMEOUT, 0);
}

static void *workpool_thread_main(void *p)
{
    struct workpool *wp = p;
    struct wp_job *job;
    while ((job = workpool_take(wp)) != NULL) {
        job->work(job->arg);
        workpool_finish(wp, job);
    }
    return NULL;
}

/* On the base's loop thread: every job finished so far, in order. A done
 * callback may submit more work; those finish into a new batch. */
static void workpool_finished_cb(evutil_socket_t fd, short what, void *p)
{
    (void)fd;
    (void)what;
    struct wp_base *home = p;
    struct workpool *wp = home->wp;
    pthread_mutex_lock(&wp->mu);
    struct wp_job *job = home->finished_head;
    home->finished_head = home->finished_tail = NULL;
    for (struct wp_job *j = job; j; j = j->next)
        workpool_unlink_live(wp, j);
    pthread_mutex_unlock(&wp->mu);
    while (job) {
        struct wp_job *next = job->next;
        void (*done)(void *) = job->done;
        void *arg = job->arg;
        free(job);
        done(arg);
        job = next;
    }
}

/* The caller holds wp->mu and runs on base's loop thread (event_new there). */
static struct wp_base *workpool_base_locked(struct workpool *wp, struct event_base *base)
{
    for (struct wp_base *b = wp->bases; b; b = b->next)
        if (b->base == base)
            return b;
    struct wp_base *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->ev = event_new(base, -1, 0, workpool_finished_cb, b);
    if (!b->ev) {
        free(b);
        return NULL;
    }
    b->wp = wp;
    b->base = base;
    b->next = wp->bases;
    wp->bases = b;
    return b;
}

struct workpool *workpool_new(int nthreads)
{
    struct workpool *wp = calloc(1, sizeof *wp);
    if (!wp)
        return NULL;
    if (nthreads < 1)
        nthreads = 1;
    wp->threads = calloc((size_t)nthreads, sizeof *wp->threads);
    if (!wp->threads) {
        free(wp);
        return NULL;
    }
    pthread_mutex_init(&wp->mu, NULL);
    pthread_cond_init(&wp->cv, NULL);
    for (; wp->nthreads < nthreads; wp->nthreads++)
        if (pthread_create(&wp->threads[wp->nthreads], NULL, workpool_thread_main, wp) != 0)
            break;
    if (wp->nthreads == 0) {
        workpool_free(wp);
        return NULL;
    }
    if (wp->nthreads < nthreads)
        log_warn(NULL, "workpool: started %d of %d threads", wp->nthreads, nthreads);
    return wp;
}

void workpool_free(struct workpool *wp)
{
    if (!wp)
        return;
    pthread_mutex_lock(&wp->mu);
    wp->stopping = true;
    pthread_cond_broadcast(&wp->cv);
    pthread_mutex_unlock(&wp->mu);
    for (int i = 0; i < wp->nthreads; i++)
        pthread_join(wp->threads[i], NULL);
    /* No thread runs any more and the loops have stopped (see the top of the
     * file): what is left is queued work never started, or finished work
     * whose done callback will never run. */
    struct wp_job *job = wp->live;
    while (job) {
        struct wp_job *next = job->next_live;
        free(job);
        job = next;
    }
    while (wp->bases) {
        struct wp_base *b = wp->bases;
        wp->bases = b->next;
        event_free(b->ev);
        free(b);
    }
    pthread_cond_destroy(&wp->cv);
    pthread_mutex_destroy(&wp->mu);
    free(wp->threads);
    free(wp);
}

int workpool_submit(struct workpool *wp, struct event_base *base, void (*work)(void *),
                    void (*done)(void *), void *arg)
{
    struct wp_job *job = calloc(1, sizeof *job);
    if (!job)
        return -1;
    job->work = work;
    job->done = done;
    job->arg = arg;
    pthread_mutex_lock(&wp->mu);
    job->home = wp->stopping ? NULL : workpool_base_locked(wp, base);
    if (!job->home) {
        pthread_mutex_unlock(&wp->mu);
        free(job);
        return -1;
    }
    if (wp->queue_tail)
        wp->queue_tail->next = job;
    else
        wp->queue_head = job;
    wp->queue_tail = job;
    job->next_live = wp->live;
    if (wp->live)
        wp->live->prev_live = job;
    wp->live = job;
    pthread_cond_signal(&wp->cv);
    pthread_mutex_unlock(&wp->mu);
    return 0;
}

struct wp_here {
    void (*done)(void *);
    void *arg;
};

static void workpool_here_done_cb(evutil_socket_t fd, short what, void *p)
{
    (void)fd;
    (void)what;
    struct wp_here here = *(struct wp_here *)p;
    free(p);
    here.done(here.arg);
}

int workpool_run_here(struct event_base *base, void (*work)(void *), void (*done)(void *),
                      void *arg)
{
    struct wp_here *here = malloc(sizeof *here);
    if (!here)
        return -1;
    here->done = done;
    here->arg = arg;
    /* Scheduled before the work runs, so a failure leaves nothing done. A
     * timeout-only once-event with no delay is activated at once, in order. */
    if (event_base_once(base, -1, EV_TIMEOUT, workpool_here_done_cb, here, NULL) < 0) {
        free(here);
        return -1;
    }
    work(arg);
    return 0;
}
