/* workpool: work on pool threads, completions on the loop thread that
 * submitted, and a free that neither waits for queued work nor leaks it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "workpool.h"

#define LOOP_LIMIT_MS 10000
#define JOBS_PER_BASE 500
#define QUEUED_JOBS 50
#define GATE_OPEN_DELAY_MS 100

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void guard_expired(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

/* A base whose loop ends after LOOP_LIMIT_MS at the latest. */
static struct event_base *bounded_base(struct event **guard)
{
    struct event_base *base = event_base_new();
    assert_non_null(base);
    *guard = evtimer_new(base, guard_expired, base);
    assert_non_null(*guard);
    struct timeval tv = {LOOP_LIMIT_MS / 1000, (LOOP_LIMIT_MS % 1000) * 1000};
    evtimer_add(*guard, &tv);
    return base;
}

/* ---- one base, one job ---- */

struct probe {
    pthread_t work_thread;
    pthread_t done_thread;
    int work_runs, done_runs;
    struct event_base *base;
};

static void probe_work(void *arg)
{
    struct probe *p = arg;
    p->work_thread = pthread_self();
    p->work_runs++;
}

static void probe_done(void *arg)
{
    struct probe *p = arg;
    p->done_thread = pthread_self();
    p->done_runs++;
    event_base_loopexit(p->base, NULL);
}

static void job_runs_on_pool_and_completes_on_submitting_loop_thread(void **state)
{
    struct event *guard;
    struct probe p = {.base = bounded_base(&guard)};
    struct workpool *wp = workpool_new(2);
    assert_non_null(wp);
    assert_int_equal(workpool_submit(wp, p.base, probe_work, probe_done, &p), 0);
    assert_int_equal(p.done_runs, 0); /* never from inside submit */
    event_base_dispatch(p.base);
    assert_int_equal(p.work_runs, 1);
    assert_int_equal(p.done_runs, 1);
    assert_false(pthread_equal(p.work_thread, pthread_self()));
    assert_true(pthread_equal(p.done_thread, pthread_self()));
    workpool_free(wp);
    event_free(guard);
    event_base_free(p.base);
}

/* ---- work run here: on the loop thread, done on the next turn ---- */

static void work_here_runs_at_once_and_done_comes_from_the_loop_afterwards(void **state)
{
    struct event *guard;
    struct probe p = {.base = bounded_base(&guard)};
    assert_int_equal(workpool_run_here(p.base, probe_work, probe_done, &p), 0);
    assert_int_equal(p.work_runs, 1);
    assert_true(pthread_equal(p.work_thread, pthread_self()));
    assert_int_equal(p.done_runs, 0); /* never from inside the call */
    event_base_dispatch(p.base);
    assert_int_equal(p.done_runs, 1);
    assert_true(pthread_equal(p.done_thread, pthread_self()));
    event_free(guard);
    event_base_free(p.base);
}

/* ---- two bases, many jobs ---- */

struct loop_side {
    struct event_base *base;
    struct event *guard;
    struct workpool *wp;
    pthread_t thread;
    atomic_int works;
    int dones;
    int wrong_thread_dones;
};

static void side_work(void *arg)
{
    struct loop_side *side = arg;
    atomic_fetch_add(&side->works, 1);
}

static void side_done(void *arg)
{
    struct loop_side *side = arg;
    if (!pthread_equal(pthread_self(), side->thread))
        side->wrong_thread_dones++;
    if (++side->dones == JOBS_PER_BASE)
        event_base_loopexit(side->base, NULL);
}

/* Submits from its own loop thread, as a session would. */
static void side_submit_all(evutil_socket_t fd, short what, void *arg)
{
    struct loop_side *side = arg;
    for (int i = 0; i < JOBS_PER_BASE; i++)
        if (workpool_submit(side->wp, side->base, side_work, side_done, side) < 0)
            return;
}

static void *side_main(void *arg)
{
    struct loop_side *side = arg;
    event_base_once(side->base, -1, EV_TIMEOUT, side_submit_all, side, NULL);
    event_base_dispatch(side->base);
    return NULL;
}

static void many_jobs_from_two_bases_each_complete_once_on_their_own_loop(void **state)
{
    struct workpool *wp = workpool_new(4);
    assert_non_null(wp);
    struct loop_side sides[2];
    for (int i = 0; i < 2; i++) {
        sides[i] = (struct loop_side){.wp = wp};
        sides[i].base = bounded_base(&sides[i].guard);
    }
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&sides[i].thread, NULL, side_main, &sides[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(sides[i].thread, NULL);
    workpool_free(wp);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(atomic_load(&sides[i].works), JOBS_PER_BASE);
        assert_int_equal(sides[i].dones, JOBS_PER_BASE);
        assert_int_equal(sides[i].wrong_thread_dones, 0);
        event_free(sides[i].guard);
        event_base_free(sides[i].base);
    }
}

/* ---- free with work queued ---- */

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    atomic_bool started;
    atomic_int works;
    atomic_int dones;
};

static void gate_work(void *arg)
{
    struct gate *g = arg;
    atomic_store(&g->started, true);
    pthread_mutex_lock(&g->mu);
    int64_t waited = 0;
    while (!g->open && waited++ < LOOP_LIMIT_MS / 10) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 10 * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->cv, &g->mu, &until);
    }
    pthread_mutex_unlock(&g->mu);
    atomic_fetch_add(&g->works, 1);
}

static void count_work(void *arg)
{
    struct gate *g = arg;
    atomic_fetch_add(&g->works, 1);
}

static void count_done(void *arg)
{
    struct gate *g = arg;
    atomic_fetch_add(&g->dones, 1);
}

static void *open_gate_later(void *arg)
{
    struct gate *g = arg;
    sleep_ms(GATE_OPEN_DELAY_MS);
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static void free_lets_running_work_finish_and_drops_queued_jobs_without_done(void **state)
{
    struct gate g = {.open = false};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    struct event_base *base = event_base_new();
    assert_non_null(base);
    struct workpool *wp = workpool_new(1);
    assert_non_null(wp);
    assert_int_equal(workpool_submit(wp, base, gate_work, count_done, &g), 0);
    for (int i = 0; i < QUEUED_JOBS; i++)
        assert_int_equal(workpool_submit(wp, base, count_work, count_done, &g), 0);
    for (int i = 0; i < LOOP_LIMIT_MS && !atomic_load(&g.started); i++)
        sleep_ms(1);
    assert_true(atomic_load(&g.started));
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_gate_later, &g), 0);
    workpool_free(wp); /* the loop never ran: like a worker shutting down */
    pthread_join(opener, NULL);
    assert_int_equal(atomic_load(&g.works), 1);
    assert_int_equal(atomic_load(&g.dones), 0);
    event_base_free(base);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
}

static void pool_with_zero_threads_still_runs_work(void **state)
{
    struct event *guard;
    struct probe p = {.base = bounded_base(&guard)};
    struct workpool *wp = workpool_new(0);
    assert_non_null(wp);
    assert_int_equal(workpool_submit(wp, p.base, probe_work, probe_done, &p), 0);
    event_base_dispatch(p.base);
    assert_int_equal(p.done_runs, 1);
    workpool_free(wp);
    event_free(guard);
    event_base_free(p.base);
}

int main(void)
{
    evthread_use_pthreads();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(job_runs_on_pool_and_completes_on_submitting_loop_thread),
        cmocka_unit_test(many_jobs_from_two_bases_each_complete_once_on_their_own_loop),
        cmocka_unit_test(free_lets_running_work_finish_and_drops_queued_jobs_without_done),
        cmocka_unit_test(pool_with_zero_threads_still_runs_work),
        cmocka_unit_test(work_here_runs_at_once_and_done_comes_from_the_loop_afterwards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
