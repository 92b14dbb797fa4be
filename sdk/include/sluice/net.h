/*
 * sluice plugin SDK: lists of networks, for allowlists and the like, with
 * the host's own semantics (those of relay_networks): "192.0.2.0/24",
 * "2001:db8::/32" or a bare address (a host); host bits after the prefix
 * are ignored; an IPv4 client on an IPv6 socket (::ffff:192.0.2.1) matches
 * the IPv4 networks. Since ABI 1.2.
 *
 * A list is immutable once built: build it in init() and read it from any
 * loop thread without locks; free it in fini().
 */
#ifndef SLUICE_SDK_NET_H
#define SLUICE_SDK_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sluice_netlist sluice_netlist;

/* Adds one network to *list, which is created when NULL (so start from a
 * NULL pointer). Returns 0, or -1 on a syntax error or out of memory (the
 * list is then unchanged). Any time, but build lists in init(). */
int sluice_netlist_add(sluice_netlist **list, const char *text);

/* True when sa (the client's address, from sluice_client_addr()) is in the
 * list. A NULL list matches nothing. Any hook, any thread. */
bool sluice_netlist_match(const sluice_netlist *list, const struct sockaddr *sa);

/* The number of networks in the list (0 for NULL). */
size_t sluice_netlist_count(const sluice_netlist *list);

/* Reads the entry's setting at path, an array of networks such as
 * `allowlist = [ "192.0.2.0/24", "2001:db8::1" ];`, into *list (left NULL
 * when the setting is absent). Returns 0, or -1 with "line N: path...: what
 * is wrong" in err. For init(). */
int sluice_setting_netlist(const sluice_entry *e, const char *path, sluice_netlist **list,
                           char *err, size_t errlen);

/* Frees the list; NULL is fine. */
void sluice_netlist_free(sluice_netlist *list);

#ifdef __cplusplus
}
#endif

#endif
