/* sluice-check: test a policy before it goes live. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "log.h"
#include "paths.h"
#include "privileges.h"

#define CHECK_MAX_RCPTS 1000

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sluice-check [-c FILE] --client IP [--port N] [--helo NAME] [--smtp]\n"
            "                    --from ADDR --rcpt ADDR [--rcpt ADDR ...] [--message FILE]\n"
            "                    [--live-store] [-v]\n"
            "Runs the configured chain (conf.d) for one session, as the daemon would, with no\n"
            "listener and no backend; prints each entry's verdict at each hook, every store\n"
            "write an entry asks for, and the replies. The store is an empty scratch one;\n"
            "--live-store reads the configured store instead, read-only (writes are shown,\n"
            "not done). The configured store is never changed.\n"
            "Started as root, it first becomes the worker's user (sluice.conf's user/group).\n"
            "  -c, --config FILE  configuration (default %s)\n"
            "  --client IP        the client's address (default 192.0.2.1), --port its port\n"
            "  --helo NAME        its HELO/EHLO name (default client.example)\n"
            "  --smtp             greet with HELO instead of EHLO\n"
            "  --from ADDR        the envelope sender (\"\" for <>)\n"
            "  --rcpt ADDR        a recipient; repeat for more\n"
            "  --message FILE     the message (headers and body) sent after DATA\n"
            "  --live-store       read the configured store (read-only) instead of a scratch one\n"
            "  -v, --verbose      log at debug level\n"
            "  -V, --version      print the version\n"
            "Exit: 0 when everything was accepted; 1 when anything was refused (the\n"
            "greeting, HELO, the sender, any one recipient, or the message), even if\n"
            "other recipients were accepted; 2 on a setup error.\n",
            paths_default_config());
}

/* Run as root, the chain runs with the worker's rights, as in the daemon. */
static int check_become_worker(const struct sluice_config *cfg)
{
    struct run_as run_as;
    char err[1024];
    if (geteuid() != 0)
        return 0;
    if (privileges_resolve(cfg, &run_as, err, sizeof err) < 0 ||
        privileges_drop(&run_as, err, sizeof err) < 0) {
        fprintf(stderr, "sluice-check: %s\n", err);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"client", required_argument, NULL, 'a'},
        {"port", required_argument, NULL, 'p'},   {"helo", required_argument, NULL, 'H'},
        {"smtp", no_argument, NULL, 's'},         {"from", required_argument, NULL, 'f'},
        {"rcpt", required_argument, NULL, 'r'},   {"message", required_argument, NULL, 'm'},
        {"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {"live-store", no_argument, NULL, 'L'},
        {NULL, 0, NULL, 0}};
    const char *path = paths_default_config();
    const char *rcpts[CHECK_MAX_RCPTS];
    struct check_opts o = {.client = "192.0.2.1", .client_port = 40000, .helo = "client.example",
                           .esmtp = true, .sender = "", .rcpts = rcpts};
    bool verbose = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:vhV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'a': o.client = optarg; break;
        case 'p': o.client_port = atoi(optarg); break;
        case 'H': o.helo = optarg; break;
        case 's': o.esmtp = false; break;
        case 'f': o.sender = optarg; break;
        case 'r':
            if (o.nrcpts < CHECK_MAX_RCPTS)
                rcpts[o.nrcpts++] = optarg;
            break;
        case 'm': o.message_file = optarg; break;
        case 'v': verbose = true; break;
        case 'L': o.live_store = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("sluice-check %s\n", SLUICE_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.nrcpts == 0) {
        usage(stderr);
        return 2;
    }
    struct sluice_config *cfg = NULL;
    char err[1024];
    if (config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (check_become_worker(cfg) < 0) {
        config_free(cfg);
        return 2;
    }
    enum log_level level = SLOG_WARN;
    if (verbose && cfg->log_level)
        log_level_parse(cfg->log_level, &level);
    log_set_level(verbose ? SLOG_DEBUG : level);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int rc = check_run(cfg, &o);
    config_free(cfg);
    return rc;
}
