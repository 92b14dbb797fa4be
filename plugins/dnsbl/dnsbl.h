/* The DNSBL plugin's shared types: an entry's configuration and zone health
 * (shared by the loop threads, so health is atomic), a session's lookups. */
#ifndef DNSBL_H
#define DNSBL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/sluice.h>

#include "dnsbl_cache.h"
#include "dnsbl_parts.h"

enum dnsbl_action { DNSBL_REJECT, DNSBL_SCORE, DNSBL_ALLOW };

/* What a zone lists (bits). */
#define DNSBL_T_IP4 1u
#define DNSBL_T_IP6 2u
#define DNSBL_T_HELO 4u
#define DNSBL_T_SENDER 8u
#define DNSBL_T_IP (DNSBL_T_IP4 | DNSBL_T_IP6)
#define DNSBL_T_DOMAIN (DNSBL_T_HELO | DNSBL_T_SENDER)

/* The longest list of zone names a phase publishes (note, log line). */
#define DNSBL_LISTED_MAX 512

struct dnsbl_zone {
    char *name;
    double weight;
    enum dnsbl_action action;
    unsigned targets;
    struct dnsbl_code *codes;
    size_t ncodes;
    bool want_reason;
    atomic_bool disabled;
    atomic_int_fast64_t next_probe_ms; /* the next health check, CLOCK_MONOTONIC ms */
};

struct dnsbl_conf {
    sluice_entry *entry;
    struct dnsbl_zone *zones;
    size_t nzones;
    double threshold;
    bool defer;
    sluice_netlist *allow; /* clients never looked up */
    int64_t health_interval_ms; /* 0: no health checks */
    int64_t query_timeout_ms;   /* 0: the resolver's own */
    int64_t negative_ttl_ms;
    int64_t min_ttl_ms;
    int64_t max_ttl_ms;
    int64_t cache_size;
    unsigned reject_targets; /* targets of zones in reject mode */
    unsigned score_targets;  /* targets of zones in score mode */
    atomic_bool health_thread_taken; /* a loop thread runs the health checks */
    sluice_counter *queries, *listings, *timeouts, *cache_hits, *rejects, *disables;
};

int dnsbl_conf_load(sluice_entry *e, struct dnsbl_conf **out, char *err, size_t errlen);
void dnsbl_conf_free(struct dnsbl_conf *c);

/* ---- zone health (dnsbl_health.c) ---------------------------------------------- */

struct dnsbl_health;

/* On a loop thread's thread_init: the first thread of the entry to call it
 * gets the health checks (at once, then every health_interval) and keeps
 * the returned state for its thread_fini; the others get NULL. */
struct dnsbl_health *dnsbl_health_start(sluice_entry *e, struct dnsbl_conf *c);
/* After the host cancelled the checks' timer and queries (thread_fini). */
void dnsbl_health_free(struct dnsbl_health *h);
/* A zone that answered badly: ignored until a health check passes, which
 * runs one interval from now. s: the session that saw it, or NULL. */
void dnsbl_zone_disable(struct dnsbl_conf *c, sluice_session *s, struct dnsbl_zone *z,
                        const char *why);

/* What a loop thread keeps for the entry. */
struct dnsbl_thread {
    struct dnsbl_cache *cache;
    struct dnsbl_health *health; /* on the thread that runs the health checks */
};

/* ---- a session's lookups ---------------------------------------------------- */

enum dnsbl_phase_id { DNSBL_PH_CONNECT, DNSBL_PH_HELO, DNSBL_PH_SENDER, DNSBL_PH_COUNT };

struct dnsbl_batch;

struct dnsbl_lookup {
    struct dnsbl_batch *batch;
    struct dnsbl_zone *zone;
    char name[DNSBL_NAME_MAX];
    int answers_due; /* A, and TXT when asked */
    enum sluice_dns_status status;
    bool bad;    /* the zone answered outside 127/8 or with an error code */
    uint32_t ttl; /* of the A answer */
    struct dnsbl_answer answer;
};

/* The lookups of one phase; replaced (and retired until its answers are in)
 * when a new HELO or MAIL restarts the phase. */
struct dnsbl_batch {
    struct dnsbl_sess *sess;
    struct dnsbl_batch *next_retired;
    enum dnsbl_phase_id phase;
    bool retired;
    size_t outstanding; /* lookups still waiting, plus one while starting */
    size_t n;
    struct dnsbl_lookup lk[];
};

/* What a finished phase found. */
struct dnsbl_result {
    bool done;
    double reject_sum;
    double score_sum;
    bool allow;
    const struct dnsbl_zone *culprit; /* first listed reject-mode zone */
    /* Allocated when there is something to say (most clients are listed
     * nowhere): fixed arrays here were 2 KB of every session. */
    char *reason; /* the culprit's TXT reason, or NULL */
    char *listed; /* zone names, comma-separated (DNSBL_LISTED_MAX), or NULL */
};

struct dnsbl_sess {
    struct dnsbl_conf *conf;
    struct dnsbl_cache *cache;
    struct dnsbl_batch *batch[DNSBL_PH_COUNT];
    struct dnsbl_batch *retired;
    struct dnsbl_result result[DNSBL_PH_COUNT];
    int waiting_hook; /* the hook that returned PENDING, or -1 */
    bool active;      /* the client is being looked up */
    bool allowlisted;
    bool session_accept_given;
    bool mark_set;
    char client[64];
    char *helo;          /* the normalized HELO name looked up, or NULL */
    char *sender_domain; /* the sender's domain looked up, or NULL */
};

int64_t dnsbl_now_ms(void);

/* Starts the phase's lookups of the enabled zones listing any of targets,
 * each "<prefix>.<zone>", replacing the phase's earlier batch. The phase may
 * finish (dnsbl_phase_finished) before this returns, when every answer is
 * cached. -1 when out of memory. */
int dnsbl_phase_start(sluice_session *s, struct dnsbl_sess *ss, enum dnsbl_phase_id ph,
                      unsigned targets, const char *prefix);
/* Forgets the phase's lookups and result (a new HELO, a new transaction). */
void dnsbl_phase_reset(struct dnsbl_sess *ss, enum dnsbl_phase_id ph);
/* Gives up the phase's unanswered lookups (the host cancelled them): what
 * they would have found is not counted. */
void dnsbl_phase_abandon(struct dnsbl_sess *ss, enum dnsbl_phase_id ph);
bool dnsbl_phase_done(const struct dnsbl_sess *ss, enum dnsbl_phase_id ph);
/* Frees the session's batches and results (the session ends). */
void dnsbl_batches_free(struct dnsbl_sess *ss);

/* Called (by dnsbl_lookup.c) when a phase's answers are all in and evaluated. */
void dnsbl_phase_finished(sluice_session *s, struct dnsbl_sess *ss, enum dnsbl_phase_id ph);

#endif
