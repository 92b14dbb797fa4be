/* Connection limits: totals, per address, per network, rate, allowlist. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "conn_limits.h"
#include "netaddr.h"

#define T0 1000000u /* an arbitrary start of the test clock, in ms */

struct fixture {
    struct connection_conf conf;
    struct limits *limits;
};

/* Defaults of the tests: every limit off; each test turns on what it proves. */
static struct fixture *fixture_new(void)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->conf.network_v4 = 24;
    f->conf.network_v6 = 64;
    f->conf.rate_interval_ms = 60000;
    return f;
}

static void fixture_start(struct fixture *f)
{
    f->limits = limits_new(&f->conf);
    assert_non_null(f->limits);
}

static void fixture_free(struct fixture *f)
{
    limits_free(f->limits);
    netlist_free(f->conf.allowlist);
    free(f);
}

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(40000);
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(40000);
    }
    return ss;
}

static enum limits_verdict admit_at(struct fixture *f, const char *ip, uint64_t now)
{
    struct sockaddr_storage ss = addr(ip);
    char why[200];
    return limits_admit_at(f->limits, (struct sockaddr *)&ss, why, sizeof why, now);
}

static enum limits_verdict admit(struct fixture *f, const char *ip)
{
    return admit_at(f, ip, T0);
}

static void release_at(struct fixture *f, const char *ip, uint64_t now)
{
    struct sockaddr_storage ss = addr(ip);
    limits_release_at(f->limits, (struct sockaddr *)&ss, now);
}

static void release(struct fixture *f, const char *ip)
{
    release_at(f, ip, T0);
}

static void per_address_refuses_the_sixth_session_of_one_address(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 5;
    fixture_start(f);
    for (int i = 0; i < 5; i++)
        assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OVER_ADDRESS);
    assert_int_equal(admit(f, "192.0.2.2"), LIMITS_OK);
    struct sockaddr_storage ss = addr("192.0.2.1");
    assert_int_equal(limits_address_sessions(f->limits, (struct sockaddr *)&ss), 5);
    assert_int_equal(limits_refused(f->limits, LIMITS_OVER_ADDRESS), 1);
    fixture_free(f);
}

static void refusal_explains_itself_with_the_address(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 1;
    fixture_start(f);
    struct sockaddr_storage ss = addr("192.0.2.7");
    char why[200];
    assert_int_equal(limits_admit_at(f->limits, (struct sockaddr *)&ss, why, sizeof why, T0),
                     LIMITS_OK);
    assert_string_equal(why, "");
    assert_int_equal(limits_admit_at(f->limits, (struct sockaddr *)&ss, why, sizeof why, T0),
                     LIMITS_OVER_ADDRESS);
    assert_non_null(strstr(why, "192.0.2.7"));
    assert_string_equal(limits_verdict_name(LIMITS_OVER_ADDRESS), "address");
    fixture_free(f);
}

static void release_makes_room_for_a_new_session(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 2;
    fixture_start(f);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OVER_ADDRESS);
    release(f, "192.0.2.1");
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(limits_total(f->limits), 2);
    fixture_free(f);
}

static void max_sessions_caps_every_address_together(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.max_sessions = 3;
    fixture_start(f);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "198.51.100.1"), LIMITS_OK);
    assert_int_equal(admit(f, "2001:db8::1"), LIMITS_OK);
    assert_int_equal(admit(f, "203.0.113.1"), LIMITS_OVER_TOTAL);
    release(f, "198.51.100.1");
    assert_int_equal(admit(f, "203.0.113.1"), LIMITS_OK);
    fixture_free(f);
}

static void per_network_counts_a_v4_slash_24_together(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_network = 3;
    fixture_start(f);
    assert_int_equal(admit(f, "10.1.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "10.1.2.2"), LIMITS_OK);
    assert_int_equal(admit(f, "10.1.2.254"), LIMITS_OK);
    assert_int_equal(admit(f, "10.1.2.77"), LIMITS_OVER_NETWORK);
    assert_int_equal(admit(f, "10.1.3.1"), LIMITS_OK);
    struct sockaddr_storage ss = addr("10.1.2.200");
    assert_int_equal(limits_network_sessions(f->limits, (struct sockaddr *)&ss), 3);
    release(f, "10.1.2.2");
    assert_int_equal(admit(f, "10.1.2.77"), LIMITS_OK);
    fixture_free(f);
}

static void per_network_counts_a_v6_slash_64_together(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_network = 2;
    fixture_start(f);
    assert_int_equal(admit(f, "2001:db8:1:2::1"), LIMITS_OK);
    assert_int_equal(admit(f, "2001:db8:1:2:ffff::9"), LIMITS_OK);
    assert_int_equal(admit(f, "2001:db8:1:2:1234:5678:9abc:def0"), LIMITS_OVER_NETWORK);
    assert_int_equal(admit(f, "2001:db8:1:3::1"), LIMITS_OK);
    fixture_free(f);
}

static void network_prefix_length_is_configurable(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_network = 1;
    f->conf.network_v4 = 16;
    fixture_start(f);
    assert_int_equal(admit(f, "10.1.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "10.1.99.1"), LIMITS_OVER_NETWORK);
    assert_int_equal(admit(f, "10.2.0.1"), LIMITS_OK);
    fixture_free(f);
}

static void v4_mapped_v6_counts_as_the_v4_address(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 2;
    f->conf.per_network = 3;
    fixture_start(f);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "::ffff:192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "::ffff:192.0.2.1"), LIMITS_OVER_ADDRESS);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OVER_ADDRESS);
    assert_int_equal(admit(f, "::ffff:192.0.2.9"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.10"), LIMITS_OVER_NETWORK);
    release(f, "::ffff:192.0.2.1");
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    fixture_free(f);
}

static void rate_refuses_the_fourth_connection_within_the_interval(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.rate = 3;
    f->conf.rate_interval_ms = 10000;
    fixture_start(f);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(admit_at(f, "192.0.2.1", T0 + (uint64_t)i * 100), LIMITS_OK);
        release_at(f, "192.0.2.1", T0 + (uint64_t)i * 100 + 50);
    }
    assert_int_equal(admit_at(f, "192.0.2.1", T0 + 1000), LIMITS_OVER_RATE);
    assert_int_equal(admit_at(f, "192.0.2.2", T0 + 1000), LIMITS_OK);
    assert_int_equal(limits_refused(f->limits, LIMITS_OVER_RATE), 1);
    fixture_free(f);
}

static void rate_bucket_refills_over_time(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.rate = 3;
    f->conf.rate_interval_ms = 10000;
    fixture_start(f);
    for (int i = 0; i < 3; i++)
        assert_int_equal(admit_at(f, "192.0.2.1", T0), LIMITS_OK);
    assert_int_equal(admit_at(f, "192.0.2.1", T0 + 3000), LIMITS_OVER_RATE);
    /* One token per 3333 ms. */
    assert_int_equal(admit_at(f, "192.0.2.1", T0 + 3400), LIMITS_OK);
    assert_int_equal(admit_at(f, "192.0.2.1", T0 + 3500), LIMITS_OVER_RATE);
    /* A long pause refills up to the capacity, never beyond. */
    uint64_t later = T0 + 100000;
    for (int i = 0; i < 3; i++)
        assert_int_equal(admit_at(f, "192.0.2.1", later), LIMITS_OK);
    assert_int_equal(admit_at(f, "192.0.2.1", later), LIMITS_OVER_RATE);
    fixture_free(f);
}

static void allowlisted_client_is_always_admitted_and_not_counted(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.max_sessions = 1;
    f->conf.per_address = 1;
    f->conf.rate = 1;
    assert_int_equal(netlist_add(&f->conf.allowlist, "192.0.2.0/28"), 0);
    fixture_start(f);
    for (int i = 0; i < 10; i++)
        assert_int_equal(admit(f, "192.0.2.5"), LIMITS_OK);
    assert_int_equal(limits_total(f->limits), 0);
    assert_int_equal(admit(f, "::ffff:192.0.2.5"), LIMITS_OK);
    assert_int_equal(admit(f, "198.51.100.1"), LIMITS_OK);
    assert_int_equal(admit(f, "198.51.100.2"), LIMITS_OVER_TOTAL);
    for (int i = 0; i < 10; i++)
        release(f, "192.0.2.5");
    assert_int_equal(limits_total(f->limits), 1);
    fixture_free(f);
}

static void zero_disables_every_limit(void **state)
{
    struct fixture *f = fixture_new();
    fixture_start(f);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(limits_tracked_addresses(f->limits), 0);
    fixture_free(f);
}

static void idle_entries_are_forgotten(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 5;
    f->conf.per_network = 5;
    f->conf.rate = 2;
    f->conf.rate_interval_ms = 1000;
    fixture_start(f);
    char ip[32];
    for (int i = 1; i <= 200; i++) {
        snprintf(ip, sizeof ip, "10.0.%d.%d", i / 100, i % 100 + 1);
        assert_int_equal(admit_at(f, ip, T0), LIMITS_OK);
        release_at(f, ip, T0);
    }
    /* Their buckets are not full yet: the entries remember the connection. */
    assert_int_equal(limits_tracked_addresses(f->limits), 200);
    /* Once a bucket is full again and no session is left, nothing is kept. */
    assert_int_equal(admit_at(f, "192.0.2.1", T0 + 5000), LIMITS_OK);
    release_at(f, "192.0.2.1", T0 + 10000);
    assert_int_equal(limits_tracked_addresses(f->limits), 0);
    fixture_free(f);
}

static void beyond_the_table_cap_clients_are_admitted_untracked(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 1;
    fixture_start(f);
    char ip[64];
    for (unsigned i = 0; i < LIMITS_MAX_TRACKED; i++) {
        snprintf(ip, sizeof ip, "2001:db8::%x:%x", i >> 16, i & 0xffff);
        assert_int_equal(admit(f, ip), LIMITS_OK);
    }
    assert_int_equal(limits_tracked_addresses(f->limits), LIMITS_MAX_TRACKED);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(limits_tracked_addresses(f->limits), LIMITS_MAX_TRACKED);
    /* A tracked address is still limited. */
    assert_int_equal(admit(f, "2001:db8::0:0"), LIMITS_OVER_ADDRESS);
    fixture_free(f);
}

static void reconfigure_applies_new_limits_and_keeps_the_counts(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 1;
    f->conf.per_network = 10;
    fixture_start(f);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OVER_ADDRESS);
    struct connection_conf wider = f->conf;
    wider.per_address = 2;
    wider.network_v4 = 16;
    limits_reconfigure(f->limits, &wider);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OVER_ADDRESS);
    assert_int_equal(limits_total(f->limits), 2);
    /* Network counts restart under the new prefix; releases stay safe. */
    struct sockaddr_storage ss = addr("192.0.2.1");
    assert_int_equal(limits_network_sessions(f->limits, (struct sockaddr *)&ss), 1);
    release(f, "192.0.2.1");
    release(f, "192.0.2.1");
    assert_int_equal(limits_total(f->limits), 0);
    assert_int_equal(limits_network_sessions(f->limits, (struct sockaddr *)&ss), 0);
    assert_int_equal(limits_address_sessions(f->limits, (struct sockaddr *)&ss), 0);
    fixture_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(per_address_refuses_the_sixth_session_of_one_address),
        cmocka_unit_test(refusal_explains_itself_with_the_address),
        cmocka_unit_test(release_makes_room_for_a_new_session),
        cmocka_unit_test(max_sessions_caps_every_address_together),
        cmocka_unit_test(per_network_counts_a_v4_slash_24_together),
        cmocka_unit_test(per_network_counts_a_v6_slash_64_together),
        cmocka_unit_test(network_prefix_length_is_configurable),
        cmocka_unit_test(v4_mapped_v6_counts_as_the_v4_address),
        cmocka_unit_test(rate_refuses_the_fourth_connection_within_the_interval),
        cmocka_unit_test(rate_bucket_refills_over_time),
        cmocka_unit_test(allowlisted_client_is_always_admitted_and_not_counted),
        cmocka_unit_test(zero_disables_every_limit),
        cmocka_unit_test(idle_entries_are_forgotten),
        cmocka_unit_test(beyond_the_table_cap_clients_are_admitted_untracked),
        cmocka_unit_test(reconfigure_applies_new_limits_and_keeps_the_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
