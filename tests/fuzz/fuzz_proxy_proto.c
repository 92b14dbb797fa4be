/* PROXY headers: parse never overreads, never says -1 to a prefix of a
 * header it accepts, and what it accepts survives a v2 rebuild. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"

static void check_rebuild(const struct proxy_info *pi)
{
    unsigned char b[108];
    struct proxy_info again;
    size_t n = proxy_v2_build(b, sizeof b, (const struct sockaddr *)&pi->src,
                              (const struct sockaddr *)&pi->dst);
    if (n == 0 || proxy_parse(b, n, &again) != (int)n)
        abort();
    if (pi->src.ss_family == again.src.ss_family &&
        memcmp(&pi->src, &again.src, sizeof pi->src) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes, so ASan sees any read past len */
    unsigned char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    struct proxy_info pi;
    int rc = proxy_parse(buf, size, &pi);
    if (rc > (int)size || rc > PROXY_MAX_HEADER)
        abort();
    if (rc > 0) {
        for (size_t k = 0; k < (size_t)rc; k++) {
            struct proxy_info part;
            if (proxy_parse(buf, k, &part) != 0)
                abort();
        }
        if (!pi.local)
            check_rebuild(&pi);
    }
    free(buf);
    return 0;
}
