/* Metrics: counters and histograms (atomic, any thread), exported in the
 * Prometheus text format on http://<metrics_listen>/metrics by a small
 * evhttp server on its own thread in the worker. */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct metric_counter;
struct metric_gauge;
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

/* A value that goes up and down (open sessions). Same registration rules. */
struct metric_gauge *metrics_gauge(const char *name, const char *help, const char *labels);
void metrics_gauge_add(struct metric_gauge *g, int64_t delta);
void metrics_gauge_set(struct metric_gauge *g, int64_t value);

/* Rules shared by every registration: name is [a-zA-Z_:][a-zA-Z0-9_:]*; a
 * name already registered with another type gives NULL; labels must be
 * `k="v"` pairs joined by commas, values escaped (see below), no `__*`
 * names, no `le` on histograms; histogram bounds are finite and strictly
 * increasing, and a series asked for again with other bounds gives NULL.
 * The help text of the first registration of a name is kept. Updating a
 * NULL metric does nothing, so a failed registration costs nothing later. */

/* Escapes a label value (\\, \" and \n) into out (always NUL-terminated
 * when outlen > 0). Returns the escaped length; the output was truncated
 * when it is >= outlen. */
size_t metrics_escape_label_value(const char *in, char *out, size_t outlen);

/* Text exposition of every metric, malloc'd, NUL-terminated. */
char *metrics_render(size_t *len);

/* Starts the HTTP endpoint ("ip:port" or "[v6]:port", numeric; port 0 picks
 * a free one) on its own thread: GET/HEAD /metrics answer 200 with
 * metrics_render(), other paths 404, other methods 405. Returns 0 or -1
 * with err. metrics_stop joins it (a no-op when not started). */
int metrics_start(const char *listen, char *err, size_t errlen);
void metrics_stop(void);
/* The port the endpoint listens on (useful with port 0), or -1 when stopped. */
int metrics_port(void);

/* Frees every metric (worker exit): after metrics_stop, once no thread can
 * still update or register one. */
void metrics_free_all(void);

#endif
