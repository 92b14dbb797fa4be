/* The host's metrics, registered once so every update on a loop thread is a
 * plain atomic add on a cached pointer. */
#include "host_metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "metrics.h"

/* Past this many pools a pool's connections are not counted (a fixed table
 * keeps the lookup lock-free; no configuration comes close). */
#define HOST_METRICS_MAX_POOLS 256

enum reply_class { CLASS_2XX, CLASS_4XX, CLASS_5XX, NCLASSES };

static const char *const class_labels[NCLASSES] = {
    [CLASS_2XX] = "result=\"2xx\"",
    [CLASS_4XX] = "result=\"4xx\"",
    [CLASS_5XX] = "result=\"5xx\"",
};

static const double duration_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                          2.5,  5,     10,   30,  60,   120, 300};

static struct {
    struct metric_counter *sessions, *refused, *relay_denied, *bytes;
    struct metric_counter *dns_hit, *dns_miss;
    struct metric_gauge *open;
    struct metric_counter *transactions[NCLASSES], *rcpts[NCLASSES];
    struct metric_histogram *duration;
} hm;

struct pool_series {
    char *name;
    struct metric_counter *ok, *failed, *reused;
};

/* Append-only while running: an entry is complete before npools covers it,
 * so readers scan without a lock. */
static struct pool_series pool_series[HOST_METRICS_MAX_POOLS];
static _Atomic size_t npools;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static int reply_class(int code)
{
    switch (code / 100) {
    case 2:
        return CLASS_2XX;
    case 4:
        return CLASS_4XX;
    case 5:
        return CLASS_5XX;
    default:
        return -1;
    }
}

static const struct pool_series *pool_find(const char *name)
{
    size_t n = atomic_load_explicit(&npools, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (strcmp(pool_series[i].name, name) == 0)
            return &pool_series[i];
    return NULL;
}

static struct metric_counter *pool_counter(const char *escaped, const char *result)
{
    char labels[600];
    int n = snprintf(labels, sizeof labels, "pool=\"%s\",result=\"%s\"", escaped, result);
    if (n < 0 || (size_t)n >= sizeof labels)
        return NULL;
    return metrics_counter("sluice_backend_connections_total",
                           "Backend sessions started, by pool and outcome: ok and failed are "
                           "connection attempts, reused a kept connection taken instead.",
                           labels);
}

/* Called with pool_lock held. */
static const struct pool_series *pool_add_locked(const char *name)
{
    const struct pool_series *found = pool_find(name);
    size_t n = atomic_load_explicit(&npools, memory_order_relaxed);
    if (found || n == HOST_METRICS_MAX_POOLS)
        return found;
    char escaped[512];
    if (metrics_escape_label_value(name, escaped, sizeof escaped) >= sizeof escaped)
        return NULL;
    struct pool_series *ps = &pool_series[n];
    ps->name = strdup(name);
    ps->ok = pool_counter(escaped, "ok");
    ps->failed = pool_counter(escaped, "failed");
    ps->reused = pool_counter(escaped, "reused");
    if (ps->name == NULL || ps->ok == NULL || ps->failed == NULL || ps->reused == NULL) {
        free(ps->name);
        memset(ps, 0, sizeof *ps);
        return NULL;
    }
    atomic_store_explicit(&npools, n + 1, memory_order_release);
    return ps;
}

static const struct pool_series *pool_add(const char *name)
{
    pthread_mutex_lock(&pool_lock);
    const struct pool_series *ps = pool_add_locked(name);
    pthread_mutex_unlock(&pool_lock);
    return ps;
}

static void register_by_class(struct metric_counter **out, const char *name, const char *help)
{
    for (int c = 0; c < NCLASSES; c++)
        out[c] = metrics_counter(name, help, class_labels[c]);
}

static void register_globals(void)
{
    hm.sessions = metrics_counter("sluice_sessions_total", "Client connections accepted.", NULL);
    hm.open = metrics_gauge("sluice_sessions_open", "Client sessions open now.", NULL);
    hm.refused = metrics_counter("sluice_sessions_refused_total",
                                 "Client connections refused by a connection limit "
                                 "or for want of descriptors.", NULL);
    register_by_class(hm.transactions, "sluice_transactions_total",
                      "Transactions ended, by class of the final reply to the client.");
    register_by_class(hm.rcpts, "sluice_recipients_total",
                      "RCPT TO commands answered, by class of the reply to the client.");
    hm.relay_denied = metrics_counter("sluice_relay_denied_total",
                                      "Recipients refused because relaying to them is denied.",
                                      NULL);
    hm.bytes = metrics_counter("sluice_message_bytes_total",
                               "Bytes of messages a backend accepted (2xx at end of data).",
                               NULL);
    hm.dns_hit = metrics_counter("sluice_dns_cache_lookups_total",
                                 "DNS questions looked up in the answer cache, by result.",
                                 "result=\"hit\"");
    hm.dns_miss = metrics_counter("sluice_dns_cache_lookups_total",
                                  "DNS questions looked up in the answer cache, by result.",
                                  "result=\"miss\"");
    hm.duration = metrics_histogram(
        "sluice_transaction_duration_seconds",
        "Time from MAIL FROM to the final reply to the message.", NULL, duration_bounds,
        sizeof duration_bounds / sizeof duration_bounds[0]);
}

static bool globals_complete(void)
{
    for (int c = 0; c < NCLASSES; c++)
        if (hm.transactions[c] == NULL || hm.rcpts[c] == NULL)
            return false;
    return hm.sessions && hm.open && hm.refused && hm.relay_denied && hm.bytes && hm.duration &&
           hm.dns_hit && hm.dns_miss;
}

int host_metrics_init(const struct sluice_config *cfg)
{
    if (!globals_complete())
        register_globals();
    int rc = globals_complete() ? 0 : -1;
    for (size_t i = 0; cfg && i < cfg->npools; i++)
        if (pool_add(cfg->pools[i].name) == NULL)
            rc = -1;
    return rc;
}

void host_metrics_free(void)
{
    pthread_mutex_lock(&pool_lock);
    size_t n = atomic_exchange(&npools, 0);
    for (size_t i = 0; i < n; i++) {
        free(pool_series[i].name);
        memset(&pool_series[i], 0, sizeof pool_series[i]);
    }
    pthread_mutex_unlock(&pool_lock);
    memset(&hm, 0, sizeof hm);
}

void host_metrics_session_opened(void)
{
    metrics_counter_add(hm.sessions, 1);
    metrics_gauge_add(hm.open, 1);
}

void host_metrics_session_closed(void)
{
    metrics_gauge_add(hm.open, -1);
}

void host_metrics_session_refused(void)
{
    metrics_counter_add(hm.refused, 1);
}

void host_metrics_transaction(int code, uint64_t bytes, double seconds)
{
    int c = reply_class(code);
    if (c < 0)
        return;
    metrics_counter_add(hm.transactions[c], 1);
    if (c == CLASS_2XX)
        metrics_counter_add(hm.bytes, bytes);
    metrics_histogram_observe(hm.duration, seconds);
}

void host_metrics_rcpt(int code)
{
    int c = reply_class(code);
    if (c >= 0)
        metrics_counter_add(hm.rcpts[c], 1);
}

void host_metrics_relay_denied(void)
{
    metrics_counter_add(hm.relay_denied, 1);
}

/* The pool's series, registered at first use if init did not know it. */
static const struct pool_series *pool_series_of(const char *pool)
{
    if (pool == NULL || hm.sessions == NULL)
        return NULL; /* not initialised: count nothing, as every other update */
    const struct pool_series *ps = pool_find(pool);
    return ps ? ps : pool_add(pool); /* rare: registers once */
}

void host_metrics_backend_connect(const char *pool, bool ok)
{
    const struct pool_series *ps = pool_series_of(pool);
    if (ps)
        metrics_counter_add(ok ? ps->ok : ps->failed, 1);
}

void host_metrics_backend_reused(const char *pool)
{
    const struct pool_series *ps = pool_series_of(pool);
    if (ps)
        metrics_counter_add(ps->reused, 1);
}

void host_metrics_dns_cache(bool hit)
{
    metrics_counter_add(hit ? hm.dns_hit : hm.dns_miss, 1);
}
