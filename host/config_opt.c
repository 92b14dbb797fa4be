#include "config_opt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "netaddr.h"

/* "file:line: " or "file: ". libconfig names an @include'd file as written,
 * relative to the directory of the file being loaded, so that directory is put back. */
static int print_location(struct copt_loader *ld, const char *file, unsigned line)
{
    const char *base = strrchr(ld->path, '/');
    int dir_len = 0;
    if (file == NULL)
        file = ld->path;
    else if (file[0] != '/' && strcmp(file, ld->path) != 0 && base != NULL)
        dir_len = (int)(base - ld->path + 1);
    if (line)
        return snprintf(ld->err, ld->errlen, "%.*s%s:%u: ", dir_len, ld->path, file, line);
    return snprintf(ld->err, ld->errlen, "%.*s%s: ", dir_len, ld->path, file);
}

int copt_fail(struct copt_loader *ld, const config_setting_t *s, const char *fmt, ...)
{
    int n = print_location(ld, s ? config_setting_source_file(s) : NULL,
                           s ? config_setting_source_line(s) : 0);
    if (n >= 0 && (size_t)n < ld->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static const char *setting_name(const config_setting_t *s)
{
    for (; s; s = config_setting_parent(s)) {
        if (config_setting_name(s))
            return config_setting_name(s);
    }
    return "(top level)";
}

static bool is_integer(const config_setting_t *s)
{
    int t = config_setting_type(s);
    return t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
}

/* ---- durations and sizes ---- */

struct unit {
    const char *suffix;
    int64_t factor;
};

static const struct unit duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}, {NULL, 0},
};

static const struct unit size_units[] = {
    {"", 1},        {"K", 1024},    {"k", 1024}, {"M", 1024 * 1024}, {"m", 1024 * 1024},
    {"G", 1 << 30}, {"g", 1 << 30}, {NULL, 0},
};

/* Digits then one of units' suffixes; nothing else, no sign, no spaces. */
static int parse_with_unit(const char *s, const struct unit *units, int64_t *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    int64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (INT64_MAX - (*s - '0')) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    for (const struct unit *u = units; u->suffix; u++) {
        if (strcmp(s, u->suffix) != 0)
            continue;
        if (v > INT64_MAX / u->factor)
            return -1;
        *out = v * u->factor;
        return 0;
    }
    return -1;
}

int config_parse_duration(const char *s, int64_t *ms)
{
    return parse_with_unit(s, duration_units, ms);
}

int config_parse_size(const char *s, int64_t *bytes)
{
    return parse_with_unit(s, size_units, bytes);
}

/* ---- reading one setting ---- */

static int check_range(struct copt_loader *ld, const config_setting_t *s, const struct copt *o,
                       int64_t v, const char *unit)
{
    if (v >= o->min && v <= o->max)
        return 0;
    if (o->max == INT64_MAX)
        return copt_fail(ld, s, "'%s' must be at least %lld%s", o->name, (long long)o->min, unit);
    return copt_fail(ld, s, "'%s' must be between %lld and %lld%s", o->name, (long long)o->min,
                     (long long)o->max, unit);
}

static int read_integer(struct copt_loader *ld, const config_setting_t *s, const struct copt *o,
                        int64_t *out)
{
    if (!is_integer(s))
        return copt_fail(ld, s, "'%s' must be an integer", o->name);
    *out = config_setting_get_int64(s);
    return check_range(ld, s, o, *out, "");
}

/* A duration or a size: a string with a unit, or a plain integer. */
static int read_amount(struct copt_loader *ld, const config_setting_t *s, const struct copt *o,
                       int64_t *out)
{
    bool duration = o->kind == OPT_DURATION;
    const char *unit = duration ? " ms" : " bytes";
    if (is_integer(s)) {
        *out = config_setting_get_int64(s);
        if (*out < 0)
            return copt_fail(ld, s, "'%s' must not be negative", o->name);
    } else if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        int rc = duration ? config_parse_duration(config_setting_get_string(s), out)
                          : config_parse_size(config_setting_get_string(s), out);
        if (rc < 0)
            return copt_fail(
                ld, s, "'%s': \"%s\" is not a valid %s", o->name, config_setting_get_string(s),
                duration ? "duration (like \"250ms\", \"30s\", \"10m\", \"2h\", \"36d\")"
                         : "size (like \"512K\", \"25M\", \"1G\")");
    } else {
        return copt_fail(ld, s, "'%s' must be a %s", o->name,
                         duration ? "duration (\"30s\" or milliseconds)"
                                  : "size (\"25M\" or bytes)");
    }
    return check_range(ld, s, o, *out, unit);
}

static int choice_index(const char *const *choices, const char *value)
{
    for (int i = 0; choices[i]; i++) {
        if (strcmp(choices[i], value) == 0)
            return i;
    }
    return -1;
}

static int fail_choices(struct copt_loader *ld, const config_setting_t *s, const struct copt *o)
{
    char list[256] = "";
    size_t used = 0;
    for (int i = 0; o->choices[i]; i++) {
        int n = snprintf(list + used, sizeof list - used, "%s\"%s\"", i ? ", " : "", o->choices[i]);
        if (n < 0 || (size_t)n >= sizeof list - used)
            break;
        used += (size_t)n;
    }
    return copt_fail(ld, s, "'%s' must be one of %s", o->name, list);
}

int copt_replace_string(struct copt_loader *ld, const config_setting_t *s, char **field,
                        const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return copt_fail(ld, s, "out of memory");
    free(*field);
    *field = copy;
    return 0;
}

static int read_string(struct copt_loader *ld, const config_setting_t *s, const struct copt *o,
                       void *field)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return copt_fail(ld, s, "'%s' must be a string", o->name);
    const char *v = config_setting_get_string(s);
    int idx = o->choices ? choice_index(o->choices, v) : 0;
    if (idx < 0)
        return fail_choices(ld, s, o);
    if (o->valid && !o->valid(v))
        return copt_fail(ld, s, "'%s': \"%s\" %s", o->name, v, o->expect);
    if (o->kind == OPT_ENUM) {
        *(int *)field = idx;
        return 0;
    }
    if (*v == '\0')
        return copt_fail(ld, s, "'%s' must not be empty", o->name);
    return copt_replace_string(ld, s, field, v);
}

static int read_port(struct copt_loader *ld, const config_setting_t *s, const struct copt *o,
                     char **field)
{
    char text[32], port[CONFIG_PORT_TEXT_MAX];
    if (is_integer(s))
        snprintf(text, sizeof text, "%lld", config_setting_get_int64(s));
    else if (config_setting_type(s) == CONFIG_TYPE_STRING)
        snprintf(text, sizeof text, "%s", config_setting_get_string(s));
    else
        return copt_fail(ld, s, "'%s' must be a port number", o->name);
    if (netaddr_parse_port(text, port, sizeof port) < 0)
        return copt_fail(ld, s, "'%s' must be a port number between 1 and 65535", o->name);
    return copt_replace_string(ld, s, field, port);
}

bool copt_is_array_like(const config_setting_t *s)
{
    int t = config_setting_type(s);
    return t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST;
}

static int read_netlist(struct copt_loader *ld, const config_setting_t *s, const struct copt *o,
                        struct netlist **field)
{
    if (!copt_is_array_like(s))
        return copt_fail(ld, s, "'%s' must be an array of networks, like [ \"10.0.0.0/8\" ]",
                         o->name);
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_get_string(e);
        if (v == NULL)
            return copt_fail(ld, e, "'%s' entries must be strings", o->name);
        if (netlist_add(field, v) < 0)
            return copt_fail(ld, e, "'%s': \"%s\" is not a network (\"ip\" or \"ip/prefix\")",
                             o->name, v);
    }
    return 0;
}

int copt_read(struct copt_loader *ld, const config_setting_t *s, const struct copt *o, void *obj)
{
    void *field = (char *)obj + o->offset;
    int64_t v = 0;
    switch (o->kind) {
    case OPT_STRING:
    case OPT_ENUM:
        return read_string(ld, s, o, field);
    case OPT_BOOL:
        if (config_setting_type(s) != CONFIG_TYPE_BOOL)
            return copt_fail(ld, s, "'%s' must be true or false", o->name);
        *(bool *)field = config_setting_get_bool(s);
        return 0;
    case OPT_INT:
    case OPT_INT64:
        if (read_integer(ld, s, o, &v) < 0)
            return -1;
        break;
    case OPT_DURATION:
    case OPT_SIZE:
        if (read_amount(ld, s, o, &v) < 0)
            return -1;
        break;
    case OPT_PORT:
        return read_port(ld, s, o, field);
    case OPT_NETLIST:
        return read_netlist(ld, s, o, field);
    case OPT_GROUP:
        if (!config_setting_is_group(s))
            return copt_fail(ld, s, "'%s' must be a group { ... }", o->name);
        return copt_load_section(ld, s, o->group, obj);
    case OPT_CUSTOM:
        return o->custom(ld, s, obj);
    }
    if (o->kind == OPT_INT)
        *(int *)field = (int)v;
    else
        *(int64_t *)field = v;
    return 0;
}

/* ---- sections ---- */

int copt_set_default(struct copt_loader *ld, const config_setting_t *group, const struct copt *o,
                     void *obj)
{
    void *field = (char *)obj + o->offset;
    int64_t v = 0;
    switch (o->kind) {
    case OPT_STRING:
    case OPT_PORT:
        return o->sdef ? copt_replace_string(ld, group, field, o->sdef) : 0;
    case OPT_ENUM:
    case OPT_INT:
        *(int *)field = (int)o->idef;
        return 0;
    case OPT_BOOL:
        *(bool *)field = o->idef != 0;
        return 0;
    case OPT_INT64:
        *(int64_t *)field = o->idef;
        return 0;
    case OPT_DURATION:
        if (config_parse_duration(o->sdef, &v) < 0)
            return copt_fail(ld, group, "internal: bad default for '%s'", o->name);
        *(int64_t *)field = v;
        return 0;
    case OPT_SIZE:
        if (config_parse_size(o->sdef, &v) < 0)
            return copt_fail(ld, group, "internal: bad default for '%s'", o->name);
        *(int64_t *)field = v;
        return 0;
    case OPT_NETLIST:
    case OPT_CUSTOM:
        return 0;
    case OPT_GROUP:
        for (const struct copt *g = o->group; g->name; g++) {
            if (copt_set_default(ld, group, g, obj) < 0)
                return -1;
        }
        return 0;
    }
    return 0;
}

/* Typos must not pass silently: every member must be a known option. */
static int check_unknown(struct copt_loader *ld, const config_setting_t *group,
                         const struct copt *opts)
{
    for (int i = 0; i < config_setting_length(group); i++) {
        const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(m);
        const struct copt *o = opts;
        while (o->name && strcmp(o->name, name) != 0)
            o++;
        if (o->name == NULL)
            return copt_fail(ld, m, "unknown setting '%s'", name);
    }
    return 0;
}

int copt_load_section(struct copt_loader *ld, const config_setting_t *group,
                      const struct copt *opts, void *obj)
{
    if (check_unknown(ld, group, opts) < 0)
        return -1;
    for (const struct copt *o = opts; o->name; o++) {
        if (copt_set_default(ld, group, o, obj) < 0)
            return -1;
        const config_setting_t *s = config_setting_get_member(group, o->name);
        if (s == NULL && o->required)
            return copt_fail(ld, group, "missing '%s'", o->name);
        if (s != NULL && copt_read(ld, s, o, obj) < 0)
            return -1;
    }
    return 0;
}

int copt_load_list(struct copt_loader *ld, const config_setting_t *s, const struct copt_list *spec,
                   void **array, size_t *count)
{
    if (!copt_is_array_like(s))
        return copt_fail(ld, s, "'%s' must be a list ( ... )", setting_name(s));
    size_t n = (size_t)config_setting_length(s);
    if (n == 0)
        return copt_fail(ld, s, "'%s' must not be empty", setting_name(s));
    *array = calloc(n, spec->elem_size);
    if (*array == NULL)
        return copt_fail(ld, s, "out of memory");
    *count = n;
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        void *elem = (char *)*array + i * spec->elem_size;
        if (spec->from_string && config_setting_type(e) == CONFIG_TYPE_STRING) {
            if (spec->from_string(ld, e, elem) < 0)
                return -1;
        } else if (config_setting_is_group(e)) {
            if (copt_load_section(ld, e, spec->opts, elem) < 0)
                return -1;
        } else {
            return copt_fail(ld, e, "each '%s' entry must be %s", setting_name(s), spec->what);
        }
    }
    return 0;
}

void copt_report_syntax_error(struct copt_loader *ld, const config_t *cf)
{
    int n = print_location(ld, config_error_file(cf), (unsigned)config_error_line(cf));
    if (n >= 0 && (size_t)n < ld->errlen)
        snprintf(ld->err + n, ld->errlen - (size_t)n, "%s", config_error_text(cf));
}
