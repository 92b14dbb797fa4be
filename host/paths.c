/* Installation paths, worked out once from /proc/self/exe. The build
 * compiles in the configured prefix and the GNUInstallDirs relative dirs;
 * when the binary runs under another prefix, the same relative dirs apply
 * there (with GNUInstallDirs' rules: the /usr prefix keeps its configuration
 * in /etc, /opt/X in /etc/opt/X). */
#include "paths.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef SLUICE_PREFIX
#define SLUICE_PREFIX "/usr/local"
#endif
#ifndef SLUICE_SYSCONFDIR
#define SLUICE_SYSCONFDIR SLUICE_PREFIX "/etc/sluice"
#endif
#ifndef SLUICE_PLUGIN_DIR
#define SLUICE_PLUGIN_DIR SLUICE_PREFIX "/lib/sluice/plugins"
#endif
#ifndef SLUICE_SYSCONFDIR_REL
#define SLUICE_SYSCONFDIR_REL "etc"
#endif
#ifndef SLUICE_LIBDIR_REL
#define SLUICE_LIBDIR_REL "lib"
#endif
#ifndef SLUICE_SBINDIR_REL
#define SLUICE_SBINDIR_REL "sbin"
#endif
#ifndef SLUICE_BINDIR_REL
#define SLUICE_BINDIR_REL "bin"
#endif

static struct {
    char prefix[PATH_MAX];
    char config[PATH_MAX];
    char plugin_dir[PATH_MAX];
} paths;
static pthread_once_t paths_once = PTHREAD_ONCE_INIT;

static bool exe_dir(char *out, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0)
        return false;
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (slash == NULL)
        return false;
    *slash = '\0';
    return true;
}

/* "<prefix>/sbin" or "<prefix>/bin" -> "<prefix>"; false for anything else. */
static bool strip_bindir(const char *dir, char *prefix, size_t cap)
{
    const char *rels[] = {SLUICE_SBINDIR_REL, SLUICE_BINDIR_REL};
    size_t dlen = strlen(dir);
    for (size_t i = 0; i < 2; i++) {
        size_t rlen = strlen(rels[i]);
        if (rels[i][0] == '/' || dlen <= rlen || dir[dlen - rlen - 1] != '/' ||
            strcmp(dir + dlen - rlen, rels[i]) != 0)
            continue;
        size_t plen = dlen - rlen - 1;
        snprintf(prefix, cap, "%.*s", (int)(plen ? plen : 1), plen ? dir : "/");
        return true;
    }
    return false;
}

static void set_configured(void)
{
    snprintf(paths.prefix, sizeof paths.prefix, "%s", SLUICE_PREFIX);
    snprintf(paths.config, sizeof paths.config, "%s/sluice.conf", SLUICE_SYSCONFDIR);
    snprintf(paths.plugin_dir, sizeof paths.plugin_dir, "%s", SLUICE_PLUGIN_DIR);
}

/* snprintf into a paths field; false when the result would not fit. */
#define PATHS_FMT(field, ...)                                                                      \
    path_fits(snprintf(paths.field, sizeof paths.field, __VA_ARGS__), sizeof paths.field)

static bool path_fits(int n, size_t cap) { return n >= 0 && (size_t)n < cap; }

/* The layout under another prefix; a path too long for PATH_MAX leaves the
 * configured one. */
static void set_relocated(const char *prefix)
{
    const char *sep = strcmp(prefix, "/") == 0 ? "" : "/";
    bool ok = PATHS_FMT(prefix, "%s", prefix);
    if (strcmp(prefix, "/usr") == 0)
        ok = ok && PATHS_FMT(config, "/etc/sluice/sluice.conf");
    else if (strncmp(prefix, "/opt/", 5) == 0)
        ok = ok && PATHS_FMT(config, "/etc%s/sluice/sluice.conf", prefix);
    else
        ok = ok && PATHS_FMT(config, "%s%s%s/sluice/sluice.conf", prefix, sep,
                             SLUICE_SYSCONFDIR_REL);
    ok = ok && PATHS_FMT(plugin_dir, "%s%s%s/sluice/plugins", prefix, sep, SLUICE_LIBDIR_REL);
    if (!ok)
        set_configured();
}

static void paths_init(void)
{
    set_configured();
    char dir[PATH_MAX], prefix[PATH_MAX];
    if (!exe_dir(dir, sizeof dir))
        return;
#ifdef SLUICE_BUILD_DIR
    char build[PATH_MAX];
    if (realpath(SLUICE_BUILD_DIR, build) && strcmp(build, dir) == 0) {
        int n = snprintf(paths.plugin_dir, sizeof paths.plugin_dir, "%s/plugins", dir);
        if (n < 0 || (size_t)n >= sizeof paths.plugin_dir)
            set_configured();
        return;
    }
#endif
    if (!strip_bindir(dir, prefix, sizeof prefix) || strcmp(prefix, SLUICE_PREFIX) == 0)
        return;
    /* An absolute sysconfdir or libdir was chosen at configure time: keep it. */
    if (SLUICE_SYSCONFDIR_REL[0] == '/' || SLUICE_LIBDIR_REL[0] == '/')
        return;
    set_relocated(prefix);
}

const char *paths_default_config(void)
{
    pthread_once(&paths_once, paths_init);
    return paths.config;
}

const char *paths_plugin_dir(void)
{
    pthread_once(&paths_once, paths_init);
    return paths.plugin_dir;
}

const char *paths_prefix(void)
{
    pthread_once(&paths_once, paths_init);
    return paths.prefix;
}
