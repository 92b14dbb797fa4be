/* SMTP command parsing (server side). Pure functions over (pointer, length):
 * lines may contain NUL bytes and anything else a hostile client sends. */
#ifndef SLUICE_SMTP_CMD_H
#define SLUICE_SMTP_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum smtp_verb {
    SMTP_UNKNOWN = 0,
    SMTP_HELO,
    SMTP_EHLO,
    SMTP_MAIL,
    SMTP_RCPT,
    SMTP_DATA,
    SMTP_RSET,
    SMTP_NOOP,
    SMTP_QUIT,
    SMTP_HELP,
    SMTP_VRFY,
    SMTP_EXPN,
    SMTP_STARTTLS,
    SMTP_AUTH,
    SMTP_BDAT,
    SMTP_XCLIENT,
};

struct smtp_cmd {
    enum smtp_verb verb;
    const char *arg; /* after the verb and its separating space(s); points into the line */
    size_t arg_len;  /* trailing spaces removed */
};

/* line excludes the CRLF. Verb matching is case-insensitive; the verb must be
 * followed by a space or the end of line. Returns 0, or -1 when the line holds
 * a NUL or other control byte (except TAB) -> the caller answers 500 5.5.2.
 * An unrecognised verb gives verb == SMTP_UNKNOWN and returns 0. */
int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *out);
const char *smtp_verb_name(enum smtp_verb verb);

#define SMTP_MAX_PARAMS 16
struct smtp_param {
    const char *key; /* points into the argument */
    size_t key_len;
    const char *value; /* NULL when the parameter has no "=value" */
    size_t value_len;
};

struct smtp_path {
    const char *addr; /* inside <>, source route removed; "" (len 0) for <> */
    size_t addr_len;
    size_t local_len;  /* the local part as sent (quotes kept), a prefix of addr */
    bool source_route; /* "@a,@b:" stood before the mailbox (RFC 5321 4.1.2) */
    struct smtp_param params[SMTP_MAX_PARAMS];
    size_t nparams;
};

enum smtp_path_status {
    SMTP_PATH_OK = 0,
    SMTP_PATH_SYNTAX,         /* 501 5.5.4 / 501 5.1.3 (bad address) */
    SMTP_PATH_BAD_ADDRESS,    /* 501 5.1.3: not local@domain (or postmaster for RCPT) */
    SMTP_PATH_TOO_LONG,       /* 501 5.5.4: path > 256, local part > 64 or domain > 255 */
    SMTP_PATH_TOO_MANY_PARAMS /* 555 5.5.4 */
};

/* Parses the argument of MAIL ("FROM:<a@b> SIZE=10") or RCPT ("TO:<a@b>").
 * prefix is "FROM:" or "TO:" (case-insensitive; a space after the colon is
 * tolerated). Accepts <> only for MAIL, "<postmaster>" only for RCPT.
 * 8-bit bytes in the address are accepted only when allow_utf8. */
enum smtp_path_status smtp_path_parse(const char *arg, size_t len, bool is_rcpt, bool allow_utf8,
                                      struct smtp_path *out);
/* True when the argument of MAIL carries a SMTPUTF8 parameter (so the caller
 * knows whether to allow 8-bit addresses before the full parse). */
bool smtp_path_has_smtputf8(const char *arg, size_t len);

enum smtp_body { SMTP_BODY_UNSET, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };
enum smtp_ret { SMTP_RET_UNSET, SMTP_RET_FULL, SMTP_RET_HDRS };

struct mail_params {
    int64_t size; /* -1 when absent */
    enum smtp_body body;
    bool smtputf8;
    enum smtp_ret ret;
    char envid[101]; /* xtext as received, "" when absent */
};

#define SMTP_NOTIFY_NEVER 1u
#define SMTP_NOTIFY_SUCCESS 2u
#define SMTP_NOTIFY_FAILURE 4u
#define SMTP_NOTIFY_DELAY 8u

struct rcpt_params {
    unsigned notify;  /* 0 when absent */
    char orcpt[501];  /* "rfc822;xtext" as received, "" when absent */
};

enum smtp_param_status {
    SMTP_PARAM_OK = 0,
    SMTP_PARAM_UNSUPPORTED, /* 555 5.5.4: unknown keyword */
    SMTP_PARAM_SYNTAX,      /* 501 5.5.4: known keyword, bad value, or repeated */
};

/* Interprets MAIL parameters: SIZE, BODY=7BIT|8BITMIME, SMTPUTF8, RET, ENVID. */
enum smtp_param_status smtp_mail_params(const struct smtp_path *p, struct mail_params *out);
/* Interprets RCPT parameters: NOTIFY, ORCPT. */
enum smtp_param_status smtp_rcpt_params(const struct smtp_path *p, struct rcpt_params *out);

/* Domain part of an address ("" for none); points into addr. */
const char *smtp_addr_domain(const char *addr, size_t len, size_t *dlen);

/* RFC 3461 xtext encoding of arbitrary bytes, for XCLIENT values. Writes a
 * NUL-terminated string; returns its length, or -1 when out is too small. */
int smtp_xtext_encode(const char *in, size_t len, char *out, size_t outlen);

/* HELO/EHLO argument check: one domain or address literal, printable ASCII,
 * at most 255 bytes. Returns true when acceptable. */
bool smtp_helo_valid(const char *arg, size_t len);

#endif
