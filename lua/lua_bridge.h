/*
 * lua bridge: conversions between Lua values and the SDK's types, and the
 * mapping of a handler's results to a verdict. Calls nothing of the host, so
 * the unit tests drive it with a bare lua_State.
 */
#ifndef LUAB_BRIDGE_H
#define LUAB_BRIDGE_H

#include <stdbool.h>
#include <stdint.h>

#include <lua.h>

#include <sluice/async.h>
#include <sluice/plugin.h>
#include <sluice/session.h>
#include <sluice/store.h>

#define LUAB_ESC_MAX 16
#define LUAB_TEXT_MAX 512

/* What a finished handler asked for. code 0, esc "" and text "" mean the
 * host's defaults. defer_when is SLUICE_HOOK_COUNT unless the handler asked
 * for a deferred rejection (verdict is then CONTINUE). */
struct luab_outcome {
    enum sluice_verdict verdict;
    int code;
    char esc[LUAB_ESC_MAX];
    char text[LUAB_TEXT_MAX];
    enum sluice_hook defer_when;
};

/* What a runtime error turns into (the entry's on_error). */
enum luab_on_error { LUAB_ON_ERROR_TEMPFAIL, LUAB_ON_ERROR_CONTINUE, LUAB_ON_ERROR_REJECT };

void luab_outcome_init(struct luab_outcome *o, enum sluice_verdict verdict);

/*
 * Reads the nres values a handler returned, starting at stack index first:
 * nothing or nil (continue), a verdict name ("accept", "reject", ...)
 * optionally followed by code, enhanced code and text, or a table
 * { verdict = "reject", code = 550, esc = "5.7.1", text = "..." }. A
 * "defer" verdict carries when = "rcpt" | "data". Codes are 200..599,
 * enhanced codes class.subject.detail (luab_esc_valid), texts one line (no
 * CR, LF or NUL). Returns 0, or -1 with a reason in err for anything else
 * (a script error). Table fields are read with their metamethods: call it
 * only inside a protected call under the budget (the handler's coroutine).
 */
int luab_outcome_from_results(lua_State *L, int first, int nres, struct luab_outcome *o,
                              char *err, size_t errlen);

/* An enhanced status code as RFC 3463 writes it: class (2, 4 or 5), subject
 * and detail of one to three digits, "5.7.1". Nothing else, no spaces. */
bool luab_esc_valid(const char *esc, size_t len);

/* Copies len bytes of in into out as one log line: CR, LF, NUL and every
 * other control byte become "\xHH", so no script can forge a line. Truncates
 * to outlen - 1 bytes; out is always terminated. Returns the length. */
size_t luab_escape_line(const char *in, size_t len, char *out, size_t outlen);

/* The outcome of a failed call under the entry's on_error. */
void luab_outcome_for_error(enum luab_on_error on_error, struct luab_outcome *o);
int luab_on_error_parse(const char *name, enum luab_on_error *out);

/* Names used by scripts. Return -1 / NULL for unknown ones. */
int luab_hook_parse(const char *name, enum sluice_hook *out);
const char *luab_hook_name(enum sluice_hook hook);
int luab_dns_type_parse(const char *name, enum sluice_dns_type *out);
int luab_scope_parse(const char *name, enum sluice_scope *out);
const char *luab_dns_status_name(enum sluice_dns_status st);
const char *luab_kv_status_name(enum sluice_kv_status st);

/* A duration as scripts give it: a number of milliseconds, or a string
 * "250ms", "30s", "10m", "2h", "1d". Returns 0 or -1. */
int luab_duration_parse(const char *text, int64_t *ms);
/* A size: "64M", "512K", "1G" or a number of bytes. Returns 0 or -1. */
int luab_size_parse(const char *text, int64_t *bytes);
/* The duration at stack index idx (number or string); -1 when neither. */
int luab_check_duration(lua_State *L, int idx, int64_t *ms);

/* Pushes a DNS answer as a sequence of strings. */
void luab_push_dns_records(lua_State *L, const char *const *rr, size_t nrr);
/* Pushes a Redis reply: nil, integer, string, a sequence for an array; an
 * error reply pushes a table { err = "..." }. Nesting is bounded. */
void luab_push_redis_reply(lua_State *L, const struct sluice_redis_reply *r);

#endif
