/* What a backend may answer to each thing sluice sends it (RFC 5321 4.3.2):
 * the one table of expected reply classes. A reply outside it is a protocol
 * violation: the backend session is closed and the client gets 451 4.4.2. */
#ifndef SLUICE_BACKEND_PROTO_H
#define SLUICE_BACKEND_PROTO_H

#include <stdbool.h>
#include <stddef.h>

enum backend_step {
    BSTEP_BANNER,      /* the connection itself: the greeting */
    BSTEP_EHLO,        /* EHLO, also the one after XCLIENT */
    BSTEP_XCLIENT,
    BSTEP_STARTTLS,
    BSTEP_MAIL,
    BSTEP_RCPT,
    BSTEP_DATA,        /* the DATA command: 354 or an error */
    BSTEP_END_OF_DATA, /* the message and its ".": the final reply */
    BSTEP_RSET,
    BSTEP_NOOP,
    BSTEP_QUIT,
    BSTEP_COUNT
};

/* "RCPT", "end of data", ... for logs. */
const char *backend_step_name(enum backend_step step);

/* True when code (a parsed reply code) is of a class step may get. */
bool backend_reply_expected(enum backend_step step, int code);

/* The start of a reply (its first line at most) in printable form for a log
 * line, NUL-terminated in out. */
void backend_reply_excerpt(const char *text, size_t len, char *out, size_t cap);

#endif
