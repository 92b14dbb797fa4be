/* Least privilege: the master stays root (it binds the ports and supervises),
 * the worker, where every plugin and script runs, becomes the configured
 * user and group before it loads any of them. */
#ifndef SLUICE_PRIVILEGES_H
#define SLUICE_PRIVILEGES_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct sluice_config;

/* Supplementary groups a worker user may be in, at most. */
#define PRIVILEGES_MAX_GROUPS 64

/* Who the worker runs as, resolved by the master before the fork (no NSS
 * look-ups in the worker). */
struct run_as {
    bool switch_user; /* false: run_as_root, or already started as the user */
    bool keep_root;   /* run_as_root = true: plugins run as root, logged */
    uid_t uid;
    gid_t gid;
    gid_t groups[PRIVILEGES_MAX_GROUPS];
    int ngroups;
    char user[64];
    char group[64];
};

/* Resolves the user and group settings; -1 with err when they do not exist,
 * or when sluice was not started as root and is not already that user. */
int privileges_resolve(const struct sluice_config *cfg, struct run_as *ra, char *err,
                       size_t errlen);

/* The checks that do not depend on the user: store.path's parent exists. */
int privileges_check_layout(const struct sluice_config *cfg, char *err, size_t errlen);

/* Master, as root, at start: creates a missing store directory (its parent
 * exists) owned by the worker's user. */
int privileges_prepare_dirs(const struct sluice_config *cfg, const struct run_as *ra, char *err,
                            size_t errlen);

/* Worker: becomes ra's user and group, keeps no capability, sets
 * PR_SET_NO_NEW_PRIVS. Irreversible. */
int privileges_drop(const struct run_as *ra, char *err, size_t errlen);

/* What the worker writes or re-reads at a reload, checked as the current
 * user: names the first path it cannot use. */
int privileges_check_paths(const struct sluice_config *cfg, char *err, size_t errlen);

/* sluice -t: check(cfg) as the worker would run it, in a child process
 * that drops privileges first (in this process when there is nothing to
 * drop). check returns 0 or -1 with err. */
typedef int (*privileges_check_fn)(const struct sluice_config *cfg, char *err, size_t errlen);
int privileges_check_as_worker(const struct sluice_config *cfg, const struct run_as *ra,
                               privileges_check_fn check, char *err, size_t errlen);

/* "user sluice (uid 101, gid 102)" or "root (run_as_root)", for logs. */
void privileges_describe(const struct run_as *ra, char *out, size_t outlen);

#endif
