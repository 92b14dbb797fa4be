/* Relay control against hostile recipients: sender-specified routing in
 * every spelling (ASCII, quoted, escaped, Unicode look-alikes a backend may
 * normalise), source routes, and domains that IDNA mapping would change. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "relay_control.h"
#include "route.h"
#include "smtp_cmd.h"

enum { POOL_LOCAL, POOL_OPEN, NPOOLS };

struct fixture {
    struct pool_conf pools[NPOOLS];
    struct route_conf routes[8];
    struct sluice_config cfg;
    char err[256];
};

static void add_route(struct fixture *f, const char *match, const char *pool)
{
    f->routes[f->cfg.nroutes] = (struct route_conf){(char *)match, (char *)pool, 1};
    f->cfg.nroutes++;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->pools[POOL_LOCAL].name = "local";
    f->pools[POOL_OPEN].name = "open";
    f->pools[POOL_OPEN].allow_untrusted_routing = true;
    f->cfg.path = "sluice.conf";
    f->cfg.pools = f->pools;
    f->cfg.npools = NPOOLS;
    f->cfg.routes = f->routes;
    f->cfg.default_pool = POOL_LOCAL;
    add_route(f, "example.com", "local");
    add_route(f, "*.example.com", "local");
    add_route(f, "xn--bcher-kva.example", "local");
    add_route(f, "bücher.example", "local");
    add_route(f, "open.example.net", "open");
    f->cfg.route_table = route_table_build(&f->cfg, f->err, sizeof f->err);
    assert_non_null(f->cfg.route_table);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    route_table_free(f->cfg.route_table);
    free(f);
    return 0;
}

/* The decision for "TO:<path>" as the RCPT parser hands it over. */
static struct relay_decision decide(struct fixture *f, bool trusted, const char *path)
{
    char arg[600];
    snprintf(arg, sizeof arg, "TO:<%s>", path);
    struct smtp_path p;
    assert_int_equal(smtp_path_parse(arg, strlen(arg), true, true, &p), SMTP_PATH_OK);
    return relay_control(&f->cfg, trusted, &p);
}

static void assert_verdict(struct fixture *f, bool trusted, const char *path,
                           enum relay_verdict want)
{
    struct relay_decision d = decide(f, trusted, path);
    if (d.verdict != want)
        fail_msg("<%s> (trusted %d): verdict %d, want %d", path, trusted, d.verdict, want);
    if (want == RELAY_OK)
        assert_true(d.pool >= 0);
    else
        assert_int_equal(d.pool, -1);
}

static void test_plain_recipients_of_routed_domains_pass(void **state)
{
    struct fixture *f = *state;
    const char *ok[] = {
        "user@example.com", "User.Name+tag@EXAMPLE.COM", "\"quoted user\"@example.com",
        "x@a.b.example.com", "postmaster", "Postmaster@example.com",
        "user@bücher.example", "user@xn--bcher-kva.example", "jörg@example.com",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_verdict(f, false, ok[i], RELAY_OK);
}

static void test_untrusted_sender_specified_routing_is_refused(void **state)
{
    struct fixture *f = *state;
    const char *routed[] = {
        "user%other.test@example.com",
        "other.test!user@example.com",
        "\"user@other.test\"@example.com",
        "\"user%other.test\"@example.com",
        "\"other.test!user\"@example.com",
        "\"user\\@other.test\"@example.com",
        "a%b%c@example.com",
        "user%other.test@x.example.com",
        "!@example.com",
        "%@example.com",
        "\"@\"@example.com",
        "@relay.other.test:user@example.com",
        "@a.test,@b.test:user@example.com",
    };
    for (size_t i = 0; i < sizeof routed / sizeof routed[0]; i++)
        assert_verdict(f, false, routed[i], RELAY_SENDER_ROUTING);
}

/* A backend applying NFKC reads these as '@', '%' and '!'. */
static void test_unicode_lookalikes_of_routing_characters_are_refused(void **state)
{
    struct fixture *f = *state;
    const char *routed[] = {
        "user\xef\xbc\xa0other.test@example.com", /* U+FF20 fullwidth @ */
        "user\xef\xb9\xabother.test@example.com", /* U+FE6B small @ */
        "user\xef\xbc\x85other.test@example.com", /* U+FF05 fullwidth % */
        "user\xef\xb9\xaaother.test@example.com", /* U+FE6A small % */
        "other.test\xef\xbc\x81user@example.com", /* U+FF01 fullwidth ! */
        "other.test\xef\xb9\x97user@example.com", /* U+FE57 small ! */
        "other.test\xe2\x80\xbcuser@example.com", /* U+203C double ! */
        "\"user\xef\xbc\xa0other.test\"@example.com",
    };
    for (size_t i = 0; i < sizeof routed / sizeof routed[0]; i++)
        assert_verdict(f, false, routed[i], RELAY_SENDER_ROUTING);
}

static void test_domains_that_idna_mapping_changes_are_refused(void **state)
{
    struct fixture *f = *state;
    /* Routed as they stand (a wildcard parent matches), but a backend that
     * maps them delivers elsewhere or to a differently spelt domain. */
    assert_verdict(f, false, "user@evil\xe3\x80\x82x.example.com", RELAY_UNNORMALISED);
    assert_verdict(f, false, "user@\xef\xbd\x85vil.example.com", RELAY_UNNORMALISED);
    assert_verdict(f, false, "user@other.test\xef\xbc\xa0x.example.com", RELAY_UNNORMALISED);
    /* Not routed at all, whatever they map to. */
    assert_verdict(f, false, "user@\xef\xbd\x85xample.com", RELAY_NO_ROUTE);
    assert_verdict(f, false, "user@example\xe3\x80\x82" "com", RELAY_NO_ROUTE);
}

static void test_unrouted_domains_are_refused_to_untrusted_clients(void **state)
{
    struct fixture *f = *state;
    assert_verdict(f, false, "user@other.test", RELAY_NO_ROUTE);
    assert_verdict(f, false, "user@example.com.other.test", RELAY_NO_ROUTE);
    assert_verdict(f, false, "user@badexample.com", RELAY_NO_ROUTE);
    assert_verdict(f, false, "user@[127.0.0.1]", RELAY_NO_ROUTE);
}

static void test_trusted_clients_may_route_anywhere(void **state)
{
    struct fixture *f = *state;
    assert_verdict(f, true, "user@other.test", RELAY_OK);
    assert_verdict(f, true, "user%other.test@example.com", RELAY_OK);
    assert_verdict(f, true, "@relay.test:user@example.com", RELAY_OK);
    assert_int_equal(decide(f, true, "user@other.test").pool, POOL_LOCAL);
}

static void test_pool_allowing_untrusted_routing_takes_it(void **state)
{
    struct fixture *f = *state;
    struct relay_decision d = decide(f, false, "user%other.test@open.example.net");
    assert_int_equal(d.verdict, RELAY_OK);
    assert_int_equal(d.pool, POOL_OPEN);
    assert_verdict(f, false, "\"a@b\"@open.example.net", RELAY_OK);
    /* The option is the pool's: the same local part elsewhere is refused. */
    assert_verdict(f, false, "user%other.test@example.com", RELAY_SENDER_ROUTING);
}

static void test_every_verdict_has_a_reason_for_the_log(void **state)
{
    (void)state;
    assert_string_equal(relay_verdict_reason(RELAY_SENDER_ROUTING), "sender-specified routing");
    assert_string_equal(relay_verdict_reason(RELAY_NO_ROUTE), "no route for the domain");
    assert_string_equal(relay_verdict_reason(RELAY_UNNORMALISED), "domain not in normalised form");
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_plain_recipients_of_routed_domains_pass),
        T(test_untrusted_sender_specified_routing_is_refused),
        T(test_unicode_lookalikes_of_routing_characters_are_refused),
        T(test_domains_that_idna_mapping_changes_are_refused),
        T(test_unrouted_domains_are_refused_to_untrusted_clients),
        T(test_trusted_clients_may_route_anywhere),
        T(test_pool_allowing_untrusted_routing_takes_it),
        T(test_every_verdict_has_a_reason_for_the_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
