/* Whether a message gives libclamav's mail parser anything to do.
 *
 * The parser decodes MIME parts (base64, quoted-printable), walks multipart
 * and message/rfc822 parts, finds uuencoded, yEnc and BinHex blocks and
 * messages embedded in plain text (bounces), and checks the links of HTML
 * for phishing. Before scanning, it writes every part to a work file. A
 * single-part plain text message with none of those gives it nothing to
 * decode: the bytes it would scan are the message's own, which a scan
 * without the parser reads as they are, at a quarter of the cost
 * (bench/clamav-scan-cost.sh). This module reads the message once and says
 * PLAIN only when it is sure; anything it does not recognise is MIME. */
#ifndef CLAMAV_MAIL_SHAPE_H
#define CLAMAV_MAIL_SHAPE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum mail_shape { MAIL_SHAPE_PLAIN, MAIL_SHAPE_MIME, MAIL_SHAPE_ERROR };

/* Up to len bytes at offset off; fewer only at the end, -1 on an error. */
typedef ssize_t (*mail_shape_pread_fn)(void *handle, void *buf, size_t len, uint64_t off);

/* A header section longer than this is MIME: it is not looked into. Also
 * the read buffer's size (the fuzz target makes it small, to cross many
 * buffer ends). */
#ifndef MAIL_SHAPE_HEADER_MAX
#define MAIL_SHAPE_HEADER_MAX (64 * 1024)
#endif

/* Reads the message from offset 0 to its end (or to the first sign of MIME).
 * why gets what made it MIME (or the read error), for the session's log. */
enum mail_shape mail_shape_read(mail_shape_pread_fn pread, void *handle, char *why, size_t whylen);

#endif
