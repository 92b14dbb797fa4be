/* sluice-check: runs the configured chain for one scripted session, the
 * same code as the daemon, with no listener and no backend. */
#ifndef SLUICE_CHECK_H
#define SLUICE_CHECK_H

#include <stdbool.h>
#include <stddef.h>

struct sluice_config;

struct check_opts {
    const char *client;  /* client address, e.g. "192.0.2.1" */
    int client_port;
    const char *helo;
    bool esmtp;
    const char *sender;  /* "" for <> */
    const char **rcpts;
    size_t nrcpts;
    const char *message_file; /* NULL: no DATA */
    bool live_store;          /* read the configured store (read-only), not a scratch one */
};

/* Prints each entry's verdict at each hook and every reply on stdout.
 * Returns 0 when the message (or, without one, every recipient) would be
 * accepted, 1 when something was refused, 2 on a setup error. */
int check_run(const struct sluice_config *cfg, const struct check_opts *o);

#endif
