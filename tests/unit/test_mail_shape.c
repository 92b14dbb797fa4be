/* The clamav plugin's mail shape check (plugins/clamav/mail_shape.c): which
 * messages are scanned without libclamav's mail parser. Every shape the
 * parser would decode must be MIME, wherever its mark falls against the
 * check's read buffer; plain text from real mail programs must be plain. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mail_shape.h"

struct source {
    const char *data;
    size_t len;
    size_t max_read; /* 0: no limit */
    bool fails;
    uint64_t fail_at;  /* with fails: a read at or past this offset fails */
};

static ssize_t source_pread(void *handle, void *buf, size_t len, uint64_t off)
{
    struct source *s = handle;
    if (s->fails && off >= s->fail_at)
        return -1;
    if (off >= s->len)
        return 0;
    size_t n = s->len - (size_t)off;
    if (n > len)
        n = len;
    if (s->max_read && n > s->max_read)
        n = s->max_read;
    /* An exact copy, so that ASan sees any read past what was handed out. */
    memcpy(buf, s->data + off, n);
    return (ssize_t)n;
}

static char why[192];

static enum mail_shape shape_of_n(const char *msg, size_t len, size_t max_read)
{
    struct source s = {msg, len, max_read, false, 0};
    return mail_shape_read(source_pread, &s, why, sizeof why);
}

static enum mail_shape shape_of(const char *msg)
{
    return shape_of_n(msg, strlen(msg), 0);
}

#define HEAD "From: a@x.example\r\nTo: b@y.example\r\nSubject: hello\r\n"

static void plain_messages_are_plain(void **state)
{
    (void)state;
    assert_int_equal(shape_of(HEAD "\r\nHello,\r\nsee you.\r\n"), MAIL_SHAPE_PLAIN);
    /* As Thunderbird sends plain text (UTF-8, format=flowed, a language). */
    assert_int_equal(shape_of("Message-ID: <1@x>\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\n"
                              "MIME-Version: 1.0\r\nContent-Language: en-US\r\n"
                              "Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
                              "Content-Transfer-Encoding: 8bit\r\n" HEAD
                              "\r\nGr\xc3\xbc\xc3\x9f""e, we begin at 10 =) b.\r\n"),
                     MAIL_SHAPE_PLAIN);
    /* A folded Content-Type: parameters on the next line. */
    assert_int_equal(shape_of("Content-Type: TEXT/PLAIN;\r\n\tcharset=us-ascii\r\n"
                              "Content-Transfer-Encoding: BINARY \r\n\r\nbody\r\n"),
                     MAIL_SHAPE_PLAIN);
    /* ISO-2022-JP text is 7 bit with ESC sequences. */
    assert_int_equal(shape_of(HEAD "\r\n\x1b$B$3$s$K$A$O\x1b(B\r\n"), MAIL_SHAPE_PLAIN);
    assert_int_equal(shape_of(HEAD "\r\n"), MAIL_SHAPE_PLAIN);
    assert_int_equal(shape_of(HEAD), MAIL_SHAPE_PLAIN);
    assert_int_equal(shape_of(""), MAIL_SHAPE_PLAIN);
    assert_string_equal(why, "plain text");
}

static void header_shapes_the_parser_reads_are_mime(void **state)
{
    (void)state;
    static const char *const heads[] = {
        "Content-Type: multipart/mixed; boundary=b\r\n",
        "Content-Type: text/html\r\n",
        "Content-Type: message/rfc822\r\n",
        "Content-Type: application/ms-tnef\r\n",
        "Content-Type: text/plainx\r\n",
        "Content-Type:\r\n text/plain\r\n",
        "Content-Type : text/plain\r\n",
        "Content-Type: text/plain\r\nContent-Type: text/plain\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "Content-Transfer-Encoding: quoted-printable\r\n",
        "Content-Transfer-Encoding: x-uuencode\r\n",
        "Content-Transfer-Encoding: 7bit\r\n", /* libclamav decodes base64 under it */
        "Content-Transfer-Encoding: 7BIT\r\n",
        "Content-Transfer-Encoding: 8bit\r\n base64\r\n",
        "Content-Transfer-Encoding: 8bit\r\nContent-Transfer-Encoding: 8bit\r\n",
        "Content-Disposition: attachment; filename=a.exe\r\n",
        "Content-Description: x\r\n",
        "X-Note: hi\r\n Content-Type: multipart/mixed\r\n",
        "X-Note: content-type: multipart/mixed\r\n",
        "Content-Language: content-type\r\n",
        "From a@x.example Thu Dec  3 10:00:00 2026\r\n", /* an mbox */
        "Subject hello\r\n",
        ": no name\r\n",
        "X-Bad\x01: control\r\n",
        "X-Cr: bare\rcarriage return\r\n",
        "X-Blank: next line is blanks\r\n  \t \r\n<a href=x>y</a>\r\n",
        " leading: continuation with nothing before\r\n",
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s" HEAD "\r\nbody\r\n", heads[i]);
        enum mail_shape got = shape_of(msg);
        if (got != MAIL_SHAPE_MIME)
            fail_msg("header %zu (%s) read as plain", i, heads[i]);
    }
}

static void body_marks_are_mime(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "<a href=\"http://x.example/\">your bank</a>\r\n",
        "see <b>this</b>\r\n",
        "begin 644 eicar.com\r\n",
        "BEGIN 644 eicar.com\r\n",
        "   \tbegin 644 eicar.com\r\n",
        "=ybegin line=128 size=68 name=eicar.com\r\n",
        "(This file must be converted with BinHex 4.0)\r\n",
        "--- original message ---\r\nContent-Type: multipart/mixed; boundary=x\r\n",
        "x\r\nCONTENT-TRANSFER-ENCODING: base64\r\n",
        "MZ\x90\x03",
        "a\x7f",
        "a\x08",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        char msg[512];
        snprintf(msg, sizeof msg, HEAD "\r\nhello\r\n%s", bodies[i]);
        if (shape_of(msg) != MAIL_SHAPE_MIME)
            fail_msg("body %zu (%s) read as plain", i, bodies[i]);
        /* The same mark as the body's first line. */
        snprintf(msg, sizeof msg, HEAD "\r\n%s", bodies[i]);
        if (shape_of(msg) != MAIL_SHAPE_MIME)
            fail_msg("body %zu (%s) as the first line read as plain", i, bodies[i]);
    }
    /* NUL carried by length. */
    const char nul[] = HEAD "\r\nab\0cd\r\n";
    assert_int_equal(shape_of_n(nul, sizeof nul - 1, 0), MAIL_SHAPE_MIME);
    /* "begin" inside a line is prose, not uuencode. */
    assert_int_equal(shape_of(HEAD "\r\nwe begin at ten\r\n"), MAIL_SHAPE_PLAIN);
}

static void long_header_sections_and_blank_runs_lean_to_mime(void **state)
{
    (void)state;
    size_t len = MAIL_SHAPE_HEADER_MAX + 100;
    char *msg = malloc(len + 16);
    assert_non_null(msg);
    size_t n = 0;
    while (n + 30 < len)
        n += (size_t)sprintf(msg + n, "X-Filler: %018zu\r\n", n);
    n += (size_t)sprintf(msg + n, "\r\nbody\r\n");
    assert_int_equal(shape_of_n(msg, n, 0), MAIL_SHAPE_MIME);
    assert_string_equal(why, "a header section longer than the shape check reads");
    free(msg);

    /* Whole lines that fill the first read exactly, the empty line just
     * after it. */
    msg = malloc(MAIL_SHAPE_HEADER_MAX + 64);
    assert_non_null(msg);
    memset(msg, 'x', MAIL_SHAPE_HEADER_MAX);
    for (size_t at = 0; at + 100 <= MAIL_SHAPE_HEADER_MAX; at += 100)
        memcpy(msg + at, "X-Filler: ", 10), memcpy(msg + at + 98, "\r\n", 2);
    size_t rest = MAIL_SHAPE_HEADER_MAX % 100;
    if (rest) {
        memcpy(msg + MAIL_SHAPE_HEADER_MAX - rest, "X: ", 3);
        memcpy(msg + MAIL_SHAPE_HEADER_MAX - 2, "\r\n", 2);
    }
    n = MAIL_SHAPE_HEADER_MAX + (size_t)sprintf(msg + MAIL_SHAPE_HEADER_MAX, "\r\nbody\r\n");
    assert_int_equal(shape_of_n(msg, n, 0), MAIL_SHAPE_MIME);
    assert_string_equal(why, "a header section longer than the shape check reads");
    free(msg);

    char blanks[600];
    int k = snprintf(blanks, sizeof blanks, HEAD "\r\nx\r\n%300s", "");
    assert_int_equal(shape_of_n(blanks, (size_t)k, 0), MAIL_SHAPE_MIME);
}

/* A plain body of size bytes (lines of 60 letters free of marks). */
static char *plain_body_message(size_t size, size_t *head_len)
{
    char *msg = malloc(size + 1);
    assert_non_null(msg);
    size_t h = (size_t)sprintf(msg, "%s\r\n", HEAD);
    for (size_t i = h; i < size; i++)
        msg[i] = (i - h) % 62 == 60 ? '\r' : (i - h) % 62 == 61 ? '\n' : 'x';
    msg[size] = 0;
    *head_len = h;
    return msg;
}

/* Every mark, at every offset around the ends of the check's first and
 * second reads, in whole and in short reads of the source. */
static void marks_are_found_across_read_boundaries(void **state)
{
    (void)state;
    static const char *const marks[] = {"<", "content-", "=ybegin", "binhex", "\nbegin ",
                                        "\n      begin ", "\x01"};
    size_t size = 2 * MAIL_SHAPE_HEADER_MAX + 4096;
    size_t head;
    char *msg = plain_body_message(size, &head);
    assert_int_equal(shape_of_n(msg, size, 0), MAIL_SHAPE_PLAIN);
    assert_int_equal(shape_of_n(msg, size, 1000), MAIL_SHAPE_PLAIN);
    char *copy = malloc(size);
    assert_non_null(copy);
    size_t ends[] = {MAIL_SHAPE_HEADER_MAX - 256, MAIL_SHAPE_HEADER_MAX,
                     2 * MAIL_SHAPE_HEADER_MAX - 512, size - 16};
    for (size_t e = 0; e < sizeof ends / sizeof ends[0]; e++) {
        for (size_t m = 0; m < sizeof marks / sizeof marks[0]; m++) {
            size_t mlen = strlen(marks[m]);
            for (size_t at = ends[e] - 20; at < ends[e] + 20 && at + mlen <= size; at++) {
                memcpy(copy, msg, size);
                memcpy(copy + at, marks[m], mlen);
                /* Short reads at the first end only: fill() is the same after. */
                if (shape_of_n(copy, size, 0) != MAIL_SHAPE_MIME ||
                    (e == 0 && shape_of_n(copy, size, 777) != MAIL_SHAPE_MIME))
                    fail_msg("mark %zu at %zu read as plain", m, at);
            }
        }
    }
    free(copy);
    free(msg);
}


/* A header section that ends just before the end of the first read: the
 * body's first line is looked at with its whole look ahead all the same. */
static void a_mark_on_the_first_body_line_at_the_end_of_the_first_read_is_found(void **state)
{
    (void)state;
    static const char *const firsts[] = {"begin 644 eicar.com\r\n", "   begin 644 x\r\n",
                                         "<a href=x>\r\n", "content-type: x\r\n",
                                         "=ybegin x\r\n", "binhex\r\n"};
    size_t size = MAIL_SHAPE_HEADER_MAX + 4096;
    char *msg = malloc(size);
    assert_non_null(msg);
    for (size_t f = 0; f < sizeof firsts / sizeof firsts[0]; f++) {
        for (size_t gap = 1; gap < 300; gap++) {
            /* One long field, then the empty line, ending gap bytes before
             * the end of the first read. */
            size_t body_at = MAIL_SHAPE_HEADER_MAX - gap;
            memset(msg, 'x', size);
            memcpy(msg, "X-Pad: ", 7);
            memcpy(msg + body_at - 4, "\r\n\r\n", 4);
            size_t flen = strlen(firsts[f]);
            memcpy(msg + body_at, firsts[f], flen);
            if (shape_of_n(msg, size, 0) != MAIL_SHAPE_MIME)
                fail_msg("first line %zu with the body %zu bytes before the end read as plain",
                         f, gap);
        }
    }
    free(msg);
}

static void a_read_error_is_an_error(void **state)
{
    (void)state;
    size_t head;
    size_t size = MAIL_SHAPE_HEADER_MAX + 1000;
    char *msg = plain_body_message(size, &head);
    struct source first = {msg, size, 0, true, 0};
    assert_int_equal(mail_shape_read(source_pread, &first, why, sizeof why), MAIL_SHAPE_ERROR);
    struct source later = {msg, size, 0, true, MAIL_SHAPE_HEADER_MAX};
    assert_int_equal(mail_shape_read(source_pread, &later, why, sizeof why), MAIL_SHAPE_ERROR);
    assert_string_equal(why, "cannot read the message");
    free(msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plain_messages_are_plain),
        cmocka_unit_test(header_shapes_the_parser_reads_are_mime),
        cmocka_unit_test(body_marks_are_mime),
        cmocka_unit_test(long_header_sections_and_blank_runs_lean_to_mime),
        cmocka_unit_test(marks_are_found_across_read_boundaries),
        cmocka_unit_test(a_mark_on_the_first_body_line_at_the_end_of_the_first_read_is_found),
        cmocka_unit_test(a_read_error_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
