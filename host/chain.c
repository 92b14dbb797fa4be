/* Running the chain at a hook: each entry's verdict, pending verdicts with
 * their timeout, accept and deferred rejection semantics. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "config.h"
#include "mstime.h"
#include "hooks.h"
#include "io.h"
#include "log.h"
#include "plugin_host.h"
#include "reply.h"
#include "sdk_op.h"
#include "session_internal.h"
#include "worker.h"

/* The host's enums are the SDK's, value for value: a hook index or verdict
 * crosses the boundary without a translation table. */
_Static_assert(HOOK_CONNECT == (int)SLUICE_HOOK_CONNECT && HOOK_HELO == (int)SLUICE_HOOK_HELO &&
                   HOOK_MAIL == (int)SLUICE_HOOK_MAIL && HOOK_RCPT == (int)SLUICE_HOOK_RCPT &&
                   HOOK_DATA == (int)SLUICE_HOOK_DATA && HOOK_EOM == (int)SLUICE_HOOK_EOM &&
                   HOOK_DISCONNECT == (int)SLUICE_HOOK_DISCONNECT &&
                   HOOK_COUNT == (int)SLUICE_HOOK_COUNT,
               "host hook points differ from the SDK's");
_Static_assert(VERDICT_CONTINUE == (int)SLUICE_CONTINUE && VERDICT_ACCEPT == (int)SLUICE_ACCEPT &&
                   VERDICT_REJECT == (int)SLUICE_REJECT &&
                   VERDICT_TEMPFAIL == (int)SLUICE_TEMPFAIL &&
                   VERDICT_DISCONNECT == (int)SLUICE_DISCONNECT,
               "host verdicts differ from the SDK's");

static const char *const hook_names[HOOK_COUNT] = {
    "connect", "helo", "mail", "rcpt", "data", "eom", "disconnect",
};

const char *hook_name(enum hook_point point)
{
    return point < HOOK_COUNT ? hook_names[point] : "?";
}

static const char *verdict_name(enum sluice_verdict v)
{
    static const char *const names[] = {"continue", "accept", "reject",
                                        "tempfail", "disconnect", "pending"};
    _Static_assert(sizeof names / sizeof names[0] == SLUICE_PENDING + 1, "a verdict without a name");
    return (unsigned)v <= SLUICE_PENDING ? names[v] : "?";
}

static void chain_continue(struct session *s);

/* postmaster@ (any domain) and the bare <postmaster> are never refused by
 * a deferred rejection (RFC 5321 4.5.1). */
static bool chain_is_postmaster(const char *addr)
{
    if (!addr)
        return false;
    size_t n = strlen("postmaster");
    return strncasecmp(addr, "postmaster", n) == 0 && (addr[n] == '@' || addr[n] == '\0');
}

static void chain_verdict_from_reply(struct hook_verdict *hv, const struct verdict_reply *r)
{
    if (!r->set)
        return;
    hv->code = r->code;
    snprintf(hv->esc, sizeof hv->esc, "%s", r->esc);
    snprintf(hv->text, sizeof hv->text, "%s", r->text);
}

/* The hook is decided: tell the session. */
static void chain_finish(struct session *s, enum sluice_verdict v)
{
    struct hook_verdict hv = {.kind = VERDICT_CONTINUE};
    enum hook_point point = s->run.point;
    switch (v) {
    case SLUICE_ACCEPT:
        hv.kind = VERDICT_ACCEPT;
        break;
    case SLUICE_REJECT:
        hv.kind = VERDICT_REJECT;
        break;
    case SLUICE_TEMPFAIL:
        hv.kind = VERDICT_TEMPFAIL;
        break;
    case SLUICE_DISCONNECT:
        hv.kind = VERDICT_DISCONNECT;
        break;
    default:
        break;
    }
    if (hv.kind != VERDICT_CONTINUE && hv.kind != VERDICT_ACCEPT)
        chain_verdict_from_reply(&hv, &s->reply);
    bool deferred_due = s->deferred.set && !s->deferred_cleared &&
                        ((point == HOOK_RCPT && s->deferred_when == HOOK_RCPT &&
                          !s->run.rcpt_accepted && !chain_is_postmaster(s->cur_rcpt_addr)) ||
                         (point == HOOK_DATA && s->deferred_when == HOOK_DATA));
    if (hv.kind == VERDICT_CONTINUE && deferred_due) {
        hv.kind = VERDICT_REJECT;
        chain_verdict_from_reply(&hv, &s->deferred);
        log_info(s->sid, "%s: deferred rejection applied", hook_name(point));
    }
    s->run.active = false;
    s->reply.set = false;
    hook_done_cb done = s->run.done;
    s->run.done = NULL;
    done(s, &hv);
}

/* Returns true when the verdict decides the hook. */
chain_trace_fn chain_trace;

const char *chain_verdict_name(enum sluice_verdict v) { return verdict_name(v); }

static bool chain_take_verdict(struct session *s, struct plugin_entry *e, enum sluice_verdict v)
{
    if (s->reply_refused && v != SLUICE_PENDING) {
        /* never sent: a reply the plugin got wrong is the plugin's error */
        log_warn(s->sid, "%s: entry %s: reply refused (%s): tempfail", hook_name(s->run.point),
                 e->name, s->reply_refused);
        s->reply_refused = NULL;
        s->reply.set = false;
        v = SLUICE_TEMPFAIL;
    }
    if (chain_trace)
        chain_trace(s, s->run.point, e->name, v, s->reply.set ? s->reply.text : NULL);
    if (v != SLUICE_CONTINUE)
        log_debug(s->sid, "%s: entry %s: %s", hook_name(s->run.point), e->name, verdict_name(v));
    if (v == SLUICE_CONTINUE || v == SLUICE_PENDING)
        return false;
    if (v == SLUICE_ACCEPT) {
        if (s->run.point == HOOK_RCPT)
            s->run.rcpt_accepted = true;
        else if (s->run.point <= HOOK_MAIL)
            s->deferred_cleared = true;
    }
    if (s->run.point == HOOK_DISCONNECT)
        return false; /* every entry sees the end of the session */
    chain_finish(s, v);
    return true;
}

static void chain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (!s->run.pending)
        return;
    struct plugin_entry *e = s->run.entry;
    log_warn(s->sid, "entry %s timed out after %lld ms at %s: %s", e->name,
             (long long)e->timeout_ms, hook_name(s->run.point), verdict_name(e->on_timeout));
    s->run.pending = false;
    s->run.entry = NULL;
    sdk_op_abandon_entry(s, e);
    s->reply.set = false;
    s->reply_refused = NULL;
    io_cork();
    if (!chain_take_verdict(s, e, e->on_timeout))
        chain_continue(s);
    io_uncork();
}

static void chain_wait(struct session *s, struct plugin_entry *e)
{
    s->run.pending = true;
    s->run.entry = e;
    if (!s->run.timeout_ev)
        s->run.timeout_ev = event_new(s->loop->base, -1, 0, chain_timeout_cb, s);
    if (s->run.timeout_ev) {
        struct timeval tv = ms_to_timeval(e->timeout_ms);
        event_add(s->run.timeout_ev, &tv);
    }
}

static void chain_continue(struct session *s)
{
    struct chain *c = s->chain;
    while (c && s->run.next < c->n) {
        struct plugin_entry *e = &c->entries[s->run.next++];
        sluice_hook_fn fn = e->plugin->hooks[s->run.point];
        if (!fn || e->skip_hook[s->run.point])
            continue;
        s->reply.set = false;
        s->reply_refused = NULL;
        s->run.have_resume = false;
        s->current_entry = e;
        s->run.in_call = true;
        enum sluice_verdict v = fn((sluice_session *)s, e->state, e->thread_state[s->loop->index]);
        s->run.in_call = false;
        s->current_entry = NULL;
        if (v == SLUICE_PENDING) {
            if (!s->run.have_resume) {
                chain_wait(s, e);
                return;
            }
            v = s->run.resumed;
        }
        if ((unsigned)v > SLUICE_PENDING) {
            log_warn(s->sid, "%s: entry %s returned an unknown verdict %d: continue",
                     hook_name(s->run.point), e->name, (int)v);
            v = SLUICE_CONTINUE;
        }
        if (chain_take_verdict(s, e, v))
            return;
    }
    chain_finish(s, SLUICE_CONTINUE);
}

bool hooks_wanted(const struct session *s, enum hook_point point)
{
    const struct chain *c = s->chain;
    for (size_t i = 0; c && i < c->n; i++)
        if (c->entries[i].plugin->hooks[point] && !c->entries[i].skip_hook[point])
            return true;
    return false;
}

void hooks_run(struct session *s, enum hook_point point, hook_done_cb done)
{
    s->run.point = point;
    s->run.next = 0;
    s->run.done = done;
    s->run.active = true;
    s->run.pending = false;
    s->run.rcpt_accepted = false;
    /* The greeting may go before the client's reverse lookup ends (no
     * connect hook): plugin code still never runs before the name is known,
     * so every hook sees what it saw when the greeting waited. */
    s->run.name_wait = s->rdns_query && hooks_wanted(s, point);
    if (s->run.name_wait) {
        log_debug(s->sid, "%s: waiting for the reverse lookup", hook_name(point));
        return;
    }
    chain_continue(s);
}

void hooks_name_known(struct session *s)
{
    if (!s->run.active || !s->run.name_wait)
        return;
    s->run.name_wait = false;
    io_cork();
    chain_continue(s);
    io_uncork();
}

void sluice_resume(sluice_session *ss, enum sluice_verdict verdict)
{
    struct session *s = (struct session *)ss;
    if (verdict == SLUICE_PENDING)
        verdict = SLUICE_CONTINUE;
    if (s->run.in_call) {
        s->run.have_resume = true;
        s->run.resumed = verdict;
        return;
    }
    if (!s->run.pending) {
        log_debug(s->sid, "late sluice_resume ignored (no pending hook)");
        return;
    }
    struct plugin_entry *e = s->run.entry;
    if (s->current_entry && s->current_entry != e) {
        log_warn(s->sid, "entry %s resumed a hook pending on %s: ignored", s->current_entry->name,
                 e->name);
        return;
    }
    s->run.pending = false;
    s->run.entry = NULL;
    if (s->run.timeout_ev)
        event_del(s->run.timeout_ev);
    /* The plugin's callback is still on the stack: run the rest from here,
     * it returns into the callback only after the session moved on. */
    struct plugin_entry *saved = s->current_entry;
    s->current_entry = NULL;
    /* Resumed from a plugin's own event (a pool job, a store or DNS answer,
     * a timer), not from an io callback, which corks by itself: what the
     * session now writes (a reused backend's MAIL and the pipelined RCPT,
     * say) leaves in one write per connection. Two writes would be two
     * segments, and a server that answers each with a write of its own
     * meets delayed ACK: its second reply waits up to 40 ms (Nagle). */
    io_cork();
    if (!chain_take_verdict(s, e, verdict))
        chain_continue(s);
    io_uncork();
    s->current_entry = saved;
}

/* ---- replies and deferred rejections -------------------------------------- */

/* Why a plugin's reply cannot be sent, or NULL when it can. */
static const char *chain_reply_fault(const struct verdict_reply *r, const char *esc)
{
    if (r->code != 0 && (r->code < 200 || r->code > 599))
        return "code outside 200..599";
    if (esc && !reply_esc_valid(esc))
        return "enhanced status code is not class.subject.detail";
    if (strpbrk(r->text, "\r\n"))
        return "text of several lines";
    return NULL;
}

/* Returns false (nothing set, the call's reply refused) for a reply that is
 * not one well-formed line. */
__attribute__((format(printf, 5, 0))) static bool
chain_format_reply(struct session *s, struct verdict_reply *r, int code, const char *esc,
                   const char *fmt, va_list ap)
{
    struct verdict_reply next = {.set = true, .code = code};
    snprintf(next.esc, sizeof next.esc, "%s", esc ? esc : "");
    if (fmt)
        vsnprintf(next.text, sizeof next.text, fmt, ap);
    const char *fault = chain_reply_fault(&next, esc);
    if (!fault && esc && strlen(esc) >= sizeof next.esc)
        fault = "enhanced status code too long";
    if (fault) {
        s->reply_refused = fault;
        return false;
    }
    /* other control bytes a plugin copied from the client become spaces */
    for (char *p = next.text; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    *r = next;
    return true;
}

void sluice_reply(sluice_session *ss, int code, const char *esc, const char *fmt, ...)
{
    struct session *s = (struct session *)ss;
    va_list ap;
    va_start(ap, fmt);
    chain_format_reply(s, &s->reply, code, esc, fmt, ap);
    va_end(ap);
}

void sluice_defer_reject(sluice_session *ss, enum sluice_hook when, int code, const char *esc,
                         const char *fmt, ...)
{
    struct session *s = (struct session *)ss;
    va_list ap;
    va_start(ap, fmt);
    bool ok = chain_format_reply(s, &s->deferred, code ? code : 550, esc ? esc : "5.7.1", fmt, ap);
    va_end(ap);
    if (!ok)
        return;
    s->deferred_when = when == SLUICE_HOOK_DATA ? HOOK_DATA : HOOK_RCPT;
    /* A mark made after an allowlist accepted counts again. */
    s->deferred_cleared = false;
    log_info(s->sid, "%s: rejection deferred to %s", s->current_entry ? s->current_entry->name : "?",
             hook_name(s->deferred_when));
}

bool sluice_deferred(const sluice_session *ss)
{
    const struct session *s = (const struct session *)ss;
    return s->deferred.set && !s->deferred_cleared;
}
