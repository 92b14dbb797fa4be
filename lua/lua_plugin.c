/*
 * lua bridge plugin: chain entries whose policy is a Lua 5.4 script. Every
 * handler call runs as a coroutine; a wait (DNS, timer, store) yields it and
 * the hook returns SLUICE_PENDING until the SDK callback resumes it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_plugin.h"

#define LUAP_ERR_MAX 512
/* max_time above this would let one call hold a loop thread for longer than
 * any client waits for a reply. */
#define LUAP_MAX_TIME_LIMIT_MS 10000

/* ---- settings ------------------------------------------------------------- */

static int setting_fail(struct luap_entry *le, const char *name, const char *what, char *err,
                        size_t errlen)
{
    snprintf(err, errlen, "line %d: %s %s", sluice_setting_line(le->entry, name), name, what);
    return -1;
}

static int read_settings(struct luap_entry *le, char *err, size_t errlen)
{
    sluice_entry *e = le->entry;
    if (sluice_setting_path(e, "script", le->script_path, sizeof le->script_path) != 0)
        return setting_fail(le, "script", "must name the policy script", err, errlen);
    le->script = le->script_path;
    int64_t mem = LUART_DEFAULT_MAX_MEMORY;
    if (sluice_setting_size(e, "max_memory", &mem) < 0 || mem < 1024 * 1024)
        return setting_fail(le, "max_memory", "must be a size of at least 1M", err, errlen);
    le->limits.max_memory = (size_t)mem;
    le->limits.max_instructions = LUART_DEFAULT_MAX_INSTRUCTIONS;
    if (sluice_setting_int(e, "max_instructions", &le->limits.max_instructions) < 0 ||
        le->limits.max_instructions < 1000)
        return setting_fail(le, "max_instructions", "must be an integer of at least 1000", err,
                            errlen);
    le->limits.max_time_ms = LUART_DEFAULT_MAX_TIME_MS;
    if (sluice_setting_duration(e, "max_time", &le->limits.max_time_ms) < 0 ||
        le->limits.max_time_ms < 1 || le->limits.max_time_ms > LUAP_MAX_TIME_LIMIT_MS)
        return setting_fail(le, "max_time", "must be a duration from 1ms to 10s", err, errlen);
    le->max_body = LUAP_DEFAULT_MAX_BODY;
    if (sluice_setting_size(e, "max_body", &le->max_body) < 0 || le->max_body < 0)
        return setting_fail(le, "max_body", "must be a size", err, errlen);
    if (sluice_setting_bool(e, "allow_io", &le->limits.allow_io) < 0)
        return setting_fail(le, "allow_io", "must be true or false", err, errlen);
    if (sluice_setting_bool(e, "allow_os_execute", &le->limits.allow_os_execute) < 0)
        return setting_fail(le, "allow_os_execute", "must be true or false", err, errlen);
    const char *on_error = "tempfail";
    if (sluice_setting_string(e, "on_error", &on_error) < 0 ||
        luab_on_error_parse(on_error, &le->on_error) < 0)
        return setting_fail(le, "on_error", "must be \"tempfail\", \"continue\" or \"reject\"",
                            err, errlen);
    return 0;
}

/* ---- loading the script ---------------------------------------------------- */

/* Reads the script's handlers from the table at tidx (of the loading
 * coroutine: the table is the script's, its metamethods run under the
 * budget). */
static int handler_from_table(lua_State *co, int tidx, struct luap_thread *t, char *err,
                              size_t errlen)
{
    for (int h = 0; h < SLUICE_HOOK_COUNT; h++) {
        int type = lua_getfield(co, tidx, luab_hook_name((enum sluice_hook)h));
        if (type == LUA_TFUNCTION && t->handlers[h] == LUA_NOREF) {
            t->handlers[h] = luaL_ref(co, LUA_REGISTRYINDEX);
            continue;
        }
        lua_pop(co, 1);
        if (type != LUA_TNIL && type != LUA_TFUNCTION) {
            snprintf(err, errlen, "%s: handler '%s' is not a function", t->e->script,
                     luab_hook_name((enum sluice_hook)h));
            return -1;
        }
    }
    return 0;
}

/* Handlers come from sluice.on() and from a table the script returns. */
static int collect_handlers(struct luap_thread *t, lua_State *co, int nres, char *err,
                            size_t errlen)
{
    if (nres > 0 && lua_type(co, -nres) == LUA_TTABLE) {
        if (handler_from_table(co, lua_absindex(co, -nres), t, err, errlen) < 0)
            return -1;
    } else if (nres > 0 && !lua_isnil(co, -nres)) {
        snprintf(err, errlen, "%s: the script must return nothing or a table of handlers",
                 t->e->script);
        return -1;
    }
    lua_getfield(co, LUA_REGISTRYINDEX, LUAP_HANDLERS_KEY);
    int rc = handler_from_table(co, lua_gettop(co), t, err, errlen);
    lua_pop(co, 1);
    return rc;
}

static int load_body_k(lua_State *co, int status, lua_KContext ctx)
{
    (void)status;
    struct luap_thread *t = (struct luap_thread *)ctx;
    char err[LUAP_ERR_MAX];
    if (collect_handlers(t, co, lua_gettop(co), err, sizeof(err)) < 0)
        return luaL_error(co, "%s", err);
    return 0;
}

/* The loading coroutine's body: runs the chunk, then reads its handlers. */
static int load_body(lua_State *co)
{
    struct luap_thread *t = lua_touserdata(co, 1);
    lua_remove(co, 1);
    lua_callk(co, 0, LUA_MULTRET, (lua_KContext)t, load_body_k);
    return load_body_k(co, LUA_OK, (lua_KContext)t);
}

static int run_script(struct luap_thread *t, char *err, size_t errlen)
{
    struct luart_run run;
    int nres;
    if (luart_start(t->rt, &run) < 0) {
        snprintf(err, errlen, "%s: out of memory", t->e->script);
        return -1;
    }
    int rc = -1;
    lua_pushcfunction(run.co, load_body);
    lua_pushlightuserdata(run.co, t);
    if (luart_load_file(&run, t->e->script, err, errlen) == 0) {
        enum luart_status st = luart_resume(t->rt, &run, 2, &nres, err, errlen);
        if (st == LUART_YIELDED)
            snprintf(err, errlen, "%s: the script waited while loading", t->e->script);
        else if (st == LUART_DONE)
            rc = 0;
    }
    luart_finish(t->rt, &run);
    return rc;
}

static struct luap_thread *thread_new(struct luap_entry *le, char *err, size_t errlen)
{
    struct luap_thread *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->e = le;
    for (int h = 0; h < SLUICE_HOOK_COUNT; h++)
        t->handlers[h] = LUA_NOREF;
    t->rt = luart_new(&le->limits, t, err, errlen);
    if (!t->rt || luap_api_open(t, err, errlen) < 0 || run_script(t, err, errlen) < 0) {
        luart_free(t->rt);
        free(t);
        return NULL;
    }
    return t;
}

static void thread_free(struct luap_thread *t)
{
    if (!t)
        return;
    luart_free(t->rt);
    free(t);
}

/* ---- plugin callbacks -------------------------------------------------------- */

static int luap_init(sluice_entry *entry, void **entry_state, char *err, size_t errlen)
{
    struct luap_entry *le = calloc(1, sizeof(*le));
    if (!le) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    le->entry = entry;
    /* Script options are the entry's other settings: no check of unknown
     * names is possible here (see README, "Options"). */
    struct luap_thread *probe = NULL;
    if (read_settings(le, err, errlen) < 0 || !(probe = thread_new(le, err, errlen))) {
        free(le);
        return -1;
    }
    for (int h = 0; h < SLUICE_HOOK_COUNT; h++)
        if (probe->handlers[h] == LUA_NOREF)
            le->skipped[h] = sluice_entry_skip_hook(entry, (enum sluice_hook)h) == 0;
    thread_free(probe);
    *entry_state = le;
    return 0;
}

static void luap_fini(sluice_entry *entry, void *entry_state)
{
    free(entry_state);
}

static int luap_thread_init(sluice_entry *entry, void *entry_state, void **thread_state)
{
    char err[LUAP_ERR_MAX];
    struct luap_thread *t = thread_new(entry_state, err, sizeof(err));
    if (!t) {
        sluice_log_entry(entry, SLUICE_LOG_ERR, "lua: %s", err);
        return -1;
    }
    /* The host calls only the handlers the script defined at init. */
    const struct luap_entry *le = entry_state;
    for (int h = 0; h < SLUICE_HOOK_COUNT; h++)
        if (le->skipped[h] && t->handlers[h] != LUA_NOREF)
            sluice_log_entry(entry, SLUICE_LOG_WARN,
                             "lua: handler '%s' defined after init: it is never called",
                             luab_hook_name((enum sluice_hook)h));
    *thread_state = t;
    return 0;
}

static void luap_thread_fini(sluice_entry *entry, void *entry_state, void *thread_state)
{
    thread_free(thread_state);
}

/* ---- handler calls ------------------------------------------------------------- */

static void call_abandon(struct luap_call *c)
{
    if (c->reader) {
        sluice_message_close(c->reader);
        c->reader = NULL;
    }
    if (c->active)
        luart_finish(c->t->rt, &c->run);
    c->active = false;
    c->wait_id = 0;
}

static void call_free(void *p)
{
    struct luap_call *c = p;
    call_abandon(c);
    free(c);
}

static struct luap_call *call_of(sluice_session *s, struct luap_thread *t)
{
    struct luap_call *c = sluice_session_data(s);
    if (c)
        return c;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->t = t;
    sluice_session_set_data(s, c, call_free);
    return c;
}

static const char *fallback_text(enum sluice_verdict v)
{
    switch (v) {
    case SLUICE_REJECT:
        return "Rejected by policy";
    case SLUICE_DISCONNECT:
        return "Closing connection";
    default:
        return "Try again later";
    }
}

static enum sluice_verdict apply_outcome(sluice_session *s, enum sluice_hook hook,
                                         const struct luab_outcome *o)
{
    if (hook == SLUICE_HOOK_DISCONNECT)
        return SLUICE_CONTINUE;
    const char *esc = o->esc[0] ? o->esc : NULL;
    const char *text = o->text[0] ? o->text : NULL;
    if (o->defer_when != SLUICE_HOOK_COUNT) {
        sluice_defer_reject(s, o->defer_when, o->code, esc, "%s",
                            text ? text : fallback_text(SLUICE_REJECT));
        return SLUICE_CONTINUE;
    }
    bool says_more = o->code || esc || text;
    if (says_more && (o->verdict == SLUICE_REJECT || o->verdict == SLUICE_TEMPFAIL ||
                      o->verdict == SLUICE_DISCONNECT))
        sluice_reply(s, o->code, esc, "%s", text ? text : fallback_text(o->verdict));
    return o->verdict;
}

static enum sluice_verdict call_failed(struct luap_call *c, const char *why)
{
    struct luab_outcome o;
    char line[LUAP_ERR_MAX + 64];
    luab_escape_line(why, strlen(why), line, sizeof(line));
    sluice_log(c->s, SLUICE_LOG_ERR, "lua: %s (hook %s)", line, luab_hook_name(c->hook));
    luab_outcome_for_error(c->t->e->on_error, &o);
    enum sluice_hook hook = c->hook;
    call_abandon(c);
    return apply_outcome(c->s, hook, &o);
}

/* Runs the call until it finishes or waits. */
static enum sluice_verdict call_step(struct luap_call *c, int nargs)
{
    struct luap_thread *t = c->t;
    char err[LUAP_ERR_MAX];
    int nres;
    struct luap_call *outer = t->current;
    t->current = c;
    enum luart_status st = luart_resume(t->rt, &c->run, nargs, &nres, err, sizeof(err));
    t->current = outer;
    if (st == LUART_ERROR)
        return call_failed(c, err);
    if (st == LUART_YIELDED) {
        if (c->wait_id != 0)
            return SLUICE_PENDING;
        return call_failed(c, "a handler yielded outside a sluice wait");
    }
    struct luab_outcome o = c->outcome;
    enum sluice_hook hook = c->hook;
    call_abandon(c);
    return apply_outcome(c->s, hook, &o);
}

/* The coroutine's body: building the session object allocates and reading
 * the verdict runs the script's metamethods (__index of a returned table),
 * so both happen inside the coroutine, where an error, a loop or a memory
 * failure is a script error under the budget, never the host's. */
static int call_body_k(lua_State *co, int status, lua_KContext ctx)
{
    (void)status;
    struct luap_call *c = (struct luap_call *)ctx;
    char err[LUAP_ERR_MAX];
    if (luab_outcome_from_results(co, 1, lua_gettop(co), &c->outcome, err, sizeof(err)) < 0)
        return luaL_error(co, "%s: %s", c->t->e->script, err);
    return 0;
}

static int call_body(lua_State *co)
{
    struct luap_call *c = lua_touserdata(co, 1);
    lua_settop(co, 0);
    lua_rawgeti(co, LUA_REGISTRYINDEX, c->t->handlers[c->hook]);
    luap_session_push(co, c);
    lua_callk(co, 1, LUA_MULTRET, (lua_KContext)c, call_body_k);
    return call_body_k(co, LUA_OK, (lua_KContext)c);
}

static enum sluice_verdict luap_hook(sluice_session *s, struct luap_thread *t,
                                     enum sluice_hook hook)
{
    if (!t || t->handlers[hook] == LUA_NOREF)
        return SLUICE_CONTINUE;
    struct luap_call *c = call_of(s, t);
    if (!c) {
        sluice_log(s, SLUICE_LOG_ERR, "lua: out of memory");
        return hook == SLUICE_HOOK_DISCONNECT ? SLUICE_CONTINUE : SLUICE_TEMPFAIL;
    }
    /* a call still suspended here lost its wait to the entry's timeout */
    call_abandon(c);
    c->s = s;
    c->hook = hook;
    if (luart_start(t->rt, &c->run) < 0)
        return call_failed(c, "out of memory (max_memory)");
    c->active = true;
    c->serial = ++t->next_serial;
    lua_pushcfunction(c->run.co, call_body);
    lua_pushlightuserdata(c->run.co, c);
    return call_step(c, 1);
}

#define LUAP_HOOK_FN(fn, hook)                                                              \
    static enum sluice_verdict fn(sluice_session *s, void *entry_state, void *thread_state) \
    {                                                                                       \
        (void)entry_state;                                                                  \
        return luap_hook(s, thread_state, hook);                                            \
    }

LUAP_HOOK_FN(luap_connect, SLUICE_HOOK_CONNECT)
LUAP_HOOK_FN(luap_helo, SLUICE_HOOK_HELO)
LUAP_HOOK_FN(luap_mail, SLUICE_HOOK_MAIL)
LUAP_HOOK_FN(luap_rcpt, SLUICE_HOOK_RCPT)
LUAP_HOOK_FN(luap_data, SLUICE_HOOK_DATA)
LUAP_HOOK_FN(luap_eom, SLUICE_HOOK_EOM)
LUAP_HOOK_FN(luap_disconnect, SLUICE_HOOK_DISCONNECT)

/* ---- waits ----------------------------------------------------------------------- */

struct luap_call *luap_check_call(lua_State *L, const char *fn)
{
    struct luart *rt = luart_of(L);
    struct luap_thread *t = rt ? rt->owner : NULL;
    struct luap_call *c = t ? t->current : NULL;
    if (!c)
        luaL_error(L, "%s: only inside a handler", fn);
    else if (c->run.co != L)
        luaL_error(L, "%s: call it from the handler, not from a coroutine it created", fn);
    else if (c->hook == SLUICE_HOOK_DISCONNECT)
        luaL_error(L, "%s: not at the disconnect hook", fn);
    return c;
}

int luap_await(lua_State *L, struct luap_call *c,
               int (*start)(struct luap_call *c, void *arg, void *ud), void *ud)
{
    uint64_t id = ++c->t->next_wait;
    c->wait_id = id;
    c->starting = true;
    c->early_nres = -1;
    int rc = start(c, (void *)(uintptr_t)id, ud);
    c->starting = false;
    if (rc < 0) {
        c->wait_id = 0;
        return -1;
    }
    if (c->early_nres >= 0) {
        int n = c->early_nres;
        if (!lua_checkstack(L, n)) {
            lua_pop(c->t->rt->L, n);
            return 0;
        }
        lua_xmove(c->t->rt->L, L, n);
        return n;
    }
    return lua_yield(L, 0);
}

void luap_deliver(sluice_session *s, void *arg, lua_CFunction build, void *ud, int n)
{
    struct luap_call *c = sluice_session_data(s);
    if (!c || !c->active || c->wait_id == 0 || c->wait_id != (uint64_t)(uintptr_t)arg)
        return;
    c->wait_id = 0;
    lua_State *L = c->t->rt->L;
    int ok = luart_pcall(c->t->rt, build, ud, n) == 0;
    if (c->starting) {
        /* answered before the wait began: luap_await hands the results over */
        if (ok && lua_checkstack(L, 1))
            c->early_nres = n;
        else {
            if (ok)
                lua_pop(L, n);
            c->early_nres = 0;
        }
        return;
    }
    int nargs = 0;
    if (ok && lua_checkstack(c->run.co, n)) {
        lua_xmove(L, c->run.co, n);
        nargs = n;
    } else if (ok) {
        lua_pop(L, n);
    }
    enum sluice_verdict v = call_step(c, nargs);
    if (v != SLUICE_PENDING)
        sluice_resume(s, v);
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "lua",
    .version = "1.0",
    .init = luap_init,
    .fini = luap_fini,
    .thread_init = luap_thread_init,
    .thread_fini = luap_thread_fini,
    .hooks =
        {
            [SLUICE_HOOK_CONNECT] = luap_connect,
            [SLUICE_HOOK_HELO] = luap_helo,
            [SLUICE_HOOK_MAIL] = luap_mail,
            [SLUICE_HOOK_RCPT] = luap_rcpt,
            [SLUICE_HOOK_DATA] = luap_data,
            [SLUICE_HOOK_EOM] = luap_eom,
            [SLUICE_HOOK_DISCONNECT] = luap_disconnect,
        },
};
