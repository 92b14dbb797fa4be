/* Replies: the one table of every reply sluice writes itself, and the parser
 * of the replies backends send. */
#ifndef SLUICE_REPLY_H
#define SLUICE_REPLY_H

#include <stdbool.h>
#include <stddef.h>

enum reply_id {
    R_GENERIC_OK,               /* 250 2.0.0 Ok */
    R_MAIL_OK,          /* 250 2.1.0 Ok */
    R_RCPT_OK,          /* 250 2.1.5 Ok  (only used without a backend, e.g. tests) */
    R_RSET_OK,          /* 250 2.0.0 Ok */
    R_NOOP_OK,          /* 250 2.0.0 Ok */
    R_DATA_GO,          /* 354 End data with <CR><LF>.<CR><LF> */
    R_BYE,              /* 221 2.0.0 Bye */
    R_HELP,             /* 214 2.0.0 ... */
    R_VRFY,             /* 252 2.5.0 Cannot VRFY user, but will accept message */
    R_REJECT_CONNECT,   /* 554 5.7.1 (greeting) */
    R_REJECT,           /* 550 5.7.1 Rejected (helo/mail/rcpt) */
    R_REJECT_DATA,      /* 554 5.7.1 Rejected (data/eom) */
    R_REJECT_VIRUS,     /* 554 5.7.0 */
    R_TEMPFAIL,         /* 451 4.7.1 Try again later */
    R_TEMPFAIL_CONNECT, /* 421 4.7.0 Try again later, closing */
    R_DISCONNECT,       /* 421 4.7.0 closing */
    R_LIMIT,            /* 421 4.7.0 Too many connections, closing */
    R_TOO_MANY_ERRORS,  /* 421 4.7.0 Too many errors, closing */
    R_RELAY_DENIED,     /* 550 5.7.1 Relay access denied */
    R_ROUTE_CONFLICT,   /* 452 4.5.3 ... send it again in a new transaction */
    R_TOO_MANY_RCPTS,   /* 452 4.5.3 Too many recipients */
    R_BACKEND_UNREACHABLE, /* 451 4.4.1 */
    R_BACKEND_LOST,     /* 451 4.4.2 */
    R_POOL_FULL,        /* 451 4.4.5 */
    R_BACKEND_HANDSHAKE,/* 451 4.4.0 the backend refused EHLO, XCLIENT or STARTTLS */
    R_INTERNAL,         /* 451 4.3.0 */
    R_INTERNAL_CLOSE,   /* 421 4.3.0 the session cannot go on (no memory at accept) */
    R_NO_VALID_RCPT,    /* 554 5.5.1 No valid recipients */
    R_LINE_TOO_LONG,    /* 500 5.5.2 Line too long */
    R_BAD_BYTES,        /* 500 5.5.2 Syntax error (NUL or control byte) */
    R_UNKNOWN_CMD,      /* 500 5.5.1 Command unrecognized */
    R_BAD_SEQUENCE,     /* 503 5.5.1 Bad sequence of commands */
    R_NEED_HELO,        /* 503 5.5.1 Send HELO/EHLO first */
    R_NESTED_MAIL,      /* 503 5.5.1 Sender already specified */
    R_NEED_MAIL,        /* 503 5.5.1 Need MAIL before RCPT */
    R_SYNTAX_HELO,      /* 501 5.5.4 Syntax: EHLO hostname */
    R_SYNTAX_PATH,      /* 501 5.5.4 Syntax error in parameters */
    R_BAD_ADDRESS,      /* 501 5.1.3 Bad address syntax */
    R_SYNTAX_NOARGS,    /* 501 5.5.4 No arguments allowed */
    R_PARAM_UNSUPPORTED,/* 555 5.5.4 Unsupported parameter */
    R_NOT_IMPLEMENTED,  /* 502 5.5.1 Command not implemented */
    R_TOO_BIG,          /* 552 5.3.4 Message too big */
    R_HEADER_TOO_BIG,   /* 552 5.3.4 Message header too big */
    R_NEED_SMTPUTF8,    /* 550 5.6.7 */
    R_NEED_8BITMIME,    /* 550 5.6.3 */
    R_BARE_NEWLINE,     /* 550 5.5.2 Message contains bare CR or LF */
    R_NUL_IN_DATA,      /* 554 5.6.0 Message contains NUL bytes */
    R_IDLE_TIMEOUT,     /* 421 4.4.2 Timeout, closing */
    R_DATA_TIMEOUT,     /* 421 4.4.2 Timeout during data transfer, closing */
    R_SHUTDOWN,         /* 421 4.3.2 Service shutting down */
    R_NO_DESCRIPTORS,   /* 421 4.3.2 Too busy (out of descriptors), closing */
    R_CHECK_EOM,        /* 250 2.0.0 Ok (check mode: not relayed) */
    R_TLS_GO,           /* 220 2.0.0 Ready to start TLS */
    R_TLS_UNAVAILABLE,  /* 454 4.7.0 TLS not available (certificate not loadable) */
    R_COUNT
};

/* Replies that carry one value (a name). */
enum reply_fmt {
    RF_GREETING,   /* 220 <hostname> ESMTP */
    RF_HELO,       /* 250 <hostname> (HELO) */
    RF_CHECK_RCPT, /* 250 2.1.5 Ok (check mode: pool <pool>) */
    RF_COUNT
};

/* The longest reply sluice formats itself (a verdict's or a named one). */
#define REPLY_FORMAT_MAX 512

/* The full reply, lines ending in CRLF, e.g. "250 2.1.0 Ok\r\n". */
const char *reply_text(enum reply_id id);
size_t reply_len(enum reply_id id);
int reply_code(enum reply_id id);

/* Writes the reply id with arg in place of its name into out (NUL
 * terminated); returns its length, cut to a CRLF-ended line when arg is too
 * long for cap. */
size_t reply_format(enum reply_fmt id, const char *arg, char *out, size_t cap);

/* The EHLO reply: the greeting line with hostname, then the capabilities
 * sluice offers. Returns the length written into out (NUL terminated), 0 when
 * cap is too small. */
struct reply_ehlo_offer {
    const char *hostname;
    long long size_max;
    bool smtputf8; /* every pool accepts it */
    bool starttls; /* the listener offers TLS and the session is not in it yet */
};
size_t reply_ehlo(const struct reply_ehlo_offer *o, char *out, size_t cap);

/* A plugin verdict's reply: def is the hook's default (its code gives the
 * class; a 421 default forces 421, the reply of a closing verdict). code 0
 * and an empty text give def verbatim; otherwise code is kept when in def's
 * class, esc when of that class ("C.7.1" otherwise), text when not empty
 * (else "Rejected" / "Try again later"). One line, CRLF-ended, into out (REPLY_FORMAT_MAX bytes is
 * always enough). Returns its length. */
size_t reply_verdict(enum reply_id def, int code, const char *esc, const char *text, char *out,
                     size_t cap);

/* A backend reply, parsed from the start of a buffer. */
struct smtp_reply {
    int code;        /* 200..599 */
    size_t len;      /* bytes of all its lines, CRLFs included */
    size_t nlines;
};

#define REPLY_MAX_LEN 65536   /* a longer reply is a protocol error */
#define REPLY_MAX_LINE 2048

/* Parses one complete reply (all "ddd-" lines and the final "ddd ") from buf.
 * Returns 1 with *out filled when complete, 0 when more bytes are needed, -1
 * when it violates the protocol (non-digit code, codes that differ between
 * lines, a code outside RFC 5321's grammar: first digit 2..5, second 0..5,
 * an over-long line or reply, a line not ending in CRLF or LF). A bare LF
 * ending is accepted. Which classes may answer which command is the
 * backend's table (backend_proto.h), not the parser's business. */
int reply_parse(const char *buf, size_t len, struct smtp_reply *out);

/* Writes the reply (buf, r->len) for relaying to a client into out (a buffer
 * of at least r->len + 8 * r->nlines + 16 bytes): every line ends in CRLF; a
 * line without an enhanced status code of the reply's class gets "C.0.0 "
 * inserted after "ddd-"/"ddd ". Returns the number of bytes written, or 0 when
 * outlen is smaller than that bound. */
size_t reply_format_relay(const char *buf, const struct smtp_reply *r, char *out, size_t outlen);

/* True when the text of a reply line starts with an enhanced status code whose
 * class digit equals code/100 ("2.1.5 ..."). line points at the text after
 * "ddd " / "ddd-". */
bool reply_has_esc(const char *text, size_t len, int code);

/* True when esc is exactly an enhanced status code (RFC 3463): class 2, 4
 * or 5, subject and detail of 1 to 3 digits ("5.7.1"), nothing else. */
bool reply_esc_valid(const char *esc);

struct ehlo_caps {
    bool pipelining, size, eightbitmime, smtputf8, dsn, starttls, chunking;
    long long size_max; /* 0 when unlimited or absent */
    bool xclient;
    bool xclient_addr, xclient_port, xclient_name, xclient_helo, xclient_proto,
        xclient_login, xclient_destaddr, xclient_destport;
};
/* Reads the keywords of a parsed 250 EHLO reply (first line is the greeting). */
void reply_ehlo_caps(const char *buf, const struct smtp_reply *r, struct ehlo_caps *out);

#endif
