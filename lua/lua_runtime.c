/* lua runtime: sandbox, memory cap, instruction budget (see lua_runtime.h). */
#include "lua_runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

/* The count hook fires every LUART_SLICE instructions: often enough to stop
 * a loop quickly, rarely enough to cost nothing measurable. */
#define LUART_SLICE 1000
#define LUART_WHERE_MAX 160
#define LUART_MAX_FRAMES 32

static void *luart_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct luart *rt = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        rt->mem_used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && rt->mem_used + (nsize - old) > rt->mem_limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        rt->mem_used = rt->mem_used - old + nsize;
    return p;
}

struct luart *luart_of(lua_State *L)
{
    return *(struct luart **)lua_getextraspace(L);
}

/* ---- the sandbox ------------------------------------------------------------- */

/* load() of text chunks only: a binary chunk can crash the VM. */
static int sandbox_load(lua_State *L)
{
    const char *mode = luaL_optstring(L, 3, "t");
    if (strchr(mode, 'b'))
        return luaL_error(L, "load: binary chunks are not allowed");
    lua_settop(L, 4);
    lua_pushstring(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 4, LUA_MULTRET);
    return lua_gettop(L);
}

/* Finalizers run with hooks off, so a __gc could loop past the budget. */
static int sandbox_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
        return luaL_error(L, "setmetatable: __gc metamethods are not allowed");
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

static void wrap_global(lua_State *L, const char *name, lua_CFunction wrapper)
{
    lua_getglobal(L, name);
    lua_pushcclosure(L, wrapper, 1);
    lua_setglobal(L, name);
}

static void remove_field(lua_State *L, const char *table, const char *field)
{
    if (lua_getglobal(L, table) == LUA_TTABLE) {
        lua_pushnil(L);
        lua_setfield(L, -2, field);
    }
    lua_pop(L, 1);
}

static void open_lib(lua_State *L, const char *name, lua_CFunction open)
{
    luaL_requiref(L, name, open, 1);
    lua_pop(L, 1);
}

static void open_sandbox(lua_State *L, const struct luart_limits *lim)
{
    open_lib(L, LUA_GNAME, luaopen_base);
    open_lib(L, LUA_TABLIBNAME, luaopen_table);
    open_lib(L, LUA_STRLIBNAME, luaopen_string);
    open_lib(L, LUA_MATHLIBNAME, luaopen_math);
    open_lib(L, LUA_UTF8LIBNAME, luaopen_utf8);
    open_lib(L, LUA_COLIBNAME, luaopen_coroutine);
    open_lib(L, LUA_OSLIBNAME, luaopen_os);
    if (lim->allow_io)
        open_lib(L, LUA_IOLIBNAME, luaopen_io);

    static const char *const base_removed[] = {"dofile", "loadfile", "print"};
    for (size_t i = 0; i < sizeof(base_removed) / sizeof(base_removed[0]); i++) {
        lua_pushnil(L);
        lua_setglobal(L, base_removed[i]);
    }
    wrap_global(L, "load", sandbox_load);
    wrap_global(L, "setmetatable", sandbox_setmetatable);
    remove_field(L, LUA_STRLIBNAME, "dump");
    remove_field(L, LUA_OSLIBNAME, "exit");
    remove_field(L, LUA_OSLIBNAME, "setlocale");
    if (!lim->allow_io) {
        remove_field(L, LUA_OSLIBNAME, "remove");
        remove_field(L, LUA_OSLIBNAME, "rename");
        remove_field(L, LUA_OSLIBNAME, "tmpname");
    }
    if (!lim->allow_os_execute) {
        remove_field(L, LUA_OSLIBNAME, "execute");
        if (lim->allow_io)
            remove_field(L, LUA_IOLIBNAME, "popen");
    }
}

static int open_sandbox_protected(lua_State *L)
{
    open_sandbox(L, lua_touserdata(L, 1));
    return 0;
}

struct luart *luart_new(const struct luart_limits *limits, void *owner, char *err,
                        size_t errlen)
{
    struct luart *rt = calloc(1, sizeof(*rt));
    if (!rt) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rt->limits = *limits;
    rt->mem_limit = limits->max_memory;
    rt->owner = owner;
    rt->L = lua_newstate(luart_alloc, rt);
    if (!rt->L) {
        snprintf(err, errlen, "cannot create a Lua state within max_memory");
        free(rt);
        return NULL;
    }
    *(struct luart **)lua_getextraspace(rt->L) = rt;
    lua_pushcfunction(rt->L, open_sandbox_protected);
    lua_pushlightuserdata(rt->L, &rt->limits);
    if (lua_pcall(rt->L, 1, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot open the Lua libraries: %s", lua_tostring(rt->L, -1));
        luart_free(rt);
        return NULL;
    }
    return rt;
}

void luart_free(struct luart *rt)
{
    if (!rt)
        return;
    lua_close(rt->L);
    free(rt);
}

/* ---- the instruction budget ------------------------------------------------- */

static void where_of(lua_State *L, int level_from, char *buf, size_t len)
{
    lua_Debug ar;
    buf[0] = '\0';
    for (int level = level_from; level < LUART_MAX_FRAMES && lua_getstack(L, level, &ar);
         level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            snprintf(buf, len, "%s:%d", ar.short_src, ar.currentline);
            return;
        }
    }
}

/* When the budget is spent the handler's own coroutine yields (the bridge
 * sees over_budget and never resumes it); where it cannot yield, an error is
 * raised, and raised again at every instruction, so a pcall in the script
 * only delays the yield until the first yieldable instruction. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct luart *rt = luart_of(L);
    struct luart_run *run = rt ? rt->running : NULL;
    if (!run)
        return;
    if (!run->over_budget) {
        run->budget -= LUART_SLICE;
        if (run->budget > 0)
            return;
        run->over_budget = true;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
        if (L != run->co)
            lua_sethook(run->co, budget_hook, LUA_MASKCOUNT, 1);
    }
    if (L == run->co && lua_isyieldable(L)) {
        lua_yield(L, 0);
        return;
    }
    luaL_error(L, "instruction budget exhausted");
}

/* Allocates, so runs protected: a full state must fail the call, not abort. */
static int start_protected(lua_State *L)
{
    struct luart_run *run = lua_touserdata(L, 1);
    run->co = lua_newthread(L);
    run->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int luart_start(struct luart *rt, struct luart_run *run)
{
    memset(run, 0, sizeof(*run));
    run->ref = LUA_NOREF;
    lua_pushcfunction(rt->L, start_protected);
    lua_pushlightuserdata(rt->L, run);
    if (lua_pcall(rt->L, 1, 0, 0) != LUA_OK) {
        lua_pop(rt->L, 1);
        luart_finish(rt, run);
        return -1;
    }
    run->budget = rt->limits.max_instructions;
    int slice = run->budget < LUART_SLICE ? (int)(run->budget > 0 ? run->budget : 1)
                                          : LUART_SLICE;
    lua_sethook(run->co, budget_hook, LUA_MASKCOUNT, slice);
    return 0;
}

int luart_pcall(struct luart *rt, lua_CFunction fn, void *ud, int nresults)
{
    lua_pushcfunction(rt->L, fn);
    lua_pushlightuserdata(rt->L, ud);
    if (lua_pcall(rt->L, 1, nresults, 0) != LUA_OK) {
        lua_pop(rt->L, 1);
        return -1;
    }
    return 0;
}

int luart_load_file(struct luart_run *run, const char *path, char *err, size_t errlen)
{
    if (luaL_loadfilex(run->co, path, "t") != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(run->co, -1));
        lua_pop(run->co, 1);
        return -1;
    }
    return 0;
}

static void error_message(struct luart_run *run, int status, char *err, size_t errlen)
{
    char where[LUART_WHERE_MAX];
    where_of(run->co, 0, where, sizeof(where));
    const char *msg = lua_tostring(run->co, -1);
    if (!msg)
        msg = status == LUA_ERRMEM ? "not enough memory (max_memory)" : "error object is not a string";
    else if (status == LUA_ERRMEM)
        msg = "not enough memory (max_memory)";
    /* errors raised by C functions carry no position: give the script's */
    if (where[0] && strncmp(msg, where, strcspn(where, ":")) != 0)
        snprintf(err, errlen, "%s: %s", where, msg);
    else
        snprintf(err, errlen, "%s", msg);
}

enum luart_status luart_resume(struct luart *rt, struct luart_run *run, int nargs, int *nres,
                               char *err, size_t errlen)
{
    struct luart_run *outer = rt->running;
    rt->running = run;
    *nres = 0;
    int status = lua_resume(run->co, NULL, nargs, nres);
    rt->running = outer;
    if (status == LUA_OK)
        return LUART_DONE;
    if (status == LUA_YIELD && !run->over_budget)
        return LUART_YIELDED;
    if (run->over_budget) {
        char where[LUART_WHERE_MAX];
        where_of(run->co, 0, where, sizeof(where));
        snprintf(err, errlen, "%s%sinstruction budget exhausted (max_instructions = %lld)",
                 where, where[0] ? ": " : "", (long long)rt->limits.max_instructions);
        return LUART_ERROR;
    }
    error_message(run, status, err, errlen);
    return LUART_ERROR;
}

void luart_finish(struct luart *rt, struct luart_run *run)
{
    if (run->ref != LUA_NOREF && run->ref != LUA_REFNIL)
        luaL_unref(rt->L, LUA_REGISTRYINDEX, run->ref);
    run->ref = LUA_NOREF;
    run->co = NULL;
}
