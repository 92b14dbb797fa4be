/* The DATA stream: from the client's dot-stuffed bytes to the canonical wire
 * form that is spooled and later sent to the backend verbatim. */
#ifndef SLUICE_DATA_CODEC_H
#define SLUICE_DATA_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct evbuffer;

/*
 * Rules (DESIGN "Bad input", SMTP smuggling):
 *  - End of data is only <CRLF>.<CRLF>. The CRLF that ended the DATA command
 *    counts as the first CRLF, so ".\r\n" right after DATA is an empty message.
 *  - The output is the message in canonical wire form: lines end in CRLF, and
 *    every line whose content starts with '.' is written with one extra '.'.
 *    For a compliant client the output equals the input minus ".\r\n".
 *  - A line that started after a CRLF is un-stuffed (one leading '.' removed)
 *    and re-stuffed on output, so it is unchanged.
 *  - A bare LF, a bare CR, or a CR LF split by other bytes: in NORMALIZE mode
 *    it ends the line and is written as CRLF; the next line is plain body text
 *    (not un-stuffed; a leading '.' is stuffed on output), so "\n.\r\n" or
 *    "\r.\r" are never an end of data. In REJECT mode the bytes are written the
 *    same way, and saw_bare_newline is set so the caller refuses the message.
 *  - A NUL byte is written like any other and sets saw_nul: the caller refuses
 *    the message in both modes, since a backend that drops NULs would read
 *    "<CRLF><NUL>.<CRLF>" as an end of data (and what follows as commands).
 *  - Bytes after the terminator are not consumed (pipelined commands).
 */
struct data_decoder {
    enum bare_newline_mode mode;
    int state;             /* internal */
    bool line_after_crlf;  /* internal */
    bool done;             /* <CRLF>.<CRLF> seen */
    bool saw_bare_newline; /* a bare CR or LF was seen */
    bool saw_nul;          /* a NUL byte was seen in the message (not after its end) */
    uint64_t out_bytes;    /* bytes written to out so far (wire form) */
    uint64_t stuff_dots;   /* of those, dots that only stuff a line (not content) */
    bool over_limit;       /* the content passed out_limit: the message is too big */
    bool out_failed;       /* out could not take bytes (memory): the message is incomplete */
};

void data_decoder_init(struct data_decoder *d, enum bare_newline_mode mode);

/* Consumes bytes of in (up to and including the terminator), appends the wire
 * form to out, and returns the number of bytes consumed. out_limit bounds the
 * content as RFC 1870 counts it (data_decoder_size): once more would pass it,
 * bytes are still consumed and checked for the terminator but no longer
 * written, and over_limit is set (the caller answers 552 at the end). A
 * message of exactly out_limit content bytes is not over the limit, however
 * many of its lines are dot-stuffed; the wire form written is at most
 * out_limit plus one dot per line. */
size_t data_decode(struct data_decoder *d, const char *in, size_t len, struct evbuffer *out,
                   uint64_t out_limit);

/* Where data_decode_to puts the wire form: returns 0, or -1 when the bytes
 * could not be kept (they are then not counted in out_bytes). */
typedef int (*data_sink_fn)(void *arg, const char *p, size_t n);

/* data_decode with the output going to sink instead of an evbuffer: the
 * session writes straight into the spool, so the input is copied at most
 * once (a large chunk passed whole is moved, not copied: spool_take). A
 * compliant client's input goes to sink in whole runs (about one call per
 * input chunk); only lines that change (a bare CR or LF, a lone leading dot)
 * and a chunk that ends inside a CRLF or "\r\n." split them. */
size_t data_decode_to(struct data_decoder *d, const char *in, size_t len, data_sink_fn sink,
                      void *sink_arg, uint64_t out_limit);

/* Whether runs of plain lines are checked 64 bytes at a time (AVX2): on by
 * default where the CPU has it; off, every line is walked on its own. The
 * output is the same either way (tests and the fuzz target compare them). */
void data_codec_set_wide(bool on);

/* The message size as RFC 1870 counts it: the content written so far, CRLFs
 * included, without stuffing dots or the terminator. */
uint64_t data_decoder_size(const struct data_decoder *d);

/* Wire form -> content (un-stuffed lines, CRLF kept, no terminator), for
 * plugins that read the body. at_bol tracks line starts across calls; start
 * with true. Appends to out. */
void data_unstuff(const char *in, size_t len, bool *at_bol, struct evbuffer *out);
/* Content -> wire form: lines starting with '.' get one more '.'; bare CR/LF
 * are written as CRLF. at_bol as above. A CR that ends in is taken as bare,
 * so split content after a LF, never between CR and LF. */
void data_stuff(const char *in, size_t len, bool *at_bol, struct evbuffer *out);

#endif
