#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtp_cmd.h"

#define S(lit) (lit), (sizeof(lit) - 1)

static struct smtp_cmd parse_ok(const char *line, size_t len)
{
    struct smtp_cmd c;
    assert_int_equal(smtp_cmd_parse(line, len, &c), 0);
    return c;
}

static void test_verbs_match_case_insensitively(void **state)
{
    (void)state;
    assert_int_equal(parse_ok(S("ehlo x")).verb, SMTP_EHLO);
    assert_int_equal(parse_ok(S("MaIl FROM:<a@b>")).verb, SMTP_MAIL);
    assert_int_equal(parse_ok(S("STARTTLS")).verb, SMTP_STARTTLS);
    assert_int_equal(parse_ok(S("xclient ADDR=1.2.3.4")).verb, SMTP_XCLIENT);
    assert_int_equal(parse_ok(S("QUIT")).verb, SMTP_QUIT);
    assert_int_equal(parse_ok(S("bdat 10 LAST")).verb, SMTP_BDAT);
    assert_string_equal(smtp_verb_name(SMTP_RCPT), "RCPT");
}

/* Every verb, by the name the table gives it, in upper, lower and mixed
 * case; and words one bit away from a verb (a byte that folds onto a
 * capital without being that letter) are no verb. */
static void test_every_verb_is_found_by_its_name_in_any_case(void **state)
{
    (void)state;
    for (int v = SMTP_HELO; v <= SMTP_XCLIENT; v++) {
        const char *name = smtp_verb_name((enum smtp_verb)v);
        size_t n = strlen(name);
        char lower[16], mixed[16];
        assert_true(n < sizeof lower);
        for (size_t i = 0; i < n; i++) {
            lower[i] = (char)(name[i] | 0x20);
            mixed[i] = (char)(i % 2 ? name[i] | 0x20 : name[i]);
        }
        assert_int_equal(parse_ok(name, n).verb, v);
        assert_int_equal(parse_ok(lower, n).verb, v);
        assert_int_equal(parse_ok(mixed, n).verb, v);
    }
    assert_int_equal(parse_ok(S("M@IL")).verb, SMTP_UNKNOWN);
    assert_int_equal(parse_ok(S("MA\xc9L")).verb, SMTP_UNKNOWN); /* 0xC9 folds to 0xC9, not 'I' */
    assert_int_equal(parse_ok(S("D`TA")).verb, SMTP_UNKNOWN);   /* '`' & ~0x20 is '@' */
}

static void test_verb_must_end_at_space_or_eol(void **state)
{
    (void)state;
    assert_int_equal(parse_ok(S("MAILFROM:<a@b>")).verb, SMTP_UNKNOWN);
    assert_int_equal(parse_ok(S("QUITX")).verb, SMTP_UNKNOWN);
    assert_int_equal(parse_ok(S("QUI")).verb, SMTP_UNKNOWN);
    assert_int_equal(parse_ok(S("DATA\t")).verb, SMTP_UNKNOWN);
    assert_int_equal(parse_ok(S("")).verb, SMTP_UNKNOWN);
    assert_int_equal(parse_ok(S(" DATA")).verb, SMTP_UNKNOWN);
}

static void test_argument_skips_separators_and_trailing_spaces(void **state)
{
    (void)state;
    struct smtp_cmd c = parse_ok(S("RCPT   TO:<a@b> NOTIFY=NEVER   "));
    assert_int_equal(c.verb, SMTP_RCPT);
    assert_int_equal(c.arg_len, strlen("TO:<a@b> NOTIFY=NEVER"));
    assert_memory_equal(c.arg, "TO:<a@b> NOTIFY=NEVER", c.arg_len);
    c = parse_ok(S("NOOP"));
    assert_int_equal(c.arg_len, 0);
    c = parse_ok(S("NOOP    "));
    assert_int_equal(c.arg_len, 0);
}

static void test_nul_and_control_bytes_are_refused(void **state)
{
    (void)state;
    struct smtp_cmd c;
    assert_int_equal(smtp_cmd_parse(S("MAIL FROM:<a\0@b>"), &c), -1);
    assert_int_equal(smtp_cmd_parse(S("\0"), &c), -1);
    assert_int_equal(smtp_cmd_parse(S("HELO a\rb"), &c), -1);
    assert_int_equal(smtp_cmd_parse(S("HELO a\nb"), &c), -1);
    assert_int_equal(smtp_cmd_parse(S("HELO \x1b[2J"), &c), -1);
    assert_int_equal(smtp_cmd_parse(S("HELO \x7f"), &c), -1);
    assert_int_equal(smtp_cmd_parse(S("HELO a\tb"), &c), 0);
    assert_int_equal(smtp_cmd_parse(S("HELO \xc3\xa9"), &c), 0);
}

/* The scan goes eight bytes at a time: every refused byte is found at every
 * offset of a word, in the tail after the last whole word too, and the
 * bytes next to them in value (0x20, 0x7e, 0x80, 0xff, a tab) are not. */
static void test_control_bytes_are_found_at_every_offset(void **state)
{
    (void)state;
    static const unsigned char refused[] = {0x00, 0x01, 0x0a, 0x0d, 0x1b, 0x1f, 0x7f};
    static const unsigned char kept[] = {0x09, 0x20, 0x7e, 0x80, 0xff};
    struct smtp_cmd c;
    char line[27];
    for (size_t at = 5; at < sizeof line; at++) {
        for (size_t k = 0; k < sizeof refused; k++) {
            memset(line, 'x', sizeof line);
            memcpy(line, "HELO ", 5);
            line[at] = (char)refused[k];
            assert_int_equal(smtp_cmd_parse(line, sizeof line, &c), -1);
        }
        for (size_t k = 0; k < sizeof kept; k++) {
            memset(line, 'x', sizeof line);
            memcpy(line, "HELO ", 5);
            line[at] = (char)kept[k];
            assert_int_equal(smtp_cmd_parse(line, sizeof line, &c), 0);
        }
    }
}

static void test_huge_argument_is_parsed_without_overrun(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *line = test_malloc(n);
    memset(line, 'A', n);
    memcpy(line, "VRFY ", 5);
    struct smtp_cmd c = parse_ok(line, n);
    assert_int_equal(c.verb, SMTP_VRFY);
    assert_int_equal(c.arg_len, n - 5);

    struct smtp_path p;
    memcpy(line, "FROM:<", 6);
    assert_int_not_equal(smtp_path_parse(line, n, false, false, &p), SMTP_PATH_OK);
    line[n - 1] = '>';
    assert_int_equal(smtp_path_parse(line, n, false, false, &p), SMTP_PATH_TOO_LONG);
    test_free(line);
}

static enum smtp_path_status mail(const char *arg, struct smtp_path *p)
{
    return smtp_path_parse(arg, strlen(arg), false, false, p);
}

static enum smtp_path_status rcpt(const char *arg, struct smtp_path *p)
{
    return smtp_path_parse(arg, strlen(arg), true, false, p);
}

static void assert_addr(const struct smtp_path *p, const char *want)
{
    assert_int_equal(p->addr_len, strlen(want));
    assert_memory_equal(p->addr, want, p->addr_len);
}

static void test_simple_paths_parse(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(mail("FROM:<a@example.org>", &p), SMTP_PATH_OK);
    assert_addr(&p, "a@example.org");
    assert_int_equal(p.nparams, 0);
    assert_int_equal(mail("from: <first.last+tag@sub.example.org>", &p), SMTP_PATH_OK);
    assert_addr(&p, "first.last+tag@sub.example.org");
    assert_int_equal(rcpt("To:<x@[192.0.2.1]>", &p), SMTP_PATH_OK);
    assert_addr(&p, "x@[192.0.2.1]");
    assert_int_equal(rcpt("TO:<x@[IPv6:2001:db8::1]>", &p), SMTP_PATH_OK);
}

static void test_null_path_only_for_mail(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(mail("FROM:<>", &p), SMTP_PATH_OK);
    assert_int_equal(p.addr_len, 0);
    assert_string_equal(p.addr, "");
    assert_int_equal(mail("FROM:<> SIZE=10", &p), SMTP_PATH_OK);
    assert_int_equal(p.nparams, 1);
    assert_int_not_equal(rcpt("TO:<>", &p), SMTP_PATH_OK);
}

static void test_postmaster_only_for_rcpt(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(rcpt("TO:<postmaster>", &p), SMTP_PATH_OK);
    assert_addr(&p, "postmaster");
    assert_int_equal(rcpt("TO:<PostMaster>", &p), SMTP_PATH_OK);
    assert_int_equal(mail("FROM:<postmaster>", &p), SMTP_PATH_BAD_ADDRESS);
    assert_int_equal(rcpt("TO:<postmastr>", &p), SMTP_PATH_BAD_ADDRESS);
    assert_int_equal(rcpt("TO:<@a.b:postmaster>", &p), SMTP_PATH_BAD_ADDRESS);
}

static void test_quoted_local_part_is_valid(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(mail("FROM:<\"a b\"@x.org>", &p), SMTP_PATH_OK);
    assert_addr(&p, "\"a b\"@x.org");
    assert_int_equal(mail("FROM:<\"a>b@c\\\"\"@x.org> SIZE=1", &p), SMTP_PATH_OK);
    assert_addr(&p, "\"a>b@c\\\"\"@x.org");
    assert_int_equal(p.nparams, 1);
    assert_int_not_equal(mail("FROM:<\"unterminated@x.org>", &p), SMTP_PATH_OK);
}

static void test_source_route_is_stripped(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(rcpt("TO:<@a.org,@b.org:u@d.org>", &p), SMTP_PATH_OK);
    assert_addr(&p, "u@d.org");
    assert_int_equal(mail("FROM:<@a.org:u@d.org>", &p), SMTP_PATH_OK);
    assert_addr(&p, "u@d.org");
    assert_int_not_equal(rcpt("TO:<@a.org,u@d.org>", &p), SMTP_PATH_OK);
    assert_int_not_equal(rcpt("TO:<@:u@d.org>", &p), SMTP_PATH_OK);
    assert_int_not_equal(rcpt("TO:<@a.org,:u@d.org>", &p), SMTP_PATH_OK);
}

static void test_missing_brackets_or_prefix_are_syntax_errors(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(mail("FROM:a@b.org", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:a@b.org>", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM<a@b.org>", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("TO:<a@b.org>", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(rcpt("FROM:<a@b.org>", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org>x", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org>>", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<", &p), SMTP_PATH_SYNTAX);
}

static void test_malformed_addresses_are_bad_address(void **state)
{
    (void)state;
    struct smtp_path p;
    static const char *const bad[] = {
        "FROM:<a b@c.org>",   "FROM:<a..b@c.org>", "FROM:<.a@c.org>",  "FROM:<a.@c.org>",
        "FROM:<a@c..org>",    "FROM:<a@-c.org>",   "FROM:<a@c-.org>",  "FROM:<a@>",
        "FROM:<@c.org>",      "FROM:<a@c.org.>",   "FROM:<a@[1.2.3]>", "FROM:<a@[IPv6:zz]>",
        "FROM:<a@b@c.org>",   "FROM:<a@c_d.org>",  "FROM:<a>",         "FROM:<a@[]>",
        "FROM:<\xc3\xa9@c.org>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (mail(bad[i], &p) != SMTP_PATH_BAD_ADDRESS)
            fail_msg("accepted or misclassified: %s", bad[i]);
    }
}

static void test_utf8_address_needs_allow_utf8_and_valid_utf8(void **state)
{
    (void)state;
    struct smtp_path p;
    const char *ok = "FROM:<j\xc3\xb6rg@b\xc3\xbc\x63her.example> SMTPUTF8";
    assert_int_equal(smtp_path_parse(ok, strlen(ok), false, true, &p), SMTP_PATH_OK);
    assert_int_not_equal(smtp_path_parse(ok, strlen(ok), false, false, &p), SMTP_PATH_OK);
    const char *overlong = "FROM:<\xc0\xaf@x.org>";
    assert_int_not_equal(smtp_path_parse(overlong, strlen(overlong), false, true, &p),
                         SMTP_PATH_OK);
    const char *truncated = "FROM:<a\xc3@x.org>";
    assert_int_not_equal(smtp_path_parse(truncated, strlen(truncated), false, true, &p),
                         SMTP_PATH_OK);
    assert_true(smtp_path_has_smtputf8(ok, strlen(ok)));
    assert_true(smtp_path_has_smtputf8(S("FROM:<a@b.org> smtputf8 BODY=8BITMIME")));
    assert_false(smtp_path_has_smtputf8(S("FROM:<\"SMTPUTF8\"@b.org>")));
    assert_false(smtp_path_has_smtputf8(S("FROM:<a@b.org> SMTPUTF8X")));
}

static void test_length_limits(void **state)
{
    (void)state;
    struct smtp_path p;
    char buf[600];
    char local[80], label[70];
    memset(local, 'l', sizeof local);
    memset(label, 'd', sizeof label);

    snprintf(buf, sizeof buf, "FROM:<%.64s@x.org>", local);
    assert_int_equal(mail(buf, &p), SMTP_PATH_OK);
    snprintf(buf, sizeof buf, "FROM:<%.65s@x.org>", local);
    assert_int_equal(mail(buf, &p), SMTP_PATH_TOO_LONG);

    snprintf(buf, sizeof buf, "FROM:<a@%.63s.org>", label);
    assert_int_equal(mail(buf, &p), SMTP_PATH_OK);
    snprintf(buf, sizeof buf, "FROM:<a@%.64s.org>", label);
    assert_int_equal(mail(buf, &p), SMTP_PATH_BAD_ADDRESS);

    /* <a@ + 4 labels of 61 + ".org"> : 2 + 2 + 4*62 + 3 = 255 bytes of path */
    snprintf(buf, sizeof buf, "FROM:<a@%.61s.%.61s.%.61s.%.61s.org>", label, label, label,
             label);
    assert_int_equal(mail(buf, &p), SMTP_PATH_OK);
    snprintf(buf, sizeof buf, "FROM:<a@%.61s.%.61s.%.61s.%.61s.orgx>", label, label, label,
             label);
    assert_int_equal(mail(buf, &p), SMTP_PATH_OK);
    snprintf(buf, sizeof buf, "FROM:<a@%.61s.%.61s.%.61s.%.61s.orgxy>", label, label, label,
             label);
    assert_int_equal(mail(buf, &p), SMTP_PATH_TOO_LONG);
}

static void test_params_are_split_into_key_and_value(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(mail("FROM:<a@b.org>  SIZE=100 BODY=8BITMIME SMTPUTF8", &p), SMTP_PATH_OK);
    assert_int_equal(p.nparams, 3);
    assert_memory_equal(p.params[0].key, "SIZE", 4);
    assert_int_equal(p.params[0].key_len, 4);
    assert_memory_equal(p.params[0].value, "100", 3);
    assert_int_equal(p.params[0].value_len, 3);
    assert_null(p.params[2].value);
    assert_int_equal(p.params[2].key_len, 8);
}

static void test_param_syntax_errors(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(mail("FROM:<a@b.org> SIZE=", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org> =1", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org> -X=1", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org> A=1=2", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org> A_B", &p), SMTP_PATH_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.org> A=\xc3\xa9", &p), SMTP_PATH_SYNTAX);
}

static void test_too_many_params(void **state)
{
    (void)state;
    struct smtp_path p;
    char buf[512] = "FROM:<a@b.org>";
    for (int i = 0; i < SMTP_MAX_PARAMS; i++)
        snprintf(buf + strlen(buf), sizeof buf - strlen(buf), " X%d=1", i);
    assert_int_equal(mail(buf, &p), SMTP_PATH_OK);
    assert_int_equal(p.nparams, SMTP_MAX_PARAMS);
    strcat(buf, " Y");
    assert_int_equal(mail(buf, &p), SMTP_PATH_TOO_MANY_PARAMS);
}

static enum smtp_param_status mail_params(const char *arg, struct mail_params *mp)
{
    struct smtp_path p;
    assert_int_equal(mail(arg, &p), SMTP_PATH_OK);
    return smtp_mail_params(&p, mp);
}

static enum smtp_param_status rcpt_params(const char *arg, struct rcpt_params *rp)
{
    struct smtp_path p;
    assert_int_equal(rcpt(arg, &p), SMTP_PATH_OK);
    return smtp_rcpt_params(&p, rp);
}

static void test_mail_params_are_interpreted(void **state)
{
    (void)state;
    struct mail_params mp;
    assert_int_equal(mail_params("FROM:<a@b.org>", &mp), SMTP_PARAM_OK);
    assert_int_equal(mp.size, -1);
    assert_int_equal(mp.body, SMTP_BODY_UNSET);
    assert_int_equal(mp.ret, SMTP_RET_UNSET);
    assert_false(mp.smtputf8);
    assert_string_equal(mp.envid, "");

    assert_int_equal(
        mail_params("FROM:<a@b.org> size=1234 body=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1", &mp),
        SMTP_PARAM_OK);
    assert_int_equal(mp.size, 1234);
    assert_int_equal(mp.body, SMTP_BODY_8BITMIME);
    assert_true(mp.smtputf8);
    assert_int_equal(mp.ret, SMTP_RET_HDRS);
    assert_string_equal(mp.envid, "QQ+2B1");
    assert_int_equal(mail_params("FROM:<> BODY=7BIT RET=full", &mp), SMTP_PARAM_OK);
    assert_int_equal(mp.body, SMTP_BODY_7BIT);
    assert_int_equal(mp.ret, SMTP_RET_FULL);
}

static void test_size_must_be_digits_that_fit_int64(void **state)
{
    (void)state;
    struct mail_params mp;
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE=9223372036854775807", &mp), SMTP_PARAM_OK);
    assert_int_equal(mp.size, INT64_MAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE=9223372036854775808", &mp),
                     SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE=99999999999999999999", &mp),
                     SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE=-1", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE=1k", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE=0", &mp), SMTP_PARAM_OK);
}

static void test_bad_known_mail_params_are_syntax_errors(void **state)
{
    (void)state;
    struct mail_params mp;
    assert_int_equal(mail_params("FROM:<a@b.org> SIZE=1 SIZE=1", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> BODY=BINARYMIME", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> BODY", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SMTPUTF8=yes", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> SMTPUTF8 smtputf8", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> RET=ALL", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> ENVID=a+2", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> ENVID=a+2b", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> ENVID=a+ZZ", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> ENVID=1 ENVID=2", &mp), SMTP_PARAM_SYNTAX);
    assert_int_equal(mail_params("FROM:<a@b.org> AUTH=<>", &mp), SMTP_PARAM_UNSUPPORTED);
    assert_int_equal(mail_params("FROM:<a@b.org> NOTIFY=NEVER", &mp), SMTP_PARAM_UNSUPPORTED);
}

static void test_envid_length_limit(void **state)
{
    (void)state;
    struct mail_params mp;
    char buf[300];
    char id[120];
    memset(id, 'e', sizeof id);
    snprintf(buf, sizeof buf, "FROM:<a@b.org> ENVID=%.100s", id);
    assert_int_equal(mail_params(buf, &mp), SMTP_PARAM_OK);
    assert_int_equal(strlen(mp.envid), 100);
    snprintf(buf, sizeof buf, "FROM:<a@b.org> ENVID=%.101s", id);
    assert_int_equal(mail_params(buf, &mp), SMTP_PARAM_SYNTAX);
}

static void test_notify_values(void **state)
{
    (void)state;
    struct rcpt_params rp;
    assert_int_equal(rcpt_params("TO:<a@b.org>", &rp), SMTP_PARAM_OK);
    assert_int_equal(rp.notify, 0);
    assert_string_equal(rp.orcpt, "");
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=NEVER", &rp), SMTP_PARAM_OK);
    assert_int_equal(rp.notify, SMTP_NOTIFY_NEVER);
    assert_int_equal(rcpt_params("TO:<a@b.org> notify=success,Failure,DELAY", &rp), SMTP_PARAM_OK);
    assert_int_equal(rp.notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY);
}

static void test_notify_never_with_others_is_a_syntax_error(void **state)
{
    (void)state;
    struct rcpt_params rp;
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=NEVER,SUCCESS", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=DELAY,NEVER", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=SUCCESS,", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=,SUCCESS", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=SUCCESS,SUCCESS", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=SOMETIMES", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> NOTIFY=NEVER NOTIFY=NEVER", &rp),
                     SMTP_PARAM_SYNTAX);
}

static void test_orcpt_is_validated_and_kept(void **state)
{
    (void)state;
    struct rcpt_params rp;
    assert_int_equal(rcpt_params("TO:<a@b.org> ORCPT=rfc822;a+40b.org", &rp), SMTP_PARAM_OK);
    assert_string_equal(rp.orcpt, "rfc822;a+40b.org");
    assert_int_equal(rcpt_params("TO:<a@b.org> ORCPT=a+40b.org", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> ORCPT=;a", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> ORCPT=rfc822;", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> ORCPT=rfc822;a+4", &rp), SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> ORCPT=rfc822;a ORCPT=rfc822;b", &rp),
                     SMTP_PARAM_SYNTAX);
    assert_int_equal(rcpt_params("TO:<a@b.org> SIZE=1", &rp), SMTP_PARAM_UNSUPPORTED);
}

static void test_addr_domain(void **state)
{
    (void)state;
    size_t n;
    const char *d = smtp_addr_domain(S("user@Example.ORG"), &n);
    assert_int_equal(n, 11);
    assert_memory_equal(d, "Example.ORG", n);
    d = smtp_addr_domain(S("\"a@b\"@c.org"), &n);
    assert_memory_equal(d, "c.org", n);
    assert_int_equal(n, 5);
    d = smtp_addr_domain(S("postmaster"), &n);
    assert_int_equal(n, 0);
    assert_string_equal(d, "");
    d = smtp_addr_domain(S("\"a@b\""), &n);
    assert_int_equal(n, 0);
    d = smtp_addr_domain("", 0, &n);
    assert_int_equal(n, 0);
}

static void test_xtext_encoding(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(smtp_xtext_encode(S("a+b=c d"), out, sizeof out), 13);
    assert_string_equal(out, "a+2Bb+3Dc+20d");
    assert_int_equal(smtp_xtext_encode(S("\0\xff"), out, sizeof out), 6);
    assert_string_equal(out, "+00+FF");
    assert_int_equal(smtp_xtext_encode("", 0, out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(smtp_xtext_encode(S("abc"), out, 4), 3);
    assert_int_equal(smtp_xtext_encode(S("abc"), out, 3), -1);
    assert_int_equal(smtp_xtext_encode(S("a b"), out, 5), -1);
    assert_int_equal(smtp_xtext_encode(S("a b"), out, 6), 5);
    assert_int_equal(smtp_xtext_encode("", 0, out, 0), -1);
}

static void test_helo_argument_check(void **state)
{
    (void)state;
    char big[300];
    memset(big, 'a', sizeof big);
    assert_true(smtp_helo_valid(S("mail.example.org")));
    assert_true(smtp_helo_valid(S("[192.0.2.1]")));
    assert_true(smtp_helo_valid(S("[IPv6:2001:db8::1]")));
    assert_true(smtp_helo_valid(S("my_pc")));
    assert_true(smtp_helo_valid(big, 255));
    assert_false(smtp_helo_valid(big, 256));
    assert_false(smtp_helo_valid("", 0));
    assert_false(smtp_helo_valid(S("two words")));
    assert_false(smtp_helo_valid(S("a\0b")));
    assert_false(smtp_helo_valid(S("\xc3\xa9")));
    assert_false(smtp_helo_valid(S("[192.0.2.1")));
    assert_false(smtp_helo_valid(S("[")));
    assert_false(smtp_helo_valid(S("[]")));
    assert_false(smtp_helo_valid(S("[999.0.0.1]")));
    assert_false(smtp_helo_valid(S("a]b")));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verbs_match_case_insensitively),
        cmocka_unit_test(test_every_verb_is_found_by_its_name_in_any_case),
        cmocka_unit_test(test_verb_must_end_at_space_or_eol),
        cmocka_unit_test(test_control_bytes_are_found_at_every_offset),
        cmocka_unit_test(test_argument_skips_separators_and_trailing_spaces),
        cmocka_unit_test(test_nul_and_control_bytes_are_refused),
        cmocka_unit_test(test_huge_argument_is_parsed_without_overrun),
        cmocka_unit_test(test_simple_paths_parse),
        cmocka_unit_test(test_null_path_only_for_mail),
        cmocka_unit_test(test_postmaster_only_for_rcpt),
        cmocka_unit_test(test_quoted_local_part_is_valid),
        cmocka_unit_test(test_source_route_is_stripped),
        cmocka_unit_test(test_missing_brackets_or_prefix_are_syntax_errors),
        cmocka_unit_test(test_malformed_addresses_are_bad_address),
        cmocka_unit_test(test_utf8_address_needs_allow_utf8_and_valid_utf8),
        cmocka_unit_test(test_length_limits),
        cmocka_unit_test(test_params_are_split_into_key_and_value),
        cmocka_unit_test(test_param_syntax_errors),
        cmocka_unit_test(test_too_many_params),
        cmocka_unit_test(test_mail_params_are_interpreted),
        cmocka_unit_test(test_size_must_be_digits_that_fit_int64),
        cmocka_unit_test(test_bad_known_mail_params_are_syntax_errors),
        cmocka_unit_test(test_envid_length_limit),
        cmocka_unit_test(test_notify_values),
        cmocka_unit_test(test_notify_never_with_others_is_a_syntax_error),
        cmocka_unit_test(test_orcpt_is_validated_and_kept),
        cmocka_unit_test(test_addr_domain),
        cmocka_unit_test(test_xtext_encoding),
        cmocka_unit_test(test_helo_argument_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
