#include "proxy_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#define PROXY_V1_MAX 107 /* including the CRLF */
#define PROXY_V2_FIXED 16
#define PROXY_V2_LEN_INET 12
#define PROXY_V2_LEN_INET6 36

static const unsigned char v2_signature[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                               0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_prefix[] = "PROXY ";

enum { V2_CMD_LOCAL = 0x0, V2_CMD_PROXY = 0x1 };
enum { V2_FAM_UNSPEC = 0x00, V2_FAM_TCP4 = 0x11, V2_FAM_TCP6 = 0x21 };

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* ---- v1 ---- */

/* Copies one space-separated field into a NUL-terminated buffer. */
static const char *v1_field(const char *p, const char *end, char *dst, size_t cap, char stop)
{
    const char *q = memchr(p, stop, (size_t)(end - p));
    if (q == NULL || q == p || (size_t)(q - p) >= cap)
        return NULL;
    memcpy(dst, p, (size_t)(q - p));
    dst[q - p] = '\0';
    return q + 1;
}

static int v1_port(const char *s)
{
    size_t n = strlen(s);
    long v = 0;
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535 ? (int)v : -1;
}

static int v1_sockaddr(int family, const char *addr, const char *port,
                       struct sockaddr_storage *ss)
{
    int p = v1_port(port);
    memset(ss, 0, sizeof *ss);
    if (p < 0)
        return -1;
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)p);
        return inet_pton(AF_INET, addr, &sin->sin_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)p);
    return inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1 ? 0 : -1;
}

/* "TCP4 src dst sport dport" / "TCP6 ..." / "UNKNOWN..." between the prefix and CR. */
static int v1_fields(const char *p, const char *end, struct proxy_info *out)
{
    char proto[8], src[48], dst[48], sport[8], dport[8];
    size_t n = (size_t)(end - p);
    if (n >= 7 && memcmp(p, "UNKNOWN", 7) == 0 && (n == 7 || p[7] == ' ')) {
        out->local = true;
        return 0;
    }
    p = v1_field(p, end, proto, sizeof proto, ' ');
    if (p == NULL || (strcmp(proto, "TCP4") != 0 && strcmp(proto, "TCP6") != 0))
        return -1;
    int family = proto[3] == '4' ? AF_INET : AF_INET6;
    if ((p = v1_field(p, end, src, sizeof src, ' ')) == NULL ||
        (p = v1_field(p, end, dst, sizeof dst, ' ')) == NULL ||
        (p = v1_field(p, end, sport, sizeof sport, ' ')) == NULL)
        return -1;
    size_t rest = (size_t)(end - p);
    if (rest == 0 || rest >= sizeof dport || memchr(p, ' ', rest) != NULL)
        return -1;
    memcpy(dport, p, rest);
    dport[rest] = '\0';
    if (v1_sockaddr(family, src, sport, &out->src) < 0 ||
        v1_sockaddr(family, dst, dport, &out->dst) < 0)
        return -1;
    return 0;
}

/* What has arrived so far could still be the start of a v1 header. */
static bool v1_prefix_plausible(const unsigned char *buf, size_t len)
{
    size_t n = min_size(len, sizeof v1_prefix - 1);
    if (memcmp(buf, v1_prefix, n) != 0)
        return false;
    for (size_t i = n; i < len; i++) {
        if (buf[i] < 0x20 || buf[i] > 0x7e)
            return buf[i] == '\r' && i + 1 == len;
    }
    return true;
}

static int proxy_parse_v1(const unsigned char *buf, size_t len, struct proxy_info *out)
{
    const unsigned char *lf = memchr(buf, '\n', min_size(len, PROXY_V1_MAX));
    if (lf == NULL)
        return len < PROXY_V1_MAX && v1_prefix_plausible(buf, len) ? 0 : -1;
    size_t hlen = (size_t)(lf - buf) + 1;
    if (hlen < sizeof v1_prefix + 2 || lf[-1] != '\r' || !v1_prefix_plausible(buf, hlen - 1))
        return -1;
    const char *fields = (const char *)buf + sizeof v1_prefix - 1;
    if (v1_fields(fields, (const char *)lf - 1, out) < 0)
        return -1;
    return (int)hlen;
}

/* ---- v2 ---- */

static int v2_addresses(const unsigned char *a, size_t alen, int fam, struct proxy_info *out)
{
    if (fam == V2_FAM_TCP4 && alen >= PROXY_V2_LEN_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
        struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2);
        memcpy(&d->sin_port, a + 10, 2);
        return PROXY_V2_LEN_INET;
    }
    if (fam == V2_FAM_TCP6 && alen >= PROXY_V2_LEN_INET6) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
        return PROXY_V2_LEN_INET6;
    }
    return -1;
}

/* Each TLV is type(1) length(2) value; they must tile the rest exactly. */
static bool v2_tlvs_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (n - i < 3)
            return false;
        size_t vlen = ((size_t)p[i + 1] << 8) | p[i + 2];
        if (vlen > n - i - 3)
            return false;
        i += 3 + vlen;
    }
    return true;
}

/* Checks the fixed part as far as it has arrived; returns the total length
 * once known, 0 before that, -1 when it cannot be a v2 header. */
static int v2_check_fixed(const unsigned char *buf, size_t len)
{
    size_t n = min_size(len, sizeof v2_signature);
    if (memcmp(buf, v2_signature, n) != 0)
        return -1;
    if (len > 12 && ((buf[12] >> 4) != 2 || (buf[12] & 0xf) > V2_CMD_PROXY))
        return -1;
    if (len > 13 && (buf[12] & 0xf) == V2_CMD_PROXY && buf[13] != V2_FAM_TCP4 &&
        buf[13] != V2_FAM_TCP6 && buf[13] != V2_FAM_UNSPEC)
        return -1;
    if (len < PROXY_V2_FIXED)
        return 0;
    size_t body = ((size_t)buf[14] << 8) | buf[15];
    if (body > PROXY_MAX_HEADER - PROXY_V2_FIXED)
        return -1;
    return (int)(PROXY_V2_FIXED + body);
}

static int proxy_parse_v2(const unsigned char *buf, size_t len, struct proxy_info *out)
{
    int total = v2_check_fixed(buf, len);
    if (total <= 0)
        return total;
    if (len < (size_t)total)
        return 0;
    const unsigned char *body = buf + PROXY_V2_FIXED;
    size_t blen = (size_t)total - PROXY_V2_FIXED;
    /* LOCAL (health checks) and UNSPEC carry no client: keep our own view. */
    if ((buf[12] & 0xf) == V2_CMD_LOCAL || buf[13] == V2_FAM_UNSPEC) {
        out->local = true;
        return total;
    }
    int alen = v2_addresses(body, blen, buf[13], out);
    if (alen < 0)
        return -1;
    return v2_tlvs_valid(body + alen, blen - (size_t)alen) ? total : -1;
}

int proxy_parse(const unsigned char *buf, size_t len, struct proxy_info *out)
{
    memset(out, 0, sizeof *out);
    if (len == 0)
        return 0;
    if (buf[0] == v2_signature[0])
        return proxy_parse_v2(buf, len, out);
    return proxy_parse_v1(buf, len, out);
}

/* ---- building ---- */

static void v6_mapped(const struct sockaddr *sa, unsigned char addr[16], unsigned char port[2])
{
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        memcpy(addr, &s6->sin6_addr, 16);
        memcpy(port, &s6->sin6_port, 2);
        return;
    }
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    memset(addr, 0, 10);
    addr[10] = addr[11] = 0xff;
    memcpy(addr + 12, &s4->sin_addr, 4);
    memcpy(port, &s4->sin_port, 2);
}

static bool is_inet(const struct sockaddr *sa)
{
    return sa != NULL && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6);
}

size_t proxy_v2_build(unsigned char *out, size_t cap, const struct sockaddr *src,
                      const struct sockaddr *dst)
{
    bool inet = is_inet(src) && is_inet(dst);
    bool v4 = inet && src->sa_family == AF_INET && dst->sa_family == AF_INET;
    size_t alen = !inet ? 0 : v4 ? PROXY_V2_LEN_INET : PROXY_V2_LEN_INET6;
    if (cap < PROXY_V2_FIXED + alen)
        return 0;
    memcpy(out, v2_signature, sizeof v2_signature);
    /* Without two IP endpoints, LOCAL tells the backend to use the connection's own. */
    out[12] = (unsigned char)(0x20 | (inet ? V2_CMD_PROXY : V2_CMD_LOCAL));
    out[13] = !inet ? V2_FAM_UNSPEC : v4 ? V2_FAM_TCP4 : V2_FAM_TCP6;
    out[14] = 0;
    out[15] = (unsigned char)alen;
    unsigned char *a = out + PROXY_V2_FIXED;
    if (v4) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)src;
        const struct sockaddr_in *d = (const struct sockaddr_in *)dst;
        memcpy(a, &s->sin_addr, 4);
        memcpy(a + 4, &d->sin_addr, 4);
        memcpy(a + 8, &s->sin_port, 2);
        memcpy(a + 10, &d->sin_port, 2);
    } else if (inet) {
        v6_mapped(src, a, a + 32);
        v6_mapped(dst, a + 16, a + 34);
    }
    return PROXY_V2_FIXED + alen;
}
