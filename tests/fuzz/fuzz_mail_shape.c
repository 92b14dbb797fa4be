/* The clamav plugin's mail shape check (plugins/clamav/mail_shape.c), built
 * with a 1 KiB read buffer so that inputs cross many buffer ends. Besides
 * memory safety it checks two invariants that would catch a mark lost at a
 * buffer end:
 * - short reads from the source (any size) give the same answer as whole
 *   ones;
 * - empty lines put before a body move every mark across the buffer ends
 *   but change nothing the rules look at, so the answer stays the same;
 * - nor does a longer header section (a plain field padded), which moves
 *   the body's start, its first line included, up to the first read's end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mail_shape.h"

struct source {
    const uint8_t *data;
    size_t len, max_read;
};

static ssize_t source_pread(void *handle, void *buf, size_t len, uint64_t off)
{
    struct source *s = handle;
    if (off >= s->len)
        return 0;
    size_t n = s->len - (size_t)off;
    if (n > len)
        n = len;
    if (s->max_read && n > s->max_read)
        n = s->max_read;
    memcpy(buf, s->data + off, n);
    return (ssize_t)n;
}

static enum mail_shape shape(const uint8_t *data, size_t len, size_t max_read)
{
    char why[192];
    struct source s = {data, len, max_read};
    enum mail_shape got = mail_shape_read(source_pread, &s, why, sizeof why);
    if (got == MAIL_SHAPE_ERROR || !memchr(why, 0, sizeof why))
        abort(); /* the source never fails; why is always a string */
    return got;
}

static const char head[] = "Subject: fuzz\r\n\r\n";

/* An X-Pad field of pad bytes, head, lines empty lines, then body: one copy
 * exactly that long. */
static enum mail_shape with_body(const uint8_t *body, size_t len, size_t lines, size_t pad)
{
    size_t field = pad ? 7 + pad + 2 : 0;
    size_t total = field + sizeof head - 1 + 2 * lines + len;
    uint8_t *msg = malloc(total ? total : 1);
    if (!msg)
        abort();
    if (pad) {
        memcpy(msg, "X-Pad: ", 7);
        memset(msg + 7, 'p', pad);
        memcpy(msg + 7 + pad, "\r\n", 2);
    }
    memcpy(msg + field, head, sizeof head - 1);
    for (size_t i = 0; i < lines; i++)
        memcpy(msg + field + sizeof head - 1 + 2 * i, "\r\n", 2);
    if (len)
        memcpy(msg + field + sizeof head - 1 + 2 * lines, body, len);
    enum mail_shape got = shape(msg, total, 0);
    free(msg);
    return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (shape(data, size, 0) != shape(data, size, size ? (size_t)data[0] % 61 + 1 : 1))
        abort();
    enum mail_shape first = with_body(data, size, 0, 0);
    static const size_t shifts[] = {1, 3, 100, 383, 384, 385, 500, 511};
    for (size_t i = 0; i < sizeof shifts / sizeof shifts[0]; i++)
        if (with_body(data, size, shifts[i], 0) != first)
            abort();
    /* The header section stays within the 1 KiB buffer (pad + 26 bytes). */
    static const size_t pads[] = {760, 850, 950, 990, 997, 998};
    for (size_t i = 0; i < sizeof pads / sizeof pads[0]; i++)
        if (with_body(data, size, 0, pads[i]) != first)
            abort();
    return 0;
}
