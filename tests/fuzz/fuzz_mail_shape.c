/* The clamav plugin's mail shape check (plugins/clamav/mail_shape.c), built
 * with a 1 KiB read buffer so that inputs cross many buffer ends. Besides
 * memory safety it checks two invariants that would catch a mark lost at a
 * buffer end:
 * - short reads from the source (any size) give the same answer as whole
 *   ones;
 * - empty lines put before a body move every mark across the buffer ends
 *   but change nothing the rules look at, so the answer stays the same. */
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

/* head, lines empty lines, then body: one copy exactly that long. */
static enum mail_shape with_body(const uint8_t *body, size_t len, size_t lines)
{
    size_t total = sizeof head - 1 + 2 * lines + len;
    uint8_t *msg = malloc(total ? total : 1);
    if (!msg)
        abort();
    memcpy(msg, head, sizeof head - 1);
    for (size_t i = 0; i < lines; i++)
        memcpy(msg + sizeof head - 1 + 2 * i, "\r\n", 2);
    if (len)
        memcpy(msg + sizeof head - 1 + 2 * lines, body, len);
    enum mail_shape got = shape(msg, total, 0);
    free(msg);
    return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (shape(data, size, 0) != shape(data, size, size ? (size_t)data[0] % 61 + 1 : 1))
        abort();
    enum mail_shape first = with_body(data, size, 0);
    static const size_t shifts[] = {1, 3, 100, 383, 384, 385, 500, 511};
    for (size_t i = 0; i < sizeof shifts / sizeof shifts[0]; i++)
        if (with_body(data, size, shifts[i]) != first)
            abort();
    return 0;
}
