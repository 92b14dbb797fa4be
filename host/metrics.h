/* Metrics: counters and histograms (atomic, any thread), exported in the
 * Prometheus text format on http://<metrics_listen>/metrics by a small
 * evhttp server on its own thread in the worker. */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct metric_counter;
struct metric_histogram;

/* Registration (at worker start or entry init; not on the hot path). labels
 * is a preformatted Prometheus label set without braces, e.g.
 * `entry="20-dnsbl"`, or NULL. The same name+labels returns the same metric. */
struct metric_counter *metrics_counter(const char *name, const char *help, const char *labels);
struct metric_histogram *metrics_histogram(const char *name, const char *help,
                                           const char *labels, const double *bounds,
                                           size_t nbounds);
void metrics_counter_add(struct metric_counter *c, uint64_t n);
void metrics_histogram_observe(struct metric_histogram *h, double v);

/* Text exposition of every metric, malloc'd, NUL-terminated. */
char *metrics_render(size_t *len);

/* Starts the HTTP endpoint ("ip:port") on its own thread. Returns 0 or -1
 * with err. metrics_stop joins it. */
int metrics_start(const char *listen, char *err, size_t errlen);
void metrics_stop(void);

/* Frees every metric (worker exit). */
void metrics_free_all(void);

#endif
