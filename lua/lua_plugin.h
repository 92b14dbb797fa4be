/*
 * lua bridge plugin: the state shared by its files (lua_plugin.c: the
 * descriptor and handler calls; lua_api.c: the `sluice` table; lua_session.c:
 * the session object). Internal to the plugin.
 */
#ifndef LUAP_PLUGIN_H
#define LUAP_PLUGIN_H

#include <stdbool.h>
#include <stdint.h>

#include <lua.h>
#include <sluice/sluice.h>

#include "lua_bridge.h"
#include "lua_runtime.h"

#define LUAP_DEFAULT_MAX_BODY (1024 * 1024)

/* One chain entry (entry_state). */
struct luap_entry {
    sluice_entry *entry;
    const char *script;     /* script_path */
    char script_path[4096]; /* resolved against the directory of sluice.conf */
    struct luart_limits limits;
    enum luab_on_error on_error;
    int64_t max_body; /* cap of s:body() */
    /* Hooks the script has no handler for, as loaded at init: the host
     * skips them (sluice_entry_skip_hook), so without a connect handler
     * the greeting does not wait for the reverse lookup. */
    bool skipped[SLUICE_HOOK_COUNT];
};

/* One entry on one loop thread (thread_state). */
struct luap_thread {
    struct luap_entry *e;
    struct luart *rt;
    int handlers[SLUICE_HOOK_COUNT]; /* registry refs, LUA_NOREF when none */
    uint64_t next_wait;              /* ids of waits: never reused */
    uint64_t next_serial;            /* ids of handler calls: never reused */
    struct luap_call *current;       /* the call being resumed */
};

/* The handler call of one session (its session data). */
struct luap_call {
    struct luap_thread *t;
    sluice_session *s;
    enum sluice_hook hook;
    struct luart_run run;
    bool active;     /* holds a coroutine */
    uint64_t serial; /* what session objects of this call carry */
    uint64_t wait_id; /* the wait it is suspended in, 0 when none */
    bool starting;   /* inside the call that starts a wait */
    int early_nres;  /* results of an answer that came while starting, or -1 */
    sluice_message_reader *reader; /* of s:body_chunks() */
    struct luab_outcome outcome;   /* read from the results inside the coroutine */
};

/* ---- lua_plugin.c ---- */

/* The call running on L (its own coroutine, not one the script made), or a
 * Lua error naming fn. */
struct luap_call *luap_check_call(lua_State *L, const char *fn);
/* Suspends the handler until an answer: start() begins the operation with
 * arg as the SDK callback's arg and returns 0 or -1. Returns what the Lua C
 * function must return (yield, or the results of an immediate answer), or
 * -1 when start failed (nothing pushed). */
int luap_await(lua_State *L, struct luap_call *c, int (*start)(struct luap_call *c, void *arg,
                                                              void *ud),
               void *ud);
/* From an SDK callback: builds the n results with build(L) (ud as its
 * argument) and resumes the waiting handler; a stale answer is dropped. */
void luap_deliver(sluice_session *s, void *arg, lua_CFunction build, void *ud, int n);

/* ---- lua_api.c ---- */

/* A log line of a script (print, sluice.log, s:log): escaped, with the
 * session id inside a handler call. */
void luap_log(lua_State *L, enum sluice_log_level level, const char *msg, size_t len);

/* Installs the `sluice` global (C functions, options, the helper library). */
int luap_api_open(struct luap_thread *t, char *err, size_t errlen);
/* Registry key of the table sluice.on() fills. */
#define LUAP_HANDLERS_KEY "sluice.handlers"

/* ---- lua_session.c ---- */

void luap_session_open(lua_State *L);
/* Pushes the session object of the call (valid while the call runs). */
void luap_session_push(lua_State *L, struct luap_call *c);

#endif
