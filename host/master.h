/* The master process: owns the configuration and the listening sockets,
 * forks the worker, restarts it when it dies, and relays signals to it.
 * Runs no plugin code. */
#ifndef SLUICE_MASTER_H
#define SLUICE_MASTER_H

struct sluice_config;

/* Runs until stopped; returns the process exit status. Takes cfg (a reload
 * replaces it). */
int master_run(struct sluice_config *cfg);

#endif
