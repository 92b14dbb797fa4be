/* ASCII case folding for protocol words: SMTP verbs, parameter keywords
 * and domain names compare without regard to case in ASCII only, and
 * glibc's strncasecmp (locale-aware, vectorised for long strings) cost a
 * hundred instructions or more for a four-letter verb. */
#ifndef SLUICE_ASCII_H
#define SLUICE_ASCII_H

#include <stdbool.h>
#include <stddef.h>

static inline unsigned char ascii_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* No byte of the n at p has its top bit set. */
static inline bool ascii_only(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] >= 0x80)
            return false;
    }
    return true;
}

/* The n bytes at a and at b are equal but for the case of ASCII letters. */
static inline bool ascii_caseeq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

#endif
