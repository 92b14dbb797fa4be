#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "route.h"

enum { POOL_LOCAL, POOL_HOSTED, POOL_SPECIAL, NPOOLS };

/* A configuration holding only what routing reads: pool names, routes and
 * the table file. */
struct fixture {
    char dir[64];
    char table_path[128];
    struct pool_conf pools[NPOOLS];
    struct route_conf routes[16];
    struct sluice_config cfg;
    char err[512];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/sluice-route-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->table_path, sizeof f->table_path, "%s/routes", f->dir);
    f->pools[POOL_LOCAL].name = "local";
    f->pools[POOL_HOSTED].name = "hosted";
    f->pools[POOL_SPECIAL].name = "special";
    f->cfg.path = "sluice.conf";
    f->cfg.pools = f->pools;
    f->cfg.npools = NPOOLS;
    f->cfg.routes = f->routes;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    unlink(f->table_path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void add_route(struct fixture *f, const char *match, const char *pool, int line)
{
    assert_true(f->cfg.nroutes < sizeof f->routes / sizeof f->routes[0]);
    f->routes[f->cfg.nroutes++] = (struct route_conf){(char *)match, (char *)pool, line};
}

static void write_table(struct fixture *f, const char *text, size_t len)
{
    FILE *fp = fopen(f->table_path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
    f->cfg.route_table_file = f->table_path;
}

static int lookup(const struct route_table *t, const char *addr)
{
    return route_lookup(t, addr, strlen(addr));
}

static void test_exact_address_beats_domain_beats_wildcard(void **state)
{
    struct fixture *f = *state;
    add_route(f, "*.example.com", "local", 1);
    add_route(f, "a.example.com", "hosted", 2);
    add_route(f, "ceo@a.example.com", "special", 3);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(route_table_size(t), 3);
    assert_int_equal(lookup(t, "ceo@a.example.com"), POOL_SPECIAL);
    assert_int_equal(lookup(t, "other@a.example.com"), POOL_HOSTED);
    assert_int_equal(lookup(t, "x@b.example.com"), POOL_LOCAL);
    route_table_free(t);
}

static void test_wildcard_matches_subdomains_at_any_depth_but_not_the_domain(void **state)
{
    struct fixture *f = *state;
    add_route(f, "*.example.com", "local", 1);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(lookup(t, "u@a.example.com"), POOL_LOCAL);
    assert_int_equal(lookup(t, "u@a.b.c.example.com"), POOL_LOCAL);
    assert_int_equal(lookup(t, "u@example.com"), -1);
    assert_int_equal(lookup(t, "u@badexample.com"), -1);
    assert_int_equal(lookup(t, "u@example.com.evil.net"), -1);
    route_table_free(t);
}

static void test_closest_wildcard_wins(void **state)
{
    struct fixture *f = *state;
    add_route(f, "*.example.com", "local", 1);
    add_route(f, "*.eu.example.com", "hosted", 2);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(lookup(t, "u@paris.eu.example.com"), POOL_HOSTED);
    assert_int_equal(lookup(t, "u@x.paris.eu.example.com"), POOL_HOSTED);
    assert_int_equal(lookup(t, "u@eu.example.com"), POOL_LOCAL);
    assert_int_equal(lookup(t, "u@us.example.com"), POOL_LOCAL);
    route_table_free(t);
}

static void test_lookup_ignores_ascii_case_and_trailing_dot(void **state)
{
    struct fixture *f = *state;
    add_route(f, "Example.COM.", "local", 1);
    add_route(f, "Boss@Example.org", "hosted", 2);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(lookup(t, "user@EXAMPLE.com"), POOL_LOCAL);
    assert_int_equal(lookup(t, "user@example.com."), POOL_LOCAL);
    assert_int_equal(lookup(t, "BOSS@example.ORG"), POOL_HOSTED);
    assert_int_equal(lookup(t, "other@example.org"), -1);
    route_table_free(t);
}

static void test_last_at_sign_separates_the_domain(void **state)
{
    struct fixture *f = *state;
    add_route(f, "example.com", "local", 1);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(lookup(t, "\"a@b\"@example.com"), POOL_LOCAL);
    assert_int_equal(lookup(t, "user@"), -1);
    assert_int_equal(lookup(t, ""), -1);
    route_table_free(t);
}

static void test_lookup_with_nul_byte_matches_nothing(void **state)
{
    struct fixture *f = *state;
    add_route(f, "example.com", "local", 1);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    static const char addr[] = "u@example.com\0.evil";
    assert_int_equal(route_lookup(t, addr, sizeof addr - 1), -1);
    assert_int_equal(route_lookup(t, addr, strlen(addr)), POOL_LOCAL);
    route_table_free(t);
}

static void test_duplicate_config_route_is_an_error_with_both_lines(void **state)
{
    struct fixture *f = *state;
    add_route(f, "example.com", "local", 7);
    add_route(f, "EXAMPLE.com", "hosted", 9);
    assert_null(route_table_build(&f->cfg, f->err, sizeof f->err));
    assert_string_equal(f->err, "sluice.conf:9: duplicate route for \"example.com\""
                                " (first defined at line 7)");
}

static void test_unknown_pool_in_config_route(void **state)
{
    struct fixture *f = *state;
    add_route(f, "example.com", "nowhere", 4);
    assert_null(route_table_build(&f->cfg, f->err, sizeof f->err));
    assert_string_equal(f->err, "sluice.conf:4: unknown pool \"nowhere\"");
}

static void test_malformed_matches_are_refused(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {
        "", ".", "@example.com", "user@", "*.", "*example.com", "a.*.example.com",
        "exa mple.com", "a..example.com", ".example.com", "*.*.example.com", "user@*.example.com",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        f->cfg.nroutes = 0;
        add_route(f, bad[i], "local", 3);
        assert_null(route_table_build(&f->cfg, f->err, sizeof f->err));
        char want[128];
        snprintf(want, sizeof want,
                 "sluice.conf:3: \"%s\" is not an address, a domain or *.domain", bad[i]);
        assert_string_equal(f->err, want);
    }
}

static void test_table_file_with_comments_and_blank_lines(void **state)
{
    struct fixture *f = *state;
    static const char text[] = "# routes for the hosted domains\n"
                               "\n"
                               "hosted.example   hosted   # trailing comment\n"
                               "   \t\n"
                               "*.hosted.example\thosted\r\n"
                               "vip@hosted.example special\n"
                               "last.example local"; /* no final newline */
    write_table(f, text, sizeof text - 1);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(route_table_size(t), 4);
    assert_int_equal(lookup(t, "a@hosted.example"), POOL_HOSTED);
    assert_int_equal(lookup(t, "a@www.hosted.example"), POOL_HOSTED);
    assert_int_equal(lookup(t, "VIP@hosted.example"), POOL_SPECIAL);
    assert_int_equal(lookup(t, "a@last.example"), POOL_LOCAL);
    route_table_free(t);
}

static void test_config_route_overrides_table_file_entry(void **state)
{
    struct fixture *f = *state;
    add_route(f, "example.com", "special", 2);
    static const char text[] = "example.com local\nexample.net local\n";
    write_table(f, text, sizeof text - 1);
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(lookup(t, "a@example.com"), POOL_SPECIAL);
    assert_int_equal(lookup(t, "a@example.net"), POOL_LOCAL);
    route_table_free(t);
}

static void expect_table_error(struct fixture *f, const char *text, const char *detail)
{
    write_table(f, text, strlen(text));
    assert_null(route_table_build(&f->cfg, f->err, sizeof f->err));
    char want[512];
    snprintf(want, sizeof want, "%s:%s", f->table_path, detail);
    assert_string_equal(f->err, want);
}

static void test_table_file_errors_name_file_and_line(void **state)
{
    struct fixture *f = *state;
    expect_table_error(f, "# x\na.example local\nb.example nowhere\n",
                       "3: unknown pool \"nowhere\"");
    expect_table_error(f, "a.example\n", "1: expected \"address-or-domain pool\"");
    expect_table_error(f, "a.example local extra\n", "1: expected \"address-or-domain pool\"");
    expect_table_error(f, "\n\nbad..example local\n",
                       "3: \"bad..example\" is not an address, a domain or *.domain");
    expect_table_error(f, "a.example local\nA.example. hosted\n",
                       "2: duplicate route for \"a.example\" (first defined at line 1)");
}

static void test_table_file_nul_byte_is_an_error(void **state)
{
    struct fixture *f = *state;
    static const char text[] = "a.example local\nb.exa\0mple local\n";
    write_table(f, text, sizeof text - 1);
    assert_null(route_table_build(&f->cfg, f->err, sizeof f->err));
    char want[256];
    snprintf(want, sizeof want, "%s:2: unexpected NUL byte", f->table_path);
    assert_string_equal(f->err, want);
}

static void test_missing_table_file_is_an_error(void **state)
{
    struct fixture *f = *state;
    f->cfg.route_table_file = f->table_path;
    assert_null(route_table_build(&f->cfg, f->err, sizeof f->err));
    char want[256];
    snprintf(want, sizeof want, "%s: cannot read the route table: No such file or directory",
             f->table_path);
    assert_string_equal(f->err, want);
}

static void test_empty_table_routes_nothing(void **state)
{
    struct fixture *f = *state;
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(route_table_size(t), 0);
    assert_int_equal(lookup(t, "a@example.com"), -1);
    route_table_free(t);
    assert_int_equal(route_lookup(NULL, "a@b", 3), -1);
}

#define BIG_TABLE_ENTRIES 50000

static void big_table_entry(int i, char *buf, size_t len)
{
    switch (i % 3) {
    case 0:
        snprintf(buf, len, "user%d@domain%d.example", i, i);
        break;
    case 1:
        snprintf(buf, len, "domain%d.example", i);
        break;
    default:
        snprintf(buf, len, "*.zone%d.example", i);
        break;
    }
}

static void test_fifty_thousand_entry_table_finds_every_entry(void **state)
{
    struct fixture *f = *state;
    static const char *const pools[] = {"local", "hosted", "special"};
    FILE *fp = fopen(f->table_path, "w");
    assert_non_null(fp);
    char key[96];
    for (int i = 0; i < BIG_TABLE_ENTRIES; i++) {
        big_table_entry(i, key, sizeof key);
        fprintf(fp, "%s %s\n", key, pools[(i / 3) % NPOOLS]);
    }
    assert_int_equal(fclose(fp), 0);
    f->cfg.route_table_file = f->table_path;
    struct route_table *t = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(t);
    assert_int_equal(route_table_size(t), BIG_TABLE_ENTRIES);
    char addr[128];
    for (int i = 0; i < BIG_TABLE_ENTRIES; i++) {
        big_table_entry(i, key, sizeof key);
        if (i % 3 == 0)
            snprintf(addr, sizeof addr, "%s", key);
        else if (i % 3 == 1)
            snprintf(addr, sizeof addr, "someone@%s", key);
        else
            snprintf(addr, sizeof addr, "someone@mx.%s", key + 2);
        assert_int_equal(lookup(t, addr), (i / 3) % NPOOLS);
    }
    assert_int_equal(lookup(t, "someone@domain0.example"), -1); /* only user0@ was routed */
    route_table_free(t);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_exact_address_beats_domain_beats_wildcard),
        T(test_wildcard_matches_subdomains_at_any_depth_but_not_the_domain),
        T(test_closest_wildcard_wins),
        T(test_lookup_ignores_ascii_case_and_trailing_dot),
        T(test_last_at_sign_separates_the_domain),
        T(test_lookup_with_nul_byte_matches_nothing),
        T(test_duplicate_config_route_is_an_error_with_both_lines),
        T(test_unknown_pool_in_config_route),
        T(test_malformed_matches_are_refused),
        T(test_table_file_with_comments_and_blank_lines),
        T(test_config_route_overrides_table_file_entry),
        T(test_table_file_errors_name_file_and_line),
        T(test_table_file_nul_byte_is_an_error),
        T(test_missing_table_file_is_an_error),
        T(test_empty_table_routes_nothing),
        T(test_fifty_thousand_entry_table_finds_every_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
