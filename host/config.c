#include "config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "route.h"

/* libconfig 1.5 silently wraps integers of 2^31 and more, so no integer
 * setting may accept more than this; bigger values are written as "4G". */
#define CONFIG_INT_MAX INT32_MAX
#define CONFIG_THREADS_MAX 256
#define CONFIG_DEFAULT_PORT "25"
#define CONFIG_DNS_DEFAULT_PORT "53"
#define CONFIG_PORT_TEXT_MAX 8
#define CONFIG_HOST_TEXT_MAX 256

/* The state of one config_load(): where messages go and what is resolved at the end. */
struct loader {
    const char *path; /* the file being read, for messages that have no setting */
    char *err;
    size_t errlen;
    const config_setting_t *default_pool; /* resolved once every pool is known */
};

enum opt_kind {
    OPT_STRING,   /* char *, optionally one of .choices or passing .valid */
    OPT_ENUM,     /* int index into .choices, read from a string */
    OPT_BOOL,     /* bool */
    OPT_INT,      /* int */
    OPT_INT64,    /* int64_t */
    OPT_DURATION, /* int64_t milliseconds: "30s" or an integer of ms */
    OPT_SIZE,     /* int64_t bytes: "25M" or an integer of bytes */
    OPT_PORT,     /* char *: 1..65535 as an integer or a numeric string */
    OPT_NETLIST,  /* struct netlist *: an array of CIDR strings */
    OPT_GROUP,    /* a nested group whose settings live in the same struct */
    OPT_CUSTOM,   /* read by .custom */
};

/* One setting: its name, where it is stored, its bounds and its default.
 * Every section of the file is a table of these, so each option and its
 * default is visible in one place. */
struct opt {
    const char *name;
    enum opt_kind kind;
    size_t offset;
    int64_t min, max;
    int64_t idef;     /* default of numbers and bools */
    const char *sdef; /* default of strings, ports, durations and sizes, as written */
    bool required;
    const char *const *choices;
    bool (*valid)(const char *value);
    const char *expect; /* what .valid wants, for the message */
    int (*custom)(struct loader *ld, const config_setting_t *s, void *obj);
    const struct opt *group;
};

#define FIELD(type, f) .offset = offsetof(type, f)
#define OSTRING(n, type, f, def) {.name = n, .kind = OPT_STRING, FIELD(type, f), .sdef = def}
#define OBOOL(n, type, f, def) {.name = n, .kind = OPT_BOOL, FIELD(type, f), .idef = def}
#define OINT(n, type, f, lo, hi, def)                                                          \
    {.name = n, .kind = OPT_INT, FIELD(type, f), .min = lo, .max = hi, .idef = def}
#define OINT64(n, type, f, lo, hi, def)                                                        \
    {.name = n, .kind = OPT_INT64, FIELD(type, f), .min = lo, .max = hi, .idef = def}
#define ODURATION(n, type, f, lo, def)                                                         \
    {.name = n, .kind = OPT_DURATION, FIELD(type, f), .min = lo, .max = INT64_MAX, .sdef = def}
#define OSIZE(n, type, f, lo, hi, def)                                                         \
    {.name = n, .kind = OPT_SIZE, FIELD(type, f), .min = lo, .max = hi, .sdef = def}
#define OPORT(n, type, f, def) {.name = n, .kind = OPT_PORT, FIELD(type, f), .sdef = def}
#define ONETLIST(n, type, f) {.name = n, .kind = OPT_NETLIST, FIELD(type, f)}
#define OGROUP(n, opts) {.name = n, .kind = OPT_GROUP, .group = opts}
#define OCUSTOM(n, fn) {.name = n, .kind = OPT_CUSTOM, .custom = fn}
#define OEND {.name = NULL}

#define SECONDS(n) ((int64_t)(n) * 1000)

static int fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* "file:line: " or "file: ". libconfig names an @include'd file as written,
 * relative to the including file's directory, so that directory is put back. */
static int print_location(struct loader *ld, const char *file, unsigned line)
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

static int fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
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

static bool is_numeric_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
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
    {"", 1},      {"K", 1024}, {"k", 1024}, {"M", 1024 * 1024}, {"m", 1024 * 1024},
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

static int check_range(struct loader *ld, const config_setting_t *s, const struct opt *o,
                       int64_t v, const char *unit)
{
    if (v >= o->min && v <= o->max)
        return 0;
    if (o->max == INT64_MAX)
        return fail_at(ld, s, "'%s' must be at least %lld%s", o->name, (long long)o->min, unit);
    return fail_at(ld, s, "'%s' must be between %lld and %lld%s", o->name, (long long)o->min,
                   (long long)o->max, unit);
}

static int read_integer(struct loader *ld, const config_setting_t *s, const struct opt *o,
                        int64_t *out)
{
    if (!is_integer(s))
        return fail_at(ld, s, "'%s' must be an integer", o->name);
    *out = config_setting_get_int64(s);
    return check_range(ld, s, o, *out, "");
}

/* A duration or a size: a string with a unit, or a plain integer. */
static int read_amount(struct loader *ld, const config_setting_t *s, const struct opt *o,
                       int64_t *out)
{
    bool duration = o->kind == OPT_DURATION;
    const char *unit = duration ? " ms" : " bytes";
    if (is_integer(s)) {
        *out = config_setting_get_int64(s);
        if (*out < 0)
            return fail_at(ld, s, "'%s' must not be negative", o->name);
    } else if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        int rc = duration ? config_parse_duration(config_setting_get_string(s), out)
                          : config_parse_size(config_setting_get_string(s), out);
        if (rc < 0)
            return fail_at(ld, s, "'%s': \"%s\" is not a valid %s", o->name,
                           config_setting_get_string(s),
                           duration ? "duration (like \"250ms\", \"30s\", \"10m\", \"2h\", \"36d\")"
                                    : "size (like \"512K\", \"25M\", \"1G\")");
    } else {
        return fail_at(ld, s, "'%s' must be a %s", o->name,
                       duration ? "duration (\"30s\" or milliseconds)" : "size (\"25M\" or bytes)");
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

static int fail_choices(struct loader *ld, const config_setting_t *s, const struct opt *o)
{
    char list[256] = "";
    size_t used = 0;
    for (int i = 0; o->choices[i]; i++) {
        int n = snprintf(list + used, sizeof list - used, "%s\"%s\"", i ? ", " : "",
                         o->choices[i]);
        if (n < 0 || (size_t)n >= sizeof list - used)
            break;
        used += (size_t)n;
    }
    return fail_at(ld, s, "'%s' must be one of %s", o->name, list);
}

static int replace_string(struct loader *ld, const config_setting_t *s, char **field,
                          const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return fail_at(ld, s, "out of memory");
    free(*field);
    *field = copy;
    return 0;
}

static int read_string(struct loader *ld, const config_setting_t *s, const struct opt *o,
                       void *field)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail_at(ld, s, "'%s' must be a string", o->name);
    const char *v = config_setting_get_string(s);
    int idx = o->choices ? choice_index(o->choices, v) : 0;
    if (idx < 0)
        return fail_choices(ld, s, o);
    if (o->valid && !o->valid(v))
        return fail_at(ld, s, "'%s': \"%s\" %s", o->name, v, o->expect);
    if (o->kind == OPT_ENUM) {
        *(int *)field = idx;
        return 0;
    }
    if (*v == '\0')
        return fail_at(ld, s, "'%s' must not be empty", o->name);
    return replace_string(ld, s, field, v);
}

static int read_port(struct loader *ld, const config_setting_t *s, const struct opt *o,
                     char **field)
{
    char text[32], port[CONFIG_PORT_TEXT_MAX];
    if (is_integer(s))
        snprintf(text, sizeof text, "%lld", config_setting_get_int64(s));
    else if (config_setting_type(s) == CONFIG_TYPE_STRING)
        snprintf(text, sizeof text, "%s", config_setting_get_string(s));
    else
        return fail_at(ld, s, "'%s' must be a port number", o->name);
    if (netaddr_parse_port(text, port, sizeof port) < 0)
        return fail_at(ld, s, "'%s' must be a port number between 1 and 65535", o->name);
    return replace_string(ld, s, field, port);
}

static bool is_array_like(const config_setting_t *s)
{
    int t = config_setting_type(s);
    return t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST;
}

static int read_netlist(struct loader *ld, const config_setting_t *s, const struct opt *o,
                        struct netlist **field)
{
    if (!is_array_like(s))
        return fail_at(ld, s, "'%s' must be an array of networks, like [ \"10.0.0.0/8\" ]",
                       o->name);
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_get_string(e);
        if (v == NULL)
            return fail_at(ld, e, "'%s' entries must be strings", o->name);
        if (netlist_add(field, v) < 0)
            return fail_at(ld, e, "'%s': \"%s\" is not a network (\"ip\" or \"ip/prefix\")",
                           o->name, v);
    }
    return 0;
}

static int load_section(struct loader *ld, const config_setting_t *group, const struct opt *opts,
                        void *obj);

static int read_opt(struct loader *ld, const config_setting_t *s, const struct opt *o, void *obj)
{
    void *field = (char *)obj + o->offset;
    int64_t v = 0;
    switch (o->kind) {
    case OPT_STRING:
    case OPT_ENUM:
        return read_string(ld, s, o, field);
    case OPT_BOOL:
        if (config_setting_type(s) != CONFIG_TYPE_BOOL)
            return fail_at(ld, s, "'%s' must be true or false", o->name);
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
            return fail_at(ld, s, "'%s' must be a group { ... }", o->name);
        return load_section(ld, s, o->group, obj);
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

static int set_default(struct loader *ld, const config_setting_t *group, const struct opt *o,
                       void *obj)
{
    void *field = (char *)obj + o->offset;
    int64_t v = 0;
    switch (o->kind) {
    case OPT_STRING:
    case OPT_PORT:
        return o->sdef ? replace_string(ld, group, field, o->sdef) : 0;
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
            return fail_at(ld, group, "internal: bad default for '%s'", o->name);
        *(int64_t *)field = v;
        return 0;
    case OPT_SIZE:
        if (config_parse_size(o->sdef, &v) < 0)
            return fail_at(ld, group, "internal: bad default for '%s'", o->name);
        *(int64_t *)field = v;
        return 0;
    case OPT_NETLIST:
    case OPT_CUSTOM:
        return 0;
    case OPT_GROUP:
        for (const struct opt *g = o->group; g->name; g++) {
            if (set_default(ld, group, g, obj) < 0)
                return -1;
        }
        return 0;
    }
    return 0;
}

/* Typos must not pass silently: every member must be a known option. */
static int check_unknown(struct loader *ld, const config_setting_t *group, const struct opt *opts)
{
    for (int i = 0; i < config_setting_length(group); i++) {
        const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(m);
        const struct opt *o = opts;
        while (o->name && strcmp(o->name, name) != 0)
            o++;
        if (o->name == NULL)
            return fail_at(ld, m, "unknown setting '%s'", name);
    }
    return 0;
}

static int load_section(struct loader *ld, const config_setting_t *group, const struct opt *opts,
                        void *obj)
{
    if (check_unknown(ld, group, opts) < 0)
        return -1;
    for (const struct opt *o = opts; o->name; o++) {
        if (set_default(ld, group, o, obj) < 0)
            return -1;
        const config_setting_t *s = config_setting_get_member(group, o->name);
        if (s == NULL && o->required)
            return fail_at(ld, group, "missing '%s'", o->name);
        if (s != NULL && read_opt(ld, s, o, obj) < 0)
            return -1;
    }
    return 0;
}

/* A list of groups (or, with from_string, of strings) becomes an array of
 * structs, each read with opts. The array is attached before its elements
 * are read so config_free() can release a half-read one. */
struct list_spec {
    size_t elem_size;
    const struct opt *opts;
    int (*from_string)(struct loader *ld, const config_setting_t *e, void *elem);
    const char *what; /* what each element must be, for the message */
};

static int load_list(struct loader *ld, const config_setting_t *s, const struct list_spec *spec,
                     void **array, size_t *count)
{
    if (!is_array_like(s))
        return fail_at(ld, s, "'%s' must be a list ( ... )", setting_name(s));
    size_t n = (size_t)config_setting_length(s);
    if (n == 0)
        return fail_at(ld, s, "'%s' must not be empty", setting_name(s));
    *array = calloc(n, spec->elem_size);
    if (*array == NULL)
        return fail_at(ld, s, "out of memory");
    *count = n;
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        void *elem = (char *)*array + i * spec->elem_size;
        if (spec->from_string && config_setting_type(e) == CONFIG_TYPE_STRING) {
            if (spec->from_string(ld, e, elem) < 0)
                return -1;
        } else if (config_setting_is_group(e)) {
            if (load_section(ld, e, spec->opts, elem) < 0)
                return -1;
        } else {
            return fail_at(ld, e, "each '%s' entry must be %s", setting_name(s), spec->what);
        }
    }
    return 0;
}

/* listen */

static const struct opt listen_opts[] = {
    {.name = "address",
     .kind = OPT_STRING,
     FIELD(struct listen_conf, address),
     .required = true,
     .valid = is_numeric_ip,
     .expect = "must be a numeric IPv4 or IPv6 address"},
    OPORT("port", struct listen_conf, port, CONFIG_DEFAULT_PORT),
    OBOOL("proxy_protocol", struct listen_conf, proxy_protocol, false),
    ONETLIST("proxy_trusted", struct listen_conf, proxy_trusted),
    OEND,
};

static int load_listens(struct loader *ld, const config_setting_t *s, void *obj)
{
    struct sluice_config *cfg = obj;
    static const struct list_spec spec = {sizeof(struct listen_conf), listen_opts, NULL,
                                          "a group { ... }"};
    if (load_list(ld, s, &spec, (void **)&cfg->listens, &cfg->nlistens) < 0)
        return -1;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        struct listen_conf *l = &cfg->listens[i];
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        l->line = (int)config_setting_source_line(e);
        if (l->proxy_protocol && netlist_count(l->proxy_trusted) == 0)
            return fail_at(ld, e, "'proxy_protocol' needs a non-empty 'proxy_trusted'");
    }
    return 0;
}

/* pools */

static const struct opt server_opts[] = {
    {.name = "host", .kind = OPT_STRING, FIELD(struct server_conf, host), .required = true},
    OPORT("port", struct server_conf, port, CONFIG_DEFAULT_PORT),
    OINT("weight", struct server_conf, weight, 1, 1000, 1),
    OEND,
};

/* "host", "host:port" or "[v6]:port", with the defaults of the group form. */
static int server_from_string(struct loader *ld, const config_setting_t *e, void *elem)
{
    struct server_conf *srv = elem;
    char host[CONFIG_HOST_TEXT_MAX], port[CONFIG_PORT_TEXT_MAX];
    const char *v = config_setting_get_string(e);
    if (netaddr_split_hostport(v, host, sizeof host, port, sizeof port, CONFIG_DEFAULT_PORT) < 0)
        return fail_at(ld, e, "'servers': \"%s\" is not \"host\", \"host:port\" or \"[v6]:port\"",
                       v);
    srv->weight = 1;
    if (replace_string(ld, e, &srv->host, host) < 0)
        return -1;
    return replace_string(ld, e, &srv->port, port);
}

static int load_servers(struct loader *ld, const config_setting_t *s, void *obj)
{
    struct pool_conf *pool = obj;
    static const struct list_spec spec = {sizeof(struct server_conf), server_opts,
                                          server_from_string,
                                          "\"host:port\" or a group { host = ...; }"};
    return load_list(ld, s, &spec, (void **)&pool->servers, &pool->nservers);
}

static const struct opt pool_opts[] = {
    {.name = "name", .kind = OPT_STRING, FIELD(struct pool_conf, name), .required = true},
    {.name = "servers", .kind = OPT_CUSTOM, .custom = load_servers, .required = true},
    OINT("max_connections", struct pool_conf, max_connections, 1, 100000, 20),
    ODURATION("wait", struct pool_conf, wait_ms, 0, "30s"),
    OBOOL("xclient", struct pool_conf, xclient, true),
    OBOOL("proxy_protocol", struct pool_conf, proxy_protocol, false),
    OBOOL("smtputf8", struct pool_conf, smtputf8, false),
    OSTRING("helo_name", struct pool_conf, helo_name, NULL),
    ODURATION("connect_timeout", struct pool_conf, connect_timeout_ms, 1, "30s"),
    ODURATION("command_timeout", struct pool_conf, command_timeout_ms, 1, "5m"),
    ODURATION("final_timeout", struct pool_conf, final_timeout_ms, 1, "5m"),
    ODURATION("noop_interval", struct pool_conf, noop_interval_ms, 1, "60s"),
    ODURATION("down_time", struct pool_conf, down_ms, 0, "30s"),
    OEND,
};

static int load_pools(struct loader *ld, const config_setting_t *s, void *obj)
{
    struct sluice_config *cfg = obj;
    static const struct list_spec spec = {sizeof(struct pool_conf), pool_opts, NULL,
                                          "a group { ... }"};
    if (load_list(ld, s, &spec, (void **)&cfg->pools, &cfg->npools) < 0)
        return -1;
    for (size_t i = 0; i < cfg->npools; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        cfg->pools[i].line = (int)config_setting_source_line(e);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->pools[j].name, cfg->pools[i].name) == 0)
                return fail_at(ld, config_setting_get_member(e, "name"),
                               "pool \"%s\" is already defined at line %d", cfg->pools[i].name,
                               cfg->pools[j].line);
        }
    }
    return 0;
}

/* routes: the match is checked, and the pool resolved, by route_table_build() */

static const struct opt route_opts[] = {
    {.name = "match", .kind = OPT_STRING, FIELD(struct route_conf, match), .required = true},
    {.name = "pool", .kind = OPT_STRING, FIELD(struct route_conf, pool), .required = true},
    OEND,
};

static int load_routes(struct loader *ld, const config_setting_t *s, void *obj)
{
    struct sluice_config *cfg = obj;
    static const struct list_spec spec = {sizeof(struct route_conf), route_opts, NULL,
                                          "a group { ... }"};
    if (config_setting_length(s) == 0 && is_array_like(s))
        return 0; /* "routes = ();" is a valid way to say none */
    if (load_list(ld, s, &spec, (void **)&cfg->routes, &cfg->nroutes) < 0)
        return -1;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        cfg->routes[i].line = (int)config_setting_source_line(e);
    }
    return 0;
}

static int note_default_pool(struct loader *ld, const config_setting_t *s, void *obj)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail_at(ld, s, "'default_pool' must be a string");
    ld->default_pool = s;
    return 0;
}

/* dns */

static bool is_dns_server(const char *v)
{
    char host[INET6_ADDRSTRLEN + 1], port[CONFIG_PORT_TEXT_MAX];
    if (netaddr_split_hostport(v, host, sizeof host, port, sizeof port, CONFIG_DNS_DEFAULT_PORT) <
        0)
        return false;
    return is_numeric_ip(host);
}

static int load_dns_servers(struct loader *ld, const config_setting_t *s, void *obj)
{
    struct dns_conf *dns = &((struct sluice_config *)obj)->dns;
    if (!is_array_like(s))
        return fail_at(ld, s, "'servers' must be an array like [ \"127.0.0.1:53\" ]");
    size_t n = (size_t)config_setting_length(s);
    dns->servers = calloc(n ? n : 1, sizeof *dns->servers);
    if (dns->servers == NULL)
        return fail_at(ld, s, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_get_string(e);
        if (v == NULL || !is_dns_server(v))
            return fail_at(ld, e, "'servers': each entry must be \"ip\" or \"ip:port\"");
        dns->servers[i] = strdup(v);
        if (dns->servers[i] == NULL)
            return fail_at(ld, e, "out of memory");
        dns->nservers = i + 1;
    }
    return 0;
}

/* the tables of the whole file */

static const char *const log_levels[] = {"err", "warn", "info", "debug", NULL};
static const char *const bare_newline_modes[] = {"reject", "normalize", NULL};

static const struct opt limits_opts[] = {
    OSIZE("max_line_length", struct sluice_config, max_line_length, 512, 1 << 20, "2048"),
    OINT64("max_recipients", struct sluice_config, max_recipients, 1, CONFIG_INT_MAX, 1000),
    OSIZE("max_message_size", struct sluice_config, max_message_size, 1, INT64_MAX, "50M"),
    OINT64("max_errors", struct sluice_config, max_errors, 1, CONFIG_INT_MAX, 20),
    OEND,
};

static const struct opt timeouts_opts[] = {
    ODURATION("command", struct sluice_config, command_timeout_ms, 1, "5m"),
    ODURATION("data_block", struct sluice_config, data_block_timeout_ms, 1, "3m"),
    ODURATION("data_total", struct sluice_config, data_total_timeout_ms, 1, "30m"),
    ODURATION("reverse_lookup", struct sluice_config, reverse_lookup_timeout_ms, 1, "5s"),
    OEND,
};

static const struct opt data_opts[] = {
    {.name = "bare_newline",
     .kind = OPT_ENUM,
     FIELD(struct sluice_config, bare_newline),
     .idef = BARE_NEWLINE_REJECT,
     .choices = bare_newline_modes},
    OSIZE("spool_memory", struct sluice_config, spool_memory, 0, INT64_MAX, "1M"),
    OSTRING("spool_dir", struct sluice_config, spool_dir, "/var/tmp"),
    OEND,
};

static const struct opt dns_opts[] = {
    OCUSTOM("servers", load_dns_servers),
    ODURATION("timeout", struct sluice_config, dns.timeout_ms, 1, "5s"),
    OINT("tries", struct sluice_config, dns.tries, 1, 100, 2),
    OEND,
};

static const struct opt root_opts[] = {
    OSTRING("hostname", struct sluice_config, hostname, NULL),
    OINT("threads", struct sluice_config, threads, 0, CONFIG_THREADS_MAX, 0),
    {.name = "log_level",
     .kind = OPT_STRING,
     FIELD(struct sluice_config, log_level),
     .sdef = "info",
     .choices = log_levels},
    OSTRING("conf_dir", struct sluice_config, conf_dir, NULL),
    {.name = "listen", .kind = OPT_CUSTOM, .custom = load_listens, .required = true},
    ONETLIST("relay_networks", struct sluice_config, relay_networks),
    {.name = "pools", .kind = OPT_CUSTOM, .custom = load_pools, .required = true},
    OCUSTOM("routes", load_routes),
    OSTRING("route_table", struct sluice_config, route_table_file, NULL),
    OCUSTOM("default_pool", note_default_pool),
    OGROUP("limits", limits_opts),
    OGROUP("timeouts", timeouts_opts),
    OGROUP("data", data_opts),
    OGROUP("dns", dns_opts),
    OEND,
};

/* ---- paths and computed defaults ---- */

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* A relative path in sluice.conf is relative to the directory of sluice.conf. */
static char *resolve_path(const char *base_dir, const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    size_t len = strlen(base_dir) + strlen(path) + 2;
    char *out = malloc(len);
    if (out)
        snprintf(out, len, "%s/%s", base_dir, path);
    return out;
}

static int resolve_paths(struct loader *ld, struct sluice_config *cfg)
{
    char *dir = dir_of(cfg->path);
    if (dir == NULL)
        return fail_at(ld, NULL, "out of memory");
    char *conf_dir = resolve_path(dir, cfg->conf_dir ? cfg->conf_dir : "conf.d");
    char *table = cfg->route_table_file ? resolve_path(dir, cfg->route_table_file) : NULL;
    bool ok = conf_dir && (table || !cfg->route_table_file);
    free(dir);
    free(cfg->conf_dir);
    free(cfg->route_table_file);
    cfg->conf_dir = conf_dir;
    cfg->route_table_file = table;
    return ok ? 0 : fail_at(ld, NULL, "out of memory");
}

static int fill_computed_defaults(struct loader *ld, struct sluice_config *cfg)
{
    if (cfg->hostname == NULL) {
        char name[CONFIG_HOST_TEXT_MAX] = "";
        if (gethostname(name, sizeof name - 1) < 0 || name[0] == '\0')
            snprintf(name, sizeof name, "localhost");
        if (replace_string(ld, NULL, &cfg->hostname, name) < 0)
            return -1;
    }
    if (cfg->threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->threads = cores < 1 ? 1 : cores > CONFIG_THREADS_MAX ? CONFIG_THREADS_MAX : (int)cores;
    }
    for (size_t i = 0; i < cfg->npools; i++) {
        struct pool_conf *p = &cfg->pools[i];
        if (p->helo_name == NULL && replace_string(ld, NULL, &p->helo_name, cfg->hostname) < 0)
            return -1;
    }
    cfg->default_pool = -1;
    if (ld->default_pool) {
        const char *name = config_setting_get_string(ld->default_pool);
        cfg->default_pool = config_pool_index(cfg, name);
        if (cfg->default_pool < 0)
            return fail_at(ld, ld->default_pool, "'default_pool': no pool is named \"%s\"", name);
    }
    return resolve_paths(ld, cfg);
}

/* ---- files ---- */

static void report_syntax_error(struct loader *ld, const config_t *cf)
{
    int n = print_location(ld, config_error_file(cf), (unsigned)config_error_line(cf));
    if (n >= 0 && (size_t)n < ld->errlen)
        snprintf(ld->err + n, ld->errlen - (size_t)n, "%s", config_error_text(cf));
}

static int read_file(struct loader *ld, config_t *cf, const char *path)
{
    config_init(cf);
    config_set_options(cf, CONFIG_OPTION_AUTOCONVERT);
    char *dir = dir_of(path);
    if (dir == NULL)
        return fail_at(ld, NULL, "out of memory");
    config_set_include_dir(cf, dir);
    errno = 0;
    int ok = config_read_file(cf, path);
    int saved = errno;
    free(dir); /* libconfig keeps its own copy */
    if (ok)
        return 0;
    if (config_error_type(cf) == CONFIG_ERR_FILE_IO)
        snprintf(ld->err, ld->errlen, "%s: cannot read: %s", path,
                 saved ? strerror(saved) : config_error_text(cf));
    else
        report_syntax_error(ld, cf);
    return -1;
}

static const struct opt entry_opts[] = {
    {.name = "plugin", .kind = OPT_STRING, FIELD(struct chain_entry_conf, plugin),
     .required = true},
    OBOOL("enabled", struct chain_entry_conf, enabled, true),
    OEND,
};

/* The plugin's own settings share the file, so only ours are checked here. */
static int load_entry(struct loader *ld, const char *dir, const char *file_name,
                      struct chain_entry_conf *e)
{
    size_t stem = strlen(file_name) - strlen(".conf");
    e->name = strndup(file_name, stem);
    e->file = resolve_path(dir, file_name);
    config_t *cf = calloc(1, sizeof *cf);
    if (e->name == NULL || e->file == NULL || cf == NULL) {
        free(cf);
        return fail_at(ld, NULL, "out of memory");
    }
    ld->path = e->file;
    if (read_file(ld, cf, e->file) < 0) {
        config_destroy(cf);
        free(cf);
        return -1;
    }
    e->settings = cf;
    const config_setting_t *root = config_root_setting(cf);
    for (const struct opt *o = entry_opts; o->name; o++) {
        if (set_default(ld, root, o, e) < 0)
            return -1;
        const config_setting_t *s = config_setting_get_member(root, o->name);
        if (s == NULL && o->required)
            return fail_at(ld, root, "missing '%s': a chain entry names its plugin", o->name);
        if (s != NULL && read_opt(ld, s, o, e) < 0)
            return -1;
    }
    return 0;
}

static bool is_entry_file(const char *name)
{
    size_t len = strlen(name);
    return name[0] != '.' && len > strlen(".conf") &&
           strcmp(name + len - strlen(".conf"), ".conf") == 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The *.conf names of dir, sorted; a missing directory has none. */
static int list_entry_files(struct loader *ld, const char *dir, char ***out, size_t *count)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : fail_at(ld, NULL, "conf_dir %s: %s", dir, strerror(errno));
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_entry_file(de->d_name))
            continue;
        if (*count == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(*out, cap * sizeof *grown);
            if (grown == NULL)
                break;
            *out = grown;
        }
        if (((*out)[*count] = strdup(de->d_name)) == NULL)
            break;
        (*count)++;
    }
    bool complete = de == NULL;
    closedir(d);
    if (!complete)
        return fail_at(ld, NULL, "out of memory");
    if (*count > 0)
        qsort(*out, *count, sizeof **out, compare_names);
    return 0;
}

static int load_entries(struct loader *ld, struct sluice_config *cfg)
{
    char **names;
    size_t n;
    if (list_entry_files(ld, cfg->conf_dir, &names, &n) < 0) {
        return -1;
    }
    int rc = 0;
    if (n > 0) {
        cfg->entries = calloc(n, sizeof *cfg->entries);
        rc = cfg->entries ? 0 : fail_at(ld, NULL, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        cfg->nentries = i + 1;
        rc = load_entry(ld, cfg->conf_dir, names[i], &cfg->entries[i]);
    }
    free_names(names, n);
    return rc;
}

static int load_main(struct loader *ld, struct sluice_config *cfg)
{
    config_t cf;
    if (read_file(ld, &cf, cfg->path) < 0) {
        config_destroy(&cf);
        return -1;
    }
    const config_setting_t *root = config_root_setting(&cf);
    int rc = load_section(ld, root, root_opts, cfg);
    if (rc == 0)
        rc = fill_computed_defaults(ld, cfg);
    config_destroy(&cf);
    return rc;
}

int config_load(const char *path, struct sluice_config **out, char *err, size_t errlen)
{
    struct loader ld = {.path = path, .err = err, .errlen = errlen};
    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    struct sluice_config *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL || (cfg->path = strdup(path)) == NULL) {
        free(cfg);
        return fail_at(&ld, NULL, "out of memory");
    }
    cfg->default_pool = -1;
    int rc = load_main(&ld, cfg);
    if (rc == 0)
        rc = load_entries(&ld, cfg);
    if (rc == 0) {
        cfg->route_table = route_table_build(cfg, err, errlen);
        rc = cfg->route_table ? 0 : -1;
    }
    if (rc < 0) {
        config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

int config_pool_index(const struct sluice_config *cfg, const char *name)
{
    for (size_t i = 0; name && i < cfg->npools; i++) {
        if (cfg->pools[i].name && strcmp(cfg->pools[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* ---- freeing ---- */

static void free_pool(struct pool_conf *p)
{
    for (size_t i = 0; i < p->nservers; i++) {
        free(p->servers[i].host);
        free(p->servers[i].port);
    }
    free(p->servers);
    free(p->name);
    free(p->helo_name);
}

static void free_entry(struct chain_entry_conf *e)
{
    free(e->name);
    free(e->file);
    free(e->plugin);
    if (e->settings) {
        config_destroy(e->settings);
        free(e->settings);
    }
}

void config_free(struct sluice_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        free(cfg->listens[i].address);
        free(cfg->listens[i].port);
        netlist_free(cfg->listens[i].proxy_trusted);
    }
    free(cfg->listens);
    for (size_t i = 0; i < cfg->npools; i++)
        free_pool(&cfg->pools[i]);
    free(cfg->pools);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        free(cfg->routes[i].match);
        free(cfg->routes[i].pool);
    }
    free(cfg->routes);
    for (size_t i = 0; i < cfg->dns.nservers; i++)
        free(cfg->dns.servers[i]);
    free(cfg->dns.servers);
    for (size_t i = 0; i < cfg->nentries; i++)
        free_entry(&cfg->entries[i]);
    free(cfg->entries);
    netlist_free(cfg->relay_networks);
    route_table_free(cfg->route_table);
    free(cfg->path);
    free(cfg->conf_dir);
    free(cfg->hostname);
    free(cfg->log_level);
    free(cfg->route_table_file);
    free(cfg->spool_dir);
    free(cfg);
}
