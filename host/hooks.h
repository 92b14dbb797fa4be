/* Hook dispatch points of the session. The plugin host (conf.d chain) runs
 * here; a verdict may arrive later (pending), so every caller continues in
 * its done callback, which may run before hooks_run returns. */
#ifndef SLUICE_HOOKS_H
#define SLUICE_HOOKS_H

#include <stdbool.h>

enum hook_point {
    HOOK_CONNECT,
    HOOK_HELO,
    HOOK_MAIL,
    HOOK_RCPT,
    HOOK_DATA,
    HOOK_EOM,
    HOOK_DISCONNECT,
    HOOK_COUNT
};

enum hook_verdict_kind {
    VERDICT_CONTINUE,
    VERDICT_ACCEPT,
    VERDICT_REJECT,
    VERDICT_TEMPFAIL,
    VERDICT_DISCONNECT,
};

struct hook_verdict {
    enum hook_verdict_kind kind;
    int code;      /* 0: the default of the hook (reply table) */
    char esc[12];  /* "" : default */
    char text[256];/* "" : default */
};

struct session;
typedef void (*hook_done_cb)(struct session *s, const struct hook_verdict *v);

const char *hook_name(enum hook_point point);
/* Without an entry at point, done runs before it returns. With one, and the
 * client's reverse lookup still running (the greeting went without waiting
 * for it), the chain waits for hooks_name_known(). */
void hooks_run(struct session *s, enum hook_point point, hook_done_cb done);
/* The reverse lookup ended: a hook run waiting for it starts. */
void hooks_name_known(struct session *s);
/* True when an entry of the session's chain has a hook at point: work done
 * only for plugins (the header parse at eom) is skipped without one. */
bool hooks_wanted(const struct session *s, enum hook_point point);

#endif
