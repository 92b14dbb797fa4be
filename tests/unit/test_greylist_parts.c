/* The greylist plugin's pure parts: client networks, sender normalisation
 * (case, SRS, BATV, VERP), allowlist patterns, records and decisions. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_addr.h"

#include "greylist_parts.h"

static const char *net_of(const char *ip, unsigned v4, unsigned v6)
{
    static char out[GREYLIST_NET_MAX];
    struct sockaddr_storage ss = addr_of(ip);
    assert_true(greylist_client_net((struct sockaddr *)&ss, v4, v6, out, sizeof out));
    return out;
}

static void client_network_is_ipv4_24_and_ipv6_64_by_default(void **state)
{
    assert_string_equal(net_of("192.0.2.77", 24, 64), "192.0.2.0/24");
    assert_string_equal(net_of("2001:db8:1:2:3:4:5:6", 24, 64), "2001:db8:1:2::/64");
    assert_string_equal(net_of("::ffff:198.51.100.7", 24, 64), "198.51.100.0/24");
}

static void full_prefix_keys_the_exact_address(void **state)
{
    assert_string_equal(net_of("192.0.2.77", 32, 128), "192.0.2.77");
    assert_string_equal(net_of("2001:db8::9", 32, 128), "2001:db8::9");
    assert_string_equal(net_of("192.0.2.77", 16, 64), "192.0.0.0/16");
}

static const char *norm(const char *in, bool strip)
{
    static char out[GREYLIST_ADDR_MAX];
    assert_true(greylist_address_normalize(in, strlen(in), strip, out, sizeof out));
    return out;
}

static void sender_case_is_folded(void **state)
{
    assert_string_equal(norm("Alice@Example.ORG", true), "alice@example.org");
    assert_string_equal(norm("", true), "");
}

static void srs_gives_back_the_original_sender(void **state)
{
    assert_string_equal(norm("SRS0=HHH=TT=orig.example=alice@fwd.example", true),
                         "alice@orig.example");
    assert_string_equal(norm("SRS1=HHH=fwd1.example==HHH=TT=orig.example=bob@fwd2.example", true),
                         "bob@orig.example");
}

static void batv_tag_is_stripped(void **state)
{
    assert_string_equal(norm("prvs=1234abcdef=alice@example.org", true), "alice@example.org");
    assert_string_equal(norm("msprvs1=17xyz=bob@example.org", true), "bob@example.org");
}

static void verp_parts_fold_into_one_sender(void **state)
{
    assert_string_equal(norm("list-bounces+carol=example.net@lists.example", true),
                         "list-bounces@lists.example");
    assert_string_equal(norm("bounce-12345-678@lists.example", true), "bounce-#-#@lists.example");
    assert_string_equal(norm("bounce-12345-678@lists.example", false),
                        "bounce-12345-678@lists.example");
}

static void control_bytes_and_nul_cannot_split_a_key(void **state)
{
    char out[GREYLIST_ADDR_MAX];
    static const char in[] = "a\0b c@x.example";
    assert_true(greylist_address_normalize(in, sizeof in - 1, false, out, sizeof out));
    assert_string_equal(out, "a?b?c@x.example");
}

static void patterns_match_addresses_domains_and_subdomains(void **state)
{
    assert_true(greylist_pattern_matches("alice@example.org", "alice@example.org"));
    assert_false(greylist_pattern_matches("alice@example.org", "bob@example.org"));
    assert_true(greylist_pattern_matches("example.org", "bob@example.org"));
    assert_true(greylist_pattern_matches("@example.org", "bob@example.org"));
    assert_false(greylist_pattern_matches("example.org", "bob@sub.example.org"));
    assert_true(greylist_pattern_matches("*.example.org", "bob@sub.example.org"));
    assert_false(greylist_pattern_matches("*.example.org", "bob@example.org"));
}

static void record_round_trips_and_garbage_is_refused(void **state)
{
    struct greylist_record r = {GREYLIST_ALLOWED, 1000, 2000}, back;
    char text[GREYLIST_RECORD_MAX];
    size_t n = greylist_record_format(&r, text, sizeof text);
    assert_string_equal(text, "A 1000 2000");
    assert_true(greylist_record_parse(text, n, &back));
    assert_int_equal(back.state, GREYLIST_ALLOWED);
    assert_int_equal(back.first_ms, 1000);
    assert_int_equal(back.stamp_ms, 2000);
    assert_false(greylist_record_parse("X 1 2", 5, &back));
    assert_false(greylist_record_parse("P 5 2", 5, &back));
    assert_false(greylist_record_parse("P 1 2 junk", 10, &back));
}

static const struct greylist_times T = {.min_delay_ms = 300000,
                                        .retry_window_ms = 4 * 3600000LL,
                                        .lifetime_ms = 36 * 86400000LL,
                                        .refresh_ms = 3600000};

static void first_sight_then_too_soon_then_pass(void **state)
{
    int64_t wait;
    assert_int_equal(greylist_decide(NULL, 1000, &T, &wait), GREYLIST_NEW);
    assert_int_equal(wait, 300000);
    struct greylist_record p = {GREYLIST_PENDING, 1000, 1000};
    assert_int_equal(greylist_decide(&p, 1000 + 60000, &T, &wait), GREYLIST_TOO_SOON);
    assert_int_equal(wait, 240000);
    assert_int_equal(greylist_decide(&p, 1000 + 300000, &T, &wait), GREYLIST_PASS);
}

static void retry_after_the_window_starts_over(void **state)
{
    int64_t wait;
    struct greylist_record p = {GREYLIST_PENDING, 0, 0};
    assert_int_equal(greylist_decide(&p, T.retry_window_ms + 1, &T, &wait), GREYLIST_NEW);
}

/* A pending record whose first sight lies ahead of the clock (written
 * while the clock, or another instance's on the same Redis, ran fast) is
 * first sight again: "too soon" would refuse the triplet, with a wait of
 * hours or days, until the record expires. */
static void pending_record_from_the_future_starts_over(void **state)
{
    int64_t wait;
    int64_t now = 1700000000000LL;
    struct greylist_record p = {GREYLIST_PENDING, now + 86400000LL, now + 86400000LL};
    assert_int_equal(greylist_decide(&p, now, &T, &wait), GREYLIST_NEW);
    assert_int_equal(wait, T.min_delay_ms);
}

static void known_triplet_is_refreshed_at_most_once_per_interval(void **state)
{
    int64_t wait;
    struct greylist_record a = {GREYLIST_ALLOWED, 0, 10000};
    assert_int_equal(greylist_decide(&a, 10000 + T.refresh_ms - 1, &T, &wait), GREYLIST_KNOWN);
    assert_int_equal(greylist_decide(&a, 10000 + T.refresh_ms, &T, &wait), GREYLIST_REFRESH);
}


/* ---- the refresh gate ---- */

static void gate_lets_one_rewrite_through_per_key_and_hold(void **state)
{
    (void)state;
    struct greylist_gate *g = malloc(sizeof *g);
    assert_non_null(g);
    greylist_gate_init(g);
    assert_true(greylist_gate_take(g, "k1", 2, 1000, 60000));
    assert_false(greylist_gate_take(g, "k1", 2, 1001, 60000));
    assert_false(greylist_gate_take(g, "k1", 2, 60999, 60000));
    assert_true(greylist_gate_take(g, "k2", 2, 1001, 60000)); /* another key */
    assert_true(greylist_gate_take(g, "k1", 2, 61000, 60000)); /* the hold is over */
    /* NUL bytes are part of a key. */
    assert_true(greylist_gate_take(g, "a\0b", 3, 1000, 60000));
    assert_true(greylist_gate_take(g, "a\0c", 3, 1000, 60000));
    greylist_gate_destroy(g);
    free(g);
}

static void gate_keys_on_one_slot_both_write_never_neither(void **state)
{
    (void)state;
    struct greylist_gate *g = malloc(sizeof *g);
    assert_non_null(g);
    greylist_gate_init(g);
    /* Two keys on the same slot, found by filling the table: a take that
     * says "held" for a key never taken before would be a lost rewrite. */
    char key[32];
    for (int i = 0; i < 4 * GREYLIST_GATE_SLOTS; i++) {
        int n = snprintf(key, sizeof key, "triplet-%d", i);
        assert_true(greylist_gate_take(g, key, (size_t)n, 5000, 60000));
    }
    greylist_gate_destroy(g);
    free(g);
}

struct gate_race {
    struct greylist_gate *g;
    int taken;
};

static void *gate_racer(void *arg)
{
    struct gate_race *r = arg;
    for (int i = 0; i < 1000; i++)
        r->taken += greylist_gate_take(r->g, "busy", 4, 7000, 60000);
    return NULL;
}

static void gate_lets_exactly_one_of_many_threads_through(void **state)
{
    (void)state;
    struct greylist_gate *g = malloc(sizeof *g);
    assert_non_null(g);
    greylist_gate_init(g);
    pthread_t t[4];
    struct gate_race r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (struct gate_race){g, 0};
        assert_int_equal(pthread_create(&t[i], NULL, gate_racer, &r[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += r[i].taken;
    }
    assert_int_equal(total, 1);
    greylist_gate_destroy(g);
    free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(client_network_is_ipv4_24_and_ipv6_64_by_default),
        cmocka_unit_test(full_prefix_keys_the_exact_address),
        cmocka_unit_test(sender_case_is_folded),
        cmocka_unit_test(srs_gives_back_the_original_sender),
        cmocka_unit_test(batv_tag_is_stripped),
        cmocka_unit_test(verp_parts_fold_into_one_sender),
        cmocka_unit_test(control_bytes_and_nul_cannot_split_a_key),
        cmocka_unit_test(patterns_match_addresses_domains_and_subdomains),
        cmocka_unit_test(record_round_trips_and_garbage_is_refused),
        cmocka_unit_test(first_sight_then_too_soon_then_pass),
        cmocka_unit_test(retry_after_the_window_starts_over),
        cmocka_unit_test(pending_record_from_the_future_starts_over),
        cmocka_unit_test(known_triplet_is_refreshed_at_most_once_per_interval),
        cmocka_unit_test(gate_lets_one_rewrite_through_per_key_and_hold),
        cmocka_unit_test(gate_keys_on_one_slot_both_write_never_neither),
        cmocka_unit_test(gate_lets_exactly_one_of_many_threads_through),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
