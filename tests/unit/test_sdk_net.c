/* The SDK's network lists (allowlists of the dnsbl and greylist plugins):
 * the host's semantics, seen through the public API. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "test_addr.h"

#include <sluice/net.h>

static bool matches(const sluice_netlist *l, const char *text)
{
    struct sockaddr_storage ss = addr_of(text);
    return sluice_netlist_match(l, (const struct sockaddr *)&ss);
}

static void networks_contain_their_addresses_only(void **state)
{
    sluice_netlist *l = NULL;
    assert_int_equal(sluice_netlist_add(&l, "192.0.2.0/24"), 0);
    assert_true(matches(l, "192.0.2.200"));
    assert_false(matches(l, "192.0.3.1"));
    assert_true(matches(l, "::ffff:192.0.2.9"));
    assert_false(matches(l, "2001:db8::1"));
    assert_int_equal(sluice_netlist_add(&l, "2001:db8::/33"), 0);
    assert_true(matches(l, "2001:db8::1"));
    assert_false(matches(l, "2001:db8:8000::1"));
    assert_int_equal(sluice_netlist_add(&l, "198.51.100.7"), 0);
    assert_true(matches(l, "198.51.100.7"));
    assert_false(matches(l, "198.51.100.8"));
    assert_int_equal(sluice_netlist_count(l), 3);
    sluice_netlist_free(l);
}

static void host_bits_after_the_prefix_are_ignored(void **state)
{
    sluice_netlist *l = NULL;
    assert_int_equal(sluice_netlist_add(&l, "10.1.2.3/16"), 0);
    assert_true(matches(l, "10.1.200.1"));
    assert_false(matches(l, "10.2.0.1"));
    sluice_netlist_free(l);
}

static void malformed_networks_are_refused_and_leave_the_list_alone(void **state)
{
    sluice_netlist *l = NULL;
    const char *bad[] = {"192.0.2.0/33", "2001:db8::/129", "example.org", "", "10.0.0.0/",
                         "10.0.0.0/-1", "1.2.3.4/8x", "::ffff:/200"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(sluice_netlist_add(&l, bad[i]), -1);
    assert_int_equal(sluice_netlist_add(&l, NULL), -1);
    assert_int_equal(sluice_netlist_count(l), 0);
    assert_false(matches(l, "192.0.2.1"));
    sluice_netlist_free(l);
}

static void an_empty_list_matches_nothing(void **state)
{
    assert_false(matches(NULL, "127.0.0.1"));
    assert_false(sluice_netlist_match(NULL, NULL));
    assert_int_equal(sluice_netlist_count(NULL), 0);
    sluice_netlist_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(networks_contain_their_addresses_only),
        cmocka_unit_test(host_bits_after_the_prefix_are_ignored),
        cmocka_unit_test(malformed_networks_are_refused_and_leave_the_list_alone),
        cmocka_unit_test(an_empty_list_matches_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
