#define _GNU_SOURCE /* setresuid, setresgid */
#include "privileges.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#if defined(__SANITIZE_ADDRESS__)
#define PRIVILEGES_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PRIVILEGES_ASAN 1
#endif
#endif

/* Created by the master for the worker's user: nobody else needs to read
 * greylisting triplets. */
#define PRIVILEGES_STORE_DIR_MODE 0750
#define PRIVILEGES_ERR_MAX 600

static int resolve_group(const struct sluice_config *cfg, const struct passwd *pw,
                         struct run_as *ra, char *err, size_t errlen)
{
    ra->gid = pw->pw_gid;
    const struct group *gr = cfg->group ? getgrnam(cfg->group) : getgrgid(pw->pw_gid);
    if (!gr && cfg->group) {
        snprintf(err, errlen, "%s: group \"%s\" does not exist", cfg->path, cfg->group);
        return -1;
    }
    if (gr) {
        ra->gid = gr->gr_gid;
        snprintf(ra->group, sizeof ra->group, "%s", gr->gr_name);
    } else {
        snprintf(ra->group, sizeof ra->group, "%lu", (unsigned long)ra->gid);
    }
    ra->ngroups = PRIVILEGES_MAX_GROUPS;
    if (getgrouplist(pw->pw_name, ra->gid, ra->groups, &ra->ngroups) < 0) {
        snprintf(err, errlen, "%s: user \"%s\" is in more than %d groups", cfg->path, pw->pw_name,
                 PRIVILEGES_MAX_GROUPS);
        return -1;
    }
    return 0;
}

int privileges_resolve(const struct sluice_config *cfg, struct run_as *ra, char *err,
                       size_t errlen)
{
    memset(ra, 0, sizeof *ra);
    ra->uid = geteuid();
    ra->gid = getegid();
    if (cfg->run_as_root) {
        ra->keep_root = true;
        snprintf(ra->user, sizeof ra->user, "%lu", (unsigned long)ra->uid);
        return 0;
    }
    const struct passwd *pw = getpwnam(cfg->user);
    if (!pw) {
        snprintf(err, errlen,
                 "%s: user \"%s\" does not exist: create it (adduser --system --group %s) or "
                 "set 'user'",
                 cfg->path, cfg->user, cfg->user);
        return -1;
    }
    if (pw->pw_uid == 0) {
        snprintf(err, errlen,
                 "%s: user \"%s\" is root: plugins would run as root; say run_as_root = true "
                 "if that is meant",
                 cfg->path, cfg->user);
        return -1;
    }
    ra->uid = pw->pw_uid;
    snprintf(ra->user, sizeof ra->user, "%s", pw->pw_name);
    if (resolve_group(cfg, pw, ra, err, errlen) < 0)
        return -1;
    if (geteuid() == 0) {
        ra->switch_user = true;
        return 0;
    }
    if (ra->uid == geteuid() && ra->gid == getegid())
        return 0; /* started as that user already: nothing to switch */
    snprintf(err, errlen,
             "%s: not started as root, so the worker cannot become user \"%s\" group \"%s\": "
             "start as root, or set user and group to the ones sluice runs as",
             cfg->path, ra->user, ra->group);
    return -1;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int privileges_check_layout(const struct sluice_config *cfg, char *err, size_t errlen)
{
    if (cfg->store.backend != STORE_LMDB)
        return 0;
    char *parent = dir_of(cfg->store.path);
    if (!parent) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct stat st;
    int rc = 0;
    if (stat(parent, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen,
                 "%s: store.path %s: its directory %s does not exist (sluice creates only the "
                 "store directory itself)",
                 cfg->path, cfg->store.path, parent);
        rc = -1;
    }
    free(parent);
    return rc;
}

int privileges_prepare_dirs(const struct sluice_config *cfg, const struct run_as *ra, char *err,
                            size_t errlen)
{
    if (cfg->store.backend != STORE_LMDB)
        return 0;
    const char *path = cfg->store.path;
    if (mkdir(path, PRIVILEGES_STORE_DIR_MODE) < 0) {
        if (errno == EEXIST)
            return 0; /* the operator's: its rights are checked, not changed */
        snprintf(err, errlen, "store.path %s: cannot create it: %s", path, strerror(errno));
        return -1;
    }
    if (ra->switch_user && chown(path, ra->uid, ra->gid) < 0) {
        snprintf(err, errlen, "store.path %s: cannot give it to user %s: %s", path, ra->user,
                 strerror(errno));
        return -1;
    }
    log_info(NULL, "created the store directory %s for user %s", path, ra->user);
    return 0;
}

/* Without CAP_SETPCAP (a systemd CapabilityBoundingSet) this fails; then
 * NO_NEW_PRIVS alone keeps exec from regaining anything. */
static void drop_bounding_set(void)
{
    for (int cap = 0; cap <= CAP_LAST_CAP; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            break;
}

static int clear_capabilities(char *err, size_t errlen)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof data);
    (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (syscall(SYS_capset, &hdr, data) < 0) {
        snprintf(err, errlen, "cannot drop capabilities: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static int switch_user(const struct run_as *ra, char *err, size_t errlen)
{
    drop_bounding_set();
    if (setgroups((size_t)ra->ngroups, ra->groups) < 0 ||
        setresgid(ra->gid, ra->gid, ra->gid) < 0 || setresuid(ra->uid, ra->uid, ra->uid) < 0) {
        snprintf(err, errlen, "cannot become user %s group %s: %s", ra->user, ra->group,
                 strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) {
        snprintf(err, errlen, "became user %s but could become root again", ra->user);
        return -1;
    }
    return 0;
}

int privileges_drop(const struct run_as *ra, char *err, size_t errlen)
{
    if (ra->switch_user && switch_user(ra, err, errlen) < 0)
        return -1;
    if (!ra->keep_root && clear_capabilities(err, errlen) < 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        snprintf(err, errlen, "cannot set no_new_privs: %s", strerror(errno));
        return -1;
    }
#ifdef PRIVILEGES_ASAN
    /* A process that changed its uid is not dumpable, and LeakSanitizer
     * cannot then inspect its own threads: sanitizer builds only. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#endif
    return 0;
}

static int check_access(const char *what, const char *path, int mode, char *err, size_t errlen)
{
    if (access(path, mode) == 0)
        return 0;
    snprintf(err, errlen, "cannot %s %s %s: %s", (mode & W_OK) ? "write" : "read", what, path,
             strerror(errno));
    return -1;
}

int privileges_check_paths(const struct sluice_config *cfg, char *err, size_t errlen)
{
    /* The worker re-reads the files at every reload. */
    if (check_access("the configuration", cfg->path, R_OK, err, errlen) < 0)
        return -1;
    if (access(cfg->conf_dir, F_OK) == 0 &&
        check_access("conf_dir", cfg->conf_dir, R_OK | X_OK, err, errlen) < 0)
        return -1;
    if (check_access("data.spool_dir", cfg->spool_dir, W_OK | X_OK, err, errlen) < 0)
        return -1;
    /* A missing store directory is created by the master at start. */
    if (cfg->store.backend == STORE_LMDB && access(cfg->store.path, F_OK) == 0 &&
        check_access("store.path", cfg->store.path, R_OK | W_OK | X_OK, err, errlen) < 0)
        return -1;
    return 0;
}

int privileges_check_as_worker(const struct sluice_config *cfg, const struct run_as *ra,
                               privileges_check_fn check, char *err, size_t errlen)
{
    if (!ra->switch_user)
        return check(cfg, err, errlen);
    int fds[2];
    if (pipe(fds) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        char msg[PRIVILEGES_ERR_MAX] = "";
        int rc = privileges_drop(ra, msg, sizeof msg);
        if (rc == 0)
            rc = check(cfg, msg, sizeof msg);
        ssize_t n = write(fds[1], msg, strlen(msg));
        (void)n;
        _exit(rc == 0 ? 0 : 1);
    }
    close(fds[1]);
    char msg[PRIVILEGES_ERR_MAX];
    size_t len = 0;
    ssize_t n;
    while (len + 1 < sizeof msg &&
           ((n = read(fds[0], msg + len, sizeof msg - 1 - len)) > 0 || (n < 0 && errno == EINTR)))
        len += n > 0 ? (size_t)n : 0;
    msg[len] = '\0';
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    snprintf(err, errlen, "%s", len ? msg : "the check as the worker's user failed");
    return -1;
}

void privileges_describe(const struct run_as *ra, char *out, size_t outlen)
{
    if (ra->keep_root)
        snprintf(out, outlen, "uid %lu (run_as_root: plugins and scripts keep its rights)",
                 (unsigned long)ra->uid);
    else
        snprintf(out, outlen, "user %s (uid %lu) group %s (gid %lu), no capabilities",
                 ra->user, (unsigned long)ra->uid, ra->group, (unsigned long)ra->gid);
}
