#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "netaddr.h"

/* A socket address for text, as accept() would hand it over. */
static struct sockaddr_storage sa_of(const char *ip, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
    }
    return ss;
}

static bool in_list(const struct netlist *list, const char *ip)
{
    struct sockaddr_storage ss = sa_of(ip, 25);
    return netlist_match(list, (struct sockaddr *)&ss);
}

static void test_ipv4_cidr_matches_only_its_network(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    assert_int_equal(netlist_add(&list, "192.0.2.0/24"), 0);
    assert_int_equal(netlist_add(&list, "10.1.2.3"), 0);
    assert_int_equal(netlist_count(list), 2);
    assert_true(in_list(list, "192.0.2.0"));
    assert_true(in_list(list, "192.0.2.255"));
    assert_false(in_list(list, "192.0.3.1"));
    assert_true(in_list(list, "10.1.2.3"));
    assert_false(in_list(list, "10.1.2.4"));
    netlist_free(list);
}

static void test_prefix_not_on_byte_boundary(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    assert_int_equal(netlist_add(&list, "172.16.0.0/12"), 0);
    assert_true(in_list(list, "172.31.255.255"));
    assert_false(in_list(list, "172.32.0.0"));
    assert_false(in_list(list, "172.15.255.255"));
    netlist_free(list);
}

static void test_host_bits_in_cidr_are_ignored(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    assert_int_equal(netlist_add(&list, "10.9.8.7/8"), 0);
    assert_true(in_list(list, "10.0.0.1"));
    netlist_free(list);
}

static void test_zero_prefix_matches_every_address_of_its_family(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    assert_int_equal(netlist_add(&list, "0.0.0.0/0"), 0);
    assert_true(in_list(list, "203.0.113.9"));
    assert_false(in_list(list, "2001:db8::1"));
    netlist_free(list);
}

static void test_ipv6_cidr_matches(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    assert_int_equal(netlist_add(&list, "2001:db8::/32"), 0);
    assert_int_equal(netlist_add(&list, "::1"), 0);
    assert_true(in_list(list, "2001:db8:ffff::1"));
    assert_false(in_list(list, "2001:db9::1"));
    assert_true(in_list(list, "::1"));
    assert_false(in_list(list, "::2"));
    assert_false(in_list(list, "127.0.0.1"));
    netlist_free(list);
}

static void test_v4_mapped_client_matches_ipv4_network(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    assert_int_equal(netlist_add(&list, "127.0.0.0/8"), 0);
    assert_true(in_list(list, "::ffff:127.0.0.1"));
    assert_false(in_list(list, "::ffff:128.0.0.1"));
    netlist_free(list);
}

static void test_v4_mapped_network_matches_plain_ipv4_client(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    assert_int_equal(netlist_add(&list, "::ffff:10.0.0.0/104"), 0);
    assert_true(in_list(list, "10.200.0.1"));
    assert_false(in_list(list, "11.0.0.1"));
    netlist_free(list);
}

static void test_malformed_networks_are_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "10.0.0.0/", "10.0.0.0/33", "2001:db8::/129", "/24", "10.0.0.0/8x", "10.0.0",
        "example.com", "10.0.0.0/-1", "10.0.0.0/0008", "1.2.3.4 ",
    };
    struct netlist *list = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(netlist_add(&list, bad[i]), -1);
    assert_int_equal(netlist_count(list), 0);
    netlist_free(list);
}

static void test_null_list_matches_nothing(void **state)
{
    (void)state;
    assert_false(in_list(NULL, "127.0.0.1"));
    assert_int_equal(netlist_count(NULL), 0);
    netlist_free(NULL);
}

static void test_many_networks_grow_the_list(void **state)
{
    (void)state;
    struct netlist *list = NULL;
    char cidr[32];
    for (int i = 0; i < 200; i++) {
        snprintf(cidr, sizeof cidr, "10.%d.0.0/16", i);
        assert_int_equal(netlist_add(&list, cidr), 0);
    }
    assert_int_equal(netlist_count(list), 200);
    assert_true(in_list(list, "10.199.3.4"));
    assert_false(in_list(list, "10.200.3.4"));
    netlist_free(list);
}

struct split_case {
    const char *in;
    const char *host;
    const char *port;
};

static void test_split_hostport_forms(void **state)
{
    (void)state;
    static const struct split_case cases[] = {
        {"mx.example.com", "mx.example.com", "25"},
        {"mx.example.com:2525", "mx.example.com", "2525"},
        {"192.0.2.1:587", "192.0.2.1", "587"},
        {"192.0.2.1", "192.0.2.1", "25"},
        {"[2001:db8::1]:2525", "2001:db8::1", "2525"},
        {"[2001:db8::1]", "2001:db8::1", "25"},
        {"2001:db8::1", "2001:db8::1", "25"},
        {"host:025", "host", "25"},
    };
    char host[64], port[8];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(netaddr_split_hostport(cases[i].in, host, sizeof host, port, sizeof port,
                                                "25"),
                         0);
        assert_string_equal(host, cases[i].host);
        assert_string_equal(port, cases[i].port);
    }
}

static void test_split_hostport_rejects_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",          "host:",      "host:0",       "host:65536", "host:12x",  ":25",
        "[::1",      "[::1]x",     "[::1]:",       "::1]:25",    "[]:25",     "[[::1]]:25",
        "host:-1",   "host:+25",
    };
    char host[64], port[8];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(netaddr_split_hostport(bad[i], host, sizeof host, port, sizeof port, "25"),
                         -1);
}

static void test_split_hostport_refuses_a_host_too_long_for_the_buffer(void **state)
{
    (void)state;
    char host[8], port[8];
    assert_int_equal(netaddr_split_hostport("a-long-host:25", host, sizeof host, port, sizeof port,
                                            "25"),
                     -1);
    assert_int_equal(netaddr_split_hostport("1234567", host, sizeof host, port, sizeof port, "25"),
                     0);
}

static void test_parse_port_is_canonical_and_bounded(void **state)
{
    (void)state;
    char port[8];
    assert_int_equal(netaddr_parse_port("65535", port, sizeof port), 0);
    assert_string_equal(port, "65535");
    assert_int_equal(netaddr_parse_port("0025", port, sizeof port), 0);
    assert_string_equal(port, "25");
    assert_int_equal(netaddr_parse_port("0", port, sizeof port), -1);
    assert_int_equal(netaddr_parse_port("65536", port, sizeof port), -1);
    assert_int_equal(netaddr_parse_port("", port, sizeof port), -1);
    assert_int_equal(netaddr_parse_port(" 25", port, sizeof port), -1);
}

static void test_ntop_shows_mapped_address_as_ipv4_and_port(void **state)
{
    (void)state;
    char buf[64];
    struct sockaddr_storage a = sa_of("::ffff:192.0.2.7", 4321);
    assert_string_equal(netaddr_ntop((struct sockaddr *)&a, buf, sizeof buf), "192.0.2.7");
    assert_int_equal(netaddr_port((struct sockaddr *)&a), 4321);
    struct sockaddr_storage b = sa_of("2001:db8::5", 25);
    assert_string_equal(netaddr_ntop((struct sockaddr *)&b, buf, sizeof buf), "2001:db8::5");
    struct sockaddr_storage c = sa_of("198.51.100.1", 2525);
    assert_string_equal(netaddr_ntop((struct sockaddr *)&c, buf, sizeof buf), "198.51.100.1");
    assert_int_equal(netaddr_port((struct sockaddr *)&c), 2525);
}

/* IPv4 is written by hand: every digit count of every octet, as inet_ntop
 * writes it, and a buffer too small for the text gets "?" as before. */
static void test_ipv4_text_matches_inet_ntop(void **state)
{
    (void)state;
    static const char *const addrs[] = {"0.0.0.0", "255.255.255.255", "10.0.100.9",
                                        "1.22.103.4", "127.0.0.1", "99.100.199.200"};
    char buf[64], want[INET_ADDRSTRLEN];
    for (size_t i = 0; i < sizeof addrs / sizeof addrs[0]; i++) {
        struct sockaddr_storage a = sa_of(addrs[i], 25);
        assert_non_null(inet_ntop(AF_INET, &((struct sockaddr_in *)&a)->sin_addr, want,
                                  sizeof want));
        assert_string_equal(netaddr_ntop((struct sockaddr *)&a, buf, sizeof buf), want);
        assert_string_equal(want, addrs[i]);
    }
    struct sockaddr_storage a = sa_of("255.255.255.255", 25);
    assert_string_equal(netaddr_ntop((struct sockaddr *)&a, buf, 16), "255.255.255.255");
    assert_string_equal(netaddr_ntop((struct sockaddr *)&a, buf, 15), "?");
}

static void test_ntop_of_unknown_family_does_not_fail(void **state)
{
    (void)state;
    char buf[64];
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_family = AF_UNIX;
    assert_string_equal(netaddr_ntop((struct sockaddr *)&ss, buf, sizeof buf), "unix");
    assert_int_equal(netaddr_port((struct sockaddr *)&ss), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_text_matches_inet_ntop),
        cmocka_unit_test(test_ipv4_cidr_matches_only_its_network),
        cmocka_unit_test(test_prefix_not_on_byte_boundary),
        cmocka_unit_test(test_host_bits_in_cidr_are_ignored),
        cmocka_unit_test(test_zero_prefix_matches_every_address_of_its_family),
        cmocka_unit_test(test_ipv6_cidr_matches),
        cmocka_unit_test(test_v4_mapped_client_matches_ipv4_network),
        cmocka_unit_test(test_v4_mapped_network_matches_plain_ipv4_client),
        cmocka_unit_test(test_malformed_networks_are_refused),
        cmocka_unit_test(test_null_list_matches_nothing),
        cmocka_unit_test(test_many_networks_grow_the_list),
        cmocka_unit_test(test_split_hostport_forms),
        cmocka_unit_test(test_split_hostport_rejects_malformed),
        cmocka_unit_test(test_split_hostport_refuses_a_host_too_long_for_the_buffer),
        cmocka_unit_test(test_parse_port_is_canonical_and_bounded),
        cmocka_unit_test(test_ntop_shows_mapped_address_as_ipv4_and_port),
        cmocka_unit_test(test_ntop_of_unknown_family_does_not_fail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
