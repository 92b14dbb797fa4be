/*
 * sluice plugin SDK: logging and metrics.
 */
#ifndef SLUICE_LOG_SDK_H
#define SLUICE_LOG_SDK_H

#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

enum sluice_log_level { SLUICE_LOG_ERR, SLUICE_LOG_WARN, SLUICE_LOG_INFO, SLUICE_LOG_DEBUG };

/* A log line with the session id and the calling entry's name. Loop thread.
 * The message stays one line: CR, LF and every other control byte in it are
 * written as "\xHH" (so text copied from a client cannot forge a line). */
void sluice_log(const sluice_session *s, enum sluice_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A log line with the entry's name, no session, escaped likewise. Any thread. */
void sluice_log_entry(const sluice_entry *e, enum sluice_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Metrics of an entry, exported as sluice_plugin_<name>{entry="<entry>"}.
 * Create them in init(); update them from any thread (atomic). name:
 * [a-z_][a-z0-9_]*. Returns NULL on a bad name or out of memory. */
typedef struct sluice_counter sluice_counter;
typedef struct sluice_histogram sluice_histogram;

sluice_counter *sluice_counter_new(sluice_entry *e, const char *name, const char *help);
void sluice_counter_add(sluice_counter *c, uint64_t n);

/* bounds: increasing upper bounds of the buckets (a +Inf bucket is implied). */
sluice_histogram *sluice_histogram_new(sluice_entry *e, const char *name, const char *help,
                                       const double *bounds, size_t nbounds);
void sluice_histogram_observe(sluice_histogram *h, double value);

#ifdef __cplusplus
}
#endif

#endif
