/* lua bridge plugin: the session object handed to handlers (see README.md). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_plugin.h"

#define LUAP_SESSION_MT "sluice.session"
#define LUAP_CHUNK_DEFAULT 8192
#define LUAP_CHUNK_MAX (1024 * 1024)

/* A session object names its call; it is dead once that call ended, so a
 * script that keeps one cannot reach a later session. */
struct luap_session_ref {
    struct luap_thread *t;
    uint64_t serial;
};

static struct luap_call *check_session(lua_State *L)
{
    struct luap_session_ref *ref = luaL_checkudata(L, 1, LUAP_SESSION_MT);
    struct luap_call *c = ref->t->current;
    if (!c || c->serial != ref->serial)
        luaL_error(L, "session object used outside its handler call");
    return c;
}

static void push_or_nil(lua_State *L, const char *str)
{
    if (str)
        lua_pushstring(L, str);
    else
        lua_pushnil(L);
}

static void push_lstr_or_nil(lua_State *L, const char *str, size_t len)
{
    if (str)
        lua_pushlstring(L, str, len);
    else
        lua_pushnil(L);
}

static enum sluice_scope check_scope(lua_State *L, int idx)
{
    enum sluice_scope scope;
    const char *name = luaL_optstring(L, idx, "connection");
    if (luab_scope_parse(name, &scope) < 0)
        luaL_error(L, "scope must be \"connection\" or \"transaction\", not '%s'", name);
    return scope;
}

/* ---- the connection ------------------------------------------------------------ */

static int s_id(lua_State *L)
{
    lua_pushstring(L, sluice_session_id(check_session(L)->s));
    return 1;
}

static int s_hook(lua_State *L)
{
    lua_pushstring(L, luab_hook_name(check_session(L)->hook));
    return 1;
}

static int s_ip(lua_State *L)
{
    push_or_nil(L, sluice_client_ip(check_session(L)->s));
    return 1;
}

static int s_port(lua_State *L)
{
    lua_pushinteger(L, sluice_client_port(check_session(L)->s));
    return 1;
}

static int s_hostname(lua_State *L)
{
    push_or_nil(L, sluice_client_name(check_session(L)->s));
    return 1;
}

static int s_rdns(lua_State *L)
{
    static const char *const names[] = {"ok", "none", "tempfail"};
    enum sluice_rdns st = sluice_client_name_status(check_session(L)->s);
    lua_pushstring(L, (unsigned)st < 3 ? names[st] : "tempfail");
    return 1;
}

static int s_trusted(lua_State *L)
{
    lua_pushboolean(L, sluice_client_trusted(check_session(L)->s));
    return 1;
}

static int s_early_talker(lua_State *L)
{
    lua_pushboolean(L, sluice_early_talker(check_session(L)->s));
    return 1;
}

static int s_tls(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    if (!sluice_tls_active(s)) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 5);
    push_or_nil(L, sluice_tls_version(s));
    lua_setfield(L, -2, "version");
    push_or_nil(L, sluice_tls_cipher(s));
    lua_setfield(L, -2, "cipher");
    push_or_nil(L, sluice_tls_sni(s));
    lua_setfield(L, -2, "sni");
    push_or_nil(L, sluice_tls_client_subject(s));
    lua_setfield(L, -2, "client_subject");
    lua_pushboolean(L, sluice_tls_client_verified(s));
    lua_setfield(L, -2, "client_verified");
    return 1;
}

static int s_throttle(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    lua_Integer bps = luaL_checkinteger(L, 2);
    sluice_throttle(s, bps > 0 ? (uint64_t)bps : 0);
    return 0;
}

/* ---- the conversation ------------------------------------------------------------ */

static int s_helo(lua_State *L)
{
    push_or_nil(L, sluice_helo(check_session(L)->s));
    return 1;
}

static int s_esmtp(lua_State *L)
{
    lua_pushboolean(L, sluice_esmtp(check_session(L)->s));
    return 1;
}

static int s_sender(lua_State *L)
{
    size_t len = 0;
    const char *sender = sluice_sender(check_session(L)->s, &len);
    push_lstr_or_nil(L, sender, len);
    return 1;
}

static int s_declared_size(lua_State *L)
{
    int64_t size = sluice_declared_size(check_session(L)->s);
    if (size < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)size);
    return 1;
}

static int s_smtputf8(lua_State *L)
{
    lua_pushboolean(L, sluice_smtputf8(check_session(L)->s));
    return 1;
}

static int s_body_8bitmime(lua_State *L)
{
    lua_pushboolean(L, sluice_body_8bitmime(check_session(L)->s));
    return 1;
}

static int s_rcpt(lua_State *L)
{
    size_t len = 0;
    const char *rcpt = sluice_rcpt(check_session(L)->s, &len);
    push_lstr_or_nil(L, rcpt, len);
    return 1;
}

static int s_recipients(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    size_t n = sluice_rcpt_count(s);
    lua_createtable(L, n > INT32_MAX ? 0 : (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        const char *rcpt = sluice_rcpt_at(s, i, &len);
        if (!rcpt)
            break;
        lua_pushlstring(L, rcpt, len);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* ---- the message ------------------------------------------------------------------ */

static int s_size(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)sluice_message_size(check_session(L)->s));
    return 1;
}

static int s_header(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    const char *name = luaL_checkstring(L, 2);
    lua_Integer idx = luaL_optinteger(L, 3, 1);
    size_t len = 0;
    const char *value = idx >= 1 ? sluice_header_get(s, name, (size_t)idx - 1, &len) : NULL;
    push_lstr_or_nil(L, value, len);
    return 1;
}

static int s_headers(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    size_t n = sluice_header_count(s);
    lua_createtable(L, n > INT32_MAX ? 0 : (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        size_t nlen, vlen;
        if (!sluice_header_at(s, i, &name, &nlen, &value, &vlen))
            break;
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, name, nlen);
        lua_setfield(L, -2, "name");
        lua_pushlstring(L, value, vlen);
        lua_setfield(L, -2, "value");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* The first max bytes of the message (headers and body), at most max_body. */
static int s_body(lua_State *L)
{
    struct luap_call *c = check_session(L);
    lua_Integer max = luaL_optinteger(L, 2, c->t->e->max_body);
    if (max < 0 || max > c->t->e->max_body)
        max = c->t->e->max_body;
    sluice_message_reader *r = sluice_message_open(c->s);
    if (!r) {
        lua_pushnil(L);
        lua_pushstring(L, "no message");
        return 2;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer left = max;
    ssize_t got = 1;
    while (left > 0 && got > 0) {
        size_t want = left < LUAL_BUFFERSIZE ? (size_t)left : LUAL_BUFFERSIZE;
        got = sluice_message_read(r, luaL_prepbuffsize(&b, want), want);
        if (got > 0) {
            luaL_addsize(&b, (size_t)got);
            left -= got;
        }
    }
    sluice_message_close(r);
    if (got < 0) {
        lua_pushnil(L);
        lua_pushstring(L, "message read error");
        return 2;
    }
    luaL_pushresult(&b);
    return 1;
}

/* for chunk in s:body_chunks(size) do ... end: one reader per call, closed
 * at the loop's end, on break (the closing value) or when the call ends. */
static int chunks_next(lua_State *L)
{
    struct luap_call *c = check_session(L);
    lua_Integer size = lua_tointeger(L, lua_upvalueindex(1));
    if (!c->reader)
        return 0;
    luaL_Buffer b;
    char *buf = luaL_buffinitsize(L, &b, (size_t)size);
    ssize_t got = sluice_message_read(c->reader, buf, (size_t)size);
    if (got <= 0) {
        sluice_message_close(c->reader);
        c->reader = NULL;
        if (got < 0)
            return luaL_error(L, "message read error");
        return 0;
    }
    luaL_pushresultsize(&b, (size_t)got);
    return 1;
}

static int chunks_close(lua_State *L)
{
    struct luap_session_ref *ref = lua_touserdata(L, lua_upvalueindex(1));
    struct luap_call *c = ref->t->current;
    if (c && c->serial == ref->serial && c->reader) {
        sluice_message_close(c->reader);
        c->reader = NULL;
    }
    return 0;
}

static int s_body_chunks(lua_State *L)
{
    struct luap_call *c = check_session(L);
    lua_Integer size = luaL_optinteger(L, 2, LUAP_CHUNK_DEFAULT);
    if (size < 1 || size > LUAP_CHUNK_MAX)
        return luaL_error(L, "body_chunks: size from 1 to %d", LUAP_CHUNK_MAX);
    if (c->reader)
        return luaL_error(L, "body_chunks: one reader at a time");
    c->reader = sluice_message_open(c->s);
    if (!c->reader)
        return luaL_error(L, "body_chunks: no message at this hook");
    lua_pushinteger(L, size);
    lua_pushcclosure(L, chunks_next, 1);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    /* the closing value: a table whose __close releases the reader */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, chunks_close, 1);
    lua_setfield(L, -2, "__close");
    lua_setmetatable(L, -2);
    return 4;
}

static int s_add_header(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    const char *name = luaL_checkstring(L, 2);
    const char *value = luaL_checkstring(L, 3);
    lua_pushboolean(L, sluice_header_add(s, name, value) == 0);
    return 1;
}

static int s_remove_header(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    const char *name = luaL_checkstring(L, 2);
    lua_Integer idx = luaL_optinteger(L, 3, 0);
    if (idx < 0 || idx > INT32_MAX)
        return luaL_error(L, "remove_header: index from 1, or nil for every field");
    lua_pushboolean(L, sluice_header_remove(s, name, idx == 0 ? -1 : (int)idx - 1) == 0);
    return 1;
}

/* ---- notes and score ---------------------------------------------------------------- */

static int s_note(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    const char *key = luaL_checkstring(L, 2);
    enum sluice_scope scope = check_scope(L, 3);
    int64_t i;
    double d;
    const char *str;
    if (sluice_note_get_int(s, scope, key, &i))
        lua_pushinteger(L, (lua_Integer)i);
    else if (sluice_note_get_double(s, scope, key, &d))
        lua_pushnumber(L, d);
    else if ((str = sluice_note_get_string(s, scope, key)) != NULL)
        lua_pushstring(L, str);
    else
        lua_pushnil(L);
    return 1;
}

static int s_set_note(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    const char *key = luaL_checkstring(L, 2);
    enum sluice_scope scope = check_scope(L, 4);
    int rc;
    if (lua_isinteger(L, 3))
        rc = sluice_note_set_int(s, scope, key, (int64_t)lua_tointeger(L, 3));
    else if (lua_type(L, 3) == LUA_TNUMBER)
        rc = sluice_note_set_double(s, scope, key, lua_tonumber(L, 3));
    else if (lua_type(L, 3) == LUA_TSTRING)
        rc = sluice_note_set_string(s, scope, key, lua_tostring(L, 3));
    else if (lua_type(L, 3) == LUA_TBOOLEAN)
        rc = sluice_note_set_int(s, scope, key, lua_toboolean(L, 3));
    else
        return luaL_error(L, "set_note: a note is a number, a string or a boolean");
    lua_pushboolean(L, rc == 0);
    return 1;
}

static int s_score(lua_State *L)
{
    lua_pushnumber(L, sluice_score(check_session(L)->s));
    return 1;
}

static int s_add_score(lua_State *L)
{
    sluice_session *s = check_session(L)->s;
    sluice_score_add(s, luaL_checknumber(L, 2));
    lua_pushnumber(L, sluice_score(s));
    return 1;
}

/* The reply parts as a verdict's: malformed ones are a script error. */
static int s_defer_reject(lua_State *L)
{
    struct luap_call *c = check_session(L);
    static const char *const whens[] = {"rcpt", "data", NULL};
    int when = luaL_checkoption(L, 2, "rcpt", whens);
    lua_Integer code = luaL_optinteger(L, 3, 0);
    size_t esc_len = 0, text_len;
    const char *esc = luaL_optlstring(L, 4, NULL, &esc_len);
    const char *text = luaL_optlstring(L, 5, "Rejected by policy", &text_len);
    if (code != 0 && (code < 200 || code > 599))
        return luaL_error(L, "defer_reject: reply code must be an integer from 200 to 599");
    if (esc && !luab_esc_valid(esc, esc_len))
        return luaL_error(L, "defer_reject: enhanced status code must be class.subject.detail");
    if (memchr(text, '\r', text_len) || memchr(text, '\n', text_len) ||
        memchr(text, '\0', text_len))
        return luaL_error(L, "defer_reject: reply text must be one line (no CR, LF or NUL)");
    sluice_defer_reject(c->s, when == 0 ? SLUICE_HOOK_RCPT : SLUICE_HOOK_DATA, (int)code, esc,
                        "%s", text);
    return 0;
}

static int s_deferred(lua_State *L)
{
    lua_pushboolean(L, sluice_deferred(check_session(L)->s));
    return 1;
}

static int s_log(lua_State *L)
{
    static const char *const levels[] = {"err", "warn", "info", "debug", NULL};
    struct luap_call *c = check_session(L);
    int level = lua_gettop(L) >= 3 ? luaL_checkoption(L, 2, NULL, levels) : SLUICE_LOG_INFO;
    size_t len;
    const char *msg = luaL_checklstring(L, lua_gettop(L) >= 3 ? 3 : 2, &len);
    (void)c;
    luap_log(L, (enum sluice_log_level)level, msg, len);
    return 0;
}

static const luaL_Reg session_methods[] = {
    {"id", s_id},
    {"hook", s_hook},
    {"ip", s_ip},
    {"port", s_port},
    {"hostname", s_hostname},
    {"rdns", s_rdns},
    {"trusted", s_trusted},
    {"early_talker", s_early_talker},
    {"tls", s_tls},
    {"throttle", s_throttle},
    {"helo", s_helo},
    {"esmtp", s_esmtp},
    {"sender", s_sender},
    {"declared_size", s_declared_size},
    {"smtputf8", s_smtputf8},
    {"body_8bitmime", s_body_8bitmime},
    {"rcpt", s_rcpt},
    {"recipients", s_recipients},
    {"size", s_size},
    {"header", s_header},
    {"headers", s_headers},
    {"body", s_body},
    {"body_chunks", s_body_chunks},
    {"add_header", s_add_header},
    {"remove_header", s_remove_header},
    {"note", s_note},
    {"set_note", s_set_note},
    {"score", s_score},
    {"add_score", s_add_score},
    {"defer_reject", s_defer_reject},
    {"deferred", s_deferred},
    {"log", s_log},
    {NULL, NULL},
};

void luap_session_open(lua_State *L)
{
    luaL_newmetatable(L, LUAP_SESSION_MT);
    luaL_newlib(L, session_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "sluice.session");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

void luap_session_push(lua_State *L, struct luap_call *c)
{
    struct luap_session_ref *ref = lua_newuserdatauv(L, sizeof(*ref), 0);
    ref->t = c->t;
    ref->serial = c->serial;
    luaL_setmetatable(L, LUAP_SESSION_MT);
}
