/* The DNS cache on answers built here byte by byte: how long each kind of
 * answer may be kept (RFC 2308, RFC 2181), hostile shapes, expiry, the caps
 * of the configuration, and the memory budget. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <ares.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "dns_cache.h"

#define T_A_ 1
#define T_SOA_ 6
#define T_TXT_ 16
#define HOUR_MS (3600 * 1000)
#define NOW 1000000

struct msg {
    unsigned char b[8192];
    size_t len;
};

static void put8(struct msg *m, unsigned v)
{
    m->b[m->len++] = (unsigned char)v;
}

static void put16(struct msg *m, unsigned v)
{
    put8(m, v >> 8);
    put8(m, v & 0xff);
}

static void put32(struct msg *m, uint32_t v)
{
    put16(m, v >> 16);
    put16(m, v & 0xffff);
}

/* "a.test" written out: 1 a 4 test 0 */
static void put_name(struct msg *m)
{
    static const unsigned char name[] = {1, 'a', 4, 't', 'e', 's', 't', 0};
    memcpy(m->b + m->len, name, sizeof name);
    m->len += sizeof name;
}

/* A header and the question "a.test IN A". */
static void start(struct msg *m, unsigned flags, unsigned an, unsigned ns)
{
    m->len = 0;
    put16(m, 0x1234);
    put16(m, 0x8180 | flags);
    put16(m, 1);
    put16(m, an);
    put16(m, ns);
    put16(m, 0);
    put_name(m);
    put16(m, T_A_);
    put16(m, 1);
}

/* An A record whose owner is a pointer to the question's name. */
static void put_a(struct msg *m, uint32_t ttl)
{
    put16(m, 0xc00c);
    put16(m, T_A_);
    put16(m, 1);
    put32(m, ttl);
    put16(m, 4);
    put32(m, 0x7f000001);
}

static void put_soa(struct msg *m, uint32_t ttl, uint32_t minimum)
{
    put16(m, 0xc00c);
    put16(m, T_SOA_);
    put16(m, 1);
    put32(m, ttl);
    put16(m, 2 + 2 + 20);
    put16(m, 0xc00c); /* MNAME */
    put16(m, 0xc00c); /* RNAME */
    put32(m, 1);      /* SERIAL */
    put32(m, 3600);   /* REFRESH */
    put32(m, 600);    /* RETRY */
    put32(m, 86400);  /* EXPIRE */
    put32(m, minimum);
}

static uint32_t ttl_of(const struct msg *m, bool *negative)
{
    return dns_answer_ttl(m->b, m->len, negative);
}

static void test_a_positive_answer_is_kept_for_its_smallest_ttl(void **state)
{
    (void)state;
    struct msg m;
    bool negative;
    start(&m, 0, 3, 0);
    put_a(&m, 300);
    put_a(&m, 60);
    put_a(&m, 900);
    assert_int_equal(ttl_of(&m, &negative), 60);
    assert_false(negative);
}

static void test_a_negative_answer_is_kept_for_the_smaller_of_soa_ttl_and_minimum(void **state)
{
    (void)state;
    struct msg m;
    bool negative;
    start(&m, 3 /* NXDOMAIN */, 0, 1);
    put_soa(&m, 900, 120);
    assert_int_equal(ttl_of(&m, &negative), 120);
    assert_true(negative);
    start(&m, 0 /* no data */, 0, 1);
    put_soa(&m, 60, 600);
    assert_int_equal(ttl_of(&m, &negative), 60);
    assert_true(negative);
}

static void test_answers_that_must_not_be_kept_read_as_zero(void **state)
{
    (void)state;
    struct msg m;
    bool negative;
    start(&m, 3, 0, 0); /* NXDOMAIN without a SOA */
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 2 /* SERVFAIL */, 1, 0);
    put_a(&m, 300);
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 5 /* REFUSED */, 0, 1);
    put_soa(&m, 300, 300);
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 0x0200 /* TC */, 1, 0);
    put_a(&m, 300);
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 0, 2, 0);
    put_a(&m, 300);
    put_a(&m, 0);
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 0, 1, 0);
    put_a(&m, 0x80000001u); /* RFC 2181: the top bit makes it 0 */
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 3, 1, 1); /* NXDOMAIN that answers anyway */
    put_a(&m, 300);
    put_soa(&m, 300, 300);
    assert_int_equal(ttl_of(&m, &negative), 0);
}

static void test_hostile_shapes_read_as_zero_without_reading_outside(void **state)
{
    (void)state;
    struct msg m;
    bool negative;
    start(&m, 0, 1, 0);
    put_a(&m, 300);
    for (size_t cut = 0; cut < m.len; cut++) {
        /* A copy of exactly cut bytes: ASan sees a read past it. */
        unsigned char *copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, m.b, cut);
        assert_int_equal(dns_answer_ttl(copy, cut, &negative), 0);
        free(copy);
    }
    start(&m, 0, 2, 0); /* says two answers, holds one */
    put_a(&m, 300);
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 0, 1, 0);
    m.b[12] = 0x80; /* a reserved label type in the question */
    put_a(&m, 300);
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 0, 1, 0); /* an rdlength past the end */
    put_a(&m, 300);
    m.b[m.len - 6] = 0xff;
    assert_int_equal(ttl_of(&m, &negative), 0);
    start(&m, 3, 0, 1); /* a SOA too short for its numbers */
    put16(&m, 0xc00c);
    put16(&m, T_SOA_);
    put16(&m, 1);
    put32(&m, 300);
    put16(&m, 4);
    put32(&m, 0);
    assert_int_equal(ttl_of(&m, &negative), 0);
    /* Labels of 63 bytes up to the end, never a root. */
    m.len = 12;
    memcpy(m.b, "\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00", 12);
    while (m.len + 64 < sizeof m.b) {
        put8(&m, 63);
        memset(m.b + m.len, 'x', 63);
        m.len += 63;
    }
    assert_int_equal(ttl_of(&m, &negative), 0);
    assert_int_equal(dns_answer_ttl(NULL, 0, &negative), 0);
}

/* ---- the cache ---- */

static struct dns_conf conf_of(int64_t memory)
{
    return (struct dns_conf){.cache_memory = memory, .cache_max_ttl_ms = HOUR_MS,
                             .cache_negative_ttl_ms = 300 * 1000};
}

static bool get(struct dns_cache *c, const char *name, int type, int64_t now, struct msg *out,
                int *status)
{
    unsigned char *abuf;
    int alen;
    if (!dns_cache_get(c, name, type, now, status, &abuf, &alen))
        return false;
    assert_true(alen > 0 && (size_t)alen <= sizeof out->b);
    memcpy(out->b, abuf, (size_t)alen);
    out->len = (size_t)alen;
    free(abuf);
    return true;
}

static void test_a_kept_answer_comes_back_whole_until_it_expires(void **state)
{
    (void)state;
    struct dns_conf conf = conf_of(1 << 20);
    struct dns_cache *c = dns_cache_new(&conf);
    assert_non_null(c);
    struct msg m, got;
    int status = -1;
    start(&m, 0, 1, 0);
    put_a(&m, 30);
    dns_cache_put(c, "a.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_true(get(c, "A.Test.", T_A_, NOW, &got, &status));
    assert_int_equal(status, ARES_SUCCESS);
    assert_int_equal(got.len, m.len);
    assert_memory_equal(got.b, m.b, m.len);
    assert_true(get(c, "a.test", T_A_, NOW + 29999, &got, &status));
    assert_false(get(c, "a.test", T_TXT_, NOW, &got, &status));
    assert_false(get(c, "b.test", T_A_, NOW, &got, &status));
    assert_false(get(c, "a.test", T_A_, NOW + 30000, &got, &status));
    struct dns_cache_stats st;
    dns_cache_stats(c, &st);
    assert_int_equal(st.entries, 0); /* the expired one went at its miss */
    dns_cache_stats(c, &st);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 3);
    dns_cache_free(c);
}

/* What comes back says how long it has left, OPT's flags untouched. */
static void test_a_kept_answer_comes_back_with_the_time_it_has_left(void **state)
{
    (void)state;
    struct dns_conf conf = conf_of(1 << 20);
    struct dns_cache *c = dns_cache_new(&conf);
    struct msg m, got;
    int status;
    bool negative;
    start(&m, 0, 2, 0);
    m.b[11] = 1; /* ARCOUNT */
    put_a(&m, 100);
    put_a(&m, 40);
    put8(&m, 0); /* OPT: root owner, type 41, size, flags in the TTL field */
    put16(&m, 41);
    put16(&m, 1232);
    put32(&m, 0x00008000u);
    put16(&m, 0);
    assert_int_equal(ttl_of(&m, &negative), 40);
    dns_cache_put(c, "a.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_true(get(c, "a.test", T_A_, NOW + 30500, &got, &status));
    assert_int_equal(got.len, m.len);
    assert_int_equal(dns_answer_ttl(got.b, got.len, &negative), 10);
    assert_memory_equal(got.b, m.b, 12);
    assert_memory_equal(got.b + got.len - 6, "\x00\x00\x80\x00\x00\x00", 6);
    dns_cache_free(c);
}

static void test_the_configured_caps_shorten_what_the_answer_allows(void **state)
{
    (void)state;
    struct dns_conf conf = conf_of(1 << 20);
    conf.cache_max_ttl_ms = 10 * 1000;
    conf.cache_negative_ttl_ms = 5 * 1000;
    struct dns_cache *c = dns_cache_new(&conf);
    struct msg m, got;
    int status;
    start(&m, 0, 1, 0);
    put_a(&m, 86400);
    dns_cache_put(c, "a.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_true(get(c, "a.test", T_A_, NOW + 9999, &got, &status));
    assert_false(get(c, "a.test", T_A_, NOW + 10000, &got, &status));
    start(&m, 3, 0, 1);
    put_soa(&m, 3600, 3600);
    dns_cache_put(c, "a.test", T_A_, ARES_ENOTFOUND, m.b, (int)m.len, NOW);
    assert_true(get(c, "a.test", T_A_, NOW + 4999, &got, &status));
    assert_int_equal(status, ARES_ENOTFOUND);
    assert_false(get(c, "a.test", T_A_, NOW + 5000, &got, &status));
    dns_cache_free(c);
}

static void test_failures_and_oversized_answers_are_not_kept(void **state)
{
    (void)state;
    struct dns_conf conf = conf_of(1 << 20);
    struct dns_cache *c = dns_cache_new(&conf);
    struct msg m, got;
    int status;
    start(&m, 0, 1, 0);
    put_a(&m, 300);
    dns_cache_put(c, "a.test", T_A_, ARES_ESERVFAIL, m.b, (int)m.len, NOW);
    dns_cache_put(c, "a.test", T_A_, ARES_ETIMEOUT, m.b, (int)m.len, NOW);
    dns_cache_put(c, "a.test", T_A_, ARES_SUCCESS, NULL, 0, NOW);
    assert_false(get(c, "a.test", T_A_, NOW, &got, &status));
    start(&m, 0, 300, 0);
    for (int i = 0; i < 300; i++)
        put_a(&m, 300);
    assert_true(m.len > 4096);
    dns_cache_put(c, "a.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_false(get(c, "a.test", T_A_, NOW, &got, &status));
    dns_cache_free(c);
}

static void test_the_budget_forgets_the_least_recently_used_first(void **state)
{
    (void)state;
    struct msg m, got;
    int status;
    start(&m, 0, 1, 0);
    put_a(&m, 300);
    /* Room for three entries of this size, not four. */
    struct dns_conf probe_conf = conf_of(1 << 20);
    struct dns_cache *probe = dns_cache_new(&probe_conf);
    dns_cache_put(probe, "n0.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    struct dns_cache_stats st;
    dns_cache_stats(probe, &st);
    dns_cache_free(probe);
    struct dns_conf conf = conf_of((int64_t)(3 * st.bytes + st.bytes / 2));
    struct dns_cache *c = dns_cache_new(&conf);
    dns_cache_put(c, "n1.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    dns_cache_put(c, "n2.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    dns_cache_put(c, "n3.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_true(get(c, "n1.test", T_A_, NOW, &got, &status)); /* n2 is now the oldest */
    dns_cache_put(c, "n4.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_false(get(c, "n2.test", T_A_, NOW, &got, &status));
    assert_true(get(c, "n1.test", T_A_, NOW, &got, &status));
    assert_true(get(c, "n3.test", T_A_, NOW, &got, &status));
    assert_true(get(c, "n4.test", T_A_, NOW, &got, &status));
    dns_cache_stats(c, &st);
    assert_int_equal(st.entries, 3);
    assert_true(st.bytes <= (uint64_t)conf.cache_memory);
    /* The same question again replaces its answer, it does not add one. */
    dns_cache_put(c, "n4.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW + 1);
    dns_cache_stats(c, &st);
    assert_int_equal(st.entries, 3);
    dns_cache_free(c);
}

static void test_no_budget_keeps_nothing_and_a_reload_forgets_everything(void **state)
{
    (void)state;
    struct msg m, got;
    int status;
    start(&m, 0, 1, 0);
    put_a(&m, 300);
    struct dns_conf off = conf_of(0);
    struct dns_cache *c = dns_cache_new(&off);
    dns_cache_put(c, "a.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_false(get(c, "a.test", T_A_, NOW, &got, &status));
    struct dns_conf on = conf_of(1 << 20);
    dns_cache_reconfigure(c, &on);
    dns_cache_put(c, "a.test", T_A_, ARES_SUCCESS, m.b, (int)m.len, NOW);
    assert_true(get(c, "a.test", T_A_, NOW, &got, &status));
    dns_cache_reconfigure(c, &on);
    assert_false(get(c, "a.test", T_A_, NOW, &got, &status));
    dns_cache_free(c);
    assert_false(dns_cache_get(NULL, "a.test", T_A_, NOW, &status, NULL, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_positive_answer_is_kept_for_its_smallest_ttl),
        cmocka_unit_test(test_a_negative_answer_is_kept_for_the_smaller_of_soa_ttl_and_minimum),
        cmocka_unit_test(test_answers_that_must_not_be_kept_read_as_zero),
        cmocka_unit_test(test_hostile_shapes_read_as_zero_without_reading_outside),
        cmocka_unit_test(test_a_kept_answer_comes_back_whole_until_it_expires),
        cmocka_unit_test(test_a_kept_answer_comes_back_with_the_time_it_has_left),
        cmocka_unit_test(test_the_configured_caps_shorten_what_the_answer_allows),
        cmocka_unit_test(test_failures_and_oversized_answers_are_not_kept),
        cmocka_unit_test(test_the_budget_forgets_the_least_recently_used_first),
        cmocka_unit_test(test_no_budget_keeps_nothing_and_a_reload_forgets_everything),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
