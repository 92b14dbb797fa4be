/* store: the same API against LMDB (in a fresh temporary directory) and
 * against a real redis-server this test starts on a free loopback port. */
#define _GNU_SOURCE /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "store.h"
#include "store_admin.h"
#include "workpool.h"

#define REDIS_SERVER "/usr/bin/redis-server"
#define STARTUP_WAIT_MS 5000
#define LOOP_LIMIT_MS 5000
#define LOOP_MAX_TURNS 100000
#define REDIS_TIMEOUT_MS 200
#define SHORT_TTL_MS 60
#define PAST_SHORT_TTL_MS 150
#define TINY_MAP_SIZE (64 * 1024)
#define FILL_VALUE_LEN 1024
#define FILL_MAX_KEYS 1000
#define RECONNECT_MAX_TRIES 50

static pid_t redis_pid = -1;
static int redis_port;
static char tmp_root[] = "/tmp/sluice-test-store-XXXXXX";

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

static int free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sin);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
        port = ntohs(sin.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static bool port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int start_redis(int port)
{
    char port_arg[16];
    snprintf(port_arg, sizeof port_arg, "%d", port);
    char *argv[] = {REDIS_SERVER, "--port", port_arg, "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
                    "--dir", tmp_root, NULL};
    redis_pid = fork();
    if (redis_pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);
        execv(REDIS_SERVER, argv);
        _exit(127);
    }
    int64_t deadline = now_ms() + STARTUP_WAIT_MS;
    while (now_ms() < deadline) {
        int status;
        if (waitpid(redis_pid, &status, WNOHANG) == redis_pid) {
            redis_pid = -1;
            return -1;
        }
        if (port_accepts(port))
            return 0;
        sleep_ms(20);
    }
    return -1;
}

static void stop_redis(void)
{
    if (redis_pid <= 0)
        return;
    kill(redis_pid, SIGCONT);
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = -1;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* ---- one store on one loop ---- */

struct harness {
    struct event_base *base;
    struct workpool *wp;
    struct store *st;
    struct store_thread *t;
    struct store_conf conf;
    char dir[256];
    char address[64];
};

struct result {
    int calls;
    enum store_status status;
    char value[2048];
    size_t len;
    int64_t integer;
    int reply_type;
    size_t nelements;
    char errstr[128];
};

static int harness_open(struct harness *h, enum store_backend backend, int64_t map_size)
{
    static int seq;
    h->conf.backend = backend;
    snprintf(h->dir, sizeof h->dir, "%s/lmdb-%d/nested", tmp_root, ++seq);
    h->conf.path = h->dir;
    h->conf.map_size = map_size;
    snprintf(h->address, sizeof h->address, "127.0.0.1:%d", redis_port);
    h->conf.redis_address = h->address;
    h->conf.redis_timeout_ms = REDIS_TIMEOUT_MS;
    h->base = event_base_new();
    h->wp = workpool_new(2);
    char err[256] = "";
    h->st = store_open(&h->conf, h->wp, err, sizeof err);
    if (!h->st) {
        fprintf(stderr, "store_open: %s\n", err);
        return -1;
    }
    h->t = store_thread_new(h->st, h->base);
    return h->t ? 0 : -1;
}

static struct harness *new_harness(enum store_backend backend, int64_t map_size)
{
    struct harness *h = calloc(1, sizeof *h);
    assert_non_null(h);
    assert_int_equal(harness_open(h, backend, map_size), 0);
    return h;
}

/* The order of the worker: pool first, then the threads' stores, then the
 * store, then the bases. */
static void free_harness(struct harness *h)
{
    workpool_free(h->wp);
    store_thread_free(h->t);
    store_close(h->st);
    event_base_free(h->base);
    free(h);
}

static void loop_tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until r got its callback (or the limits are reached). */
static void run_until_called(struct harness *h, const struct result *r)
{
    struct event *tick = event_new(h->base, -1, EV_PERSIST, loop_tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);
    int64_t deadline = now_ms() + LOOP_LIMIT_MS;
    for (int turn = 0; turn < LOOP_MAX_TURNS && r->calls == 0 && now_ms() < deadline; turn++)
        event_base_loop(h->base, EVLOOP_ONCE);
    event_free(tick);
    assert_int_equal(r->calls, 1);
}

static void run_for(struct harness *h, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(h->base, &tv);
    event_base_dispatch(h->base);
}

static void got_value(void *arg, enum store_status st, const void *value, size_t len)
{
    struct result *r = arg;
    r->calls++;
    r->status = st;
    r->len = len < sizeof r->value ? len : sizeof r->value;
    if (value)
        memcpy(r->value, value, r->len);
}

static void got_done(void *arg, enum store_status st)
{
    struct result *r = arg;
    r->calls++;
    r->status = st;
}

static void got_int(void *arg, enum store_status st, int64_t value)
{
    struct result *r = arg;
    r->calls++;
    r->status = st;
    r->integer = value;
}

static void got_reply(void *arg, void *reply, const char *errstr)
{
    struct result *r = arg;
    const redisReply *rep = reply;
    r->calls++;
    r->reply_type = rep ? rep->type : -1;
    if (rep && (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS ||
                rep->type == REDIS_REPLY_ERROR)) {
        r->len = rep->len < sizeof r->value ? rep->len : sizeof r->value;
        memcpy(r->value, rep->str, r->len);
    }
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        r->integer = rep->integer;
    if (rep && rep->type == REDIS_REPLY_ARRAY)
        r->nelements = rep->elements;
    if (errstr)
        snprintf(r->errstr, sizeof r->errstr, "%s", errstr);
}

/* Each call asserts the callback is not run from inside the starting call. */
static enum store_status do_get(struct harness *h, const char *key, size_t klen,
                                struct result *r)
{
    *r = (struct result){0};
    assert_int_equal(store_get(h->t, key, klen, got_value, r), 0);
    assert_int_equal(r->calls, 0);
    run_until_called(h, r);
    return r->status;
}

static enum store_status do_set(struct harness *h, const char *key, const void *val,
                                size_t vlen, int64_t ttl)
{
    struct result r = {0};
    assert_int_equal(store_set(h->t, key, strlen(key), val, vlen, ttl, got_done, &r), 0);
    assert_int_equal(r.calls, 0);
    run_until_called(h, &r);
    return r.status;
}

static enum store_status do_del(struct harness *h, const char *key)
{
    struct result r = {0};
    assert_int_equal(store_del(h->t, key, strlen(key), got_done, &r), 0);
    assert_int_equal(r.calls, 0);
    run_until_called(h, &r);
    return r.status;
}

static enum store_status do_incr(struct harness *h, const char *key, int64_t delta, int64_t ttl,
                                 int64_t *value)
{
    struct result r = {0};
    assert_int_equal(store_incr(h->t, key, strlen(key), delta, ttl, got_int, &r), 0);
    assert_int_equal(r.calls, 0);
    run_until_called(h, &r);
    *value = r.integer;
    return r.status;
}

static void do_raw(struct harness *h, int argc, const char *const *argv, struct result *r)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    *r = (struct result){0};
    assert_int_equal(store_redis_argv(h->t, argc, argv, lens, got_reply, r), 0);
    assert_int_equal(r->calls, 0);
    run_until_called(h, r);
}

/* ---- the same promises on both backends ---- */

static void value_with_nul_bytes_reads_back_exactly(struct harness *h)
{
    static const char val[] = "a\0b\r\nc";
    struct result r;
    assert_int_equal(do_set(h, "k:bin", val, sizeof val, 0), STORE_OK);
    assert_int_equal(do_get(h, "k:bin", 5, &r), STORE_OK);
    assert_int_equal(r.len, sizeof val);
    assert_memory_equal(r.value, val, sizeof val);
    assert_int_equal(do_set(h, "k:empty", "", 0, 0), STORE_OK);
    assert_int_equal(do_get(h, "k:empty", 7, &r), STORE_OK);
    assert_int_equal(r.len, 0);
}

static void missing_key_is_notfound_and_del_removes(struct harness *h)
{
    struct result r;
    assert_int_equal(do_get(h, "k:none", 6, &r), STORE_NOTFOUND);
    assert_int_equal(do_set(h, "k:del", "v", 1, 0), STORE_OK);
    assert_int_equal(do_del(h, "k:del"), STORE_OK);
    assert_int_equal(do_get(h, "k:del", 5, &r), STORE_NOTFOUND);
    assert_int_equal(do_del(h, "k:del"), STORE_NOTFOUND);
}

static void incr_counts_from_zero_and_reads_as_decimal(struct harness *h)
{
    int64_t v = 0;
    struct result r;
    assert_int_equal(do_incr(h, "k:ctr", 1, 0, &v), STORE_OK);
    assert_int_equal(v, 1);
    assert_int_equal(do_incr(h, "k:ctr", 41, 0, &v), STORE_OK);
    assert_int_equal(v, 42);
    assert_int_equal(do_incr(h, "k:ctr", -50, 0, &v), STORE_OK);
    assert_int_equal(v, -8);
    assert_int_equal(do_get(h, "k:ctr", 5, &r), STORE_OK);
    assert_int_equal(r.len, 2);
    assert_memory_equal(r.value, "-8", 2);
    assert_int_equal(do_set(h, "k:text", "abc", 3, 0), STORE_OK);
    assert_int_equal(do_incr(h, "k:text", 1, 0, &v), STORE_ERROR);
}

static void short_ttl_expires_values_and_counters(struct harness *h)
{
    struct result r;
    int64_t v = 0;
    assert_int_equal(do_set(h, "k:ttl", "v", 1, SHORT_TTL_MS), STORE_OK);
    assert_int_equal(do_get(h, "k:ttl", 5, &r), STORE_OK);
    assert_int_equal(do_incr(h, "k:rate", 1, SHORT_TTL_MS, &v), STORE_OK);
    /* a later hit does not extend the window */
    assert_int_equal(do_incr(h, "k:rate", 1, SHORT_TTL_MS * 100, &v), STORE_OK);
    assert_int_equal(v, 2);
    sleep_ms(PAST_SHORT_TTL_MS);
    assert_int_equal(do_get(h, "k:ttl", 5, &r), STORE_NOTFOUND);
    assert_int_equal(do_incr(h, "k:rate", 1, SHORT_TTL_MS, &v), STORE_OK);
    assert_int_equal(v, 1);
    assert_int_equal(do_set(h, "k:forever", "v", 1, 0), STORE_OK);
    sleep_ms(PAST_SHORT_TTL_MS);
    assert_int_equal(do_get(h, "k:forever", 9, &r), STORE_OK);
}

/* ---- LMDB ---- */

static void lmdb_set_get_with_nul_bytes(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    value_with_nul_bytes_reads_back_exactly(h);
    free_harness(h);
}

/* store_lmdb.c: "a read never overtakes that thread's own write (a set then
 * a get sees the set)", with a pool of more than one thread too: the get
 * must not run on a second pool thread while the set's transaction is still
 * being committed on the first. */
static void lmdb_get_right_after_a_set_sees_the_set(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    static char big[64 * 1024];
    int stale = 0;
    for (int i = 0; i < 50; i++) {
        memset(big, 'a' + i % 26, sizeof big);
        snprintf(big, 16, "round-%03d", i);
        struct result set = {0}, get = {0};
        assert_int_equal(store_set(h->t, "k", 1, big, sizeof big, 0, got_done, &set), 0);
        assert_int_equal(store_get(h->t, "k", 1, got_value, &get), 0);
        run_until_called(h, &get);
        run_until_called(h, &set);
        assert_int_equal(set.status, STORE_OK);
        if (get.status != STORE_OK || memcmp(get.value, big, 16) != 0)
            stale++;
    }
    assert_int_equal(stale, 0);
    free_harness(h);
}

static void lmdb_notfound_and_del(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    missing_key_is_notfound_and_del_removes(h);
    free_harness(h);
}

static void lmdb_incr(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    incr_counts_from_zero_and_reads_as_decimal(h);
    free_harness(h);
}

static void lmdb_ttl_expiry(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    short_ttl_expires_values_and_counters(h);
    free_harness(h);
}

static void lmdb_full_map_is_store_error_and_store_keeps_working(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE);
    char val[FILL_VALUE_LEN];
    memset(val, 'x', sizeof val);
    enum store_status st = STORE_OK;
    int n = 0;
    for (; n < FILL_MAX_KEYS && st == STORE_OK; n++) {
        char key[32];
        snprintf(key, sizeof key, "fill:%d", n);
        st = do_set(h, key, val, sizeof val, 0);
    }
    assert_int_equal(st, STORE_ERROR);
    assert_true(n > 1);
    struct result r;
    assert_int_equal(do_get(h, "fill:0", 6, &r), STORE_OK);
    assert_int_equal(r.len, FILL_VALUE_LEN);
    assert_int_equal(do_del(h, "fill:0"), STORE_OK);
    free_harness(h);
}

static void lmdb_full_map_of_expired_records_makes_room(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE);
    char val[FILL_VALUE_LEN];
    memset(val, 'y', sizeof val);
    enum store_status st = STORE_OK;
    for (int n = 0; n < FILL_MAX_KEYS && st == STORE_OK; n++) {
        char key[32];
        snprintf(key, sizeof key, "old:%d", n);
        st = do_set(h, key, val, sizeof val, SHORT_TTL_MS);
    }
    assert_int_equal(st, STORE_ERROR);
    sleep_ms(PAST_SHORT_TTL_MS);
    assert_int_equal(do_set(h, "new", val, sizeof val, 0), STORE_OK);
    free_harness(h);
}

static void lmdb_purge_deletes_only_expired_records(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof key, "p:%d", i);
        assert_int_equal(do_set(h, key, "v", 1, SHORT_TTL_MS), STORE_OK);
    }
    assert_int_equal(do_set(h, "p:keep", "v", 1, 0), STORE_OK);
    sleep_ms(PAST_SHORT_TTL_MS);
    struct result r = {0};
    assert_int_equal(store_purge_expired(h->t, got_int, &r), 0);
    run_until_called(h, &r);
    assert_int_equal(r.status, STORE_OK);
    assert_int_equal(r.integer, 3);
    assert_int_equal(do_get(h, "p:keep", 6, &r), STORE_OK);
    free_harness(h);
}

static void lmdb_values_survive_reopening(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    assert_int_equal(do_set(h, "k:persist", "kept", 4, 0), STORE_OK);
    workpool_free(h->wp);
    store_thread_free(h->t);
    store_close(h->st);
    h->wp = workpool_new(1);
    char err[256];
    h->st = store_open(&h->conf, h->wp, err, sizeof err);
    assert_non_null(h->st);
    h->t = store_thread_new(h->st, h->base);
    struct result r;
    assert_int_equal(do_get(h, "k:persist", 9, &r), STORE_OK);
    assert_memory_equal(r.value, "kept", 4);
    free_harness(h);
}

static void lmdb_store_refuses_raw_redis(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    const char *argv[] = {"PING"};
    const size_t lens[] = {4};
    struct result r = {0};
    assert_int_equal(store_redis_argv(h->t, 1, argv, lens, got_reply, &r), -1);
    free_harness(h);
}

static void lmdb_open_fails_cleanly_on_unusable_path(void **state)
{
    struct store_conf conf = {.backend = STORE_LMDB, .path = "/dev/null/store",
                              .map_size = TINY_MAP_SIZE};
    char err[256] = "";
    assert_null(store_open(&conf, NULL, err, sizeof err));
    assert_non_null(strstr(err, "/dev/null/store"));
}

/* ---- sluice-check's modes ---- */

/* A second store on h's configuration, opened in mode, sharing h's loop. */
static struct harness *view_of(struct harness *h, enum store_mode mode)
{
    struct harness *v = calloc(1, sizeof *v);
    assert_non_null(v);
    v->conf = h->conf;
    v->base = h->base;
    v->wp = workpool_new(1);
    char err[256] = "";
    v->st = store_open_mode(&v->conf, mode, v->wp, err, sizeof err);
    if (!v->st)
        fprintf(stderr, "store_open_mode: %s\n", err);
    assert_non_null(v->st);
    v->t = store_thread_new(v->st, v->base);
    assert_non_null(v->t);
    return v;
}

static void free_view(struct harness *v)
{
    workpool_free(v->wp);
    store_thread_free(v->t);
    store_close(v->st);
    free(v);
}

static void read_only_view_answers_writes_without_doing_them(struct harness *h)
{
    int64_t n;
    struct result r;
    assert_int_equal(do_set(h, "k:ro", "live", 4, 0), STORE_OK);
    assert_int_equal(do_incr(h, "k:ro:n", 2, 0, &n), STORE_OK);
    struct harness *v = view_of(h, STORE_MODE_READ_ONLY);
    assert_int_equal(do_get(v, "k:ro", 4, &r), STORE_OK);
    assert_memory_equal(r.value, "live", 4);
    assert_int_equal(do_set(v, "k:ro", "changed", 7, 0), STORE_OK);
    assert_int_equal(do_del(v, "k:ro"), STORE_OK);
    assert_int_equal(do_incr(v, "k:ro:n", 5, 0, &n), STORE_OK);
    assert_int_equal(n, 7);
    assert_int_equal(do_incr(v, "k:ro:new", 1, 0, &n), STORE_OK);
    assert_int_equal(n, 1);
    free_view(v);
    assert_int_equal(do_get(h, "k:ro", 4, &r), STORE_OK);
    assert_memory_equal(r.value, "live", 4);
    assert_int_equal(do_get(h, "k:ro:n", 6, &r), STORE_OK);
    assert_memory_equal(r.value, "2", 1);
    assert_int_equal(do_get(h, "k:ro:new", 8, &r), STORE_NOTFOUND);
}

static void lmdb_read_only_view_answers_writes_without_doing_them(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    read_only_view_answers_writes_without_doing_them(h);
    free_harness(h);
}

static void lmdb_read_only_view_creates_no_directory(void **state)
{
    char path[512];
    snprintf(path, sizeof path, "%s/absent/store", tmp_root);
    struct store_conf conf = {.backend = STORE_LMDB, .path = path, .map_size = TINY_MAP_SIZE};
    char err[256] = "";
    assert_null(store_open_mode(&conf, STORE_MODE_READ_ONLY, NULL, err, sizeof err));
    snprintf(path, sizeof path, "%s/absent", tmp_root);
    assert_int_equal(access(path, F_OK), -1);
}

static int count_entries(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p && fscanf(p, "%d", &n) != 1)
        n = -1;
    if (p)
        pclose(p);
    return n;
}

static void lmdb_scratch_store_starts_empty_and_leaves_no_file(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    assert_int_equal(do_set(h, "k:live", "v", 1, 0), STORE_OK);
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s/scratch-tmp", tmp_root);
    assert_int_equal(mkdir(tmp, 0700), 0);
    setenv("TMPDIR", tmp, 1);
    h->conf.backend = STORE_REDIS; /* scratch is LMDB whatever is configured */
    struct harness *v = view_of(h, STORE_MODE_SCRATCH);
    unsetenv("TMPDIR");
    assert_int_equal(count_entries(tmp), 0);
    struct result r;
    assert_int_equal(do_get(v, "k:live", 6, &r), STORE_NOTFOUND);
    assert_int_equal(do_set(v, "k:scratch", "s", 1, 0), STORE_OK);
    assert_int_equal(do_get(v, "k:scratch", 9, &r), STORE_OK);
    free_view(v);
    assert_int_equal(count_entries(tmp), 0);
    assert_int_equal(do_get(h, "k:scratch", 9, &r), STORE_NOTFOUND);
    free_harness(h);
}

/* ---- the operator's view (store_admin) ---- */

static int admin_collect(void *arg, const void *key, size_t klen, const void *val, size_t vlen,
                         int64_t ttl_ms)
{
    struct result *r = arg;
    r->calls++;
    r->integer = ttl_ms;
    r->len = vlen < sizeof r->value ? vlen : sizeof r->value;
    memcpy(r->value, val, r->len);
    return 0;
}

static void admin_lists_counts_gets_and_deletes(struct harness *h)
{
    int64_t n;
    assert_int_equal(do_set(h, "adm:a", "1", 1, 60000), STORE_OK);
    assert_int_equal(do_set(h, "adm:b", "two", 3, 0), STORE_OK);
    assert_int_equal(do_set(h, "adm:gone", "x", 1, SHORT_TTL_MS), STORE_OK);
    assert_int_equal(do_incr(h, "other:n", 1, 0, &n), STORE_OK);
    sleep_ms(PAST_SHORT_TTL_MS);
    char err[256] = "";
    struct store_admin *a = store_admin_open(&h->conf, true, err, sizeof err);
    assert_non_null(a);
    struct result r = {0};
    assert_int_equal(store_admin_scan(a, "adm:", 4, admin_collect, &r, err, sizeof err), 2);
    assert_int_equal(r.calls, 2);
    assert_int_equal(store_admin_scan(a, "", 0, NULL, NULL, err, sizeof err), 3);
    r = (struct result){0};
    assert_int_equal(store_admin_get(a, "adm:a", 5, admin_collect, &r, err, sizeof err), 1);
    assert_memory_equal(r.value, "1", 1);
    assert_true(r.integer > 50000 && r.integer <= 60000);
    r = (struct result){0};
    assert_int_equal(store_admin_get(a, "adm:b", 5, admin_collect, &r, err, sizeof err), 1);
    assert_int_equal(r.integer, -1);
    assert_int_equal(store_admin_get(a, "adm:gone", 8, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(store_admin_del(a, "adm:a", 5, err, sizeof err), 1);
    assert_int_equal(store_admin_del(a, "adm:a", 5, err, sizeof err), 0);
    store_admin_close(a);
    assert_int_equal(do_get(h, "adm:a", 5, &r), STORE_NOTFOUND);
}

static void lmdb_admin_lists_counts_gets_and_deletes(void **state)
{
    struct harness *h = new_harness(STORE_LMDB, TINY_MAP_SIZE * 16);
    admin_lists_counts_gets_and_deletes(h);
    free_harness(h);
}

/* ---- Redis ---- */

static int redis_setup(void **state)
{
    if (redis_pid > 0)
        return 0;
    redis_port = free_tcp_port();
    return redis_port > 0 ? start_redis(redis_port) : -1;
}

static void redis_set_get_with_nul_bytes(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    value_with_nul_bytes_reads_back_exactly(h);
    free_harness(h);
}

static void redis_notfound_and_del(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    missing_key_is_notfound_and_del_removes(h);
    free_harness(h);
}

static void redis_incr(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    incr_counts_from_zero_and_reads_as_decimal(h);
    free_harness(h);
}

static void redis_ttl_expiry(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    short_ttl_expires_values_and_counters(h);
    free_harness(h);
}

static void redis_raw_commands_hand_back_hiredis_replies(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    struct result r;
    const char *ping[] = {"PING"};
    do_raw(h, 1, ping, &r);
    assert_int_equal(r.reply_type, REDIS_REPLY_STATUS);
    assert_memory_equal(r.value, "PONG", 4);
    const char *del[] = {"DEL", "raw:list"};
    do_raw(h, 2, del, &r);
    const char *push[] = {"RPUSH", "raw:list", "a", "b", "c"};
    do_raw(h, 5, push, &r);
    assert_int_equal(r.reply_type, REDIS_REPLY_INTEGER);
    assert_int_equal(r.integer, 3);
    const char *range[] = {"LRANGE", "raw:list", "0", "-1"};
    do_raw(h, 4, range, &r);
    assert_int_equal(r.reply_type, REDIS_REPLY_ARRAY);
    assert_int_equal(r.nelements, 3);
    const char *bogus[] = {"NOSUCHCOMMAND"};
    do_raw(h, 1, bogus, &r);
    assert_int_equal(r.reply_type, REDIS_REPLY_ERROR);
    free_harness(h);
}

static void redis_select_uses_the_configured_database(void **state)
{
    struct harness *h = calloc(1, sizeof *h);
    assert_non_null(h);
    h->conf.redis_database = 3;
    assert_int_equal(harness_open(h, STORE_REDIS, 0), 0);
    struct result r;
    const char *info[] = {"CLIENT", "INFO"};
    do_raw(h, 2, info, &r);
    assert_int_equal(r.reply_type, REDIS_REPLY_STRING);
    r.value[r.len < sizeof r.value ? r.len : sizeof r.value - 1] = '\0';
    assert_non_null(strstr(r.value, " db=3 "));
    free_harness(h);
}

static void redis_stalled_server_times_out_and_late_reply_is_ignored(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    assert_int_equal(do_set(h, "k:stall", "v", 1, 0), STORE_OK);
    kill(redis_pid, SIGSTOP);
    struct result r;
    int64_t start = now_ms();
    assert_int_equal(do_get(h, "k:stall", 7, &r), STORE_ERROR);
    int64_t took = now_ms() - start;
    assert_true(took >= REDIS_TIMEOUT_MS - 20);
    assert_true(took < REDIS_TIMEOUT_MS * 5);
    kill(redis_pid, SIGCONT);
    run_for(h, REDIS_TIMEOUT_MS); /* the late reply arrives now */
    assert_int_equal(r.calls, 1);
    assert_int_equal(do_get(h, "k:stall", 7, &r), STORE_OK);
    free_harness(h);
}

static void redis_freeing_the_thread_fails_outstanding_commands(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    assert_int_equal(do_set(h, "k:free", "v", 1, 0), STORE_OK);
    kill(redis_pid, SIGSTOP);
    struct result r = {0};
    assert_int_equal(store_get(h->t, "k:free", 6, got_value, &r), 0);
    run_for(h, 20);
    assert_int_equal(r.calls, 0);
    store_thread_free(h->t);
    h->t = NULL;
    kill(redis_pid, SIGCONT);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, STORE_ERROR);
    free_harness(h);
}

static void redis_reconnects_after_server_restart(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    assert_int_equal(do_set(h, "k:restart", "v", 1, 0), STORE_OK);
    stop_redis();
    struct result r;
    assert_int_equal(do_get(h, "k:restart", 9, &r), STORE_ERROR);
    assert_int_equal(start_redis(redis_port), 0);
    enum store_status st = STORE_ERROR;
    for (int i = 0; i < RECONNECT_MAX_TRIES && st == STORE_ERROR; i++) {
        st = do_set(h, "k:restart", "w", 1, 0);
        if (st == STORE_ERROR)
            run_for(h, 100);
    }
    assert_int_equal(st, STORE_OK);
    assert_int_equal(do_get(h, "k:restart", 9, &r), STORE_OK);
    assert_memory_equal(r.value, "w", 1);
    free_harness(h);
}

static void redis_unreachable_server_is_store_error(void **state)
{
    int saved = redis_port;
    redis_port = free_tcp_port();
    struct harness *h = new_harness(STORE_REDIS, 0);
    redis_port = saved;
    struct result r;
    assert_int_equal(do_get(h, "k:any", 5, &r), STORE_ERROR);
    int64_t v;
    assert_int_equal(do_incr(h, "k:any", 1, 0, &v), STORE_ERROR);
    free_harness(h);
}

static void redis_admin_lists_counts_gets_and_deletes(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    struct result r;
    do_raw(h, 1, (const char *const[]){"FLUSHDB"}, &r);
    admin_lists_counts_gets_and_deletes(h);
    free_harness(h);
}

static void redis_read_only_view_answers_writes_without_doing_them(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    read_only_view_answers_writes_without_doing_them(h);
    free_harness(h);
}

static void redis_read_only_view_refuses_raw_commands_that_write(void **state)
{
    struct harness *h = new_harness(STORE_REDIS, 0);
    struct harness *v = view_of(h, STORE_MODE_READ_ONLY);
    const char *set[] = {"SET", "k:raw", "x"};
    const size_t set_lens[] = {3, 5, 1};
    struct result r = {0};
    assert_int_equal(store_redis_argv(v->t, 3, set, set_lens, got_reply, &r), -1);
    do_raw(v, 2, (const char *const[]){"get", "k:raw"}, &r);
    assert_int_equal(r.calls, 1);
    free_view(v);
    free_harness(h);
}

static int teardown_all(void **state)
{
    stop_redis();
    nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

int main(void)
{
    evthread_use_pthreads();
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lmdb_set_get_with_nul_bytes),
        cmocka_unit_test(lmdb_get_right_after_a_set_sees_the_set),
        cmocka_unit_test(lmdb_notfound_and_del),
        cmocka_unit_test(lmdb_incr),
        cmocka_unit_test(lmdb_ttl_expiry),
        cmocka_unit_test(lmdb_full_map_is_store_error_and_store_keeps_working),
        cmocka_unit_test(lmdb_full_map_of_expired_records_makes_room),
        cmocka_unit_test(lmdb_purge_deletes_only_expired_records),
        cmocka_unit_test(lmdb_values_survive_reopening),
        cmocka_unit_test(lmdb_store_refuses_raw_redis),
        cmocka_unit_test(lmdb_open_fails_cleanly_on_unusable_path),
        cmocka_unit_test(lmdb_read_only_view_answers_writes_without_doing_them),
        cmocka_unit_test(lmdb_read_only_view_creates_no_directory),
        cmocka_unit_test(lmdb_scratch_store_starts_empty_and_leaves_no_file),
        cmocka_unit_test(lmdb_admin_lists_counts_gets_and_deletes),
        cmocka_unit_test_setup(redis_set_get_with_nul_bytes, redis_setup),
        cmocka_unit_test_setup(redis_notfound_and_del, redis_setup),
        cmocka_unit_test_setup(redis_incr, redis_setup),
        cmocka_unit_test_setup(redis_ttl_expiry, redis_setup),
        cmocka_unit_test_setup(redis_raw_commands_hand_back_hiredis_replies, redis_setup),
        cmocka_unit_test_setup(redis_select_uses_the_configured_database, redis_setup),
        cmocka_unit_test_setup(redis_stalled_server_times_out_and_late_reply_is_ignored,
                               redis_setup),
        cmocka_unit_test_setup(redis_freeing_the_thread_fails_outstanding_commands,
                               redis_setup),
        cmocka_unit_test_setup(redis_reconnects_after_server_restart, redis_setup),
        cmocka_unit_test_setup(redis_unreachable_server_is_store_error, redis_setup),
        cmocka_unit_test_setup(redis_admin_lists_counts_gets_and_deletes, redis_setup),
        cmocka_unit_test_setup(redis_read_only_view_answers_writes_without_doing_them,
                               redis_setup),
        cmocka_unit_test_setup(redis_read_only_view_refuses_raw_commands_that_write,
                               redis_setup),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_all);
}
