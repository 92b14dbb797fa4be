/* The inbound path of a connection on a PROXY listener, up to and through
 * its commands: the bytes go over a real socket into the session's I/O
 * layer (host/io.c, line framing with NUL bytes and over-long lines), the
 * PROXY header is taken as the session takes it (peek, parse, drain), and
 * every line goes to the command, path, parameter and HELO parsers. Checks:
 * a line is never longer than the limit nor holds its LF; the header never
 * claims more than it saw; nothing reads past what arrived; all input is
 * accounted for (lines + skipped + header + what is left). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "io.h"
#include "proxy_proto.h"
#include "smtp_cmd.h"

#define MAX_LINE 512 /* a small max_line_length, so long lines are common */

struct feed {
    struct io *io;
    bool header_done, eof;
    size_t consumed;
    char line[MAX_LINE];
};

static void check_command(const char *line, size_t len)
{
    struct smtp_cmd c;
    if (smtp_cmd_parse(line, len, &c) < 0)
        return;
    struct smtp_path path;
    struct mail_params mp;
    struct rcpt_params rp;
    if (c.verb == SMTP_MAIL &&
        smtp_path_parse(c.arg, c.arg_len, false, smtp_path_has_smtputf8(c.arg, c.arg_len),
                        &path) == SMTP_PATH_OK)
        (void)smtp_mail_params(&path, &mp);
    if (c.verb == SMTP_RCPT && smtp_path_parse(c.arg, c.arg_len, true, true, &path) ==
                                   SMTP_PATH_OK)
        (void)smtp_rcpt_params(&path, &rp);
    if (c.verb == SMTP_EHLO || c.verb == SMTP_HELO)
        (void)smtp_helo_valid(c.arg, c.arg_len);
}

/* As session_proxy_input(): wait for a whole header, or give up at the most
 * a header may take. */
static bool take_header(struct feed *f)
{
    size_t avail = io_input_len(f->io);
    size_t want = avail < PROXY_MAX_HEADER ? avail : PROXY_MAX_HEADER;
    const unsigned char *buf = io_input_peek(f->io, want);
    if (want > 0 && buf == NULL)
        abort();
    struct proxy_info info;
    int n = proxy_parse(buf, want, &info);
    if (n > (int)want)
        abort();
    if (n == 0 && want < PROXY_MAX_HEADER && !f->eof)
        return false;
    if (n <= 0) {
        f->eof = true; /* the session closes here */
        return false;
    }
    io_input_drain(f->io, (size_t)n);
    f->consumed += (size_t)n;
    f->header_done = true;
    return true;
}

static void take_lines(struct feed *f)
{
    for (;;) {
        size_t before = io_input_len(f->io), len = 0;
        enum io_line r = io_read_line(f->io, f->line, sizeof f->line, &len);
        size_t taken = before - io_input_len(f->io);
        f->consumed += taken;
        if (r == IO_LINE_MORE || r == IO_LINE_LONG_OPEN) {
            if (r == IO_LINE_MORE && taken != 0)
                abort();
            return;
        }
        if (r == IO_LINE_OK) {
            if (len >= sizeof f->line || memchr(f->line, '\n', len) || taken < len + 1)
                abort();
            check_command(f->line, len);
        }
    }
}

static void on_input(struct io *io, void *arg)
{
    struct feed *f = arg;
    if (!f->header_done && !take_header(f))
        return;
    if (f->header_done)
        take_lines(f);
}

static void on_event(struct io *io, enum io_event ev, void *arg)
{
    struct feed *f = arg;
    f->eof = true;
    if (!f->header_done)
        take_header(f);
}

static const struct io_callbacks callbacks = {on_input, NULL, on_event};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct event_base *base;
    if (base == NULL && (base = event_base_new()) == NULL)
        abort();
    int sv[2];
    if (size > 65536 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 0;
    struct feed f = {0};
    f.io = io_new(base, sv[0], &callbacks, &f);
    if (f.io == NULL)
        abort();
    if (size > 0 && write(sv[1], data, size) != (ssize_t)size)
        abort();
    shutdown(sv[1], SHUT_WR);
    for (int turn = 0; turn < 1000 && !f.eof; turn++)
        event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE);
    if (f.header_done)
        take_lines(&f);
    if (f.consumed + io_input_len(f.io) > size)
        abort();
    io_free(f.io);
    close(sv[1]);
    return 0;
}
