/* The configuration loader on hostile files: sluice.conf, one conf.d entry
 * and the route table, cut from one input at lines "%%". Whatever the
 * bytes, the loader either returns a configuration whose invariants hold or
 * fails with "file:...: reason" naming one of those files; no leak either
 * way. Inputs that would make the loader read devices (includes, /dev,
 * /proc) are skipped: an operator's configuration is trusted to that
 * extent, its syntax and values are not. */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "route.h"

static char dir[64];
static char main_path[128], entry_path[160], table_path[128];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/fuzz-config-XXXXXX");
    if (mkdtemp(dir) == NULL)
        abort();
    snprintf(main_path, sizeof main_path, "%s/sluice.conf", dir);
    snprintf(table_path, sizeof table_path, "%s/routes", dir);
    char confd[128];
    snprintf(confd, sizeof confd, "%s/conf.d", dir);
    if (mkdir(confd, 0700) < 0)
        abort();
    snprintf(entry_path, sizeof entry_path, "%s/10-entry.conf", confd);
}

static void write_part(const char *path, const uint8_t *p, size_t n, bool present)
{
    if (!present) {
        unlink(path);
        return;
    }
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        abort();
}

static bool unsafe(const uint8_t *data, size_t size)
{
    static const char *const needles[] = {"@include", "/dev", "/proc", "/sys", "..", NULL};
    for (size_t i = 0; needles[i]; i++) {
        if (memmem(data, size, needles[i], strlen(needles[i])))
            return true;
    }
    return false;
}

static void check_config(const struct sluice_config *c)
{
    if (c->npools == 0 || c->nlistens == 0)
        abort();
    if (c->default_pool < -1 || c->default_pool >= (int)c->npools)
        abort();
    if (c->threads < 1 || c->max_line_length <= 0)
        abort();
    for (size_t i = 0; i < c->npools; i++) {
        if (c->pools[i].nservers == 0 || c->pools[i].max_connections < 1)
            abort();
    }
}

static void check_error(const char *err)
{
    if (err[0] == '\0')
        abort();
    if (strncmp(err, dir, strlen(dir)) != 0 && strstr(err, "out of memory") == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0')
        setup();
    if (unsafe(data, size))
        return 0;
    const uint8_t *part[3] = {data, NULL, NULL};
    size_t len[3] = {size, 0, 0};
    for (int i = 1; i < 3; i++) {
        const uint8_t *cut = memmem(part[i - 1], len[i - 1], "\n%%\n", 4);
        if (cut == NULL)
            break;
        part[i] = cut + 4;
        len[i] = len[i - 1] - (size_t)(part[i] - part[i - 1]);
        len[i - 1] = (size_t)(cut - part[i - 1]);
    }
    write_part(main_path, part[0], len[0], true);
    write_part(entry_path, part[1], len[1], part[1] != NULL);
    write_part(table_path, part[2], len[2], part[2] != NULL);
    struct sluice_config *cfg = NULL;
    char err[1024];
    if (config_load(main_path, &cfg, err, sizeof err) == 0) {
        check_config(cfg);
        config_free(cfg);
    } else {
        if (cfg != NULL)
            abort();
        check_error(err);
    }
    return 0;
}
