#define _GNU_SOURCE /* nftw's FTW_DEPTH */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <libconfig.h>

#include "config.h"
#include "route.h"

/* The smallest valid file: one listener and one pool. */
#define LISTEN_LINE "listen = ( { address = \"127.0.0.1\"; port = 2525; } );\n"
#define POOLS_LINE "pools = ( { name = \"local\"; servers = ( \"127.0.0.1\" ); } );\n"
#define MINIMAL LISTEN_LINE POOLS_LINE

struct fixture {
    char dir[64];
    char conf[128];
    char err[1024];
    struct sluice_config *cfg;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/sluice-config-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->conf, sizeof f->conf, "%s/sluice.conf", f->dir);
    *state = f;
    return 0;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    config_free(f->cfg);
    nftw(f->dir, remove_one, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void write_file(struct fixture *f, const char *rel, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", f->dir, rel);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static void make_dir(struct fixture *f, const char *rel)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", f->dir, rel);
    assert_int_equal(mkdir(path, 0700), 0);
}

static int load(struct fixture *f, const char *text)
{
    write_file(f, "sluice.conf", text);
    config_free(f->cfg);
    f->cfg = NULL;
    return config_load(f->conf, &f->cfg, f->err, sizeof f->err);
}

/* detail follows the file name: ":3: what" or ": what". */
static void expect_error_in(struct fixture *f, const char *text, const char *file_rel,
                            const char *detail)
{
    assert_int_equal(load(f, text), -1);
    assert_null(f->cfg);
    char want[1024];
    snprintf(want, sizeof want, "%s/%s%s", f->dir, file_rel, detail);
    assert_string_equal(f->err, want);
}

static void expect_error(struct fixture *f, const char *text, const char *detail)
{
    expect_error_in(f, text, "sluice.conf", detail);
}

/* ---- a valid configuration ---- */

static const char full_config[] =
    "hostname = \"mx.example.test\";\n"
    "threads = 3;\n"
    "log_level = \"debug\";\n"
    "conf_dir = \"entries\";\n"
    "listen = (\n"
    "    { address = \"0.0.0.0\"; port = \"25\"; },\n"
    "    { address = \"::\"; port = 2526; proxy_protocol = true;\n"
    "      proxy_trusted = [ \"10.0.0.0/8\", \"2001:db8::/32\" ]; }\n"
    ");\n"
    "relay_networks = [ \"192.0.2.0/24\", \"::1\" ];\n"
    "pools = (\n"
    "    { name = \"local\";\n"
    "      servers = ( \"mx1.test\", \"mx2.test:2525\", \"[2001:db8::1]:587\",\n"
    "                  { host = \"10.0.0.9\"; port = 26; weight = 5; } );\n"
    "      max_connections = 50; wait = \"2s\"; xclient = false; proxy_protocol = true;\n"
    "      smtputf8 = true; helo_name = \"relay.example.test\"; connect_timeout = \"10s\";\n"
    "      command_timeout = \"2m\"; final_timeout = \"10m\"; noop_interval = 15000;\n"
    "      down_time = \"1m\"; },\n"
    "    { name = \"other\"; servers = [ \"10.0.0.10\" ]; }\n"
    ");\n"
    "routes = ( { match = \"example.com\"; pool = \"other\"; },\n"
    "           { match = \"*.example.com\"; pool = \"local\"; } );\n"
    "route_table = \"routes.txt\";\n"
    "default_pool = \"other\";\n"
    "limits = { max_line_length = \"4K\"; max_recipients = 50; max_message_size = \"25M\";\n"
    "           max_errors = 5; };\n"
    "timeouts = { command = \"1m\"; data_block = \"90s\"; data_total = \"1h\";\n"
    "             reverse_lookup = 2500; };\n"
    "data = { bare_newline = \"normalize\"; spool_memory = \"512K\"; spool_dir = \"/tmp\"; };\n"
    "dns = { servers = [ \"127.0.0.1\", \"[::1]:5353\", \"192.0.2.53:53\" ]; timeout = \"3s\";\n"
    "        tries = 4; };\n";

static void test_full_config_loads_every_value(void **state)
{
    struct fixture *f = *state;
    write_file(f, "routes.txt", "table.example local\n");
    assert_int_equal(load(f, full_config), 0);
    const struct sluice_config *c = f->cfg;
    assert_string_equal(c->hostname, "mx.example.test");
    assert_int_equal(c->threads, 3);
    assert_string_equal(c->log_level, "debug");
    char want[256];
    snprintf(want, sizeof want, "%s/entries", f->dir);
    assert_string_equal(c->conf_dir, want);

    assert_int_equal(c->nlistens, 2);
    assert_string_equal(c->listens[0].address, "0.0.0.0");
    assert_string_equal(c->listens[0].port, "25");
    assert_false(c->listens[0].proxy_protocol);
    assert_int_equal(c->listens[0].line, 6);
    assert_string_equal(c->listens[1].address, "::");
    assert_string_equal(c->listens[1].port, "2526");
    assert_true(c->listens[1].proxy_protocol);
    assert_int_equal(netlist_count(c->listens[1].proxy_trusted), 2);
    assert_int_equal(netlist_count(c->relay_networks), 2);

    assert_int_equal(c->npools, 2);
    const struct pool_conf *p = &c->pools[0];
    assert_string_equal(p->name, "local");
    assert_int_equal(p->nservers, 4);
    assert_string_equal(p->servers[0].host, "mx1.test");
    assert_string_equal(p->servers[0].port, "25");
    assert_int_equal(p->servers[0].weight, 1);
    assert_string_equal(p->servers[1].host, "mx2.test");
    assert_string_equal(p->servers[1].port, "2525");
    assert_string_equal(p->servers[2].host, "2001:db8::1");
    assert_string_equal(p->servers[2].port, "587");
    assert_string_equal(p->servers[3].host, "10.0.0.9");
    assert_string_equal(p->servers[3].port, "26");
    assert_int_equal(p->servers[3].weight, 5);
    assert_int_equal(p->max_connections, 50);
    assert_int_equal(p->max_per_client, 13); /* 50 / 4, rounded up */
    assert_int_equal(p->wait_ms, 2000);
    assert_false(p->xclient);
    assert_true(p->proxy_protocol);
    assert_true(p->smtputf8);
    assert_string_equal(p->helo_name, "relay.example.test");
    assert_int_equal(p->connect_timeout_ms, 10000);
    assert_int_equal(p->command_timeout_ms, 120000);
    assert_int_equal(p->final_timeout_ms, 600000);
    assert_int_equal(p->noop_interval_ms, 15000);
    assert_int_equal(p->down_ms, 60000);
    assert_string_equal(c->pools[1].helo_name, "mx.example.test");

    assert_int_equal(c->nroutes, 2);
    assert_int_equal(c->default_pool, 1);
    snprintf(want, sizeof want, "%s/routes.txt", f->dir);
    assert_string_equal(c->route_table_file, want);
    assert_int_equal(route_table_size(c->route_table), 3);
    assert_int_equal(route_lookup(c->route_table, "a@example.com", 13), 1);
    assert_int_equal(route_lookup(c->route_table, "a@www.example.com", 17), 0);
    assert_int_equal(route_lookup(c->route_table, "a@table.example", 15), 0);

    assert_int_equal(c->max_line_length, 4096);
    assert_int_equal(c->max_recipients, 50);
    assert_int_equal(c->max_message_size, 25 * 1024 * 1024);
    assert_int_equal(c->max_errors, 5);
    assert_int_equal(c->command_timeout_ms, 60000);
    assert_int_equal(c->data_block_timeout_ms, 90000);
    assert_int_equal(c->data_total_timeout_ms, 3600000);
    assert_int_equal(c->reverse_lookup_timeout_ms, 2500);
    assert_int_equal(c->bare_newline, BARE_NEWLINE_NORMALIZE);
    assert_int_equal(c->spool_memory, 512 * 1024);
    assert_string_equal(c->spool_dir, "/tmp");
    assert_int_equal(c->dns.nservers, 3);
    assert_string_equal(c->dns.servers[1], "[::1]:5353");
    assert_int_equal(c->dns.timeout_ms, 3000);
    assert_int_equal(c->dns.tries, 4);
    assert_int_equal(c->nentries, 0); /* "entries" does not exist: no chain */
}

static void test_minimal_config_gets_the_documented_defaults(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, MINIMAL), 0);
    const struct sluice_config *c = f->cfg;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    assert_string_equal(c->hostname, host);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(c->threads, cores < 1 ? 1 : cores > 256 ? 256 : cores);
    assert_string_equal(c->log_level, "info");
    char want[256];
    snprintf(want, sizeof want, "%s/conf.d", f->dir);
    assert_string_equal(c->conf_dir, want);
    assert_string_equal(c->listens[0].port, "2525");
    assert_false(c->listens[0].proxy_protocol);
    assert_null(c->listens[0].proxy_trusted);
    assert_null(c->relay_networks);

    const struct pool_conf *p = &c->pools[0];
    assert_string_equal(p->servers[0].port, "25");
    assert_int_equal(p->servers[0].weight, 1);
    assert_int_equal(p->max_connections, 20);
    assert_int_equal(p->max_per_client, 5); /* a quarter of max_connections */
    assert_int_equal(p->wait_ms, 30000);
    assert_true(p->xclient);
    assert_false(p->proxy_protocol);
    assert_false(p->smtputf8);
    assert_string_equal(p->helo_name, host);
    assert_int_equal(p->connect_timeout_ms, 30000);
    assert_int_equal(p->command_timeout_ms, 300000);
    assert_int_equal(p->final_timeout_ms, 300000);
    assert_int_equal(p->noop_interval_ms, 60000);
    assert_int_equal(p->down_ms, 30000);

    assert_int_equal(c->nroutes, 0);
    assert_null(c->route_table_file);
    assert_int_equal(c->default_pool, -1);
    assert_non_null(c->route_table);
    assert_int_equal(route_table_size(c->route_table), 0);
    assert_int_equal(c->max_line_length, 2048);
    assert_int_equal(c->max_recipients, 1000);
    assert_int_equal(c->max_message_size, 50 * 1024 * 1024);
    assert_int_equal(c->max_errors, 20);
    assert_int_equal(c->command_timeout_ms, 300000);
    assert_int_equal(c->data_block_timeout_ms, 180000);
    assert_int_equal(c->data_total_timeout_ms, 1800000);
    assert_int_equal(c->reverse_lookup_timeout_ms, 5000);
    assert_int_equal(c->proxy_header_timeout_ms, 5000);
    assert_int_equal(c->bare_newline, BARE_NEWLINE_REJECT);
    assert_int_equal(c->spool_memory, 1024 * 1024);
    assert_string_equal(c->spool_dir, "/var/tmp");
    assert_int_equal(c->dns.nservers, 0);
    assert_int_equal(c->dns.timeout_ms, 5000);
    assert_int_equal(c->dns.tries, 2);
    assert_int_equal(c->nentries, 0);
}

static void test_store_connections_metrics_and_plugins_defaults(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, MINIMAL), 0);
    const struct sluice_config *c = f->cfg;
    assert_int_equal(c->store.backend, STORE_LMDB);
    assert_string_equal(c->store.path, "/var/lib/sluice/store");
    assert_int_equal(c->store.map_size, 256 * 1024 * 1024);
    assert_string_equal(c->store.redis_address, "127.0.0.1:6379");
    assert_int_equal(c->store.redis_timeout_ms, 1000);
    assert_int_equal(c->store.redis_database, 0);
    assert_int_equal(c->connections.max_sessions, 1000);
    assert_int_equal(c->connections.per_address, 20);
    assert_int_equal(c->connections.per_network, 50);
    assert_int_equal(c->connections.network_v4, 24);
    assert_int_equal(c->connections.network_v6, 64);
    assert_int_equal(c->connections.rate, 60);
    assert_int_equal(c->connections.rate_interval_ms, 60000);
    assert_null(c->connections.allowlist);
    assert_null(c->metrics_listen);
    assert_int_equal(c->thread_pool_size, 4);
    assert_non_null(c->plugin_dir);
    assert_int_equal(c->plugin_timeout_ms, 10000);
}

static void test_store_connections_metrics_and_plugins_values(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, MINIMAL "store = { backend = \"redis\"; path = \"/srv/kv\";\n"
                                     "  map_size = \"1G\"; redis_address = \"/run/redis.sock\";\n"
                                     "  redis_timeout = \"250ms\"; redis_database = 3; };\n"
                                     "connections = { max_sessions = 0; per_address = 5;\n"
                                     "  per_network = 9; network_v4 = 16; network_v6 = 48;\n"
                                     "  rate = 10; rate_interval = \"10s\";\n"
                                     "  allowlist = [ \"192.0.2.0/24\" ]; };\n"
                                     "metrics_listen = \"127.0.0.1:9125\";\n"
                                     "thread_pool_size = 8;\n"
                                     "plugin_dir = \"plugins\";\n"
                                     "plugin_timeout = \"3s\";\n"),
                     0);
    const struct sluice_config *c = f->cfg;
    assert_int_equal(c->store.backend, STORE_REDIS);
    assert_string_equal(c->store.path, "/srv/kv");
    assert_int_equal(c->store.map_size, 1024 * 1024 * 1024);
    assert_string_equal(c->store.redis_address, "/run/redis.sock");
    assert_int_equal(c->store.redis_timeout_ms, 250);
    assert_int_equal(c->store.redis_database, 3);
    assert_int_equal(c->connections.max_sessions, 0);
    assert_int_equal(c->connections.per_address, 5);
    assert_int_equal(c->connections.per_network, 9);
    assert_int_equal(c->connections.network_v4, 16);
    assert_int_equal(c->connections.network_v6, 48);
    assert_int_equal(c->connections.rate, 10);
    assert_int_equal(c->connections.rate_interval_ms, 10000);
    assert_int_equal(netlist_count(c->connections.allowlist), 1);
    assert_string_equal(c->metrics_listen, "127.0.0.1:9125");
    assert_int_equal(c->thread_pool_size, 8);
    char want[256];
    snprintf(want, sizeof want, "%s/plugins", f->dir);
    assert_string_equal(c->plugin_dir, want);
    assert_int_equal(c->plugin_timeout_ms, 3000);
}

static void test_relative_store_and_spool_paths_resolve_beside_sluice_conf(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, MINIMAL "store = { path = \"state/kv\"; };\n"
                                     "data = { spool_dir = \"spool\"; };\n"),
                     0);
    char want[256];
    snprintf(want, sizeof want, "%s/state/kv", f->dir);
    assert_string_equal(f->cfg->store.path, want);
    snprintf(want, sizeof want, "%s/spool", f->dir);
    assert_string_equal(f->cfg->spool_dir, want);

    expect_error(f, MINIMAL "metrics_listen = \"localhost:9125\";\n",
                 ":3: 'metrics_listen': \"localhost:9125\" must be \"ip:port\" with a numeric "
                 "address");
    expect_error(f, MINIMAL "metrics_listen = \"127.0.0.1\";\n",
                 ":3: 'metrics_listen': \"127.0.0.1\" must be \"ip:port\" with a numeric address");
    expect_error(f, MINIMAL "store = { backend = \"bdb\"; };\n",
                 ":3: 'backend' must be one of \"lmdb\", \"redis\"");
    expect_error(f, MINIMAL "connections = { network_v4 = 33; };\n",
                 ":3: 'network_v4' must be between 0 and 32");
}

static void test_shipped_example_loads(void **state)
{
    struct fixture *f = *state;
    /* The example sits at the top of the source tree, two levels above this file. */
    char path[512];
    snprintf(path, sizeof path, "%s", __FILE__);
    char *cut = strstr(path, "tests/unit/test_config.c");
    assert_non_null(cut);
    snprintf(cut, sizeof path - (size_t)(cut - path), "sluice.conf");
    assert_int_equal(config_load(path, &f->cfg, f->err, sizeof f->err), 0);
    assert_int_equal(f->cfg->nlistens, 2);
    assert_int_equal(f->cfg->default_pool, 0);
    assert_int_equal(route_lookup(f->cfg->route_table, "a@mail.example.com", 18), 0);
}

/* ---- errors ---- */

static void test_missing_file_is_reported(void **state)
{
    struct fixture *f = *state;
    char path[256];
    snprintf(path, sizeof path, "%s/none.conf", f->dir);
    assert_int_equal(config_load(path, &f->cfg, f->err, sizeof f->err), -1);
    char want[512];
    snprintf(want, sizeof want, "%s: cannot read: No such file or directory", path);
    assert_string_equal(f->err, want);
}

static void test_syntax_error_reports_libconfig_line(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "threads = 4;\nlog_level = = \"info\";\n", ":4: syntax error");
}

static void test_unknown_settings_are_named(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "log_levle = \"debug\";\n", ":3: unknown setting 'log_levle'");
    expect_error(f, MINIMAL "limits = {\n  max_recipient = 5;\n};\n",
                 ":4: unknown setting 'max_recipient'");
    expect_error(f,
                 LISTEN_LINE "pools = ( { name = \"a\"; servers = ( \"h\" );\n"
                             "            max_conections = 5; } );\n",
                 ":3: unknown setting 'max_conections'");
    expect_error(f,
                 POOLS_LINE "listen = ( { address = \"::1\"; prot = 25; } );\n",
                 ":2: unknown setting 'prot'");
    expect_error(f,
                 LISTEN_LINE "pools = ( { name = \"a\";\n"
                             "  servers = ( { host = \"h\"; wieght = 2; } ); } );\n",
                 ":3: unknown setting 'wieght'");
}

static void test_wrong_types_are_errors(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "threads = \"four\";\n", ":3: 'threads' must be an integer");
    expect_error(f, MINIMAL "hostname = 5;\n", ":3: 'hostname' must be a string");
    expect_error(f, MINIMAL "limits = 5;\n", ":3: 'limits' must be a group { ... }");
    expect_error(f, MINIMAL "relay_networks = \"10.0.0.0/8\";\n",
                 ":3: 'relay_networks' must be an array of networks, like [ \"10.0.0.0/8\" ]");
    expect_error(f,
                 LISTEN_LINE "pools = ( { name = \"a\"; servers = ( \"h\" ); xclient = 1; } );\n",
                 ":2: 'xclient' must be true or false");
    expect_error(f, MINIMAL "threads = 2.5;\n", ":3: 'threads' must be an integer");
    expect_error(f, MINIMAL "data = { spool_memory = true; };\n",
                 ":3: 'spool_memory' must be a size (\"25M\" or bytes)");
    expect_error(f, LISTEN_LINE "pools = { name = \"a\"; };\n",
                 ":2: 'pools' must be a list ( ... )");
}

static void test_values_out_of_range_are_errors(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "threads = 257;\n", ":3: 'threads' must be between 0 and 256");
    expect_error(f, MINIMAL "threads = 3000000000;\n", ":3: 'threads' must be between 0 and 256");
    expect_error(f, MINIMAL "limits = { max_line_length = 100; };\n",
                 ":3: 'max_line_length' must be between 512 and 1048576 bytes");
    expect_error(f, MINIMAL "timeouts = { command = 0; };\n",
                 ":3: 'command' must be at least 1 ms");
    expect_error(f, MINIMAL "timeouts = { command = -5; };\n",
                 ":3: 'command' must not be negative");
    expect_error(f,
                 LISTEN_LINE "pools = ( { name = \"a\";\n"
                             "  servers = ( { host = \"h\"; weight = 0; } ); } );\n",
                 ":3: 'weight' must be between 1 and 1000");
    expect_error(f, POOLS_LINE "listen = ( { address = \"::1\"; port = 70000; } );\n",
                 ":2: 'port' must be a port number between 1 and 65535");
    expect_error(f, POOLS_LINE "listen = ( { address = \"::1\"; port = \"smtp\"; } );\n",
                 ":2: 'port' must be a port number between 1 and 65535");
}

static void test_bad_durations_and_sizes_name_the_setting(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "timeouts = { data_block = \"3 m\"; };\n",
                 ":3: 'data_block': \"3 m\" is not a valid duration "
                 "(like \"250ms\", \"30s\", \"10m\", \"2h\", \"36d\")");
    expect_error(f, MINIMAL "limits = { max_message_size = \"50MB\"; };\n",
                 ":3: 'max_message_size': \"50MB\" is not a valid size "
                 "(like \"512K\", \"25M\", \"1G\")");
}

static void test_listen_errors(void **state)
{
    struct fixture *f = *state;
    expect_error(f, POOLS_LINE, ": missing 'listen'");
    expect_error(f, POOLS_LINE "listen = ();\n", ":2: 'listen' must not be empty");
    expect_error(f, POOLS_LINE "listen = ( { address = \"localhost\"; } );\n",
                 ":2: 'address': \"localhost\" must be a numeric IPv4 or IPv6 address");
    expect_error(f, POOLS_LINE "listen = ( { port = 25; } );\n", ":2: missing 'address'");
    expect_error(f,
                 POOLS_LINE "listen = (\n  { address = \"::\"; proxy_protocol = true; }\n);\n",
                 ":3: 'proxy_protocol' needs a non-empty 'proxy_trusted'");
    expect_error(f,
                 POOLS_LINE "listen = ( { address = \"::\"; proxy_protocol = true;\n"
                            "  proxy_trusted = [ \"10.0.0.0/8\", \"bad/8\" ]; } );\n",
                 ":3: 'proxy_trusted': \"bad/8\" is not a network (\"ip\" or \"ip/prefix\")");
    expect_error(f, POOLS_LINE "listen = ( \"127.0.0.1\" );\n",
                 ":2: each 'listen' entry must be a group { ... }");
}

static void test_pool_errors(void **state)
{
    struct fixture *f = *state;
    expect_error(f, LISTEN_LINE, ": missing 'pools'");
    expect_error(f, LISTEN_LINE "pools = (\n  { servers = ( \"h\" ); }\n);\n",
                 ":3: missing 'name'");
    expect_error(f, LISTEN_LINE "pools = (\n  { name = \"a\"; }\n);\n", ":3: missing 'servers'");
    expect_error(f,
                 LISTEN_LINE "pools = (\n  { name = \"a\"; servers = ( \"h\" ); },\n"
                             "  { name = \"a\"; servers = ( \"h\" ); }\n);\n",
                 ":4: pool \"a\" is already defined at line 3");
    expect_error(f, LISTEN_LINE "pools = ( { name = \"a\"; servers = ( \"h:0\" ); } );\n",
                 ":2: 'servers': \"h:0\" is not \"host\", \"host:port\" or \"[v6]:port\"");
    expect_error(f, LISTEN_LINE "pools = ( { name = \"a\"; servers = ( ); } );\n",
                 ":2: 'servers' must not be empty");
    expect_error(f, LISTEN_LINE "pools = ( { name = \"a\"; servers = ( \"h\" ); tls_name = \"\"; } );\n",
                 ":2: 'tls_name': \"\" must not be empty (the name the backend's certificate must show)");
}

static void test_route_and_default_pool_errors(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "routes = (\n  { match = \"example.com\"; pool = \"nope\"; }\n);\n",
                 ":4: unknown pool \"nope\"");
    expect_error(f, MINIMAL "routes = (\n  { match = \"a..b\"; pool = \"local\"; }\n);\n",
                 ":4: \"a..b\" is not an address, a domain or *.domain");
    expect_error(f, MINIMAL "routes = ( { match = \"example.com\"; } );\n", ":3: missing 'pool'");
    expect_error(f, MINIMAL "default_pool = \"nope\";\n",
                 ":3: 'default_pool': no pool is named \"nope\"");
    expect_error_in(f, MINIMAL "route_table = \"missing.txt\";\n", "missing.txt",
                    ": cannot read the route table: No such file or directory");
}

static void test_route_table_file_errors_name_the_table(void **state)
{
    struct fixture *f = *state;
    write_file(f, "routes.txt", "# comment\n\nexample.org local\nexample.net elsewhere\n");
    expect_error_in(f, MINIMAL "route_table = \"routes.txt\";\n", "routes.txt",
                    ":4: unknown pool \"elsewhere\"");
}

static void test_choice_settings_list_the_choices(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "log_level = \"verbose\";\n",
                 ":3: 'log_level' must be one of \"err\", \"warn\", \"info\", \"debug\"");
    expect_error(f, MINIMAL "data = { bare_newline = \"accept\"; };\n",
                 ":3: 'bare_newline' must be one of \"reject\", \"normalize\"");
}

static void test_dns_servers_must_be_numeric(void **state)
{
    struct fixture *f = *state;
    expect_error(f, MINIMAL "dns = {\n  servers = [ \"127.0.0.1\", \"ns.example.com\" ];\n};\n",
                 ":4: 'servers': each entry must be \"ip\" or \"ip:port\"");
    expect_error(f, MINIMAL "dns = { servers = [ \"127.0.0.1:0\" ]; };\n",
                 ":3: 'servers': each entry must be \"ip\" or \"ip:port\"");
}

static void test_errors_in_included_files_name_the_included_file(void **state)
{
    struct fixture *f = *state;
    make_dir(f, "inc");
    write_file(f, "inc/pools.inc",
               "\npools = ( { name = \"a\"; servers = ( \"h\" ); bogus = 1; } );\n");
    expect_error_in(f, LISTEN_LINE "@include \"inc/pools.inc\"\n", "inc/pools.inc",
                    ":2: unknown setting 'bogus'");
    write_file(f, "inc/pools.inc", "\npools = = 1;\n");
    expect_error_in(f, LISTEN_LINE "@include \"inc/pools.inc\"\n", "inc/pools.inc",
                    ":2: syntax error");
}

/* ---- durations and sizes ---- */

static void test_durations_parse_every_unit(void **state)
{
    (void)state;
    int64_t ms = -1;
    assert_int_equal(config_parse_duration("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(config_parse_duration("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(config_parse_duration("10m", &ms), 0);
    assert_int_equal(ms, 600000);
    assert_int_equal(config_parse_duration("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(config_parse_duration("36d", &ms), 0);
    assert_int_equal(ms, 36LL * 86400000);
    assert_int_equal(config_parse_duration("1500", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(config_parse_duration("0", &ms), 0);
    assert_int_equal(ms, 0);
}

static void test_bad_durations_are_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "s", "-1s", "+1s", "1.5s", "1 s", " 1s", "1s ", "1S", "1sec", "1w", "1h30m",
        "9223372036854775807d", "99999999999999999999", "1ms2",
    };
    int64_t ms = 42;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(config_parse_duration(bad[i], &ms), -1);
    assert_int_equal(ms, 42);
    assert_int_equal(config_parse_duration(NULL, &ms), -1);
}

static void test_sizes_use_binary_units(void **state)
{
    (void)state;
    int64_t n = -1;
    assert_int_equal(config_parse_size("512K", &n), 0);
    assert_int_equal(n, 512 * 1024);
    assert_int_equal(config_parse_size("25M", &n), 0);
    assert_int_equal(n, 25 * 1024 * 1024);
    assert_int_equal(config_parse_size("1G", &n), 0);
    assert_int_equal(n, 1024 * 1024 * 1024);
    assert_int_equal(config_parse_size("8g", &n), 0);
    assert_int_equal(n, 8LL * 1024 * 1024 * 1024);
    assert_int_equal(config_parse_size("4096", &n), 0);
    assert_int_equal(n, 4096);
}

static void test_bad_sizes_are_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "K", "-1K", "1.5M", "1 M", "1MB", "1KiB", "1T", "9999999999999G", "12x",
    };
    int64_t n = 42;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(config_parse_size(bad[i], &n), -1);
    assert_int_equal(n, 42);
}

/* ---- conf.d ---- */

static void test_conf_d_entries_are_sorted_by_name(void **state)
{
    struct fixture *f = *state;
    make_dir(f, "conf.d");
    write_file(f, "conf.d/20-greylist.conf", "plugin = \"greylist\";\ndelay = \"5m\";\n");
    write_file(f, "conf.d/10-dnsbl.conf",
               "plugin = \"dnsbl\";\nenabled = false;\nzones = [ \"zen.example\" ];\n");
    write_file(f, "conf.d/Zz.conf", "plugin = \"/usr/lib/x.so\";\n");
    write_file(f, "conf.d/README", "not an entry\n");
    write_file(f, "conf.d/30-off.conf.disabled", "this is not parsed at all\n");
    write_file(f, "conf.d/.hidden.conf", "this is not parsed either\n");
    assert_int_equal(load(f, MINIMAL), 0);
    const struct sluice_config *c = f->cfg;
    assert_int_equal(c->nentries, 3);
    assert_string_equal(c->entries[0].name, "10-dnsbl");
    assert_string_equal(c->entries[0].plugin, "dnsbl");
    assert_false(c->entries[0].enabled);
    assert_string_equal(c->entries[1].name, "20-greylist");
    assert_true(c->entries[1].enabled);
    assert_string_equal(c->entries[2].name, "Zz"); /* strcmp: 'Z' sorts after digits */
    assert_string_equal(c->entries[2].plugin, "/usr/lib/x.so");
    char want[256];
    snprintf(want, sizeof want, "%s/conf.d/20-greylist.conf", f->dir);
    assert_string_equal(c->entries[1].file, want);
}

static void test_conf_d_entry_keeps_the_plugin_settings(void **state)
{
    struct fixture *f = *state;
    make_dir(f, "plugins");
    write_file(f, "plugins/50-tarpit.conf",
               "plugin = \"tarpit\";\ndelay = \"5s\";\nscore = 7;\nnested = { a = 1; };\n");
    assert_int_equal(load(f, MINIMAL "conf_dir = \"plugins\";\n"), 0);
    assert_int_equal(f->cfg->nentries, 1);
    const config_t *cf = f->cfg->entries[0].settings;
    assert_non_null(cf);
    const char *delay = NULL;
    int score = 0, a = 0;
    assert_int_equal(config_lookup_string(cf, "delay", &delay), CONFIG_TRUE);
    assert_string_equal(delay, "5s");
    assert_int_equal(config_lookup_int(cf, "score", &score), CONFIG_TRUE);
    assert_int_equal(score, 7);
    assert_int_equal(config_lookup_int(cf, "nested.a", &a), CONFIG_TRUE);
    assert_int_equal(a, 1);
}

static void test_conf_d_entry_without_plugin_names_its_file(void **state)
{
    struct fixture *f = *state;
    make_dir(f, "conf.d");
    write_file(f, "conf.d/10-ok.conf", "plugin = \"dnsbl\";\n");
    write_file(f, "conf.d/20-bad.conf", "# forgot the plugin\nenabled = true;\n");
    expect_error_in(f, MINIMAL, "conf.d/20-bad.conf",
                    ": missing 'plugin': a chain entry names its plugin");
}

static void test_conf_d_entry_errors_carry_file_and_line(void **state)
{
    struct fixture *f = *state;
    make_dir(f, "conf.d");
    write_file(f, "conf.d/10-x.conf", "\n\nplugin = 5;\n");
    expect_error_in(f, MINIMAL, "conf.d/10-x.conf", ":3: 'plugin' must be a string");
    write_file(f, "conf.d/10-x.conf", "plugin = \"x\";\nenabled = \"no\";\n");
    expect_error_in(f, MINIMAL, "conf.d/10-x.conf", ":2: 'enabled' must be true or false");
    write_file(f, "conf.d/10-x.conf", "plugin = \"x\";\n\nlimit = ;\n");
    expect_error_in(f, MINIMAL, "conf.d/10-x.conf", ":3: syntax error");
}

static void test_missing_conf_dir_means_no_entries(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, MINIMAL "conf_dir = \"/nonexistent/sluice/conf.d\";\n"), 0);
    assert_string_equal(f->cfg->conf_dir, "/nonexistent/sluice/conf.d");
    assert_int_equal(f->cfg->nentries, 0);
}

static void test_threads_zero_means_one_per_core(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, MINIMAL "threads = 0;\n"), 0);
    assert_true(f->cfg->threads >= 1);
    assert_int_equal(load(f, MINIMAL "threads = 7;\n"), 0);
    assert_int_equal(f->cfg->threads, 7);
}

static void test_integers_may_be_strings_only_where_documented(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, MINIMAL "timeouts = { command = 90000; };\n"
                                     "limits = { max_message_size = 1048576; };\n"),
                     0);
    assert_int_equal(f->cfg->command_timeout_ms, 90000);
    assert_int_equal(f->cfg->max_message_size, 1048576);
    expect_error(f, MINIMAL "limits = { max_recipients = \"10\"; };\n",
                 ":3: 'max_recipients' must be an integer");
}

static void pool_share_per_client_is_a_quarter_by_default_0_turns_it_off(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load(f, LISTEN_LINE "pools = ( { name = \"a\"; servers = ( \"127.0.0.1\" ); "
                             "max_connections = 1; }, { name = \"b\"; servers = ( \"127.0.0.1\" ); "
                             "max_connections_per_client = 0; }, { name = \"c\"; servers = ( "
                             "\"127.0.0.1\" ); max_connections = 7; max_connections_per_client = 3; "
                             "} );\n"),
                     0);
    assert_int_equal(f->cfg->pools[0].max_per_client, 1);
    assert_int_equal(f->cfg->pools[1].max_per_client, 0);
    assert_int_equal(f->cfg->pools[2].max_per_client, 3);
    expect_error(f, LISTEN_LINE "pools = ( { name = \"a\"; servers = ( \"127.0.0.1\" ); "
                                "max_connections_per_client = -1; } );\n",
                 ":2: 'max_connections_per_client' must be between 0 and 100000");
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(pool_share_per_client_is_a_quarter_by_default_0_turns_it_off),
        T(test_full_config_loads_every_value),
        T(test_minimal_config_gets_the_documented_defaults),
        T(test_store_connections_metrics_and_plugins_defaults),
        T(test_store_connections_metrics_and_plugins_values),
        T(test_relative_store_and_spool_paths_resolve_beside_sluice_conf),
        T(test_shipped_example_loads),
        T(test_missing_file_is_reported),
        T(test_syntax_error_reports_libconfig_line),
        T(test_unknown_settings_are_named),
        T(test_wrong_types_are_errors),
        T(test_values_out_of_range_are_errors),
        T(test_bad_durations_and_sizes_name_the_setting),
        T(test_listen_errors),
        T(test_pool_errors),
        T(test_route_and_default_pool_errors),
        T(test_route_table_file_errors_name_the_table),
        T(test_choice_settings_list_the_choices),
        T(test_dns_servers_must_be_numeric),
        T(test_errors_in_included_files_name_the_included_file),
        T(test_durations_parse_every_unit),
        T(test_bad_durations_are_refused),
        T(test_sizes_use_binary_units),
        T(test_bad_sizes_are_refused),
        T(test_conf_d_entries_are_sorted_by_name),
        T(test_conf_d_entry_keeps_the_plugin_settings),
        T(test_conf_d_entry_without_plugin_names_its_file),
        T(test_conf_d_entry_errors_carry_file_and_line),
        T(test_missing_conf_dir_means_no_entries),
        T(test_threads_zero_means_one_per_core),
        T(test_integers_may_be_strings_only_where_documented),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
