/* Logging: one line per event, always with the session id when there is one. */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { SLOG_ERR, SLOG_WARN, SLOG_INFO, SLOG_DEBUG };

/* Lines go to stderr ("2026-11-23T12:00:00.123Z sluice[pid] info <sid> msg"). */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
int log_level_parse(const char *name, enum log_level *out);

/* sid may be NULL for process-wide events. */
void log_msg(enum log_level level, const char *sid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level level, const char *sid, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define log_err(sid, ...) log_msg(SLOG_ERR, (sid), __VA_ARGS__)
#define log_warn(sid, ...) log_msg(SLOG_WARN, (sid), __VA_ARGS__)
/* info and debug lines are tested before their arguments are evaluated and
 * formatted: at the usual warn level they cost a load and a compare. */
#define log_info(sid, ...)                                                     \
    do {                                                                       \
        if (log_get_level() >= SLOG_INFO)                                      \
            log_msg(SLOG_INFO, (sid), __VA_ARGS__);                            \
    } while (0)
#define log_debug(sid, ...)                                                    \
    do {                                                                       \
        if (log_get_level() >= SLOG_DEBUG)                                     \
            log_msg(SLOG_DEBUG, (sid), __VA_ARGS__);                           \
    } while (0)

/* Copies at most max bytes of an untrusted byte string into a printable,
 * NUL-terminated form (control bytes become '?'); returns out. */
char *log_sanitize(char *out, size_t outlen, const char *in, size_t inlen);

#endif
