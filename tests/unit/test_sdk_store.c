/* The SDK's key/value calls (sdk_store.c) over an LMDB store: results reach
 * the plugin with its session, and never after the session gave them up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/store.h>

#include "config.h"
#include "sdk_op.h"
#include "session_internal.h"
#include "store.h"
#include "worker.h"
#include "workpool.h"

#define LOOP_LIMIT_MS 5000
#define LOOP_MAX_TURNS 100000
#define MAP_SIZE (1024 * 1024)
#define REDIS_SERVER "/usr/bin/redis-server"
#define STARTUP_WAIT_MS 5000
#define REDIS_TIMEOUT_MS 500

static char tmp_root[] = "/tmp/sluice-test-sdk-store-XXXXXX";

struct fixture {
    struct event_base *base;
    struct workpool *wp;
    struct store *st;
    struct loop loop;
    struct session *s;
};

struct outcome {
    int calls;
    sluice_session *s;
    enum sluice_kv_status status;
    char value[64];
    size_t len;
    int64_t integer;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pid_t redis_pid = -1;
static char redis_address[32];

static int fixture_open(void **state, struct store_conf *conf)
{
    struct fixture *f = calloc(1, sizeof *f);
    char err[256];
    f->base = event_base_new();
    f->wp = workpool_new(1); /* FIFO: results come back in the order asked */
    f->st = store_open(conf, f->wp, err, sizeof err);
    if (!f->st)
        return -1;
    f->loop.base = f->base;
    f->loop.store = store_thread_new(f->st, f->base);
    f->s = calloc(1, sizeof *f->s);
    f->s->loop = &f->loop;
    *state = f;
    return f->loop.store ? 0 : -1;
}

static int fixture_setup(void **state)
{
    static int seq;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/%d", tmp_root, ++seq);
    struct store_conf conf = {.backend = STORE_LMDB, .path = dir, .map_size = MAP_SIZE};
    return fixture_open(state, &conf);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int tcp_to_loopback(int port, bool do_connect)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    int rc = -1;
    if (fd >= 0 && do_connect)
        rc = connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0 ? 0 : -1;
    else if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
             getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
        rc = ntohs(sin.sin_port);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* A real redis-server on a free loopback port, for the raw Redis calls. */
static int redis_fixture_setup(void **state)
{
    int port = redis_pid > 0 ? -1 : tcp_to_loopback(0, false);
    if (port > 0) {
        char port_arg[16];
        snprintf(port_arg, sizeof port_arg, "%d", port);
        snprintf(redis_address, sizeof redis_address, "127.0.0.1:%d", port);
        char *argv[] = {REDIS_SERVER, "--port", port_arg, "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--loglevel", "warning", "--dir", tmp_root, NULL};
        redis_pid = fork();
        if (redis_pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);
            if (devnull >= 0)
                dup2(devnull, STDOUT_FILENO);
            execv(REDIS_SERVER, argv);
            _exit(127);
        }
        int64_t deadline = now_ms() + STARTUP_WAIT_MS;
        while (tcp_to_loopback(port, true) < 0 && now_ms() < deadline)
            sleep_ms(20);
    }
    struct store_conf conf = {.backend = STORE_REDIS, .redis_address = redis_address,
                              .redis_timeout_ms = REDIS_TIMEOUT_MS};
    return fixture_open(state, &conf);
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    workpool_free(f->wp);
    store_thread_free(f->loop.store);
    store_close(f->st);
    event_base_free(f->base);
    free(f->s);
    free(f);
    return 0;
}

static void loop_tick(evutil_socket_t fd, short what, void *arg)
{
}

static void run_until(struct fixture *f, const int *calls, int want)
{
    struct event *tick = event_new(f->base, -1, EV_PERSIST, loop_tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);
    int64_t deadline = now_ms() + LOOP_LIMIT_MS;
    for (int turn = 0; turn < LOOP_MAX_TURNS && *calls < want && now_ms() < deadline; turn++)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(tick);
}

static void on_done(sluice_session *s, void *arg, enum sluice_kv_status st)
{
    struct outcome *o = arg;
    o->calls++;
    o->s = s;
    o->status = st;
}

static void on_value(sluice_session *s, void *arg, enum sluice_kv_status st, const void *value,
                     size_t len)
{
    struct outcome *o = arg;
    o->calls++;
    o->s = s;
    o->status = st;
    o->len = len < sizeof o->value ? len : sizeof o->value;
    if (value)
        memcpy(o->value, value, o->len);
}

static void on_int(sluice_session *s, void *arg, enum sluice_kv_status st, int64_t value)
{
    struct outcome *o = arg;
    o->calls++;
    o->s = s;
    o->status = st;
    o->integer = value;
}

static void kv_results_reach_the_plugin_with_its_session(void **state)
{
    struct fixture *f = *state;
    sluice_session *ss = (sluice_session *)f->s;
    struct outcome set = {0}, get = {0}, incr = {0}, missing = {0};
    assert_int_equal(sluice_kv_set(ss, "p:k", 3, "val", 3, 0, on_done, &set), 0);
    run_until(f, &set.calls, 1);
    assert_int_equal(set.calls, 1);
    assert_ptr_equal(set.s, ss);
    assert_int_equal(set.status, SLUICE_KV_OK);
    assert_int_equal(sluice_kv_get(ss, "p:k", 3, on_value, &get), 0);
    assert_int_equal(sluice_kv_get(ss, "p:none", 6, on_value, &missing), 0);
    assert_int_equal(sluice_kv_incr(ss, "p:n", 3, 5, 0, on_int, &incr), 0);
    /* a read runs on the loop thread, but its result never inside the call */
    assert_int_equal(get.calls + missing.calls, 0);
    run_until(f, &incr.calls, 1);
    run_until(f, &missing.calls, 1);
    run_until(f, &get.calls, 1);
    assert_int_equal(get.status, SLUICE_KV_OK);
    assert_memory_equal(get.value, "val", 3);
    assert_int_equal(missing.status, SLUICE_KV_NOTFOUND);
    assert_int_equal(incr.status, SLUICE_KV_OK);
    assert_int_equal(incr.integer, 5);
    assert_true(LIST_EMPTY(&f->s->ops));
}

static void set_without_callback_still_stores(void **state)
{
    struct fixture *f = *state;
    sluice_session *ss = (sluice_session *)f->s;
    struct outcome get = {0};
    assert_int_equal(sluice_kv_set(ss, "p:quiet", 7, "1", 1, 0, NULL, NULL), 0);
    assert_int_equal(sluice_kv_get(ss, "p:quiet", 7, on_value, &get), 0);
    run_until(f, &get.calls, 1);
    assert_int_equal(get.status, SLUICE_KV_OK);
}

static void result_after_the_session_ended_never_reaches_the_plugin(void **state)
{
    struct fixture *f = *state;
    sluice_session *ss = (sluice_session *)f->s;
    struct outcome get = {0}, probe = {0};
    assert_int_equal(sluice_kv_get(ss, "p:k", 3, on_value, &get), 0);
    sdk_op_abandon_all(f->s);
    /* a later operation of another session shows the pool has moved on */
    struct session other = {.loop = &f->loop};
    assert_int_equal(sluice_kv_del((sluice_session *)&other, "p:x", 3, on_done, &probe), 0);
    run_until(f, &probe.calls, 1);
    assert_int_equal(probe.calls, 1);
    assert_int_equal(get.calls, 0);
}

static void on_redis(sluice_session *s, void *arg, const struct sluice_redis_reply *r)
{
    struct outcome *o = arg;
    o->calls++;
}

static void raw_redis_is_refused_on_lmdb(void **state)
{
    struct fixture *f = *state;
    const char *argv[] = {"PING"};
    const size_t lens[] = {4};
    struct outcome o = {0};
    assert_int_equal(sluice_redis((sluice_session *)f->s, 1, argv, lens, on_redis, &o), -1);
    assert_int_equal(o.calls, 0);
    assert_true(LIST_EMPTY(&f->s->ops));
}

struct redis_outcome {
    int calls;
    enum sluice_redis_type type;
    size_t nelements;
    enum sluice_redis_type inner_type;
    char text[64];
    long long integer;
};

static void on_redis_reply(sluice_session *s, void *arg, const struct sluice_redis_reply *r)
{
    struct redis_outcome *o = arg;
    o->calls++;
    o->type = r->type;
    o->integer = r->integer;
    o->nelements = r->nelements;
    if (r->str)
        snprintf(o->text, sizeof o->text, "%.*s", (int)r->len, r->str);
    if (r->nelements == 2 && r->elements[1]->type == SLUICE_REDIS_ARRAY &&
        r->elements[1]->nelements == 1) {
        o->inner_type = r->elements[1]->elements[0]->type;
        snprintf(o->text, sizeof o->text, "%.*s", (int)r->elements[1]->elements[0]->len,
                 r->elements[1]->elements[0]->str);
    }
}

static void redis_call(struct fixture *f, int argc, const char *const *argv,
                       struct redis_outcome *o)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    *o = (struct redis_outcome){0};
    assert_int_equal(sluice_redis((sluice_session *)f->s, argc, argv, lens, on_redis_reply, o),
                     0);
    run_until(f, &o->calls, 1);
    assert_int_equal(o->calls, 1);
}

static void raw_redis_replies_are_converted_with_nested_arrays(void **state)
{
    struct fixture *f = *state;
    struct redis_outcome o;
    const char *del[] = {"DEL", "p:list"};
    redis_call(f, 2, del, &o);
    assert_int_equal(o.type, SLUICE_REDIS_INTEGER);
    const char *push[] = {"RPUSH", "p:list", "only"};
    redis_call(f, 3, push, &o);
    assert_int_equal(o.integer, 1);
    /* SCAN answers [cursor, [keys...]] */
    const char *scan[] = {"SCAN", "0", "MATCH", "p:list", "COUNT", "1000"};
    redis_call(f, 6, scan, &o);
    assert_int_equal(o.type, SLUICE_REDIS_ARRAY);
    assert_int_equal(o.nelements, 2);
    assert_int_equal(o.inner_type, SLUICE_REDIS_STRING);
    assert_string_equal(o.text, "p:list");
    const char *get[] = {"GET", "p:absent"};
    redis_call(f, 2, get, &o);
    assert_int_equal(o.type, SLUICE_REDIS_NIL);
    const char *bad[] = {"NOSUCHCOMMAND"};
    redis_call(f, 1, bad, &o);
    assert_int_equal(o.type, SLUICE_REDIS_ERROR);
    assert_non_null(strstr(o.text, "unknown command"));
}

static void raw_redis_timeout_reaches_the_plugin_as_an_error_reply(void **state)
{
    struct fixture *f = *state;
    struct redis_outcome o;
    const char *ping[] = {"PING"};
    redis_call(f, 1, ping, &o); /* connected */
    kill(redis_pid, SIGSTOP);
    redis_call(f, 1, ping, &o);
    kill(redis_pid, SIGCONT);
    assert_int_equal(o.type, SLUICE_REDIS_ERROR);
    assert_non_null(strstr(o.text, "timed out"));
}

int main(void)
{
    evthread_use_pthreads();
    if (!mkdtemp(tmp_root))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(kv_results_reach_the_plugin_with_its_session,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(set_without_callback_still_stores, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(result_after_the_session_ended_never_reaches_the_plugin,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(raw_redis_is_refused_on_lmdb, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(raw_redis_replies_are_converted_with_nested_arrays,
                                        redis_fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(raw_redis_timeout_reaches_the_plugin_as_an_error_reply,
                                        redis_fixture_setup, fixture_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (redis_pid > 0) {
        kill(redis_pid, SIGCONT);
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_root);
    if (system(cmd) != 0)
        rc = rc ? rc : 1;
    return rc;
}
