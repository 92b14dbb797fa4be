#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "master.h"
#include "plugin_host.h"

#define SLUICE_DEFAULT_CONFIG SLUICE_SYSCONFDIR "/sluice.conf"

static void usage(FILE *out)
{
    fprintf(out, "usage: sluice [-t] [-c FILE]\n"
                 "  -c FILE  configuration (default " SLUICE_DEFAULT_CONFIG ")\n"
                 "  -t       check the configuration and exit\n"
                 "  -V       print the version\n");
}

int main(int argc, char **argv)
{
    const char *path = SLUICE_DEFAULT_CONFIG;
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'V':
            printf("sluice %s\n", SLUICE_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    struct sluice_config *cfg = NULL;
    char err[1024];
    if (config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check_only) {
        /* The chain is built too: a plugin checks its own settings in init(). */
        struct chain *chain = chain_build(cfg, NULL, 1, err, sizeof err);
        if (!chain) {
            fprintf(stderr, "%s\n", err);
            config_free(cfg);
            return 1;
        }
        chain_free(chain);
        printf("configuration ok\n");
        config_free(cfg);
        return 0;
    }
    enum log_level level = SLOG_INFO;
    if (cfg->log_level && log_level_parse(cfg->log_level, &level) == 0)
        log_set_level(level);
    int rc = master_run(cfg);
    config_free(cfg);
    return rc;
}
