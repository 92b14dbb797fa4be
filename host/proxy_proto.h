/* The PROXY protocol (haproxy's proxy-protocol.txt), v1 and v2: parsing the
 * header a trusted balancer sends us, and building the v2 header we send to
 * backends. */
#ifndef SLUICE_PROXY_PROTO_H
#define SLUICE_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct proxy_info {
    bool local; /* v2 LOCAL or v1 UNKNOWN: keep the connection's own addresses */
    struct sockaddr_storage src; /* the real client */
    struct sockaddr_storage dst;
};

#define PROXY_MAX_HEADER 536 /* v2: 16 + 520 bytes of addresses and TLVs */

/* Parses a header at the start of buf. Returns the header length (> 0) with
 * *out filled, 0 when more bytes are needed, -1 when it is not a valid v1/v2
 * header (the caller closes the connection). Never reads past len. TLVs are
 * skipped. */
int proxy_parse(const unsigned char *buf, size_t len, struct proxy_info *out);

/* Builds a v2 PROXY header (command PROXY, STREAM over TCP4/TCP6) for src->dst;
 * mixed families are sent as TCP6 with v4-mapped addresses. Returns the
 * length written, or 0 when cap is too small (108 bytes always suffice). */
size_t proxy_v2_build(unsigned char *out, size_t cap, const struct sockaddr *src,
                      const struct sockaddr *dst);

#endif
