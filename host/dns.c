/* Asynchronous DNS per loop thread: c-ares asks, libevent waits, and
 * dns_records turns what comes back into the text records callers get.
 *
 * Lifetime rule: a query lives until both its user callback has run (or was
 * cancelled) and every c-ares callback it started has come back, because
 * c-ares cannot forget a question once asked. */
#include "dns.h"
#include "mstime.h"

#include <sys/queue.h>
#include <ares.h>
#include <arpa/nameser.h>
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "dns_addr_memo.h"
#include "dns_cache.h"
#include "dns_records.h"
#include "linebuf.h"
#include "host_metrics.h"
#include "log.h"

/* Room for "d.c.b.a.in-addr.arpa" and 32 nibbles of "ip6.arpa". */
#define DNS_REVERSE_NAME_MAX 80
#define DNS_SERVER_TEXT_MAX 64

struct dns_sock {
    struct dns_ctx *ctx;
    ares_socket_t fd;
    struct event *ev;
    struct dns_sock *next;
};

/* Questions sent and not yet answered, by name and type (dns_ask). */
#define DNS_INFLIGHT_BUCKETS 64

struct dns_ask;

struct dns_ctx {
    struct event_base *base;
    ares_channel channel;
    struct event *ares_timer; /* c-ares' own retransmits and timeouts */
    struct dns_cache *cache;  /* the worker's, shared by the loops; may be NULL */
    struct dns_addr_memo *memo;   /* host names' addresses (dns_resolve); may be NULL */
    int64_t memo_fresh_max_ms;    /* cache_max_ttl; 0 with no cache: asked every time */
    struct dns_sock *socks;
    LIST_HEAD(, dns_query) queries; /* every live query, for dns_ctx_free */
    struct dns_ask *inflight[DNS_INFLIGHT_BUCKETS];
    int depth;                 /* > 0 while inside one of our libevent callbacks */
    bool closing;              /* dns_ctx_free was called during a callback */
};

enum dns_query_kind { DNS_Q_ADDR, DNS_Q_NAME, DNS_Q_RECORDS };

struct dns_query {
    struct dns_ctx *ctx;
    LIST_ENTRY(dns_query) link; /* the context's queries */
    enum dns_query_kind kind;
    union {
        dns_addr_cb addr;
        dns_name_cb name;
        dns_records_cb records;
    } cb;
    void *arg;
    int pending;    /* c-ares callbacks still to come */
    bool starting;  /* inside the public call: an answer must wait for the loop */
    bool answered;  /* the result below is final */
    bool finished;  /* the user callback ran or was cancelled */
    struct event *timer; /* overall timeout, or zero-delay delivery */

    enum dns_status status;
    int port;                        /* DNS_Q_ADDR */
    struct sockaddr_storage *addrs;  /* DNS_Q_ADDR */
    size_t naddrs;
    int confirming;                  /* DNS_Q_ADDR: per-family questions out */
    bool confirm_started;            /* they were asked (once per query) */
    bool confirm_failed;             /* one of them failed */
    struct sockaddr_storage client;  /* DNS_Q_NAME: the address to confirm */
    char *name;                      /* DNS_Q_NAME */
    enum dns_type type;              /* DNS_Q_RECORDS */
    struct dns_records records;      /* DNS_Q_RECORDS */
};

/* ---- the context's event plumbing ---- */

static void dns_ctx_destroy(struct dns_ctx *ctx);

static void dns_ctx_enter(struct dns_ctx *ctx)
{
    ctx->depth++;
}

/* Returns true when the context is gone and must not be touched. */
static bool dns_ctx_leave(struct dns_ctx *ctx)
{
    if (--ctx->depth == 0 && ctx->closing) {
        dns_ctx_destroy(ctx);
        return true;
    }
    return false;
}

static void dns_ctx_rearm_timer(struct dns_ctx *ctx)
{
    struct timeval tv;
    if (ctx->closing)
        return;
    if (ares_timeout(ctx->channel, NULL, &tv))
        evtimer_add(ctx->ares_timer, &tv);
    else
        evtimer_del(ctx->ares_timer);
}

static void dns_ctx_process(struct dns_ctx *ctx, ares_socket_t rfd, ares_socket_t wfd)
{
    dns_ctx_enter(ctx);
    ares_process_fd(ctx->channel, rfd, wfd);
    dns_ctx_rearm_timer(ctx);
    dns_ctx_leave(ctx);
}

static void dns_ares_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    dns_ctx_process(arg, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

static void dns_sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_sock *s = arg;
    /* s may be freed by c-ares closing the socket inside ares_process_fd. */
    dns_ctx_process(s->ctx, (what & EV_READ) ? s->fd : ARES_SOCKET_BAD,
                    (what & EV_WRITE) ? s->fd : ARES_SOCKET_BAD);
}

static struct dns_sock **dns_sock_find(struct dns_ctx *ctx, ares_socket_t fd)
{
    struct dns_sock **p = &ctx->socks;
    while (*p && (*p)->fd != fd)
        p = &(*p)->next;
    return p;
}

static void dns_sock_remove(struct dns_sock **p)
{
    struct dns_sock *s = *p;
    *p = s->next;
    event_free(s->ev);
    free(s);
}

static void dns_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns_ctx *ctx = data;
    struct dns_sock **p = dns_sock_find(ctx, fd);
    short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));

    if (*p) {
        if (what == 0) {
            dns_sock_remove(p);
            return;
        }
        event_del((*p)->ev);
        event_assign((*p)->ev, ctx->base, fd, what | EV_PERSIST, dns_sock_cb, *p);
        event_add((*p)->ev, NULL);
        return;
    }
    if (what == 0)
        return;
    struct dns_sock *s = calloc(1, sizeof(*s));
    if (!s)
        return; /* c-ares' timeout still ends the query */
    s->ctx = ctx;
    s->fd = fd;
    s->ev = event_new(ctx->base, fd, what | EV_PERSIST, dns_sock_cb, s);
    if (!s->ev) {
        free(s);
        return;
    }
    event_add(s->ev, NULL);
    s->next = ctx->socks;
    ctx->socks = s;
}

/* ---- configuration ---- */

static void dns_library_init_once(void)
{
    ares_library_init(ARES_LIB_INIT_ALL);
}

static int dns_parse_port(const char *s, int *port)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

/* "ip", "ip:port", "v6", "[v6]" or "[v6]:port". */
static int dns_parse_server(const char *text, struct ares_addr_port_node *node)
{
    char host[DNS_SERVER_TEXT_MAX];
    const char *port = NULL;
    size_t len = strlen(text);

    if (len >= sizeof(host))
        return -1;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || (close[1] && close[1] != ':'))
            return -1;
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        port = close[1] ? close + 2 : NULL;
    } else {
        const char *colon = strchr(text, ':');
        memcpy(host, text, len + 1);
        if (colon && !strchr(colon + 1, ':')) {
            host[colon - text] = '\0';
            port = colon + 1;
        }
    }
    int portnum = 0; /* 0: the default, 53 */
    if (port && dns_parse_port(port, &portnum) < 0)
        return -1;
    node->udp_port = node->tcp_port = portnum;
    if (inet_pton(AF_INET, host, &node->addr.addr4) == 1)
        node->family = AF_INET;
    else if (inet_pton(AF_INET6, host, &node->addr.addr6) == 1)
        node->family = AF_INET6;
    else
        return -1;
    return 0;
}

static int dns_set_servers(ares_channel channel, const struct dns_conf *conf, char *err,
                           size_t errlen)
{
    struct ares_addr_port_node *nodes = calloc(conf->nservers, sizeof(*nodes));
    if (!nodes) {
        snprintf(err, errlen, "dns: out of memory");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < conf->nservers && rc == 0; i++) {
        if (dns_parse_server(conf->servers[i], &nodes[i]) < 0) {
            snprintf(err, errlen, "dns: bad server \"%s\" (want ip or ip:port)",
                     conf->servers[i]);
            rc = -1;
        }
        nodes[i].next = i + 1 < conf->nservers ? &nodes[i + 1] : NULL;
    }
    if (rc == 0) {
        int st = ares_set_servers_ports(channel, nodes);
        if (st != ARES_SUCCESS) {
            snprintf(err, errlen, "dns: cannot set servers: %s", ares_strerror(st));
            rc = -1;
        }
    }
    free(nodes);
    return rc;
}

static int dns_channel_open(struct dns_ctx *ctx, const struct dns_conf *conf, int flags,
                            char *err, size_t errlen)
{
    struct ares_options opts;
    int mask = ARES_OPT_SOCK_STATE_CB;

    memset(&opts, 0, sizeof(opts));
    if (flags) {
        opts.flags = flags;
        mask |= ARES_OPT_FLAGS;
    }
    opts.sock_state_cb = dns_sock_state_cb;
    opts.sock_state_cb_data = ctx;
    if (conf && conf->timeout_ms > 0) {
        opts.timeout = conf->timeout_ms > INT32_MAX ? INT32_MAX : (int)conf->timeout_ms;
        mask |= ARES_OPT_TIMEOUTMS;
    }
    if (conf && conf->tries > 0) {
        opts.tries = conf->tries;
        mask |= ARES_OPT_TRIES;
    }
    int st = ares_init_options(&ctx->channel, &opts, mask);
    if (st != ARES_SUCCESS) {
        snprintf(err, errlen, "dns: cannot initialise c-ares: %s", ares_strerror(st));
        return -1;
    }
    if (conf && conf->nservers > 0 && dns_set_servers(ctx->channel, conf, err, errlen) < 0) {
        ares_destroy(ctx->channel);
        return -1;
    }
    return 0;
}

static bool dns_addr_loopback(const struct ares_addr_port_node *n)
{
    if (n->family == AF_INET)
        return (ntohl(n->addr.addr4.s_addr) >> 24) == 127;
    return n->family == AF_INET6 && IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)&n->addr.addr6);
}

/* Every server of the channel is on this host. */
static bool dns_servers_local(ares_channel channel)
{
    struct ares_addr_port_node *servers = NULL;
    if (ares_get_servers_ports(channel, &servers) != ARES_SUCCESS || !servers)
        return false;
    bool local = true;
    for (const struct ares_addr_port_node *n = servers; n && local; n = n->next)
        local = dns_addr_loopback(n);
    ares_free_data(servers);
    return local;
}

/* c-ares closes its sockets whenever no query is pending: a socket, a
 * connect, two epoll_ctl and a close for each client's reverse lookup.
 * With every server on loopback they stay open (ARES_FLAG_STAYOPEN): no one
 * off the host can spoof a reply there, so a fixed source port costs
 * nothing. A remote resolver keeps c-ares's fresh socket (and source port)
 * per burst of queries. */
static int dns_channel_init(struct dns_ctx *ctx, const struct dns_conf *conf, char *err,
                            size_t errlen)
{
    if (dns_channel_open(ctx, conf, 0, err, errlen) < 0)
        return -1;
    if (!dns_servers_local(ctx->channel))
        return 0;
    ares_destroy(ctx->channel);
    return dns_channel_open(ctx, conf, ARES_FLAG_STAYOPEN, err, errlen);
}

struct dns_ctx *dns_ctx_new(struct event_base *base, const struct dns_conf *conf,
                            struct dns_cache *cache, char *err, size_t errlen)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, dns_library_init_once);

    struct dns_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        snprintf(err, errlen, "dns: out of memory");
        return NULL;
    }
    ctx->base = base;
    ctx->cache = cache;
    ctx->memo = dns_addr_memo_new(); /* NULL: every name is asked every time */
    ctx->memo_fresh_max_ms = cache ? conf->cache_max_ttl_ms : 0;
    ctx->ares_timer = evtimer_new(base, dns_ares_timer_cb, ctx);
    if (!ctx->ares_timer) {
        snprintf(err, errlen, "dns: cannot create a timer");
        free(ctx);
        return NULL;
    }
    if (dns_channel_init(ctx, conf, err, errlen) < 0) {
        event_free(ctx->ares_timer);
        dns_addr_memo_free(ctx->memo);
        free(ctx);
        return NULL;
    }
    return ctx;
}

/* ---- queries: lifetime and delivery ---- */

static void dns_query_free(struct dns_query *q)
{
    LIST_REMOVE(q, link);
    event_free(q->timer);
    free(q->addrs);
    free(q->name);
    dns_records_clear(&q->records);
    free(q);
}

static void dns_query_release(struct dns_query *q)
{
    if (q->finished && q->pending == 0)
        dns_query_free(q);
}

static void dns_query_deliver(struct dns_query *q)
{
    if (q->finished)
        return;
    q->finished = true;
    evtimer_del(q->timer);
    enum dns_status st = q->status;
    switch (q->kind) {
    case DNS_Q_ADDR:
        q->cb.addr(q->arg, st, st == DNS_OK ? q->addrs : NULL, st == DNS_OK ? q->naddrs : 0);
        break;
    case DNS_Q_NAME:
        q->cb.name(q->arg, st, st == DNS_OK ? q->name : NULL);
        break;
    case DNS_Q_RECORDS:
        q->cb.records(q->arg, st, st == DNS_OK ? (const char *const *)q->records.rr : NULL,
                      st == DNS_OK ? q->records.nrr : 0, st == DNS_OK ? q->records.ttl : 0);
        break;
    }
    dns_query_release(q);
}

static void dns_query_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_query *q = arg;
    struct dns_ctx *ctx = q->ctx;

    if (!q->answered) {
        q->answered = true;
        q->status = DNS_TEMPFAIL;
    }
    dns_ctx_enter(ctx);
    dns_query_deliver(q);
    dns_ctx_leave(ctx);
}

/* The result is final; hand it over, but never from inside the public call. */
static void dns_query_complete(struct dns_query *q, enum dns_status st)
{
    if (q->finished || q->answered)
        return;
    q->answered = true;
    q->status = st;
    if (q->starting) {
        struct timeval now = {0, 0};
        evtimer_add(q->timer, &now);
        return;
    }
    dns_query_deliver(q);
}

/* Called first by every c-ares callback: false when nobody wants the answer. */
static bool dns_query_came_back(struct dns_query *q)
{
    q->pending--;
    if (q->finished || q->answered) {
        dns_query_release(q);
        return false;
    }
    return true;
}

static struct dns_query *dns_query_new(struct dns_ctx *ctx, enum dns_query_kind kind, void *arg)
{
    if (ctx->closing)
        return NULL;
    struct dns_query *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->timer = evtimer_new(ctx->base, dns_query_timer_cb, q);
    if (!q->timer) {
        free(q);
        return NULL;
    }
    q->ctx = ctx;
    q->kind = kind;
    q->arg = arg;
    q->starting = true;
    LIST_INSERT_HEAD(&ctx->queries, q, link);
    return q;
}

static void dns_query_arm_timeout(struct dns_query *q, int64_t timeout_ms)
{
    if (timeout_ms <= 0)
        return; /* c-ares' own timeout and tries bound the query */
    struct timeval tv = ms_to_timeval(timeout_ms);
    evtimer_add(q->timer, &tv);
}

/* Ends the public call: from now on answers go straight to the callback. */
static struct dns_query *dns_query_started(struct dns_query *q)
{
    q->starting = false;
    dns_ctx_rearm_timer(q->ctx);
    return q;
}

void dns_cancel(struct dns_query *q)
{
    if (!q || q->finished)
        return;
    q->finished = true;
    evtimer_del(q->timer);
    dns_query_release(q);
}

/* ---- dns_resolve ---- */

static int dns_numeric_address(const char *name, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, name, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, name, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    return -1;
}

static void dns_set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

static enum dns_status dns_copy_addrinfo(struct dns_query *q, const struct ares_addrinfo *ai)
{
    size_t n = 0;
    for (const struct ares_addrinfo_node *nd = ai ? ai->nodes : NULL; nd; nd = nd->ai_next)
        n++;
    if (n == 0)
        return DNS_NOTFOUND;
    q->addrs = calloc(n, sizeof(*q->addrs));
    if (!q->addrs)
        return DNS_NOMEM;
    for (const struct ares_addrinfo_node *nd = ai->nodes; nd; nd = nd->ai_next) {
        if ((nd->ai_family != AF_INET && nd->ai_family != AF_INET6) ||
            (size_t)nd->ai_addrlen > sizeof(q->addrs[0]))
            continue;
        memcpy(&q->addrs[q->naddrs], nd->ai_addr, (size_t)nd->ai_addrlen);
        dns_set_port(&q->addrs[q->naddrs], q->port);
        q->naddrs++;
    }
    return q->naddrs ? DNS_OK : DNS_NOTFOUND;
}

/* How long an answer may be used without asking: its smallest TTL, the
 * CNAMEs' on the way to the addresses included (0 for a name from
 * /etc/hosts), within cache_max_ttl. */
static int64_t dns_addrinfo_fresh_ms(const struct dns_ctx *ctx, const struct ares_addrinfo *ai)
{
    int64_t ttl_ms = -1;
    for (const struct ares_addrinfo_node *nd = ai->nodes; nd; nd = nd->ai_next) {
        int64_t ms = (int64_t)(nd->ai_ttl > 0 ? nd->ai_ttl : 0) * 1000;
        if (ttl_ms < 0 || ms < ttl_ms)
            ttl_ms = ms;
    }
    for (const struct ares_addrinfo_cname *cn = ai->cnames; cn && ttl_ms > 0; cn = cn->next) {
        int64_t ms = (int64_t)(cn->ttl > 0 ? cn->ttl : 0) * 1000;
        if (ms < ttl_ms)
            ttl_ms = ms;
    }
    if (ttl_ms < 0)
        return 0;
    return ttl_ms < ctx->memo_fresh_max_ms ? ttl_ms : ctx->memo_fresh_max_ms;
}

/* Addresses (numeric, or from the memo) into q, with q's port. */
static enum dns_status dns_take_addrs(struct dns_query *q, const struct sockaddr_storage *addrs,
                                     size_t n)
{
    q->addrs = malloc(n * sizeof *q->addrs);
    if (!q->addrs)
        return DNS_NOMEM;
    memcpy(q->addrs, addrs, n * sizeof *q->addrs);
    for (size_t i = 0; i < n; i++)
        dns_set_port(&q->addrs[i], q->port);
    q->naddrs = n;
    return DNS_OK;
}

/* The resolver failed for q's name: its last addresses while they may be
 * served stale, else the failure. */
static enum dns_status dns_resolve_failed(struct dns_query *q)
{
    struct sockaddr_storage stale[DNS_ADDR_MEMO_ADDRS];
    size_t n = 0;
    int64_t age_ms = 0;
    if (!dns_addr_memo_failed(q->ctx->memo, q->name, mstime_now(), stale, DNS_ADDR_MEMO_ADDRS,
                              &n, &age_ms))
        return DNS_TEMPFAIL;
    log_warn(NULL, "dns: cannot resolve %s: using its addresses of %lld s ago for %lld s "
             "before asking again", q->name, (long long)(age_ms / 1000),
             (long long)(DNS_ADDR_RECHECK_MS / 1000));
    return dns_take_addrs(q, stale, n);
}

/* Remembered whether or not the query still wants it: the next connection
 * to that server does. */
static enum dns_status dns_resolve_answer(struct dns_query *q, int status,
                                          const struct ares_addrinfo *ai)
{
    enum dns_status st = dns_records_status_from_ares(status);
    if (st == DNS_NOTFOUND)
        dns_addr_memo_forget(q->ctx->memo, q->name);
    if (st != DNS_OK)
        return st;
    st = dns_copy_addrinfo(q, ai);
    if (st == DNS_OK)
        dns_addr_memo_keep(q->ctx->memo, q->name, q->addrs, q->naddrs,
                           dns_addrinfo_fresh_ms(q->ctx, ai), mstime_now());
    return st;
}

/* One family's answer after a "no data" of both (dns_resolve_confirm):
 * addresses end it, a failure makes it a failure; when every family has
 * said "no", the name has no address. */
static void dns_resolve_confirm_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    struct dns_query *q = arg;
    q->confirming--;
    if (status != ARES_EDESTRUCTION && status != ARES_ECANCELLED && !q->answered) {
        enum dns_status st = dns_records_status_from_ares(status);
        if (st == DNS_OK && q->naddrs == 0) {
            free(q->addrs);
            q->addrs = NULL;
            st = dns_resolve_answer(q, status, ai); /* kept in the memo too */
        }
        if (st == DNS_TEMPFAIL || st == DNS_NOMEM)
            q->confirm_failed = true;
        if (q->confirming == 0 && q->naddrs > 0) {
            q->status = DNS_OK;
        } else if (q->confirming == 0) {
            free(q->addrs);
            q->addrs = NULL;
            if (q->confirm_failed) {
                q->status = dns_resolve_failed(q);
            } else {
                dns_addr_memo_forget(q->ctx->memo, q->name);
                q->status = DNS_NOTFOUND;
            }
        }
    }
    if (dns_query_came_back(q) && q->confirming == 0)
        dns_query_complete(q, q->status);
    ares_freeaddrinfo(ai);
}

/* getaddrinfo's "no data" (ARES_ENODATA) for both families also comes when
 * one family's question failed (SERVFAIL, timeout) and the other's had no
 * record: an IPv4-only name whose A question fails. When the memo holds
 * addresses of the name, each of their families is asked on its own, so a
 * failure is told from a definite "no". False: nothing asked. */
static bool dns_resolve_confirm(struct dns_query *q)
{
    struct dns_ctx *ctx = q->ctx;
    if (q->confirm_started || ctx->closing)
        return false;
    unsigned fam = dns_addr_memo_families(ctx->memo, q->name, mstime_now());
    if (!fam)
        return false;
    q->confirm_started = true;
    q->status = DNS_TEMPFAIL;
    int families[2];
    int n = 0;
    if (fam & DNS_ADDR_V4)
        families[n++] = AF_INET;
    if (fam & DNS_ADDR_V6)
        families[n++] = AF_INET6;
    /* Counted first: c-ares may answer inside the call. */
    q->confirming = n;
    q->pending += n;
    for (int i = 0; i < n; i++) {
        struct ares_addrinfo_hints hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = families[i];
        ares_getaddrinfo(ctx->channel, q->name, NULL, &hints, dns_resolve_confirm_cb, q);
    }
    return true;
}

static void dns_resolve_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    struct dns_query *q = arg;
    if (status == ARES_ENODATA && !q->answered && dns_resolve_confirm(q)) {
        if (dns_query_came_back(q) && q->confirming == 0)
            dns_query_complete(q, q->status);
        ares_freeaddrinfo(ai);
        return;
    }
    q->status = DNS_TEMPFAIL;
    if (status != ARES_EDESTRUCTION && status != ARES_ECANCELLED && !q->answered) {
        enum dns_status st = dns_resolve_answer(q, status, ai);
        q->status = st == DNS_TEMPFAIL ? dns_resolve_failed(q) : st;
    }
    if (dns_query_came_back(q))
        dns_query_complete(q, q->status);
    ares_freeaddrinfo(ai);
}

/* A name the memo answers (fresh, or stale after a recent failure): no
 * question. */
static bool dns_resolve_from_memo(struct dns_query *q, const char *name)
{
    struct sockaddr_storage kept[DNS_ADDR_MEMO_ADDRS];
    size_t n = 0;
    if (dns_addr_memo_find(q->ctx->memo, name, mstime_now(), kept, DNS_ADDR_MEMO_ADDRS, &n) ==
        DNS_ADDR_ASK)
        return false;
    dns_query_complete(q, dns_take_addrs(q, kept, n));
    return true;
}

struct dns_query *dns_resolve(struct dns_ctx *ctx, const char *name, int port, dns_addr_cb cb,
                              void *arg)
{
    struct dns_query *q = dns_query_new(ctx, DNS_Q_ADDR, arg);
    if (!q)
        return NULL;
    q->cb.addr = cb;
    q->port = port;

    struct sockaddr_storage numeric;
    if (dns_numeric_address(name, port, &numeric) == 0) {
        dns_query_complete(q, dns_take_addrs(q, &numeric, 1));
        return dns_query_started(q);
    }
    if (dns_resolve_from_memo(q, name))
        return dns_query_started(q);
    q->name = strdup(name);
    if (!q->name) {
        dns_query_complete(q, DNS_NOMEM);
        return dns_query_started(q);
    }
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    q->pending++;
    ares_getaddrinfo(ctx->channel, name, NULL, &hints, dns_resolve_cb, q);
    return dns_query_started(q);
}

/* ---- dns_reverse_confirmed ---- */

/* A v4-mapped v6 client is a v4 client: its PTR lives in in-addr.arpa. */
static int dns_client_address(const struct sockaddr *sa, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        memcpy(out, sa, sizeof(struct sockaddr_in));
        return 0;
    }
    if (sa->sa_family != AF_INET6)
        return -1;
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
    if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
        memcpy(out, sa, sizeof(struct sockaddr_in6));
        return 0;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    sin->sin_family = AF_INET;
    memcpy(&sin->sin_addr, &sin6->sin6_addr.s6_addr[12], 4);
    return 0;
}

static const void *dns_addr_bytes(const struct sockaddr_storage *ss, int *len)
{
    if (ss->ss_family == AF_INET) {
        *len = 4;
        return &((const struct sockaddr_in *)ss)->sin_addr;
    }
    *len = 16;
    return &((const struct sockaddr_in6 *)ss)->sin6_addr;
}

/* Built by copies (a printf per byte was 3,000 instructions a connection). */
static void dns_reverse_name(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    int len;
    const unsigned char *b = dns_addr_bytes(ss, &len);
    struct linebuf lb = linebuf_on(out, outlen - 1);

    for (int i = len - 1; i >= 0; i--) {
        if (len == 4) {
            linebuf_u64(&lb, b[i]);
            linebuf_add(&lb, ".", 1);
        } else {
            const char nibbles[4] = {hex[b[i] & 0xf], '.', hex[b[i] >> 4], '.'};
            linebuf_add(&lb, nibbles, sizeof nibbles);
        }
    }
    linebuf_str(&lb, len == 4 ? "in-addr.arpa" : "ip6.arpa");
    out[lb.overflow ? 0 : lb.len] = '\0';
}

/* ---- asking, through the cache ---- */

/* A query waiting on a question another query already sent. */
struct dns_joiner {
    struct dns_joiner *next;
    struct dns_query *q;
    ares_callback cb;
};

/* One question sent: its answer is kept, and goes to the query that asked
 * and to every query that joined it meanwhile. */
struct dns_ask {
    struct dns_ctx *ctx;
    struct dns_ask *next; /* in ctx->inflight */
    struct dns_joiner *joiners;
    struct dns_query *q;
    ares_callback cb;
    int type;
    char name[];
};

static unsigned dns_inflight_bucket(const char *name, int type)
{
    uint32_t h = 2166136261u ^ (uint32_t)type;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % DNS_INFLIGHT_BUCKETS;
}

static struct dns_ask *dns_inflight_find(struct dns_ctx *ctx, const char *name, int type)
{
    for (struct dns_ask *a = ctx->inflight[dns_inflight_bucket(name, type)]; a; a = a->next) {
        if (a->type == type && strcmp(a->name, name) == 0)
            return a;
    }
    return NULL;
}

static void dns_inflight_remove(struct dns_ask *a)
{
    struct dns_ask **at = &a->ctx->inflight[dns_inflight_bucket(a->name, a->type)];
    while (*at && *at != a)
        at = &(*at)->next;
    if (*at)
        *at = a->next;
}

static void dns_ask_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_ask *a = arg;
    dns_inflight_remove(a);
    dns_cache_put(a->ctx->cache, a->name, a->type, status, abuf, alen, mstime_now());
    struct dns_joiner *j = a->joiners;
    a->cb(a->q, status, timeouts, abuf, alen);
    while (j) {
        struct dns_joiner *next = j->next;
        j->cb(j->q, status, timeouts, abuf, alen);
        free(j);
        j = next;
    }
    free(a);
}

/* The same question is on its way: q waits for that answer instead of
 * asking again (a sender's parallel connections from one address ask for
 * its PTR within microseconds). False: no memory to wait, q asks itself. */
static bool dns_join(struct dns_ask *a, struct dns_query *q, ares_callback cb)
{
    struct dns_joiner *j = malloc(sizeof *j);
    if (!j)
        return false;
    *j = (struct dns_joiner){.next = a->joiners, .q = q, .cb = cb};
    a->joiners = j;
    return true;
}

/* One question of q: a kept answer is handed to cb at once, as c-ares would
 * (an answer inside the public call still waits for the loop:
 * dns_query_complete); an answer on its way is waited for; otherwise
 * c-ares asks, and what it gets is kept. */
static void dns_ask(struct dns_query *q, const char *name, int type, ares_callback cb)
{
    struct dns_ctx *ctx = q->ctx;
    q->pending++;
    unsigned char *abuf;
    int alen, status;
    if (dns_cache_get(ctx->cache, name, type, mstime_now(), &status, &abuf, &alen)) {
        host_metrics_dns_cache(true);
        cb(q, status, 0, abuf, alen);
        free(abuf);
        return;
    }
    if (ctx->cache)
        host_metrics_dns_cache(false);
    struct dns_ask *sent = dns_inflight_find(ctx, name, type);
    if (sent && dns_join(sent, q, cb))
        return;
    size_t len = strlen(name);
    struct dns_ask *a = malloc(sizeof *a + len + 1);
    if (!a) {
        ares_query(ctx->channel, name, C_IN, type, cb, q); /* asked, just not shared */
        return;
    }
    *a = (struct dns_ask){.ctx = ctx, .q = q, .cb = cb, .type = type};
    memcpy(a->name, name, len + 1);
    /* Listed first: c-ares may answer inside ares_query (a failure). */
    unsigned b = dns_inflight_bucket(name, type);
    a->next = ctx->inflight[b];
    ctx->inflight[b] = a;
    ares_query(ctx->channel, name, C_IN, type, dns_ask_cb, a);
}

/* The forward half of the confirmation: a plain A or AAAA query (not
 * getaddrinfo, which reads /etc/hosts again for every client): the name a
 * client's PTR gives is confirmed by the DNS, as the PTR itself was. */
static void dns_confirm_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_query *q = arg;
    if (!dns_query_came_back(q))
        return;
    enum dns_status st = dns_records_status_from_ares(status);
    if (st == DNS_OK)
        st = dns_records_hold_address(abuf, alen, &q->client);
    dns_query_complete(q, st);
}

static void dns_confirm_start(struct dns_query *q, const char *ptr_name)
{
    q->name = strdup(ptr_name);
    if (!q->name) {
        dns_query_complete(q, DNS_TEMPFAIL);
        return;
    }
    /* ares_query applies no search list: the name is taken as absolute. */
    dns_ask(q, ptr_name, q->client.ss_family == AF_INET ? T_A : T_AAAA, dns_confirm_cb);
}

static void dns_ptr_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_query *q = arg;
    if (!dns_query_came_back(q))
        return;
    if (status != ARES_SUCCESS) {
        dns_query_complete(q, dns_records_status_from_ares(status));
        return;
    }
    int len;
    const void *bytes = dns_addr_bytes(&q->client, &len);
    struct hostent *host = NULL;
    status = ares_parse_ptr_reply(abuf, alen, bytes, len, q->client.ss_family, &host);
    if (status != ARES_SUCCESS || !host || !host->h_name || !host->h_name[0]) {
        if (host)
            ares_free_hostent(host);
        /* A malformed answer is the server's fault, not a definite "no". */
        dns_query_complete(q, status == ARES_ENODATA || status == ARES_SUCCESS ? DNS_NOTFOUND
                                                                               : DNS_TEMPFAIL);
        return;
    }
    dns_confirm_start(q, host->h_name);
    ares_free_hostent(host);
}

struct dns_query *dns_reverse_confirmed(struct dns_ctx *ctx, const struct sockaddr *addr,
                                        int64_t timeout_ms, dns_name_cb cb, void *arg)
{
    struct dns_query *q = dns_query_new(ctx, DNS_Q_NAME, arg);
    if (!q)
        return NULL;
    q->cb.name = cb;
    if (dns_client_address(addr, &q->client) < 0) {
        dns_query_complete(q, DNS_NOTFOUND);
        return dns_query_started(q);
    }
    char rname[DNS_REVERSE_NAME_MAX];
    dns_reverse_name(&q->client, rname, sizeof(rname));
    dns_query_arm_timeout(q, timeout_ms);
    dns_ask(q, rname, T_PTR, dns_ptr_cb);
    return dns_query_started(q);
}

/* ---- dns_query_records ---- */

static void dns_query_records_cb(void *arg, int status, int timeouts, unsigned char *abuf,
                                 int alen)
{
    struct dns_query *q = arg;
    if (!dns_query_came_back(q))
        return;
    enum dns_status st = dns_records_status_from_ares(status);
    if (st == DNS_OK)
        st = dns_records_parse(&q->records, q->type, abuf, alen);
    dns_query_complete(q, st);
}

struct dns_query *dns_query_records(struct dns_ctx *ctx, const char *name, enum dns_type type,
                                    int64_t timeout_ms, dns_records_cb cb, void *arg)
{
    struct dns_query *q = dns_query_new(ctx, DNS_Q_RECORDS, arg);
    if (!q)
        return NULL;
    q->cb.records = cb;
    q->type = type;
    dns_query_arm_timeout(q, timeout_ms);
    dns_ask(q, name, (int)type, dns_query_records_cb);
    return dns_query_started(q);
}

/* ---- teardown ---- */

static void dns_ctx_destroy(struct dns_ctx *ctx)
{
    struct dns_query *q;
    LIST_FOREACH(q, &ctx->queries, link) {
        q->finished = true;
        evtimer_del(q->timer);
    }
    /* Calls every pending query back with ARES_EDESTRUCTION: they only
     * release themselves, since all are finished. */
    ares_destroy(ctx->channel);
    while (!LIST_EMPTY(&ctx->queries))
        dns_query_free(LIST_FIRST(&ctx->queries));
    while (ctx->socks)
        dns_sock_remove(&ctx->socks);
    event_free(ctx->ares_timer);
    dns_addr_memo_free(ctx->memo);
    free(ctx);
}

void dns_ctx_take_names(struct dns_ctx *fresh, struct dns_ctx *old)
{
    if (!old->memo)
        return;
    dns_addr_memo_free(fresh->memo);
    /* Shared: the old context's lookups in flight still learn from their
     * answers and still get the last addresses when the resolvers fail. */
    fresh->memo = dns_addr_memo_share(old->memo);
    dns_addr_memo_expire(fresh->memo);
}

bool dns_ctx_busy(const struct dns_ctx *ctx)
{
    return !LIST_EMPTY(&ctx->queries) || ctx->depth > 0;
}

void dns_ctx_free(struct dns_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->depth > 0) {
        /* Inside one of our callbacks: c-ares is on the stack. Silence every
         * query now, tear down when the callback unwinds. */
        struct dns_query *q;
        LIST_FOREACH(q, &ctx->queries, link)
            q->finished = true;
        ctx->closing = true;
        return;
    }
    dns_ctx_destroy(ctx);
}
