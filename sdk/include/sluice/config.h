/*
 * sluice plugin SDK: an entry's settings (its conf.d file) and identity.
 * Call from init() (validate everything there: init also runs at
 * `sluice -t`), or later from any thread: the settings are immutable.
 *
 * path is a libconfig path into the entry's file: "threshold",
 * "zones.[0].name", "codes.[2].weight".
 */
#ifndef SLUICE_CONFIG_SDK_H
#define SLUICE_CONFIG_SDK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The entry's name (its file stem, "20-dnsbl") and file path. */
const char *sluice_entry_name(const sluice_entry *e);
const char *sluice_entry_file(const sluice_entry *e);

/*
 * The entry's pending timeout: how long a hook that returned SLUICE_PENDING
 * may wait before the host decides with on_timeout. It is the entry's own
 * `timeout` setting when the operator wrote one, else the host's
 * plugin_timeout. (SDK 1.3)
 */
int64_t sluice_entry_timeout(const sluice_entry *e);
/*
 * Gives the entry its own pending timeout when the operator did not set
 * `timeout` in its file (a plugin that knows it waits longer than the host's
 * default, the tarpit's delays). An operator's `timeout` always wins.
 * Call it from init() only. ms > 0. Returns 0, or -1 (ms out of range, or
 * the operator's setting stays). (SDK 1.3)
 */
int sluice_entry_set_timeout(sluice_entry *e, int64_t ms);
/*
 * Says that the entry's function for hook h does nothing with this
 * configuration (a Lua script without that handler): the host never calls
 * it for this entry. It matters at connect: when no entry of the chain has
 * a connect hook, the greeting goes out at once, without waiting for the
 * client's reverse lookup (every hook still runs only once the name is
 * known). Call it from init() only. Returns 0, or -1 (h out of range).
 * (SDK 1.4)
 */
int sluice_entry_skip_hook(sluice_entry *e, enum sluice_hook h);

/* Each getter returns 0 with *out set, 1 when the setting is absent (*out
 * untouched: keep your default), -1 when it has the wrong type or value. */
int sluice_setting_string(const sluice_entry *e, const char *path, const char **out);
int sluice_setting_int(const sluice_entry *e, const char *path, int64_t *out);
int sluice_setting_bool(const sluice_entry *e, const char *path, bool *out);
int sluice_setting_double(const sluice_entry *e, const char *path, double *out);
/* "30s", "10m", "250ms" or an integer of milliseconds. */
int sluice_setting_duration(const sluice_entry *e, const char *path, int64_t *ms);
/* "25M", "512K" or an integer of bytes. */
int sluice_setting_size(const sluice_entry *e, const char *path, int64_t *bytes);
/* Elements of a list, array or group; -1 when absent or a scalar. */
int sluice_setting_count(const sluice_entry *e, const char *path);
/* The name of the i-th setting of the group at path ("" for the top level),
 * or NULL past the end: to walk free-form options (the Lua bridge passes
 * them to scripts). */
const char *sluice_setting_name_at(const sluice_entry *e, const char *path, int i);
/* A setting naming a file or directory, resolved like the host's own paths:
 * a relative value is relative to the directory of sluice.conf (never to
 * the working directory). Writes the path into out; returns like the
 * getters, and -1 also when out is too small. Since ABI 1.2. */
int sluice_setting_path(const sluice_entry *e, const char *path, char *out, size_t outlen);
/* The directory of sluice.conf ("." when unknown). Since ABI 1.2. */
const char *sluice_config_dir(const sluice_entry *e);

/* The line of a setting in the entry's file (0 when absent), for messages. */
int sluice_setting_line(const sluice_entry *e, const char *path);
/* Writes "line N: path: <message>" into err (the host adds the file name)
 * and returns -1, so a plugin's init() can `return sluice_setting_fail(...)`.
 * N is the setting's line (0 when absent). Since ABI 1.2. */
int sluice_setting_fail(const sluice_entry *e, const char *path, char *err, size_t errlen,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Fails (returns -1 and writes "file:line: unknown setting 'x'") when the
 * group at path ("" for the top level) holds a setting not in names (a
 * NULL-terminated list). The host's own keys (plugin, enabled, timeout,
 * on_timeout) are always allowed at the top level. */
int sluice_settings_check(const sluice_entry *e, const char *path, const char *const *names,
                          char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
