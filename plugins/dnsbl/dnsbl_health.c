/* RFC 5782 health checks of an entry's zones, off the sessions: one loop
 * thread per entry (the first to start) asks every zone's test points at
 * start and then every health_interval, through the entry-level timer and
 * resolver. A zone that lists what must not be listed, or answers outside
 * 127/8, is disabled; one that passes is enabled again. Zone health is
 * atomic, so the sessions of every thread see the verdict. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnsbl.h"

/* RFC 5782 section 5 test points. */
#define PROBE4_LISTED "2.0.0.127"
#define PROBE4_UNLISTED "1.0.0.127"
#define PROBE6_LISTED "2.0.0.0.0.0.f.7.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"
#define PROBE6_UNLISTED "1.0.0.0.0.0.f.7.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"
#define PROBE_NAME_LISTED "test"
#define PROBE_NAME_UNLISTED "invalid"

/* One test point of one zone in the current round. */
struct dnsbl_probe {
    struct dnsbl_health *health;
    struct dnsbl_zone *zone;
    bool in_round;
    bool answered;
    enum sluice_dns_status status;
    bool listed;
    bool bad; /* answered outside 127/8 or with an error code */
    char name[DNSBL_NAME_MAX];
};

/* Zone i's probes are probe[2i] (must be listed) and probe[2i+1] (must not). */
struct dnsbl_health {
    struct dnsbl_conf *conf;
    size_t outstanding; /* answers still due in this round, plus one while starting */
    struct dnsbl_probe probe[];
};

void dnsbl_zone_disable(struct dnsbl_conf *c, sluice_session *s, struct dnsbl_zone *z,
                        const char *why)
{
    /* A zone that just misbehaved is asked again one interval later. */
    atomic_store(&z->next_probe_ms, dnsbl_now_ms() + c->health_interval_ms);
    if (atomic_exchange(&z->disabled, true))
        return;
    sluice_counter_add(c->disables, 1);
#define DNSBL_DISABLED_FMT                                                                     \
    "zone %s DISABLED: %s; its listings are ignored until a health check passes "             \
    "(RFC 5782: the list may refuse queries from this resolver)"
    if (s)
        sluice_log(s, SLUICE_LOG_ERR, DNSBL_DISABLED_FMT, z->name, why);
    else
        sluice_log_entry(c->entry, SLUICE_LOG_ERR, DNSBL_DISABLED_FMT, z->name, why);
}

static void zone_enable(struct dnsbl_conf *c, struct dnsbl_zone *z)
{
    if (atomic_exchange(&z->disabled, false))
        sluice_log_entry(c->entry, SLUICE_LOG_WARN, "zone %s re-enabled: its health check passed",
                         z->name);
}

static void probe_verdict(struct dnsbl_conf *c, const struct dnsbl_probe *p)
{
    const struct dnsbl_probe *q = p + 1;
    struct dnsbl_zone *z = p->zone;
    if (p->bad || q->bad) {
        dnsbl_zone_disable(c, NULL, z,
                           "a health check was answered outside 127/8 or with an error code");
        return;
    }
    if (p->status == SLUICE_DNS_TEMPFAIL || q->status == SLUICE_DNS_TEMPFAIL)
        return; /* cannot tell */
    if (q->listed) {
        dnsbl_zone_disable(c, NULL, z, "it lists the test point that must not be listed");
        return;
    }
    if (!p->listed)
        sluice_log_entry(c->entry, SLUICE_LOG_WARN,
                         "zone %s does not list its RFC 5782 test point %s", z->name, p->name);
    zone_enable(c, z);
}

static void health_arm(sluice_entry *e, struct dnsbl_health *h);

static void round_settle(sluice_entry *e, struct dnsbl_health *h)
{
    if (--h->outstanding > 0)
        return;
    for (size_t i = 0; i < h->conf->nzones; i++) {
        struct dnsbl_probe *p = &h->probe[2 * i];
        if (p->in_round)
            probe_verdict(h->conf, p);
        p->in_round = p[1].in_round = false;
    }
    health_arm(e, h);
}

static void probe_answer_cb(sluice_entry *e, void *thread_state, void *arg,
                            enum sluice_dns_status st, const char *const *rr, size_t nrr,
                            uint32_t ttl)
{
    struct dnsbl_probe *p = arg;
    p->status = st;
    for (size_t i = 0; st == SLUICE_DNS_OK && i < nrr; i++) {
        uint32_t a;
        if (!dnsbl_answer_parse(rr[i], &a) || dnsbl_answer_classify(a) == DNSBL_ANSWER_BAD)
            p->bad = true;
        else
            p->listed = true;
    }
    round_settle(e, p->health);
}

static void probe_start(sluice_entry *e, struct dnsbl_probe *p, const char *prefix)
{
    struct dnsbl_health *h = p->health;
    p->in_round = true;
    p->status = SLUICE_DNS_TEMPFAIL;
    p->listed = p->bad = false;
    if (!dnsbl_query_name(prefix, p->zone->name, p->name, sizeof p->name))
        return;
    sluice_counter_add(h->conf->queries, 1);
    h->outstanding++;
    if (sluice_entry_dns_query(e, p->name, SLUICE_DNS_A, h->conf->query_timeout_ms,
                               probe_answer_cb, p) < 0)
        h->outstanding--; /* a failed start is a tempfail: no verdict */
}

static void zone_probe(sluice_entry *e, struct dnsbl_health *h, size_t i)
{
    struct dnsbl_zone *z = &h->conf->zones[i];
    const char *listed = PROBE4_LISTED, *unlisted = PROBE4_UNLISTED;
    if (!(z->targets & DNSBL_T_IP4) && (z->targets & DNSBL_T_IP6)) {
        listed = PROBE6_LISTED;
        unlisted = PROBE6_UNLISTED;
    } else if (!(z->targets & DNSBL_T_IP)) {
        listed = PROBE_NAME_LISTED;
        unlisted = PROBE_NAME_UNLISTED;
    }
    probe_start(e, &h->probe[2 * i], listed);
    probe_start(e, &h->probe[2 * i + 1], unlisted);
}

/* A round asks the zones that are due; the next one starts when its answers
 * are all in (each query is bounded by query_timeout or the resolver). */
static void health_round(sluice_entry *e, void *thread_state, void *arg)
{
    struct dnsbl_health *h = arg;
    const struct dnsbl_conf *c = h->conf;
    int64_t now = dnsbl_now_ms();
    h->outstanding = 1;
    for (size_t i = 0; i < c->nzones; i++) {
        struct dnsbl_zone *z = &c->zones[i];
        if (now < atomic_load(&z->next_probe_ms))
            continue;
        atomic_store(&z->next_probe_ms, now + c->health_interval_ms);
        zone_probe(e, h, i);
    }
    round_settle(e, h);
}

/* The next round when the earliest zone is due (a zone disabled meanwhile
 * by a session moved its own time later, never earlier). */
static void health_arm(sluice_entry *e, struct dnsbl_health *h)
{
    const struct dnsbl_conf *c = h->conf;
    int64_t now = dnsbl_now_ms(), next = now + c->health_interval_ms;
    for (size_t i = 0; i < c->nzones; i++) {
        int64_t due = atomic_load(&c->zones[i].next_probe_ms);
        if (due < next)
            next = due;
    }
    if (sluice_entry_timer(e, next > now ? next - now : 0, health_round, h) < 0)
        sluice_log_entry(e, SLUICE_LOG_ERR, "cannot arm the health check timer: "
                                            "zones are no longer checked");
}

struct dnsbl_health *dnsbl_health_start(sluice_entry *e, struct dnsbl_conf *c)
{
    if (c->health_interval_ms <= 0 || c->nzones == 0 ||
        atomic_exchange(&c->health_thread_taken, true))
        return NULL;
    struct dnsbl_health *h = calloc(1, sizeof *h + 2 * c->nzones * sizeof h->probe[0]);
    if (!h) {
        sluice_log_entry(e, SLUICE_LOG_ERR, "out of memory: zones are not health-checked");
        return NULL;
    }
    h->conf = c;
    for (size_t i = 0; i < 2 * c->nzones; i++) {
        h->probe[i].health = h;
        h->probe[i].zone = &c->zones[i / 2];
    }
    if (sluice_entry_timer(e, 0, health_round, h) < 0) {
        sluice_log_entry(e, SLUICE_LOG_ERR, "cannot start the health checks");
        free(h);
        return NULL;
    }
    return h;
}

void dnsbl_health_free(struct dnsbl_health *h)
{
    free(h);
}
