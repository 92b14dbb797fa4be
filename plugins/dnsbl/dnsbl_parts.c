/* Pure helpers of the DNSBL plugin: nothing here calls the SDK. */
#include "dnsbl_parts.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DNSBL_LABEL_MAX 63

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int reverse_v4(const uint8_t *a, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%u.%u.%u.%u", a[3], a[2], a[1], a[0]);
    return n > 0 && (size_t)n < outlen ? 4 : -1;
}

static int reverse_v6(const uint8_t *a, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    if (outlen < 64)
        return -1;
    char *p = out;
    for (int i = 15; i >= 0; i--) {
        *p++ = hex[a[i] & 0xf];
        *p++ = '.';
        *p++ = hex[a[i] >> 4];
        *p++ = '.';
    }
    p[-1] = '\0';
    return 6;
}

int dnsbl_reverse_addr(const struct sockaddr *sa, char *out, size_t outlen)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        return reverse_v4((const uint8_t *)&sin->sin_addr, out, outlen);
    }
    if (sa->sa_family != AF_INET6)
        return -1;
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if (memcmp(a, v4_mapped_prefix, sizeof v4_mapped_prefix) == 0)
        return reverse_v4(a + 12, out, outlen);
    return reverse_v6(a, out, outlen);
}

static bool parse_prefix(const char *text, unsigned max, unsigned *prefix)
{
    char *end;
    if (!isdigit((unsigned char)*text))
        return false;
    unsigned long v = strtoul(text, &end, 10);
    if (*end != '\0' || v > max)
        return false;
    *prefix = (unsigned)v;
    return true;
}

static uint32_t mask_of(unsigned prefix)
{
    return prefix == 0 ? 0 : 0xffffffffu << (32 - prefix);
}

bool dnsbl_code_parse(const char *text, struct dnsbl_code *c)
{
    char buf[INET_ADDRSTRLEN + 4];
    if (strlen(text) >= sizeof buf)
        return false;
    strcpy(buf, text);
    unsigned prefix = 32;
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = '\0';
        if (!parse_prefix(slash + 1, 32, &prefix))
            return false;
    }
    uint32_t addr;
    if (!dnsbl_answer_parse(buf, &addr))
        return false;
    c->mask = mask_of(prefix);
    c->addr = addr & c->mask;
    return true;
}

bool dnsbl_code_matches(const struct dnsbl_code *c, uint32_t answer)
{
    return (answer & c->mask) == c->addr;
}

bool dnsbl_answer_parse(const char *text, uint32_t *addr)
{
    struct in_addr in;
    if (inet_pton(AF_INET, text, &in) != 1)
        return false;
    *addr = ntohl(in.s_addr);
    return true;
}

enum dnsbl_answer_class dnsbl_answer_classify(uint32_t addr)
{
    if ((addr >> 24) != 127 || (addr & 0xffffff00u) == 0x7fffff00u)
        return DNSBL_ANSWER_BAD;
    return DNSBL_ANSWER_LISTED;
}

static bool any_answer_matches(const struct dnsbl_code *c, const uint32_t *answers, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (dnsbl_code_matches(c, answers[i]))
            return true;
    return false;
}

double dnsbl_listing_weight(double zone_weight, const struct dnsbl_code *codes, size_t ncodes,
                            const uint32_t *answers, size_t nanswers, bool *matched)
{
    *matched = false;
    if (nanswers == 0)
        return 0;
    if (ncodes == 0) {
        *matched = true;
        return zone_weight;
    }
    double sum = 0;
    for (size_t i = 0; i < ncodes; i++) {
        if (any_answer_matches(&codes[i], answers, nanswers)) {
            sum += codes[i].weight;
            *matched = true;
        }
    }
    return sum;
}

static bool name_char(int c)
{
    return isalnum(c) || c == '-' || c == '_';
}

bool dnsbl_domain_normalize(const char *in, size_t len, char *out, size_t outlen)
{
    if (len > 0 && in[len - 1] == '.')
        len--;
    if (len == 0 || len >= outlen || len >= DNSBL_NAME_MAX)
        return false;
    size_t label = 0, labels = 1;
    bool digits_only = true; /* the last label so far */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
            labels++;
            digits_only = true;
            out[i] = '.';
        } else if (name_char(c) && ++label <= DNSBL_LABEL_MAX) {
            digits_only = digits_only && isdigit(c);
            out[i] = (char)tolower(c);
        } else {
            return false;
        }
    }
    out[len] = '\0';
    /* No top-level domain is all digits: "192.0.2.1" is an address, which a
     * domain list answers with an error code inside 127/8 (Spamhaus DBL's
     * 127.0.1.255, "IP queries prohibited"), not a listing. */
    return label > 0 && labels >= 2 && !digits_only;
}

bool dnsbl_sender_domain(const char *sender, size_t len, char *out, size_t outlen)
{
    const char *at = NULL;
    for (size_t i = 0; i < len; i++)
        if (sender[i] == '@')
            at = sender + i;
    if (!at)
        return false;
    size_t off = (size_t)(at + 1 - sender);
    return dnsbl_domain_normalize(at + 1, len - off, out, outlen);
}

bool dnsbl_query_name(const char *prefix, const char *zone, char *out, size_t outlen)
{
    size_t cap = outlen < DNSBL_NAME_MAX ? outlen : DNSBL_NAME_MAX;
    int n = snprintf(out, cap, "%s.%s", prefix, zone);
    return n > 0 && (size_t)n < cap;
}

size_t dnsbl_reply_text(char *out, size_t outlen, const char *what, const char *subject,
                        const char *zone, const char *reason)
{
    bool bracket = strcmp(what, "client") == 0;
    int n = snprintf(out, outlen, "Service unavailable; %s %s%s%s blocked using %s%s%.*s", what,
                     bracket ? "[" : "", subject, bracket ? "]" : "", zone,
                     reason && *reason ? "; " : "", DNSBL_REASON_MAX,
                     reason ? reason : "");
    if (n < 0)
        return 0;
    return (size_t)n < outlen ? (size_t)n : outlen - 1;
}
