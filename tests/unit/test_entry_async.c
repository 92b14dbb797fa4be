/* The SDK's entry-level timers and DNS (sluice_entry_timer,
 * sluice_entry_dns_query) through the real loader and chain: armed in
 * thread_init or from a hook, they fire on the loop with the thread's state;
 * retiring the chain on the thread cancels what is outstanding before the
 * plugin's thread_fini, so no callback runs after it (ASan: nothing leaks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include <sluice/async.h>

#include "config.h"
#include "dns.h"
#include "hooks.h"
#include "plugin_host.h"
#include "session_internal.h"
#include "worker.h"

#include "chain_fixture.h"

#define LOOP_LIMIT_MS 5000

struct fixture {
    char dir[64];
    char record[128];
    struct sluice_config *cfg;
    struct chain *chain;
    struct worker worker;
    struct loop loop;
    int silent_dns; /* a UDP socket that never answers */
    bool hook_done;
};

/* What the plugin recorded so far ("" when nothing). */
static const char *recorded(struct fixture *f)
{
    static char text[4096];
    text[0] = '\0';
    FILE *fp = fopen(f->record, "r");
    if (!fp)
        return text;
    size_t n = fread(text, 1, sizeof text - 1, fp);
    text[n] = '\0';
    fclose(fp);
    return text;
}

static int silent_dns_port(struct fixture *f)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    f->silent_dns = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(f->silent_dns >= 0);
    assert_int_equal(bind(f->silent_dns, (struct sockaddr *)&sin, len), 0);
    assert_int_equal(getsockname(f->silent_dns, (struct sockaddr *)&sin, &len), 0);
    return ntohs(sin.sin_port);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/sluice-entry-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->record, sizeof f->record, "%s/record", f->dir);
    char path[256];
    snprintf(path, sizeof path, "%s/conf.d", f->dir);
    assert_int_equal(mkdir(path, 0755), 0);
    f->loop.base = event_base_new();
    f->loop.worker = &f->worker;
    f->worker.loops = &f->loop;
    f->worker.nloops = 1;
    char err[256];
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", silent_dns_port(f));
    char *servers[] = {server};
    struct dns_conf dc = {.servers = servers, .nservers = 1, .timeout_ms = 30000, .tries = 1};
    f->loop.dns = dns_ctx_new(f->loop.base, &dc, NULL, err, sizeof err);
    assert_non_null(f->loop.dns);
    loop_current = &f->loop;
    *state = f;
    return 0;
}

static void drop_chain(struct fixture *f)
{
    cf_drop_chain(&f->cfg, &f->chain);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    drop_chain(f);
    loop_current = NULL;
    dns_ctx_free(f->loop.dns);
    event_base_free(f->loop.base);
    close(f->silent_dns);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* One entry of plugin with settings; the chain is built and thread_init run. */
static void start(struct fixture *f, const char *plugin, const char *settings)
{
    char path[256], text[1024], err[1024];
    snprintf(path, sizeof path, "%s/conf.d/10-entry.conf", f->dir);
    snprintf(text, sizeof text, "plugin = \"%s\";\nrecord = \"%s\";\n%s\n", cf_plugin_path(plugin),
             f->record, settings);
    cf_write_file(path, text);
    if (cf_load_chain(f->dir, &f->worker, &f->cfg, &f->chain, err, sizeof err) < 0)
        fail_msg("config or chain: %s", err);
}

static void stop_loop(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

/* Runs the loop for ms (bounded), or until the record holds want. */
static void run_loop(struct fixture *f, int64_t ms, const char *want)
{
    struct timeval limit = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    struct event *guard = evtimer_new(f->loop.base, stop_loop, f->loop.base);
    evtimer_add(guard, &limit);
    for (int i = 0; i < 10000 && evtimer_pending(guard, NULL); i++) {
        if (want && strstr(recorded(f), want))
            break;
        event_base_loop(f->loop.base, EVLOOP_ONCE);
    }
    event_free(guard);
}

static void test_timer_armed_in_thread_init_fires_and_rearms_with_the_thread_state(void **state)
{
    struct fixture *f = *state;
    start(f, "entry_timer", "delay = 20;\nrepeat = 3;");
    run_loop(f, LOOP_LIMIT_MS, "fired 3\n");
    assert_string_equal(recorded(f), "fired 1\nfired 2\nfired 3\n");
    drop_chain(f);
    assert_string_equal(recorded(f), "fired 1\nfired 2\nfired 3\nthread_fini fired=3\n");
}

static void test_retiring_the_chain_cancels_a_pending_timer_before_thread_fini(void **state)
{
    struct fixture *f = *state;
    start(f, "entry_timer", "delay = 100;");
    drop_chain(f);
    run_loop(f, 300, NULL);
    assert_string_equal(recorded(f), "thread_fini fired=0\n");
}

static void test_retiring_the_chain_cancels_a_pending_dns_query(void **state)
{
    struct fixture *f = *state;
    start(f, "entry_timer", "delay = 60000;\ndns_name = \"pending.example\";");
    run_loop(f, 200, NULL); /* the query is out; the silent server never answers */
    drop_chain(f);
    run_loop(f, 200, NULL);
    assert_string_equal(recorded(f), "thread_fini fired=0\n");
}

static void test_entry_services_refused_off_a_loop_thread(void **state)
{
    struct fixture *f = *state;
    start(f, "entry_timer", "delay = 60000;");
    sluice_entry *e = (sluice_entry *)&f->chain->entries[0];
    loop_current = NULL;
    assert_int_equal(sluice_entry_timer(e, 0, NULL, NULL), -1);
    assert_int_equal(sluice_entry_dns_query(e, "a.example", SLUICE_DNS_A, 0, NULL, NULL), -1);
    loop_current = &f->loop;
    drop_chain(f);
    assert_string_equal(recorded(f), "thread_fini fired=0\n");
}

static bool hook_continued;

static void hook_done(struct session *s, const struct hook_verdict *v)
{
    hook_continued = v->kind == VERDICT_CONTINUE;
}

static void test_timer_armed_from_a_hook_fires_on_the_loop(void **state)
{
    struct fixture *f = *state;
    start(f, "entry_timer", "delay = 60000;");
    struct session *s = calloc(1, sizeof *s);
    s->loop = &f->loop;
    s->cfg = f->cfg;
    s->chain = f->chain;
    s->txn.pool = -1;
    snprintf(s->sid, sizeof s->sid, "ENTRYTEST");
    session_plugins_init(s);
    hook_continued = false;
    hooks_run(s, HOOK_CONNECT, hook_done);
    run_loop(f, LOOP_LIMIT_MS, "hook timer\n");
    assert_true(hook_continued);
    session_plugins_free(s);
    free(s);
    drop_chain(f);
    assert_string_equal(recorded(f), "hook timer\nthread_fini fired=0\n");
}

static void test_plugin_built_for_abi_1_0_still_loads(void **state)
{
    struct fixture *f = *state;
    char path[256], err[1024];
    snprintf(path, sizeof path, "%s/conf.d/10-old.conf", f->dir);
    char text[600];
    snprintf(text, sizeof text, "plugin = \"%s\";\n", cf_plugin_path("abi_1_0"));
    cf_write_file(path, text);
    if (cf_load_chain(f->dir, &f->worker, &f->cfg, &f->chain, err, sizeof err) < 0)
        fail_msg("an ABI 1.0 plugin was refused: %s", err);
    assert_int_equal(f->chain->entries[0].plugin->abi_minor, 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_timer_armed_in_thread_init_fires_and_rearms_with_the_thread_state),
        T(test_retiring_the_chain_cancels_a_pending_timer_before_thread_fini),
        T(test_retiring_the_chain_cancels_a_pending_dns_query),
        T(test_entry_services_refused_off_a_loop_thread),
        T(test_timer_armed_from_a_hook_fires_on_the_loop),
        T(test_plugin_built_for_abi_1_0_still_loads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
