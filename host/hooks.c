#include "hooks.h"

static const char *const hook_names[HOOK_COUNT] = {
    "connect", "helo", "mail", "rcpt", "data", "eom", "disconnect",
};

const char *hook_name(enum hook_point point)
{
    return point < HOOK_COUNT ? hook_names[point] : "?";
}

/* With no chain configured every hook passes. The plugin host replaces this
 * body with the chain walk; callers already handle a later (pending) verdict. */
void hooks_run(struct session *s, enum hook_point point, hook_done_cb done)
{
    static const struct hook_verdict pass = {.kind = VERDICT_CONTINUE};
    (void)point;
    done(s, &pass);
}
