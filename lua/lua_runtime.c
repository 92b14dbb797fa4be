/* lua runtime: sandbox, memory cap, instruction budget (see lua_runtime.h). */
#include "lua_runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_pattern.h"

/* The count hook fires every LUART_SLICE instructions: often enough to stop
 * a loop quickly, rarely enough to cost nothing measurable. */
#define LUART_SLICE 1000
/* The call hook reads the clock every LUART_CALLS_PER_CHECK function calls:
 * C functions run no instructions, so a loop of them in C (a metamethod
 * called by table.sort) is only seen by the call hook. */
#define LUART_CALLS_PER_CHECK 64
/* Big copies (concatenation, string building) allocate: the allocator reads
 * the clock every LUART_ALLOC_CHECK bytes, and refuses memory past the
 * deadline, so one instruction cannot copy for long after it. */
#define LUART_ALLOC_CHECK (1024 * 1024)
/* load() compiles in C: one charged instruction per this many bytes. */
#define LUART_LOAD_BYTES_PER_INSTRUCTION 4
#define LUART_WHERE_MAX 160
#define LUART_MAX_FRAMES 32

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool past_deadline(struct luart_run *run)
{
    if (now_ns() < run->deadline_ns)
        return false;
    run->over_time = true;
    return true;
}

/* Refuses growth past the deadline of the running call (see LUART_ALLOC_CHECK). */
static bool alloc_allowed(struct luart *rt, size_t grow)
{
    struct luart_run *run = rt->running;
    if (!run)
        return true;
    if (run->over_budget)
        return false;
    rt->alloc_unchecked += grow;
    if (rt->alloc_unchecked < LUART_ALLOC_CHECK)
        return true;
    rt->alloc_unchecked = 0;
    if (!past_deadline(run))
        return true;
    run->over_budget = true;
    return false;
}

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
    if (nsize > old && !alloc_allowed(rt, nsize - old))
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

/* load() of text chunks only: a binary chunk can crash the VM. Compiling
 * runs in C, so a text chunk is charged by its size. */
static int sandbox_load(lua_State *L)
{
    const char *mode = luaL_optstring(L, 3, "t");
    if (strchr(mode, 'b'))
        return luaL_error(L, "load: binary chunks are not allowed");
    if (lua_type(L, 1) == LUA_TSTRING)
        luart_charge(L, (int64_t)(lua_rawlen(L, 1) / LUART_LOAD_BYTES_PER_INSTRUCTION));
    lua_settop(L, 4);
    lua_pushstring(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 4, LUA_MULTRET);
    return lua_gettop(L);
}

/* Finalizers run with hooks off, and so may a __close of a coroutine that
 * died in the budget hook (coroutine.close): either could loop past the
 * budget. The fields are read raw, as the collector reads them. */
static int sandbox_setmetatable(lua_State *L)
{
    static const char *const denied[] = {"__gc", "__close"};
    for (size_t i = 0; lua_type(L, 2) == LUA_TTABLE && i < 2; i++) {
        lua_pushstring(L, denied[i]);
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: %s metamethods are not allowed", denied[i]);
        lua_pop(L, 1);
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* An error raised by the budget hook runs the message handler with hooks
 * off: once the call is stopped, the script's handler is skipped. */
static int sandbox_msgh(lua_State *L)
{
    struct luart *rt = luart_of(L);
    if (rt && rt->running && rt->running->over_budget)
        return 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int sandbox_xpcall_k(lua_State *L, int status, lua_KContext base)
{
    (void)status;
    return lua_gettop(L) - (int)base;
}

static int sandbox_xpcall(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, sandbox_msgh, 1);
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    /* a continuation, so a handler may still wait inside xpcall */
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, sandbox_xpcall_k);
    return sandbox_xpcall_k(L, LUA_OK, 0);
}

/* collectgarbage("stop") would outlive the call and starve the next ones;
 * mode and tuning changes too. Queries and collections stay, a collection
 * charged by the heap it walks. */
static int sandbox_collectgarbage(lua_State *L)
{
    static const char *const allowed[] = {"collect", "count", "step", "isrunning", NULL};
    const char *opt = luaL_optstring(L, 1, "collect");
    int i = 0;
    while (allowed[i] && strcmp(allowed[i], opt) != 0)
        i++;
    if (!allowed[i])
        return luaL_error(L, "collectgarbage: option '%s' is not allowed", opt);
    if (i == 0 || i == 2)
        luart_charge(L, (int64_t)(luart_of(L)->mem_used / LUART_BYTES_PER_INSTRUCTION / 4));
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* ---- C functions charged by their work ---------------------------------------- */

static int64_t bytes_cost(double bytes)
{
    double cost = bytes / LUART_BYTES_PER_INSTRUCTION;
    return cost > 9.0e15 ? INT64_MAX / 4 : (int64_t)cost;
}

static int64_t count_between(lua_State *L, int i_idx, lua_Integer i_def, int j_idx, lua_Integer j_def)
{
    lua_Integer i = luaL_optinteger(L, i_idx, i_def);
    lua_Integer j = luaL_optinteger(L, j_idx, j_def);
    if (j < i)
        return 0;
    double n = (double)j - (double)i + 1;
    return n > 9.0e15 ? INT64_MAX / 4 : (int64_t)n;
}

/* string.rep("", 1e15) loops in C without allocating: each turn is charged
 * (a quarter of an instruction: one small memcpy), and each byte. */
static int64_t cost_rep(lua_State *L)
{
    size_t l, lsep = 0;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0)
        return 0;
    return ((double)n > 9.0e15 ? INT64_MAX / 4 : (int64_t)n / 4) +
           bytes_cost((double)n * (double)(l + lsep));
}

static int64_t cost_string_length(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    return bytes_cost((double)l);
}

/* Values string.byte pushes: i and j relative to the length, as it reads them. */
static int64_t cost_byte(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer j = luaL_optinteger(L, 3, i);
    if (i < 0)
        i = (lua_Integer)l + i + 1 > 0 ? (lua_Integer)l + i + 1 : 1;
    if (j < 0)
        j = (lua_Integer)l + j + 1;
    if (j > (lua_Integer)l)
        j = (lua_Integer)l;
    return j >= i ? (int64_t)(j - i + 1) : 0;
}

static int64_t cost_table_length(lua_State *L)
{
    return lua_type(L, 1) == LUA_TTABLE ? (int64_t)lua_rawlen(L, 1) : 0;
}

/* n log n comparisons */
static int64_t cost_sort(lua_State *L)
{
    int64_t n = lua_type(L, 1) == LUA_TTABLE ? (int64_t)lua_rawlen(L, 1) : 0;
    int64_t bits = 1;
    while (bits < 64 && (n >> bits) != 0)
        bits++;
    return n * bits;
}

static int64_t cost_move(lua_State *L)
{
    return count_between(L, 2, 1, 3, 0);
}

static int64_t cost_range(lua_State *L)
{
    return count_between(L, 2, 1, 3, lua_type(L, 1) == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, 1) : 0);
}

static int64_t cost_concat(lua_State *L)
{
    return count_between(L, 3, 1, 4, lua_type(L, 1) == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, 1) : 0);
}

static const struct charged_fn {
    const char *lib;
    const char *name;
    int64_t (*cost)(lua_State *L);
} charged_fns[] = {
    {LUA_STRLIBNAME, "rep", cost_rep},
    {LUA_STRLIBNAME, "upper", cost_string_length},
    {LUA_STRLIBNAME, "lower", cost_string_length},
    {LUA_STRLIBNAME, "reverse", cost_string_length},
    {LUA_STRLIBNAME, "byte", cost_byte},
    {LUA_UTF8LIBNAME, "len", cost_string_length},
    {LUA_UTF8LIBNAME, "codepoint", cost_string_length},
    {LUA_UTF8LIBNAME, "offset", cost_string_length},
    {LUA_TABLIBNAME, "sort", cost_sort},
    {LUA_TABLIBNAME, "move", cost_move},
    {LUA_TABLIBNAME, "unpack", cost_range},
    {LUA_TABLIBNAME, "concat", cost_concat},
    {LUA_TABLIBNAME, "insert", cost_table_length},
    {LUA_TABLIBNAME, "remove", cost_table_length},
};

/* upvalues: the library function, the index of its row in charged_fns */
static int charged_call(lua_State *L)
{
    const struct charged_fn *f = &charged_fns[lua_tointeger(L, lua_upvalueindex(2))];
    luart_charge(L, f->cost(L));
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static void charge_library_functions(lua_State *L)
{
    for (size_t i = 0; i < sizeof(charged_fns) / sizeof(charged_fns[0]); i++) {
        if (lua_getglobal(L, charged_fns[i].lib) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        lua_getfield(L, -1, charged_fns[i].name);
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushcclosure(L, charged_call, 2);
        lua_setfield(L, -2, charged_fns[i].name);
        lua_pop(L, 1);
    }
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

/* The string metatable is shared by every string of the state, the helper
 * library's included: getmetatable("") returns a name, not the table. */
static void lock_string_metatable(lua_State *L)
{
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushliteral(L, "string");
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
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
    wrap_global(L, "xpcall", sandbox_xpcall);
    wrap_global(L, "collectgarbage", sandbox_collectgarbage);
    charge_library_functions(L);
    luapat_open(L);
    lock_string_metatable(L);
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
    if (rt->limits.max_time_ms <= 0)
        rt->limits.max_time_ms = LUART_DEFAULT_MAX_TIME_MS;
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

#define LUART_HOOK_MASK (LUA_MASKCOUNT | LUA_MASKCALL)

static void luart_budget_hook(lua_State *L, lua_Debug *ar);

/* The call is stopped: the hook now fires at every instruction (and call)
 * of every thread that runs it. */
static void stop_run(lua_State *L, struct luart_run *run)
{
    run->over_budget = true;
    lua_sethook(L, luart_budget_hook, LUART_HOOK_MASK, 1);
    if (L != run->co)
        lua_sethook(run->co, luart_budget_hook, LUART_HOOK_MASK, 1);
}

/* Spends cost; true when the call must stop (budget or deadline). */
static bool spend(struct luart_run *run, int64_t cost, bool read_clock)
{
    run->budget -= cost;
    return run->budget <= 0 || (read_clock && past_deadline(run));
}

/* When the budget is spent the handler's own coroutine yields (the bridge
 * sees over_budget and never resumes it); where it cannot yield, an error is
 * raised, and raised again at every instruction, so a pcall in the script
 * only delays the yield until the first yieldable instruction. A message
 * handler the error runs is skipped (sandbox_msgh), as hooks are off in it. */
static void luart_budget_hook(lua_State *L, lua_Debug *ar)
{
    struct luart *rt = luart_of(L);
    struct luart_run *run = rt ? rt->running : NULL;
    if (!run)
        return;
    if (!run->over_budget) {
        bool stop;
        if (ar->event == LUA_HOOKCOUNT)
            stop = spend(run, LUART_SLICE, true);
        else
            stop = spend(run, 1, ++run->calls % LUART_CALLS_PER_CHECK == 0);
        if (!stop)
            return;
        stop_run(L, run);
    }
    if (L == run->co && lua_isyieldable(L) && ar->event == LUA_HOOKCOUNT) {
        lua_yield(L, 0);
        return;
    }
    luaL_error(L, "instruction budget exhausted");
}

void luart_charge(lua_State *L, int64_t cost)
{
    struct luart *rt = luart_of(L);
    struct luart_run *run = rt ? rt->running : NULL;
    if (!run)
        return;
    if (!run->over_budget && !spend(run, cost, true))
        return;
    stop_run(L, run);
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
    lua_sethook(run->co, luart_budget_hook, LUART_HOOK_MASK, slice);
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
    int64_t start = now_ns();
    int64_t max_ns = rt->limits.max_time_ms * 1000000;
    run->deadline_ns = start + (max_ns > run->used_ns ? max_ns - run->used_ns : 0);
    rt->running = run;
    rt->alloc_unchecked = 0;
    *nres = 0;
    int status = lua_resume(run->co, NULL, nargs, nres);
    rt->running = outer;
    run->used_ns += now_ns() - start;
    /* belt and braces: the sandbox refuses "stop", nothing may outlive a call */
    if (!lua_gc(rt->L, LUA_GCISRUNNING))
        lua_gc(rt->L, LUA_GCRESTART);
    if (status == LUA_OK && run->over_budget)
        status = LUA_YIELD; /* finished after the stop: still a failure */
    if (status == LUA_OK)
        return LUART_DONE;
    if (status == LUA_YIELD && !run->over_budget)
        return LUART_YIELDED;
    if (run->over_budget) {
        char where[LUART_WHERE_MAX];
        where_of(run->co, 0, where, sizeof(where));
        if (run->over_time)
            snprintf(err, errlen, "%s%stime budget exhausted (max_time = %lld ms)", where,
                     where[0] ? ": " : "", (long long)rt->limits.max_time_ms);
        else
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
