/*
 * How long a hostile Lua call holds a loop thread: stock Lua 5.4 against the
 * bridge's runtime (lua/lua_runtime.c, lua/lua_pattern.c) with its default
 * limits. Build and run with bench/lua-hostile.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_runtime.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* ms the chunk takes in a stock state (its error, if any, is ignored) */
static double stock_ms(const char *code)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    double start = now_ms();
    if (luaL_dostring(L, code) != LUA_OK)
        fprintf(stderr, "  stock: %s\n", lua_tostring(L, -1));
    double took = now_ms() - start;
    lua_close(L);
    return took;
}

/* ms the chunk takes as a handler call of the runtime; *why its error */
static double sandbox_ms(const char *code, int64_t max_instructions, int64_t max_time_ms,
                         char *why, size_t whylen)
{
    struct luart_limits lim = {.max_memory = LUART_DEFAULT_MAX_MEMORY,
                               .max_instructions = max_instructions,
                               .max_time_ms = max_time_ms};
    char err[LUART_ERR_MAX];
    struct luart *rt = luart_new(&lim, NULL, err, sizeof(err));
    if (!rt) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    struct luart_run run;
    int nres;
    luart_start(rt, &run);
    luaL_loadbufferx(run.co, code, strlen(code), "=bench", "t");
    double start = now_ms();
    enum luart_status st = luart_resume(rt, &run, 0, &nres, err, sizeof(err));
    double took = now_ms() - start;
    snprintf(why, whylen, "%s", st == LUART_ERROR ? err : "finished");
    luart_finish(rt, &run);
    luart_free(rt);
    return took;
}

static void row(const char *name, const char *code)
{
    char why[LUART_ERR_MAX];
    double stock = stock_ms(code);
    double bounded = sandbox_ms(code, LUART_DEFAULT_MAX_INSTRUCTIONS, LUART_DEFAULT_MAX_TIME_MS,
                                why, sizeof(why));
    printf("%-44s stock %9.1f ms   sluice %7.1f ms  (%s)\n", name, stock, bounded, why);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const struct {
        const char *name;
        const char *code;
    } cases[] = {
        {"subject rule, 1 KB subject",
         "local s = ('free money '):rep(93) return s:find('[Ff]ree.-[Mm]oney.-[Nn]ow')"},
        {"subject rule, 2 KB subject",
         "local s = ('free money '):rep(186) return s:find('[Ff]ree.-[Mm]oney.-[Nn]ow')"},
        {"subject rule, 4 KB subject",
         "local s = ('free money '):rep(372) return s:find('[Ff]ree.-[Mm]oney.-[Nn]ow')"},
        {"3 x .- on 256 B, no match",
         "local s = ('a'):rep(256) return s:find('.-.-.-b')"},
        {"gsub of 2 x .* on 512 B",
         "local s = ('a'):rep(512) return s:gsub('.*.*b', '')"},
        {"string.rep('', 1e9)", "return string.rep('', 1e9)"},
        {"table.move of 1e8 nils", "table.move({}, 1, 1e8, 1, {})"},
        {"xpcall handler loop (stock: 1e8 iterations)",
         "xpcall(error, function() for i = 1, 1e8 do end end)"},
    };
    /* the matcher's speed against stock's, on a match both finish */
    const char *calib = "local s = ('free money '):rep(93) "
                        "for i = 1, 20 do s:find('[Ff]ree.-[Mm]oney.-[Nn]ow') end";
    char why[LUART_ERR_MAX];
    printf("%-44s stock %9.1f ms   sluice %7.1f ms  (unbounded)\n", "calibration: 20 x 1 KB",
           stock_ms(calib), sandbox_ms(calib, INT64_MAX / 2, 100000, why, sizeof(why)));
    printf("%-44s stock %9.1f ms   sluice %7.1f ms  (unbounded)\n", "VM: 1e7 empty loop turns",
           stock_ms("for i = 1, 1e7 do end"),
           sandbox_ms("for i = 1, 1e7 do end", INT64_MAX / 2, 100000, why, sizeof(why)));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        row(cases[i].name, cases[i].code);
    return 0;
}
