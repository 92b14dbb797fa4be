/* Reading and checking a clamav entry's settings (its conf.d file). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clamav.h"

#define DEFAULT_DATABASE "/var/lib/clamav"
#define DEFAULT_HEADER "X-Virus-Scanned"
#define DEFAULT_MAX_SCAN_SIZE (25LL << 20)
#define DEFAULT_MAX_FILE_SIZE (25LL << 20)
#define DEFAULT_MAX_SCANNED (100LL << 20)
#define DEFAULT_MAX_RECURSION 16
#define DEFAULT_MAX_FILES 10000
/* Below the default entry timeout (plugin_timeout, 10s), so a slow scan is
 * this plugin's timeout (on_error), not the host's. */
#define DEFAULT_MAX_SCAN_TIME_MS (8 * 1000)
#define DEFAULT_CHECK_INTERVAL_MS (60 * 1000)
#define DEFAULT_CLAMD_TIMEOUT_MS (8 * 1000)
#define MAX_RECURSION_LIMIT 64
#define MAX_FILES_LIMIT 1000000
#define MAX_SCAN_TIME_LIMIT_MS (10 * 60 * 1000)
#define HEADER_NAME_MAX 64

static const char *const top_names[] = {
    "mode",          "database",      "max_scan_size", "max_file_size",  "max_scanned",
    "max_recursion", "max_files",     "max_scan_time", "on_virus",       "on_error",
    "on_oversize",   "on_limit",      "header",        "reload",         "check_interval",
    "clamd",         "clamd_timeout", "temp_dir",      "mail_parser",    NULL,
};

/* One of names[] (NULL-terminated), its index into *out. */
static int get_choice(const sluice_entry *e, const char *path, const char *const *names, int *out,
                      char *err, size_t errlen)
{
    const char *v;
    int rc = sluice_setting_string(e, path, &v);
    if (rc == 1)
        return 0;
    for (int i = 0; rc == 0 && names[i]; i++) {
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    char list[128] = "";
    for (int i = 0; names[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"", i ? ", " : "",
                 names[i]);
    return sluice_setting_fail(e, path, err, errlen, "expected one of %s", list);
}

/* A policy among the actions allowed at path (a subset, in enum order). */
static int get_action(const sluice_entry *e, const char *path, bool header_ok,
                      enum clamav_action *out, char *err, size_t errlen)
{
    static const char *const with_header[] = {"reject", "tempfail", "header", NULL};
    static const char *const with_pass[] = {"reject", "tempfail", "pass", NULL};
    int i = *out == CLAMAV_PASS ? 2 : (int)*out;
    if (get_choice(e, path, header_ok ? with_header : with_pass, &i, err, errlen) < 0)
        return -1;
    *out = i == 2 ? (header_ok ? CLAMAV_HEADER : CLAMAV_PASS) : (enum clamav_action)i;
    return 0;
}

static int get_size(const sluice_entry *e, const char *path, int64_t min, int64_t *out,
                    char *err, size_t errlen)
{
    int rc = sluice_setting_size(e, path, out);
    if (rc < 0 || (rc == 0 && *out < min))
        return sluice_setting_fail(e, path, err, errlen, "expected a size such as \"25M\" (at least %lld)",
                    (long long)min);
    return 0;
}

static int get_duration(const sluice_entry *e, const char *path, int64_t min, int64_t max,
                        int64_t *ms, char *err, size_t errlen)
{
    int rc = sluice_setting_duration(e, path, ms);
    if (rc < 0 || (rc == 0 && (*ms < min || *ms > max)))
        return sluice_setting_fail(e, path, err, errlen, "expected a duration such as \"8s\" (%lld..%lld ms)",
                    (long long)min, (long long)max);
    return 0;
}

static int get_int(const sluice_entry *e, const char *path, int64_t min, int64_t max,
                   int64_t *out, char *err, size_t errlen)
{
    int rc = sluice_setting_int(e, path, out);
    if (rc < 0 || (rc == 0 && (*out < min || *out > max)))
        return sluice_setting_fail(e, path, err, errlen, "expected an integer %lld..%lld", (long long)min,
                    (long long)max);
    return 0;
}

static int get_string(const sluice_entry *e, const char *path, const char *def, char **out,
                      char *err, size_t errlen)
{
    const char *v = def;
    if (sluice_setting_string(e, path, &v) < 0)
        return sluice_setting_fail(e, path, err, errlen, "expected a string");
    *out = strdup(v);
    return *out ? 0 : sluice_setting_fail(e, path, err, errlen, "out of memory");
}

static int parse_limits(const sluice_entry *e, struct clamav_conf *c, char *err, size_t errlen)
{
    struct clamav_limits *l = &c->limits;
    if (get_size(e, "max_scan_size", 1, &c->max_message_size, err, errlen) < 0 ||
        get_size(e, "max_file_size", 1, &l->max_file_size, err, errlen) < 0 ||
        get_size(e, "max_scanned", 1, &l->max_scan_size, err, errlen) < 0 ||
        get_int(e, "max_recursion", 1, MAX_RECURSION_LIMIT, &l->max_recursion, err, errlen) < 0 ||
        get_int(e, "max_files", 1, MAX_FILES_LIMIT, &l->max_files, err, errlen) < 0 ||
        get_duration(e, "max_scan_time", 1, MAX_SCAN_TIME_LIMIT_MS, &l->max_scan_time, err,
                     errlen) < 0)
        return -1;
    return 0;
}

static bool header_name_ok(const char *h)
{
    size_t n = strlen(h);
    if (n > HEADER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)h[i] <= ' ' || (unsigned char)h[i] >= 0x7f || h[i] == ':')
            return false;
    return true;
}

static int parse_policies(const sluice_entry *e, struct clamav_conf *c, char *err,
                          size_t errlen)
{
    if (get_action(e, "on_virus", true, &c->on_virus, err, errlen) < 0 ||
        get_action(e, "on_error", false, &c->on_error, err, errlen) < 0 ||
        get_action(e, "on_oversize", false, &c->on_oversize, err, errlen) < 0 ||
        get_action(e, "on_limit", false, &c->on_limit, err, errlen) < 0 ||
        get_string(e, "header", DEFAULT_HEADER, &c->header, err, errlen) < 0)
        return -1;
    if (!header_name_ok(c->header))
        return sluice_setting_fail(e, "header", err, errlen, "expected a header field name or \"\"");
    if (c->on_virus == CLAMAV_HEADER && !c->header[0])
        return sluice_setting_fail(e, "on_virus", err, errlen, "\"header\" needs a header name in 'header'");
    return 0;
}

static int parse_clamd(const sluice_entry *e, struct clamav_conf *c, char *err, size_t errlen)
{
    int n = sluice_setting_count(e, "clamd");
    if (c->mode != CLAMAV_MODE_CLAMD) {
        if (n >= 0)
            return sluice_setting_fail(e, "clamd", err, errlen, "only with mode = \"clamd\"");
        return 0;
    }
    if (n <= 0 || n > CLAMAV_MAX_CLAMD)
        return sluice_setting_fail(e, "clamd", err, errlen,
                    "required with mode = \"clamd\": 1 to %d addresses such as "
                    "\"127.0.0.1:3310\" or \"/run/clamav/clamd.ctl\"",
                    CLAMAV_MAX_CLAMD);
    for (int i = 0; i < n; i++) {
        char path[32];
        snprintf(path, sizeof path, "clamd.[%d]", i);
        if (get_string(e, path, "", &c->clamd[i], err, errlen) < 0)
            return -1;
        c->nclamd = (size_t)i + 1;
        if (!clamav_clamd_address_ok(c->clamd[i]))
            return sluice_setting_fail(e, path, err, errlen,
                        "expected \"IP:port\", \"[IPv6]:port\" or a unix socket path");
    }
    return get_duration(e, "clamd_timeout", 1, MAX_SCAN_TIME_LIMIT_MS, &c->clamd_timeout_ms, err,
                        errlen);
}

/* libclamav writes every scan's work (a directory per scan, one file per
 * MIME part) under temp_dir: on a disk file system the directories' create
 * and remove cost more than the scan of a small message, on tmpfs little.
 * Checked here so that a directory the worker cannot use fails the start,
 * not every scan. */
static int parse_temp_dir(const sluice_entry *e, struct clamav_conf *c, char *err, size_t errlen)
{
    if (get_string(e, "temp_dir", "", &c->temp_dir, err, errlen) < 0)
        return -1;
    if (!c->temp_dir[0])
        return 0;
    if (c->mode != CLAMAV_MODE_LIBCLAMAV)
        return sluice_setting_fail(e, "temp_dir", err, errlen, "only with mode = \"libclamav\"");
    if (c->temp_dir[0] != '/')
        return sluice_setting_fail(e, "temp_dir", err, errlen, "expected an absolute directory path");
    if (access(c->temp_dir, W_OK | X_OK) != 0)
        return sluice_setting_fail(e, "temp_dir", err, errlen, "cannot write %s: %s", c->temp_dir,
                                   strerror(errno));
    return 0;
}

/* clamd's own ScanMail decides there; a setting it would ignore is refused. */
static int parse_mail_parser(const sluice_entry *e, struct clamav_conf *c, char *err,
                             size_t errlen)
{
    static const char *const choices[] = {"when_needed", "always", NULL};
    const char *v;
    if (sluice_setting_string(e, "mail_parser", &v) == 1)
        return 0;
    if (c->mode != CLAMAV_MODE_LIBCLAMAV)
        return sluice_setting_fail(e, "mail_parser", err, errlen,
                                   "only with mode = \"libclamav\" (clamd's ScanMail decides)");
    int choice = 0;
    if (get_choice(e, "mail_parser", choices, &choice, err, errlen) < 0)
        return -1;
    c->mail_parser = (enum clamav_mail_parser)choice;
    return 0;
}

static int parse_engine(const sluice_entry *e, struct clamav_conf *c, char *err, size_t errlen)
{
    static const char *const modes[] = {"libclamav", "clamd", NULL};
    static const char *const reloads[] = {"background", "stop", NULL};
    int mode = 0, reload = 0;
    if (get_choice(e, "mode", modes, &mode, err, errlen) < 0 ||
        get_choice(e, "reload", reloads, &reload, err, errlen) < 0 ||
        get_string(e, "database", DEFAULT_DATABASE, &c->database, err, errlen) < 0 ||
        get_duration(e, "check_interval", 0, INT32_MAX, &c->check_interval_ms, err, errlen) < 0)
        return -1;
    c->mode = (enum clamav_mode)mode;
    c->reload_stop = reload == 1;
    if (c->mode == CLAMAV_MODE_LIBCLAMAV && c->database[0] != '/')
        return sluice_setting_fail(e, "database", err, errlen, "expected an absolute directory path");
    if (parse_mail_parser(e, c, err, errlen) < 0)
        return -1;
    return parse_temp_dir(e, c, err, errlen);
}

static int make_metrics(sluice_entry *e, struct clamav_conf *c, char *err, size_t errlen)
{
    static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    c->scanned = sluice_counter_new(e, "clamav_scans", "Messages scanned");
    c->viruses = sluice_counter_new(e, "clamav_viruses", "Messages with a virus");
    c->errors = sluice_counter_new(e, "clamav_errors", "Scans that failed or timed out");
    c->oversize = sluice_counter_new(e, "clamav_oversize", "Messages over max_scan_size");
    c->cut_short =
        sluice_counter_new(e, "clamav_limits_exceeded", "Scans an engine limit cut short");
    c->reloads = sluice_counter_new(e, "clamav_reloads", "Engines loaded");
    c->reload_failures =
        sluice_counter_new(e, "clamav_reload_failures", "Database loads that failed");
    c->unparsed = sluice_counter_new(e, "clamav_scans_without_mail_parser",
                                     "Messages scanned as they are: plain text, nothing to decode");
    c->scan_seconds = sluice_histogram_new(e, "clamav_scan_seconds", "Scan time",
                                           bounds, sizeof bounds / sizeof bounds[0]);
    if (!c->scanned || !c->viruses || !c->errors || !c->oversize || !c->cut_short ||
        !c->reloads || !c->reload_failures || !c->unparsed || !c->scan_seconds) {
        snprintf(err, errlen, "cannot create the metrics");
        return -1;
    }
    return 0;
}

void clamav_conf_ref(struct clamav_conf *c)
{
    atomic_fetch_add(&c->refs, 1);
}

static void conf_free(struct clamav_conf *c)
{
    free(c->database);
    free(c->temp_dir);
    free(c->header);
    for (size_t i = 0; i < c->nclamd; i++)
        free(c->clamd[i]);
    free(c);
}

void clamav_conf_unref(struct clamav_conf *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        conf_free(c);
}

int clamav_conf_load(sluice_entry *e, struct clamav_conf **out, char *err, size_t errlen)
{
    struct clamav_conf *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_init(&c->refs, 1);
    c->entry = e;
    c->max_message_size = DEFAULT_MAX_SCAN_SIZE;
    c->limits = (struct clamav_limits){
        .max_file_size = DEFAULT_MAX_FILE_SIZE,
        .max_recursion = DEFAULT_MAX_RECURSION,
        .max_files = DEFAULT_MAX_FILES,
        .max_scan_time = DEFAULT_MAX_SCAN_TIME_MS,
        .max_scan_size = DEFAULT_MAX_SCANNED,
    };
    c->on_virus = CLAMAV_REJECT;
    c->on_error = CLAMAV_TEMPFAIL;
    c->on_oversize = CLAMAV_PASS;
    c->on_limit = CLAMAV_PASS;
    c->check_interval_ms = DEFAULT_CHECK_INTERVAL_MS;
    c->clamd_timeout_ms = DEFAULT_CLAMD_TIMEOUT_MS;
    if (sluice_settings_check(e, "", top_names, err, errlen) < 0 ||
        parse_engine(e, c, err, errlen) < 0 || parse_limits(e, c, err, errlen) < 0 ||
        parse_policies(e, c, err, errlen) < 0 || parse_clamd(e, c, err, errlen) < 0 ||
        make_metrics(e, c, err, errlen) < 0) {
        conf_free(c);
        return -1;
    }
    *out = c;
    return 0;
}
