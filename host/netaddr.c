#include "netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linebuf.h"

/* One network. IPv4 networks are kept as IPv4 (4 bytes used) so that a
 * v4-mapped client address and a plain IPv4 client match the same entries. */
struct net {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    unsigned prefix;
};

struct netlist {
    struct net *nets;
    size_t count;
    size_t cap;
};

static const unsigned char v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int parse_prefix(const char *s, unsigned max, unsigned *out)
{
    if (*s == '\0' || strlen(s) > 3)
        return -1;
    unsigned v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (unsigned)(*s - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static void mask_host_bits(struct net *n)
{
    size_t bytes = n->family == AF_INET ? 4 : 16;
    for (size_t i = 0; i < bytes; i++) {
        unsigned bit = (unsigned)i * 8;
        if (bit >= n->prefix)
            n->addr[i] = 0;
        else if (n->prefix - bit < 8)
            n->addr[i] &= (unsigned char)(0xff << (8 - (n->prefix - bit)));
    }
}

/* "::ffff:10.0.0.0/104" is the same network as "10.0.0.0/8". */
static void unmap_v4(struct net *n)
{
    if (n->family != AF_INET6 || n->prefix < 96 || memcmp(n->addr, v4mapped_prefix, 12) != 0)
        return;
    memmove(n->addr, n->addr + 12, 4);
    memset(n->addr + 4, 0, 12);
    n->family = AF_INET;
    n->prefix -= 96;
}

static int parse_net(const char *cidr, struct net *n)
{
    char text[INET6_ADDRSTRLEN + 8];
    size_t len = strlen(cidr);
    if (len == 0 || len >= sizeof text)
        return -1;
    memcpy(text, cidr, len + 1);
    char *slash = strchr(text, '/');
    if (slash)
        *slash = '\0';
    memset(n, 0, sizeof *n);
    if (inet_pton(AF_INET, text, n->addr) == 1) {
        n->family = AF_INET;
        n->prefix = 32;
    } else if (inet_pton(AF_INET6, text, n->addr) == 1) {
        n->family = AF_INET6;
        n->prefix = 128;
    } else {
        return -1;
    }
    if (slash && parse_prefix(slash + 1, n->prefix, &n->prefix) < 0)
        return -1;
    mask_host_bits(n);
    unmap_v4(n);
    return 0;
}

int netlist_add(struct netlist **list, const char *cidr)
{
    struct net n;
    if (cidr == NULL || parse_net(cidr, &n) < 0)
        return -1;
    if (*list == NULL) {
        *list = calloc(1, sizeof **list);
        if (*list == NULL)
            return -1;
    }
    struct netlist *l = *list;
    if (l->count == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        struct net *nets = realloc(l->nets, cap * sizeof *nets);
        if (nets == NULL)
            return -1;
        l->nets = nets;
        l->cap = cap;
    }
    l->nets[l->count++] = n;
    return 0;
}

static bool net_contains(const struct net *n, int family, const unsigned char *addr)
{
    if (n->family != family)
        return false;
    unsigned full = n->prefix / 8, rest = n->prefix % 8;
    if (memcmp(n->addr, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (addr[full] & mask) == n->addr[full];
}

/* The family and raw bytes to compare, with v4-mapped IPv6 seen as IPv4. */
static int sockaddr_bytes(const struct sockaddr *sa, const unsigned char **bytes)
{
    if (sa->sa_family == AF_INET) {
        *bytes = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const unsigned char *b =
            ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
        if (memcmp(b, v4mapped_prefix, 12) == 0) {
            *bytes = b + 12;
            return AF_INET;
        }
        *bytes = b;
        return AF_INET6;
    }
    return AF_UNSPEC;
}

bool netlist_match(const struct netlist *list, const struct sockaddr *addr)
{
    if (list == NULL || addr == NULL)
        return false;
    const unsigned char *bytes = NULL;
    int family = sockaddr_bytes(addr, &bytes);
    if (family == AF_UNSPEC)
        return false;
    for (size_t i = 0; i < list->count; i++) {
        if (net_contains(&list->nets[i], family, bytes))
            return true;
    }
    return false;
}

size_t netlist_count(const struct netlist *list) { return list ? list->count : 0; }

void netlist_free(struct netlist *list)
{
    if (list == NULL)
        return;
    free(list->nets);
    free(list);
}

static int copy_text(char *dst, size_t dstlen, const char *src, size_t len)
{
    if (len >= dstlen)
        return -1;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

/* A port is 1..65535 in decimal; it is written back canonically ("025" -> "25"). */
static int parse_port(const char *s, size_t len, char *port, size_t portlen)
{
    if (len == 0 || len > 5)
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return -1;
    int n = snprintf(port, portlen, "%u", v);
    return n < 0 || (size_t)n >= portlen ? -1 : 0;
}

static int default_port_into(char *port, size_t portlen, const char *default_port)
{
    const char *p = default_port ? default_port : "";
    return copy_text(port, portlen, p, strlen(p));
}

int netaddr_split_hostport(const char *in, char *host, size_t hostlen, char *port,
                           size_t portlen, const char *default_port)
{
    if (in == NULL || *in == '\0' || hostlen == 0 || portlen == 0)
        return -1;
    const char *host_start = in, *host_end, *port_text = NULL;
    if (*in == '[') {
        host_start = in + 1;
        host_end = strchr(host_start, ']');
        if (host_end == NULL || strchr(host_start, '[') != NULL)
            return -1;
        if (host_end[1] == ':')
            port_text = host_end + 2;
        else if (host_end[1] != '\0')
            return -1;
    } else {
        if (strchr(in, ']') != NULL)
            return -1;
        const char *colon = strchr(in, ':');
        if (colon != NULL && strchr(colon + 1, ':') == NULL) {
            host_end = colon;
            port_text = colon + 1;
        } else {
            host_end = in + strlen(in); /* no port, or a bare IPv6 address */
        }
    }
    if (host_end == host_start)
        return -1;
    if (copy_text(host, hostlen, host_start, (size_t)(host_end - host_start)) < 0)
        return -1;
    if (port_text == NULL)
        return default_port_into(port, portlen, default_port);
    return parse_port(port_text, strlen(port_text), port, portlen);
}

int netaddr_parse_port(const char *s, char *port, size_t portlen)
{
    return s ? parse_port(s, strlen(s), port, portlen) : -1;
}

/* Dotted quad by hand: glibc's inet_ntop formats it with sprintf, 1,600
 * instructions, and every connection's address is written out. */
static bool ntop4(const unsigned char *b, char *buf, size_t buflen)
{
    struct linebuf lb = linebuf_on(buf, buflen - 1);
    for (int i = 0; i < 4; i++) {
        if (i > 0)
            linebuf_add(&lb, ".", 1);
        linebuf_u64(&lb, b[i]);
    }
    if (lb.overflow)
        return false;
    buf[lb.len] = '\0';
    return true;
}

const char *netaddr_ntop(const struct sockaddr *sa, char *buf, size_t buflen)
{
    if (buflen == 0)
        return buf;
    const unsigned char *bytes = NULL;
    int family = sa ? sockaddr_bytes(sa, &bytes) : AF_UNSPEC;
    if (family == AF_INET && ntop4(bytes, buf, buflen))
        return buf;
    if (family == AF_UNSPEC || inet_ntop(family, bytes, buf, (socklen_t)buflen) == NULL) {
        snprintf(buf, buflen, "%s", sa && sa->sa_family == AF_UNIX ? "unix" : "?");
    }
    return buf;
}

int netaddr_port(const struct sockaddr *sa)
{
    if (sa == NULL)
        return 0;
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
    return 0;
}
