#include "backend_proto.h"

#include <string.h>

#include "log.h"

/* Reply classes as bits: 1 << (code / 100). */
#define CLASS_2 (1u << 2)
#define CLASS_3 (1u << 3)
#define CLASS_4 (1u << 4)
#define CLASS_5 (1u << 5)
#define DONE_OR_ERROR (CLASS_2 | CLASS_4 | CLASS_5)

/* Only DATA may get an intermediate (3xx) reply. A 2xx to DATA would say
 * the message was taken before it was sent: never relayed, never believed.
 * 4xx is allowed everywhere (421 may answer anything). */
static const struct {
    const char *name;
    unsigned classes;
} backend_steps[BSTEP_COUNT] = {
    [BSTEP_BANNER] = {"banner", DONE_OR_ERROR},
    [BSTEP_EHLO] = {"EHLO", DONE_OR_ERROR},
    [BSTEP_XCLIENT] = {"XCLIENT", DONE_OR_ERROR},
    [BSTEP_STARTTLS] = {"STARTTLS", DONE_OR_ERROR},
    [BSTEP_MAIL] = {"MAIL", DONE_OR_ERROR},
    [BSTEP_RCPT] = {"RCPT", DONE_OR_ERROR},
    [BSTEP_DATA] = {"DATA", CLASS_3 | CLASS_4 | CLASS_5},
    [BSTEP_END_OF_DATA] = {"end of data", DONE_OR_ERROR},
    [BSTEP_RSET] = {"RSET", DONE_OR_ERROR},
    [BSTEP_NOOP] = {"NOOP", DONE_OR_ERROR},
    [BSTEP_QUIT] = {"QUIT", DONE_OR_ERROR},
};

const char *backend_step_name(enum backend_step step)
{
    return (unsigned)step < BSTEP_COUNT ? backend_steps[step].name : "?";
}

bool backend_reply_expected(enum backend_step step, int code)
{
    if ((unsigned)step >= BSTEP_COUNT || code < 200 || code > 599)
        return false;
    return (backend_steps[step].classes & (1u << (code / 100))) != 0;
}

/* Enough of a reply to tell what the server meant. */
#define EXCERPT_MAX 120

void backend_reply_excerpt(const char *text, size_t len, char *out, size_t cap)
{
    const char *lf = len > 0 ? memchr(text, '\n', len) : NULL;
    size_t n = lf ? (size_t)(lf - text) : len;
    if (n > 0 && text[n - 1] == '\r')
        n--;
    if (n > EXCERPT_MAX)
        n = EXCERPT_MAX;
    log_sanitize(out, cap, text, n);
}
