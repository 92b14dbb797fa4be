/* A session's DNSBL lookups: A and TXT queries in parallel through the
 * host's resolver, the per-thread cache, and the evaluation of a finished
 * phase into sums of weights. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dnsbl.h"

int64_t dnsbl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void batch_free_list(struct dnsbl_batch *b)
{
    while (b) {
        struct dnsbl_batch *next = b->next_retired;
        free(b);
        b = next;
    }
}

static void result_clear(struct dnsbl_result *r)
{
    free(r->reason);
    free(r->listed);
    memset(r, 0, sizeof *r);
}

void dnsbl_batches_free(struct dnsbl_sess *ss)
{
    for (int i = 0; i < DNSBL_PH_COUNT; i++) {
        free(ss->batch[i]);
        ss->batch[i] = NULL;
        result_clear(&ss->result[i]);
    }
    batch_free_list(ss->retired);
    ss->retired = NULL;
}

/* A batch whose answers are still due stays allocated (its queries hold
 * pointers into it) until the session ends. */
static void retired_sweep(struct dnsbl_sess *ss)
{
    struct dnsbl_batch **link = &ss->retired;
    while (*link) {
        struct dnsbl_batch *b = *link;
        if (b->outstanding == 0) {
            *link = b->next_retired;
            free(b);
        } else {
            link = &b->next_retired;
        }
    }
}

static void batch_retire(struct dnsbl_sess *ss, struct dnsbl_batch *b)
{
    retired_sweep(ss);
    if (!b)
        return;
    if (b->outstanding == 0) {
        free(b);
        return;
    }
    b->retired = true;
    b->next_retired = ss->retired;
    ss->retired = b;
}

bool dnsbl_phase_done(const struct dnsbl_sess *ss, enum dnsbl_phase_id ph)
{
    return ss->batch[ph] == NULL || ss->result[ph].done;
}

/* ---- evaluation ------------------------------------------------------------ */

/* A name that does not fit, or finds no memory, is left out of the list
 * (the note and the log line); its weight counts all the same. */
static void append_name(char **list, const char *name)
{
    size_t len = *list ? strlen(*list) : 0;
    size_t add = strlen(name) + (len ? 1 : 0);
    if (len + add >= DNSBL_LISTED_MAX)
        return;
    char *grown = realloc(*list, len + add + 1);
    if (!grown)
        return;
    snprintf(grown + len, add + 1, "%s%s", len ? "," : "", name);
    *list = grown;
}

static void listing_evaluate(struct dnsbl_sess *ss, const struct dnsbl_lookup *l,
                             struct dnsbl_result *r)
{
    const struct dnsbl_zone *z = l->zone;
    if (!l->answer.listed || atomic_load(&z->disabled))
        return;
    bool matched;
    double w = dnsbl_listing_weight(z->weight, z->codes, z->ncodes, l->answer.codes,
                                    l->answer.ncodes, &matched);
    if (!matched)
        return;
    sluice_counter_add(ss->conf->listings, 1);
    append_name(&r->listed, z->name);
    if (z->action == DNSBL_ALLOW) {
        r->allow = true;
    } else if (z->action == DNSBL_SCORE) {
        r->score_sum += w;
    } else {
        r->reject_sum += w;
        if (!r->culprit && w > 0) {
            r->culprit = z;
            r->reason = l->answer.reason[0] ? strdup(l->answer.reason) : NULL;
        }
    }
}

static void batch_evaluate(struct dnsbl_batch *b)
{
    struct dnsbl_sess *ss = b->sess;
    struct dnsbl_result *r = &ss->result[b->phase];
    result_clear(r);
    for (size_t i = 0; i < b->n; i++)
        listing_evaluate(ss, &b->lk[i], r);
    r->done = true;
}

static void batch_settle(sluice_session *s, struct dnsbl_batch *b)
{
    if (--b->outstanding > 0 || b->retired)
        return;
    batch_evaluate(b);
    /* The result is all the session keeps: a phase without a batch is done
     * (dnsbl_phase_done), and nothing refers to the batch any more. */
    struct dnsbl_sess *ss = b->sess;
    enum dnsbl_phase_id ph = b->phase;
    ss->batch[ph] = NULL;
    free(b);
    dnsbl_phase_finished(s, ss, ph);
}

/* ---- answers ---------------------------------------------------------------- */

static int64_t clamp_ttl_ms(const struct dnsbl_conf *c, int64_t ms)
{
    if (ms < c->min_ttl_ms)
        return c->min_ttl_ms;
    return ms > c->max_ttl_ms ? c->max_ttl_ms : ms;
}

static void lookup_cache(struct dnsbl_lookup *l)
{
    struct dnsbl_sess *ss = l->batch->sess;
    if (l->bad || l->status == SLUICE_DNS_TEMPFAIL)
        return;
    int64_t ms = l->answer.listed ? (int64_t)l->ttl * 1000 : ss->conf->negative_ttl_ms;
    dnsbl_cache_put(ss->cache, l->name, dnsbl_now_ms() + clamp_ttl_ms(ss->conf, ms), &l->answer);
}

static void lookup_answered(sluice_session *s, struct dnsbl_lookup *l)
{
    if (--l->answers_due > 0)
        return;
    if (!l->batch->retired)
        lookup_cache(l);
    batch_settle(s, l->batch);
}

static void note_failure(sluice_session *s, struct dnsbl_lookup *l)
{
    sluice_counter_add(l->batch->sess->conf->timeouts, 1);
    sluice_log(s, SLUICE_LOG_WARN, "zone %s: lookup of %s failed (timeout or error); "
               "ignored (fail open)", l->zone->name, l->name);
}

static void take_a_records(sluice_session *s, struct dnsbl_lookup *l, const char *const *rr,
                           size_t nrr)
{
    for (size_t i = 0; i < nrr; i++) {
        uint32_t a;
        if (!dnsbl_answer_parse(rr[i], &a) || dnsbl_answer_classify(a) == DNSBL_ANSWER_BAD) {
            char why[320];
            l->bad = true;
            snprintf(why, sizeof why, "it answered %.40s for %s", rr[i], l->name);
            dnsbl_zone_disable(l->batch->sess->conf, s, l->zone, why);
            continue;
        }
        if (l->answer.ncodes < DNSBL_MAX_ANSWERS)
            l->answer.codes[l->answer.ncodes++] = a;
    }
    l->answer.listed = !l->bad && l->answer.ncodes > 0;
    if (l->bad)
        l->answer.ncodes = 0;
}

static void a_answer_cb(sluice_session *s, void *arg, enum sluice_dns_status st,
                        const char *const *rr, size_t nrr, uint32_t ttl)
{
    struct dnsbl_lookup *l = arg;
    l->status = st;
    l->ttl = ttl;
    if (st == SLUICE_DNS_TEMPFAIL && !l->batch->retired)
        note_failure(s, l);
    if (st == SLUICE_DNS_OK)
        take_a_records(s, l, rr, nrr);
    lookup_answered(s, l);
}

static void txt_answer_cb(sluice_session *s, void *arg, enum sluice_dns_status st,
                          const char *const *rr, size_t nrr, uint32_t ttl)
{
    struct dnsbl_lookup *l = arg;
    if (st == SLUICE_DNS_OK && nrr > 0)
        snprintf(l->answer.reason, sizeof l->answer.reason, "%s", rr[0]);
    lookup_answered(s, l);
}

/* ---- starting ---------------------------------------------------------------- */

static void lookup_start(sluice_session *s, struct dnsbl_lookup *l, bool want_txt)
{
    struct dnsbl_conf *c = l->batch->sess->conf;
    if (dnsbl_cache_get(l->batch->sess->cache, l->name, dnsbl_now_ms(), &l->answer)) {
        sluice_counter_add(c->cache_hits, 1);
        l->status = l->answer.listed ? SLUICE_DNS_OK : SLUICE_DNS_NOTFOUND;
        return;
    }
    l->batch->outstanding++;
    l->answers_due = 1 + want_txt;
    sluice_counter_add(c->queries, 1);
    if (want_txt &&
        sluice_dns_query(s, l->name, SLUICE_DNS_TXT, c->query_timeout_ms, txt_answer_cb, l) < 0)
        l->answers_due--;
    if (sluice_dns_query(s, l->name, SLUICE_DNS_A, c->query_timeout_ms, a_answer_cb, l) < 0) {
        l->status = SLUICE_DNS_TEMPFAIL;
        note_failure(s, l);
        lookup_answered(s, l);
    }
}

static void lookup_add(struct dnsbl_batch *b, struct dnsbl_zone *z, const char *prefix)
{
    struct dnsbl_lookup *l = &b->lk[b->n];
    if (!dnsbl_query_name(prefix, z->name, l->name, sizeof l->name))
        return;
    l->batch = b;
    l->zone = z;
    l->status = SLUICE_DNS_NOTFOUND;
    b->n++;
}

/* A disabled zone is not asked: its health check (dnsbl_health.c) decides
 * when it counts again. */
static struct dnsbl_batch *batch_build(struct dnsbl_sess *ss, enum dnsbl_phase_id ph,
                                       unsigned targets, const char *prefix)
{
    struct dnsbl_conf *c = ss->conf;
    struct dnsbl_batch *b = calloc(1, sizeof *b + c->nzones * sizeof b->lk[0]);
    if (!b)
        return NULL;
    b->sess = ss;
    b->phase = ph;
    for (size_t i = 0; i < c->nzones; i++) {
        struct dnsbl_zone *z = &c->zones[i];
        if ((z->targets & targets) && !atomic_load(&z->disabled))
            lookup_add(b, z, prefix);
    }
    return b;
}

void dnsbl_phase_reset(struct dnsbl_sess *ss, enum dnsbl_phase_id ph)
{
    batch_retire(ss, ss->batch[ph]);
    ss->batch[ph] = NULL;
    result_clear(&ss->result[ph]);
}

void dnsbl_phase_abandon(struct dnsbl_sess *ss, enum dnsbl_phase_id ph)
{
    if (dnsbl_phase_done(ss, ph))
        return;
    batch_retire(ss, ss->batch[ph]);
    ss->batch[ph] = NULL;
}

int dnsbl_phase_start(sluice_session *s, struct dnsbl_sess *ss, enum dnsbl_phase_id ph,
                      unsigned targets, const char *prefix)
{
    dnsbl_phase_reset(ss, ph);
    struct dnsbl_batch *b = batch_build(ss, ph, targets, prefix);
    if (!b)
        return -1;
    ss->batch[ph] = b;
    b->outstanding = 1; /* held while starting, so no answer finishes the phase early */
    for (size_t i = 0; i < b->n; i++) {
        struct dnsbl_lookup *l = &b->lk[i];
        lookup_start(s, l, l->zone->want_reason);
    }
    batch_settle(s, b);
    return 0;
}
