/* lua patterns: a step-counted matcher for the string library (see lua_pattern.h).
 * The algorithm and the error messages are Lua 5.4's (lstrlib.c, MIT); what
 * is new is that every step is counted and charged to the call's budget. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem: a linear plain find */
#endif
#include "lua_pattern.h"

#include <ctype.h>
#include <stddef.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_runtime.h"

#define PAT_MAX_CAPTURES 32
#define PAT_MAX_DEPTH 200      /* recursion of match(): bounds the C stack */
#define PAT_CHARGE_STEPS 1024  /* steps between two charges (and clock reads) */
#define PAT_ESC '%'
#define PAT_SPECIALS "^$*+?.([%-"
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)

#define uchar(c) ((unsigned char)(c))

struct pat_state {
    const char *src_init, *src_end, *p_end;
    lua_State *L;
    int depth; /* recursion left */
    int level; /* captures open or closed */
    unsigned steps;
    struct {
        const char *init;
        ptrdiff_t len;
    } capture[PAT_MAX_CAPTURES];
};

static void pat_charge(struct pat_state *ms)
{
    unsigned steps = ms->steps;
    ms->steps = 0;
    luart_charge(ms->L, steps / LUAPAT_STEPS_PER_INSTRUCTION);
}

static void pat_step(struct pat_state *ms, unsigned n)
{
    ms->steps += n;
    if (ms->steps >= PAT_CHARGE_STEPS)
        pat_charge(ms);
}

static void pat_prepare(struct pat_state *ms, lua_State *L, const char *s, size_t ls,
                        const char *p, size_t lp)
{
    ms->L = L;
    ms->src_init = s;
    ms->src_end = s + ls;
    ms->p_end = p + lp;
    ms->steps = 0;
    ms->level = 0;
    ms->depth = PAT_MAX_DEPTH;
}

static void pat_restart(struct pat_state *ms)
{
    ms->level = 0;
    ms->depth = PAT_MAX_DEPTH;
}

/* ---- the matcher ------------------------------------------------------------- */

static int check_capture(struct pat_state *ms, int l)
{
    l -= '1';
    if (l < 0 || l >= ms->level || ms->capture[l].len == CAP_UNFINISHED)
        return luaL_error(ms->L, "invalid capture index %%%d", l + 1);
    return l;
}

static int capture_to_close(struct pat_state *ms)
{
    for (int level = ms->level - 1; level >= 0; level--)
        if (ms->capture[level].len == CAP_UNFINISHED)
            return level;
    return luaL_error(ms->L, "invalid pattern capture");
}

static const char *class_end(struct pat_state *ms, const char *p)
{
    switch (*p++) {
    case PAT_ESC:
        if (p == ms->p_end)
            luaL_error(ms->L, "malformed pattern (ends with '%%')");
        return p + 1;
    case '[':
        if (*p == '^')
            p++;
        do {
            if (p == ms->p_end)
                luaL_error(ms->L, "malformed pattern (missing ']')");
            if (*(p++) == PAT_ESC && p < ms->p_end)
                p++;
        } while (*p != ']');
        return p + 1;
    default:
        return p;
    }
}

static int match_class(int c, int cl)
{
    int res;
    switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    default: return cl == c;
    }
    if (isupper(cl))
        res = !res;
    return res;
}

/* p at '[', ec at the closing ']' */
static int match_bracket_class(struct pat_state *ms, int c, const char *p, const char *ec)
{
    int sig = 1;
    if (*(p + 1) == '^') {
        sig = 0;
        p++;
    }
    pat_step(ms, (unsigned)(ec - p) / 8 + 1);
    while (++p < ec) {
        if (*p == PAT_ESC) {
            p++;
            if (match_class(c, uchar(*p)))
                return sig;
        } else if (*(p + 1) == '-' && p + 2 < ec) {
            p += 2;
            if (uchar(*(p - 2)) <= c && c <= uchar(*p))
                return sig;
        } else if (uchar(*p) == c) {
            return sig;
        }
    }
    return !sig;
}

static int single_match(struct pat_state *ms, const char *s, const char *p, const char *ep)
{
    if (s >= ms->src_end)
        return 0;
    int c = uchar(*s);
    switch (*p) {
    case '.':
        return 1;
    case PAT_ESC:
        return match_class(c, uchar(*(p + 1)));
    case '[':
        return match_bracket_class(ms, c, p, ep - 1);
    default:
        return uchar(*p) == c;
    }
}

static const char *match(struct pat_state *ms, const char *s, const char *p);

static const char *match_balance(struct pat_state *ms, const char *s, const char *p)
{
    if (p >= ms->p_end - 1)
        luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= ms->src_end || *s != *p)
        return NULL;
    int b = *p, e = *(p + 1), cont = 1;
    while (++s < ms->src_end) {
        pat_step(ms, 1);
        if (*s == e) {
            if (--cont == 0)
                return s + 1;
        } else if (*s == b) {
            cont++;
        }
    }
    return NULL;
}

static const char *max_expand(struct pat_state *ms, const char *s, const char *p,
                              const char *ep)
{
    ptrdiff_t i = 0;
    while (single_match(ms, s + i, p, ep)) {
        pat_step(ms, 1);
        i++;
    }
    while (i >= 0) {
        const char *res = match(ms, s + i, ep + 1);
        if (res)
            return res;
        i--;
    }
    return NULL;
}

static const char *min_expand(struct pat_state *ms, const char *s, const char *p,
                              const char *ep)
{
    for (;;) {
        const char *res = match(ms, s, ep + 1);
        if (res)
            return res;
        if (!single_match(ms, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *start_capture(struct pat_state *ms, const char *s, const char *p, int what)
{
    int level = ms->level;
    if (level >= PAT_MAX_CAPTURES)
        luaL_error(ms->L, "too many captures");
    ms->capture[level].init = s;
    ms->capture[level].len = what;
    ms->level = level + 1;
    const char *res = match(ms, s, p);
    if (!res)
        ms->level--;
    return res;
}

static const char *end_capture(struct pat_state *ms, const char *s, const char *p)
{
    int l = capture_to_close(ms);
    ms->capture[l].len = s - ms->capture[l].init;
    const char *res = match(ms, s, p);
    if (!res)
        ms->capture[l].len = CAP_UNFINISHED;
    return res;
}

static const char *match_capture(struct pat_state *ms, const char *s, int l)
{
    l = check_capture(ms, l);
    size_t len = (size_t)ms->capture[l].len;
    pat_step(ms, (unsigned)(len / LUART_BYTES_PER_INSTRUCTION));
    if ((size_t)(ms->src_end - s) >= len && memcmp(ms->capture[l].init, s, len) == 0)
        return s + len;
    return NULL;
}

/* %f[set] at p (after "%f"): the frontier, or NULL */
static const char *match_frontier(struct pat_state *ms, const char *s, const char **p)
{
    *p += 2;
    if (**p != '[')
        luaL_error(ms->L, "missing '[' after '%%f' in pattern");
    const char *ep = class_end(ms, *p);
    int previous = s == ms->src_init ? '\0' : uchar(*(s - 1));
    int current = s < ms->src_end ? uchar(*s) : '\0';
    if (!match_bracket_class(ms, previous, *p, ep - 1) &&
        match_bracket_class(ms, current, *p, ep - 1)) {
        *p = ep;
        return s;
    }
    return NULL;
}

/* a single class, maybe with a repetition, at p */
static const char *match_item(struct pat_state *ms, const char *s, const char **pp, bool *again)
{
    const char *p = *pp;
    const char *ep = class_end(ms, p);
    if (!single_match(ms, s, p, ep)) {
        if (*ep == '*' || *ep == '?' || *ep == '-') {
            *pp = ep + 1;
            *again = true;
            return s;
        }
        return NULL;
    }
    switch (*ep) {
    case '?': {
        const char *res = match(ms, s + 1, ep + 1);
        if (res)
            return res;
        *pp = ep + 1;
        *again = true;
        return s;
    }
    case '+':
        return max_expand(ms, s + 1, p, ep);
    case '*':
        return max_expand(ms, s, p, ep);
    case '-':
        return min_expand(ms, s, p, ep);
    default:
        *pp = ep;
        *again = true;
        return s + 1;
    }
}

static const char *match(struct pat_state *ms, const char *s, const char *p)
{
    if (ms->depth-- == 0)
        luaL_error(ms->L, "pattern too complex");
    bool again = true;
    while (again && s && p != ms->p_end) {
        pat_step(ms, 1);
        again = false;
        switch (*p) {
        case '(':
            if (*(p + 1) == ')')
                s = start_capture(ms, s, p + 2, CAP_POSITION);
            else
                s = start_capture(ms, s, p + 1, CAP_UNFINISHED);
            break;
        case ')':
            s = end_capture(ms, s, p + 1);
            break;
        case '$':
            if (p + 1 == ms->p_end) {
                s = s == ms->src_end ? s : NULL;
                break;
            }
            s = match_item(ms, s, &p, &again);
            break;
        case PAT_ESC:
            if (*(p + 1) == 'b') {
                s = match_balance(ms, s, p + 2);
                p += 4;
                again = s != NULL;
            } else if (*(p + 1) == 'f') {
                s = match_frontier(ms, s, &p);
                again = s != NULL;
            } else if (isdigit(uchar(*(p + 1)))) {
                s = match_capture(ms, s, uchar(*(p + 1)));
                p += 2;
                again = s != NULL;
            } else {
                s = match_item(ms, s, &p, &again);
            }
            break;
        default:
            s = match_item(ms, s, &p, &again);
            break;
        }
    }
    ms->depth++;
    return s;
}

/* ---- captures ------------------------------------------------------------------ */

static ptrdiff_t get_one_capture(struct pat_state *ms, int i, const char *s, const char *e,
                                 const char **cap)
{
    if (i >= ms->level) {
        if (i != 0)
            luaL_error(ms->L, "invalid capture index %%%d", i + 1);
        *cap = s;
        return e - s;
    }
    ptrdiff_t len = ms->capture[i].len;
    *cap = ms->capture[i].init;
    if (len == CAP_UNFINISHED)
        luaL_error(ms->L, "unfinished capture");
    else if (len == CAP_POSITION)
        lua_pushinteger(ms->L, (ms->capture[i].init - ms->src_init) + 1);
    return len;
}

static void push_one_capture(struct pat_state *ms, int i, const char *s, const char *e)
{
    const char *cap;
    ptrdiff_t l = get_one_capture(ms, i, s, e, &cap);
    if (l != CAP_POSITION)
        lua_pushlstring(ms->L, cap, (size_t)l);
}

static int push_captures(struct pat_state *ms, const char *s, const char *e)
{
    int n = (ms->level == 0 && s) ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_one_capture(ms, i, s, e);
    return n;
}

/* ---- find and match ---------------------------------------------------------------- */

static size_t start_index(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 1;
    return len + (size_t)pos + 1;
}

static bool no_specials(const char *p, size_t l)
{
    for (size_t i = 0; i < l; i++)
        if (p[i] != '\0' && strchr(PAT_SPECIALS, p[i]))
            return false;
    return true;
}

static int plain_find(lua_State *L, const char *s, size_t ls, size_t init, const char *p,
                      size_t lp)
{
    luart_charge(L, (int64_t)((ls - init) / LUART_BYTES_PER_INSTRUCTION));
    const char *hit = memmem(s + init, ls - init, p, lp);
    if (!hit) {
        luaL_pushfail(L);
        return 1;
    }
    lua_pushinteger(L, (hit - s) + 1);
    lua_pushinteger(L, (lua_Integer)((size_t)(hit - s) + lp));
    return 2;
}

static int find_aux(lua_State *L, bool find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || no_specials(p, lp)))
        return plain_find(L, s, ls, init, p, lp);
    struct pat_state ms;
    bool anchor = *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    pat_prepare(&ms, L, s, ls, p, lp);
    const char *s1 = s + init;
    do {
        pat_restart(&ms);
        const char *res = match(&ms, s1, p);
        if (res) {
            pat_charge(&ms);
            if (!find)
                return push_captures(&ms, s1, res);
            lua_pushinteger(L, (s1 - s) + 1);
            lua_pushinteger(L, res - s);
            return push_captures(&ms, NULL, 0) + 2;
        }
    } while (s1++ < ms.src_end && !anchor);
    pat_charge(&ms);
    luaL_pushfail(L);
    return 1;
}

static int pat_find(lua_State *L)
{
    return find_aux(L, true);
}

static int pat_match(lua_State *L)
{
    return find_aux(L, false);
}

/* ---- gmatch ------------------------------------------------------------------------ */

struct gmatch_state {
    const char *src;
    const char *p;
    const char *lastmatch;
    struct pat_state ms;
};

static int gmatch_next(lua_State *L)
{
    struct gmatch_state *gm = lua_touserdata(L, lua_upvalueindex(3));
    gm->ms.L = L; /* the iterator may run in another coroutine */
    for (const char *src = gm->src; src <= gm->ms.src_end; src++) {
        pat_restart(&gm->ms);
        const char *e = match(&gm->ms, src, gm->p);
        if (e && e != gm->lastmatch) {
            gm->src = gm->lastmatch = e;
            pat_charge(&gm->ms);
            return push_captures(&gm->ms, src, e);
        }
    }
    pat_charge(&gm->ms);
    return 0;
}

static int pat_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls)
        init = ls + 1;
    lua_settop(L, 2); /* the upvalues keep s and p alive */
    struct gmatch_state *gm = lua_newuserdatauv(L, sizeof(*gm), 0);
    pat_prepare(&gm->ms, L, s, ls, p, lp);
    gm->src = s + init;
    gm->p = p;
    gm->lastmatch = NULL;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* ---- gsub -------------------------------------------------------------------------- */

static void add_string(struct pat_state *ms, luaL_Buffer *b, const char *s, const char *e)
{
    size_t l;
    lua_State *L = ms->L;
    const char *news = lua_tolstring(L, 3, &l);
    const char *p;
    pat_step(ms, (unsigned)(l / LUART_BYTES_PER_INSTRUCTION));
    while ((p = memchr(news, PAT_ESC, l)) != NULL) {
        luaL_addlstring(b, news, (size_t)(p - news));
        p++;
        if (*p == PAT_ESC) {
            luaL_addchar(b, *p);
        } else if (*p == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit(uchar(*p))) {
            const char *cap;
            ptrdiff_t resl = get_one_capture(ms, *p - '1', s, e, &cap);
            if (resl == CAP_POSITION)
                luaL_addvalue(b);
            else
                luaL_addlstring(b, cap, (size_t)resl);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", PAT_ESC);
        }
        l -= (size_t)(p + 1 - news);
        news = p + 1;
    }
    luaL_addlstring(b, news, l);
}

/* Returns true when the match was replaced by something new. */
static bool add_value(struct pat_state *ms, luaL_Buffer *b, const char *s, const char *e,
                      int tr)
{
    lua_State *L = ms->L;
    switch (tr) {
    case LUA_TFUNCTION: {
        lua_pushvalue(L, 3);
        int n = push_captures(ms, s, e);
        lua_call(L, n, 1);
        break;
    }
    case LUA_TTABLE:
        push_one_capture(ms, 0, s, e);
        lua_gettable(L, 3);
        break;
    default:
        add_string(ms, b, s, e);
        return true;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return false;
    }
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return true;
}

static int pat_gsub(lua_State *L)
{
    size_t srcl, lp;
    const char *src = luaL_checklstring(L, 1, &srcl);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *lastmatch = NULL;
    int tr = lua_type(L, 3);
    lua_Integer max_s = luaL_optinteger(L, 4, (lua_Integer)srcl + 1);
    bool anchor = *p == '^';
    lua_Integer n = 0;
    bool changed = false;
    luaL_argexpected(L,
                     tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION ||
                         tr == LUA_TTABLE,
                     3, "string/function/table");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (anchor) {
        p++;
        lp--;
    }
    struct pat_state ms;
    pat_prepare(&ms, L, src, srcl, p, lp);
    while (n < max_s) {
        pat_restart(&ms);
        const char *e = match(&ms, src, p);
        if (e && e != lastmatch) {
            n++;
            changed = add_value(&ms, &b, src, e, tr) || changed;
            src = lastmatch = e;
        } else if (src < ms.src_end) {
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchor)
            break;
    }
    pat_charge(&ms);
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

void luapat_open(lua_State *L)
{
    static const luaL_Reg fns[] = {{"find", pat_find},
                                   {"match", pat_match},
                                   {"gmatch", pat_gmatch},
                                   {"gsub", pat_gsub},
                                   {NULL, NULL}};
    if (lua_getglobal(L, LUA_STRLIBNAME) == LUA_TTABLE)
        luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}
