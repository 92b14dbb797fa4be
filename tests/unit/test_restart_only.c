/* The restart-only settings: what the reload warning and sluice -t name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "restart_only.h"

static struct listen_conf listens[2] = {{.address = "127.0.0.1", .port = "25"},
                                        {.address = "::1", .port = "25"}};

static struct sluice_config base(void)
{
    return (struct sluice_config){
        .listens = listens, .nlistens = 2, .threads = 4, .user = "sluice",
        .store = {.backend = STORE_LMDB, .path = "/var/lib/sluice/store", .map_size = 1 << 20},
        .thread_pool_size = 4, .state_file = "/run/sluice/running.state",
        .log_level = "info", .metrics_listen = NULL,
    };
}

static size_t changed(const struct sluice_config *a, const struct sluice_config *b,
                      const char **names)
{
    char ta[RESTART_ONLY_TEXT_MAX], tb[RESTART_ONLY_TEXT_MAX];
    assert_int_equal(restart_only_describe(a, ta, sizeof ta), 0);
    assert_int_equal(restart_only_describe(b, tb, sizeof tb), 0);
    return restart_only_changed(ta, tb, names, RESTART_ONLY_MAX_CHANGED);
}

static void reloadable_settings_are_not_named(void **state)
{
    struct sluice_config a = base(), b = base();
    const char *names[RESTART_ONLY_MAX_CHANGED];
    b.log_level = "debug";
    b.metrics_listen = "127.0.0.1:9125";
    b.dns.timeout_ms = 2000;
    b.max_recipients = 7;
    assert_int_equal(changed(&a, &b, names), 0);
}

static void each_restart_only_setting_is_named_once(void **state)
{
    struct sluice_config a = base(), b = base();
    const char *names[RESTART_ONLY_MAX_CHANGED];
    struct listen_conf moved[2] = {{.address = "127.0.0.1", .port = "2525"},
                                   {.address = "::1", .port = "25"}};
    b.listens = moved;
    b.threads = 8;
    b.group = "mail";
    b.store.map_size = 2 << 20;
    b.thread_pool_size = 8;
    size_t n = changed(&a, &b, names);
    assert_int_equal(n, 5);
    assert_string_equal(names[0], "listen");
    assert_string_equal(names[1], "threads");
    assert_string_equal(names[2], "group");
    assert_string_equal(names[3], "store");
    assert_string_equal(names[4], "thread_pool_size");
}

static void one_listen_address_fewer_is_a_listen_change(void **state)
{
    struct sluice_config a = base(), b = base();
    const char *names[RESTART_ONLY_MAX_CHANGED];
    b.nlistens = 1;
    assert_int_equal(changed(&a, &b, names), 1);
    assert_string_equal(names[0], "listen");
}

static void a_buffer_too_small_is_refused(void **state)
{
    struct sluice_config a = base();
    char small[16];
    assert_int_equal(restart_only_describe(&a, small, sizeof small), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reloadable_settings_are_not_named),
        cmocka_unit_test(each_restart_only_setting_is_named_once),
        cmocka_unit_test(one_listen_address_fewer_is_a_listen_change),
        cmocka_unit_test(a_buffer_too_small_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
