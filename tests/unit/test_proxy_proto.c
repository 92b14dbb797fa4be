#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "proxy_proto.h"

#define U(lit) (const unsigned char *)(lit), (sizeof(lit) - 1)

static const unsigned char sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                      0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static void assert_v4(const struct sockaddr_storage *ss, const char *ip, int port)
{
    const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
    char buf[INET_ADDRSTRLEN];
    assert_int_equal(s->sin_family, AF_INET);
    assert_non_null(inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf));
    assert_string_equal(buf, ip);
    assert_int_equal(ntohs(s->sin_port), port);
}

static void assert_v6(const struct sockaddr_storage *ss, const char *ip, int port)
{
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
    char buf[INET6_ADDRSTRLEN];
    assert_int_equal(s->sin6_family, AF_INET6);
    assert_non_null(inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf));
    assert_string_equal(buf, ip);
    assert_int_equal(ntohs(s->sin6_port), port);
}

static void test_v1_tcp4_header_gives_real_addresses(void **state)
{
    (void)state;
    struct proxy_info pi;
    const char h[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n";
    assert_int_equal(proxy_parse(U(h), &pi), (int)(strchr(h, '\n') - h) + 1);
    assert_false(pi.local);
    assert_v4(&pi.src, "192.0.2.1", 56324);
    assert_v4(&pi.dst, "198.51.100.2", 25);
}

static void test_v1_tcp6_header_gives_real_addresses(void **state)
{
    (void)state;
    struct proxy_info pi;
    const char h[] = "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    assert_int_equal(proxy_parse(U(h), &pi), (int)strlen(h));
    assert_v6(&pi.src, "2001:db8::1", 1);
    assert_v6(&pi.dst, "2001:db8::2", 65535);
}

static void test_v1_unknown_is_local(void **state)
{
    (void)state;
    struct proxy_info pi;
    assert_int_equal(proxy_parse(U("PROXY UNKNOWN\r\n"), &pi), 15);
    assert_true(pi.local);
    assert_int_equal(proxy_parse(U("PROXY UNKNOWN ffff:: ffff:: 1 2\r\n"), &pi), 33);
    assert_true(pi.local);
    assert_int_equal(proxy_parse(U("PROXY UNKNOWNX\r\n"), &pi), -1);
}

static void test_v1_incomplete_header_needs_more(void **state)
{
    (void)state;
    struct proxy_info pi;
    const char h[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n";
    for (size_t n = 0; n < sizeof h - 1; n++)
        assert_int_equal(proxy_parse((const unsigned char *)h, n, &pi), 0);
}

static void test_non_proxy_bytes_are_rejected_at_once(void **state)
{
    (void)state;
    struct proxy_info pi;
    assert_int_equal(proxy_parse(U("E"), &pi), -1);
    assert_int_equal(proxy_parse(U("EHLO x\r\n"), &pi), -1);
    assert_int_equal(proxy_parse(U("PROXX"), &pi), -1);
    assert_int_equal(proxy_parse(U("proxy "), &pi), -1);
    assert_int_equal(proxy_parse(U("PROXY TCP4 1.2.3.4\n"), &pi), -1);
    assert_int_equal(proxy_parse(U("PROXY TCP4 1.2\0"), &pi), -1);
    assert_int_equal(proxy_parse(U("\r\n"), &pi), 0); /* a v2 signature prefix */
    assert_int_equal(proxy_parse(U("\r\nEHLO"), &pi), -1);
    assert_int_equal(proxy_parse(U("\r\n\r\n\0\r\nQUIX"), &pi), -1);
}

static void test_v1_malformed_headers_are_rejected(void **state)
{
    (void)state;
    struct proxy_info pi;
    static const char *const bad[] = {
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 9\r\n",
        "PROXY TCP4 192.0.2.1  198.51.100.2 56324 25\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 \r\n",
        "PROXY TCP4 2001:db8::1 198.51.100.2 56324 25\r\n",
        "PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 025 25\r\n",
        "PROXY TCP4 192.0.2.256 198.51.100.2 1 25\r\n",
        "PROXY UDP4 192.0.2.1 198.51.100.2 1 25\r\n",
        "PROXY tcp4 192.0.2.1 198.51.100.2 1 25\r\n",
        "PROXY \r\n",
        "PROXY TCP4\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 1 25\r\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (proxy_parse((const unsigned char *)bad[i], strlen(bad[i]), &pi) != -1)
            fail_msg("accepted: %s", bad[i]);
    }
}

static void test_v1_longer_than_107_bytes_is_rejected(void **state)
{
    (void)state;
    struct proxy_info pi;
    unsigned char h[120];
    memcpy(h, "PROXY UNKNOWN ", 14);
    memset(h + 14, 'x', sizeof h - 14);
    assert_int_equal(proxy_parse(h, 106, &pi), 0);
    assert_int_equal(proxy_parse(h, 107, &pi), -1);
    memcpy(h + 105, "\r\n", 2);
    assert_int_equal(proxy_parse(h, 107, &pi), 107);
    memcpy(h + 105, "x\r\n", 3);
    assert_int_equal(proxy_parse(h, 108, &pi), -1);
}

static size_t v2_header(unsigned char *b, unsigned char ver_cmd, unsigned char fam,
                        const unsigned char *body, size_t blen)
{
    memcpy(b, sig, 12);
    b[12] = ver_cmd;
    b[13] = fam;
    b[14] = (unsigned char)(blen >> 8);
    b[15] = (unsigned char)blen;
    if (blen > 0)
        memcpy(b + 16, body, blen);
    return 16 + blen;
}

static const unsigned char v4_body[12] = {192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0, 25};

static void test_v2_tcp4_header_gives_real_addresses(void **state)
{
    (void)state;
    struct proxy_info pi;
    unsigned char b[64];
    size_t n = v2_header(b, 0x21, 0x11, v4_body, sizeof v4_body);
    memcpy(b + n, "EHLO", 4);
    assert_int_equal(proxy_parse(b, n + 4, &pi), 28);
    assert_false(pi.local);
    assert_v4(&pi.src, "192.0.2.1", 56324);
    assert_v4(&pi.dst, "198.51.100.2", 25);
}

static void test_v2_tcp6_header_with_tlvs_skips_them(void **state)
{
    (void)state;
    struct proxy_info pi;
    unsigned char body[60] = {0};
    struct in6_addr a;
    inet_pton(AF_INET6, "2001:db8::1", &a);
    memcpy(body, &a, 16);
    inet_pton(AF_INET6, "2001:db8::2", &a);
    memcpy(body + 16, &a, 16);
    body[33] = 7;
    body[35] = 25;
    /* TLV: PP2_TYPE_AUTHORITY "mx.example" */
    body[36] = 0x02;
    body[37] = 0;
    body[38] = 10;
    memcpy(body + 39, "mx.example", 10);
    unsigned char b[128];
    size_t n = v2_header(b, 0x21, 0x21, body, 49);
    assert_int_equal(proxy_parse(b, n, &pi), (int)n);
    assert_v6(&pi.src, "2001:db8::1", 7);
    assert_v6(&pi.dst, "2001:db8::2", 25);
    /* a TLV running past the end */
    b[16 + 38] = 11;
    assert_int_equal(proxy_parse(b, n, &pi), -1);
}

static void test_v2_local_keeps_connection_addresses(void **state)
{
    (void)state;
    struct proxy_info pi;
    unsigned char b[64];
    size_t n = v2_header(b, 0x20, 0x00, NULL, 0);
    assert_int_equal(proxy_parse(b, n, &pi), 16);
    assert_true(pi.local);
    n = v2_header(b, 0x20, 0x11, v4_body, sizeof v4_body);
    assert_int_equal(proxy_parse(b, n, &pi), 28);
    assert_true(pi.local);
}

static void test_v2_incomplete_header_needs_more(void **state)
{
    (void)state;
    struct proxy_info pi;
    unsigned char b[64];
    size_t n = v2_header(b, 0x21, 0x11, v4_body, sizeof v4_body);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(proxy_parse(b, k, &pi), 0);
}

static void test_v2_malformed_headers_are_rejected(void **state)
{
    (void)state;
    struct proxy_info pi;
    unsigned char b[600];
    size_t n;
    n = v2_header(b, 0x11, 0x11, v4_body, sizeof v4_body); /* version 1 */
    assert_int_equal(proxy_parse(b, 13, &pi), -1);
    n = v2_header(b, 0x22, 0x11, v4_body, sizeof v4_body); /* command 2 */
    assert_int_equal(proxy_parse(b, 13, &pi), -1);
    n = v2_header(b, 0x21, 0x12, v4_body, sizeof v4_body); /* DGRAM */
    assert_int_equal(proxy_parse(b, 14, &pi), -1);
    n = v2_header(b, 0x21, 0x31, v4_body, sizeof v4_body); /* AF_UNIX */
    assert_int_equal(proxy_parse(b, n, &pi), -1);
    n = v2_header(b, 0x21, 0x11, v4_body, 11); /* short address block */
    assert_int_equal(proxy_parse(b, n, &pi), -1);
    n = v2_header(b, 0x21, 0x21, v4_body, 12); /* TCP6 with 12 bytes */
    assert_int_equal(proxy_parse(b, n, &pi), -1);
    memset(b + 16, 0, 530);
    n = v2_header(b, 0x21, 0x11, b + 16, 521); /* longer than the 536 cap */
    assert_int_equal(proxy_parse(b, 16, &pi), -1);
    (void)n;
}

static void test_v2_build_tcp4_round_trips(void **state)
{
    (void)state;
    struct sockaddr_in s = {0}, d = {0};
    s.sin_family = d.sin_family = AF_INET;
    inet_pton(AF_INET, "203.0.113.9", &s.sin_addr);
    inet_pton(AF_INET, "192.0.2.25", &d.sin_addr);
    s.sin_port = htons(40000);
    d.sin_port = htons(25);
    unsigned char b[108];
    size_t n = proxy_v2_build(b, sizeof b, (struct sockaddr *)&s, (struct sockaddr *)&d);
    assert_int_equal(n, 28);
    assert_memory_equal(b, sig, 12);
    assert_int_equal(b[12], 0x21);
    assert_int_equal(b[13], 0x11);
    struct proxy_info pi;
    assert_int_equal(proxy_parse(b, n, &pi), 28);
    assert_v4(&pi.src, "203.0.113.9", 40000);
    assert_v4(&pi.dst, "192.0.2.25", 25);
    assert_int_equal(proxy_v2_build(b, 27, (struct sockaddr *)&s, (struct sockaddr *)&d), 0);
}

static void test_v2_build_mixed_families_uses_v4_mapped_tcp6(void **state)
{
    (void)state;
    struct sockaddr_in s = {0};
    struct sockaddr_in6 d = {0};
    s.sin_family = AF_INET;
    inet_pton(AF_INET, "203.0.113.9", &s.sin_addr);
    s.sin_port = htons(1234);
    d.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::25", &d.sin6_addr);
    d.sin6_port = htons(25);
    unsigned char b[108];
    size_t n = proxy_v2_build(b, sizeof b, (struct sockaddr *)&s, (struct sockaddr *)&d);
    assert_int_equal(n, 52);
    assert_int_equal(b[13], 0x21);
    struct proxy_info pi;
    assert_int_equal(proxy_parse(b, n, &pi), 52);
    assert_v6(&pi.src, "::ffff:203.0.113.9", 1234);
    assert_v6(&pi.dst, "2001:db8::25", 25);
    assert_int_equal(proxy_v2_build(b, 51, (struct sockaddr *)&s, (struct sockaddr *)&d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4_header_gives_real_addresses),
        cmocka_unit_test(test_v1_tcp6_header_gives_real_addresses),
        cmocka_unit_test(test_v1_unknown_is_local),
        cmocka_unit_test(test_v1_incomplete_header_needs_more),
        cmocka_unit_test(test_non_proxy_bytes_are_rejected_at_once),
        cmocka_unit_test(test_v1_malformed_headers_are_rejected),
        cmocka_unit_test(test_v1_longer_than_107_bytes_is_rejected),
        cmocka_unit_test(test_v2_tcp4_header_gives_real_addresses),
        cmocka_unit_test(test_v2_tcp6_header_with_tlvs_skips_them),
        cmocka_unit_test(test_v2_local_keeps_connection_addresses),
        cmocka_unit_test(test_v2_incomplete_header_needs_more),
        cmocka_unit_test(test_v2_malformed_headers_are_rejected),
        cmocka_unit_test(test_v2_build_tcp4_round_trips),
        cmocka_unit_test(test_v2_build_mixed_families_uses_v4_mapped_tcp6),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
