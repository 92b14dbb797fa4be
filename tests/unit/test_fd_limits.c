/* The descriptor budget of a configuration, and raising RLIMIT_NOFILE to it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>

#include <cmocka.h>

#include "config.h"
#include "fd_limits.h"

static void budget_counts_sessions_twice_pools_plugins_and_threads(void **state)
{
    struct pool_conf pools[2] = {{.max_connections = 20}, {.max_connections = 7}};
    struct chain_entry_conf entries[3] = {{.enabled = true}, {.enabled = false}, {.enabled = true}};
    struct sluice_config cfg = {
        .threads = 4, .nlistens = 2, .pools = pools, .npools = 2,
        .entries = entries, .nentries = 3,
        .connections = {.max_sessions = 1000},
    };
    struct fd_budget b;

    fd_budget_of(&cfg, &b);
    assert_int_equal(b.sessions, 2000);
    assert_int_equal(b.backends, 27);
    assert_int_equal(b.plugins, 2 * 4 * FD_BUDGET_PER_ENTRY);
    assert_int_equal(b.fixed, FD_BUDGET_PROCESS + 4 * (FD_BUDGET_PER_THREAD + 2));
    assert_int_equal(b.total, b.sessions + b.backends + b.plugins + b.fixed);
    assert_false(b.unbounded_sessions);

    cfg.connections.max_sessions = 0;
    fd_budget_of(&cfg, &b);
    assert_int_equal(b.sessions, 0);
    assert_true(b.unbounded_sessions);
}

static void soft_limit_below_the_need_is_raised_to_the_hard_limit(void **state)
{
    struct rlimit saved, low;
    struct fd_limit l;

    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    if (saved.rlim_max == RLIM_INFINITY || saved.rlim_max < 256)
        skip();
    low = (struct rlimit){.rlim_cur = 128, .rlim_max = saved.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);

    assert_int_equal(fd_limit_fit(100, &l), 0); /* fits: left alone */
    assert_false(l.raised);
    assert_true(l.fits);
    assert_int_equal(l.soft, 128);

    assert_int_equal(fd_limit_fit(200, &l), 0);
    assert_true(l.raised);
    assert_true(l.fits);
    assert_int_equal(l.before, 128);
    assert_int_equal(l.soft, saved.rlim_max);

    assert_int_equal(fd_limit_fit((long)saved.rlim_max + 1, &l), 0);
    assert_false(l.fits);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(budget_counts_sessions_twice_pools_plugins_and_threads),
        cmocka_unit_test(soft_limit_below_the_need_is_raised_to_the_hard_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
