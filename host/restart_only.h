/* The settings a reload cannot change (the sockets, the worker's threads,
 * user and store): written as "name value" lines, so the worker's reload
 * and `sluice -t` compare a new configuration with the running one the same
 * way. The master keeps the running one's lines in the state file. */
#ifndef SLUICE_RESTART_ONLY_H
#define SLUICE_RESTART_ONLY_H

#include <stddef.h>

struct sluice_config;

/* Longest description: a few lines per listen address. */
#define RESTART_ONLY_TEXT_MAX 16384
#define RESTART_ONLY_MAX_CHANGED 16

/* One line per restart-only setting; -1 when out does not hold them. */
int restart_only_describe(const struct sluice_config *cfg, char *out, size_t outlen);

/* The names whose lines differ between two descriptions, at most max;
 * returns how many. names point into a static table. */
size_t restart_only_changed(const char *running, const char *next, const char **names,
                            size_t max);

/* The master: the running description, for sluice -t. */
int restart_only_write_state(const char *path, const char *text);
/* NULL when there is no state file (sluice is not running). Freed by the
 * caller. */
char *restart_only_read_state(const char *path);

#endif
