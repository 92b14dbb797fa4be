/* The table of reply classes each backend command may get. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "backend_proto.h"

static void test_only_data_may_get_an_intermediate_reply(void **state)
{
    (void)state;
    for (int step = 0; step < BSTEP_COUNT; step++) {
        bool is_data = step == BSTEP_DATA;
        assert_int_equal(backend_reply_expected((enum backend_step)step, 354), is_data);
        assert_int_equal(backend_reply_expected((enum backend_step)step, 334), is_data);
    }
}

static void test_data_never_takes_a_2xx(void **state)
{
    (void)state;
    assert_false(backend_reply_expected(BSTEP_DATA, 250));
    assert_false(backend_reply_expected(BSTEP_DATA, 200));
    assert_true(backend_reply_expected(BSTEP_DATA, 451));
    assert_true(backend_reply_expected(BSTEP_DATA, 554));
}

static void test_every_command_may_get_421_and_a_final_5xx(void **state)
{
    (void)state;
    for (int step = 0; step < BSTEP_COUNT; step++) {
        assert_true(backend_reply_expected((enum backend_step)step, 421));
        assert_true(backend_reply_expected((enum backend_step)step, 554));
        assert_int_equal(backend_reply_expected((enum backend_step)step, 250),
                         step != BSTEP_DATA);
    }
}

static void test_codes_outside_2xx_to_5xx_are_never_expected(void **state)
{
    (void)state;
    static const int codes[] = {-1, 0, 99, 100, 150, 199, 600, 699, 700, 999, 1000};
    for (int step = 0; step <= BSTEP_COUNT; step++) {
        for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
            assert_false(backend_reply_expected((enum backend_step)step, codes[i]));
    }
}

static void test_unknown_step_expects_nothing_and_has_a_name(void **state)
{
    (void)state;
    assert_false(backend_reply_expected(BSTEP_COUNT, 250));
    assert_string_equal(backend_step_name(BSTEP_COUNT), "?");
    assert_string_equal(backend_step_name(BSTEP_RCPT), "RCPT");
    assert_string_equal(backend_step_name(BSTEP_END_OF_DATA), "end of data");
    for (int step = 0; step < BSTEP_COUNT; step++)
        assert_true(strlen(backend_step_name((enum backend_step)step)) > 0);
}

static void test_excerpt_is_the_first_line_printable_and_bounded(void **state)
{
    (void)state;
    char out[160];
    backend_reply_excerpt("354 go\x00on\r\n250 more\r\n", 21, out, sizeof out);
    assert_string_equal(out, "354 go?on");
    char big[400];
    memset(big, 'A', sizeof big);
    backend_reply_excerpt(big, sizeof big, out, sizeof out);
    assert_true(strlen(out) <= 120);
    backend_reply_excerpt("", 0, out, sizeof out);
    assert_string_equal(out, "");
    backend_reply_excerpt("x\ry\n", 4, out, 3);
    assert_string_equal(out, "x?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_only_data_may_get_an_intermediate_reply),
        cmocka_unit_test(test_data_never_takes_a_2xx),
        cmocka_unit_test(test_every_command_may_get_421_and_a_final_5xx),
        cmocka_unit_test(test_codes_outside_2xx_to_5xx_are_never_expected),
        cmocka_unit_test(test_unknown_step_expects_nothing_and_has_a_name),
        cmocka_unit_test(test_excerpt_is_the_first_line_printable_and_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
