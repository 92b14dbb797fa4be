/* Backend pool slots and server choice, with real event bases on real threads. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "config.h"
#include "pool.h"

#define LOOP_LIMIT_S 20 /* no test loop may run longer than this */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

struct test_pool {
    struct server_conf servers[4];
    struct pool_conf conf;
    struct pool *pool;
};

static struct test_pool *test_pool_new(int max_connections, int64_t wait_ms, const int *weights,
                                       size_t nservers)
{
    static char *hosts[] = {"a", "b", "c", "d"};
    struct test_pool *tp = calloc(1, sizeof(*tp));

    assert_non_null(tp);
    assert_true(nservers <= 4);
    for (size_t i = 0; i < nservers; i++) {
        tp->servers[i].host = hosts[i];
        tp->servers[i].port = "25";
        tp->servers[i].weight = weights[i];
    }
    tp->conf.name = "test";
    tp->conf.servers = tp->servers;
    tp->conf.nservers = nservers;
    tp->conf.max_connections = max_connections;
    tp->conf.wait_ms = wait_ms;
    tp->conf.down_ms = 30000;
    tp->pool = pool_new(&tp->conf);
    assert_non_null(tp->pool);
    return tp;
}

static void test_pool_free(struct test_pool *tp)
{
    assert_int_equal(pool_in_use(tp->pool), 0);
    assert_int_equal(pool_waiting(tp->pool), 0);
    pool_free(tp->pool);
    free(tp);
}

static const int one_server[] = {1};

/* Runs base until *done reaches want, or LOOP_LIMIT_S passed. */
static void run_until(struct event_base *base, const int *done, int want)
{
    uint64_t deadline = now_ms() + LOOP_LIMIT_S * 1000u;

    while (__atomic_load_n(done, __ATOMIC_SEQ_CST) < want && now_ms() < deadline) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        sleep_ms(1);
    }
}

/* --- many threads, one cap ---------------------------------------------- */

#define STRESS_THREADS 4
#define STRESS_PER_THREAD 50
#define STRESS_CAP 5

struct stress {
    struct pool *pool;
    int holders;     /* atomically: sessions holding a slot right now */
    int max_holders; /* atomically: the most ever seen */
    int granted;
    int timed_out;
    int over_cap; /* grants seen while the pool reported more than the cap in use */
    int64_t max_hold_ms;
    int pool_cap;
};

struct stress_thread {
    struct stress *shared;
    struct event_base *base;
    unsigned seed;
    int done;
};

struct session {
    struct stress_thread *thread;
    struct event *hold_timer;
    struct pool_waiter *waiter;
};

static void note_holder(struct stress *st)
{
    int now = __atomic_add_fetch(&st->holders, 1, __ATOMIC_SEQ_CST);
    int seen = __atomic_load_n(&st->max_holders, __ATOMIC_SEQ_CST);

    while (now > seen &&
           !__atomic_compare_exchange_n(&st->max_holders, &seen, now, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    /* cmocka asserts must stay on the main thread: count, check later */
    if (pool_in_use(st->pool) > st->pool_cap)
        __atomic_add_fetch(&st->over_cap, 1, __ATOMIC_SEQ_CST);
}

static void session_release(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    struct stress_thread *t = s->thread;

    __atomic_sub_fetch(&t->shared->holders, 1, __ATOMIC_SEQ_CST);
    pool_release(t->shared->pool, NULL);
    event_free(s->hold_timer);
    free(s);
    t->done++;
}

static void session_hold(struct session *s)
{
    struct stress_thread *t = s->thread;
    int64_t hold = t->shared->max_hold_ms > 0 ? rand_r(&t->seed) % t->shared->max_hold_ms : 0;
    struct timeval tv = {.tv_sec = 0, .tv_usec = (suseconds_t)hold * 1000};

    __atomic_add_fetch(&t->shared->granted, 1, __ATOMIC_SEQ_CST);
    note_holder(t->shared);
    s->hold_timer = evtimer_new(t->base, session_release, s);
    if (s->hold_timer == NULL)
        abort();
    evtimer_add(s->hold_timer, &tv);
}

static void session_slot(void *arg, bool granted)
{
    struct session *s = arg;

    if (granted) {
        session_hold(s);
        return;
    }
    __atomic_add_fetch(&s->thread->shared->timed_out, 1, __ATOMIC_SEQ_CST);
    s->thread->done++;
    free(s);
}

static void *stress_thread_main(void *arg)
{
    struct stress_thread *t = arg;

    t->base = event_base_new();
    for (int i = 0; i < STRESS_PER_THREAD; i++) {
        struct session *s = calloc(1, sizeof(*s));
        int rc;

        if (s == NULL)
            abort();
        s->thread = t;
        rc = pool_acquire(t->shared->pool, t->base, NULL, session_slot, s, &s->waiter);
        if (rc == 1)
            session_hold(s);
        else if (rc < 0)
            abort();
    }
    run_until(t->base, &t->done, STRESS_PER_THREAD);
    event_base_free(t->base);
    return NULL;
}

static void run_stress(struct stress *st)
{
    pthread_t tids[STRESS_THREADS];
    struct stress_thread threads[STRESS_THREADS];

    memset(threads, 0, sizeof(threads));
    for (int i = 0; i < STRESS_THREADS; i++) {
        threads[i].shared = st;
        threads[i].seed = (unsigned)(i + 1) * 7919u;
        assert_int_equal(pthread_create(&tids[i], NULL, stress_thread_main, &threads[i]), 0);
    }
    for (int i = 0; i < STRESS_THREADS; i++)
        pthread_join(tids[i], NULL);
    for (int i = 0; i < STRESS_THREADS; i++)
        assert_int_equal(threads[i].done, STRESS_PER_THREAD);
}

static void cap_holds_across_four_threads_and_all_200_complete(void **state)
{
    struct test_pool *tp = test_pool_new(STRESS_CAP, 15000, one_server, 1);
    struct stress st = {.pool = tp->pool, .max_hold_ms = 4, .pool_cap = STRESS_CAP};

    run_stress(&st);
    assert_int_equal(st.granted, STRESS_THREADS * STRESS_PER_THREAD);
    assert_int_equal(st.timed_out, 0);
    assert_int_equal(st.over_cap, 0);
    assert_true(st.max_holders <= STRESS_CAP);
    assert_int_equal(st.max_holders, STRESS_CAP); /* the cap was actually reached */
    test_pool_free(tp);
}

/* Waits of 1 ms against holds of up to 3 ms: handovers and timeouts collide
 * constantly; each request still ends exactly once and no slot leaks. */
static void no_slot_lost_when_timeouts_race_handovers(void **state)
{
    struct test_pool *tp = test_pool_new(2, 1, one_server, 1);
    struct stress st = {.pool = tp->pool, .max_hold_ms = 3, .pool_cap = 2};

    run_stress(&st);
    assert_int_equal(st.granted + st.timed_out, STRESS_THREADS * STRESS_PER_THREAD);
    assert_true(st.timed_out > 0);
    assert_int_equal(st.over_cap, 0);
    assert_true(st.max_holders <= 2);
    test_pool_free(tp);
}

/* --- one thread, deterministic ------------------------------------------ */

struct recorder {
    struct pool *pool;
    int order[8];
    bool granted[8];
    int calls;
    bool release_on_grant;
};

struct recorded_request {
    struct recorder *rec;
    int id;
};

static void record_slot(void *arg, bool granted)
{
    struct recorded_request *r = arg;
    struct recorder *rec = r->rec;

    rec->order[rec->calls] = r->id;
    rec->granted[rec->calls] = granted;
    rec->calls++;
    if (granted && rec->release_on_grant)
        pool_release(rec->pool, NULL);
}

static void run_once(struct event_base *base, struct recorder *rec, int want)
{
    run_until(base, &rec->calls, want);
}

static void waiters_get_slots_in_arrival_order(void **state)
{
    struct test_pool *tp = test_pool_new(1, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool, .release_on_grant = true};
    struct recorded_request reqs[3] = {{&rec, 0}, {&rec, 1}, {&rec, 2}};
    struct pool_waiter *w;

    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &reqs[i], &w), 0);
    assert_int_equal(pool_waiting(tp->pool), 3);
    pool_release(tp->pool, NULL);
    run_once(base, &rec, 3);
    assert_int_equal(rec.calls, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rec.order[i], i);
        assert_true(rec.granted[i]);
    }
    event_base_free(base);
    test_pool_free(tp);
}

static void newcomer_queues_behind_a_granted_waiter(void **state)
{
    struct test_pool *tp = test_pool_new(1, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool, .release_on_grant = true};
    struct recorded_request first = {&rec, 0}, late = {&rec, 1};
    struct pool_waiter *w;

    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &first, &w), 0);
    pool_release(tp->pool, NULL); /* handed to first; its callback has not run yet */
    assert_int_equal(pool_in_use(tp->pool), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &late, &w), 0);
    run_once(base, &rec, 2);
    assert_int_equal(rec.calls, 2);
    assert_int_equal(rec.order[0], 0);
    assert_int_equal(rec.order[1], 1);
    event_base_free(base);
    test_pool_free(tp);
}

/* A base with libevent's default coarse clock may fire a timer a few ms
 * before a precise clock says it is due; the promise is measured precisely. */
static struct event_base *precise_base_new(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *base;

    assert_non_null(cfg);
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    assert_non_null(base);
    return base;
}

static void wait_timeout_reports_no_slot_after_wait_ms(void **state)
{
    struct test_pool *tp = test_pool_new(1, 100, one_server, 1);
    struct event_base *base = precise_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request req = {&rec, 0};
    struct pool_waiter *w;
    uint64_t start;

    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    start = now_ms();
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &req, &w), 0);
    run_once(base, &rec, 1);
    assert_int_equal(rec.calls, 1);
    assert_false(rec.granted[0]);
    assert_true(now_ms() - start >= 100);
    assert_int_equal(pool_waiting(tp->pool), 0);
    assert_int_equal(pool_in_use(tp->pool), 1);
    pool_release(tp->pool, NULL);
    event_base_free(base);
    test_pool_free(tp);
}

static void cancelled_waiter_is_never_called_and_takes_no_slot(void **state)
{
    struct test_pool *tp = test_pool_new(1, 50, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request req = {&rec, 0};
    struct pool_waiter *w;
    uint64_t until;

    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &req, &w), 0);
    pool_cancel(w);
    assert_int_equal(pool_waiting(tp->pool), 0);
    until = now_ms() + 120; /* past the 50 ms wait the request would have had */
    while (now_ms() < until) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        sleep_ms(5);
    }
    assert_int_equal(rec.calls, 0);
    pool_release(tp->pool, NULL);
    assert_int_equal(pool_in_use(tp->pool), 0);
    event_base_free(base);
    test_pool_free(tp);
}

static void cancel_after_grant_passes_the_slot_to_the_next_waiter(void **state)
{
    struct test_pool *tp = test_pool_new(1, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request gone = {&rec, 0}, next = {&rec, 1};
    struct pool_waiter *w_gone, *w_next;

    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w_gone), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &gone, &w_gone), 0);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &next, &w_next), 0);
    pool_release(tp->pool, NULL); /* granted to gone, whose callback is still pending */
    pool_cancel(w_gone);
    run_once(base, &rec, 1);
    assert_int_equal(rec.calls, 1);
    assert_int_equal(rec.order[0], 1);
    assert_true(rec.granted[0]);
    assert_int_equal(pool_in_use(tp->pool), 1);
    pool_release(tp->pool, NULL);
    event_base_free(base);
    test_pool_free(tp);
}

static void cancel_after_grant_with_no_one_waiting_frees_the_slot(void **state)
{
    struct test_pool *tp = test_pool_new(1, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request gone = {&rec, 0};
    struct pool_waiter *w;

    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &gone, &w), 0);
    pool_release(tp->pool, NULL);
    pool_cancel(w);
    assert_int_equal(pool_in_use(tp->pool), 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(rec.calls, 0);
    event_base_free(base);
    test_pool_free(tp);
}

/* --- server choice ------------------------------------------------------ */

static void weights_3_to_1_give_exactly_300_to_100_and_interleave(void **state)
{
    static const int weights[] = {3, 1};
    struct test_pool *tp = test_pool_new(5, 1000, weights, 2);
    int count[2] = {0, 0};

    for (int i = 0; i < 400; i++) {
        int idx = pool_first_server(tp->pool);

        assert_true(idx == 0 || idx == 1);
        count[idx]++;
        /* smooth WRR: every window of four picks holds exactly one b */
        if (i % 4 == 3)
            assert_int_equal(count[1], (i + 1) / 4);
    }
    assert_int_equal(count[0], 300);
    assert_int_equal(count[1], 100);
    test_pool_free(tp);
}

static void failed_server_is_skipped_until_down_ms_passed(void **state)
{
    static const int weights[] = {1, 1};
    struct test_pool *tp = test_pool_new(5, 1000, weights, 2);
    bool saw_a = false;

    tp->conf.down_ms = 100;
    pool_server_failed(tp->pool, 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(pool_first_server(tp->pool), 1);
    sleep_ms(150);
    for (int i = 0; i < 4; i++)
        saw_a = saw_a || pool_first_server(tp->pool) == 0;
    assert_true(saw_a);
    test_pool_free(tp);
}

static void server_ok_clears_the_down_mark_at_once(void **state)
{
    static const int weights[] = {1, 1};
    struct test_pool *tp = test_pool_new(5, 1000, weights, 2);
    bool saw_a = false;

    pool_server_failed(tp->pool, 0);
    assert_int_equal(pool_first_server(tp->pool), 1);
    pool_server_ok(tp->pool, 0);
    for (int i = 0; i < 4; i++)
        saw_a = saw_a || pool_first_server(tp->pool) == 0;
    assert_true(saw_a);
    test_pool_free(tp);
}

static void all_down_servers_are_still_tried_oldest_failure_first(void **state)
{
    static const int weights[] = {1, 1, 1};
    struct test_pool *tp = test_pool_new(5, 1000, weights, 3);
    int first;

    pool_server_failed(tp->pool, 2);
    pool_server_failed(tp->pool, 0);
    pool_server_failed(tp->pool, 1);
    first = pool_first_server(tp->pool);
    assert_int_equal(first, 2);
    pool_server_failed(tp->pool, first);
    assert_int_equal(pool_next_server(tp->pool, first, 1), 0);
    pool_server_failed(tp->pool, 0);
    assert_int_equal(pool_next_server(tp->pool, 0, 2), 1);
    pool_server_failed(tp->pool, 1);
    assert_int_equal(pool_next_server(tp->pool, 1, 3), -1);
    test_pool_free(tp);
}

static void attempt_sequence_tries_every_server_once_then_gives_up(void **state)
{
    static const int weights[] = {1, 2, 1, 1};
    struct test_pool *tp = test_pool_new(5, 1000, weights, 4);
    bool tried[4] = {false, false, false, false};
    int idx, tries = 0;

    pool_server_failed(tp->pool, 2); /* down before this sequence started */
    idx = pool_first_server(tp->pool);
    while (idx >= 0 && tries < 10) {
        assert_false(tried[idx]);
        tried[idx] = true;
        tries++;
        pool_server_failed(tp->pool, idx);
        idx = pool_next_server(tp->pool, idx, tries);
    }
    assert_int_equal(tries, 4);
    for (int i = 0; i < 4; i++)
        assert_true(tried[i]);
    test_pool_free(tp);
}


/* ---- the per-client share ---------------------------------------------- */

static struct sockaddr_storage client_addr(const char *ip)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
    }
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void client_over_its_share_waits_while_other_clients_take_free_slots(void **state)
{
    struct test_pool *tp = test_pool_new(4, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request third = {&rec, 0};
    struct sockaddr_storage a = client_addr("192.0.2.1"), b = client_addr("192.0.2.2");
    struct pool_waiter *w;

    tp->conf.max_per_client = 2;
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, &third, &w), 0);
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 2);
    /* Two slots are free, but not for a: b takes one at once. */
    assert_int_equal(pool_acquire(tp->pool, base, SA(b), record_slot, NULL, &w), 1);
    assert_int_equal(pool_in_use(tp->pool), 3);
    assert_int_equal(pool_waiting(tp->pool), 1);
    /* One of a's own slots comes back: a's waiter gets it. */
    pool_release(tp->pool, SA(a));
    run_once(base, &rec, 1);
    assert_true(rec.granted[0]);
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 2);
    pool_release(tp->pool, SA(a));
    pool_release(tp->pool, SA(a));
    pool_release(tp->pool, SA(b));
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 0);
    event_base_free(base);
    test_pool_free(tp);
}

static void waiter_over_its_share_does_not_hold_up_the_queue_behind_it(void **state)
{
    struct test_pool *tp = test_pool_new(2, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request a_again = {&rec, 0}, c_req = {&rec, 1};
    struct sockaddr_storage a = client_addr("2001:db8::1"), b = client_addr("192.0.2.2"),
                            c = client_addr("::ffff:192.0.2.3");
    struct pool_waiter *w;

    tp->conf.max_per_client = 1;
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, &a_again, &w), 0);
    assert_int_equal(pool_acquire(tp->pool, base, SA(b), record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, SA(c), record_slot, &c_req, &w), 0);
    /* b's slot goes to c, queued behind a, since a is at its share. */
    pool_release(tp->pool, SA(b));
    run_once(base, &rec, 1);
    assert_int_equal(rec.order[0], 1);
    assert_true(rec.granted[0]);
    /* v4-mapped v6 counts as the v4 address. */
    struct sockaddr_storage c4 = client_addr("192.0.2.3");
    assert_int_equal(pool_held_by(tp->pool, SA(c4)), 1);
    pool_release(tp->pool, SA(a));
    run_once(base, &rec, 2);
    assert_int_equal(rec.order[1], 0);
    assert_true(rec.granted[1]);
    pool_release(tp->pool, SA(a));
    pool_release(tp->pool, SA(c4));
    event_base_free(base);
    test_pool_free(tp);
}

static void client_over_its_share_gets_no_slot_after_the_wait(void **state)
{
    struct test_pool *tp = test_pool_new(3, 100, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request req = {&rec, 0};
    struct sockaddr_storage a = client_addr("192.0.2.1");
    struct pool_waiter *w;

    tp->conf.max_per_client = 1;
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, &req, &w), 0);
    run_once(base, &rec, 1);
    assert_false(rec.granted[0]);
    assert_int_equal(pool_in_use(tp->pool), 1);
    pool_release(tp->pool, SA(a));
    event_base_free(base);
    test_pool_free(tp);
}

/* ---- kept idle connections ---------------------------------------------- */

struct eviction {
    struct pool *pool;
    struct pool_idle *idle;
    int calls;
};

/* What backend.c does when its kept connection is evicted: QUIT, then the
 * slot goes back. */
static void evicted_cb(evutil_socket_t fd, short what, void *arg)
{
    struct eviction *ev = arg;

    assert_true(ev->idle->evicted);
    assert_false(ev->idle->listed);
    ev->calls++;
    pool_release(ev->pool, NULL);
}

static void full_pool_evicts_the_oldest_idle_connection_for_a_waiting_session(void **state)
{
    struct test_pool *tp = test_pool_new(2, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool, .release_on_grant = true};
    struct recorded_request waiting = {&rec, 0};
    struct pool_idle old = {0}, young = {0};
    struct eviction ev_old = {tp->pool, &old, 0}, ev_young = {tp->pool, &young, 0};
    struct pool_waiter *w;

    old.ev = event_new(base, -1, 0, evicted_cb, &ev_old);
    young.ev = event_new(base, -1, 0, evicted_cb, &ev_young);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    assert_true(pool_idle_add(tp->pool, &old));
    assert_true(pool_idle_add(tp->pool, &young));
    assert_int_equal(pool_idle_count(tp->pool), 2);
    /* Full: the newcomer waits, and the oldest kept connection goes for it. */
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &waiting, &w), 0);
    assert_int_equal(pool_idle_count(tp->pool), 1);
    run_once(base, &rec, 1);
    assert_int_equal(ev_old.calls, 1);
    assert_int_equal(ev_young.calls, 0);
    assert_true(rec.granted[0]);
    /* An evicted connection cannot be taken for reuse any more. */
    assert_false(pool_idle_take(tp->pool, &old, NULL, NULL));
    assert_true(pool_idle_take(tp->pool, &young, NULL, NULL));
    pool_release(tp->pool, NULL);
    event_free(old.ev);
    event_free(young.ev);
    event_base_free(base);
    test_pool_free(tp);
}

static void no_connection_is_kept_while_a_session_waits(void **state)
{
    struct test_pool *tp = test_pool_new(1, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool, .release_on_grant = true};
    struct recorded_request waiting = {&rec, 0};
    struct pool_idle idle = {0};
    struct pool_waiter *w;

    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &waiting, &w), 0);
    assert_false(pool_idle_add(tp->pool, &idle));
    assert_int_equal(pool_idle_count(tp->pool), 0);
    pool_release(tp->pool, NULL);
    run_once(base, &rec, 1);
    assert_true(rec.granted[0]);
    event_base_free(base);
    test_pool_free(tp);
}

static void reuse_moves_the_per_client_count_to_the_new_client_within_its_share(void **state)
{
    struct test_pool *tp = test_pool_new(4, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct sockaddr_storage a = client_addr("192.0.2.1"), b = client_addr("192.0.2.2");
    struct pool_idle idle = {0};
    struct pool_waiter *w;

    tp->conf.max_per_client = 1;
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, NULL, &w), 1);
    assert_true(pool_idle_add(tp->pool, &idle));
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 1);
    /* b already holds its one connection: it cannot take a kept one too. */
    assert_int_equal(pool_acquire(tp->pool, base, SA(b), record_slot, NULL, &w), 1);
    assert_false(pool_idle_take(tp->pool, &idle, SA(a), SA(b)));
    pool_release(tp->pool, SA(b));
    assert_true(pool_idle_take(tp->pool, &idle, SA(a), SA(b)));
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 0);
    assert_int_equal(pool_held_by(tp->pool, SA(b)), 1);
    assert_int_equal(pool_in_use(tp->pool), 1);
    pool_release(tp->pool, SA(b));
    event_base_free(base);
    test_pool_free(tp);
}

static void a_slot_ahead_of_need_is_taken_only_when_free_and_nobody_waits(void **state)
{
    struct test_pool *tp = test_pool_new(2, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct recorder rec = {.pool = tp->pool};
    struct recorded_request waiting = {&rec, 0};
    struct pool_waiter *w;

    assert_true(pool_try_acquire(tp->pool));
    assert_int_equal(pool_in_use(tp->pool), 1);
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, NULL, &w), 1);
    assert_false(pool_try_acquire(tp->pool)); /* full */
    assert_int_equal(pool_acquire(tp->pool, base, NULL, record_slot, &waiting, &w), 0);
    pool_release(tp->pool, NULL); /* to the waiter, not to the next try */
    assert_false(pool_try_acquire(tp->pool));
    run_once(base, &rec, 1);
    assert_true(rec.granted[0]);
    pool_release(tp->pool, NULL);
    assert_true(pool_try_acquire(tp->pool));
    assert_int_equal(pool_in_use(tp->pool), 2);
    pool_release(tp->pool, NULL);
    pool_release(tp->pool, NULL);
    event_base_free(base);
    test_pool_free(tp);
}

static void a_slot_taken_ahead_of_need_passes_to_a_client_within_its_share(void **state)
{
    struct test_pool *tp = test_pool_new(4, 10000, one_server, 1);
    struct event_base *base = event_base_new();
    struct sockaddr_storage a = client_addr("192.0.2.1");
    struct pool_waiter *w;

    tp->conf.max_per_client = 1;
    assert_true(pool_try_acquire(tp->pool));
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 0);
    assert_true(pool_move_slot(tp->pool, NULL, SA(a)));
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 1);
    assert_int_equal(pool_in_use(tp->pool), 1);
    /* a's share is used up: a second slot ahead of need stays uncounted. */
    assert_true(pool_try_acquire(tp->pool));
    assert_false(pool_move_slot(tp->pool, NULL, SA(a)));
    assert_int_equal(pool_held_by(tp->pool, SA(a)), 1);
    pool_release(tp->pool, NULL);
    pool_release(tp->pool, SA(a));
    assert_int_equal(pool_in_use(tp->pool), 0);
    assert_int_equal(pool_acquire(tp->pool, base, SA(a), record_slot, NULL, &w), 1);
    pool_release(tp->pool, SA(a));
    event_base_free(base);
    test_pool_free(tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cap_holds_across_four_threads_and_all_200_complete),
        cmocka_unit_test(no_slot_lost_when_timeouts_race_handovers),
        cmocka_unit_test(waiters_get_slots_in_arrival_order),
        cmocka_unit_test(newcomer_queues_behind_a_granted_waiter),
        cmocka_unit_test(wait_timeout_reports_no_slot_after_wait_ms),
        cmocka_unit_test(cancelled_waiter_is_never_called_and_takes_no_slot),
        cmocka_unit_test(cancel_after_grant_passes_the_slot_to_the_next_waiter),
        cmocka_unit_test(cancel_after_grant_with_no_one_waiting_frees_the_slot),
        cmocka_unit_test(weights_3_to_1_give_exactly_300_to_100_and_interleave),
        cmocka_unit_test(failed_server_is_skipped_until_down_ms_passed),
        cmocka_unit_test(server_ok_clears_the_down_mark_at_once),
        cmocka_unit_test(all_down_servers_are_still_tried_oldest_failure_first),
        cmocka_unit_test(attempt_sequence_tries_every_server_once_then_gives_up),
        cmocka_unit_test(client_over_its_share_waits_while_other_clients_take_free_slots),
        cmocka_unit_test(waiter_over_its_share_does_not_hold_up_the_queue_behind_it),
        cmocka_unit_test(client_over_its_share_gets_no_slot_after_the_wait),
        cmocka_unit_test(full_pool_evicts_the_oldest_idle_connection_for_a_waiting_session),
        cmocka_unit_test(no_connection_is_kept_while_a_session_waits),
        cmocka_unit_test(reuse_moves_the_per_client_count_to_the_new_client_within_its_share),
        cmocka_unit_test(a_slot_ahead_of_need_is_taken_only_when_free_and_nobody_waits),
        cmocka_unit_test(a_slot_taken_ahead_of_need_passes_to_a_client_within_its_share),
    };

    evthread_use_pthreads();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
