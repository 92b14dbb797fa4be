/* Reading a libconfig file through tables of options: each section of a
 * file is an array of struct copt naming every setting, where it is stored,
 * its bounds and its default. Internal to config.c. */
#ifndef SLUICE_CONFIG_OPT_H
#define SLUICE_CONFIG_OPT_H

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_PORT_TEXT_MAX 8

/* The state of one config_load(): where messages go and what is resolved at the end. */
struct copt_loader {
    const char *path; /* the file being read, for messages that have no setting */
    char *err;
    size_t errlen;
    const config_setting_t *default_pool; /* resolved once every pool is known */
};

enum copt_kind {
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
struct copt {
    const char *name;
    enum copt_kind kind;
    size_t offset;
    int64_t min, max;
    int64_t idef;     /* default of numbers and bools */
    const char *sdef; /* default of strings, ports, durations and sizes, as written */
    bool required;
    const char *const *choices;
    bool (*valid)(const char *value);
    const char *expect; /* what .valid wants, for the message */
    int (*custom)(struct copt_loader *ld, const config_setting_t *s, void *obj);
    const struct copt *group;
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

/* A list of groups (or, with from_string, of strings) becomes an array of
 * structs, each read with opts. The array is attached before its elements
 * are read so config_free() can release a half-read one. */
struct copt_list {
    size_t elem_size;
    const struct copt *opts;
    int (*from_string)(struct copt_loader *ld, const config_setting_t *e, void *elem);
    const char *what; /* what each element must be, for the message */
};

/* Writes "file:line: message" (or "file: message") into ld->err; returns -1. */
int copt_fail(struct copt_loader *ld, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The parse error libconfig left in cf, as "file:line: text". */
void copt_report_syntax_error(struct copt_loader *ld, const config_t *cf);

/* Checks group holds only settings of opts, then reads each into obj, with
 * its default when absent. */
int copt_load_section(struct copt_loader *ld, const config_setting_t *group,
                      const struct copt *opts, void *obj);
/* Reads a non-empty list into a new array (*array, *count) as spec says. */
int copt_load_list(struct copt_loader *ld, const config_setting_t *s,
                   const struct copt_list *spec, void **array, size_t *count);
int copt_set_default(struct copt_loader *ld, const config_setting_t *group,
                     const struct copt *o, void *obj);
int copt_read(struct copt_loader *ld, const config_setting_t *s, const struct copt *o,
              void *obj);

int copt_replace_string(struct copt_loader *ld, const config_setting_t *s, char **field,
                        const char *value);
bool copt_is_array_like(const config_setting_t *s);

#endif
