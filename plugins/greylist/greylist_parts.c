/* Pure helpers of the greylist plugin: nothing here calls the SDK. */
#include "greylist_parts.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* ---- networks ------------------------------------------------------------------ */

/* The client's address as (family, bytes); IPv4-mapped IPv6 as IPv4. */
static int client_bytes(const struct sockaddr *sa, uint8_t out[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return AF_INET;
    }
    if (sa->sa_family != AF_INET6)
        return -1;
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if (memcmp(a, v4_mapped_prefix, sizeof v4_mapped_prefix) == 0) {
        memcpy(out, a + 12, 4);
        return AF_INET;
    }
    memcpy(out, a, 16);
    return AF_INET6;
}

static void mask_bytes(uint8_t *a, size_t len, unsigned prefix)
{
    for (size_t i = 0; i < len; i++) {
        unsigned bits = prefix >= 8 * (i + 1) ? 8 : prefix > 8 * i ? prefix - 8 * i : 0;
        a[i] &= (uint8_t)(bits == 0 ? 0 : 0xff << (8 - bits));
    }
}

bool greylist_client_net(const struct sockaddr *sa, unsigned v4_prefix, unsigned v6_prefix,
                         char *out, size_t outlen)
{
    uint8_t a[16];
    int family = client_bytes(sa, a);
    if (family < 0)
        return false;
    unsigned max = family == AF_INET ? 32 : 128;
    unsigned prefix = family == AF_INET ? v4_prefix : v6_prefix;
    if (prefix > max)
        prefix = max;
    mask_bytes(a, max / 8, prefix);
    char text[INET6_ADDRSTRLEN];
    if (!inet_ntop(family, a, text, sizeof text))
        return false;
    int n = prefix == max ? snprintf(out, outlen, "%s", text)
                          : snprintf(out, outlen, "%s/%u", text, prefix);
    return n > 0 && (size_t)n < outlen;
}

/* ---- addresses ------------------------------------------------------------------ */

static bool has_prefix(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncmp(s, prefix, n) == 0;
}

/* SRS0=hash=tt=domain=local (SRS1 carries the same after "=="): the
 * original address, written into out. */
static bool srs_original(const char *local, size_t len, char *out, size_t outlen)
{
    const char *p = local + 4, *end = local + len;
    if (has_prefix(local, len, "srs1")) {
        const char *dd = NULL;
        for (const char *q = p; q + 1 < end; q++)
            if (q[0] == '=' && q[1] == '=') {
                dd = q;
                break;
            }
        if (!dd)
            return false;
        p = dd + 1;
    }
    if (p >= end || (*p != '=' && *p != '+' && *p != '-'))
        return false;
    p++;
    const char *field[3];
    size_t flen[3];
    for (int i = 0; i < 3; i++) {
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq)
            return false;
        field[i] = p;
        flen[i] = (size_t)(eq - p);
        p = eq + 1;
    }
    if (p >= end || flen[2] == 0)
        return false;
    int n = snprintf(out, outlen, "%.*s@%.*s", (int)(end - p), p, (int)flen[2], field[2]);
    return n > 0 && (size_t)n < outlen;
}

/* prvs=tag=local, msprvs1=tag=local, btv1==tag==local: the local part. */
static const char *batv_strip(const char *local, size_t *len)
{
    static const char *const tags[] = {"prvs=", "msprvs1=", "btv1="};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        if (!has_prefix(local, *len, tags[i]))
            continue;
        const char *p = local + strlen(tags[i]), *end = local + *len;
        while (p < end && *p == '=')
            p++;
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq)
            return local;
        while (eq < end && *eq == '=')
            eq++;
        if (eq >= end)
            return local;
        *len = (size_t)(end - eq);
        return eq;
    }
    return local;
}

/* "+ext" dropped, runs of digits as one '#': VERP's per-message parts. */
static size_t verp_fold(const char *local, size_t len, char *out, size_t outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < len && local[i] != '+'; i++) {
        if (isdigit((unsigned char)local[i])) {
            if (n > 0 && out[n - 1] == '#')
                continue;
            if (n + 1 >= outlen)
                return SIZE_MAX;
            out[n++] = '#';
            continue;
        }
        if (n + 1 >= outlen)
            return SIZE_MAX;
        out[n++] = local[i];
    }
    out[n] = '\0';
    return n;
}

static bool strip_tags(char *addr, size_t outlen)
{
    char *at = strrchr(addr, '@');
    if (!at)
        return true;
    size_t llen = (size_t)(at - addr);
    char orig[GREYLIST_ADDR_MAX];
    if ((has_prefix(addr, llen, "srs0") || has_prefix(addr, llen, "srs1")) &&
        srs_original(addr, llen, orig, sizeof orig)) {
        if (strlen(orig) >= outlen)
            return false;
        strcpy(addr, orig);
        at = strrchr(addr, '@');
        if (!at)
            return true;
        llen = (size_t)(at - addr);
    }
    const char *local = batv_strip(addr, &llen);
    char folded[GREYLIST_ADDR_MAX];
    size_t n = verp_fold(local, llen, folded, sizeof folded);
    if (n == SIZE_MAX)
        return false;
    char domain[GREYLIST_ADDR_MAX];
    snprintf(domain, sizeof domain, "%s", strrchr(addr, '@'));
    int w = snprintf(addr, outlen, "%s%s", folded, domain);
    return w > 0 && (size_t)w < outlen;
}

bool greylist_address_normalize(const char *in, size_t len, bool strip, char *out,
                                size_t outlen)
{
    if (len >= outlen || len >= GREYLIST_ADDR_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        out[i] = c <= ' ' || c == 0x7f ? '?' : (char)tolower(c);
    }
    out[len] = '\0';
    return !strip || len == 0 || strip_tags(out, outlen);
}

bool greylist_pattern_matches(const char *pattern, const char *address)
{
    const char *at = strrchr(address, '@');
    const char *domain = at ? at + 1 : address;
    if (pattern[0] == '@')
        pattern++;
    else if (strchr(pattern, '@'))
        return strcasecmp(pattern, address) == 0;
    if (pattern[0] == '*' && pattern[1] == '.') {
        size_t plen = strlen(pattern + 1), dlen = strlen(domain);
        return dlen > plen && strcasecmp(domain + dlen - plen, pattern + 1) == 0;
    }
    return strcasecmp(pattern, domain) == 0;
}

/* ---- records and decisions -------------------------------------------------------- */

size_t greylist_record_format(const struct greylist_record *r, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%c %" PRId64 " %" PRId64,
                     r->state == GREYLIST_ALLOWED ? 'A' : 'P', r->first_ms, r->stamp_ms);
    return n > 0 && (size_t)n < outlen ? (size_t)n : 0;
}

bool greylist_record_parse(const void *data, size_t len, struct greylist_record *r)
{
    char text[GREYLIST_RECORD_MAX];
    if (len < 5 || len >= sizeof text)
        return false;
    memcpy(text, data, len);
    text[len] = '\0';
    char state;
    int64_t first, stamp;
    int used = 0;
    if (sscanf(text, "%c %" SCNd64 " %" SCNd64 "%n", &state, &first, &stamp, &used) != 3 ||
        (size_t)used != len || (state != 'A' && state != 'P') || first < 0 || stamp < first)
        return false;
    r->state = state == 'A' ? GREYLIST_ALLOWED : GREYLIST_PENDING;
    r->first_ms = first;
    r->stamp_ms = stamp;
    return true;
}

enum greylist_action greylist_decide(const struct greylist_record *r, int64_t now,
                                     const struct greylist_times *t, int64_t *wait_ms)
{
    *wait_ms = t->min_delay_ms;
    if (r && r->state == GREYLIST_ALLOWED)
        return now - r->stamp_ms >= t->refresh_ms ? GREYLIST_REFRESH : GREYLIST_KNOWN;
    /* A first sight ahead of the clock (a clock stepped back, an instance
     * on the same store running fast) would be "too soon" until the record
     * expires: it is first sight again, from now. */
    if (!r || now - r->first_ms > t->retry_window_ms || r->first_ms > now)
        return GREYLIST_NEW;
    int64_t age = now - r->first_ms;
    if (age < t->min_delay_ms) {
        *wait_ms = t->min_delay_ms - age;
        return GREYLIST_TOO_SOON;
    }
    *wait_ms = 0;
    return GREYLIST_PASS;
}

/* ---- the refresh gate ------------------------------------------------------------- */

void greylist_gate_init(struct greylist_gate *g)
{
    memset(g->slot, 0, sizeof g->slot);
    pthread_mutex_init(&g->mu, NULL);
}

void greylist_gate_destroy(struct greylist_gate *g)
{
    pthread_mutex_destroy(&g->mu);
}

/* FNV-1a; 0 is kept for an empty slot. */
static uint64_t gate_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h ? h : 1;
}

bool greylist_gate_take(struct greylist_gate *g, const void *key, size_t len, int64_t now_ms,
                        int64_t hold_ms)
{
    uint64_t h = gate_hash(key, len);
    size_t i = (size_t)(h % GREYLIST_GATE_SLOTS);
    pthread_mutex_lock(&g->mu);
    bool held = g->slot[i].hash == h && now_ms < g->slot[i].until_ms;
    if (!held) {
        g->slot[i].hash = h;
        g->slot[i].until_ms = now_ms + hold_ms;
    }
    pthread_mutex_unlock(&g->mu);
    return !held;
}
