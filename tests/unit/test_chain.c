/* The chain at a hook: order of entries, every verdict at every hook,
 * pending verdicts resumed by a timer or decided by the entry's timeout,
 * and deferred rejection. Real plugins (tests/plugins, built into
 * SLUICE_TEST_PLUGINS) run through the real loader and chain against a
 * session that has no connection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "hooks.h"
#include "plugin_host.h"
#include "session_internal.h"
#include "worker.h"

#include "chain_fixture.h"

#define LOOP_LIMIT_MS 5000

struct fixture {
    char dir[64];
    struct sluice_config *cfg;
    struct chain *chain;
    struct worker worker;
    struct loop loop;
    struct session *s;
    bool done;
    struct hook_verdict verdict;
};

static struct fixture *current;

/* One conf.d entry: name, plugin, then its settings as libconfig text. */
static void entry(struct fixture *f, const char *name, const char *plugin, const char *settings)
{
    char path[256], text[1024];
    snprintf(path, sizeof path, "%s/conf.d/%s.conf", f->dir, name);
    snprintf(text, sizeof text, "plugin = \"%s\";\n%s\n", cf_plugin_path(plugin), settings);
    cf_write_file(path, text);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/sluice-chain-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    char path[256];
    snprintf(path, sizeof path, "%s/conf.d", f->dir);
    assert_int_equal(mkdir(path, 0755), 0);
    f->loop.base = event_base_new();
    f->loop.worker = &f->worker;
    f->worker.loops = &f->loop;
    f->worker.nloops = 1;
    current = f;
    *state = f;
    return 0;
}

static void remove_tree(const char *dir)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void drop_session(struct fixture *f)
{
    if (!f->s)
        return;
    session_plugins_free(f->s);
    free(f->s->cur_rcpt_addr);
    free(f->s);
    f->s = NULL;
}

static void drop_chain(struct fixture *f)
{
    drop_session(f);
    cf_drop_chain(&f->cfg, &f->chain);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    drop_chain(f);
    event_base_free(f->loop.base);
    remove_tree(f->dir);
    free(f);
    return 0;
}

/* Loads the conf.d written so far and gives a fresh session on it. */
static void start(struct fixture *f)
{
    char err[1024];
    if (cf_load_chain(f->dir, &f->worker, &f->cfg, &f->chain, err, sizeof err) < 0)
        fail_msg("config or chain: %s", err);
    f->s = calloc(1, sizeof *f->s);
    f->s->loop = &f->loop;
    f->s->cfg = f->cfg;
    f->s->chain = f->chain;
    f->s->txn.pool = -1;
    snprintf(f->s->sid, sizeof f->s->sid, "CHAINTEST");
    session_plugins_init(f->s);
}

static void guard_fired(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static void hook_done(struct session *s, const struct hook_verdict *v)
{
    current->done = true;
    current->verdict = *v;
}

/* Runs the chain at point and waits (bounded) for its verdict. */
static enum hook_verdict_kind run(struct fixture *f, enum hook_point point, const char *rcpt)
{
    f->done = false;
    free(f->s->cur_rcpt_addr);
    f->s->cur_rcpt_addr = rcpt ? strdup(rcpt) : NULL;
    hooks_run(f->s, point, hook_done);
    struct timeval limit = {.tv_sec = LOOP_LIMIT_MS / 1000};
    struct event *guard = evtimer_new(f->loop.base, guard_fired, f->loop.base);
    evtimer_add(guard, &limit);
    while (!f->done && event_base_loop(f->loop.base, EVLOOP_ONCE) == 0) {
        if (!evtimer_pending(guard, NULL))
            break;
    }
    event_free(guard);
    assert_true(f->done);
    return f->verdict.kind;
}

static const char *const hook_setting[] = {"connect", "helo", "mail", "rcpt", "data", "eom"};
static const char *const verdict_setting[] = {"continue", "accept", "reject", "tempfail",
                                              "disconnect"};
static const enum hook_verdict_kind verdict_kind[] = {
    VERDICT_CONTINUE, VERDICT_ACCEPT, VERDICT_REJECT, VERDICT_TEMPFAIL, VERDICT_DISCONNECT};

static void test_every_verdict_at_every_hook_reaches_the_session(void **state)
{
    struct fixture *f = *state;
    for (size_t h = 0; h < 6; h++) {
        for (size_t v = 0; v < 5; v++) {
            char settings[200];
            snprintf(settings, sizeof settings, "hook = \"%s\";\nverdict = \"%s\";",
                     hook_setting[h], verdict_setting[v]);
            entry(f, "10-verdict", "verdicts", settings);
            start(f);
            for (size_t other = 0; other < 6; other++) {
                enum hook_verdict_kind got = run(f, (enum hook_point)other, "u@a.example");
                enum hook_verdict_kind want = other == h ? verdict_kind[v] : VERDICT_CONTINUE;
                if (got != want)
                    fail_msg("verdict %s at %s: hook %s gave %d, want %d", verdict_setting[v],
                             hook_setting[h], hook_setting[other], got, want);
            }
            drop_chain(f);
        }
    }
}

static void test_disconnect_hook_ignores_verdicts_and_runs_every_entry(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-reject", "verdicts", "hook = \"disconnect\"; verdict = \"reject\";");
    entry(f, "20-reject", "verdicts", "hook = \"disconnect\"; verdict = \"disconnect\";");
    start(f);
    assert_int_equal(run(f, HOOK_DISCONNECT, NULL), VERDICT_CONTINUE);
}

static void test_first_deciding_entry_in_file_name_order_wins(void **state)
{
    struct fixture *f = *state;
    entry(f, "20-reject", "verdicts", "hook = \"mail\"; verdict = \"reject\";");
    entry(f, "10-accept", "verdicts", "hook = \"mail\"; verdict = \"accept\";");
    entry(f, "05-continue", "verdicts", "hook = \"mail\"; verdict = \"continue\";");
    start(f);
    assert_string_equal(f->chain->entries[0].name, "05-continue");
    assert_string_equal(f->chain->entries[1].name, "10-accept");
    assert_string_equal(f->chain->entries[2].name, "20-reject");
    /* accept skips the rest of the chain for this hook: the reject never runs */
    assert_int_equal(run(f, HOOK_MAIL, NULL), VERDICT_ACCEPT);
}

static void test_reject_before_accept_rejects(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-reject", "verdicts", "hook = \"rcpt\"; verdict = \"reject\";");
    entry(f, "20-accept", "verdicts", "hook = \"rcpt\"; verdict = \"accept\";");
    start(f);
    assert_int_equal(run(f, HOOK_RCPT, "u@a.example"), VERDICT_REJECT);
}

static void test_same_plugin_twice_with_different_options_acts_twice(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-helo", "verdicts", "hook = \"helo\"; verdict = \"tempfail\";");
    entry(f, "20-rcpt", "verdicts", "hook = \"rcpt\"; verdict = \"reject\";");
    start(f);
    assert_int_equal(f->chain->n, 2);
    assert_int_equal(run(f, HOOK_HELO, NULL), VERDICT_TEMPFAIL);
    assert_int_equal(run(f, HOOK_MAIL, NULL), VERDICT_CONTINUE);
    assert_int_equal(run(f, HOOK_RCPT, "u@a.example"), VERDICT_REJECT);
}

static void test_disabled_entry_is_not_in_the_chain(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-reject", "verdicts", "hook = \"mail\"; verdict = \"reject\"; enabled = false;");
    start(f);
    assert_int_equal(f->chain->n, 0);
    assert_int_equal(run(f, HOOK_MAIL, NULL), VERDICT_CONTINUE);
}

static void test_pending_entry_resumes_with_its_verdict_after_the_timer(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-wait", "pending_timer", "hook = \"helo\"; delay = \"50ms\"; verdict = \"reject\";");
    entry(f, "20-never", "verdicts", "hook = \"helo\"; verdict = \"accept\";");
    start(f);
    assert_int_equal(run(f, HOOK_HELO, NULL), VERDICT_REJECT);
}

static void test_pending_entry_resuming_continue_lets_the_next_entry_decide(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-wait", "pending_timer", "hook = \"mail\"; delay = \"30ms\"; verdict = \"continue\";");
    entry(f, "20-tempfail", "verdicts", "hook = \"mail\"; verdict = \"tempfail\";");
    start(f);
    assert_int_equal(run(f, HOOK_MAIL, NULL), VERDICT_TEMPFAIL);
}

static void test_pending_past_the_entry_timeout_takes_on_timeout(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-slow", "pending_timer",
          "hook = \"mail\"; delay = \"3s\"; verdict = \"accept\"; timeout = \"100ms\";");
    start(f);
    assert_int_equal(run(f, HOOK_MAIL, NULL), VERDICT_TEMPFAIL);
    drop_chain(f);
    entry(f, "10-slow", "pending_timer",
          "hook = \"mail\"; delay = \"3s\"; verdict = \"reject\"; timeout = \"100ms\";"
          " on_timeout = \"continue\";");
    start(f);
    assert_int_equal(run(f, HOOK_MAIL, NULL), VERDICT_CONTINUE);
}

static void test_deferred_rejection_refuses_rcpt_but_not_postmaster(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-defer", "defer_reject", "");
    start(f);
    assert_int_equal(run(f, HOOK_CONNECT, NULL), VERDICT_CONTINUE);
    assert_int_equal(run(f, HOOK_RCPT, "u@a.example"), VERDICT_REJECT);
    assert_int_equal(f->verdict.code, 550);
    assert_int_equal(run(f, HOOK_RCPT, "postmaster@a.example"), VERDICT_CONTINUE);
    assert_int_equal(run(f, HOOK_RCPT, "Postmaster"), VERDICT_CONTINUE);
}

static void test_accept_at_rcpt_clears_the_deferred_rejection_for_that_recipient_only(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-defer", "defer_reject", "");
    entry(f, "20-allow", "allow_rcpt", "rcpt = \"vip@a.example\";");
    start(f);
    run(f, HOOK_CONNECT, NULL);
    assert_int_equal(run(f, HOOK_RCPT, "vip@a.example"), VERDICT_ACCEPT);
    assert_int_equal(run(f, HOOK_RCPT, "u@a.example"), VERDICT_REJECT);
}

static void test_accept_at_mail_clears_the_deferred_rejection_for_the_session(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-defer", "defer_reject", "");
    entry(f, "20-accept", "verdicts", "hook = \"mail\"; verdict = \"accept\";");
    start(f);
    run(f, HOOK_CONNECT, NULL);
    assert_int_equal(run(f, HOOK_MAIL, NULL), VERDICT_ACCEPT);
    assert_int_equal(run(f, HOOK_RCPT, "u@a.example"), VERDICT_CONTINUE);
}

static void test_deferred_to_data_lets_rcpt_pass_and_refuses_data(void **state)
{
    struct fixture *f = *state;
    entry(f, "10-defer", "defer_reject", "when = \"data\";");
    start(f);
    run(f, HOOK_CONNECT, NULL);
    assert_int_equal(run(f, HOOK_RCPT, "u@a.example"), VERDICT_CONTINUE);
    assert_int_equal(run(f, HOOK_DATA, NULL), VERDICT_REJECT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_every_verdict_at_every_hook_reaches_the_session),
        T(test_disconnect_hook_ignores_verdicts_and_runs_every_entry),
        T(test_first_deciding_entry_in_file_name_order_wins),
        T(test_reject_before_accept_rejects),
        T(test_same_plugin_twice_with_different_options_acts_twice),
        T(test_disabled_entry_is_not_in_the_chain),
        T(test_pending_entry_resumes_with_its_verdict_after_the_timer),
        T(test_pending_entry_resuming_continue_lets_the_next_entry_decide),
        T(test_pending_past_the_entry_timeout_takes_on_timeout),
        T(test_deferred_rejection_refuses_rcpt_but_not_postmaster),
        T(test_accept_at_rcpt_clears_the_deferred_rejection_for_that_recipient_only),
        T(test_accept_at_mail_clears_the_deferred_rejection_for_the_session),
        T(test_deferred_to_data_lets_rcpt_pass_and_refuses_data),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
