/* The worker's thread pool: a FIFO of jobs under one mutex, N threads taking
 * from it. A finished job is handed back to its loop thread by activating an
 * event of that loop's base (libevent runs with evthread_use_pthreads(), so
 * event_active() from another thread is safe and wakes the loop).
 *
 * Shutdown order (worker.c): stop the loops and join their threads, then
 * workpool_free(), then free the loop bases. Every job still owned by the
 * pool then holds an event of a base that still exists but no longer runs,
 * so freeing those events is safe. */
#include "workpool.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "log.h"

struct wp_job {
    struct workpool *wp;
    void (*work)(void *);
    void (*done)(void *);
    void *arg;
    struct event *ev;
    struct wp_job *next_queued;
    /* every job the pool owns, until its done callback starts */
    struct wp_job *prev_live, *next_live;
};

struct workpool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct wp_job *queue_head, *queue_tail;
    struct wp_job *live;
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
        wp->queue_head = job->next_queued;
        if (!wp->queue_head)
            wp->queue_tail = NULL;
    }
    pthread_mutex_unlock(&wp->mu);
    return job;
}

static void *workpool_thread_main(void *p)
{
    struct workpool *wp = p;
    struct wp_job *job;
    while ((job = workpool_take(wp)) != NULL) {
        job->work(job->arg);
        event_active(job->ev, EV_TIMEOUT, 0);
    }
    return NULL;
}

/* On the submitting loop thread. */
static void workpool_job_done_cb(evutil_socket_t fd, short what, void *p)
{
    struct wp_job *job = p;
    struct workpool *wp = job->wp;
    pthread_mutex_lock(&wp->mu);
    workpool_unlink_live(wp, job);
    pthread_mutex_unlock(&wp->mu);
    event_free(job->ev);
    void (*done)(void *) = job->done;
    void *arg = job->arg;
    free(job);
    done(arg);
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
        event_free(job->ev);
        free(job);
        job = next;
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
    job->ev = event_new(base, -1, 0, workpool_job_done_cb, job);
    if (!job->ev) {
        free(job);
        return -1;
    }
    job->wp = wp;
    job->work = work;
    job->done = done;
    job->arg = arg;
    pthread_mutex_lock(&wp->mu);
    if (wp->stopping) {
        pthread_mutex_unlock(&wp->mu);
        event_free(job->ev);
        free(job);
        return -1;
    }
    if (wp->queue_tail)
        wp->queue_tail->next_queued = job;
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
