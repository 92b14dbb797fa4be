/* lua bridge: conversions and verdict mapping (see lua_bridge.h). */
#include "lua_bridge.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

/* Redis arrays nest; a hostile server must not exhaust the C stack. */
#define LUAB_REDIS_MAX_DEPTH 8

static const char *const hook_names[SLUICE_HOOK_COUNT] = {
    [SLUICE_HOOK_CONNECT] = "connect", [SLUICE_HOOK_HELO] = "helo",
    [SLUICE_HOOK_MAIL] = "mail",       [SLUICE_HOOK_RCPT] = "rcpt",
    [SLUICE_HOOK_DATA] = "data",       [SLUICE_HOOK_EOM] = "eom",
    [SLUICE_HOOK_DISCONNECT] = "disconnect",
};

static const struct {
    const char *name;
    enum sluice_verdict verdict;
} verdict_names[] = {
    {"continue", SLUICE_CONTINUE}, {"accept", SLUICE_ACCEPT},
    {"reject", SLUICE_REJECT},     {"tempfail", SLUICE_TEMPFAIL},
    {"disconnect", SLUICE_DISCONNECT},
};

void luab_outcome_init(struct luab_outcome *o, enum sluice_verdict verdict)
{
    memset(o, 0, sizeof(*o));
    o->verdict = verdict;
    o->defer_when = SLUICE_HOOK_COUNT;
}

int luab_hook_parse(const char *name, enum sluice_hook *out)
{
    for (int i = 0; i < SLUICE_HOOK_COUNT; i++) {
        if (strcmp(name, hook_names[i]) == 0) {
            *out = (enum sluice_hook)i;
            return 0;
        }
    }
    return -1;
}

const char *luab_hook_name(enum sluice_hook hook)
{
    return (unsigned)hook < SLUICE_HOOK_COUNT ? hook_names[hook] : NULL;
}

int luab_dns_type_parse(const char *name, enum sluice_dns_type *out)
{
    static const struct {
        const char *name;
        enum sluice_dns_type type;
    } types[] = {{"A", SLUICE_DNS_A},     {"AAAA", SLUICE_DNS_AAAA}, {"TXT", SLUICE_DNS_TXT},
                 {"PTR", SLUICE_DNS_PTR}, {"MX", SLUICE_DNS_MX}};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcasecmp(name, types[i].name) == 0) {
            *out = types[i].type;
            return 0;
        }
    }
    return -1;
}

int luab_scope_parse(const char *name, enum sluice_scope *out)
{
    if (strcmp(name, "connection") == 0)
        *out = SLUICE_CONNECTION;
    else if (strcmp(name, "transaction") == 0)
        *out = SLUICE_TRANSACTION;
    else
        return -1;
    return 0;
}

const char *luab_dns_status_name(enum sluice_dns_status st)
{
    switch (st) {
    case SLUICE_DNS_OK:
        return "ok";
    case SLUICE_DNS_NOTFOUND:
        return "notfound";
    case SLUICE_DNS_TEMPFAIL:
        break;
    }
    return "tempfail";
}

const char *luab_kv_status_name(enum sluice_kv_status st)
{
    switch (st) {
    case SLUICE_KV_OK:
        return "ok";
    case SLUICE_KV_NOTFOUND:
        return "notfound";
    case SLUICE_KV_ERROR:
        break;
    }
    return "error";
}

int luab_on_error_parse(const char *name, enum luab_on_error *out)
{
    if (strcmp(name, "tempfail") == 0)
        *out = LUAB_ON_ERROR_TEMPFAIL;
    else if (strcmp(name, "continue") == 0)
        *out = LUAB_ON_ERROR_CONTINUE;
    else if (strcmp(name, "reject") == 0)
        *out = LUAB_ON_ERROR_REJECT;
    else
        return -1;
    return 0;
}

void luab_outcome_for_error(enum luab_on_error on_error, struct luab_outcome *o)
{
    static const enum sluice_verdict verdicts[] = {
        [LUAB_ON_ERROR_TEMPFAIL] = SLUICE_TEMPFAIL,
        [LUAB_ON_ERROR_CONTINUE] = SLUICE_CONTINUE,
        [LUAB_ON_ERROR_REJECT] = SLUICE_REJECT,
    };
    luab_outcome_init(o, verdicts[on_error]);
}

/* ---- numbers with units ---------------------------------------------------- */

static int parse_scaled(const char *text, const char *const *units, const int64_t *scales,
                        size_t nunits, int64_t *out)
{
    errno = 0;
    char *end;
    long long n = strtoll(text, &end, 10);
    if (end == text || errno != 0 || n < 0 || !isdigit((unsigned char)text[0]))
        return -1;
    int64_t scale = 0;
    for (size_t i = 0; i < nunits; i++) {
        if (strcasecmp(end, units[i]) == 0) {
            scale = scales[i];
            break;
        }
    }
    if (scale == 0 || n > INT64_MAX / scale)
        return -1;
    *out = (int64_t)n * scale;
    return 0;
}

int luab_duration_parse(const char *text, int64_t *ms)
{
    static const char *const units[] = {"", "ms", "s", "m", "h", "d"};
    static const int64_t scales[] = {1, 1, 1000, 60000, 3600000, 86400000};
    return parse_scaled(text, units, scales, 6, ms);
}

int luab_size_parse(const char *text, int64_t *bytes)
{
    static const char *const units[] = {"", "K", "M", "G"};
    static const int64_t scales[] = {1, 1024, 1024 * 1024, 1024 * 1024 * 1024};
    return parse_scaled(text, units, scales, 4, bytes);
}

int luab_check_duration(lua_State *L, int idx, int64_t *ms)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, idx);
        if (!(n >= 0 && n < 9.0e15))
            return -1;
        *ms = (int64_t)n;
        return 0;
    }
    if (lua_type(L, idx) == LUA_TSTRING)
        return luab_duration_parse(lua_tostring(L, idx), ms);
    return -1;
}

/* ---- verdicts --------------------------------------------------------------- */

static int verdict_parse(const char *name, struct luab_outcome *o)
{
    for (size_t i = 0; i < sizeof(verdict_names) / sizeof(verdict_names[0]); i++) {
        if (strcmp(name, verdict_names[i].name) == 0) {
            o->verdict = verdict_names[i].verdict;
            return 0;
        }
    }
    if (strcmp(name, "defer") == 0) {
        o->verdict = SLUICE_CONTINUE;
        o->defer_when = SLUICE_HOOK_RCPT;
        return 0;
    }
    return -1;
}

bool luab_esc_valid(const char *esc, size_t len)
{
    if (len < 5 || (esc[0] != '2' && esc[0] != '4' && esc[0] != '5') || esc[1] != '.')
        return false;
    size_t i = 2;
    for (int part = 0; part < 2; part++) {
        size_t digits = 0;
        while (i < len && esc[i] >= '0' && esc[i] <= '9' && digits < 3) {
            i++;
            digits++;
        }
        if (digits == 0)
            return false;
        if (part == 0 && (i >= len || esc[i++] != '.'))
            return false;
    }
    return i == len;
}

/* code, esc and text at three stack slots (any may be nil). */
static int reply_parts(lua_State *L, int code_idx, int esc_idx, int text_idx,
                       struct luab_outcome *o, char *err, size_t errlen)
{
    if (!lua_isnoneornil(L, code_idx)) {
        int isnum;
        lua_Integer code = lua_tointegerx(L, code_idx, &isnum);
        if (!isnum || code < 200 || code > 599) {
            snprintf(err, errlen, "reply code must be an integer from 200 to 599");
            return -1;
        }
        o->code = (int)code;
    }
    if (!lua_isnoneornil(L, esc_idx)) {
        size_t len;
        const char *esc = lua_type(L, esc_idx) == LUA_TSTRING ? lua_tolstring(L, esc_idx, &len)
                                                               : NULL;
        if (!esc || len >= sizeof(o->esc) || !luab_esc_valid(esc, len)) {
            snprintf(err, errlen,
                     "enhanced status code must be class.subject.detail, like \"5.7.1\"");
            return -1;
        }
        memcpy(o->esc, esc, len + 1);
    }
    if (!lua_isnoneornil(L, text_idx)) {
        size_t len;
        const char *text = lua_type(L, text_idx) == LUA_TSTRING
                               ? lua_tolstring(L, text_idx, &len)
                               : NULL;
        if (!text) {
            snprintf(err, errlen, "reply text must be a string");
            return -1;
        }
        if (memchr(text, '\r', len) || memchr(text, '\n', len) || memchr(text, '\0', len)) {
            snprintf(err, errlen, "reply text must be one line (no CR, LF or NUL)");
            return -1;
        }
        snprintf(o->text, sizeof(o->text), "%s", text);
    }
    return 0;
}

size_t luab_escape_line(const char *in, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    if (outlen == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = c >= 0x20 && c != 0x7f;
        if (n + (plain ? 1 : 4) >= outlen)
            break;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 0xf];
        }
    }
    out[n] = '\0';
    return n;
}

static int defer_when_from(lua_State *L, int idx, struct luab_outcome *o, char *err,
                           size_t errlen)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    const char *when = lua_tostring(L, idx);
    if (when && strcmp(when, "rcpt") == 0)
        o->defer_when = SLUICE_HOOK_RCPT;
    else if (when && strcmp(when, "data") == 0)
        o->defer_when = SLUICE_HOOK_DATA;
    else {
        snprintf(err, errlen, "defer: when must be \"rcpt\" or \"data\"");
        return -1;
    }
    return 0;
}

static int outcome_from_table(lua_State *L, int idx, struct luab_outcome *o, char *err,
                              size_t errlen)
{
    idx = lua_absindex(L, idx);
    lua_getfield(L, idx, "verdict");
    const char *name = lua_tostring(L, -1);
    int rc = -1;
    if (!name || verdict_parse(name, o) < 0) {
        snprintf(err, errlen, "handler returned a table without a valid 'verdict' field");
        lua_pop(L, 1);
        return -1;
    }
    lua_getfield(L, idx, "code");
    lua_getfield(L, idx, "esc");
    lua_getfield(L, idx, "text");
    lua_getfield(L, idx, "when");
    if (reply_parts(L, -4, -3, -2, o, err, errlen) == 0 &&
        (o->defer_when == SLUICE_HOOK_COUNT || defer_when_from(L, -1, o, err, errlen) == 0))
        rc = 0;
    lua_pop(L, 5);
    return rc;
}

int luab_outcome_from_results(lua_State *L, int first, int nres, struct luab_outcome *o,
                              char *err, size_t errlen)
{
    luab_outcome_init(o, SLUICE_CONTINUE);
    if (nres <= 0 || lua_isnil(L, first))
        return 0;
    if (lua_type(L, first) == LUA_TTABLE)
        return outcome_from_table(L, first, o, err, errlen);
    if (lua_type(L, first) != LUA_TSTRING || verdict_parse(lua_tostring(L, first), o) < 0) {
        snprintf(err, errlen, "handler returned %s, not a verdict",
                 lua_type(L, first) == LUA_TSTRING ? lua_tostring(L, first)
                                                   : luaL_typename(L, first));
        return -1;
    }
    int last = first + nres - 1;
    int code_idx = first + 1 <= last ? first + 1 : 0;
    int esc_idx = first + 2 <= last ? first + 2 : 0;
    int text_idx = first + 3 <= last ? first + 3 : 0;
    /* index 0 is never valid: lua_isnoneornil on it would be undefined */
    lua_pushnil(L);
    int nil_idx = lua_gettop(L);
    int rc = reply_parts(L, code_idx ? code_idx : nil_idx, esc_idx ? esc_idx : nil_idx,
                         text_idx ? text_idx : nil_idx, o, err, errlen);
    lua_pop(L, 1);
    return rc;
}

/* ---- answers of asynchronous services ------------------------------------ */

void luab_push_dns_records(lua_State *L, const char *const *rr, size_t nrr)
{
    lua_createtable(L, nrr > INT32_MAX ? 0 : (int)nrr, 0);
    for (size_t i = 0; i < nrr; i++) {
        lua_pushstring(L, rr[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static void push_redis_at_depth(lua_State *L, const struct sluice_redis_reply *r, int depth)
{
    if (!r) {
        lua_pushnil(L);
        return;
    }
    switch (r->type) {
    case SLUICE_REDIS_NIL:
        lua_pushnil(L);
        return;
    case SLUICE_REDIS_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        return;
    case SLUICE_REDIS_STRING:
        lua_pushlstring(L, r->str ? r->str : "", r->str ? r->len : 0);
        return;
    case SLUICE_REDIS_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str ? r->str : "error", r->str ? r->len : 5);
        lua_setfield(L, -2, "err");
        return;
    case SLUICE_REDIS_ARRAY:
        break;
    }
    lua_createtable(L, r->nelements > INT32_MAX ? 0 : (int)r->nelements, 0);
    if (depth >= LUAB_REDIS_MAX_DEPTH)
        return;
    for (size_t i = 0; i < r->nelements; i++) {
        luaL_checkstack(L, 2, "redis reply");
        push_redis_at_depth(L, r->elements[i], depth + 1);
        /* a nil element would end the sequence: keep a placeholder */
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 0);
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

void luab_push_redis_reply(lua_State *L, const struct sluice_redis_reply *r)
{
    push_redis_at_depth(L, r, 0);
}
