/* sluice-store: the operator's view of the key/value store sluice's plugins
 * use (greylisting triplets, counters): list, get, count and delete keys in
 * the configured LMDB or Redis store, while sluice runs. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "paths.h"
#include "store_admin.h"

enum { TOOL_OK = 0, TOOL_NOTFOUND = 1, TOOL_ERROR = 2 };

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sluice-store [-c FILE] list [PREFIX]\n"
            "       sluice-store [-c FILE] count [PREFIX]\n"
            "       sluice-store [-c FILE] get KEY\n"
            "       sluice-store [-c FILE] del KEY\n"
            "Works on the store configured in sluice.conf (LMDB or Redis), safely while\n"
            "sluice runs. Keys start with the plugin's name: greylist:t:<network> <sender>\n"
            "<recipient> (a triplet), greylist:net:<network> (auto-allowlist count).\n"
            "list prints one line per live key: key, TAB, time left (\"-\": none), TAB,\n"
            "value; bytes that are not printable are written \\xHH.\n"
            "  -c, --config FILE  configuration (default %s)\n"
            "  -V, --version      print the version\n"
            "Exit: 0 done, 1 no such key (get, del), 2 error.\n",
            paths_default_config());
}

static void put_escaped(const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
            putchar(p[i]);
        else
            printf("\\x%02x", p[i]);
    }
}

static void put_ttl(int64_t ttl_ms)
{
    if (ttl_ms < 0)
        fputs("-", stdout);
    else
        printf("%" PRId64 "s", (ttl_ms + 999) / 1000);
}

static int print_entry(void *arg, const void *key, size_t klen, const void *val, size_t vlen,
                       int64_t ttl_ms)
{
    put_escaped(key, klen);
    putchar('\t');
    put_ttl(ttl_ms);
    putchar('\t');
    put_escaped(val, vlen);
    putchar('\n');
    return 0;
}

static int run(struct store_admin *a, const char *cmd, const char *arg)
{
    char err[512] = "";
    size_t alen = arg ? strlen(arg) : 0;
    int64_t n;
    int rc;
    if (strcmp(cmd, "list") == 0 || strcmp(cmd, "count") == 0) {
        bool list = cmd[0] == 'l';
        n = store_admin_scan(a, arg, alen, list ? print_entry : NULL, NULL, err, sizeof err);
        if (n >= 0 && !list)
            printf("%" PRId64 "\n", n);
        rc = n < 0 ? -1 : 1;
    } else if (strcmp(cmd, "get") == 0) {
        rc = store_admin_get(a, arg, alen, print_entry, NULL, err, sizeof err);
    } else {
        rc = store_admin_del(a, arg, alen, err, sizeof err);
        if (rc == 1)
            printf("deleted\n");
    }
    if (rc < 0) {
        fprintf(stderr, "sluice-store: %s\n", err);
        return TOOL_ERROR;
    }
    if (rc == 0)
        fprintf(stderr, "sluice-store: no such key\n");
    return rc == 0 ? TOOL_NOTFOUND : TOOL_OK;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"help", no_argument, NULL, 'h'},
                                             {"version", no_argument, NULL, 'V'},
                                             {NULL, 0, NULL, 0}};
    const char *path = paths_default_config();
    int opt;
    while ((opt = getopt_long(argc, argv, "+c:hV", longopts, NULL)) != -1) {
        if (opt == 'c') {
            path = optarg;
        } else if (opt == 'V') {
            printf("sluice-store %s\n", SLUICE_VERSION);
            return TOOL_OK;
        } else {
            usage(opt == 'h' ? stdout : stderr);
            return opt == 'h' ? TOOL_OK : TOOL_ERROR;
        }
    }
    const char *cmd = optind < argc ? argv[optind] : NULL;
    const char *arg = optind + 1 < argc ? argv[optind + 1] : NULL;
    bool scan = cmd && (strcmp(cmd, "list") == 0 || strcmp(cmd, "count") == 0);
    bool keyed = cmd && (strcmp(cmd, "get") == 0 || strcmp(cmd, "del") == 0);
    if ((!scan && !keyed) || (keyed && !arg) || optind + 2 < argc) {
        usage(stderr);
        return TOOL_ERROR;
    }
    struct sluice_config *cfg = NULL;
    char err[1024];
    if (config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return TOOL_ERROR;
    }
    struct store_admin *a = store_admin_open(&cfg->store, strcmp(cmd, "del") == 0, err,
                                             sizeof err);
    int rc = TOOL_ERROR;
    if (a)
        rc = run(a, cmd, arg);
    else
        fprintf(stderr, "sluice-store: %s\n", err);
    store_admin_close(a);
    config_free(cfg);
    return rc;
}
