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

/* Sessions admitted and not yet released, with what their admission
 * counted: a release gives back the ticket of the address's oldest one. */
#define FIXTURE_HELD 256

struct held {
    char ip[64];
    struct limits_ticket ticket;
};

struct fixture {
    struct connection_conf conf;
    struct limits *limits;
    struct held held[FIXTURE_HELD];
    size_t nheld;
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
    struct limits_ticket t;
    enum limits_verdict v = limits_admit_at(f->limits, (struct sockaddr *)&ss, why, sizeof why,
                                            now, &t);
    if (v == LIMITS_OK && f->nheld < FIXTURE_HELD) {
        snprintf(f->held[f->nheld].ip, sizeof f->held[f->nheld].ip, "%s", ip);
        f->held[f->nheld++].ticket = t;
    }
    return v;
}

static enum limits_verdict admit(struct fixture *f, const char *ip)
{
    return admit_at(f, ip, T0);
}

static void release_at(struct fixture *f, const char *ip, uint64_t now)
{
    struct sockaddr_storage ss = addr(ip);
    struct limits_ticket t = {0};
    for (size_t i = 0; i < f->nheld; i++) {
        if (strcmp(f->held[i].ip, ip) == 0) {
            t = f->held[i].ticket;
            memmove(&f->held[i], &f->held[i + 1], (f->nheld - i - 1) * sizeof f->held[0]);
            f->nheld--;
            break;
        }
    }
    limits_release_at(f->limits, (struct sockaddr *)&ss, &t, now);
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
    assert_int_equal(limits_admit_at(f->limits, (struct sockaddr *)&ss, why, sizeof why, T0, NULL),
                     LIMITS_OK);
    assert_string_equal(why, "");
    assert_int_equal(limits_admit_at(f->limits, (struct sockaddr *)&ss, why, sizeof why, T0, NULL),
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

/* Addresses seen once and gone keep their entry only until their bucket is
 * full again: a table filled by a flood of one-off sources (an IPv6 /64
 * walked address by address) is swept as soon as it is full, not after a
 * whole rate interval, so the next clients are still limited. */
static void a_table_full_of_idle_entries_is_swept_before_admitting_untracked(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 1;
    f->conf.rate = 60;
    f->conf.rate_interval_ms = 60000;
    fixture_start(f);
    char ip[64];
    for (unsigned i = 0; i < LIMITS_MAX_TRACKED; i++) {
        snprintf(ip, sizeof ip, "2001:db8::%x:%x", i >> 16, i & 0xffff);
        assert_int_equal(admit_at(f, ip, T0), LIMITS_OK);
        release_at(f, ip, T0);
    }
    assert_int_equal(limits_tracked_addresses(f->limits), LIMITS_MAX_TRACKED);
    /* Two seconds on, every bucket is full again: nothing is worth keeping. */
    assert_int_equal(admit_at(f, "192.0.2.1", T0 + 2000), LIMITS_OK);
    assert_int_equal(admit_at(f, "192.0.2.1", T0 + 2000), LIMITS_OVER_ADDRESS);
    assert_true(limits_tracked_addresses(f->limits) < 10);
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

/* A reload that puts a counted client on the allowlist: its sessions were
 * counted in, and are counted out when they end. */
static void reload_allowlisting_a_counted_client_still_counts_its_sessions_out(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.max_sessions = 2;
    f->conf.per_address = 2;
    fixture_start(f);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    struct connection_conf allow = f->conf;
    allow.allowlist = NULL;
    assert_int_equal(netlist_add(&allow.allowlist, "192.0.2.0/24"), 0);
    limits_reconfigure(f->limits, &allow);
    release(f, "192.0.2.1");
    release(f, "192.0.2.1");
    assert_int_equal(limits_total(f->limits), 0);
    /* Off the allowlist again: nothing of those sessions is left. */
    limits_reconfigure(f->limits, &f->conf);
    struct sockaddr_storage ss = addr("192.0.2.1");
    assert_int_equal(limits_address_sessions(f->limits, (struct sockaddr *)&ss), 0);
    assert_int_equal(admit(f, "198.51.100.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    netlist_free(allow.allowlist);
    fixture_free(f);
}

/* The other way: sessions admitted on the allowlist were never counted, and
 * their end must not count out the sessions of others. */
static void reload_removing_an_allowlisted_client_counts_nothing_out_for_it(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.max_sessions = 1;
    f->conf.per_address = 1;
    assert_int_equal(netlist_add(&f->conf.allowlist, "192.0.2.0/24"), 0);
    fixture_start(f);
    for (int i = 0; i < 3; i++)
        assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    struct connection_conf strict = f->conf;
    strict.allowlist = NULL;
    limits_reconfigure(f->limits, &strict);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK); /* counted now */
    for (int i = 0; i < 3; i++)
        release(f, "192.0.2.1"); /* the three allowlisted ones */
    assert_int_equal(limits_total(f->limits), 1);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OVER_TOTAL);
    strict.max_sessions = 0;
    limits_reconfigure(f->limits, &strict);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OVER_ADDRESS);
    limits_reconfigure(f->limits, &f->conf);
    fixture_free(f);
}

/* per_address switched off and on again by reloads: the sessions counted
 * before are counted out when they end, and leave no phantom count. */
static void reload_switching_a_limit_off_and_on_leaves_no_phantom_sessions(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_address = 2;
    f->conf.per_network = 2;
    fixture_start(f);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    struct connection_conf off = f->conf;
    off.per_address = 0;
    off.per_network = 0;
    limits_reconfigure(f->limits, &off);
    release(f, "192.0.2.1");
    release(f, "192.0.2.1");
    limits_reconfigure(f->limits, &f->conf);
    struct sockaddr_storage ss = addr("192.0.2.1");
    assert_int_equal(limits_address_sessions(f->limits, (struct sockaddr *)&ss), 0);
    assert_int_equal(limits_network_sessions(f->limits, (struct sockaddr *)&ss), 0);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    assert_int_equal(admit(f, "192.0.2.1"), LIMITS_OK);
    fixture_free(f);
}

/* A new network prefix restarts the network counts: a session counted under
 * the old prefix must not count out one of the new. */
static void reload_with_a_new_prefix_does_not_count_out_new_network_sessions(void **state)
{
    struct fixture *f = fixture_new();
    f->conf.per_network = 1;
    fixture_start(f);
    assert_int_equal(admit(f, "10.0.0.1"), LIMITS_OK);
    struct connection_conf wider = f->conf;
    wider.network_v4 = 16;
    limits_reconfigure(f->limits, &wider);
    assert_int_equal(admit(f, "10.0.1.1"), LIMITS_OK);
    release(f, "10.0.0.1"); /* counted in the old /24 */
    assert_int_equal(admit(f, "10.0.2.1"), LIMITS_OVER_NETWORK);
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
        cmocka_unit_test(a_table_full_of_idle_entries_is_swept_before_admitting_untracked),
        cmocka_unit_test(zero_disables_every_limit),
        cmocka_unit_test(idle_entries_are_forgotten),
        cmocka_unit_test(beyond_the_table_cap_clients_are_admitted_untracked),
        cmocka_unit_test(reconfigure_applies_new_limits_and_keeps_the_counts),
        cmocka_unit_test(reload_allowlisting_a_counted_client_still_counts_its_sessions_out),
        cmocka_unit_test(reload_removing_an_allowlisted_client_counts_nothing_out_for_it),
        cmocka_unit_test(reload_switching_a_limit_off_and_on_leaves_no_phantom_sessions),
        cmocka_unit_test(reload_with_a_new_prefix_does_not_count_out_new_network_sessions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
