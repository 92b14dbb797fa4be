/* Addresses and networks: parsing "ip", "ip:port", "[v6]:port", CIDR lists. */
#ifndef SLUICE_NETADDR_H
#define SLUICE_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct netlist; /* an immutable list of networks (IPv4 and IPv6 CIDRs) */

/* Parses "192.0.2.0/24", "2001:db8::/32" or a bare address (host route).
 * Appends to *list (created when NULL). Returns 0, or -1 on a syntax error. */
int netlist_add(struct netlist **list, const char *cidr);
/* True when addr (AF_INET or AF_INET6; v4-mapped v6 is matched as v4) is in the list.
 * A NULL list matches nothing. */
bool netlist_match(const struct netlist *list, const struct sockaddr *addr);
size_t netlist_count(const struct netlist *list);
void netlist_free(struct netlist *list);

/* Splits "ip", "ip:port", "[v6]:port", "host:port" or "v6" into host and port
 * (port stays default_port when absent). host/port buffers are NUL-terminated.
 * Returns 0, or -1 when malformed (bad port, unbalanced brackets, too long). */
int netaddr_split_hostport(const char *in, char *host, size_t hostlen, char *port,
                           size_t portlen, const char *default_port);

/* Checks a decimal port 1..65535 and writes it canonically ("025" -> "25")
 * into port. Returns 0, or -1 when it is not such a port. */
int netaddr_parse_port(const char *s, char *port, size_t portlen);

/* Numeric text form of an address ("192.0.2.1", "2001:db8::1"; v4-mapped v6
 * shown as v4) and its port. Returns buf. */
const char *netaddr_ntop(const struct sockaddr *sa, char *buf, size_t buflen);
int netaddr_port(const struct sockaddr *sa);

#endif
