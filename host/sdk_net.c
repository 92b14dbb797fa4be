/* The SDK's network lists are the host's own netlist (relay_networks,
 * connection allowlists), so plugins and the host match clients alike. */
#include <stdio.h>

#include <sluice/config.h>
#include <sluice/net.h>

#include "netaddr.h"

#define NL(l) ((struct netlist *)(l))
#define NLP(l) ((struct netlist **)(l))

int sluice_netlist_add(sluice_netlist **list, const char *text)
{
    return text ? netlist_add(NLP(list), text) : -1;
}

bool sluice_netlist_match(const sluice_netlist *list, const struct sockaddr *sa)
{
    return sa != NULL && netlist_match((const struct netlist *)list, sa);
}

size_t sluice_netlist_count(const sluice_netlist *list)
{
    return netlist_count((const struct netlist *)list);
}

void sluice_netlist_free(sluice_netlist *list) { netlist_free(NL(list)); }

int sluice_setting_netlist(const sluice_entry *e, const char *path, sluice_netlist **list,
                           char *err, size_t errlen)
{
    int n = sluice_setting_count(e, path);
    if (n < 0)
        return sluice_setting_line(e, path) == 0
                   ? 0
                   : sluice_setting_fail(e, path, err, errlen, "expected an array of networks");
    for (int i = 0; i < n; i++) {
        char item[256];
        const char *v;
        snprintf(item, sizeof item, "%s.[%d]", path, i);
        if (sluice_setting_string(e, item, &v) != 0 || sluice_netlist_add(list, v) < 0)
            return sluice_setting_fail(e, item, err, errlen,
                                       "expected an address or a network such as "
                                       "\"192.0.2.0/24\"");
    }
    return 0;
}
