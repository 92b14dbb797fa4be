/* Per-thread answer cache: a two-choice table of owned slots. */
#include "dnsbl_cache.h"

#include <stdlib.h>
#include <string.h>

struct dnsbl_slot {
    char *name;
    int64_t expires_ms;
    struct dnsbl_answer answer;
};

struct dnsbl_cache {
    struct dnsbl_slot *slots;
    size_t mask;
};

static size_t round_up_pow2(size_t n)
{
    size_t p = 2;
    while (p < n && p < ((size_t)1 << 30))
        p <<= 1;
    return p;
}

struct dnsbl_cache *dnsbl_cache_new(size_t slots)
{
    struct dnsbl_cache *c = calloc(1, sizeof *c);
    if (!c || slots == 0)
        return c;
    size_t n = round_up_pow2(slots);
    c->slots = calloc(n, sizeof *c->slots);
    if (!c->slots) {
        free(c);
        return NULL;
    }
    c->mask = n - 1;
    return c;
}

void dnsbl_cache_free(struct dnsbl_cache *c)
{
    if (!c)
        return;
    if (c->slots)
        for (size_t i = 0; i <= c->mask; i++)
            free(c->slots[i].name);
    free(c->slots);
    free(c);
}

/* FNV-1a: names are short and chosen by nobody hostile to the table's size. */
static uint64_t name_hash(const char *name)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

/* The two candidate slots of a name. */
static void candidates(const struct dnsbl_cache *c, const char *name, struct dnsbl_slot **a,
                       struct dnsbl_slot **b)
{
    uint64_t h = name_hash(name);
    *a = &c->slots[h & c->mask];
    *b = &c->slots[(h >> 32) & c->mask];
}

static bool slot_holds(const struct dnsbl_slot *s, const char *name)
{
    return s->name && strcmp(s->name, name) == 0;
}

bool dnsbl_cache_get(struct dnsbl_cache *c, const char *name, int64_t now_ms,
                     struct dnsbl_answer *out)
{
    if (!c || !c->slots)
        return false;
    struct dnsbl_slot *a, *b;
    candidates(c, name, &a, &b);
    struct dnsbl_slot *s = slot_holds(a, name) ? a : slot_holds(b, name) ? b : NULL;
    if (!s || s->expires_ms <= now_ms)
        return false;
    *out = s->answer;
    return true;
}

void dnsbl_cache_put(struct dnsbl_cache *c, const char *name, int64_t expires_ms,
                     const struct dnsbl_answer *answer)
{
    if (!c || !c->slots)
        return;
    struct dnsbl_slot *a, *b;
    candidates(c, name, &a, &b);
    struct dnsbl_slot *s;
    if (slot_holds(a, name) || !a->name)
        s = a;
    else if (slot_holds(b, name) || !b->name)
        s = b;
    else
        s = a->expires_ms <= b->expires_ms ? a : b;
    if (!slot_holds(s, name)) {
        char *copy = strdup(name);
        if (!copy)
            return;
        free(s->name);
        s->name = copy;
    }
    s->expires_ms = expires_ms;
    s->answer = *answer;
}
