/* Test plugin: entry-level timers and DNS (ABI 1.1). thread_init arms a
 * timer of `delay` that re-arms itself from its callback until it fired
 * `repeat` times, and queries `dns_name` (A) when set; the connect hook arms
 * a timer of 0 ms. Every callback and thread_fini append a line to the file
 * `record`, so a test sees what ran, and in which order. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>

#include "test_plugin_util.h"

struct entry_timer {
    sluice_entry *entry;
    int64_t delay_ms;
    int64_t repeat;
    char *record;
    char *dns_name;
};

struct entry_timer_thread {
    const struct entry_timer *et;
    int fired;
};

static void et_record(const struct entry_timer *et, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void et_record(const struct entry_timer *et, const char *fmt, ...)
{
    FILE *f = fopen(et->record, "a");
    if (f == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

static void et_fini(sluice_entry *e, void *state)
{
    struct entry_timer *et = state;
    (void)e;
    if (et != NULL) {
        free(et->record);
        free(et->dns_name);
        free(et);
    }
}

static int et_read(sluice_entry *e, struct entry_timer *et, char *err, size_t errlen)
{
    static const char *const known[] = {"delay", "repeat", "record", "dns_name", NULL};
    const char *record = NULL, *dns_name = NULL;
    et->repeat = 1;
    if (sluice_settings_check(e, "", known, err, errlen) < 0
        || tp_int(e, "repeat", &et->repeat, err, errlen) < 0
        || tp_string(e, "record", &record, err, errlen) < 0
        || tp_string(e, "dns_name", &dns_name, err, errlen) < 0) {
        return -1;
    }
    if (sluice_setting_duration(e, "delay", &et->delay_ms) < 0 || et->delay_ms < 0) {
        snprintf(err, errlen, "bad 'delay'");
        return -1;
    }
    if (record == NULL || (et->record = strdup(record)) == NULL) {
        snprintf(err, errlen, "'record' is required");
        return -1;
    }
    if (dns_name != NULL && (et->dns_name = strdup(dns_name)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int et_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    struct entry_timer *et = calloc(1, sizeof(*et));
    if (et == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    et->entry = e;
    if (et_read(e, et, err, errlen) < 0) {
        et_fini(e, et);
        return -1;
    }
    *state = et;
    return 0;
}

static void et_fired(sluice_entry *e, void *thread_state, void *arg)
{
    struct entry_timer_thread *t = thread_state;
    /* arg is the thread state too: the host must hand back the same one. */
    t->fired++;
    et_record(t->et, "fired %d%s\n", t->fired, arg == t ? "" : " (wrong thread state)");
    if (t->fired < t->et->repeat && sluice_entry_timer(e, t->et->delay_ms, et_fired, t) < 0) {
        et_record(t->et, "re-arm refused\n");
    }
}

static void et_dns_answer(sluice_entry *e, void *thread_state, void *arg,
                          enum sluice_dns_status st, const char *const *rr, size_t nrr,
                          uint32_t ttl)
{
    struct entry_timer_thread *t = thread_state;
    (void)e, (void)arg, (void)rr, (void)ttl;
    et_record(t->et, "dns %d %zu\n", (int)st, nrr);
}

static int et_thread_init(sluice_entry *e, void *state, void **thread_state)
{
    struct entry_timer *et = state;
    struct entry_timer_thread *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return -1;
    }
    t->et = et;
    *thread_state = t;
    if (sluice_entry_timer(e, et->delay_ms, et_fired, t) < 0) {
        et_record(et, "timer refused\n");
    }
    if (et->dns_name != NULL
        && sluice_entry_dns_query(e, et->dns_name, SLUICE_DNS_A, 0, et_dns_answer, t) < 0) {
        et_record(et, "dns refused\n");
    }
    return 0;
}

static void et_thread_fini(sluice_entry *e, void *state, void *thread_state)
{
    struct entry_timer_thread *t = thread_state;
    (void)state;
    /* Outstanding operations were cancelled before this: none may start now. */
    bool refused = sluice_entry_timer(e, 0, et_fired, t) < 0;
    et_record(t->et, "thread_fini fired=%d%s\n", t->fired, refused ? "" : " (timer accepted)");
    free(t);
}

static void et_from_hook(sluice_entry *e, void *thread_state, void *arg)
{
    struct entry_timer_thread *t = thread_state;
    (void)e, (void)arg;
    et_record(t->et, "hook timer\n");
}

static enum sluice_verdict et_connect(sluice_session *s, void *state, void *thread_state)
{
    struct entry_timer *et = state;
    (void)s;
    if (sluice_entry_timer(et->entry, 0, et_from_hook, thread_state) < 0) {
        return SLUICE_TEMPFAIL;
    }
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "entry_timer",
    .version = "1",
    .init = et_init,
    .fini = et_fini,
    .thread_init = et_thread_init,
    .thread_fini = et_thread_fini,
    .hooks = {[SLUICE_HOOK_CONNECT] = et_connect},
};
