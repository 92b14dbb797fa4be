/* The dnsbl plugin's pure parts: query names, answer classes, code weights,
 * networks, domain names, reply text, and the per-thread cache. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "test_addr.h"

#include "dnsbl_cache.h"
#include "dnsbl_parts.h"

static uint32_t ip(const char *text)
{
    uint32_t a = 0;
    assert_true(dnsbl_answer_parse(text, &a));
    return a;
}

static void ipv4_reverses_octets(void **state)
{
    struct sockaddr_storage ss = addr_of("192.0.2.1");
    char out[DNSBL_NAME_MAX];
    assert_int_equal(dnsbl_reverse_addr((struct sockaddr *)&ss, out, sizeof out), 4);
    assert_string_equal(out, "1.2.0.192");
}

static void ipv6_reverses_32_nibbles(void **state)
{
    struct sockaddr_storage ss = addr_of("2001:db8::1");
    char out[DNSBL_NAME_MAX];
    assert_int_equal(dnsbl_reverse_addr((struct sockaddr *)&ss, out, sizeof out), 6);
    assert_string_equal(out, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2");
}

static void ipv4_mapped_ipv6_reverses_as_ipv4(void **state)
{
    struct sockaddr_storage ss = addr_of("::ffff:198.51.100.7");
    char out[DNSBL_NAME_MAX];
    assert_int_equal(dnsbl_reverse_addr((struct sockaddr *)&ss, out, sizeof out), 4);
    assert_string_equal(out, "7.100.51.198");
}

static void reverse_refuses_a_short_buffer(void **state)
{
    struct sockaddr_storage ss = addr_of("2001:db8::1");
    char out[40];
    assert_int_equal(dnsbl_reverse_addr((struct sockaddr *)&ss, out, sizeof out), -1);
}

static void answers_outside_127_8_or_error_codes_are_bad(void **state)
{
    assert_int_equal(dnsbl_answer_classify(ip("127.0.0.2")), DNSBL_ANSWER_LISTED);
    assert_int_equal(dnsbl_answer_classify(ip("127.0.1.5")), DNSBL_ANSWER_LISTED);
    assert_int_equal(dnsbl_answer_classify(ip("127.255.255.254")), DNSBL_ANSWER_BAD);
    assert_int_equal(dnsbl_answer_classify(ip("127.255.255.252")), DNSBL_ANSWER_BAD);
    assert_int_equal(dnsbl_answer_classify(ip("10.0.0.2")), DNSBL_ANSWER_BAD);
    uint32_t a;
    assert_false(dnsbl_answer_parse("::1", &a));
}

static void codes_match_exact_and_networks(void **state)
{
    struct dnsbl_code c;
    assert_true(dnsbl_code_parse("127.0.0.4", &c));
    assert_true(dnsbl_code_matches(&c, ip("127.0.0.4")));
    assert_false(dnsbl_code_matches(&c, ip("127.0.0.5")));
    assert_true(dnsbl_code_parse("127.0.0.4/30", &c));
    assert_true(dnsbl_code_matches(&c, ip("127.0.0.7")));
    assert_false(dnsbl_code_matches(&c, ip("127.0.0.8")));
    assert_false(dnsbl_code_parse("127.0.0.4/33", &c));
    assert_false(dnsbl_code_parse("listed", &c));
}

static void listing_weight_without_codes_is_the_zone_weight(void **state)
{
    uint32_t answers[] = {ip("127.0.0.2"), ip("127.0.0.3")};
    bool matched;
    assert_true(dnsbl_listing_weight(0.7, NULL, 0, answers, 2, &matched) == 0.7);
    assert_true(matched);
    assert_true(dnsbl_listing_weight(0.7, NULL, 0, answers, 0, &matched) == 0);
    assert_false(matched);
}

static void listing_weight_sums_each_matching_code_once(void **state)
{
    struct dnsbl_code codes[3];
    assert_true(dnsbl_code_parse("127.0.0.2", &codes[0]));
    assert_true(dnsbl_code_parse("127.0.0.4/30", &codes[1]));
    assert_true(dnsbl_code_parse("127.0.0.10", &codes[2]));
    codes[0].weight = 1.0;
    codes[1].weight = 0.25;
    codes[2].weight = 5.0;
    uint32_t answers[] = {ip("127.0.0.2"), ip("127.0.0.4"), ip("127.0.0.5")};
    bool matched;
    assert_true(dnsbl_listing_weight(9.0, codes, 3, answers, 3, &matched) == 1.25);
    assert_true(matched);
    uint32_t other[] = {ip("127.0.0.3")};
    assert_true(dnsbl_listing_weight(9.0, codes, 3, other, 1, &matched) == 0);
    assert_false(matched);
}

static void domain_names_are_normalized_or_refused(void **state)
{
    char out[DNSBL_NAME_MAX];
    assert_true(dnsbl_domain_normalize("Mail.Example.ORG.", 17, out, sizeof out));
    assert_string_equal(out, "mail.example.org");
    assert_false(dnsbl_domain_normalize("[192.0.2.1]", 11, out, sizeof out));
    assert_false(dnsbl_domain_normalize("localhost", 9, out, sizeof out));
    assert_false(dnsbl_domain_normalize("a..example", 10, out, sizeof out));
    assert_false(dnsbl_domain_normalize("a b.example", 11, out, sizeof out));
    assert_false(dnsbl_domain_normalize("a\0b.example", 11, out, sizeof out));
}

/* A dotted quad is an address, not a name: an RHSBL (Spamhaus DBL) answers
 * it with an error code inside 127/8 (127.0.1.255, "IP queries
 * prohibited"), which would count as a listing. No TLD is all digits. */
static void address_shaped_names_are_not_looked_up(void **state)
{
    char out[DNSBL_NAME_MAX];
    assert_false(dnsbl_domain_normalize("192.0.2.1", 9, out, sizeof out));
    assert_false(dnsbl_domain_normalize("192.0.2.1.", 10, out, sizeof out));
    assert_false(dnsbl_domain_normalize("mail.123", 8, out, sizeof out));
    assert_false(dnsbl_sender_domain("u@198.51.100.7", 14, out, sizeof out));
    assert_true(dnsbl_domain_normalize("123.example", 11, out, sizeof out));
    assert_true(dnsbl_domain_normalize("mail.xn--p1ai", 13, out, sizeof out));
}

static void sender_domain_is_after_the_last_at(void **state)
{
    char out[DNSBL_NAME_MAX];
    assert_true(dnsbl_sender_domain("\"a@b\"@Spammer.Example", 21, out, sizeof out));
    assert_string_equal(out, "spammer.example");
    assert_false(dnsbl_sender_domain("", 0, out, sizeof out));
    assert_false(dnsbl_sender_domain("postmaster", 10, out, sizeof out));
}

static void query_names_that_do_not_fit_are_refused(void **state)
{
    char out[DNSBL_NAME_MAX], zone[240];
    assert_true(dnsbl_query_name("2.0.0.127", "zen.example.org", out, sizeof out));
    assert_string_equal(out, "2.0.0.127.zen.example.org");
    memset(zone, 'a', sizeof zone - 1);
    zone[sizeof zone - 1] = '\0';
    assert_false(dnsbl_query_name("1.2.3.4.5.6.7.8.9.10.11.12.13.14", zone, out, sizeof out));
}

static void reply_text_reads_like_postscreen(void **state)
{
    char out[256];
    dnsbl_reply_text(out, sizeof out, "client", "192.0.2.1", "zen.example.org", "Listed: see x");
    assert_string_equal(out, "Service unavailable; client [192.0.2.1] blocked using "
                             "zen.example.org; Listed: see x");
    dnsbl_reply_text(out, sizeof out, "sender domain", "bad.example", "dbl.example.org", "");
    assert_string_equal(out, "Service unavailable; sender domain bad.example blocked using "
                             "dbl.example.org");
    char small[16];
    assert_int_equal(dnsbl_reply_text(small, sizeof small, "client", "1.2.3.4", "z", NULL), 15);
}

static void cache_keeps_answers_until_they_expire(void **state)
{
    struct dnsbl_cache *c = dnsbl_cache_new(8);
    assert_non_null(c);
    struct dnsbl_answer a = {.listed = true, .ncodes = 1, .codes = {ip("127.0.0.2")}};
    strcpy(a.reason, "why");
    dnsbl_cache_put(c, "9.0.0.127.one.test", 1000, &a);
    struct dnsbl_answer got;
    assert_true(dnsbl_cache_get(c, "9.0.0.127.one.test", 999, &got));
    assert_true(got.listed);
    assert_string_equal(got.reason, "why");
    assert_false(dnsbl_cache_get(c, "9.0.0.127.one.test", 1000, &got));
    assert_false(dnsbl_cache_get(c, "8.0.0.127.one.test", 0, &got));
    dnsbl_cache_free(c);
}

static void cache_stays_bounded_under_many_names(void **state)
{
    struct dnsbl_cache *c = dnsbl_cache_new(4);
    struct dnsbl_answer a = {.listed = false};
    char name[64];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "%d.0.0.127.one.test", i);
        dnsbl_cache_put(c, name, 10000 + i, &a);
    }
    int held = 0;
    struct dnsbl_answer got;
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "%d.0.0.127.one.test", i);
        held += dnsbl_cache_get(c, name, 0, &got);
    }
    assert_in_range(held, 1, 4);
    dnsbl_cache_free(c);
    struct dnsbl_cache *none = dnsbl_cache_new(0);
    dnsbl_cache_put(none, "x.one.test", 10, &a);
    assert_false(dnsbl_cache_get(none, "x.one.test", 0, &got));
    dnsbl_cache_free(none);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ipv4_reverses_octets),
        cmocka_unit_test(ipv6_reverses_32_nibbles),
        cmocka_unit_test(ipv4_mapped_ipv6_reverses_as_ipv4),
        cmocka_unit_test(reverse_refuses_a_short_buffer),
        cmocka_unit_test(answers_outside_127_8_or_error_codes_are_bad),
        cmocka_unit_test(codes_match_exact_and_networks),
        cmocka_unit_test(listing_weight_without_codes_is_the_zone_weight),
        cmocka_unit_test(listing_weight_sums_each_matching_code_once),
        cmocka_unit_test(domain_names_are_normalized_or_refused),
        cmocka_unit_test(address_shaped_names_are_not_looked_up),
        cmocka_unit_test(sender_domain_is_after_the_last_at),
        cmocka_unit_test(query_names_that_do_not_fit_are_refused),
        cmocka_unit_test(reply_text_reads_like_postscreen),
        cmocka_unit_test(cache_keeps_answers_until_they_expire),
        cmocka_unit_test(cache_stays_bounded_under_many_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
