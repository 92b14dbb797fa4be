/*
 * sluice plugin SDK: asynchronous services. Never block a loop thread: start
 * the operation here, return SLUICE_PENDING from the hook (or keep going),
 * and finish in the callback.
 *
 * Every service is bound to the session and the entry that started it: its
 * callback runs on the session's loop thread, with the same session and
 * entry current (sluice_session_data() works), and never after the session
 * ended. When the entry's pending timeout fires first, the host decides the
 * hook and cancels the entry's outstanding operations of that session, so a
 * late answer never reaches the plugin.
 *
 * Who frees arg: a DNS query, timer or store operation that is cancelled
 * (entry timeout, session end) never calls back, so the host never hands
 * its arg back: keep per-operation state in the session's data
 * (sluice_session_data(), released at disconnect) or in memory the entry
 * owns, never in a malloc() that only the callback frees. Thread-pool work
 * cannot be cancelled: its done function always runs, with s NULL when the
 * session or the entry's wait ended, and must release arg then. The entry-level timers and DNS below
 * are the exception: bound to the entry and a loop thread, not a session.
 */
#ifndef SLUICE_ASYNC_H
#define SLUICE_ASYNC_H

#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- DNS (the host's c-ares channel of the loop thread) ------------------ */

enum sluice_dns_status {
    SLUICE_DNS_OK,
    SLUICE_DNS_NOTFOUND, /* NXDOMAIN or no record of the type */
    SLUICE_DNS_TEMPFAIL, /* timeout, SERVFAIL, network error */
};

enum sluice_dns_type {
    SLUICE_DNS_A = 1,
    SLUICE_DNS_PTR = 12,
    SLUICE_DNS_MX = 15,
    SLUICE_DNS_TXT = 16,
    SLUICE_DNS_AAAA = 28,
};

/* rr[i]: an address in text form (A, AAAA), a name (PTR), "pref name" (MX),
 * or the joined strings of one TXT record (control bytes replaced by '?').
 * ttl: the smallest TTL of an A/AAAA answer, else 0. */
typedef void (*sluice_dns_cb)(sluice_session *s, void *arg, enum sluice_dns_status st,
                              const char *const *rr, size_t nrr, uint32_t ttl);

/* Queries name for records of type. timeout_ms <= 0: the resolver's own.
 * Returns 0, or -1 when the query could not start (no callback then). Any
 * hook but disconnect. */
int sluice_dns_query(sluice_session *s, const char *name, enum sluice_dns_type type,
                     int64_t timeout_ms, sluice_dns_cb cb, void *arg);

/* ---- timers --------------------------------------------------------------- */

typedef void (*sluice_timer_cb)(sluice_session *s, void *arg);
/* One-shot timer after ms milliseconds. Returns 0 or -1. */
int sluice_timer(sluice_session *s, int64_t ms, sluice_timer_cb cb, void *arg);

/* ---- entry-level timers and DNS (ABI 1.1) ----------------------------------- */

/*
 * The same services bound to the entry and the calling loop thread instead
 * of a session: for work of the entry as a whole (a periodic health check, a
 * refresh of a list). Call them on a loop thread: from thread_init(), from
 * any hook, or from any callback of an asynchronous service; anywhere else
 * (init(), fini(), thread_fini(), a thread-pool function) they return -1.
 *
 * The callback runs on the thread that started the operation, with that
 * thread's thread_state (what thread_init() stored there), and no session
 * current: log with sluice_log_entry(). An operation belongs to the entry
 * and that thread: when the entry's chain is retired on that thread (reload
 * or shutdown), its outstanding operations are cancelled before
 * thread_fini() runs, and their callbacks never run: release what arg points
 * to in thread_fini() or fini(), not in the callback alone. A callback may
 * start the next operation (a periodic timer re-arms itself this way).
 */
typedef void (*sluice_entry_timer_cb)(sluice_entry *e, void *thread_state, void *arg);
/* One-shot timer after ms milliseconds (0: on the loop's next turn).
 * Returns 0, or -1 (no callback then). Since ABI 1.1. */
int sluice_entry_timer(sluice_entry *e, int64_t ms, sluice_entry_timer_cb cb, void *arg);

/* st, rr, nrr and ttl as for sluice_dns_cb; rr is valid during the call. */
typedef void (*sluice_entry_dns_cb)(sluice_entry *e, void *thread_state, void *arg,
                                    enum sluice_dns_status st, const char *const *rr,
                                    size_t nrr, uint32_t ttl);
/* Queries name for records of type through the calling thread's resolver.
 * timeout_ms <= 0: the resolver's own. Returns 0, or -1 (no callback then).
 * Since ABI 1.1. */
int sluice_entry_dns_query(sluice_entry *e, const char *name, enum sluice_dns_type type,
                           int64_t timeout_ms, sluice_entry_dns_cb cb, void *arg);

/* ---- blocking work on the thread pool -------------------------------------- */

/* Runs on a pool thread: no SDK call but sluice_log_entry() is allowed there,
 * and nothing of the session may be touched. */
typedef void (*sluice_work_fn)(void *arg);
/* Runs on the session's loop thread when work is done. s is NULL when the
 * session ended meanwhile: then only release arg. */
typedef void (*sluice_work_done_fn)(sluice_session *s, void *arg);

/* Hands work to the worker's thread pool. Returns 0, or -1 (no callback). */
int sluice_work(sluice_session *s, sluice_work_fn work, sluice_work_done_fn done, void *arg);

#ifdef __cplusplus
}
#endif

#endif
