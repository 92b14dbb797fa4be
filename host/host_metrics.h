/* The host's own metrics: what an operator of the gateway watches (sessions,
 * transactions and recipients by result class, relay denials, backend
 * connections per pool, bytes relayed, transaction durations). Each update
 * is one or two atomic operations on metrics registered by
 * host_metrics_init(); before init, or after host_metrics_free(), updates do
 * nothing (unit tests of other modules need no setup). Any thread. */
#ifndef SLUICE_HOST_METRICS_H
#define SLUICE_HOST_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct sluice_config;

/* Registers every host metric, and the per-pool series of cfg's pools so
 * they show as 0 before the first connection. May be called again with a
 * reloaded configuration (new pools are added, nothing is removed). Returns
 * 0, or -1 when out of memory (updates then do nothing). Not concurrent
 * with itself or host_metrics_free. */
int host_metrics_init(const struct sluice_config *cfg);
/* Forgets the cached metrics; call before metrics_free_all(). */
void host_metrics_free(void);

/* A client connection was accepted (after the connection limits passed),
 * and later closed: sluice_sessions_total, sluice_sessions_open. */
void host_metrics_session_opened(void);
void host_metrics_session_closed(void);
/* A connection was refused by a connection limit or for want of descriptors
 * (421 at accept). */
void host_metrics_session_refused(void);

/* A transaction ended with the final reply code given to the client at the
 * end of DATA (the backend's, or a plugin's / sluice's own 4xx/5xx); bytes
 * is the message size, counted in sluice_message_bytes_total only with a
 * 2xx (delivered to a backend); seconds since MAIL FROM. Codes outside
 * 2xx/4xx/5xx (0: the transaction was abandoned) are ignored. */
void host_metrics_transaction(int code, uint64_t bytes, double seconds);
/* The reply code given to the client for one RCPT TO (relay denials
 * included). */
void host_metrics_rcpt(int code);
/* A RCPT TO refused because the recipient matched no route and the client
 * is not trusted. */
void host_metrics_relay_denied(void);
/* One connection attempt to a server of pool (its configured name). */
void host_metrics_backend_connect(const char *pool, bool ok);
/* A client session of pool took a kept backend connection instead. */
void host_metrics_backend_reused(const char *pool);
/* A DNS question was answered from the answer cache (hit) or asked. */
void host_metrics_dns_cache(bool hit);

#endif
