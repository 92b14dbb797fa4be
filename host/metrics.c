/* The metric registry and its Prometheus text rendering. Updates are single
 * atomic operations and never take the lock; the lock guards only the list
 * of families and series (registration, rendering, freeing). */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Registration and rendering refuse absurd inputs rather than growing the
 * exposition without bound. */
#define METRICS_MAX_NAME 200
#define METRICS_MAX_LABELS 1024
#define METRICS_MAX_BOUNDS 64

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

struct metric_counter {
    _Atomic uint64_t value;
};

struct metric_gauge {
    _Atomic int64_t value;
};

struct metric_histogram {
    double *bounds;
    size_t nbounds;
    _Atomic uint64_t *buckets; /* per bucket, not cumulative; [nbounds] is +Inf */
    _Atomic uint64_t sum_bits; /* the double sum, as its bit pattern (CAS loop) */
};

struct metric_series {
    struct metric_series *next;
    char *labels; /* "" when unlabelled */
    union {
        struct metric_counter counter;
        struct metric_gauge gauge;
        struct metric_histogram histogram;
    } m;
};

struct metric_family {
    struct metric_family *next;
    char *name;
    char *help;
    enum metric_type type;
    struct metric_series *series, **series_tail;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metric_family *families, **families_tail = &families;

/* ---- validation ---- */

static bool name_char_ok(char c, bool first, bool colon_ok)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
        return true;
    if (colon_ok && c == ':')
        return true;
    return !first && c >= '0' && c <= '9';
}

static bool metric_name_ok(const char *name)
{
    if (name == NULL || name[0] == '\0' || strlen(name) > METRICS_MAX_NAME)
        return false;
    for (size_t i = 0; name[i]; i++)
        if (!name_char_ok(name[i], i == 0, true))
            return false;
    return true;
}

/* One `name="value"` of a label set; returns the position after it or NULL.
 * Values must already be escaped (\\, \" and \n only), so rendering can copy
 * the set verbatim. */
static const char *label_pair_end(const char *p, bool histogram)
{
    const char *name = p;
    if (!name_char_ok(*p, true, false))
        return NULL;
    while (name_char_ok(*p, false, false))
        p++;
    size_t nlen = (size_t)(p - name);
    if ((nlen >= 2 && name[0] == '_' && name[1] == '_') ||
        (histogram && nlen == 2 && memcmp(name, "le", 2) == 0))
        return NULL; /* reserved: __* everywhere, le in histograms */
    if (p[0] != '=' || p[1] != '"')
        return NULL;
    for (p += 2; *p != '"'; p++) {
        if (*p == '\0' || *p == '\n')
            return NULL;
        if (*p == '\\') {
            p++;
            if (*p != '\\' && *p != '"' && *p != 'n')
                return NULL;
        }
    }
    return p + 1;
}

static bool labels_ok(const char *labels, bool histogram)
{
    if (strlen(labels) > METRICS_MAX_LABELS)
        return false;
    const char *p = labels;
    while (*p) {
        p = label_pair_end(p, histogram);
        if (p == NULL)
            return false;
        if (*p == ',')
            p++;
        else if (*p != '\0')
            return false;
    }
    return true;
}

static bool bounds_ok(const double *bounds, size_t nbounds)
{
    if (nbounds > METRICS_MAX_BOUNDS || (nbounds > 0 && bounds == NULL))
        return false;
    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]))
            return false;
        if (i > 0 && !(bounds[i] > bounds[i - 1]))
            return false;
    }
    return true;
}

size_t metrics_escape_label_value(const char *in, char *out, size_t outlen)
{
    size_t n = 0, written = 0; /* once one does not fit, nothing after it is written */
    for (; in && *in; in++) {
        const char *esc = *in == '\\' ? "\\\\" : *in == '"' ? "\\\"" : *in == '\n' ? "\\n" : NULL;
        size_t len = esc ? 2 : 1;
        if (out && written == n && n + len < outlen) {
            memcpy(out + n, esc ? esc : in, len);
            written += len;
        }
        n += len;
    }
    if (out && outlen > 0)
        out[written] = '\0';
    return n;
}

/* ---- registry ---- */

static struct metric_family *family_find(const char *name)
{
    for (struct metric_family *f = families; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static struct metric_family *family_get(const char *name, const char *help, enum metric_type type)
{
    struct metric_family *f = family_find(name);
    if (f)
        return f->type == type ? f : NULL;
    f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (f->name == NULL || f->help == NULL) {
        free(f->name);
        free(f->help);
        free(f);
        return NULL;
    }
    f->type = type;
    f->series_tail = &f->series;
    *families_tail = f;
    families_tail = &f->next;
    return f;
}

static struct metric_series *series_find(struct metric_family *f, const char *labels)
{
    for (struct metric_series *s = f->series; s; s = s->next)
        if (strcmp(s->labels, labels) == 0)
            return s;
    return NULL;
}

static struct metric_series *series_new(const char *labels)
{
    struct metric_series *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->labels = strdup(labels);
    if (s->labels == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

static void series_append(struct metric_family *f, struct metric_series *s)
{
    *f->series_tail = s;
    f->series_tail = &s->next;
}

static int histogram_init(struct metric_histogram *h, const double *bounds, size_t nbounds)
{
    h->bounds = malloc((nbounds ? nbounds : 1) * sizeof *h->bounds);
    h->buckets = calloc(nbounds + 1, sizeof *h->buckets);
    if (h->bounds == NULL || h->buckets == NULL) {
        free(h->bounds);
        free(h->buckets);
        return -1;
    }
    if (nbounds)
        memcpy(h->bounds, bounds, nbounds * sizeof *bounds);
    h->nbounds = nbounds;
    return 0;
}

static bool histogram_same_bounds(const struct metric_histogram *h, const double *bounds,
                                  size_t nbounds)
{
    return h->nbounds == nbounds &&
           (nbounds == 0 || memcmp(h->bounds, bounds, nbounds * sizeof *bounds) == 0);
}

/* Finds or creates the series; *created tells the caller to initialise a
 * histogram's buckets. Called with the lock held. */
static struct metric_series *series_get(const char *name, const char *help, const char *labels,
                                        enum metric_type type, bool *created)
{
    *created = false;
    if (labels == NULL)
        labels = "";
    if (!metric_name_ok(name) || !labels_ok(labels, type == METRIC_HISTOGRAM))
        return NULL;
    struct metric_family *f = family_get(name, help, type);
    if (f == NULL)
        return NULL;
    struct metric_series *s = series_find(f, labels);
    if (s)
        return s;
    s = series_new(labels);
    if (s)
        *created = true;
    return s;
}

struct metric_counter *metrics_counter(const char *name, const char *help, const char *labels)
{
    bool created;
    pthread_mutex_lock(&registry_lock);
    struct metric_series *s = series_get(name, help, labels, METRIC_COUNTER, &created);
    if (s && created)
        series_append(family_find(name), s);
    pthread_mutex_unlock(&registry_lock);
    return s ? &s->m.counter : NULL;
}

struct metric_gauge *metrics_gauge(const char *name, const char *help, const char *labels)
{
    bool created;
    pthread_mutex_lock(&registry_lock);
    struct metric_series *s = series_get(name, help, labels, METRIC_GAUGE, &created);
    if (s && created)
        series_append(family_find(name), s);
    pthread_mutex_unlock(&registry_lock);
    return s ? &s->m.gauge : NULL;
}

struct metric_histogram *metrics_histogram(const char *name, const char *help,
                                           const char *labels, const double *bounds,
                                           size_t nbounds)
{
    if (!bounds_ok(bounds, nbounds))
        return NULL;
    bool created;
    pthread_mutex_lock(&registry_lock);
    struct metric_series *s = series_get(name, help, labels, METRIC_HISTOGRAM, &created);
    if (s && created) {
        if (histogram_init(&s->m.histogram, bounds, nbounds) == 0) {
            series_append(family_find(name), s);
        } else {
            free(s->labels);
            free(s);
            s = NULL;
        }
    } else if (s && !histogram_same_bounds(&s->m.histogram, bounds, nbounds)) {
        s = NULL; /* one series cannot have two bucket layouts */
    }
    pthread_mutex_unlock(&registry_lock);
    return s ? &s->m.histogram : NULL;
}

/* ---- updates (any thread, lock-free) ---- */

void metrics_counter_add(struct metric_counter *c, uint64_t n)
{
    if (c)
        atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

void metrics_gauge_add(struct metric_gauge *g, int64_t delta)
{
    if (g)
        atomic_fetch_add_explicit(&g->value, delta, memory_order_relaxed);
}

void metrics_gauge_set(struct metric_gauge *g, int64_t value)
{
    if (g)
        atomic_store_explicit(&g->value, value, memory_order_relaxed);
}

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static size_t histogram_bucket(const struct metric_histogram *h, double v)
{
    size_t lo = 0, hi = h->nbounds; /* first bound >= v, or nbounds for +Inf */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

void metrics_histogram_observe(struct metric_histogram *h, double v)
{
    if (h == NULL || isnan(v))
        return; /* a NaN would poison the sum for the life of the process */
    atomic_fetch_add_explicit(&h->buckets[histogram_bucket(h, v)], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&h->sum_bits, &old,
                                                  double_bits(bits_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ---- rendering ---- */

/* Shortest text that reads back as the same double, positional unless the
 * exponent is far out (the way Prometheus' own clients print `le`), with the
 * exposition format's spellings of the non-finite values. */
static void format_double(char *buf, size_t len, double d)
{
    if (isnan(d) || isinf(d)) {
        snprintf(buf, len, "%s", isnan(d) ? "NaN" : d > 0 ? "+Inf" : "-Inf");
        return;
    }
    int digits = 1;
    for (; digits < 17; digits++) {
        snprintf(buf, len, "%.*e", digits - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    snprintf(buf, len, "%.*e", digits - 1, d);
    const char *e = strchr(buf, 'e');
    int exp = e ? atoi(e + 1) : 0;
    if (exp < -4 || exp >= 6)
        return;
    int decimals = digits - 1 - exp;
    snprintf(buf, len, "%.*f", decimals > 0 ? decimals : 0, d);
}

static void render_help(FILE *out, const struct metric_family *f)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    fprintf(out, "# HELP %s ", f->name);
    for (const char *p = f->help; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", out);
        else if (*p == '\n')
            fputs("\\n", out);
        else
            fputc(*p, out);
    }
    fprintf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
}

static void render_histogram(FILE *out, const char *name, const struct metric_series *s)
{
    const struct metric_histogram *h = &s->m.histogram;
    const char *sep = s->labels[0] ? "," : "";
    char num[64];
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        cumulative += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i < h->nbounds)
            format_double(num, sizeof num, h->bounds[i]);
        else
            snprintf(num, sizeof num, "+Inf");
        fprintf(out, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, s->labels, sep, num,
                (unsigned long long)cumulative);
    }
    format_double(num, sizeof num,
                  bits_double(atomic_load_explicit(&h->sum_bits, memory_order_relaxed)));
    const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
    fprintf(out, "%s_sum%s%s%s %s\n", name, open, s->labels, close, num);
    /* the count is the +Inf bucket, so the two always agree in a scrape */
    fprintf(out, "%s_count%s%s%s %llu\n", name, open, s->labels, close,
            (unsigned long long)cumulative);
}

static void render_series(FILE *out, const struct metric_family *f, const struct metric_series *s)
{
    const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
    switch (f->type) {
    case METRIC_COUNTER:
        fprintf(out, "%s%s%s%s %llu\n", f->name, open, s->labels, close,
                (unsigned long long)atomic_load_explicit(&s->m.counter.value,
                                                         memory_order_relaxed));
        break;
    case METRIC_GAUGE:
        fprintf(out, "%s%s%s%s %lld\n", f->name, open, s->labels, close,
                (long long)atomic_load_explicit(&s->m.gauge.value, memory_order_relaxed));
        break;
    case METRIC_HISTOGRAM:
        render_histogram(out, f->name, s);
        break;
    }
}

char *metrics_render(size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&buf, &size);
    if (out == NULL)
        return NULL;
    pthread_mutex_lock(&registry_lock);
    for (const struct metric_family *f = families; f; f = f->next) {
        render_help(out, f);
        for (const struct metric_series *s = f->series; s; s = s->next)
            render_series(out, f, s);
    }
    pthread_mutex_unlock(&registry_lock);
    bool failed = ferror(out) != 0;
    if (fclose(out) != 0 || failed) {
        free(buf);
        return NULL;
    }
    if (len)
        *len = size;
    return buf;
}

void metrics_free_all(void)
{
    pthread_mutex_lock(&registry_lock);
    struct metric_family *f = families;
    families = NULL;
    families_tail = &families;
    pthread_mutex_unlock(&registry_lock);
    while (f) {
        struct metric_family *fnext = f->next;
        struct metric_series *s = f->series;
        while (s) {
            struct metric_series *snext = s->next;
            if (f->type == METRIC_HISTOGRAM) {
                free(s->m.histogram.bounds);
                free((void *)s->m.histogram.buckets);
            }
            free(s->labels);
            free(s);
            s = snext;
        }
        free(f->name);
        free(f->help);
        free(f);
        f = fnext;
    }
}
