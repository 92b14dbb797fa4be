/* dns against a real server: a dnsmasq this test starts on a free port of
 * 127.0.0.1, and a UDP socket of our own that never answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dns.h"
#include "dns_cache.h"

#define DNSMASQ "/usr/sbin/dnsmasq"
#define STARTUP_WAIT_MS 5000
#define STOP_WAIT_MS 3000
#define LOOP_LIMIT_MS 5000
#define LOOP_MAX_TURNS 100000
#define RECORD_TTL 300

static pid_t dnsmasq_pid = -1;
static int dnsmasq_port;
static int silent_fd = -1; /* bound, never read: every query to it times out */
static int silent_port;

/* ---- helpers ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int bind_local(int type, int port)
{
    int fd = socket(AF_INET, type, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int local_port(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
        return -1;
    return ntohs(sin.sin_port);
}

/* A port free for both UDP and TCP right now. */
static int free_port(void)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        int udp = bind_local(SOCK_DGRAM, 0);
        int port = udp >= 0 ? local_port(udp) : -1;
        int tcp = port > 0 ? bind_local(SOCK_STREAM, port) : -1;
        if (udp >= 0)
            close(udp);
        if (tcp >= 0) {
            close(tcp);
            return port;
        }
    }
    return -1;
}

static void start_dnsmasq(int port)
{
    char port_arg[32];
    snprintf(port_arg, sizeof(port_arg), "--port=%d", port);
    char ttl_arg[32];
    snprintf(ttl_arg, sizeof(ttl_arg), "--local-ttl=%d", RECORD_TTL);
    char *argv[] = {
        DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", port_arg,
        "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=",
        "--conf-file=/dev/null", "--user=root", "--group=root", ttl_arg,
        /* authoritative "no" for everything else under these names */
        "--local=/test/", "--local=/127.in-addr.arpa/",
        "--host-record=mail.test,127.0.0.55,::55",
        "--host-record=other.test,127.0.0.78",
        "--cname=alias.test,other.test,1", /* a CNAME of 1 s to a 300 s A */
        "--ptr-record=66.0.0.127.in-addr.arpa,liar.test",
        "--ptr-record=77.0.0.127.in-addr.arpa,other.test",
        /* a name only /etc/hosts gives an address (127.0.0.1 localhost) */
        "--ptr-record=1.0.0.127.in-addr.arpa,localhost",
        "--txt-record=multi.test,first part ,second part",
        "--txt-record=multi.test,another record",
        "--txt-record=crlf.test,listed\r\n250 fake",
        "--mx-host=example.test,mx1.example.test,10", NULL};

    dnsmasq_pid = fork();
    if (dnsmasq_pid == 0) {
        execv(DNSMASQ, argv);
        _exit(127);
    }
}

/* dnsmasq is up once it holds the port. */
static int wait_for_dnsmasq(int port)
{
    int64_t deadline = now_ms() + STARTUP_WAIT_MS;
    while (now_ms() < deadline) {
        int status;
        if (waitpid(dnsmasq_pid, &status, WNOHANG) == dnsmasq_pid) {
            dnsmasq_pid = -1;
            return -1;
        }
        int fd = bind_local(SOCK_DGRAM, port);
        if (fd < 0 && errno == EADDRINUSE)
            return 0;
        if (fd >= 0)
            close(fd);
        sleep_ms(20);
    }
    return -1;
}

static void stop_dnsmasq(void)
{
    if (dnsmasq_pid <= 0)
        return;
    kill(dnsmasq_pid, SIGTERM);
    int64_t deadline = now_ms() + STOP_WAIT_MS;
    while (now_ms() < deadline) {
        if (waitpid(dnsmasq_pid, NULL, WNOHANG) == dnsmasq_pid) {
            dnsmasq_pid = -1;
            return;
        }
        sleep_ms(20);
    }
    kill(dnsmasq_pid, SIGKILL);
    waitpid(dnsmasq_pid, NULL, 0);
    dnsmasq_pid = -1;
}

static int group_setup(void **state)
{
    silent_fd = bind_local(SOCK_DGRAM, 0);
    if (silent_fd < 0)
        return -1;
    silent_port = local_port(silent_fd);
    dnsmasq_port = free_port();
    if (dnsmasq_port < 0)
        return -1;
    start_dnsmasq(dnsmasq_port);
    if (dnsmasq_pid < 0 || wait_for_dnsmasq(dnsmasq_port) < 0) {
        fprintf(stderr, "dnsmasq did not start\n");
        stop_dnsmasq();
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    stop_dnsmasq();
    if (silent_fd >= 0)
        close(silent_fd);
    return 0;
}

/* One event_base and dns_ctx per test. */
struct fixture {
    struct event_base *base;
    struct dns_ctx *dns;
    struct dns_cache *cache; /* NULL: answers are not kept */
    char server[32];
    char *servers[1];
    struct dns_conf conf;
};

static struct fixture *fixture_new_cached(int port, int64_t timeout_ms, int tries,
                                          struct dns_cache *cache)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->base = event_base_new();
    assert_non_null(f->base);
    snprintf(f->server, sizeof(f->server), "127.0.0.1:%d", port);
    f->servers[0] = f->server;
    f->cache = cache;
    f->conf = (struct dns_conf){.servers = f->servers, .nservers = 1, .timeout_ms = timeout_ms,
                                .tries = tries};
    char err[256] = "";
    f->dns = dns_ctx_new(f->base, &f->conf, f->cache, err, sizeof(err));
    if (!f->dns)
        fail_msg("dns_ctx_new: %s", err);
    return f;
}

static struct fixture *fixture_new(int port, int64_t timeout_ms, int tries)
{
    return fixture_new_cached(port, timeout_ms, tries, NULL);
}

static void fixture_free(struct fixture *f)
{
    if (f->dns)
        dns_ctx_free(f->dns);
    dns_cache_free(f->cache);
    event_base_free(f->base);
    free(f);
}

static int setup_real(void **state)
{
    *state = fixture_new(dnsmasq_port, 1000, 2);
    return 0;
}

static int setup_silent(void **state)
{
    *state = fixture_new(silent_port, 200, 1);
    return 0;
}

static int teardown_fixture(void **state)
{
    fixture_free(*state);
    return 0;
}

static void stop_loop_cb(evutil_socket_t fd, short what, void *arg)
{
    *(bool *)arg = true;
}

/* Runs the loop until *done reaches want, or for ms when want is 0. The
 * limit is the timer's own firing: libevent's coarse clock may fire it a
 * little before now_ms() says the time is up, and a loop turn after it,
 * with only the DNS socket left, would wait for ever. */
static void run_loop(struct event_base *base, const int *done, int want, int ms)
{
    bool expired = false;
    struct event *limit = evtimer_new(base, stop_loop_cb, &expired);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(limit, &tv);
    for (int turn = 0; turn < LOOP_MAX_TURNS && !expired; turn++) {
        if (want > 0 && *done >= want)
            break;
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(limit);
}

static const char *addr_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    const void *a = ss->ss_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    return inet_ntop(ss->ss_family, a, buf, (socklen_t)len);
}

static int addr_port(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                          : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

static void make_addr(const char *text, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        return;
    }
    assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
    sin6->sin6_family = AF_INET6;
}

/* ---- what the callbacks saw ---- */

struct seen {
    int calls;
    enum dns_status st;
    char text[8][128]; /* addresses as "ip port", names, or records */
    size_t n;
    uint32_t ttl;
};

static void addr_cb(void *arg, enum dns_status st, const struct sockaddr_storage *addrs,
                    size_t naddrs)
{
    struct seen *s = arg;
    s->calls++;
    s->st = st;
    for (size_t i = 0; i < naddrs && s->n < 8; i++, s->n++) {
        char ip[INET6_ADDRSTRLEN];
        snprintf(s->text[s->n], sizeof(s->text[0]), "%s %d", addr_text(&addrs[i], ip, sizeof(ip)),
                 addr_port(&addrs[i]));
    }
}

static void name_cb(void *arg, enum dns_status st, const char *name)
{
    struct seen *s = arg;
    s->calls++;
    s->st = st;
    if (name)
        snprintf(s->text[s->n++], sizeof(s->text[0]), "%s", name);
}

static void records_cb(void *arg, enum dns_status st, const char *const *rr, size_t nrr,
                       uint32_t ttl)
{
    struct seen *s = arg;
    s->calls++;
    s->st = st;
    s->ttl = ttl;
    for (size_t i = 0; i < nrr && s->n < 8; i++, s->n++)
        snprintf(s->text[s->n], sizeof(s->text[0]), "%s", rr[i]);
}

static bool seen_has(const struct seen *s, const char *text)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->text[i], text) == 0)
            return true;
    }
    return false;
}

/* ---- dns_resolve ---- */

static void resolve_returns_a_and_aaaa_with_port(void **state)
{
    struct fixture *f = *state;
    struct seen s = {0};
    assert_non_null(dns_resolve(f->dns, "mail.test", 2525, addr_cb, &s));
    run_loop(f->base, &s.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.st, DNS_OK);
    assert_int_equal(s.n, 2);
    assert_true(seen_has(&s, "127.0.0.55 2525"));
    assert_true(seen_has(&s, "::55 2525"));
}

static void resolve_unknown_name_is_notfound(void **state)
{
    struct fixture *f = *state;
    struct seen s = {0};
    assert_non_null(dns_resolve(f->dns, "nosuch.test", 25, addr_cb, &s));
    run_loop(f->base, &s.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.st, DNS_NOTFOUND);
    assert_int_equal(s.n, 0);
}

static void resolve_numeric_answers_later_not_inside_the_call(void **state)
{
    struct fixture *f = *state;
    struct seen v4 = {0}, v6 = {0};
    assert_non_null(dns_resolve(f->dns, "192.0.2.7", 25, addr_cb, &v4));
    assert_non_null(dns_resolve(f->dns, "2001:db8::7", 587, addr_cb, &v6));
    assert_int_equal(v4.calls, 0);
    assert_int_equal(v6.calls, 0);
    run_loop(f->base, &v6.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(v4.calls, 1);
    assert_int_equal(v4.st, DNS_OK);
    assert_string_equal(v4.text[0], "192.0.2.7 25");
    assert_int_equal(v6.calls, 1);
    assert_string_equal(v6.text[0], "2001:db8::7 587");
}

/* c-ares may answer a name from /etc/hosts inside the call: still later. */
static void resolve_localhost_answers_later_not_inside_the_call(void **state)
{
    struct fixture *f = *state;
    struct seen s = {0};
    assert_non_null(dns_resolve(f->dns, "localhost", 25, addr_cb, &s));
    assert_int_equal(s.calls, 0);
    run_loop(f->base, &s.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s.calls, 1);
}

static void resolve_times_out_as_tempfail(void **state)
{
    struct fixture *f = *state;
    struct seen s = {0};
    int64_t start = now_ms();
    assert_non_null(dns_resolve(f->dns, "mail.test", 25, addr_cb, &s));
    run_loop(f->base, &s.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.st, DNS_TEMPFAIL);
    assert_true(now_ms() - start < 2000);
}

/* ---- dns_reverse_confirmed ---- */

static void reverse_of(struct fixture *f, const char *ip, int64_t timeout_ms, struct seen *s)
{
    struct sockaddr_storage ss;
    make_addr(ip, &ss);
    assert_non_null(dns_reverse_confirmed(f->dns, (struct sockaddr *)&ss, timeout_ms, name_cb, s));
    run_loop(f->base, &s->calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s->calls, 1);
}

static void reverse_confirmed_name_for_v4(void **state)
{
    struct seen s = {0};
    reverse_of(*state, "127.0.0.55", 2000, &s);
    assert_int_equal(s.st, DNS_OK);
    assert_string_equal(s.text[0], "mail.test");
}

/* With a loopback server the channel keeps its socket between queries:
 * each lookup of a series, one after another, still gets its own answer. */
static void reverse_lookups_in_a_row_on_a_kept_socket_each_get_their_name(void **state)
{
    for (int i = 0; i < 3; i++) {
        struct seen s = {0};
        reverse_of(*state, i % 2 ? "::55" : "127.0.0.55", 2000, &s);
        assert_int_equal(s.calls, 1);
        assert_int_equal(s.st, DNS_OK);
        assert_string_equal(s.text[0], "mail.test");
    }
}

static void reverse_confirmed_name_for_v6(void **state)
{
    struct seen s = {0};
    reverse_of(*state, "::55", 2000, &s);
    assert_int_equal(s.st, DNS_OK);
    assert_string_equal(s.text[0], "mail.test");
}

static void reverse_v4_mapped_client_is_treated_as_v4(void **state)
{
    struct seen s = {0};
    reverse_of(*state, "::ffff:127.0.0.55", 2000, &s);
    assert_int_equal(s.st, DNS_OK);
    assert_string_equal(s.text[0], "mail.test");
}

static void reverse_name_without_address_is_notfound(void **state)
{
    struct seen s = {0};
    reverse_of(*state, "127.0.0.66", 2000, &s);
    assert_int_equal(s.st, DNS_NOTFOUND);
    assert_int_equal(s.n, 0);
}

static void reverse_name_pointing_elsewhere_is_notfound(void **state)
{
    struct seen s = {0};
    reverse_of(*state, "127.0.0.77", 2000, &s);
    assert_int_equal(s.st, DNS_NOTFOUND);
}

/* The confirmation asks the DNS for the PTR name's address, as the PTR
 * came from the DNS: /etc/hosts confirms nothing (it never did, the name
 * was asked absolute; getaddrinfo still read the file for every client). */
static void reverse_name_confirmed_only_by_etc_hosts_is_not_confirmed(void **state)
{
    struct seen s = {0};
    reverse_of(*state, "127.0.0.1", 2000, &s);
    assert_int_not_equal(s.st, DNS_OK);
    assert_int_equal(s.n, 0);
}

static void reverse_without_ptr_is_notfound(void **state)
{
    struct seen s = {0};
    reverse_of(*state, "127.0.0.99", 2000, &s);
    assert_int_equal(s.st, DNS_NOTFOUND);
}

/* Datagrams the silent server got since the last call (it never answers). */
static int silent_queries(void)
{
    int n = 0;
    char buf[512];
    struct pollfd pfd = {.fd = silent_fd, .events = POLLIN};
    while (n < 100 && poll(&pfd, 1, 50) == 1 && recv(silent_fd, buf, sizeof buf, 0) > 0)
        n++;
    return n;
}

static void reverse_lookups_of_one_address_asked_together_send_one_question(void **state)
{
    struct fixture *f = *state;
    struct seen first = {0}, second = {0}, other = {0};
    struct sockaddr_storage a, b;
    make_addr("127.0.0.9", &a);
    make_addr("127.0.0.10", &b);
    silent_queries();
    assert_non_null(dns_reverse_confirmed(f->dns, (struct sockaddr *)&a, 300, name_cb, &first));
    assert_non_null(dns_reverse_confirmed(f->dns, (struct sockaddr *)&a, 300, name_cb, &second));
    run_loop(f->base, &first.calls, 1, 30); /* c-ares sends from the loop */
    assert_int_equal(silent_queries(), 1);
    assert_non_null(dns_reverse_confirmed(f->dns, (struct sockaddr *)&b, 300, name_cb, &other));
    run_loop(f->base, &first.calls, 1, 30);
    assert_int_equal(silent_queries(), 1);
    /* Each times out on its own timer; the one asked last, last. */
    run_loop(f->base, &other.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(first.calls, 1);
    assert_int_equal(second.calls, 1);
    assert_int_equal(other.calls, 1);
    assert_int_equal(first.st, DNS_TEMPFAIL);
    assert_int_equal(second.st, DNS_TEMPFAIL);
}

/* Every query that waited on one question gets the whole answer, the
 * confirming A query included, also when the one that asked went away. */
static void joined_reverse_lookups_each_get_the_name_even_when_the_first_is_cancelled(void **state)
{
    struct fixture *f = *state;
    struct seen gone = {0}, second = {0}, third = {0};
    struct sockaddr_storage a;
    make_addr("127.0.0.55", &a);
    struct dns_query *q = dns_reverse_confirmed(f->dns, (struct sockaddr *)&a, 2000, name_cb, &gone);
    assert_non_null(q);
    assert_non_null(dns_reverse_confirmed(f->dns, (struct sockaddr *)&a, 2000, name_cb, &second));
    assert_non_null(dns_reverse_confirmed(f->dns, (struct sockaddr *)&a, 2000, name_cb, &third));
    dns_cancel(q);
    run_loop(f->base, &third.calls, 1, LOOP_LIMIT_MS);
    run_loop(f->base, &second.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(gone.calls, 0);
    assert_int_equal(second.calls, 1);
    assert_int_equal(third.calls, 1);
    assert_int_equal(second.st, DNS_OK);
    assert_int_equal(third.st, DNS_OK);
    assert_string_equal(second.text[0], "mail.test");
    assert_string_equal(third.text[0], "mail.test");
}

static void reverse_of_a_non_ip_address_is_notfound_later(void **state)
{
    struct fixture *f = *state;
    struct seen s = {0};
    struct sockaddr_storage ss = {.ss_family = AF_UNIX};
    assert_non_null(dns_reverse_confirmed(f->dns, (struct sockaddr *)&ss, 1000, name_cb, &s));
    assert_int_equal(s.calls, 0);
    run_loop(f->base, &s.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.st, DNS_NOTFOUND);
}

/* c-ares alone would wait 2 x 5 s here: only the overall timeout can end it. */
static void reverse_timeout_is_tempfail_on_time(void **state)
{
    struct fixture *f = fixture_new(silent_port, 5000, 2);
    struct seen s = {0};
    int64_t start = now_ms();
    reverse_of(f, "127.0.0.55", 300, &s);
    int64_t took = now_ms() - start;
    assert_int_equal(s.st, DNS_TEMPFAIL);
    assert_true(took >= 250 && took < 1500);
    fixture_free(f);
}

/* ---- dns_query_records ---- */

static void query(struct fixture *f, const char *name, enum dns_type type, struct seen *s)
{
    assert_non_null(dns_query_records(f->dns, name, type, 2000, records_cb, s));
    run_loop(f->base, &s->calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s->calls, 1);
}

static void txt_strings_of_one_record_are_joined(void **state)
{
    struct seen s = {0};
    query(*state, "multi.test", DNS_TXT, &s);
    assert_int_equal(s.st, DNS_OK);
    assert_int_equal(s.n, 2);
    assert_true(seen_has(&s, "first part second part"));
    assert_true(seen_has(&s, "another record"));
    assert_int_equal(s.ttl, 0);
}

static void txt_control_bytes_cannot_break_a_reply_line(void **state)
{
    struct seen s = {0};
    query(*state, "crlf.test", DNS_TXT, &s);
    assert_int_equal(s.st, DNS_OK);
    assert_string_equal(s.text[0], "listed??250 fake");
}

static void mx_is_preference_and_name(void **state)
{
    struct seen s = {0};
    query(*state, "example.test", DNS_MX, &s);
    assert_int_equal(s.st, DNS_OK);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.text[0], "10 mx1.example.test");
}

static void a_and_aaaa_records_carry_ttl(void **state)
{
    struct seen a = {0}, aaaa = {0};
    query(*state, "mail.test", DNS_A, &a);
    query(*state, "mail.test", DNS_AAAA, &aaaa);
    assert_int_equal(a.st, DNS_OK);
    assert_string_equal(a.text[0], "127.0.0.55");
    assert_int_equal(a.ttl, RECORD_TTL);
    assert_int_equal(aaaa.st, DNS_OK);
    assert_string_equal(aaaa.text[0], "::55");
    assert_int_equal(aaaa.ttl, RECORD_TTL);
}

static void ptr_record_gives_the_name(void **state)
{
    struct seen s = {0};
    query(*state, "66.0.0.127.in-addr.arpa", DNS_PTR, &s);
    assert_int_equal(s.st, DNS_OK);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.text[0], "liar.test");
}

static void missing_records_are_notfound(void **state)
{
    struct seen nxdomain = {0}, nodata = {0};
    query(*state, "nosuch.test", DNS_TXT, &nxdomain);
    query(*state, "other.test", DNS_MX, &nodata);
    assert_int_equal(nxdomain.st, DNS_NOTFOUND);
    assert_int_equal(nodata.st, DNS_NOTFOUND);
}

static void query_timeout_is_tempfail_on_time(void **state)
{
    struct fixture *f = fixture_new(silent_port, 5000, 2);
    struct seen s = {0};
    int64_t start = now_ms();
    query(f, "2.0.0.127.zen.test", DNS_TXT, &s);
    int64_t took = now_ms() - start;
    assert_int_equal(s.st, DNS_TEMPFAIL);
    assert_true(took < 2500);
    fixture_free(f);
}

/* ---- cancel, teardown, re-entry ---- */

static void cancelled_query_never_calls_back(void **state)
{
    struct fixture *f = *state;
    struct seen lookup = {0}, numeric = {0}, records = {0}, reverse = {0};
    struct sockaddr_storage ss;
    make_addr("127.0.0.55", &ss);
    dns_cancel(dns_resolve(f->dns, "mail.test", 25, addr_cb, &lookup));
    dns_cancel(dns_resolve(f->dns, "192.0.2.1", 25, addr_cb, &numeric));
    dns_cancel(dns_query_records(f->dns, "multi.test", DNS_TXT, 1000, records_cb, &records));
    dns_cancel(dns_reverse_confirmed(f->dns, (struct sockaddr *)&ss, 1000, name_cb, &reverse));
    /* A later query completing proves the answers to the others arrived too. */
    struct seen last = {0};
    query(f, "mail.test", DNS_A, &last);
    run_loop(f->base, NULL, 0, 300);
    assert_int_equal(lookup.calls + numeric.calls + records.calls + reverse.calls, 0);
}

static void cancel_after_timeout_timer_armed_stays_silent(void **state)
{
    struct fixture *f = *state;
    struct seen s = {0};
    dns_cancel(dns_query_records(f->dns, "x.test", DNS_TXT, 100, records_cb, &s));
    run_loop(f->base, NULL, 0, 400);
    assert_int_equal(s.calls, 0);
}

static void ctx_free_with_pending_queries_calls_nobody(void **state)
{
    struct fixture *f = *state;
    struct seen a = {0}, b = {0}, c = {0};
    assert_non_null(dns_resolve(f->dns, "mail.test", 25, addr_cb, &a));
    assert_non_null(dns_resolve(f->dns, "192.0.2.1", 25, addr_cb, &b));
    assert_non_null(dns_query_records(f->dns, "multi.test", DNS_TXT, 1000, records_cb, &c));
    dns_ctx_free(f->dns);
    f->dns = NULL;
    run_loop(f->base, NULL, 0, 300);
    assert_int_equal(a.calls + b.calls + c.calls, 0);
}

struct chain {
    struct fixture *f;
    struct seen first, second;
};

static void chain_second_cb(void *arg, enum dns_status st, const char *const *rr, size_t nrr,
                            uint32_t ttl)
{
    struct chain *c = arg;
    records_cb(&c->second, st, rr, nrr, ttl);
}

static void chain_first_cb(void *arg, enum dns_status st, const struct sockaddr_storage *addrs,
                           size_t naddrs)
{
    struct chain *c = arg;
    addr_cb(&c->first, st, addrs, naddrs);
    assert_non_null(dns_query_records(c->f->dns, "example.test", DNS_MX, 2000, chain_second_cb, c));
}

static void query_started_inside_a_callback_completes(void **state)
{
    struct chain c = {.f = *state};
    assert_non_null(dns_resolve(c.f->dns, "mail.test", 25, chain_first_cb, &c));
    run_loop(c.f->base, &c.second.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(c.first.calls, 1);
    assert_int_equal(c.second.calls, 1);
    assert_string_equal(c.second.text[0], "10 mx1.example.test");
}

static void free_ctx_cb(void *arg, enum dns_status st, const char *const *rr, size_t nrr,
                        uint32_t ttl)
{
    struct chain *c = arg;
    records_cb(&c->first, st, rr, nrr, ttl);
    dns_ctx_free(c->f->dns);
    c->f->dns = NULL;
}

static void ctx_freed_inside_a_callback_silences_the_rest(void **state)
{
    struct chain c = {.f = *state};
    assert_non_null(dns_query_records(c.f->dns, "mail.test", DNS_A, 2000, free_ctx_cb, &c));
    assert_non_null(dns_query_records(c.f->dns, "mail.test", DNS_A, 2000, records_cb, &c.second));
    run_loop(c.f->base, NULL, 0, 500);
    assert_int_equal(c.first.calls, 1);
    assert_int_equal(c.second.calls, 0);
}

static void bad_server_text_is_refused(void **state)
{
    struct event_base *base = event_base_new();
    char *servers[] = {"127.0.0.1:99999"};
    struct dns_conf conf = {.servers = servers, .nservers = 1, .timeout_ms = 100, .tries = 1};
    char err[256] = "";
    assert_null(dns_ctx_new(base, &conf, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "127.0.0.1:99999"));
    event_base_free(base);
}

/* ---- the cache shared by the loops ---- */

/* Two contexts on one event base share a cache: one asks dnsmasq, the
 * other a server that never answers, so everything it gets came from what
 * the first one kept. */
struct cached_pair {
    struct fixture *asking, *silent;
};

static int setup_cached_pair(void **state)
{
    struct cached_pair *p = calloc(1, sizeof *p);
    assert_non_null(p);
    struct dns_conf conf = {.cache_memory = 1 << 20, .cache_max_ttl_ms = 3600 * 1000,
                            .cache_negative_ttl_ms = 300 * 1000};
    struct dns_cache *cache = dns_cache_new(&conf);
    assert_non_null(cache);
    p->asking = fixture_new_cached(dnsmasq_port, 1000, 2, cache);
    p->silent = fixture_new_cached(silent_port, 200, 1, cache);
    p->silent->cache = NULL; /* freed once, with the first */
    *state = p;
    return 0;
}

static int teardown_cached_pair(void **state)
{
    struct cached_pair *p = *state;
    fixture_free(p->silent);
    fixture_free(p->asking);
    free(p);
    return 0;
}

static void a_kept_reverse_name_is_confirmed_without_asking_again(void **state)
{
    struct cached_pair *p = *state;
    struct seen first = {0}, again = {0};
    reverse_of(p->asking, "127.0.0.55", 2000, &first);
    assert_int_equal(first.st, DNS_OK);
    struct sockaddr_storage ss;
    make_addr("127.0.0.55", &ss);
    int64_t start = now_ms();
    assert_non_null(
        dns_reverse_confirmed(p->silent->dns, (struct sockaddr *)&ss, 2000, name_cb, &again));
    assert_int_equal(again.calls, 0); /* never inside the call */
    run_loop(p->silent->base, &again.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(again.calls, 1);
    assert_int_equal(again.st, DNS_OK);
    assert_string_equal(again.text[0], "mail.test");
    assert_true(now_ms() - start < 200); /* before the silent server's timeout */
    struct dns_cache_stats st;
    dns_cache_stats(p->asking->cache, &st);
    assert_int_equal(st.hits, 2); /* the PTR and the A */
}

static void kept_records_come_back_with_the_time_they_have_left(void **state)
{
    struct cached_pair *p = *state;
    struct seen first = {0}, again = {0}, txt = {0}, txt_again = {0};
    query(p->asking, "mail.test", DNS_A, &first);
    query(p->silent, "MAIL.test.", DNS_A, &again);
    assert_int_equal(again.st, DNS_OK);
    assert_string_equal(again.text[0], "127.0.0.55");
    assert_true(again.ttl > 0 && again.ttl <= RECORD_TTL);
    query(p->asking, "multi.test", DNS_TXT, &txt);
    query(p->silent, "multi.test", DNS_TXT, &txt_again);
    assert_int_equal(txt_again.st, DNS_OK);
    assert_int_equal(txt_again.n, 2);
    assert_true(seen_has(&txt_again, "first part second part"));
    assert_true(seen_has(&txt_again, "another record"));
}

/* What the asking context did not get is not invented for the other. */
static void a_question_never_answered_is_not_kept(void **state)
{
    struct cached_pair *p = *state;
    struct seen s = {0};
    query(p->silent, "mail.test", DNS_MX, &s);
    assert_int_equal(s.st, DNS_TEMPFAIL);
    struct dns_cache_stats st;
    dns_cache_stats(p->asking->cache, &st);
    assert_int_equal(st.entries, 0);
}

/* ---- dns_resolve's memory of host names ---- */

/* A resolver that answers (through dnsmasq) until told to go silent: the
 * same context must first learn a name, then see its resolver fail. */
struct relay {
    int fd, up;               /* ours, bound; connected to dnsmasq */
    struct event *ev, *up_ev;
    struct sockaddr_storage asker;
    socklen_t asker_len;
    bool silent;
    int questions;            /* every datagram that came, answered or not */
    int servfail_type;        /* questions of this type get SERVFAIL at once (0: none) */
};

/* The type of the question in a DNS message, or -1. */
static int question_type(const unsigned char *msg, size_t len)
{
    size_t at = 12;
    while (at < len && msg[at] != 0)
        at += (size_t)msg[at] + 1;
    if (at + 3 > len)
        return -1;
    return (msg[at + 1] << 8) | msg[at + 2];
}

static void relay_question_cb(evutil_socket_t fd, short what, void *arg)
{
    struct relay *r = arg;
    char buf[1500];
    r->asker_len = sizeof r->asker;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&r->asker, &r->asker_len);
    if (n <= 0)
        return;
    r->questions++;
    if (r->servfail_type && question_type((unsigned char *)buf, (size_t)n) == r->servfail_type) {
        buf[2] = (char)(buf[2] | 0x80);           /* QR: a response */
        buf[3] = (char)((buf[3] & 0xf0) | 0x82); /* RA, RCODE 2: SERVFAIL */
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&r->asker, r->asker_len);
        return;
    }
    if (!r->silent)
        send(r->up, buf, (size_t)n, 0);
}

static void relay_answer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct relay *r = arg;
    char buf[1500];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0 && !r->silent)
        sendto(r->fd, buf, (size_t)n, 0, (struct sockaddr *)&r->asker, r->asker_len);
}

static void relay_start(struct relay *r, struct event_base *base)
{
    memset(r, 0, sizeof *r);
    r->fd = bind_local(SOCK_DGRAM, 0);
    r->up = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(r->fd >= 0 && r->up >= 0);
    struct sockaddr_in dnsmasq = {.sin_family = AF_INET, .sin_port = htons(dnsmasq_port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(r->up, (struct sockaddr *)&dnsmasq, sizeof dnsmasq), 0);
    r->ev = event_new(base, r->fd, EV_READ | EV_PERSIST, relay_question_cb, r);
    r->up_ev = event_new(base, r->up, EV_READ | EV_PERSIST, relay_answer_cb, r);
    assert_int_equal(event_add(r->ev, NULL), 0);
    assert_int_equal(event_add(r->up_ev, NULL), 0);
}

static void relay_stop(struct relay *r)
{
    event_free(r->ev);
    event_free(r->up_ev);
    close(r->fd);
    close(r->up);
}

/* A context with a cache (answers are kept up to max_ttl_ms) behind the
 * relay, whose own loop runs the relay too. */
struct memo_fixture {
    struct relay relay;
    struct fixture *f;
};

static struct memo_fixture *memo_fixture_new(int64_t max_ttl_ms)
{
    struct memo_fixture *m = calloc(1, sizeof *m);
    assert_non_null(m);
    struct event_base *base = event_base_new();
    assert_non_null(base);
    relay_start(&m->relay, base);
    struct dns_conf cache_conf = {.cache_memory = 1 << 20, .cache_max_ttl_ms = max_ttl_ms,
                                  .cache_negative_ttl_ms = max_ttl_ms};
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->base = base;
    f->cache = dns_cache_new(&cache_conf);
    snprintf(f->server, sizeof f->server, "127.0.0.1:%d", local_port(m->relay.fd));
    f->servers[0] = f->server;
    f->conf = (struct dns_conf){.servers = f->servers, .nservers = 1, .timeout_ms = 200,
                                .tries = 1, .cache_max_ttl_ms = max_ttl_ms};
    char err[256] = "";
    f->dns = dns_ctx_new(base, &f->conf, f->cache, err, sizeof err);
    if (!f->dns)
        fail_msg("dns_ctx_new: %s", err);
    m->f = f;
    return m;
}

static void memo_fixture_free(struct memo_fixture *m)
{
    dns_ctx_free(m->f->dns);
    m->f->dns = NULL;
    relay_stop(&m->relay);
    fixture_free(m->f);
    free(m);
}

static void resolve_in(struct memo_fixture *m, const char *name, int port, struct seen *s)
{
    assert_non_null(dns_resolve(m->f->dns, name, port, addr_cb, s));
    assert_int_equal(s->calls, 0); /* never inside the call */
    run_loop(m->f->base, &s->calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(s->calls, 1);
}

static void a_resolved_name_is_not_asked_again_within_its_ttl(void **state)
{
    struct memo_fixture *m = memo_fixture_new(3600 * 1000);
    struct seen first = {0}, again = {0};
    resolve_in(m, "mail.test", 25, &first);
    assert_int_equal(first.st, DNS_OK);
    int asked = m->relay.questions;
    assert_true(asked >= 1);
    resolve_in(m, "MAIL.TEST", 2525, &again);
    assert_int_equal(again.st, DNS_OK);
    assert_int_equal(again.n, 2);
    assert_true(seen_has(&again, "127.0.0.55 2525")); /* the asker's port */
    assert_true(seen_has(&again, "::55 2525"));
    assert_int_equal(m->relay.questions, asked);
    memo_fixture_free(m);
}

/* The resolver fails once the answer's time is up: the last addresses
 * serve, and the next connections get them without waiting for a timeout. */
static void a_failing_resolver_leaves_the_last_addresses_in_use(void **state)
{
    struct memo_fixture *m = memo_fixture_new(1); /* fresh for 1 ms */
    struct seen first = {0}, failed = {0}, next = {0}, unknown = {0};
    resolve_in(m, "mail.test", 25, &first);
    assert_int_equal(first.st, DNS_OK);
    sleep_ms(5);
    m->relay.silent = true;
    int asked = m->relay.questions;
    resolve_in(m, "mail.test", 25, &failed);
    assert_true(m->relay.questions > asked); /* it did ask, and got nothing */
    assert_int_equal(failed.st, DNS_OK);
    assert_true(seen_has(&failed, "127.0.0.55 25"));
    asked = m->relay.questions;
    int64_t start = now_ms();
    resolve_in(m, "mail.test", 587, &next);
    assert_int_equal(next.st, DNS_OK);
    assert_true(seen_has(&next, "::55 587"));
    assert_int_equal(m->relay.questions, asked);
    assert_true(now_ms() - start < 150); /* not after the 200 ms timeout */
    /* A name never resolved has nothing to fall back on. */
    resolve_in(m, "other.test", 25, &unknown);
    assert_int_equal(unknown.st, DNS_TEMPFAIL);
    memo_fixture_free(m);
}

/* other.test has an A record only. Its A question fails (SERVFAIL) while
 * its AAAA question gets the usual "no such record": a resolver failure
 * for the only family the name has, which must serve the last addresses,
 * not forget them as if the name were gone. */
static void a_failed_a_question_beside_an_empty_aaaa_answer_serves_stale(void **state)
{
    struct memo_fixture *m = memo_fixture_new(1); /* fresh for 1 ms */
    struct seen first = {0}, failed = {0}, after = {0};
    resolve_in(m, "other.test", 25, &first);
    assert_int_equal(first.st, DNS_OK);
    assert_true(seen_has(&first, "127.0.0.78 25"));
    sleep_ms(5);
    m->relay.servfail_type = 1; /* T_A */
    resolve_in(m, "other.test", 25, &failed);
    assert_int_equal(failed.st, DNS_OK);
    assert_true(seen_has(&failed, "127.0.0.78 25"));
    /* and the name is still remembered */
    m->relay.silent = true;
    resolve_in(m, "other.test", 26, &after);
    assert_int_equal(after.st, DNS_OK);
    assert_true(seen_has(&after, "127.0.0.78 26"));
    memo_fixture_free(m);
}

/* A reload while a backend name is being asked and the resolver is down:
 * the query the old context still serves gets the last addresses, as one
 * asked a moment later of the new context does. */
static void a_lookup_in_flight_over_a_reload_still_serves_stale(void **state)
{
    struct memo_fixture *m = memo_fixture_new(1);
    struct seen first = {0}, in_flight = {0};
    resolve_in(m, "mail.test", 25, &first);
    assert_int_equal(first.st, DNS_OK);
    sleep_ms(5);
    m->relay.silent = true;
    struct dns_ctx *old = m->f->dns;
    assert_non_null(dns_resolve(old, "mail.test", 25, addr_cb, &in_flight));
    char err[256] = "";
    struct dns_ctx *fresh = dns_ctx_new(m->f->base, &m->f->conf, m->f->cache, err, sizeof err);
    assert_non_null(fresh);
    dns_ctx_take_names(fresh, old);
    m->f->dns = fresh;
    run_loop(m->f->base, &in_flight.calls, 1, LOOP_LIMIT_MS);
    assert_int_equal(in_flight.calls, 1);
    dns_ctx_free(old);
    assert_int_equal(in_flight.st, DNS_OK);
    assert_true(seen_has(&in_flight, "127.0.0.55 25"));
    memo_fixture_free(m);
}

/* An answer is as fresh as the shortest TTL on its way: a CNAME of 1 s
 * in front of an A record of 300 s is asked again after 1 s. */
static void a_short_cname_ttl_bounds_the_time_a_name_is_used(void **state)
{
    struct memo_fixture *m = memo_fixture_new(3600 * 1000);
    struct seen first = {0}, later = {0};
    resolve_in(m, "alias.test", 25, &first);
    assert_int_equal(first.st, DNS_OK);
    assert_true(seen_has(&first, "127.0.0.78 25"));
    int asked = m->relay.questions;
    sleep_ms(1100);
    resolve_in(m, "alias.test", 25, &later);
    assert_int_equal(later.st, DNS_OK);
    assert_true(m->relay.questions > asked);
    memo_fixture_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(resolve_returns_a_and_aaaa_with_port, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(resolve_unknown_name_is_notfound, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(resolve_numeric_answers_later_not_inside_the_call,
                                        setup_silent, teardown_fixture),
        cmocka_unit_test_setup_teardown(resolve_localhost_answers_later_not_inside_the_call,
                                        setup_real, teardown_fixture),
        cmocka_unit_test(a_resolved_name_is_not_asked_again_within_its_ttl),
        cmocka_unit_test(a_failing_resolver_leaves_the_last_addresses_in_use),
        cmocka_unit_test(a_short_cname_ttl_bounds_the_time_a_name_is_used),
        cmocka_unit_test(a_lookup_in_flight_over_a_reload_still_serves_stale),
        cmocka_unit_test(a_failed_a_question_beside_an_empty_aaaa_answer_serves_stale),
        cmocka_unit_test_setup_teardown(resolve_times_out_as_tempfail, setup_silent,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_confirmed_name_for_v4, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_lookups_in_a_row_on_a_kept_socket_each_get_their_name,
                                        setup_real, teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_confirmed_name_for_v6, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_v4_mapped_client_is_treated_as_v4, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_name_without_address_is_notfound, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_name_pointing_elsewhere_is_notfound, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_name_confirmed_only_by_etc_hosts_is_not_confirmed,
                                        setup_real, teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_without_ptr_is_notfound, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(
            reverse_lookups_of_one_address_asked_together_send_one_question, setup_silent,
            teardown_fixture),
        cmocka_unit_test_setup_teardown(
            joined_reverse_lookups_each_get_the_name_even_when_the_first_is_cancelled,
            setup_real, teardown_fixture),
        cmocka_unit_test_setup_teardown(reverse_of_a_non_ip_address_is_notfound_later, setup_real,
                                        teardown_fixture),
        cmocka_unit_test(reverse_timeout_is_tempfail_on_time),
        cmocka_unit_test_setup_teardown(txt_strings_of_one_record_are_joined, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(txt_control_bytes_cannot_break_a_reply_line, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(mx_is_preference_and_name, setup_real, teardown_fixture),
        cmocka_unit_test_setup_teardown(a_and_aaaa_records_carry_ttl, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(ptr_record_gives_the_name, setup_real, teardown_fixture),
        cmocka_unit_test_setup_teardown(missing_records_are_notfound, setup_real,
                                        teardown_fixture),
        cmocka_unit_test(query_timeout_is_tempfail_on_time),
        cmocka_unit_test_setup_teardown(cancelled_query_never_calls_back, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(cancel_after_timeout_timer_armed_stays_silent,
                                        setup_silent, teardown_fixture),
        cmocka_unit_test_setup_teardown(ctx_free_with_pending_queries_calls_nobody, setup_silent,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(query_started_inside_a_callback_completes, setup_real,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(ctx_freed_inside_a_callback_silences_the_rest,
                                        setup_real, teardown_fixture),
        cmocka_unit_test(bad_server_text_is_refused),
        cmocka_unit_test_setup_teardown(a_kept_reverse_name_is_confirmed_without_asking_again,
                                        setup_cached_pair, teardown_cached_pair),
        cmocka_unit_test_setup_teardown(kept_records_come_back_with_the_time_they_have_left,
                                        setup_cached_pair, teardown_cached_pair),
        cmocka_unit_test_setup_teardown(a_question_never_answered_is_not_kept, setup_cached_pair,
                                        teardown_cached_pair),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
