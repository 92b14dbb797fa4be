/* host/dns_addr_memo.c: the backend names' addresses, fresh for their TTL
 * and served stale while the resolver fails, with the time given by the
 * test (no clock, no resolver). */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "dns_addr_memo.h"

#define T0 1000000

static struct sockaddr_storage v4(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, text, &sin->sin_addr), 1);
    return ss;
}

static const char *text_of(const struct sockaddr_storage *ss, char *buf)
{
    return inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, INET_ADDRSTRLEN);
}

struct memo_fixture {
    struct dns_addr_memo *m;
    struct sockaddr_storage out[DNS_ADDR_MEMO_ADDRS];
    size_t n;
};

static int setup(void **state)
{
    static struct memo_fixture f;
    memset(&f, 0, sizeof f);
    f.m = dns_addr_memo_new();
    assert_non_null(f.m);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct memo_fixture *f = *state;
    dns_addr_memo_free(f->m);
    return 0;
}

static enum dns_addr_use find(struct memo_fixture *f, const char *name, int64_t now)
{
    f->n = 0;
    return dns_addr_memo_find(f->m, name, now, f->out, DNS_ADDR_MEMO_ADDRS, &f->n);
}

static void keep_one(struct memo_fixture *f, const char *name, const char *addr, int64_t fresh_ms,
                     int64_t now)
{
    struct sockaddr_storage a = v4(addr);
    dns_addr_memo_keep(f->m, name, &a, 1, fresh_ms, now);
}

static void an_unknown_name_is_asked(void **state)
{
    struct memo_fixture *f = *state;
    assert_int_equal(find(f, "mx.example", T0), DNS_ADDR_ASK);
    assert_int_equal(f->n, 0);
}

static void an_answer_is_used_for_its_ttl_then_asked_again(void **state)
{
    struct memo_fixture *f = *state;
    char buf[INET_ADDRSTRLEN];
    keep_one(f, "mx.example", "192.0.2.1", 300000, T0);
    assert_int_equal(find(f, "MX.Example", T0 + 299999), DNS_ADDR_FRESH); /* RFC 4343 */
    assert_int_equal(f->n, 1);
    assert_string_equal(text_of(&f->out[0], buf), "192.0.2.1");
    assert_int_equal(find(f, "mx.example", T0 + 300000), DNS_ADDR_ASK);
}

/* TTL 0 (and /etc/hosts names): asked every time, still there for a failure. */
static void a_ttl_of_zero_is_asked_every_time_but_kept_for_failures(void **state)
{
    struct memo_fixture *f = *state;
    keep_one(f, "mx.example", "192.0.2.1", 0, T0);
    assert_int_equal(find(f, "mx.example", T0), DNS_ADDR_ASK);
    int64_t age = -1;
    assert_true(dns_addr_memo_failed(f->m, "mx.example", T0 + 5000, f->out,
                                     DNS_ADDR_MEMO_ADDRS, &f->n, &age));
    assert_int_equal(f->n, 1);
    assert_int_equal(age, 5000);
}

/* After a failure the stale answer is given without asking for the
 * recheck period; then the resolver is tried again. */
static void after_a_failure_the_stale_answer_is_used_without_asking_until_the_recheck(
    void **state)
{
    struct memo_fixture *f = *state;
    keep_one(f, "mx.example", "192.0.2.1", 1000, T0);
    int64_t age = 0;
    int64_t failed_at = T0 + 2000;
    assert_true(dns_addr_memo_failed(f->m, "mx.example", failed_at, f->out,
                                     DNS_ADDR_MEMO_ADDRS, &f->n, &age));
    assert_int_equal(find(f, "mx.example", failed_at + DNS_ADDR_RECHECK_MS - 1), DNS_ADDR_STALE);
    assert_int_equal(f->n, 1);
    assert_int_equal(find(f, "mx.example", failed_at + DNS_ADDR_RECHECK_MS), DNS_ADDR_ASK);
}

/* When the recheck is due one connection asks the resolver again; those
 * opened while that question is out keep getting the stale answer rather
 * than each asking and waiting for the resolver's timeout too. */
static void at_the_recheck_one_asks_and_the_others_still_get_the_stale_answer(void **state)
{
    struct memo_fixture *f = *state;
    keep_one(f, "mx.example", "192.0.2.1", 1000, T0);
    int64_t age = 0;
    int64_t failed_at = T0 + 2000;
    assert_true(dns_addr_memo_failed(f->m, "mx.example", failed_at, f->out,
                                     DNS_ADDR_MEMO_ADDRS, &f->n, &age));
    int64_t due = failed_at + DNS_ADDR_RECHECK_MS;
    assert_int_equal(find(f, "mx.example", due), DNS_ADDR_ASK);
    assert_int_equal(find(f, "mx.example", due + 1), DNS_ADDR_STALE);
    assert_int_equal(f->n, 1);
    assert_int_equal(find(f, "mx.example", due + 5000), DNS_ADDR_STALE);
    /* that question failed as well: the next recheck is 30 s later */
    assert_true(dns_addr_memo_failed(f->m, "mx.example", due + 10000, f->out,
                                     DNS_ADDR_MEMO_ADDRS, &f->n, &age));
    assert_int_equal(find(f, "mx.example", due + 10000 + DNS_ADDR_RECHECK_MS - 1),
                     DNS_ADDR_STALE);
    assert_int_equal(find(f, "mx.example", due + 10000 + DNS_ADDR_RECHECK_MS), DNS_ADDR_ASK);
}

/* A fresh answer ends the stale period at once. */
static void a_new_answer_replaces_the_stale_one(void **state)
{
    struct memo_fixture *f = *state;
    char buf[INET_ADDRSTRLEN];
    keep_one(f, "mx.example", "192.0.2.1", 1000, T0);
    int64_t age;
    assert_true(dns_addr_memo_failed(f->m, "mx.example", T0 + 2000, f->out,
                                     DNS_ADDR_MEMO_ADDRS, &f->n, &age));
    keep_one(f, "mx.example", "192.0.2.2", 0, T0 + 3000);
    assert_int_equal(find(f, "mx.example", T0 + 3001), DNS_ADDR_ASK); /* TTL 0, no recheck */
    assert_true(dns_addr_memo_failed(f->m, "mx.example", T0 + 4000, f->out,
                                     DNS_ADDR_MEMO_ADDRS, &f->n, &age));
    assert_string_equal(text_of(&f->out[0], buf), "192.0.2.2");
    assert_int_equal(age, 1000);
}

static void addresses_older_than_the_stale_limit_are_not_served(void **state)
{
    struct memo_fixture *f = *state;
    keep_one(f, "mx.example", "192.0.2.1", 1000, T0);
    int64_t age;
    assert_false(dns_addr_memo_failed(f->m, "mx.example", T0 + DNS_ADDR_STALE_MAX_MS, f->out,
                                      DNS_ADDR_MEMO_ADDRS, &f->n, &age));
    /* A failure just inside the limit: its recheck period does not stretch it. */
    keep_one(f, "mx2.example", "192.0.2.2", 1000, T0);
    int64_t late = T0 + DNS_ADDR_STALE_MAX_MS - 1;
    assert_true(dns_addr_memo_failed(f->m, "mx2.example", late, f->out, DNS_ADDR_MEMO_ADDRS,
                                     &f->n, &age));
    assert_int_equal(find(f, "mx2.example", late + 1), DNS_ADDR_ASK);
}

static void a_name_that_no_longer_exists_is_forgotten(void **state)
{
    struct memo_fixture *f = *state;
    keep_one(f, "mx.example", "192.0.2.1", 300000, T0);
    dns_addr_memo_forget(f->m, "mx.example");
    assert_int_equal(find(f, "mx.example", T0 + 1), DNS_ADDR_ASK);
    int64_t age;
    assert_false(dns_addr_memo_failed(f->m, "mx.example", T0 + 2, f->out, DNS_ADDR_MEMO_ADDRS,
                                      &f->n, &age));
}

static void at_most_the_limit_of_addresses_is_kept_per_name(void **state)
{
    struct memo_fixture *f = *state;
    struct sockaddr_storage many[DNS_ADDR_MEMO_ADDRS + 4];
    for (size_t i = 0; i < DNS_ADDR_MEMO_ADDRS + 4; i++) {
        char text[INET_ADDRSTRLEN];
        snprintf(text, sizeof text, "192.0.2.%zu", i + 1);
        many[i] = v4(text);
    }
    dns_addr_memo_keep(f->m, "mx.example", many, DNS_ADDR_MEMO_ADDRS + 4, 1000, T0);
    assert_int_equal(find(f, "mx.example", T0), DNS_ADDR_FRESH);
    assert_int_equal(f->n, DNS_ADDR_MEMO_ADDRS);
    /* A smaller out gets only what fits. */
    size_t n = 0;
    struct sockaddr_storage two[2];
    assert_int_equal(dns_addr_memo_find(f->m, "mx.example", T0, two, 2, &n), DNS_ADDR_FRESH);
    assert_int_equal(n, 2);
}

/* Full: the name used longest ago makes room; the others stay. */
static void a_full_memo_forgets_the_name_used_longest_ago(void **state)
{
    struct memo_fixture *f = *state;
    char name[32];
    for (int i = 0; i < DNS_ADDR_MEMO_NAMES; i++) {
        snprintf(name, sizeof name, "mx%d.example", i);
        keep_one(f, name, "192.0.2.1", 600000, T0 + i);
    }
    assert_int_equal(find(f, "mx0.example", T0 + 100), DNS_ADDR_FRESH); /* 1 is the oldest now */
    keep_one(f, "new.example", "192.0.2.9", 600000, T0 + 200);
    assert_int_equal(find(f, "mx1.example", T0 + 300), DNS_ADDR_ASK);
    assert_int_equal(find(f, "mx0.example", T0 + 300), DNS_ADDR_FRESH);
    assert_int_equal(find(f, "new.example", T0 + 300), DNS_ADDR_FRESH);
    snprintf(name, sizeof name, "mx%d.example", DNS_ADDR_MEMO_NAMES - 1);
    assert_int_equal(find(f, name, T0 + 300), DNS_ADDR_FRESH);
}

/* A reload: asked again at once, but a failure still finds the addresses. */
static void after_a_reload_names_are_asked_again_but_still_serve_stale(void **state)
{
    struct memo_fixture *f = *state;
    keep_one(f, "mx.example", "192.0.2.1", 300000, T0);
    int64_t age;
    keep_one(f, "mx2.example", "192.0.2.2", 300000, T0);
    assert_true(dns_addr_memo_failed(f->m, "mx2.example", T0 + 1, f->out, DNS_ADDR_MEMO_ADDRS,
                                     &f->n, &age));
    dns_addr_memo_expire(f->m);
    assert_int_equal(find(f, "mx.example", T0 + 2), DNS_ADDR_ASK);
    assert_int_equal(find(f, "mx2.example", T0 + 2), DNS_ADDR_ASK); /* no recheck wait */
    assert_true(dns_addr_memo_failed(f->m, "mx.example", T0 + 3, f->out, DNS_ADDR_MEMO_ADDRS,
                                     &f->n, &age));
    assert_int_equal(f->n, 1);
    dns_addr_memo_expire(NULL);
}

static void a_null_memo_asks_every_time(void **state)
{
    (void)state;
    struct sockaddr_storage out[1], a = v4("192.0.2.1");
    size_t n = 0;
    int64_t age;
    dns_addr_memo_keep(NULL, "mx.example", &a, 1, 1000, T0);
    assert_int_equal(dns_addr_memo_find(NULL, "mx.example", T0, out, 1, &n), DNS_ADDR_ASK);
    assert_false(dns_addr_memo_failed(NULL, "mx.example", T0, out, 1, &n, &age));
    dns_addr_memo_forget(NULL, "mx.example");
    dns_addr_memo_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(an_unknown_name_is_asked, setup, teardown),
        cmocka_unit_test_setup_teardown(an_answer_is_used_for_its_ttl_then_asked_again, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(a_ttl_of_zero_is_asked_every_time_but_kept_for_failures,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            after_a_failure_the_stale_answer_is_used_without_asking_until_the_recheck, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            at_the_recheck_one_asks_and_the_others_still_get_the_stale_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(a_new_answer_replaces_the_stale_one, setup, teardown),
        cmocka_unit_test_setup_teardown(addresses_older_than_the_stale_limit_are_not_served,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(a_name_that_no_longer_exists_is_forgotten, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(at_most_the_limit_of_addresses_is_kept_per_name, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(a_full_memo_forgets_the_name_used_longest_ago, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(after_a_reload_names_are_asked_again_but_still_serve_stale,
                                        setup, teardown),
        cmocka_unit_test(a_null_memo_asks_every_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
