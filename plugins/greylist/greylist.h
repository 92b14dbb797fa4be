/* The greylist plugin's shared types: an entry's configuration (immutable
 * after init, shared by the loop threads, but for the refresh gate, which
 * has its own lock) and a session's state. */
#ifndef GREYLIST_H
#define GREYLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/sluice.h>

#include "greylist_parts.h"

#define GREYLIST_KEY_MAX 1400    /* prefix, net, two addresses and separators */
#define GREYLIST_PREFIX_MAX 64

enum greylist_on_error { GREYLIST_FAIL_OPEN, GREYLIST_FAIL_TEMP };

struct greylist_conf {
    sluice_entry *entry;
    struct greylist_times times;
    unsigned v4_prefix, v6_prefix;
    int64_t auto_allowlist; /* passes that allowlist a network; 0: off */
    bool strip_tags;
    enum greylist_on_error on_store_error;
    char key_prefix[GREYLIST_PREFIX_MAX];
    sluice_netlist *allow_nets; /* clients never greylisted */
    char **allow_senders, **allow_rcpts, **skip_notes;
    size_t nallow_senders, nallow_rcpts, nskip_notes;
    sluice_counter *seen, *greylisted, *passed, *auto_allowed, *store_failures;
    struct greylist_gate gate; /* one rewrite per stale triplet */
};

/* How long the gate holds a triplet whose rewrite it let through: longer
 * than any store commit, far below refresh_interval's 1h default, so a
 * rewrite that failed is tried again soon. */
#define GREYLIST_GATE_HOLD_MS (60 * 1000)

int greylist_conf_load(sluice_entry *e, struct greylist_conf **out, char *err, size_t errlen);
void greylist_conf_free(struct greylist_conf *c);

/* Whether the auto-allowlist has been asked about the session's network. */
enum greylist_net_status { GREYLIST_NET_UNKNOWN, GREYLIST_NET_GREY, GREYLIST_NET_ALLOWED };

/* A session's state. The recipient hook waits for one lookup at a time, so
 * the key it waits on lives here (a cancelled lookup never calls back, and
 * the session's data outlives any that does). */
struct greylist_sess {
    struct greylist_conf *conf;
    bool skip;      /* trusted, allowlisted or vouched for: never greylisted */
    bool null_sender;
    enum greylist_net_status net_status;
    char net[GREYLIST_NET_MAX];
    char sender[GREYLIST_ADDR_MAX];
    char rcpt[GREYLIST_ADDR_MAX];
    char key[GREYLIST_KEY_MAX];
    size_t klen;
};

#endif
