#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "io.h"
#include "log.h"
#include "master.h"
#include "paths.h"
#include "plugin_host.h"
#include "privileges.h"
#include "restart_only.h"
#include "sluice/plugin.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sluice [-t] [-c FILE]\n"
            "SMTP filtering proxy: runs every session through the plugin chain of conf.d\n"
            "and relays what passes to the backend pools.\n"
            "  -c, --config FILE  configuration (default %s)\n"
            "  -t, --test         check the configuration and the chain, then exit\n"
            "  -V, --version      print the version, the SDK ABI and the default paths\n"
            "  -h, --help         print this help\n",
            paths_default_config());
}

static void version(void)
{
    printf("sluice %s\n"
           "plugin ABI %d.%d\n"
           "prefix %s\n"
           "configuration %s\n"
           "plugin directory %s\n",
           SLUICE_VERSION, SLUICE_ABI_MAJOR, SLUICE_ABI_MINOR, paths_prefix(),
           paths_default_config(), paths_plugin_dir());
}

/* With sluice running (its state file exists): what in this file the
 * running instance would take only at a restart. */
static void check_restart_only(const struct sluice_config *cfg)
{
    char *running = restart_only_read_state(cfg->state_file);
    char *next = malloc(RESTART_ONLY_TEXT_MAX);
    if (running && next && restart_only_describe(cfg, next, RESTART_ONLY_TEXT_MAX) == 0) {
        const char *names[RESTART_ONLY_MAX_CHANGED];
        size_t n = restart_only_changed(running, next, names, RESTART_ONLY_MAX_CHANGED);
        for (size_t i = 0; i < n; i++)
            printf("'%s' differs from the running sluice (%s): it needs a restart, a reload "
                   "keeps the running value\n",
                   names[i], cfg->state_file);
    }
    free(running);
    free(next);
}

/* The part of sluice -t that runs as the worker's user: what it must read
 * and write, and the chain (a plugin checks its own settings and files in
 * init(), with the rights it will have). */
static int check_as_worker(const struct sluice_config *cfg, char *err, size_t errlen)
{
    char why[700];
    if (privileges_check_paths(cfg, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: the worker (user %s) %s", cfg->path,
                 cfg->run_as_root ? "root" : cfg->user, why);
        return -1;
    }
    struct chain *chain = chain_build(cfg, NULL, 1, err, errlen);
    if (!chain)
        return -1;
    chain_free(chain);
    return 0;
}

/* sluice -t: the files, the worker's user, and then the rest as that user. */
static int check_config(const struct sluice_config *cfg)
{
    char err[1024];
    struct run_as run_as;
    if (privileges_resolve(cfg, &run_as, err, sizeof err) < 0 ||
        privileges_check_layout(cfg, err, sizeof err) < 0 ||
        privileges_check_as_worker(cfg, &run_as, check_as_worker, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    check_restart_only(cfg);
    printf("configuration ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    io_use_own_allocator();
    const char *path = paths_default_config();
    bool check_only = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'V':
            version();
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sluice: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    struct sluice_config *cfg = NULL;
    char err[1024];
    if (config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check_only) {
        int rc = check_config(cfg);
        config_free(cfg);
        return rc;
    }
    enum log_level level = SLOG_INFO;
    if (cfg->log_level && log_level_parse(cfg->log_level, &level) == 0)
        log_set_level(level);
    return master_run(cfg);
}
