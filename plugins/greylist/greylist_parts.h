/* The pure parts of the greylist plugin (no SDK calls), unit-tested on their
 * own: client networks, sender normalisation, allowlist patterns, the
 * triplet's stored record and the decision it leads to. */
#ifndef GREYLIST_PARTS_H
#define GREYLIST_PARTS_H

#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#define GREYLIST_NET_MAX 64     /* "2001:db8:1:2::/64" with room to spare */
#define GREYLIST_ADDR_MAX 512   /* a normalised address, with its NUL */
#define GREYLIST_RECORD_MAX 64  /* "A <first_ms> <stamp_ms>" */


/* The client's network as text, e.g. "192.0.2.0/24" (v4_prefix 32 or
 * v6_prefix 128: the exact address, without a suffix). An IPv4-mapped IPv6
 * address counts as IPv4. false for another family or a short buffer. */
bool greylist_client_net(const struct sockaddr *sa, unsigned v4_prefix, unsigned v6_prefix,
                         char *out, size_t outlen);

/* An envelope address made comparable: lowercase, control bytes and spaces
 * as '?'. With strip_tags, the sender's rewriting tags go: SRS0/SRS1 give
 * back the original address, BATV (prvs=, msprvs1=, btv1=) loses its tag,
 * and VERP/sub-address parts ("+ext", runs of digits as '#') are folded, so
 * a list's per-message bounce address stays one sender. "" stays "".
 * Returns false when it does not fit out. */
bool greylist_address_normalize(const char *in, size_t len, bool strip_tags, char *out,
                                size_t outlen);

/* An allowlist pattern against a normalised address: "user@example.org"
 * (that address), "example.org" (that domain), "*.example.org" (its
 * subdomains) or "@example.org" (the same as "example.org"). */
bool greylist_pattern_matches(const char *pattern, const char *address);

/* The stored state of a triplet. */
enum greylist_state { GREYLIST_PENDING, GREYLIST_ALLOWED };

struct greylist_record {
    enum greylist_state state;
    int64_t first_ms; /* first sight (wall clock, ms since the epoch) */
    int64_t stamp_ms; /* when the record was last written */
};

/* "P <first> <stamp>" / "A <first> <stamp>"; returns the length, 0 when it
 * does not fit. */
size_t greylist_record_format(const struct greylist_record *r, char *out, size_t outlen);
bool greylist_record_parse(const void *data, size_t len, struct greylist_record *r);

struct greylist_times {
    int64_t min_delay_ms;
    int64_t retry_window_ms;
    int64_t lifetime_ms;
    int64_t refresh_ms;
};

enum greylist_action {
    GREYLIST_NEW,     /* first sight: write pending, 451 */
    GREYLIST_TOO_SOON, /* retry before the delay: 451, no write */
    GREYLIST_PASS,    /* retry in the window: write allowed, pass */
    GREYLIST_KNOWN,   /* allowed, fresh enough: pass, no write */
    GREYLIST_REFRESH, /* allowed, stale stamp: rewrite allowed, pass */
};

/* What a lookup means at now. r NULL: absent (or expired). A pending record
 * past the retry window, or first seen later than now (a clock stepped
 * back), counts as first sight again. *wait_ms: for NEW and
 * TOO_SOON, how long until a retry passes. */
enum greylist_action greylist_decide(const struct greylist_record *r, int64_t now,
                                     const struct greylist_times *t, int64_t *wait_ms);

/* Rewrites of known triplets under way, shared by the loop threads: when a
 * busy sender's stamp turns stale (refresh_interval), every RCPT that reads
 * it before the first rewrite commits would write it too, a store commit
 * each. The gate lets one through per key and hold time. Keys are kept by
 * hash in a fixed table: two keys on one slot may both write (harmless,
 * the same as without the gate), never neither. */
#define GREYLIST_GATE_SLOTS 1024

struct greylist_gate {
    pthread_mutex_t mu;
    struct {
        uint64_t hash;
        int64_t until_ms;
    } slot[GREYLIST_GATE_SLOTS];
};

void greylist_gate_init(struct greylist_gate *g);
void greylist_gate_destroy(struct greylist_gate *g);
/* true: the caller writes the key (and holds it for hold_ms); false: a
 * rewrite of it was let through less than hold_ms ago. Any thread. */
bool greylist_gate_take(struct greylist_gate *g, const void *key, size_t len, int64_t now_ms,
                        int64_t hold_ms);

#endif
