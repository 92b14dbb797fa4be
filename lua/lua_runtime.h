/*
 * lua runtime: one sandboxed lua_State with a memory cap, and handler calls
 * run as coroutines under an instruction budget. Calls nothing of the host,
 * so the unit tests drive it directly.
 */
#ifndef LUART_RUNTIME_H
#define LUART_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#define LUART_DEFAULT_MAX_MEMORY (64 * 1024 * 1024)
#define LUART_DEFAULT_MAX_INSTRUCTIONS 1000000
/* Wall-clock bound of one handler call on its loop thread (its resumptions
 * summed, waits excluded): what a script can stall the other sessions of
 * its thread for. */
#define LUART_DEFAULT_MAX_TIME_MS 100
#define LUART_ERR_MAX 512

struct luart_limits {
    size_t max_memory;        /* bytes the state may hold */
    int64_t max_instructions; /* per handler call, summed over its resumptions */
    int64_t max_time_ms;      /* per handler call, wall clock, summed likewise */
    bool allow_io;            /* the io library and os.remove/rename/tmpname */
    bool allow_os_execute;    /* os.execute, and io.popen when io is allowed */
};

/* One handler call: a coroutine anchored in the registry. */
struct luart_run {
    lua_State *co;
    int ref;
    int64_t budget;
    bool over_budget;
    bool over_time;     /* the stop came from max_time */
    int64_t used_ns;    /* wall clock spent in earlier resumptions */
    int64_t deadline_ns; /* of the current resumption (CLOCK_MONOTONIC) */
    unsigned calls;     /* function calls since the last clock check */
};

struct luart {
    lua_State *L;
    size_t mem_used;
    size_t mem_limit;
    struct luart_limits limits;
    struct luart_run *running; /* the call being resumed, NULL between calls */
    size_t alloc_unchecked;    /* bytes allocated since the last clock check */
    void *owner;               /* the plugin's thread state */
};

enum luart_status {
    LUART_DONE,    /* the function returned: its results are on run->co */
    LUART_YIELDED, /* suspended in a wait of the bridge */
    LUART_ERROR,   /* failed, or over budget: err says why, with file:line */
};

/* A sandboxed state. NULL on failure (err says why). */
struct luart *luart_new(const struct luart_limits *limits, void *owner, char *err,
                        size_t errlen);
void luart_free(struct luart *rt);
/* The runtime of any thread of its state. */
struct luart *luart_of(lua_State *L);

/* A new coroutine for run, with a fresh budget: push the function and its
 * arguments onto run->co, then luart_resume(). Returns 0 or -1 (memory). */
int luart_start(struct luart *rt, struct luart_run *run);
/* Pushes the text chunk of the file at path onto run->co (after
 * luart_start). Returns 0, or -1 with "file:line: message" in err. */
int luart_load_file(struct luart_run *run, const char *path, char *err, size_t errlen);
/* Resumes run with nargs values pushed onto run->co. On LUART_DONE *nres
 * results are on top of run->co. */
enum luart_status luart_resume(struct luart *rt, struct luart_run *run, int nargs, int *nres,
                               char *err, size_t errlen);
/* Calls fn(L) with ud as its only argument (a light userdata) in protected
 * mode on the main thread, leaving nresults values there; for building values
 * outside a running coroutine. Returns 0, or -1 (nothing left) on an error. */
int luart_pcall(struct luart *rt, lua_CFunction fn, void *ud, int nresults);
/* Charges cost instructions of work done by a C function (a pattern match,
 * a copy) to the running call and checks its deadline; over either, the
 * call is stopped (a Lua error here, never resumed after). Outside a call it
 * does nothing. */
void luart_charge(lua_State *L, int64_t cost);
/* Bytes of work a C function may do per charged instruction. */
#define LUART_BYTES_PER_INSTRUCTION 64

/* Releases run's coroutine (any state: done, suspended, failed). */
void luart_finish(struct luart *rt, struct luart_run *run);

#endif
