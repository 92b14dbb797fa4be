/* The SDK's logging and metrics. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/log.h>

#include "log.h"
#include "metrics.h"
#include "plugin_host.h"
#include "session_internal.h"

static enum log_level sdk_level(enum sluice_log_level l)
{
    switch (l) {
    case SLUICE_LOG_ERR:
        return SLOG_ERR;
    case SLUICE_LOG_WARN:
        return SLOG_WARN;
    case SLUICE_LOG_DEBUG:
        return SLOG_DEBUG;
    default:
        return SLOG_INFO;
    }
}

/* CR, LF and every other control byte of a plugin's message become "\xHH":
 * no plugin or script can forge a log line. */
static void sdk_log_escape(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (; *in; in++) {
        unsigned char c = (unsigned char)*in;
        bool plain = c >= 0x20 && c != 0x7f;
        if (n + (plain ? 1 : 4) >= outlen)
            break;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 0xf];
        }
    }
    out[n] = '\0';
}

/* One line "<entry>: <message>", with the session id when there is one. */
__attribute__((format(printf, 4, 0))) static void sdk_vlog(enum sluice_log_level level,
                                                            const char *sid, const char *entry,
                                                            const char *fmt, va_list ap)
{
    enum log_level lv = sdk_level(level);
    if (lv > log_get_level())
        return;
    char msg[2048], line[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    sdk_log_escape(msg, line, sizeof line);
    log_msg(lv, sid, "%s: %s", entry ? entry : "plugin", line);
}

void sluice_log(const sluice_session *ss, enum sluice_log_level level, const char *fmt, ...)
{
    const struct session *s = (const struct session *)ss;
    va_list ap;
    va_start(ap, fmt);
    sdk_vlog(level, s ? s->sid : NULL, s && s->current_entry ? s->current_entry->name : NULL,
             fmt, ap);
    va_end(ap);
}

void sluice_log_entry(const sluice_entry *e, enum sluice_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sdk_vlog(level, NULL, e ? ((const struct plugin_entry *)e)->name : NULL, fmt, ap);
    va_end(ap);
}

static int sdk_metric_names(const sluice_entry *e, const char *name, char *full, size_t fl,
                            char *labels, size_t ll)
{
    if (!e || !name)
        return -1;
    int n = snprintf(full, fl, "sluice_plugin_%s", name);
    char esc[512]; /* an entry name is a file name: 255 bytes, 510 escaped */
    if (metrics_escape_label_value(((const struct plugin_entry *)e)->name, esc, sizeof esc) >=
        sizeof esc)
        return -1; /* cut short, two entries could share a series */
    int m = snprintf(labels, ll, "entry=\"%s\"", esc);
    return (n < 0 || (size_t)n >= fl || m < 0 || (size_t)m >= ll) ? -1 : 0;
}

sluice_counter *sluice_counter_new(sluice_entry *e, const char *name, const char *help)
{
    char full[256], labels[600];
    if (sdk_metric_names(e, name, full, sizeof full, labels, sizeof labels) < 0)
        return NULL;
    return (sluice_counter *)metrics_counter(full, help ? help : name, labels);
}

void sluice_counter_add(sluice_counter *c, uint64_t n)
{
    if (c)
        metrics_counter_add((struct metric_counter *)c, n);
}

sluice_histogram *sluice_histogram_new(sluice_entry *e, const char *name, const char *help,
                                       const double *bounds, size_t nbounds)
{
    char full[256], labels[600];
    if (sdk_metric_names(e, name, full, sizeof full, labels, sizeof labels) < 0)
        return NULL;
    return (sluice_histogram *)metrics_histogram(full, help ? help : name, labels, bounds,
                                                 nbounds);
}

void sluice_histogram_observe(sluice_histogram *h, double value)
{
    if (h)
        metrics_histogram_observe((struct metric_histogram *)h, value);
}
