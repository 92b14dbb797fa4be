/* host/linebuf.h and host/ascii.h: the copies that replaced printf and
 * strncasecmp on the per-command path, at their edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ascii.h"
#include "linebuf.h"

static void test_pieces_that_fit_are_copied_in_order(void **state)
{
    (void)state;
    char buf[32];
    struct linebuf lb = linebuf_on(buf, sizeof buf);
    linebuf_str(&lb, "MAIL FROM:<");
    linebuf_add(&lb, "a\0b@x", 5); /* lengths, not C strings */
    linebuf_str(&lb, ">");
    assert_false(lb.overflow);
    assert_int_equal(lb.len, 17);
    assert_memory_equal(buf, "MAIL FROM:<a\0b@x>", 17);
}

/* A piece that does not fit is dropped whole, the flag stays set, and
 * nothing is written past the capacity (the guard bytes stay as they were). */
static void test_a_piece_over_the_capacity_is_dropped_and_nothing_written_past_it(void **state)
{
    (void)state;
    char buf[16];
    memset(buf, '#', sizeof buf);
    struct linebuf lb = linebuf_on(buf, 8);
    linebuf_str(&lb, "12345");
    linebuf_str(&lb, "6789");
    assert_true(lb.overflow);
    assert_int_equal(lb.len, 5);
    linebuf_str(&lb, "x"); /* would fit, but the line is already wrong */
    assert_int_equal(lb.len, 5);
    for (size_t i = 5; i < sizeof buf; i++)
        assert_int_equal(buf[i], '#');
    lb = linebuf_on(buf, 8);
    linebuf_str(&lb, "12345678"); /* exactly the capacity */
    assert_false(lb.overflow);
    assert_int_equal(lb.len, 8);
}

static void test_cut_keeps_what_fits(void **state)
{
    (void)state;
    char buf[16];
    memset(buf, '#', sizeof buf);
    struct linebuf lb = linebuf_on(buf, 6);
    linebuf_str(&lb, "220 ");
    linebuf_cut(&lb, "mx.example");
    assert_true(lb.overflow);
    assert_int_equal(lb.len, 6);
    assert_memory_equal(buf, "220 mx", 6);
    assert_int_equal(buf[6], '#');
}

static void test_decimal_as_printf_writes_it(void **state)
{
    (void)state;
    static const uint64_t values[] = {0, 7, 9, 10, 99, 100, 255, 1000000, UINT64_MAX};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char buf[32], want[32];
        struct linebuf lb = linebuf_on(buf, sizeof buf);
        linebuf_u64(&lb, values[i]);
        snprintf(want, sizeof want, "%llu", (unsigned long long)values[i]);
        assert_int_equal(lb.len, strlen(want));
        assert_memory_equal(buf, want, lb.len);
    }
    char small[3];
    struct linebuf lb = linebuf_on(small, sizeof small);
    linebuf_u64(&lb, 1234);
    assert_true(lb.overflow);
    assert_int_equal(lb.len, 0);
}

static void test_ascii_folding_touches_letters_only(void **state)
{
    (void)state;
    assert_true(ascii_caseeq("FROM:", "from:", 5));
    assert_true(ascii_caseeq("PostMaster", "POSTMASTER", 10));
    assert_false(ascii_caseeq("FROM;", "FROM:", 5));
    /* Bytes that differ by the case bit but are no letters stay different. */
    assert_false(ascii_caseeq("@", "`", 1));
    assert_false(ascii_caseeq("[", "{", 1));
    assert_false(ascii_caseeq("\xc9", "\xe9", 1)); /* no Latin-1 folding */
    for (int c = 0; c < 256; c++) {
        unsigned char l = ascii_lower((unsigned char)c);
        if (c >= 'A' && c <= 'Z')
            assert_int_equal(l, c + 32);
        else
            assert_int_equal(l, c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces_that_fit_are_copied_in_order),
        cmocka_unit_test(test_a_piece_over_the_capacity_is_dropped_and_nothing_written_past_it),
        cmocka_unit_test(test_cut_keeps_what_fits),
        cmocka_unit_test(test_decimal_as_printf_writes_it),
        cmocka_unit_test(test_ascii_folding_touches_letters_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
