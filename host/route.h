/* Recipient routing: which backend pool serves a recipient address. */
#ifndef SLUICE_ROUTE_H
#define SLUICE_ROUTE_H

#include <stddef.h>

struct sluice_config;
struct route_conf;

struct route_table;

/* Builds the table from the configured routes and the optional table file
 * ("address-or-domain pool" per line, '#' comments, blank lines ignored).
 * Pool names are resolved to indexes with config_pool_index(). On failure
 * returns NULL and writes "file:line: what is wrong" into err. */
struct route_table *route_table_build(const struct sluice_config *cfg, char *err, size_t errlen);
void route_table_free(struct route_table *t);

/* Pool index for a recipient address (local@domain, no angle brackets;
 * compared case-insensitively), or -1 when no route names it. Order: exact
 * address, exact domain, then "*.parent" wildcards from the closest parent
 * up. Entries of the table file and of the config are one namespace (config
 * wins on a duplicate). O(1) per probe. */
int route_lookup(const struct route_table *t, const char *addr, size_t len);

size_t route_table_size(const struct route_table *t);

#endif
