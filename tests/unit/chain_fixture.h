/* Shared by the unit tests that run real plugins through the loader and the
 * chain (test_chain.c, test_entry_async.c): where the test plugins are, and
 * a chain built from a conf.d directory and torn down again. Include after
 * <cmocka.h>. */
#ifndef SLUICE_TEST_CHAIN_FIXTURE_H
#define SLUICE_TEST_CHAIN_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "plugin_host.h"

/* <SLUICE_TEST_PLUGINS>/<name>.so (a static buffer). */
static inline const char *cf_plugin_path(const char *name)
{
    static char path[512];
    const char *dir = getenv("SLUICE_TEST_PLUGINS");
    snprintf(path, sizeof path, "%s/%s.so", dir ? dir : "test-plugins", name);
    return path;
}

static inline void cf_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Writes a minimal dir/sluice.conf, loads it with dir/conf.d and builds the
 * chain for one loop thread (thread_init included). Returns -1 with err
 * when the configuration or the chain is refused. */
static inline int cf_load_chain(const char *dir, struct worker *w, struct sluice_config **cfg,
                                struct chain **chain, char *err, size_t errlen)
{
    char path[256];
    snprintf(path, sizeof path, "%s/sluice.conf", dir);
    cf_write_file(path, "listen = ( { address = \"127.0.0.1\"; port = 2525; } );\n"
                        "pools = ( { name = \"a\"; servers = ( \"127.0.0.1:25\" ); } );\n");
    if (config_load(path, cfg, err, errlen) < 0)
        return -1;
    *chain = chain_build(*cfg, w, 1, err, errlen);
    if (!*chain)
        return -1;
    assert_int_equal(chain_thread_init(*chain, 0, err, errlen), 0);
    return 0;
}

static inline void cf_drop_chain(struct sluice_config **cfg, struct chain **chain)
{
    if (*chain) {
        chain_thread_fini(*chain, 0);
        chain_free(*chain);
        *chain = NULL;
    }
    if (*cfg) {
        config_free(*cfg);
        *cfg = NULL;
    }
}

#endif
