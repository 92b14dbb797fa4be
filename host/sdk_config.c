/* The SDK's access to an entry's settings (its conf.d file). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <libconfig.h>

#include <sluice/config.h>

#include "config.h"
#include "plugin_host.h"

#define E(e) ((const struct plugin_entry *)(e))

/* Keys of a conf.d file the host itself reads (`script` is the Lua
 * bridge's own setting, checked by it). */
static const char *const host_keys[] = {"plugin", "enabled", "timeout", "on_timeout", NULL};

static config_setting_t *setting(const sluice_entry *e, const char *path)
{
    config_t *cf = E(e)->conf ? E(e)->conf->settings : NULL;
    if (!cf || !path)
        return NULL;
    if (!*path)
        return config_root_setting(cf);
    return config_lookup(cf, path);
}

const char *sluice_entry_name(const sluice_entry *e) { return E(e)->name; }
const char *sluice_entry_file(const sluice_entry *e) { return E(e)->conf->file; }

int64_t sluice_entry_timeout(const sluice_entry *e) { return E(e)->timeout_ms; }

/* Durations in configuration stay below 2^31 ms (DESIGN: libconfig). */
#define ENTRY_TIMEOUT_MAX_MS INT32_MAX

int sluice_entry_set_timeout(sluice_entry *e, int64_t ms)
{
    struct plugin_entry *pe = (struct plugin_entry *)e;
    if (ms <= 0 || ms > ENTRY_TIMEOUT_MAX_MS || pe->timeout_set)
        return -1;
    pe->timeout_ms = ms;
    return 0;
}

int sluice_entry_skip_hook(sluice_entry *e, enum sluice_hook h)
{
    if ((unsigned)h >= SLUICE_HOOK_COUNT)
        return -1;
    ((struct plugin_entry *)e)->skip_hook[h] = true;
    return 0;
}

const char *sluice_config_dir(const sluice_entry *e)
{
    const struct chain_entry_conf *c = E(e)->conf;
    return c && c->config_dir ? c->config_dir : ".";
}

int sluice_setting_path(const sluice_entry *e, const char *path, char *out, size_t outlen)
{
    const char *v = NULL;
    int rc = sluice_setting_string(e, path, &v);
    if (rc != 0)
        return rc;
    int n = v[0] == '/' ? snprintf(out, outlen, "%s", v)
                        : snprintf(out, outlen, "%s/%s", sluice_config_dir(e), v);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int sluice_setting_string(const sluice_entry *e, const char *path, const char **out)
{
    config_setting_t *s = setting(e, path);
    if (!s)
        return 1;
    const char *v = config_setting_get_string(s);
    if (!v)
        return -1;
    *out = v;
    return 0;
}

int sluice_setting_int(const sluice_entry *e, const char *path, int64_t *out)
{
    config_setting_t *s = setting(e, path);
    if (!s)
        return 1;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return -1;
    *out = config_setting_get_int64(s);
    return 0;
}

int sluice_setting_bool(const sluice_entry *e, const char *path, bool *out)
{
    config_setting_t *s = setting(e, path);
    if (!s)
        return 1;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return -1;
    *out = config_setting_get_bool(s) != 0;
    return 0;
}

int sluice_setting_double(const sluice_entry *e, const char *path, double *out)
{
    config_setting_t *s = setting(e, path);
    if (!s)
        return 1;
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_FLOAT)
        *out = config_setting_get_float(s);
    else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        *out = (double)config_setting_get_int64(s);
    else
        return -1;
    return 0;
}

static int setting_parsed(const sluice_entry *e, const char *path, int64_t *out,
                          int (*parse)(const char *, int64_t *))
{
    config_setting_t *s = setting(e, path);
    if (!s)
        return 1;
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
        int64_t v = config_setting_get_int64(s);
        if (v < 0)
            return -1;
        *out = v;
        return 0;
    }
    const char *v = config_setting_get_string(s);
    return v && parse(v, out) == 0 ? 0 : -1;
}

int sluice_setting_duration(const sluice_entry *e, const char *path, int64_t *ms)
{
    return setting_parsed(e, path, ms, config_parse_duration);
}

int sluice_setting_size(const sluice_entry *e, const char *path, int64_t *bytes)
{
    return setting_parsed(e, path, bytes, config_parse_size);
}

int sluice_setting_count(const sluice_entry *e, const char *path)
{
    config_setting_t *s = setting(e, path);
    if (!s || config_setting_is_scalar(s))
        return -1;
    return config_setting_length(s);
}

int sluice_setting_line(const sluice_entry *e, const char *path)
{
    config_setting_t *s = setting(e, path);
    return s ? config_setting_source_line(s) : 0;
}

int sluice_setting_fail(const sluice_entry *e, const char *path, char *err, size_t errlen,
                        const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(err, errlen, "line %d: %s: %s", sluice_setting_line(e, path), path, msg);
    return -1;
}

const char *sluice_setting_name_at(const sluice_entry *e, const char *path, int i)
{
    config_setting_t *s = setting(e, path);
    if (!s || !config_setting_is_group(s))
        return NULL;
    config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
    return m ? config_setting_name(m) : NULL;
}

static bool known(const char *name, const char *const *names, bool top)
{
    for (size_t i = 0; names && names[i]; i++)
        if (strcmp(name, names[i]) == 0)
            return true;
    for (size_t i = 0; top && host_keys[i]; i++)
        if (strcmp(name, host_keys[i]) == 0)
            return true;
    return false;
}

int sluice_settings_check(const sluice_entry *e, const char *path, const char *const *names,
                          char *err, size_t errlen)
{
    config_setting_t *g = setting(e, path ? path : "");
    if (!g)
        return 0;
    if (!config_setting_is_group(g)) {
        snprintf(err, errlen, "%s:%d: %s: expected a group", sluice_entry_file(e),
                 config_setting_source_line(g), path);
        return -1;
    }
    bool top = !path || !*path;
    for (int i = 0; i < config_setting_length(g); i++) {
        config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(m);
        if (name && !known(name, names, top)) {
            snprintf(err, errlen, "%s:%d: unknown setting '%s'", sluice_entry_file(e),
                     config_setting_source_line(m), name);
            return -1;
        }
    }
    return 0;
}
