/* Relay control. Postfix's allow_untrusted_routing = no is the model: a
 * backend that trusts sluice (its mynetworks) would honour user%elsewhere,
 * elsewhere!user or "user@elsewhere" inside a routed domain and relay to
 * elsewhere. Unicode adds look-alikes: a backend that applies NFKC or IDNA
 * mapping turns a fullwidth U+FF20 into '@' and U+3002 into '.', so the
 * checks look at the address as such a backend would. */
#include "relay_control.h"

#include <idn2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uninorm.h>

#include "ascii.h"
#include "config.h"
#include "route.h"
#include "smtp_cmd.h"

/* Characters that let a local part name another destination. */
static bool has_routing_char(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '@' || p[i] == '%' || p[i] == '!')
            return true;
    }
    return false;
}

/* The local part as a backend applying NFKC would read it: a fullwidth or
 * small-form '@', '%' or '!' is routing too. Undecodable means refused. */
static bool local_part_routes(const uint8_t *local, size_t n)
{
    if (has_routing_char(local, n))
        return true;
    if (ascii_only(local, n))
        return false;
    uint8_t stack[512];
    size_t len = sizeof stack;
    uint8_t *nfkc = u8_normalize(UNINORM_NFKC, local, n, stack, &len);
    if (nfkc == NULL)
        return true;
    bool routes = has_routing_char(nfkc, len);
    if (nfkc != stack)
        free(nfkc);
    return routes;
}

/* A non-ASCII domain passes only when UTS #46 mapping leaves it as it is
 * (up to case): then it and its A-label name the same domain, the one
 * the route matched. Anything the mapping must change (fullwidth letters,
 * ideographic full stops, compatibility forms) or cannot map is refused. */
static bool domain_is_plain(const char *domain, size_t n)
{
    if (ascii_only(domain, n))
        return true;
    char *z = strndup(domain, n);
    if (z == NULL)
        return false;
    char *strict = NULL, *mapped = NULL;
    int rs = idn2_to_ascii_8z(z, &strict, IDN2_NFC_INPUT | IDN2_NO_TR46);
    int rm = idn2_to_ascii_8z(z, &mapped, IDN2_NONTRANSITIONAL);
    bool plain = rs == IDN2_OK && rm == IDN2_OK && strcasecmp(strict, mapped) == 0;
    idn2_free(strict);
    idn2_free(mapped);
    free(z);
    return plain;
}

static struct relay_decision decided(enum relay_verdict v, int pool)
{
    return (struct relay_decision){v, v == RELAY_OK ? pool : -1};
}

static int route_for(const struct sluice_config *cfg, bool trusted, const struct smtp_path *p)
{
    int pool = route_lookup(cfg->route_table, p->addr, p->addr_len);
    if (pool >= 0)
        return pool;
    bool bare_postmaster = memchr(p->addr, '@', p->addr_len) == NULL;
    if (cfg->default_pool >= 0 && (trusted || bare_postmaster))
        return cfg->default_pool;
    return -1;
}

struct relay_decision relay_control(const struct sluice_config *cfg, bool trusted,
                                    const struct smtp_path *path)
{
    int pool = route_for(cfg, trusted, path);
    if (pool < 0)
        return decided(RELAY_NO_ROUTE, -1);
    if (trusted)
        return decided(RELAY_OK, pool);
    bool has_domain = path->local_len < path->addr_len;
    if (has_domain) {
        const char *domain = path->addr + path->local_len + 1;
        if (!domain_is_plain(domain, path->addr_len - path->local_len - 1))
            return decided(RELAY_UNNORMALISED, -1);
    }
    if (cfg->pools[pool].allow_untrusted_routing)
        return decided(RELAY_OK, pool);
    if (path->source_route || local_part_routes((const uint8_t *)path->addr, path->local_len))
        return decided(RELAY_SENDER_ROUTING, -1);
    return decided(RELAY_OK, pool);
}

const char *relay_verdict_reason(enum relay_verdict v)
{
    switch (v) {
    case RELAY_OK:
        return "relayed";
    case RELAY_NO_ROUTE:
        return "no route for the domain";
    case RELAY_SENDER_ROUTING:
        return "sender-specified routing";
    case RELAY_UNNORMALISED:
        return "domain not in normalised form";
    }
    return "unknown";
}
