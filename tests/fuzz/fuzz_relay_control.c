/* Relay control on hostile RCPT paths: whatever the bytes, an untrusted
 * client's recipient that passes carries no sender-specified routing, not
 * even after the NFKC normalisation a backend may apply, and lands in a
 * routed pool. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uninorm.h>

#include "config.h"
#include "relay_control.h"
#include "route.h"
#include "smtp_cmd.h"

/* route.c resolves pool names through config.c, which this target leaves out. */
int config_pool_index(const struct sluice_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->npools; i++) {
        if (strcmp(cfg->pools[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

static struct pool_conf pools[2] = {{.name = "local"}, {.name = "open"}};
static struct route_conf routes[] = {
    {"example.com", "local", 1},
    {"*.example.com", "local", 2},
    {"bücher.example", "local", 3},
    {"open.example.net", "open", 4},
};
static struct sluice_config cfg;

static void setup(void)
{
    pools[1].allow_untrusted_routing = true;
    cfg.path = "fuzz.conf";
    cfg.pools = pools;
    cfg.npools = 2;
    cfg.routes = routes;
    cfg.nroutes = sizeof routes / sizeof routes[0];
    cfg.default_pool = 0;
    char err[256];
    cfg.route_table = route_table_build(&cfg, err, sizeof err);
    if (cfg.route_table == NULL)
        abort();
}

static bool has_routing(const uint8_t *p, size_t n)
{
    return memchr(p, '@', n) || memchr(p, '%', n) || memchr(p, '!', n);
}

static void check_untrusted_pass(const struct smtp_path *p, int pool)
{
    if (pool < 0 || (size_t)pool >= cfg.npools)
        abort();
    if (pools[pool].allow_untrusted_routing)
        return;
    if (p->source_route || has_routing((const uint8_t *)p->addr, p->local_len))
        abort();
    size_t len = 0;
    uint8_t *nfkc = u8_normalize(UNINORM_NFKC, (const uint8_t *)p->addr, p->local_len, NULL, &len);
    if (nfkc == NULL || has_routing(nfkc, len))
        abort();
    free(nfkc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (cfg.route_table == NULL)
        setup();
    struct smtp_path p;
    if (smtp_path_parse((const char *)data, size, true, true, &p) != SMTP_PATH_OK)
        return 0;
    if (p.local_len > p.addr_len || (p.local_len < p.addr_len && p.addr[p.local_len] != '@'))
        abort();
    struct relay_decision untrusted = relay_control(&cfg, false, &p);
    struct relay_decision trusted = relay_control(&cfg, true, &p);
    if (untrusted.verdict == RELAY_OK) {
        check_untrusted_pass(&p, untrusted.pool);
        if (trusted.verdict != RELAY_OK || trusted.pool != untrusted.pool)
            abort();
    } else if (untrusted.pool != -1) {
        abort();
    }
    return 0;
}
