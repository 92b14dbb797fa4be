/* The Lua bridge without the host: verdict mapping, conversions, the sandbox,
 * the memory cap and the instruction budget, and the helper library. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <lauxlib.h>

#include "lua_bridge.h"
#include "lua_runtime.h"

#define SMALL_BUDGET 100000

static const struct luart_limits default_limits = {
    .max_memory = LUART_DEFAULT_MAX_MEMORY,
    .max_instructions = SMALL_BUDGET,
    .max_time_ms = 10000, /* these tests are about instructions, on a busy machine */
};

/* Runs code as a handler call; returns the status, results left on run->co. */
static enum luart_status run_code(struct luart *rt, struct luart_run *run, const char *code,
                                  int *nres, char *err, size_t errlen)
{
    assert_int_equal(luart_start(rt, run), 0);
    assert_int_equal(luaL_loadbufferx(run->co, code, strlen(code), "=test", "t"), LUA_OK);
    return luart_resume(rt, run, 0, nres, err, errlen);
}

/* The outcome of a chunk's results, or -1 when they are no verdict. */
static int outcome_of(const char *code, struct luab_outcome *o)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(&default_limits, NULL, err, sizeof(err));
    assert_non_null(rt);
    struct luart_run run;
    int nres;
    assert_int_equal(run_code(rt, &run, code, &nres, err, sizeof(err)), LUART_DONE);
    int rc = luab_outcome_from_results(run.co, lua_gettop(run.co) - nres + 1, nres, o, err,
                                       sizeof(err));
    luart_finish(rt, &run);
    luart_free(rt);
    return rc;
}

/* ---- verdicts ------------------------------------------------------------ */

static void nothing_returned_continues(void **state)
{
    struct luab_outcome o;
    assert_int_equal(outcome_of("return", &o), 0);
    assert_int_equal(o.verdict, SLUICE_CONTINUE);
    assert_int_equal(outcome_of("return nil", &o), 0);
    assert_int_equal(o.verdict, SLUICE_CONTINUE);
    assert_int_equal(o.defer_when, SLUICE_HOOK_COUNT);
}

static void verdict_names_map_to_verdicts(void **state)
{
    struct luab_outcome o;
    assert_int_equal(outcome_of("return 'accept'", &o), 0);
    assert_int_equal(o.verdict, SLUICE_ACCEPT);
    assert_int_equal(outcome_of("return 'tempfail'", &o), 0);
    assert_int_equal(o.verdict, SLUICE_TEMPFAIL);
    assert_int_equal(outcome_of("return 'disconnect'", &o), 0);
    assert_int_equal(o.verdict, SLUICE_DISCONNECT);
    assert_int_equal(outcome_of("return 'continue'", &o), 0);
    assert_int_equal(o.verdict, SLUICE_CONTINUE);
}

static void reject_with_code_esc_and_text_keeps_all_three(void **state)
{
    struct luab_outcome o;
    assert_int_equal(outcome_of("return 'reject', 550, '5.7.1', 'no thanks'", &o), 0);
    assert_int_equal(o.verdict, SLUICE_REJECT);
    assert_int_equal(o.code, 550);
    assert_string_equal(o.esc, "5.7.1");
    assert_string_equal(o.text, "no thanks");
}

static void table_verdict_reads_every_field(void **state)
{
    struct luab_outcome o;
    assert_int_equal(
        outcome_of("return {verdict='tempfail', code=451, esc='4.7.1', text='later'}", &o), 0);
    assert_int_equal(o.verdict, SLUICE_TEMPFAIL);
    assert_int_equal(o.code, 451);
    assert_string_equal(o.esc, "4.7.1");
    assert_string_equal(o.text, "later");
    assert_int_equal(outcome_of("return {verdict='reject'}", &o), 0);
    assert_int_equal(o.code, 0);
    assert_string_equal(o.esc, "");
    assert_string_equal(o.text, "");
}

static void defer_verdict_continues_and_names_when(void **state)
{
    struct luab_outcome o;
    assert_int_equal(outcome_of("return {verdict='defer', when='data', text='spam'}", &o), 0);
    assert_int_equal(o.verdict, SLUICE_CONTINUE);
    assert_int_equal(o.defer_when, SLUICE_HOOK_DATA);
    assert_int_equal(outcome_of("return {verdict='defer'}", &o), 0);
    assert_int_equal(o.defer_when, SLUICE_HOOK_RCPT);
    assert_int_equal(outcome_of("return {verdict='defer', when='mail'}", &o), -1);
}

static void anything_else_is_a_script_error(void **state)
{
    struct luab_outcome o;
    assert_int_equal(outcome_of("return 42", &o), -1);
    assert_int_equal(outcome_of("return 'maybe'", &o), -1);
    assert_int_equal(outcome_of("return {}", &o), -1);
    assert_int_equal(outcome_of("return 'reject', 99", &o), -1);
    assert_int_equal(outcome_of("return 'reject', 550, ''", &o), -1);
    assert_int_equal(outcome_of("return 'reject', 550, '5.7.1.1.1.1.1.1.1.1'", &o), -1);
}

static void overlong_text_is_truncated_not_overflowed(void **state)
{
    struct luab_outcome o;
    assert_int_equal(outcome_of("return 'reject', nil, nil, string.rep('x', 5000)", &o), 0);
    assert_int_equal(strlen(o.text), LUAB_TEXT_MAX - 1);
}

static void on_error_names_map_to_outcomes(void **state)
{
    enum luab_on_error e;
    struct luab_outcome o;
    assert_int_equal(luab_on_error_parse("tempfail", &e), 0);
    luab_outcome_for_error(e, &o);
    assert_int_equal(o.verdict, SLUICE_TEMPFAIL);
    assert_int_equal(luab_on_error_parse("continue", &e), 0);
    luab_outcome_for_error(e, &o);
    assert_int_equal(o.verdict, SLUICE_CONTINUE);
    assert_int_equal(luab_on_error_parse("reject", &e), 0);
    luab_outcome_for_error(e, &o);
    assert_int_equal(o.verdict, SLUICE_REJECT);
    assert_int_equal(luab_on_error_parse("accept", &e), -1);
}

/* ---- names and numbers ---------------------------------------------------- */

static void hook_names_round_trip(void **state)
{
    for (int h = 0; h < SLUICE_HOOK_COUNT; h++) {
        enum sluice_hook back;
        assert_int_equal(luab_hook_parse(luab_hook_name((enum sluice_hook)h), &back), 0);
        assert_int_equal(back, h);
    }
    enum sluice_hook hook;
    assert_int_equal(luab_hook_parse("quit", &hook), -1);
    assert_null(luab_hook_name(SLUICE_HOOK_COUNT));
}

static void dns_types_and_scopes_parse(void **state)
{
    enum sluice_dns_type t;
    assert_int_equal(luab_dns_type_parse("txt", &t), 0);
    assert_int_equal(t, SLUICE_DNS_TXT);
    assert_int_equal(luab_dns_type_parse("AAAA", &t), 0);
    assert_int_equal(t, SLUICE_DNS_AAAA);
    assert_int_equal(luab_dns_type_parse("SRV", &t), -1);
    enum sluice_scope sc;
    assert_int_equal(luab_scope_parse("transaction", &sc), 0);
    assert_int_equal(sc, SLUICE_TRANSACTION);
    assert_int_equal(luab_scope_parse("session", &sc), -1);
    assert_string_equal(luab_dns_status_name(SLUICE_DNS_NOTFOUND), "notfound");
    assert_string_equal(luab_kv_status_name(SLUICE_KV_ERROR), "error");
}

static void durations_and_sizes_parse_with_units(void **state)
{
    int64_t v;
    assert_int_equal(luab_duration_parse("250ms", &v), 0);
    assert_int_equal(v, 250);
    assert_int_equal(luab_duration_parse("30s", &v), 0);
    assert_int_equal(v, 30000);
    assert_int_equal(luab_duration_parse("10m", &v), 0);
    assert_int_equal(v, 600000);
    assert_int_equal(luab_duration_parse("1d", &v), 0);
    assert_int_equal(v, 86400000);
    assert_int_equal(luab_duration_parse("1500", &v), 0);
    assert_int_equal(v, 1500);
    assert_int_equal(luab_duration_parse("-1s", &v), -1);
    assert_int_equal(luab_duration_parse("10 parsecs", &v), -1);
    assert_int_equal(luab_duration_parse("99999999999999999999d", &v), -1);
    assert_int_equal(luab_size_parse("64M", &v), 0);
    assert_int_equal(v, 64 * 1024 * 1024);
    assert_int_equal(luab_size_parse("512k", &v), 0);
    assert_int_equal(v, 512 * 1024);
    assert_int_equal(luab_size_parse("3X", &v), -1);
}

/* ---- answers of services -------------------------------------------------- */

static void dns_records_become_a_sequence(void **state)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(&default_limits, NULL, err, sizeof(err));
    const char *rr[] = {"127.0.0.2", "127.0.0.4"};
    luab_push_dns_records(rt->L, rr, 2);
    assert_int_equal(luaL_len(rt->L, -1), 2);
    lua_rawgeti(rt->L, -1, 2);
    assert_string_equal(lua_tostring(rt->L, -1), "127.0.0.4");
    luart_free(rt);
}

static void redis_reply_converts_nested_values(void **state)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(&default_limits, NULL, err, sizeof(err));
    lua_State *L = rt->L;
    struct sluice_redis_reply integer = {.type = SLUICE_REDIS_INTEGER, .integer = 42};
    struct sluice_redis_reply nil = {.type = SLUICE_REDIS_NIL};
    struct sluice_redis_reply str = {.type = SLUICE_REDIS_STRING, .str = "a\0b", .len = 3};
    struct sluice_redis_reply errr = {.type = SLUICE_REDIS_ERROR, .str = "WRONGTYPE", .len = 9};
    const struct sluice_redis_reply *elems[] = {&integer, &nil, &str, &errr};
    struct sluice_redis_reply array = {.type = SLUICE_REDIS_ARRAY, .elements = elems,
                                       .nelements = 4};
    luab_push_redis_reply(L, &array);
    assert_int_equal(luaL_len(L, -1), 4);
    lua_rawgeti(L, -1, 1);
    assert_int_equal(lua_tointeger(L, -1), 42);
    lua_rawgeti(L, -2, 2);
    assert_true(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_rawgeti(L, -3, 3);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "a\0b", 3);
    lua_rawgeti(L, -4, 4);
    lua_getfield(L, -1, "err");
    assert_string_equal(lua_tostring(L, -1), "WRONGTYPE");
    luart_free(rt);
}

/* ---- the sandbox ---------------------------------------------------------- */

static void sandbox_removes_dangerous_functions(void **state)
{
    struct luab_outcome o;
    const char *code =
        "assert(debug == nil and package == nil and require == nil)\n"
        "assert(string.dump == nil and loadfile == nil and dofile == nil)\n"
        "assert(io == nil and os.execute == nil and os.exit == nil and os.remove == nil)\n"
        "assert(type(os.time) == 'function' and type(string.format) == 'function')\n"
        "return 'accept'";
    assert_int_equal(outcome_of(code, &o), 0);
    assert_int_equal(o.verdict, SLUICE_ACCEPT);
}

static void load_accepts_text_and_refuses_binary_chunks(void **state)
{
    struct luab_outcome o;
    const char *code =
        "local f = load('return 1 + 1'); assert(f() == 2)\n"
        "local ok = pcall(load, 'x', 'x', 'b'); assert(not ok)\n"
        "local g, msg = load('\\27Lua' .. string.rep('\\0', 40)); assert(g == nil)\n"
        "return 'accept'";
    assert_int_equal(outcome_of(code, &o), 0);
    assert_int_equal(o.verdict, SLUICE_ACCEPT);
}

static void gc_metamethods_are_refused(void **state)
{
    struct luab_outcome o;
    const char *code = "local ok = pcall(setmetatable, {}, {__gc = function() end})\n"
                       "assert(not ok); setmetatable({}, {__index = {}}); return 'accept'";
    assert_int_equal(outcome_of(code, &o), 0);
    assert_int_equal(o.verdict, SLUICE_ACCEPT);
}

static void operator_switches_enable_io_and_execute(void **state)
{
    char err[LUART_ERR_MAX];
    struct luart_limits lim = default_limits;
    lim.allow_io = true;
    lim.allow_os_execute = true;
    struct luart *rt = luart_new(&lim, NULL, err, sizeof(err));
    struct luart_run run;
    int nres;
    assert_int_equal(run_code(rt, &run,
                              "return type(io.open) == 'function' and "
                              "type(io.popen) == 'function' and type(os.execute) == 'function'",
                              &nres, err, sizeof(err)),
                     LUART_DONE);
    assert_true(lua_toboolean(run.co, -1));
    luart_finish(rt, &run);
    luart_free(rt);
}

/* ---- limits ----------------------------------------------------------------- */

static void expect_error(const struct luart_limits *lim, const char *code, const char *what)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(lim, NULL, err, sizeof(err));
    assert_non_null(rt);
    struct luart_run run;
    int nres;
    assert_int_equal(run_code(rt, &run, code, &nres, err, sizeof(err)), LUART_ERROR);
    if (!strstr(err, what))
        fail_msg("expected '%s' in '%s'", what, err);
    luart_finish(rt, &run);
    /* the state stays usable for the next call */
    assert_int_equal(run_code(rt, &run, "return 'accept'", &nres, err, sizeof(err)), LUART_DONE);
    luart_finish(rt, &run);
    luart_free(rt);
}

static void infinite_loop_is_stopped_by_the_budget(void **state)
{
    expect_error(&default_limits, "while true do end", "instruction budget exhausted");
}

static void infinite_loop_inside_pcall_is_still_stopped(void **state)
{
    expect_error(&default_limits,
                 "for i = 1, 10 do pcall(function() while true do end end) end return 'accept'",
                 "instruction budget exhausted");
}

static void loop_where_yield_is_impossible_is_stopped(void **state)
{
    expect_error(&default_limits,
                 "local t = {3, 2, 1}\n"
                 "pcall(table.sort, t, function(a, b) while true do end end)\n"
                 "while true do end",
                 "instruction budget exhausted");
}

static void memory_cap_fails_the_call_not_the_process(void **state)
{
    struct luart_limits lim = default_limits;
    lim.max_memory = 2 * 1024 * 1024;
    lim.max_instructions = 100000000;
    expect_error(&lim, "local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 100) .. i end",
                 "not enough memory");
}

static void runtime_error_names_file_and_line(void **state)
{
    char path[] = "/tmp/test_lua_bridge_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *code = "local x = 1\n\nlocal y = nil + x\n";
    assert_int_equal(write(fd, code, strlen(code)), (ssize_t)strlen(code));
    close(fd);
    char err[LUART_ERR_MAX], want[256];
    struct luart *rt = luart_new(&default_limits, NULL, err, sizeof(err));
    struct luart_run run;
    int nres;
    assert_int_equal(luart_start(rt, &run), 0);
    assert_int_equal(luart_load_file(&run, path, err, sizeof(err)), 0);
    assert_int_equal(luart_resume(rt, &run, 0, &nres, err, sizeof(err)), LUART_ERROR);
    snprintf(want, sizeof(want), "%s:3:", path);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("expected '%s' at the start of '%s'", want, err);
    luart_finish(rt, &run);
    luart_free(rt);
    unlink(path);
}

static void syntax_error_names_file_and_line(void **state)
{
    char path[] = "/tmp/test_lua_bridge_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *code = "sluice.on('rcpt', function(s)\n  return 'accept'\n\n";
    assert_int_equal(write(fd, code, strlen(code)), (ssize_t)strlen(code));
    close(fd);
    char err[LUART_ERR_MAX], want[256];
    struct luart *rt = luart_new(&default_limits, NULL, err, sizeof(err));
    struct luart_run run;
    assert_int_equal(luart_start(rt, &run), 0);
    assert_int_equal(luart_load_file(&run, path, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s:4:", path);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("expected '%s' at the start of '%s'", want, err);
    luart_finish(rt, &run);
    luart_free(rt);
    unlink(path);
}

static void plain_yield_suspends_without_error(void **state)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(&default_limits, NULL, err, sizeof(err));
    struct luart_run run;
    int nres;
    assert_int_equal(run_code(rt, &run, "local v = coroutine.yield() return 'reject', v", &nres,
                              err, sizeof(err)),
                     LUART_YIELDED);
    lua_pushinteger(run.co, 554);
    assert_int_equal(luart_resume(rt, &run, 1, &nres, err, sizeof(err)), LUART_DONE);
    struct luab_outcome o;
    assert_int_equal(
        luab_outcome_from_results(run.co, lua_gettop(run.co) - nres + 1, nres, &o, err, 100), 0);
    assert_int_equal(o.code, 554);
    luart_finish(rt, &run);
    luart_free(rt);
}

static void malformed_codes_and_texts_are_script_errors(void **state)
{
    struct luab_outcome o;
    const char *bad[] = {
        "return 'reject', 550, '5.7.1\\r\\n250 x'",
        "return 'reject', 550, '3.7.1'",
        "return 'reject', 550, '5.7'",
        "return 'reject', 550, '5.7.1 '",
        "return 'reject', 550, '5.x.1'",
        "return 'reject', 550, 5.7",
        "return 'reject', 999",
        "return 'reject', 199",
        "return 'reject', 550.5",
        "return 'reject', 550, '5.7.1', 'a\\r\\n250 2.0.0 fake'",
        "return 'reject', 550, '5.7.1', 'a\\nb'",
        "return 'reject', 550, '5.7.1', 'a\\0b'",
        "return {verdict = 'reject', esc = '5.7.1\\n'}",
        "return {verdict = 'reject', text = {}}",
        "return {verdict = 'reject', text = 42}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (outcome_of(bad[i], &o) != -1)
            fail_msg("accepted: %s", bad[i]);
    assert_int_equal(outcome_of("return 'reject', 553, '5.123.999', 'tab\\there'", &o), 0);
    assert_string_equal(o.esc, "5.123.999");
}

static void log_lines_escape_control_bytes(void **state)
{
    char out[64];
    const char in[] = "a\r\nb\0c\x1b\x7f d";
    size_t n = luab_escape_line(in, sizeof(in) - 1, out, sizeof(out));
    assert_string_equal(out, "a\\x0d\\x0ab\\x00c\\x1b\\x7f d");
    assert_int_equal(n, strlen(out));
    /* truncation never splits an escape or overflows */
    char small[8];
    luab_escape_line("ab\ncdef", 7, small, sizeof(small));
    assert_string_equal(small, "ab\\x0ac");
    luab_escape_line("abc", 3, small, 1);
    assert_string_equal(small, "");
}

/* ---- the helper library ----------------------------------------------------- */

static struct luart *helpers_state(void)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(&default_limits, NULL, err, sizeof(err));
    assert_non_null(rt);
    assert_int_equal(luaL_loadfilex(rt->L, LUA_HELPERS_PATH, "t"), LUA_OK);
    lua_newtable(rt->L);
    lua_newtable(rt->L);
    lua_setfield(rt->L, -2, "options");
    lua_pushvalue(rt->L, -1);
    lua_setglobal(rt->L, "sluice");
    assert_int_equal(lua_pcall(rt->L, 1, 0, 0), LUA_OK);
    return rt;
}

static void helper_verdicts_map_like_tables(void **state)
{
    struct luart *rt = helpers_state();
    char err[LUART_ERR_MAX];
    struct luart_run run;
    int nres;
    struct luab_outcome o;
    assert_int_equal(run_code(rt, &run, "return sluice.reject(550, '5.7.1', 'go away')", &nres,
                              err, sizeof(err)),
                     LUART_DONE);
    assert_int_equal(luab_outcome_from_results(run.co, -1, 1, &o, err, sizeof(err)), 0);
    assert_int_equal(o.verdict, SLUICE_REJECT);
    assert_int_equal(o.code, 550);
    assert_string_equal(o.text, "go away");
    luart_finish(rt, &run);
    assert_int_equal(run_code(rt, &run, "return sluice.tempfail('busy')", &nres, err, 200),
                     LUART_DONE);
    assert_int_equal(luab_outcome_from_results(run.co, -1, 1, &o, err, sizeof(err)), 0);
    assert_int_equal(o.verdict, SLUICE_TEMPFAIL);
    assert_int_equal(o.code, 0);
    assert_string_equal(o.text, "busy");
    luart_finish(rt, &run);
    luart_free(rt);
}

static void helper_address_and_ip_functions(void **state)
{
    struct luart *rt = helpers_state();
    char err[LUART_ERR_MAX];
    struct luart_run run;
    int nres;
    const char *code =
        "local lp, d = sluice.address_parts('Bob@Example.TEST')\n"
        "assert(lp == 'Bob' and d == 'example.test')\n"
        "assert(sluice.address_parts('') == nil and sluice.domain('x') == nil)\n"
        "assert(sluice.is_ip('192.0.2.1') and sluice.is_ip('[192.0.2.1]'))\n"
        "assert(sluice.is_ip('[IPv6:2001:db8::1]') and not sluice.is_ip('mail.test'))\n"
        "assert(not sluice.is_ip('300.1.1.1'))\n"
        "assert(sluice.reverse_ip('192.0.2.1') == '1.2.0.192')\n"
        "local r = sluice.reverse_ip('2001:db8::1')\n"
        "assert(r == '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2', r)\n"
        "assert(sluice.set{'A.test'}['a.test'])\n"
        "return 'accept'";
    assert_int_equal(run_code(rt, &run, code, &nres, err, sizeof(err)), LUART_DONE);
    luart_finish(rt, &run);
    luart_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nothing_returned_continues),
        cmocka_unit_test(verdict_names_map_to_verdicts),
        cmocka_unit_test(reject_with_code_esc_and_text_keeps_all_three),
        cmocka_unit_test(table_verdict_reads_every_field),
        cmocka_unit_test(defer_verdict_continues_and_names_when),
        cmocka_unit_test(anything_else_is_a_script_error),
        cmocka_unit_test(overlong_text_is_truncated_not_overflowed),
        cmocka_unit_test(on_error_names_map_to_outcomes),
        cmocka_unit_test(hook_names_round_trip),
        cmocka_unit_test(dns_types_and_scopes_parse),
        cmocka_unit_test(durations_and_sizes_parse_with_units),
        cmocka_unit_test(dns_records_become_a_sequence),
        cmocka_unit_test(redis_reply_converts_nested_values),
        cmocka_unit_test(sandbox_removes_dangerous_functions),
        cmocka_unit_test(load_accepts_text_and_refuses_binary_chunks),
        cmocka_unit_test(gc_metamethods_are_refused),
        cmocka_unit_test(operator_switches_enable_io_and_execute),
        cmocka_unit_test(infinite_loop_is_stopped_by_the_budget),
        cmocka_unit_test(infinite_loop_inside_pcall_is_still_stopped),
        cmocka_unit_test(loop_where_yield_is_impossible_is_stopped),
        cmocka_unit_test(memory_cap_fails_the_call_not_the_process),
        cmocka_unit_test(runtime_error_names_file_and_line),
        cmocka_unit_test(syntax_error_names_file_and_line),
        cmocka_unit_test(plain_yield_suspends_without_error),
        cmocka_unit_test(malformed_codes_and_texts_are_script_errors),
        cmocka_unit_test(log_lines_escape_control_bytes),
        cmocka_unit_test(helper_verdicts_map_like_tables),
        cmocka_unit_test(helper_address_and_ip_functions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
