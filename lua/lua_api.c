/* lua bridge plugin: the `sluice` global of scripts (see README.md). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_plugin.h"
#include "sluice_lua.h" /* the helper library, embedded at build time */


#define LUAP_PATH_MAX 256
#define LUAP_REDIS_MAX_ARGS 64
#define LUAP_LOG_MAX 1024

static const char *const host_keys[] = {"plugin", "enabled", "script", "timeout", "on_timeout"};

static struct luap_thread *thread_of(lua_State *L)
{
    return luart_of(L)->owner;
}

/* ---- sluice.on ---------------------------------------------------------------- */

static int api_on(lua_State *L)
{
    enum sluice_hook hook;
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (luab_hook_parse(name, &hook) < 0)
        return luaL_error(L, "sluice.on: unknown hook '%s'", name);
    lua_getfield(L, LUA_REGISTRYINDEX, LUAP_HANDLERS_KEY);
    if (lua_getfield(L, -1, name) != LUA_TNIL)
        return luaL_error(L, "sluice.on: a handler for '%s' is already registered", name);
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, name);
    return 0;
}

/* ---- logging ------------------------------------------------------------------- */

void luap_log(lua_State *L, enum sluice_log_level level, const char *msg, size_t len)
{
    struct luap_thread *t = thread_of(L);
    char line[LUAP_LOG_MAX];
    luab_escape_line(msg, len, line, sizeof(line));
    if (t->current)
        sluice_log(t->current->s, level, "lua: %s", line);
    else
        sluice_log_entry(t->e->entry, level, "lua: %s", line);
}

static int api_log(lua_State *L)
{
    static const char *const levels[] = {"err", "warn", "info", "debug", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    size_t len;
    const char *msg = luaL_checklstring(L, 2, &len);
    luap_log(L, (enum sluice_log_level)level, msg, len);
    return 0;
}

/* print() goes to the log, at info, arguments separated by spaces. */
static int api_print(lua_State *L)
{
    luaL_Buffer b;
    int n = lua_gettop(L);
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    luap_log(L, SLUICE_LOG_INFO, msg, len);
    return 0;
}

/* ---- DNS --------------------------------------------------------------------- */

struct dns_query {
    const char *name;
    enum sluice_dns_type type;
    int64_t timeout_ms;
};

struct dns_answer {
    enum sluice_dns_status st;
    const char *const *rr;
    size_t nrr;
    uint32_t ttl;
};

static int build_dns_answer(lua_State *L)
{
    const struct dns_answer *a = lua_touserdata(L, 1);
    luab_push_dns_records(L, a->st == SLUICE_DNS_OK ? a->rr : NULL,
                          a->st == SLUICE_DNS_OK ? a->nrr : 0);
    lua_pushstring(L, luab_dns_status_name(a->st));
    lua_pushinteger(L, a->ttl);
    return 3;
}

static void dns_done(sluice_session *s, void *arg, enum sluice_dns_status st,
                     const char *const *rr, size_t nrr, uint32_t ttl)
{
    struct dns_answer a = {st, rr, nrr, ttl};
    luap_deliver(s, arg, build_dns_answer, &a, 3);
}

static int dns_start(struct luap_call *c, void *arg, void *ud)
{
    const struct dns_query *q = ud;
    return sluice_dns_query(c->s, q->name, q->type, q->timeout_ms, dns_done, arg);
}

static int api_dns(lua_State *L)
{
    struct dns_query q = {luaL_checkstring(L, 1), SLUICE_DNS_A, 0};
    const char *type = luaL_optstring(L, 2, "A");
    if (luab_dns_type_parse(type, &q.type) < 0)
        return luaL_error(L, "sluice.dns: unknown record type '%s'", type);
    if (!lua_isnoneornil(L, 3) && luab_check_duration(L, 3, &q.timeout_ms) < 0)
        return luaL_error(L, "sluice.dns: bad timeout");
    struct luap_call *c = luap_check_call(L, "sluice.dns");
    int n = luap_await(L, c, dns_start, &q);
    if (n >= 0)
        return n;
    lua_newtable(L);
    lua_pushstring(L, "tempfail");
    lua_pushinteger(L, 0);
    return 3;
}

/* ---- sleep ------------------------------------------------------------------- */

static int build_nothing(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

static void sleep_done(sluice_session *s, void *arg)
{
    luap_deliver(s, arg, build_nothing, NULL, 1);
}

static int sleep_start(struct luap_call *c, void *arg, void *ud)
{
    return sluice_timer(c->s, *(const int64_t *)ud, sleep_done, arg);
}

static int api_sleep(lua_State *L)
{
    int64_t ms;
    if (luab_check_duration(L, 1, &ms) < 0)
        return luaL_error(L, "sluice.sleep: bad duration");
    struct luap_call *c = luap_check_call(L, "sluice.sleep");
    int n = luap_await(L, c, sleep_start, &ms);
    if (n >= 0)
        return n;
    lua_pushboolean(L, 0);
    return 1;
}

/* ---- the store ---------------------------------------------------------------- */

struct kv_request {
    const char *key;
    size_t klen;
    const char *value;
    size_t vlen;
    int64_t delta;
    int64_t ttl_ms;
};

struct kv_answer {
    enum sluice_kv_status st;
    const void *value;
    size_t len;
    int64_t integer;
};

static int build_kv_value(lua_State *L)
{
    const struct kv_answer *a = lua_touserdata(L, 1);
    if (a->st == SLUICE_KV_OK)
        lua_pushlstring(L, a->value ? a->value : "", a->value ? a->len : 0);
    else
        lua_pushnil(L);
    lua_pushstring(L, luab_kv_status_name(a->st));
    return 2;
}

static int build_kv_done(lua_State *L)
{
    const struct kv_answer *a = lua_touserdata(L, 1);
    lua_pushboolean(L, a->st == SLUICE_KV_OK);
    lua_pushstring(L, luab_kv_status_name(a->st));
    return 2;
}

static int build_kv_int(lua_State *L)
{
    const struct kv_answer *a = lua_touserdata(L, 1);
    if (a->st == SLUICE_KV_OK)
        lua_pushinteger(L, (lua_Integer)a->integer);
    else
        lua_pushnil(L);
    lua_pushstring(L, luab_kv_status_name(a->st));
    return 2;
}

static void kv_get_done(sluice_session *s, void *arg, enum sluice_kv_status st,
                        const void *value, size_t len)
{
    struct kv_answer a = {st, value, len, 0};
    luap_deliver(s, arg, build_kv_value, &a, 2);
}

static void kv_done(sluice_session *s, void *arg, enum sluice_kv_status st)
{
    struct kv_answer a = {st, NULL, 0, 0};
    luap_deliver(s, arg, build_kv_done, &a, 2);
}

static void kv_int_done(sluice_session *s, void *arg, enum sluice_kv_status st, int64_t v)
{
    struct kv_answer a = {st, NULL, 0, v};
    luap_deliver(s, arg, build_kv_int, &a, 2);
}

static int kv_get_start(struct luap_call *c, void *arg, void *ud)
{
    const struct kv_request *r = ud;
    return sluice_kv_get(c->s, r->key, r->klen, kv_get_done, arg);
}

static int kv_set_start(struct luap_call *c, void *arg, void *ud)
{
    const struct kv_request *r = ud;
    return sluice_kv_set(c->s, r->key, r->klen, r->value, r->vlen, r->ttl_ms, kv_done, arg);
}

static int kv_del_start(struct luap_call *c, void *arg, void *ud)
{
    const struct kv_request *r = ud;
    return sluice_kv_del(c->s, r->key, r->klen, kv_done, arg);
}

static int kv_incr_start(struct luap_call *c, void *arg, void *ud)
{
    const struct kv_request *r = ud;
    return sluice_kv_incr(c->s, r->key, r->klen, r->delta, r->ttl_ms, kv_int_done, arg);
}

static void kv_optional_ttl(lua_State *L, int idx, struct kv_request *r, const char *fn)
{
    if (!lua_isnoneornil(L, idx) && luab_check_duration(L, idx, &r->ttl_ms) < 0)
        luaL_error(L, "%s: bad ttl", fn);
}

/* An immediate failure looks like an answer with status "error". */
static int kv_call(lua_State *L, const char *fn, int (*start)(struct luap_call *, void *, void *),
                   struct kv_request *r, bool value_result)
{
    struct luap_call *c = luap_check_call(L, fn);
    int n = luap_await(L, c, start, r);
    if (n >= 0)
        return n;
    if (value_result)
        lua_pushnil(L);
    else
        lua_pushboolean(L, 0);
    lua_pushstring(L, "error");
    return 2;
}

static int api_kv_get(lua_State *L)
{
    struct kv_request r = {0};
    r.key = luaL_checklstring(L, 1, &r.klen);
    return kv_call(L, "sluice.kv_get", kv_get_start, &r, true);
}

static int api_kv_set(lua_State *L)
{
    struct kv_request r = {0};
    r.key = luaL_checklstring(L, 1, &r.klen);
    r.value = luaL_checklstring(L, 2, &r.vlen);
    kv_optional_ttl(L, 3, &r, "sluice.kv_set");
    return kv_call(L, "sluice.kv_set", kv_set_start, &r, false);
}

static int api_kv_del(lua_State *L)
{
    struct kv_request r = {0};
    r.key = luaL_checklstring(L, 1, &r.klen);
    return kv_call(L, "sluice.kv_del", kv_del_start, &r, false);
}

static int api_kv_incr(lua_State *L)
{
    struct kv_request r = {0};
    r.key = luaL_checklstring(L, 1, &r.klen);
    r.delta = luaL_optinteger(L, 2, 1);
    kv_optional_ttl(L, 3, &r, "sluice.kv_incr");
    return kv_call(L, "sluice.kv_incr", kv_incr_start, &r, true);
}

/* ---- Redis -------------------------------------------------------------------- */

struct redis_command {
    int argc;
    const char *argv[LUAP_REDIS_MAX_ARGS];
    size_t argvlen[LUAP_REDIS_MAX_ARGS];
};

static int build_redis_reply(lua_State *L)
{
    const struct sluice_redis_reply *r = lua_touserdata(L, 1);
    if (!r || r->type == SLUICE_REDIS_ERROR) {
        lua_pushnil(L);
        if (r && r->str)
            lua_pushlstring(L, r->str, r->len);
        else
            lua_pushstring(L, "redis error");
        return 2;
    }
    luab_push_redis_reply(L, r);
    lua_pushnil(L);
    return 2;
}

static void redis_done(sluice_session *s, void *arg, const struct sluice_redis_reply *r)
{
    luap_deliver(s, arg, build_redis_reply, (void *)r, 2);
}

static int redis_start(struct luap_call *c, void *arg, void *ud)
{
    const struct redis_command *cmd = ud;
    return sluice_redis(c->s, cmd->argc, cmd->argv, cmd->argvlen, redis_done, arg);
}

static int api_redis(lua_State *L)
{
    struct redis_command cmd;
    cmd.argc = lua_gettop(L);
    if (cmd.argc < 1 || cmd.argc > LUAP_REDIS_MAX_ARGS)
        return luaL_error(L, "sluice.redis: 1 to %d arguments", LUAP_REDIS_MAX_ARGS);
    for (int i = 0; i < cmd.argc; i++)
        cmd.argv[i] = luaL_checklstring(L, i + 1, &cmd.argvlen[i]);
    struct luap_call *c = luap_check_call(L, "sluice.redis");
    int n = luap_await(L, c, redis_start, &cmd);
    if (n >= 0)
        return n;
    lua_pushnil(L);
    lua_pushstring(L, "redis unavailable (is the store's backend redis?)");
    return 2;
}

/* ---- options: the entry's settings as a read-only table ---------------------------- */

static void options_push_proxy(lua_State *L, const char *path);

static bool is_host_key(const char *path)
{
    for (size_t i = 0; i < sizeof(host_keys) / sizeof(host_keys[0]); i++)
        if (strcmp(path, host_keys[i]) == 0)
            return true;
    return false;
}

static void options_push_value(lua_State *L, const sluice_entry *e, const char *path)
{
    const char *str;
    bool b;
    int64_t i;
    double d;
    if (is_host_key(path))
        lua_pushnil(L);
    else if (sluice_setting_count(e, path) >= 0)
        options_push_proxy(L, path);
    else if (sluice_setting_string(e, path, &str) == 0)
        lua_pushstring(L, str);
    else if (sluice_setting_bool(e, path, &b) == 0)
        lua_pushboolean(L, b);
    else if (sluice_setting_int(e, path, &i) == 0) {
        if (sluice_setting_double(e, path, &d) == 0 && d != (double)i)
            lua_pushnumber(L, d);
        else
            lua_pushinteger(L, (lua_Integer)i);
    } else if (sluice_setting_double(e, path, &d) == 0)
        lua_pushnumber(L, d);
    else
        lua_pushnil(L);
}

static const char *proxy_path(lua_State *L, int proxy)
{
    lua_getmetatable(L, proxy);
    lua_getfield(L, -1, "path");
    const char *path = lua_tostring(L, -1);
    lua_pop(L, 2); /* the metatable keeps the string alive */
    return path ? path : "";
}

static bool child_path(lua_State *L, const char *path, int key, char *out, size_t len)
{
    int n;
    if (lua_type(L, key) == LUA_TSTRING) {
        const char *name = lua_tostring(L, key);
        if (name[strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")])
            return false;
        n = snprintf(out, len, "%s%s%s", path, path[0] ? "." : "", name);
    } else if (lua_isinteger(L, key) && path[0] && lua_tointeger(L, key) >= 1 &&
               lua_tointeger(L, key) <= INT32_MAX) {
        n = snprintf(out, len, "%s.[%d]", path, (int)lua_tointeger(L, key) - 1);
    } else {
        return false;
    }
    return n > 0 && (size_t)n < len;
}

static int options_index(lua_State *L)
{
    char child[LUAP_PATH_MAX];
    const char *path = proxy_path(L, 1);
    if (!child_path(L, path, 2, child, sizeof(child)))
        return 0;
    options_push_value(L, thread_of(L)->e->entry, child);
    if (!lua_isnil(L, -1)) {
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, 1); /* settings never change: remember */
    }
    return 1;
}

static int options_len(lua_State *L)
{
    int n = sluice_setting_count(thread_of(L)->e->entry, proxy_path(L, 1));
    lua_pushinteger(L, n > 0 ? n : 0);
    return 1;
}

/* pairs() walks the names of a group (sluice_setting_name_at). */
static int options_next(lua_State *L)
{
    const sluice_entry *e = thread_of(L)->e->entry;
    const char *path = proxy_path(L, 1);
    int i = (int)lua_tointeger(L, lua_upvalueindex(1));
    int count = sluice_setting_count(e, path);
    for (; i < count; i++) {
        const char *name = sluice_setting_name_at(e, path, i);
        if (name && !(path[0] == '\0' && is_host_key(name))) {
            lua_pushinteger(L, i + 1);
            lua_replace(L, lua_upvalueindex(1));
            lua_pushstring(L, name);
            lua_pushvalue(L, -1);
            lua_gettable(L, 1);
            return 2;
        }
    }
    return 0;
}

static int options_pairs(lua_State *L)
{
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, options_next, 1);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int options_readonly(lua_State *L)
{
    return luaL_error(L, "sluice.options is read-only");
}

static void options_push_proxy(lua_State *L, const char *path)
{
    static const luaL_Reg meta[] = {{"__index", options_index},
                                    {"__len", options_len},
                                    {"__pairs", options_pairs},
                                    {"__newindex", options_readonly},
                                    {NULL, NULL}};
    lua_newtable(L);
    luaL_newlib(L, meta);
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_setmetatable(L, -2);
}

/* ---- opening ------------------------------------------------------------------- */

static int load_helpers(lua_State *L)
{
    if (luaL_loadbufferx(L, (const char *)lua_helpers_src, sizeof(lua_helpers_src),
                         "@sluice.lua", "t") != LUA_OK)
        return lua_error(L);
    lua_getglobal(L, "sluice");
    lua_call(L, 1, 0);
    return 0;
}

static int api_open_protected(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"on", api_on},         {"log", api_log},       {"dns", api_dns},
        {"sleep", api_sleep},   {"kv_get", api_kv_get}, {"kv_set", api_kv_set},
        {"kv_del", api_kv_del}, {"kv_incr", api_kv_incr}, {"redis", api_redis},
        {NULL, NULL}};
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LUAP_HANDLERS_KEY);
    luaL_newlib(L, fns);
    options_push_proxy(L, "");
    lua_setfield(L, -2, "options");
    lua_setglobal(L, "sluice");
    lua_pushcfunction(L, api_print);
    lua_setglobal(L, "print");
    luap_session_open(L);
    return load_helpers(L);
}

int luap_api_open(struct luap_thread *t, char *err, size_t errlen)
{
    lua_State *L = t->rt->L;
    lua_pushcfunction(L, api_open_protected);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot open the sluice library: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}
