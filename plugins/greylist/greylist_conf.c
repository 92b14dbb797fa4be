/* Reading and checking a greylist entry's settings (its conf.d file). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "greylist.h"

#define DEFAULT_MIN_DELAY_MS (5 * 60 * 1000)
#define DEFAULT_RETRY_WINDOW_MS (4 * 60 * 60 * 1000LL)
#define DEFAULT_LIFETIME_MS (36 * 24 * 60 * 60 * 1000LL)
#define DEFAULT_REFRESH_MS (60 * 60 * 1000LL)
#define DEFAULT_V4_PREFIX 24
#define DEFAULT_V6_PREFIX 64
#define DEFAULT_AUTO_ALLOWLIST 5
#define DEFAULT_KEY_PREFIX "greylist"
#define DEFAULT_SKIP_NOTE "dnsbl.allowlisted"
#define MAX_AUTO_ALLOWLIST 1000000
#define MAX_LIST 4096
#define NOTE_NAME_MAX 63

static const char *const top_names[] = {
    "min_delay",  "retry_window", "lifetime",  "refresh_interval", "ipv4_prefix",
    "ipv6_prefix", "auto_allowlist", "strip_sender_tags", "on_store_error", "key_prefix",
    "allowlist",  "allow_senders", "allow_recipients", "skip_notes", NULL,
};

static int get_duration(const sluice_entry *e, const char *path, int64_t *ms, char *err,
                        size_t errlen)
{
    int rc = sluice_setting_duration(e, path, ms);
    if (rc < 0 || (rc == 0 && *ms < 0))
        return sluice_setting_fail(e, path, err, errlen, "expected a duration such as \"5m\" or \"36d\"");
    return 0;
}

static int parse_times(const sluice_entry *e, struct greylist_conf *c, char *err, size_t errlen)
{
    struct greylist_times *t = &c->times;
    if (get_duration(e, "min_delay", &t->min_delay_ms, err, errlen) < 0 ||
        get_duration(e, "retry_window", &t->retry_window_ms, err, errlen) < 0 ||
        get_duration(e, "lifetime", &t->lifetime_ms, err, errlen) < 0 ||
        get_duration(e, "refresh_interval", &t->refresh_ms, err, errlen) < 0)
        return -1;
    if (t->retry_window_ms <= t->min_delay_ms)
        return sluice_setting_fail(e, "retry_window", err, errlen, "must be longer than min_delay");
    if (t->lifetime_ms <= 0)
        return sluice_setting_fail(e, "lifetime", err, errlen, "must be longer than 0");
    if (t->refresh_ms >= t->lifetime_ms)
        return sluice_setting_fail(e, "refresh_interval", err, errlen, "must be shorter than lifetime");
    return 0;
}

static int get_prefix(const sluice_entry *e, const char *path, unsigned max, unsigned *out,
                      char *err, size_t errlen)
{
    int64_t v = *out;
    if (sluice_setting_int(e, path, &v) < 0 || v < 0 || v > max)
        return sluice_setting_fail(e, path, err, errlen, "expected a prefix length 0..%u", max);
    *out = (unsigned)v;
    return 0;
}

static int parse_on_error(const sluice_entry *e, struct greylist_conf *c, char *err,
                          size_t errlen)
{
    const char *v = "pass";
    if (sluice_setting_string(e, "on_store_error", &v) < 0 ||
        (strcmp(v, "pass") != 0 && strcmp(v, "tempfail") != 0))
        return sluice_setting_fail(e, "on_store_error", err, errlen, "expected \"pass\" or \"tempfail\"");
    c->on_store_error = strcmp(v, "pass") == 0 ? GREYLIST_FAIL_OPEN : GREYLIST_FAIL_TEMP;
    return 0;
}

static int parse_key_prefix(const sluice_entry *e, struct greylist_conf *c, char *err,
                            size_t errlen)
{
    const char *v = DEFAULT_KEY_PREFIX;
    if (sluice_setting_string(e, "key_prefix", &v) < 0 || !*v ||
        strlen(v) >= sizeof c->key_prefix || strpbrk(v, " :\t\r\n"))
        return sluice_setting_fail(e, "key_prefix", err, errlen,
                    "expected a short name without spaces or ':' (default \"greylist\")");
    snprintf(c->key_prefix, sizeof c->key_prefix, "%s", v);
    return 0;
}

static int parse_scalars(const sluice_entry *e, struct greylist_conf *c, char *err,
                         size_t errlen)
{
    if (get_prefix(e, "ipv4_prefix", 32, &c->v4_prefix, err, errlen) < 0 ||
        get_prefix(e, "ipv6_prefix", 128, &c->v6_prefix, err, errlen) < 0)
        return -1;
    if (sluice_setting_int(e, "auto_allowlist", &c->auto_allowlist) < 0 ||
        c->auto_allowlist < 0 || c->auto_allowlist > MAX_AUTO_ALLOWLIST)
        return sluice_setting_fail(e, "auto_allowlist", err, errlen, "expected an integer 0..%d (0: off)",
                    MAX_AUTO_ALLOWLIST);
    if (sluice_setting_bool(e, "strip_sender_tags", &c->strip_tags) < 0)
        return sluice_setting_fail(e, "strip_sender_tags", err, errlen, "expected true or false");
    return parse_on_error(e, c, err, errlen) < 0 ? -1 : parse_key_prefix(e, c, err, errlen);
}

static int parse_nets(const sluice_entry *e, struct greylist_conf *c, char *err, size_t errlen)
{
    if (sluice_setting_netlist(e, "allowlist", &c->allow_nets, err, errlen) < 0)
        return -1;
    if (sluice_netlist_count(c->allow_nets) > MAX_LIST)
        return sluice_setting_fail(e, "allowlist", err, errlen, "at most %d networks", MAX_LIST);
    return 0;
}
/* An array of strings; each is checked by ok (NULL: any non-empty string). */
static int parse_strings(const sluice_entry *e, const char *name, char ***out, size_t *count,
                         bool (*ok)(const char *), char *err, size_t errlen)
{
    int n = sluice_setting_count(e, name);
    if (n < 0)
        return sluice_setting_line(e, name) == 0
                   ? 0
                   : sluice_setting_fail(e, name, err, errlen, "expected an array of strings");
    if (n > MAX_LIST)
        return sluice_setting_fail(e, name, err, errlen, "at most %d entries", MAX_LIST);
    char **list = calloc((size_t)n + 1, sizeof *list);
    if (!list)
        return sluice_setting_fail(e, name, err, errlen, "out of memory");
    *out = list; /* freed whole by greylist_conf_free, even when half filled */
    *count = (size_t)n;
    for (int i = 0; i < n; i++) {
        char path[64];
        const char *v;
        snprintf(path, sizeof path, "%s.[%d]", name, i);
        if (sluice_setting_string(e, path, &v) != 0 || !*v || (ok && !ok(v)))
            return sluice_setting_fail(e, path, err, errlen, "not a valid entry");
        list[i] = strdup(v);
        if (!list[i])
            return sluice_setting_fail(e, path, err, errlen, "out of memory");
    }
    return 0;
}

static bool pattern_ok(const char *v)
{
    return strlen(v) < GREYLIST_ADDR_MAX && !strpbrk(v, " \t\r\n");
}

static bool note_ok(const char *v)
{
    return strlen(v) <= NOTE_NAME_MAX;
}

static int parse_skip_notes(const sluice_entry *e, struct greylist_conf *c, char *err,
                            size_t errlen)
{
    if (sluice_setting_line(e, "skip_notes") != 0)
        return parse_strings(e, "skip_notes", &c->skip_notes, &c->nskip_notes, note_ok, err,
                             errlen);
    c->skip_notes = calloc(2, sizeof *c->skip_notes);
    if (!c->skip_notes || !(c->skip_notes[0] = strdup(DEFAULT_SKIP_NOTE))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->nskip_notes = 1;
    return 0;
}

static int parse_lists(const sluice_entry *e, struct greylist_conf *c, char *err, size_t errlen)
{
    if (parse_nets(e, c, err, errlen) < 0 ||
        parse_strings(e, "allow_senders", &c->allow_senders, &c->nallow_senders, pattern_ok,
                      err, errlen) < 0 ||
        parse_strings(e, "allow_recipients", &c->allow_rcpts, &c->nallow_rcpts, pattern_ok,
                      err, errlen) < 0)
        return -1;
    return parse_skip_notes(e, c, err, errlen);
}

static int make_counters(sluice_entry *e, struct greylist_conf *c, char *err, size_t errlen)
{
    c->seen = sluice_counter_new(e, "greylist_seen", "Triplets looked up");
    c->greylisted = sluice_counter_new(e, "greylist_greylisted", "Recipients refused with 451");
    c->passed = sluice_counter_new(e, "greylist_passed", "Recipients of a known triplet passed");
    c->auto_allowed = sluice_counter_new(e, "greylist_auto_allowlisted",
                                         "Recipients passed by the network auto-allowlist");
    c->store_failures = sluice_counter_new(e, "greylist_store_failures",
                                           "Store operations that failed (fail open/tempfail)");
    if (!c->seen || !c->greylisted || !c->passed || !c->auto_allowed || !c->store_failures) {
        snprintf(err, errlen, "cannot create the metrics");
        return -1;
    }
    return 0;
}

static void free_strings(char **list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        free(list[i]);
    free(list);
}

void greylist_conf_free(struct greylist_conf *c)
{
    if (!c)
        return;
    sluice_netlist_free(c->allow_nets);
    free_strings(c->allow_senders, c->nallow_senders);
    free_strings(c->allow_rcpts, c->nallow_rcpts);
    free_strings(c->skip_notes, c->nskip_notes);
    greylist_gate_destroy(&c->gate);
    free(c);
}

int greylist_conf_load(sluice_entry *e, struct greylist_conf **out, char *err, size_t errlen)
{
    struct greylist_conf *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->entry = e;
    greylist_gate_init(&c->gate);
    c->times = (struct greylist_times){DEFAULT_MIN_DELAY_MS, DEFAULT_RETRY_WINDOW_MS,
                                       DEFAULT_LIFETIME_MS, DEFAULT_REFRESH_MS};
    c->v4_prefix = DEFAULT_V4_PREFIX;
    c->v6_prefix = DEFAULT_V6_PREFIX;
    c->auto_allowlist = DEFAULT_AUTO_ALLOWLIST;
    c->strip_tags = true;
    if (sluice_settings_check(e, "", top_names, err, errlen) < 0 ||
        parse_times(e, c, err, errlen) < 0 || parse_scalars(e, c, err, errlen) < 0 ||
        parse_lists(e, c, err, errlen) < 0 || make_counters(e, c, err, errlen) < 0) {
        greylist_conf_free(c);
        return -1;
    }
    *out = c;
    return 0;
}
