/* DNS answers as a server (or anyone who can spoof one) sends them: how long
 * the cache may keep one, and the copy it hands back aged. */
#include <ares.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "dns_cache.h"

#define NOW_MS 1000000
#define LATER_MS 7500

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool negative;
    uint32_t ttl = dns_answer_ttl(data, size, &negative);
    struct dns_conf conf = {.cache_memory = 1 << 16, .cache_max_ttl_ms = 3600 * 1000,
                            .cache_negative_ttl_ms = 3600 * 1000};
    struct dns_cache *c = dns_cache_new(&conf);
    if (!c)
        return 0;
    dns_cache_put(c, "f.test", 1, negative ? ARES_ENOTFOUND : ARES_SUCCESS, data, (int)size,
                  NOW_MS);
    unsigned char *abuf;
    int alen, status;
    bool kept = dns_cache_get(c, "F.TEST.", 1, NOW_MS + LATER_MS, &status, &abuf, &alen);
    /* Kept exactly when it may be, for as long as it says. */
    if (kept != (ttl * 1000ull > LATER_MS && size <= 4096))
        abort();
    if (kept) {
        bool neg_again;
        uint32_t left = dns_answer_ttl(abuf, (size_t)alen, &neg_again);
        if ((size_t)alen != size || neg_again != negative || left > ttl)
            abort();
        if (memcmp(abuf, data, 12) != 0) /* the header is never touched */
            abort();
        free(abuf);
    }
    dns_cache_free(c);
    return 0;
}
