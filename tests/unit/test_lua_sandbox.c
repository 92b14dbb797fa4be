/* Hostile scripts against the Lua runtime: nothing a script does may crash
 * the process or hold the thread past the call's budget and deadline. Each
 * test runs a call and checks it failed with the budget's error, quickly,
 * and that the state still serves the next call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <lauxlib.h>

#include "lua_bridge.h"
#include "lua_runtime.h"

#define BUDGET 1000000
#define MAX_TIME_MS 200
/* what "stopped quickly" means: the deadline and a wide margin for a busy
 * machine under ASan (timing tests assert only wide bounds) */
#define STOP_BOUND_MS (MAX_TIME_MS + 2000)

static const struct luart_limits limits = {
    .max_memory = LUART_DEFAULT_MAX_MEMORY,
    .max_instructions = BUDGET,
    .max_time_ms = MAX_TIME_MS,
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static enum luart_status run_in(struct luart *rt, struct luart_run *run, const char *code,
                                char *err, size_t errlen)
{
    int nres;
    assert_int_equal(luart_start(rt, run), 0);
    assert_int_equal(luaL_loadbufferx(run->co, code, strlen(code), "=hostile", "t"), LUA_OK);
    return luart_resume(rt, run, 0, &nres, err, errlen);
}

/* The state serves a normal call after the hostile one. */
static void still_serves(struct luart *rt)
{
    char err[LUART_ERR_MAX];
    struct luart_run run;
    const char *code = "local t = {} for i = 1, 100 do t[i] = ('x'):rep(10) end\n"
                       "assert(collectgarbage('isrunning'))\n"
                       "return ('a b c'):gsub(' ', '-')";
    enum luart_status st = run_in(rt, &run, code, err, sizeof(err));
    if (st != LUART_DONE)
        fail_msg("the next call failed: %s", err);
    assert_string_equal(lua_tostring(run.co, -2), "a-b-c");
    luart_finish(rt, &run);
}

/* Runs code with lim; expects a failure naming what, within STOP_BOUND_MS. */
static void expect_stopped_with(const struct luart_limits *lim, const char *code,
                                const char *what)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(lim, NULL, err, sizeof(err));
    assert_non_null(rt);
    struct luart_run run;
    double start = now_ms();
    enum luart_status st = run_in(rt, &run, code, err, sizeof(err));
    double took = now_ms() - start;
    if (st != LUART_ERROR)
        fail_msg("'%s' was not stopped (status %d)", code, (int)st);
    if (!strstr(err, what))
        fail_msg("expected '%s' in '%s'", what, err);
    if (took > STOP_BOUND_MS)
        fail_msg("'%s' held the thread %.0f ms", code, took);
    luart_finish(rt, &run);
    still_serves(rt);
    luart_free(rt);
}

static void expect_stopped(const char *code)
{
    expect_stopped_with(&limits, code, "budget exhausted");
}

static void expect_error(const char *code, const char *what)
{
    expect_stopped_with(&limits, code, what);
}

/* ---- message handlers and metamethods ------------------------------------------ */

static void xpcall_handler_looping_after_the_budget_error_is_stopped(void **state)
{
    expect_stopped("xpcall(function() while true do end end, function() while true do end end)");
    expect_stopped("xpcall(error, function() while true do end end)");
    expect_stopped("while true do xpcall(error, function() while true do end end) end");
    expect_stopped("local function h() return xpcall(error, h) end\n"
                   "xpcall(function() while true do end end, h) while true do end");
}

static void loops_in_metamethods_called_from_c_are_stopped(void **state)
{
    const char *spin = "function() while true do end end";
    const char *mms[] = {"__index", "__len", "__eq", "__lt", "__le", "__concat", "__tostring",
                         "__call", "__newindex", "__unm", "__add"};
    const char *use[] = {"return t.x", "return #t", "return t == setmetatable({}, mt)",
                         "return t < t", "return t <= t", "return t .. 'x'", "return tostring(t)",
                         "return t()", "t.x = 1", "return -t", "return t + 1"};
    for (size_t i = 0; i < sizeof(mms) / sizeof(mms[0]); i++) {
        char code[512];
        snprintf(code, sizeof(code), "mt = {%s = %s}\nlocal t = setmetatable({}, mt)\n%s", mms[i],
                 spin, use[i]);
        expect_stopped(code);
    }
    expect_stopped("table.sort({3, 2, 1, 5, 4}, function() while true do end end)");
    expect_stopped("local t = setmetatable({}, {__index = tostring})\n"
                   "return table.concat(t, '', 1, 1e12)");
    expect_stopped("local t = setmetatable({}, {__index = function() return 'x' end,\n"
                   "  __len = function() return 1e12 end})\n"
                   "return table.concat(t)");
}

static void close_and_gc_metamethods_are_refused(void **state)
{
    expect_error("setmetatable({}, {__close = function() end})", "__close metamethods");
    expect_error("setmetatable({}, {__gc = false})", "__gc metamethods");
    /* a __gc hidden behind __index is still seen: the check reads raw */
    expect_error("local mt = setmetatable({__gc = function() end}, {__index = function() end})\n"
                 "setmetatable({}, mt)",
                 "__gc metamethods");
}

static void error_objects_are_never_converted_by_the_host(void **state)
{
    expect_error("error(setmetatable({}, {__tostring = function() while true do end end}))",
                 "error object is not a string");
    expect_error("error(setmetatable({}, {__tostring = function() error('x') end}))",
                 "error object is not a string");
    expect_error("error(nil)", "error object is not a string");
}

static void string_metatable_cannot_be_changed(void **state)
{
    expect_error("getmetatable('').__index = function() while true do end end",
                 "attempt to index");
    expect_error("setmetatable('', {})", "bad argument");
}

/* ---- coroutines ------------------------------------------------------------------- */

static void coroutines_of_the_script_share_its_budget(void **state)
{
    expect_stopped("coroutine.wrap(function() while true do end end)()");
    expect_stopped("while true do coroutine.resume(coroutine.create(function()\n"
                   "  while true do end end)) end");
    expect_stopped("local co = coroutine.create(function() while true do end end)\n"
                   "coroutine.resume(co) coroutine.close(co) while true do end");
    expect_stopped("local co = coroutine.wrap(function() while true do coroutine.yield() end end)\n"
                   "while true do co() end");
}

/* ---- C functions with work of their own ---------------------------------------- */

static void string_rep_bombs_hit_the_budget_or_the_memory_cap(void **state)
{
    expect_stopped("return string.rep('', 1e15)");
    expect_stopped("return string.rep('', 1e15, '')");
    expect_error("return string.rep('x', 1e10)", "budget exhausted");
    struct luart_limits small = limits;
    small.max_instructions = INT64_MAX / 2;
    expect_stopped_with(&small, "return string.rep('x', 3e8)", "not enough memory");
    expect_stopped_with(&small, "local s = ('x'):rep(1e7) while true do local y = s .. s end",
                        "budget exhausted");
    expect_stopped_with(&small, "local s = ('x'):rep(1e7) while true do local y = s:upper() end",
                        "budget exhausted");
}

static void table_functions_are_charged_by_their_length(void **state)
{
    expect_stopped("table.move({}, 1, 1e12, 1, {})");
    expect_stopped("local t = {} for i = 1, 2000 do t[i] = i end\n"
                   "while true do table.sort(t) end");
    expect_stopped("local t = {('x'):rep(1e5):byte(1, -1)}\n"
                   "while true do table.insert(t, 1, 0) end");
    expect_error("return table.unpack({}, 1, 1e8)", "budget exhausted");
}

static void load_is_charged_by_the_chunk_size(void **state)
{
    expect_stopped("local chunk = ('x = 1 '):rep(2e6) while true do load(chunk) end");
    expect_error("return load(string.dump(function() end))", "attempt to call a nil value");
}

static void collector_cannot_be_stopped_or_retuned(void **state)
{
    const char *opts[] = {"stop", "restart", "incremental", "generational", "setpause",
                          "setstepmul"};
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        char code[128];
        snprintf(code, sizeof(code), "collectgarbage('%s')", opts[i]);
        expect_error(code, "is not allowed");
    }
    expect_stopped("while true do collectgarbage('collect') end");
}

static void deep_recursion_is_an_error_not_a_crash(void **state)
{
    struct luart_limits big = limits;
    big.max_instructions = INT64_MAX / 2;
    big.max_time_ms = 5000;
    /* the stack (or the memory cap it reaches first) ends it */
    expect_stopped_with(&big, "local function f() return 1 + f() end return f()", "hostile:1:");
    expect_error("local t = setmetatable({}, {__index = function(t, k) return t[k] end})\n"
                 "return t.x",
                 "stack overflow");
    expect_error("local s = ('('):rep(100) .. 'x' .. (')'):rep(100)\n"
                 "return ('x'):find(s)",
                 "too many captures");
    expect_error("return ('x'):rep(300):find(('x?'):rep(300) .. ('x'):rep(300))",
                 "pattern too complex");
}

/* ---- patterns ---------------------------------------------------------------------- */

static void catastrophic_patterns_are_stopped_by_the_deadline(void **state)
{
    /* the shipped subject rule's pattern on a 4 KB subject: cubic in C */
    const char *subject = "local s = ('free money '):rep(372)\n";
    const char *calls[] = {
        "return s:find('[Ff]ree.-[Mm]oney.-[Nn]ow')",
        "return s:match('[Ff]ree.-[Mm]oney.-[Nn]ow')",
        "for x in s:gmatch('[Ff]ree.-[Mm]oney.-[Nn]ow') do end",
        "return s:gsub('[Ff]ree.-[Mm]oney.-[Nn]ow', '')",
        "return s:find('.*.*.*.*=')",
        "return pcall(string.find, s, '.-.-.-.-=')",
    };
    for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
        char code[512];
        snprintf(code, sizeof(code), "%s%s", subject, calls[i]);
        expect_stopped(code);
    }
    expect_stopped("local s = ('a'):rep(1e6) while true do s:find('b') end");
    expect_stopped("local s = ('a'):rep(1e6) while true do s:find(('a'):rep(999) .. 'b', 1, true) end");
}

static void patterns_keep_lua_semantics(void **state)
{
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(&limits, NULL, err, sizeof(err));
    struct luart_run run;
    const char *code =
        "local function eq(a, b, ...) assert(a == b, ('%s ~= %s'):format(tostring(a), tostring(b))) end\n"
        "eq(('hello world'):find('o w'), 5)\n"
        "eq(select(2, ('hello world'):find('o w')), 7)\n"
        "eq(('hello'):find('l+'), 3)\n"
        "eq(('hello'):find('xyz'), nil)\n"
        "eq(('a.b'):find('.', 1, true), 2)\n"
        "eq(('a.b'):find('.'), 1)\n"
        "eq(('a.b'):find('%.'), 2)\n"
        "eq(('hello'):find('', 10), nil)\n"
        "eq(('hello'):find('', 6), 6)\n"
        "eq(('hello'):find('l', -2), 4)\n"
        "eq(('key = value'):match('(%w+)%s*=%s*(%w+)'), 'key')\n"
        "eq(select(2, ('key = value'):match('(%w+)%s*=%s*(%w+)')), 'value')\n"
        "eq(('  x'):match('^%s*()'), 3)\n"
        "eq(('f(a(b)c)d'):match('%b()'), '(a(b)c)')\n"
        "eq(('THE (quick) fox'):find('%f[%a]%a+%f[%A]', 5), 6)\n"
        "eq(('abcabc'):match('(a)(b)c%1%2'), 'a')\n"
        "eq(('[ab]'):match('^%[(.*)%]$'), 'ab')\n"
        "eq(('x'):match('^(x?)x$'), '')\n"
        "eq(('aaa'):match('a-b'), nil)\n"
        "eq(('aaab'):match('a-b'), 'aaab')\n"
        "eq(('a,b,,c'):gsub(',', ';'), 'a;b;;c')\n"
        "eq(select(2, ('a,b,,c'):gsub(',', ';')), 3)\n"
        "eq(('hello world'):gsub('o', '0', 1), 'hell0 world')\n"
        "eq(('hello'):gsub('', '-'), '-h-e-l-l-o-')\n"
        "eq(('abc'):gsub('%w', '%0%0'), 'aabbcc')\n"
        "eq(('$name is $age'):gsub('%$(%w+)', {name = 'bob', age = 7}), 'bob is 7')\n"
        "eq(('a b'):gsub('%w', function(c) return c:upper() end), 'A B')\n"
        "eq(('a b'):gsub('%w', function() return false end), 'a b')\n"
        "eq(('IPv6:x'):gsub('^[Ii][Pp][Vv]6:', ''), 'x')\n"
        "local words = {} for w in ('one two  three'):gmatch('%a+') do words[#words + 1] = w end\n"
        "eq(table.concat(words, ','), 'one,two,three')\n"
        "local n = 0 for k, v in ('a=1, b=2'):gmatch('(%w+)=(%w+)') do n = n + tonumber(v) end\n"
        "eq(n, 3)\n"
        "local m = {} for w in ('abc'):gmatch('.', 2) do m[#m + 1] = w end\n"
        "eq(table.concat(m), 'bc')\n"
        "eq(#select(2, pcall(string.rep, 'x', 3)), 3)\n"
        "eq(pcall(string.find, 'x', '[a'), false)\n"
        "eq(pcall(string.find, 'x', '%'), false)\n"
        "eq(pcall(string.gsub, 'x', 'x', '%2'), false)\n"
        "eq(('a\\0b'):find('\\0', 1, true), 2)\n"
        "eq(('a\\0b'):match('%z') , nil)\n"
        "return true";
    enum luart_status st = run_in(rt, &run, code, err, sizeof(err));
    if (st != LUART_DONE)
        fail_msg("%s", err);
    luart_finish(rt, &run);
    luart_free(rt);
}

/* ---- the clock ---------------------------------------------------------------------- */

static void wall_clock_limit_stops_a_call_the_count_would_allow(void **state)
{
    struct luart_limits lim = limits;
    lim.max_instructions = INT64_MAX / 2;
    lim.max_time_ms = 50;
    expect_stopped_with(&lim, "while true do end", "time budget exhausted (max_time = 50 ms)");
    expect_stopped_with(&lim, "local t = {} for i = 1, 200 do t[i] = i end\n"
                              "while true do table.sort(t, function(a, b) return a > b end) end",
                        "time budget exhausted");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(xpcall_handler_looping_after_the_budget_error_is_stopped),
        cmocka_unit_test(loops_in_metamethods_called_from_c_are_stopped),
        cmocka_unit_test(close_and_gc_metamethods_are_refused),
        cmocka_unit_test(error_objects_are_never_converted_by_the_host),
        cmocka_unit_test(string_metatable_cannot_be_changed),
        cmocka_unit_test(coroutines_of_the_script_share_its_budget),
        cmocka_unit_test(string_rep_bombs_hit_the_budget_or_the_memory_cap),
        cmocka_unit_test(table_functions_are_charged_by_their_length),
        cmocka_unit_test(load_is_charged_by_the_chunk_size),
        cmocka_unit_test(collector_cannot_be_stopped_or_retuned),
        cmocka_unit_test(deep_recursion_is_an_error_not_a_crash),
        cmocka_unit_test(catastrophic_patterns_are_stopped_by_the_deadline),
        cmocka_unit_test(patterns_keep_lua_semantics),
        cmocka_unit_test(wall_clock_limit_stops_a_call_the_count_would_allow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
