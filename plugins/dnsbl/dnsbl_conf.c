/* Reading and checking a dnsbl entry's settings (its conf.d file). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnsbl.h"

#define DEFAULT_THRESHOLD 1.0
#define DEFAULT_WEIGHT 1.0
#define DEFAULT_HEALTH_INTERVAL_MS (5 * 60 * 1000)
#define DEFAULT_QUERY_TIMEOUT_MS (5 * 1000) /* below the default entry timeout (10s) */
#define DEFAULT_NEGATIVE_TTL_MS (60 * 1000)
#define DEFAULT_MIN_TTL_MS (10 * 1000)
#define DEFAULT_MAX_TTL_MS (60 * 60 * 1000)
#define DEFAULT_CACHE_SIZE 4096
#define MAX_CACHE_SIZE (1 << 20)
#define MAX_ZONES 64
#define MAX_CODES 32
#define ZONE_NAME_MAX 190 /* leaves room for 64 nibbles of an IPv6 query */

static const char *const top_names[] = {
    "zones", "threshold", "defer", "allowlist", "health_interval", "query_timeout",
    "negative_ttl", "min_ttl", "max_ttl", "cache_size", NULL,
};
static const char *const zone_names[] = {
    "zone", "weight", "action", "type", "codes", "reason", NULL,
};
static const char *const code_names[] = {"ip", "weight", NULL};

/* A number given as 1 or 1.0. */
static int get_number(const sluice_entry *e, const char *path, double *out)
{
    int rc = sluice_setting_double(e, path, out);
    if (rc != -1)
        return rc;
    int64_t v;
    rc = sluice_setting_int(e, path, &v);
    if (rc == 0)
        *out = (double)v;
    return rc;
}

static int get_duration(const sluice_entry *e, const char *path, int64_t *ms, char *err,
                        size_t errlen)
{
    int rc = sluice_setting_duration(e, path, ms);
    if (rc < 0 || (rc == 0 && *ms < 0))
        return sluice_setting_fail(e, path, err, errlen, "expected a duration such as \"30s\" or \"5m\"");
    return 0;
}

static int parse_action(const sluice_entry *e, const char *path, struct dnsbl_zone *z, char *err,
                        size_t errlen)
{
    const char *v = "reject";
    if (sluice_setting_string(e, path, &v) < 0)
        return sluice_setting_fail(e, path, err, errlen, "expected a string");
    if (strcmp(v, "reject") == 0)
        z->action = DNSBL_REJECT;
    else if (strcmp(v, "score") == 0)
        z->action = DNSBL_SCORE;
    else if (strcmp(v, "allow") == 0)
        z->action = DNSBL_ALLOW;
    else
        return sluice_setting_fail(e, path, err, errlen, "expected \"reject\", \"score\" or \"allow\"");
    return 0;
}

static int parse_type(const sluice_entry *e, const char *path, struct dnsbl_zone *z, char *err,
                      size_t errlen)
{
    static const struct {
        const char *name;
        unsigned targets;
    } types[] = {
        {"ip", DNSBL_T_IP},         {"ip4", DNSBL_T_IP4},       {"ip6", DNSBL_T_IP6},
        {"helo", DNSBL_T_HELO},     {"sender", DNSBL_T_SENDER}, {"domain", DNSBL_T_DOMAIN},
    };
    const char *v = "ip";
    if (sluice_setting_string(e, path, &v) < 0)
        return sluice_setting_fail(e, path, err, errlen, "expected a string");
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strcmp(v, types[i].name) == 0) {
            z->targets = types[i].targets;
            return 0;
        }
    }
    return sluice_setting_fail(e, path, err, errlen,
                "expected \"ip\", \"ip4\", \"ip6\", \"helo\", \"sender\" or \"domain\"");
}

static int parse_code(const sluice_entry *e, const char *base, struct dnsbl_code *c, double zone_w,
                      char *err, size_t errlen)
{
    char path[192];
    if (sluice_settings_check(e, base, code_names, err, errlen) < 0)
        return -1;
    snprintf(path, sizeof path, "%s.ip", base);
    const char *ip;
    if (sluice_setting_string(e, path, &ip) != 0 || !dnsbl_code_parse(ip, c))
        return sluice_setting_fail(e, path, err, errlen, "expected an address such as \"127.0.0.4\" "
                                          "or a network such as \"127.0.0.0/24\"");
    c->weight = zone_w;
    snprintf(path, sizeof path, "%s.weight", base);
    if (get_number(e, path, &c->weight) < 0)
        return sluice_setting_fail(e, path, err, errlen, "expected a number");
    return 0;
}

static int parse_codes(const sluice_entry *e, const char *base, struct dnsbl_zone *z, char *err,
                       size_t errlen)
{
    char path[128];
    snprintf(path, sizeof path, "%s.codes", base);
    int n = sluice_setting_count(e, path);
    if (n < 0)
        return sluice_setting_line(e, path) == 0
                   ? 0
                   : sluice_setting_fail(e, path, err, errlen, "expected a list of { ip = ...; weight = ...; }");
    if (n > MAX_CODES)
        return sluice_setting_fail(e, path, err, errlen, "at most %d codes", MAX_CODES);
    z->codes = calloc((size_t)n + 1, sizeof *z->codes);
    if (!z->codes)
        return sluice_setting_fail(e, path, err, errlen, "out of memory");
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s.codes.[%d]", base, i);
        if (parse_code(e, path, &z->codes[i], z->weight, err, errlen) < 0)
            return -1;
    }
    z->ncodes = (size_t)n;
    return 0;
}

static int parse_zone_name(const sluice_entry *e, const char *base, struct dnsbl_zone *z,
                           char *err, size_t errlen)
{
    char path[128], name[DNSBL_NAME_MAX];
    snprintf(path, sizeof path, "%s.zone", base);
    const char *v;
    if (sluice_setting_string(e, path, &v) != 0 || strlen(v) > ZONE_NAME_MAX ||
        !dnsbl_domain_normalize(v, strlen(v), name, sizeof name))
        return sluice_setting_fail(e, path, err, errlen, "expected a zone name such as \"zen.example.org\"");
    z->name = strdup(name);
    return z->name ? 0 : sluice_setting_fail(e, path, err, errlen, "out of memory");
}

static int parse_zone(const sluice_entry *e, int i, struct dnsbl_zone *z, char *err,
                      size_t errlen)
{
    char base[64], path[128];
    snprintf(base, sizeof base, "zones.[%d]", i);
    if (sluice_settings_check(e, base, zone_names, err, errlen) < 0 ||
        parse_zone_name(e, base, z, err, errlen) < 0)
        return -1;
    z->weight = DEFAULT_WEIGHT;
    snprintf(path, sizeof path, "%s.weight", base);
    if (get_number(e, path, &z->weight) < 0)
        return sluice_setting_fail(e, path, err, errlen, "expected a number");
    snprintf(path, sizeof path, "%s.action", base);
    if (parse_action(e, path, z, err, errlen) < 0)
        return -1;
    snprintf(path, sizeof path, "%s.type", base);
    if (parse_type(e, path, z, err, errlen) < 0)
        return -1;
    bool reason = true;
    snprintf(path, sizeof path, "%s.reason", base);
    if (sluice_setting_bool(e, path, &reason) < 0)
        return sluice_setting_fail(e, path, err, errlen, "expected true or false");
    z->want_reason = reason && z->action == DNSBL_REJECT;
    atomic_init(&z->disabled, false);
    atomic_init(&z->next_probe_ms, 0);
    return parse_codes(e, base, z, err, errlen);
}

static int parse_zones(const sluice_entry *e, struct dnsbl_conf *c, char *err, size_t errlen)
{
    int n = sluice_setting_count(e, "zones");
    if (n <= 0)
        return sluice_setting_fail(e, "zones", err, errlen, "required: a non-empty list of zone groups");
    if (n > MAX_ZONES)
        return sluice_setting_fail(e, "zones", err, errlen, "at most %d zones", MAX_ZONES);
    c->zones = calloc((size_t)n, sizeof *c->zones);
    if (!c->zones)
        return sluice_setting_fail(e, "zones", err, errlen, "out of memory");
    for (int i = 0; i < n; i++) {
        c->nzones = (size_t)i + 1;
        if (parse_zone(e, i, &c->zones[i], err, errlen) < 0)
            return -1;
        if (c->zones[i].action == DNSBL_REJECT)
            c->reject_targets |= c->zones[i].targets;
        else if (c->zones[i].action == DNSBL_SCORE)
            c->score_targets |= c->zones[i].targets;
    }
    return 0;
}

static int parse_allowlist(const sluice_entry *e, struct dnsbl_conf *c, char *err, size_t errlen)
{
    return sluice_setting_netlist(e, "allowlist", &c->allow, err, errlen);
}

static int parse_durations(const sluice_entry *e, struct dnsbl_conf *c, char *err, size_t errlen)
{
    if (get_duration(e, "health_interval", &c->health_interval_ms, err, errlen) < 0 ||
        get_duration(e, "query_timeout", &c->query_timeout_ms, err, errlen) < 0 ||
        get_duration(e, "negative_ttl", &c->negative_ttl_ms, err, errlen) < 0 ||
        get_duration(e, "min_ttl", &c->min_ttl_ms, err, errlen) < 0 ||
        get_duration(e, "max_ttl", &c->max_ttl_ms, err, errlen) < 0)
        return -1;
    if (c->min_ttl_ms > c->max_ttl_ms)
        return sluice_setting_fail(e, "min_ttl", err, errlen, "must not exceed max_ttl");
    return 0;
}

static int parse_top(const sluice_entry *e, struct dnsbl_conf *c, char *err, size_t errlen)
{
    if (get_number(e, "threshold", &c->threshold) < 0)
        return sluice_setting_fail(e, "threshold", err, errlen, "expected a number");
    /* A client listed nowhere sums 0: a threshold it reaches refuses every
     * recipient of every client. */
    if (!(c->threshold > 0))
        return sluice_setting_fail(e, "threshold", err, errlen,
                                   "must be above 0 (a client listed nowhere sums 0)");
    if (sluice_setting_bool(e, "defer", &c->defer) < 0)
        return sluice_setting_fail(e, "defer", err, errlen, "expected true or false");
    if (sluice_setting_int(e, "cache_size", &c->cache_size) < 0 || c->cache_size < 0 ||
        c->cache_size > MAX_CACHE_SIZE)
        return sluice_setting_fail(e, "cache_size", err, errlen, "expected an integer 0..%d", MAX_CACHE_SIZE);
    return parse_durations(e, c, err, errlen);
}

static int make_counters(sluice_entry *e, struct dnsbl_conf *c, char *err, size_t errlen)
{
    c->queries = sluice_counter_new(e, "dnsbl_queries", "DNSBL queries sent (A)");
    c->listings = sluice_counter_new(e, "dnsbl_listings", "Lookups that found a listing");
    c->timeouts = sluice_counter_new(e, "dnsbl_timeouts", "Lookups that failed or timed out");
    c->cache_hits = sluice_counter_new(e, "dnsbl_cache_hits", "Lookups answered by the cache");
    c->rejects = sluice_counter_new(e, "dnsbl_rejects", "Sessions rejected or deferred");
    c->disables = sluice_counter_new(e, "dnsbl_zone_disables", "Zones disabled as misbehaving");
    if (!c->queries || !c->listings || !c->timeouts || !c->cache_hits || !c->rejects ||
        !c->disables) {
        snprintf(err, errlen, "cannot create the metrics");
        return -1;
    }
    return 0;
}

void dnsbl_conf_free(struct dnsbl_conf *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nzones; i++) {
        free(c->zones[i].name);
        free(c->zones[i].codes);
    }
    free(c->zones);
    sluice_netlist_free(c->allow);
    free(c);
}

int dnsbl_conf_load(sluice_entry *e, struct dnsbl_conf **out, char *err, size_t errlen)
{
    struct dnsbl_conf *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->entry = e;
    atomic_init(&c->health_thread_taken, false);
    c->threshold = DEFAULT_THRESHOLD;
    c->defer = true;
    c->health_interval_ms = DEFAULT_HEALTH_INTERVAL_MS;
    c->query_timeout_ms = DEFAULT_QUERY_TIMEOUT_MS;
    c->negative_ttl_ms = DEFAULT_NEGATIVE_TTL_MS;
    c->min_ttl_ms = DEFAULT_MIN_TTL_MS;
    c->max_ttl_ms = DEFAULT_MAX_TTL_MS;
    c->cache_size = DEFAULT_CACHE_SIZE;
    if (sluice_settings_check(e, "", top_names, err, errlen) < 0 ||
        parse_top(e, c, err, errlen) < 0 || parse_zones(e, c, err, errlen) < 0 ||
        parse_allowlist(e, c, err, errlen) < 0 || make_counters(e, c, err, errlen) < 0) {
        dnsbl_conf_free(c);
        return -1;
    }
    *out = c;
    return 0;
}
