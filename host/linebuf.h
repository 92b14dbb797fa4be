/* A protocol line built in a fixed buffer by plain copies: the commands
 * sluice writes for every message (MAIL, RCPT) cost a printf each when
 * formatted, about 7 % of a small message's instructions. What does not
 * fit sets overflow and is dropped whole (or cut, by linebuf_cut), never
 * written past the end. */
#ifndef SLUICE_LINEBUF_H
#define SLUICE_LINEBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct linebuf {
    char *buf;
    size_t len, cap;
    bool overflow;
};

static inline struct linebuf linebuf_on(char *buf, size_t cap)
{
    return (struct linebuf){.buf = buf, .len = 0, .cap = cap, .overflow = false};
}

static inline void linebuf_add(struct linebuf *lb, const char *s, size_t n)
{
    if (lb->overflow || n > lb->cap - lb->len) {
        lb->overflow = true;
        return;
    }
    memcpy(lb->buf + lb->len, s, n);
    lb->len += n;
}

static inline void linebuf_str(struct linebuf *lb, const char *s)
{
    linebuf_add(lb, s, strlen(s));
}

/* As much of s as fits: the rest is cut (overflow set), not dropped whole. */
static inline void linebuf_cut(struct linebuf *lb, const char *s)
{
    size_t n = strlen(s), room = lb->cap - lb->len;
    if (n > room) {
        n = room;
        lb->overflow = true;
    }
    memcpy(lb->buf + lb->len, s, n);
    lb->len += n;
}

/* Decimal, as printf's %llu. */
static inline void linebuf_u64(struct linebuf *lb, uint64_t v)
{
    char digits[20];
    size_t n = sizeof digits;
    do {
        digits[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    linebuf_add(lb, digits + n, sizeof digits - n);
}

#endif
