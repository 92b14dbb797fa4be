/* Relay control: may this recipient be relayed for this client, and to
 * which pool. Decided before any plugin runs and before any backend is
 * touched, so sluice is never an open relay, not even through a backend
 * that trusts sluice's address. */
#ifndef SLUICE_RELAY_CONTROL_H
#define SLUICE_RELAY_CONTROL_H

#include <stdbool.h>

struct sluice_config;
struct smtp_path;

enum relay_verdict {
    RELAY_OK,
    RELAY_NO_ROUTE,       /* no route names the recipient's domain */
    RELAY_SENDER_ROUTING, /* %, !, @ in the local part, or a source route */
    RELAY_UNNORMALISED,   /* the domain is not in the form a backend would deliver to */
};

struct relay_decision {
    enum relay_verdict verdict;
    int pool; /* index into cfg->pools when verdict is RELAY_OK, else -1 */
};

/* The decision for one RCPT path. trusted: the client is in relay_networks
 * (or authenticated): it may relay anywhere through the default pool and
 * route by address as it likes. Everybody else must name a routed domain
 * in plain form: no sender-specified routing (Postfix's
 * allow_untrusted_routing = no) unless the pool allows it, and a non-ASCII
 * domain already in the form IDNA (UTS #46) mapping would give it. */
struct relay_decision relay_control(const struct sluice_config *cfg, bool trusted,
                                    const struct smtp_path *path);

/* A few words for the log ("sender-specified routing"). */
const char *relay_verdict_reason(enum relay_verdict v);

#endif
