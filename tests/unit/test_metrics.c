/* Metrics: exact atomic counts across threads, the Prometheus text format,
 * the /metrics endpoint over a real socket, and the host's own metrics. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "host_metrics.h"
#include "metrics.h"

#define NTHREADS 8
#define ADDS_PER_THREAD 100000
#define IO_TIMEOUT_S 5         /* every socket wait in these tests is bounded */
#define MAX_READS 1000         /* and so is every read loop */
#define RESPONSE_MAX (1 << 20)

static int teardown_registry(void **state)
{
    metrics_stop();
    host_metrics_free();
    metrics_free_all();
    return 0;
}

/* ---- reading the exposition ---- */

static char *render(void)
{
    size_t len = 0;
    char *text = metrics_render(&len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

/* Counts the lines of text equal to line. */
static int count_lines(const char *text, const char *line)
{
    int n = 0;
    size_t len = strlen(line);
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t l = eol ? (size_t)(eol - p) : strlen(p);
        if (l == len && memcmp(p, line, len) == 0)
            n++;
        p = eol ? eol + 1 : NULL;
    }
    return n;
}

static int count_prefixed(const char *text, const char *prefix)
{
    int n = 0;
    size_t len = strlen(prefix);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, prefix, len) == 0)
            n++;
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return n;
}

/* Position of the line equal to line, or -1. */
static long line_offset(const char *text, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, line, len) == 0 && (p[len] == '\n' || p[len] == '\0'))
            return p - text;
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -1;
}

/* The value of the series named exactly series (name and labels). */
static double series_value(const char *text, const char *series)
{
    size_t len = strlen(series);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, series, len) == 0 && p[len] == ' ')
            return strtod(p + len + 1, NULL);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    fail_msg("no series %s in:\n%s", series, text);
    return NAN;
}

static void assert_has_line(const char *text, const char *line)
{
    if (count_lines(text, line) != 1)
        fail_msg("expected the line [%s] once in:\n%s", line, text);
}

/* ---- counters and gauges ---- */

static void *add_many(void *arg)
{
    for (int i = 0; i < ADDS_PER_THREAD; i++)
        metrics_counter_add(arg, 1);
    return NULL;
}

static void counters_from_eight_threads_add_up_exactly(void **state)
{
    struct metric_counter *c = metrics_counter("test_adds_total", "Adds.", NULL);
    assert_non_null(c);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, add_many, c), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    char *text = render();
    char want[64];
    snprintf(want, sizeof want, "test_adds_total %d", NTHREADS * ADDS_PER_THREAD);
    assert_has_line(text, want);
    free(text);
}

static void gauge_goes_up_and_down_and_below_zero(void **state)
{
    struct metric_gauge *g = metrics_gauge("test_open", "Open things.", NULL);
    metrics_gauge_add(g, 3);
    metrics_gauge_add(g, -5);
    char *text = render();
    assert_has_line(text, "# TYPE test_open gauge");
    assert_has_line(text, "test_open -2");
    free(text);
    metrics_gauge_set(g, 7);
    text = render();
    assert_has_line(text, "test_open 7");
    free(text);
}

/* ---- registration rules ---- */

static void same_name_and_labels_give_the_same_metric(void **state)
{
    struct metric_counter *a = metrics_counter("test_dup_total", "Dup.", "entry=\"x\"");
    struct metric_counter *b = metrics_counter("test_dup_total", "Other help.", "entry=\"x\"");
    struct metric_counter *c = metrics_counter("test_dup_total", "Dup.", "entry=\"y\"");
    assert_non_null(a);
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, c);
    metrics_counter_add(a, 2);
    metrics_counter_add(b, 3);
    char *text = render();
    assert_has_line(text, "test_dup_total{entry=\"x\"} 5");
    assert_has_line(text, "test_dup_total{entry=\"y\"} 0");
    assert_has_line(text, "# HELP test_dup_total Dup.");
    free(text);
}

static void a_name_keeps_its_type(void **state)
{
    static const double bounds[] = {1, 2};
    assert_non_null(metrics_counter("test_typed", "T.", NULL));
    assert_null(metrics_gauge("test_typed", "T.", NULL));
    assert_null(metrics_histogram("test_typed", "T.", "a=\"1\"", bounds, 2));
    assert_null(metrics_gauge("test_typed", "T.", "other=\"label\""));
}

static void bad_names_labels_and_bounds_are_refused(void **state)
{
    static const double rising[] = {1, 2}, flat[] = {1, 1}, falling[] = {2, 1};
    assert_null(metrics_counter("", "x", NULL));
    assert_null(metrics_counter("9lives", "x", NULL));
    assert_null(metrics_counter("has-dash", "x", NULL));
    assert_null(metrics_counter(NULL, "x", NULL));
    assert_non_null(metrics_counter("ns:sub_total", "colons are allowed", NULL));
    assert_null(metrics_counter("test_l", "x", "entry=\"unterminated"));
    assert_null(metrics_counter("test_l", "x", "entry=unquoted"));
    assert_null(metrics_counter("test_l", "x", "__reserved=\"1\""));
    assert_null(metrics_counter("test_l", "x", "a=\"1\"b=\"2\""));
    assert_null(metrics_counter("test_l", "x", "a=\"bad \\x escape\""));
    assert_null(metrics_counter("test_l", "x", "a=\"raw\nnewline\""));
    assert_non_null(metrics_counter("test_l", "x", "a=\"1\",b=\"q\\\"\\\\\\n\""));
    assert_null(metrics_histogram("test_h", "x", "le=\"1\"", rising, 2));
    assert_null(metrics_histogram("test_h", "x", NULL, flat, 2));
    assert_null(metrics_histogram("test_h", "x", NULL, falling, 2));
    assert_non_null(metrics_histogram("test_h", "x", NULL, rising, 2));
    assert_null(metrics_histogram("test_h", "x", NULL, rising, 1)); /* other buckets */
    metrics_counter_add(NULL, 1); /* a failed registration costs nothing later */
    metrics_histogram_observe(NULL, 1.0);
    metrics_gauge_add(NULL, 1);
}

static void help_text_and_label_values_are_escaped(void **state)
{
    char label[64], value[32];
    metrics_escape_label_value("a\"b\\c\nd", value, sizeof value);
    assert_string_equal(value, "a\\\"b\\\\c\\nd");
    assert_true(metrics_escape_label_value("\"\"\"\"", value, 4) >= 4); /* truncation shows */
    snprintf(label, sizeof label, "entry=\"%s\"", "a\\\"b\\\\c\\nd");
    metrics_counter_add(metrics_counter("test_esc_total", "Back\\slash and\nnewline.", label), 1);
    char *text = render();
    assert_has_line(text, "# HELP test_esc_total Back\\\\slash and\\nnewline.");
    assert_has_line(text, "test_esc_total{entry=\"a\\\"b\\\\c\\nd\"} 1");
    free(text);
}

/* A value cut short ends where the last whole character ended: no byte of
 * the buffer is left unwritten before the terminator. */
static void a_truncated_escape_leaves_no_gap(void **state)
{
    char value[5];
    memset(value, 'X', sizeof value);
    assert_true(metrics_escape_label_value("aaa\"", value, sizeof value) >= sizeof value);
    assert_string_equal(value, "aaa");
    memset(value, 'X', sizeof value);
    assert_true(metrics_escape_label_value("aa\"bb", value, sizeof value) >= sizeof value);
    assert_string_equal(value, "aa\\\"");
}

/* ---- histograms ---- */

static void histogram_buckets_are_cumulative_with_sum_and_count(void **state)
{
    static const double bounds[] = {0.005, 0.25, 1, 10};
    struct metric_histogram *h =
        metrics_histogram("test_seconds", "Durations.", "pool=\"p\"", bounds, 4);
    assert_non_null(h);
    static const double values[] = {0.00390625, 0.25, 0.5, 0.75, 2, 100};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        metrics_histogram_observe(h, values[i]);
    char *text = render();
    assert_has_line(text, "# TYPE test_seconds histogram");
    assert_has_line(text, "test_seconds_bucket{pool=\"p\",le=\"0.005\"} 1");
    assert_has_line(text, "test_seconds_bucket{pool=\"p\",le=\"0.25\"} 2"); /* le is <= */
    assert_has_line(text, "test_seconds_bucket{pool=\"p\",le=\"1\"} 4");
    assert_has_line(text, "test_seconds_bucket{pool=\"p\",le=\"10\"} 5");
    assert_has_line(text, "test_seconds_bucket{pool=\"p\",le=\"+Inf\"} 6");
    assert_has_line(text, "test_seconds_sum{pool=\"p\"} 103.50390625");
    assert_has_line(text, "test_seconds_count{pool=\"p\"} 6");
    assert_true(line_offset(text, "test_seconds_bucket{pool=\"p\",le=\"0.005\"} 1") <
                line_offset(text, "test_seconds_bucket{pool=\"p\",le=\"+Inf\"} 6"));
    free(text);
}

static void *observe_many(void *arg)
{
    for (int i = 0; i < ADDS_PER_THREAD; i++)
        metrics_histogram_observe(arg, (i % 2) ? 0.5 : 2.0);
    return NULL;
}

static void histogram_sum_is_exact_across_threads(void **state)
{
    static const double bounds[] = {1};
    struct metric_histogram *h = metrics_histogram("test_mt_seconds", "MT.", NULL, bounds, 1);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, observe_many, h), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    char *text = render();
    char want[80];
    int half = NTHREADS * ADDS_PER_THREAD / 2;
    snprintf(want, sizeof want, "test_mt_seconds_bucket{le=\"1\"} %d", half);
    assert_has_line(text, want);
    snprintf(want, sizeof want, "test_mt_seconds_count %d", 2 * half);
    assert_has_line(text, want);
    assert_true(series_value(text, "test_mt_seconds_sum") == half * 2.0 + half * 0.5);
    free(text);
}

static void histogram_ignores_nan(void **state)
{
    static const double bounds[] = {1};
    struct metric_histogram *h = metrics_histogram("test_nan", "N.", NULL, bounds, 1);
    metrics_histogram_observe(h, NAN);
    metrics_histogram_observe(h, 0.5);
    char *text = render();
    assert_has_line(text, "test_nan_count 1");
    assert_has_line(text, "test_nan_sum 0.5");
    free(text);
}

/* ---- the text as a whole ---- */

static void series_of_one_name_share_one_help_and_type(void **state)
{
    metrics_counter_add(metrics_counter("test_grp_total", "Grouped.", "k=\"a\""), 1);
    metrics_counter_add(metrics_counter("test_other_total", "Other.", NULL), 4);
    metrics_counter_add(metrics_counter("test_grp_total", "Grouped.", "k=\"b\""), 2);
    metrics_counter_add(metrics_counter("test_grp_total", "Grouped.", NULL), 3);
    char *text = render();
    assert_int_equal(count_prefixed(text, "# HELP test_grp_total "), 1);
    assert_int_equal(count_lines(text, "# TYPE test_grp_total counter"), 1);
    long help = line_offset(text, "# HELP test_grp_total Grouped.");
    long type = line_offset(text, "# TYPE test_grp_total counter");
    long a = line_offset(text, "test_grp_total{k=\"a\"} 1");
    long b = line_offset(text, "test_grp_total{k=\"b\"} 2");
    long none = line_offset(text, "test_grp_total 3");
    long other = line_offset(text, "# HELP test_other_total Other.");
    assert_true(help >= 0 && help < type && type < a && a < b && b < none);
    assert_true(other > none || other < help); /* never in between */
    /* every line is a comment or "series value" */
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        assert_non_null(eol);
        if (*p != '#') {
            const char *space = memchr(p, ' ', (size_t)(eol - p));
            assert_non_null(space);
            assert_true(space + 1 < eol);
        }
        p = eol + 1;
    }
    free(text);
}

/* ---- the HTTP endpoint ---- */

/* A plain HTTP/1.0 exchange with bounded waits; returns the whole response
 * (malloc'd) or NULL when the endpoint could not be reached. */
static char *http_exchange(int family, int port, const char *request)
{
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        sin6->sin6_addr = in6addr_loopback;
        len = sizeof *sin6;
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *sin;
    }
    int fd = socket(family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
        close(fd);
        return NULL;
    }
    assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
    char *buf = malloc(RESPONSE_MAX);
    assert_non_null(buf);
    size_t used = 0;
    for (int reads = 0; reads < MAX_READS && used < RESPONSE_MAX - 1; reads++) {
        ssize_t n = read(fd, buf + used, RESPONSE_MAX - 1 - used);
        if (n <= 0)
            break; /* closed, or the bounded wait ran out */
        used += (size_t)n;
    }
    buf[used] = '\0';
    close(fd);
    return buf;
}

static int start_endpoint(const char *where)
{
    char err[256] = "";
    if (metrics_start(where, err, sizeof err) < 0)
        fail_msg("metrics_start(%s): %s", where, err);
    int port = metrics_port();
    assert_true(port > 0);
    return port;
}

static void endpoint_serves_the_exposition_on_get_metrics(void **state)
{
    metrics_counter_add(metrics_counter("test_http_total", "Via HTTP.", "entry=\"e\""), 42);
    int port = start_endpoint("127.0.0.1:0");
    char *resp = http_exchange(AF_INET, port, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_non_null(resp);
    assert_true(strncmp(resp, "HTTP/1.0 200 ", 13) == 0 || strncmp(resp, "HTTP/1.1 200 ", 13) == 0);
    assert_non_null(strstr(resp, "Content-Type: text/plain; version=0.0.4"));
    const char *body = strstr(resp, "\r\n\r\n");
    assert_non_null(body);
    assert_has_line(body + 4, "# TYPE test_http_total counter");
    assert_has_line(body + 4, "test_http_total{entry=\"e\"} 42");
    free(resp);
    metrics_stop();
    assert_int_equal(metrics_port(), -1);
}

static void endpoint_answers_404_elsewhere_and_405_to_post(void **state)
{
    int port = start_endpoint("127.0.0.1:0");
    char *resp = http_exchange(AF_INET, port, "GET / HTTP/1.0\r\n\r\n");
    assert_non_null(resp);
    assert_non_null(strstr(resp, " 404 "));
    assert_null(strstr(resp, "version=0.0.4"));
    free(resp);
    resp = http_exchange(AF_INET, port, "GET /metrics/other HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(resp, " 404 "));
    free(resp);
    resp = http_exchange(AF_INET, port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_non_null(resp);
    assert_non_null(strstr(resp, " 405 "));
    assert_non_null(strstr(resp, "Allow: GET, HEAD"));
    free(resp);
    resp = http_exchange(AF_INET, port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(resp, " 200 "));
    free(resp);
}

static void endpoint_listens_on_ipv6_loopback(void **state)
{
    char err[256] = "";
    if (metrics_start("[::1]:0", err, sizeof err) < 0) {
        /* a host without IPv6 loopback cannot run this test */
        if (strstr(err, "ssign") || strstr(err, "family"))
            skip();
        fail_msg("metrics_start([::1]:0): %s", err);
    }
    metrics_counter_add(metrics_counter("test_v6_total", "V6.", NULL), 6);
    char *resp = http_exchange(AF_INET6, metrics_port(), "GET /metrics HTTP/1.0\r\n\r\n");
    assert_non_null(resp);
    assert_non_null(strstr(resp, " 200 "));
    assert_non_null(strstr(resp, "\ntest_v6_total 6\n"));
    free(resp);
}

static void endpoint_refuses_bad_addresses_and_a_second_start(void **state)
{
    static const char *const bad[] = {"", "127.0.0.1", "localhost:9125", "127.0.0.1:99999",
                                      "::1:9125", "[::1]", "127.0.0.1:-1", "[::1]9125"};
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(metrics_start(bad[i], err, sizeof err), -1);
        assert_non_null(strstr(err, "metrics"));
    }
    assert_int_equal(metrics_start(NULL, err, sizeof err), -1);
    start_endpoint("127.0.0.1:0");
    assert_int_equal(metrics_start("127.0.0.1:0", err, sizeof err), -1);
    assert_non_null(strstr(err, "already"));
}

static void endpoint_stop_and_restart_work_repeatedly(void **state)
{
    for (int i = 0; i < 5; i++) {
        int port = start_endpoint("127.0.0.1:0");
        char *resp = http_exchange(AF_INET, port, "GET /metrics HTTP/1.0\r\n\r\n");
        assert_non_null(strstr(resp, " 200 "));
        free(resp);
        metrics_stop();
    }
    metrics_stop(); /* stopping a stopped endpoint is harmless */
}

/* ---- the host's metrics ---- */

static void host_metrics_count_sessions_transactions_and_backends(void **state)
{
    struct pool_conf pools[2] = {{.name = "mx"}, {.name = "odd\"name"}};
    struct sluice_config cfg = {.pools = pools, .npools = 2};
    assert_int_equal(host_metrics_init(&cfg), 0);
    host_metrics_session_opened();
    host_metrics_session_opened();
    host_metrics_session_closed();
    host_metrics_session_refused();
    host_metrics_rcpt(250);
    host_metrics_rcpt(250);
    host_metrics_rcpt(550);
    host_metrics_relay_denied();
    host_metrics_transaction(250, 1000, 0.2);
    host_metrics_transaction(451, 500, 0.02); /* not delivered: no bytes */
    host_metrics_transaction(0, 5, 1); /* no final reply: not a result class */
    host_metrics_backend_connect("mx", true);
    host_metrics_backend_connect("mx", false);
    host_metrics_backend_connect("late", true); /* a pool init did not know */
    host_metrics_backend_reused("mx");
    host_metrics_backend_reused("mx");
    char *text = render();
    assert_has_line(text, "sluice_sessions_total 2");
    assert_has_line(text, "# TYPE sluice_sessions_open gauge");
    assert_has_line(text, "sluice_sessions_open 1");
    assert_has_line(text, "sluice_sessions_refused_total 1");
    assert_has_line(text, "sluice_recipients_total{result=\"2xx\"} 2");
    assert_has_line(text, "sluice_recipients_total{result=\"5xx\"} 1");
    assert_has_line(text, "sluice_relay_denied_total 1");
    assert_has_line(text, "sluice_transactions_total{result=\"2xx\"} 1");
    assert_has_line(text, "sluice_transactions_total{result=\"4xx\"} 1");
    assert_has_line(text, "sluice_transactions_total{result=\"5xx\"} 0");
    assert_has_line(text, "sluice_message_bytes_total 1000");
    assert_has_line(text, "sluice_transaction_duration_seconds_count 2");
    assert_has_line(text, "sluice_transaction_duration_seconds_bucket{le=\"0.025\"} 1");
    assert_has_line(text, "sluice_backend_connections_total{pool=\"mx\",result=\"ok\"} 1");
    assert_has_line(text, "sluice_backend_connections_total{pool=\"mx\",result=\"failed\"} 1");
    assert_has_line(text,
                    "sluice_backend_connections_total{pool=\"odd\\\"name\",result=\"ok\"} 0");
    assert_has_line(text, "sluice_backend_connections_total{pool=\"late\",result=\"ok\"} 1");
    assert_has_line(text, "sluice_backend_connections_total{pool=\"mx\",result=\"reused\"} 2");
    assert_has_line(text, "sluice_backend_connections_total{pool=\"late\",result=\"reused\"} 0");
    free(text);
}

static void host_metrics_do_nothing_before_init(void **state)
{
    host_metrics_session_opened();
    host_metrics_transaction(250, 10, 1);
    host_metrics_backend_connect("mx", true);
    char *text = render();
    assert_int_equal(text[0], '\0');
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(counters_from_eight_threads_add_up_exactly, teardown_registry),
        cmocka_unit_test_teardown(gauge_goes_up_and_down_and_below_zero, teardown_registry),
        cmocka_unit_test_teardown(same_name_and_labels_give_the_same_metric, teardown_registry),
        cmocka_unit_test_teardown(a_name_keeps_its_type, teardown_registry),
        cmocka_unit_test_teardown(bad_names_labels_and_bounds_are_refused, teardown_registry),
        cmocka_unit_test_teardown(help_text_and_label_values_are_escaped, teardown_registry),
        cmocka_unit_test_teardown(a_truncated_escape_leaves_no_gap, teardown_registry),
        cmocka_unit_test_teardown(histogram_buckets_are_cumulative_with_sum_and_count,
                                  teardown_registry),
        cmocka_unit_test_teardown(histogram_sum_is_exact_across_threads, teardown_registry),
        cmocka_unit_test_teardown(histogram_ignores_nan, teardown_registry),
        cmocka_unit_test_teardown(series_of_one_name_share_one_help_and_type, teardown_registry),
        cmocka_unit_test_teardown(endpoint_serves_the_exposition_on_get_metrics,
                                  teardown_registry),
        cmocka_unit_test_teardown(endpoint_answers_404_elsewhere_and_405_to_post,
                                  teardown_registry),
        cmocka_unit_test_teardown(endpoint_listens_on_ipv6_loopback, teardown_registry),
        cmocka_unit_test_teardown(endpoint_refuses_bad_addresses_and_a_second_start,
                                  teardown_registry),
        cmocka_unit_test_teardown(endpoint_stop_and_restart_work_repeatedly, teardown_registry),
        cmocka_unit_test_teardown(host_metrics_count_sessions_transactions_and_backends,
                                  teardown_registry),
        cmocka_unit_test_teardown(host_metrics_do_nothing_before_init, teardown_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
