#include "route.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"
#include "config.h"

/* A local part is at most 64 bytes and a domain 255 (RFC 5321 4.5.3.1). */
#define ROUTE_KEY_MAX 320
#define ROUTE_TABLE_MIN_SLOTS 16
#define WILDCARD_PREFIX "*."

/* Keys are stored normalised (ASCII lower case, no trailing dot). Addresses
 * hold an '@', wildcards start with "*." and domains have neither, so the
 * three kinds of route share one table without colliding. */
struct route_slot {
    char *key; /* NULL: empty slot */
    uint32_t len;
    uint64_t hash;
    int pool;
    int line;       /* where it was defined, for duplicate messages */
    bool from_file; /* a config route replaces a table file one */
};

struct route_table {
    struct route_slot *slots;
    size_t nslots; /* a power of two */
    size_t count;
};

/* A key to probe, in two pieces so "*." + parent needs no copy. */
struct route_key {
    const char *prefix;
    size_t prefix_len;
    const char *body;
    size_t body_len;
};

static uint64_t hash_bytes(uint64_t h, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        h ^= ascii_lower((unsigned char)s[i]);
        h *= 0x100000001b3ULL; /* FNV-1a */
    }
    return h;
}

/* FNV alone clusters on similar keys; the murmur3 finaliser spreads the bits
 * so the low bits that pick the slot are good. */
static uint64_t hash_key(const struct route_key *k)
{
    uint64_t h = hash_bytes(0xcbf29ce484222325ULL, k->prefix, k->prefix_len);
    h = hash_bytes(h, k->body, k->body_len);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static bool same_key(const struct route_slot *slot, uint64_t hash, const struct route_key *k)
{
    if (slot->hash != hash || slot->len != k->prefix_len + k->body_len)
        return false;
    if (memcmp(slot->key, k->prefix, k->prefix_len) != 0)
        return false;
    for (size_t i = 0; i < k->body_len; i++) {
        if ((unsigned char)slot->key[k->prefix_len + i] != ascii_lower((unsigned char)k->body[i]))
            return false;
    }
    return true;
}

/* The slot holding k, or the empty slot where it would go. */
static struct route_slot *find_slot(const struct route_table *t, const struct route_key *k,
                                    uint64_t hash)
{
    size_t mask = t->nslots - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        struct route_slot *slot = &t->slots[i];
        if (slot->key == NULL || same_key(slot, hash, k))
            return slot;
    }
}

static int probe(const struct route_table *t, const char *prefix, const char *body, size_t len)
{
    struct route_key k = {prefix, strlen(prefix), body, len};
    const struct route_slot *slot = find_slot(t, &k, hash_key(&k));
    return slot->key ? slot->pool : -1;
}

static int grow(struct route_table *t)
{
    size_t nslots = t->nslots ? t->nslots * 2 : ROUTE_TABLE_MIN_SLOTS;
    struct route_slot *slots = calloc(nslots, sizeof *slots);
    if (slots == NULL)
        return -1;
    struct route_table bigger = {slots, nslots, t->count};
    for (size_t i = 0; i < t->nslots; i++) {
        const struct route_slot *old = &t->slots[i];
        if (old->key == NULL)
            continue;
        size_t j = old->hash & (nslots - 1);
        while (slots[j].key != NULL)
            j = (j + 1) & (nslots - 1);
        slots[j] = *old;
    }
    free(t->slots);
    *t = bigger;
    return 0;
}

/* ---- keys from the configuration ---- */

static bool valid_domain(const char *d, size_t len)
{
    if (len == 0 || d[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        if (d[i] == '*' || d[i] == '@' || (d[i] == '.' && i + 1 < len && d[i + 1] == '.'))
            return false;
    }
    return true;
}

/* Lower-cases match into out without its trailing dot and checks it is an
 * address, a domain or "*.domain". Returns its length, or -1. */
static int normalize_match(const char *match, size_t len, char *out)
{
    if (len > 0 && match[len - 1] == '.')
        len--;
    if (len == 0 || len > ROUTE_KEY_MAX)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)match[i];
        if (c <= ' ' || c == 0x7f)
            return -1;
        out[i] = (char)ascii_lower(c);
    }
    out[len] = '\0';
    const char *at = memchr(out, '@', len);
    if (at != NULL) {
        const char *domain = strrchr(out, '@') + 1;
        return at > out && valid_domain(domain, len - (size_t)(domain - out)) ? (int)len : -1;
    }
    size_t wild = strlen(WILDCARD_PREFIX);
    if (len > wild && memcmp(out, WILDCARD_PREFIX, wild) == 0)
        return valid_domain(out + wild, len - wild) ? (int)len : -1;
    return valid_domain(out, len) ? (int)len : -1;
}

struct route_source {
    const char *file;
    int line;
    bool from_file;
};

static int fail(char *err, size_t errlen, const struct route_source *src, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, const struct route_source *src, const char *fmt, ...)
{
    int n = snprintf(err, errlen, "%s:%d: ", src->file, src->line);
    if (n >= 0 && (size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int table_add(struct route_table *t, const char *match, size_t len, const char *pool_name,
                     const struct sluice_config *cfg, const struct route_source *src, char *err,
                     size_t errlen)
{
    char key[ROUTE_KEY_MAX + 1];
    int klen = normalize_match(match, len, key);
    if (klen < 0)
        return fail(err, errlen, src, "\"%s\" is not an address, a domain or *.domain", match);
    int pool = config_pool_index(cfg, pool_name);
    if (pool < 0)
        return fail(err, errlen, src, "unknown pool \"%s\"", pool_name);
    if ((t->count + 1) * 10 > t->nslots * 7 && grow(t) < 0)
        return fail(err, errlen, src, "out of memory");
    struct route_key k = {"", 0, key, (size_t)klen};
    uint64_t hash = hash_key(&k);
    struct route_slot *slot = find_slot(t, &k, hash);
    if (slot->key != NULL) {
        if (src->from_file && !slot->from_file)
            return 0; /* the config's own route wins */
        return fail(err, errlen, src, "duplicate route for \"%s\" (first defined at line %d)",
                    key, slot->line);
    }
    char *copy = strndup(key, (size_t)klen);
    if (copy == NULL)
        return fail(err, errlen, src, "out of memory");
    *slot = (struct route_slot){copy, (uint32_t)klen, hash, pool, src->line, src->from_file};
    t->count++;
    return 0;
}

/* ---- the table file ---- */

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* The next blank-separated token of line[*pos..len), NUL-terminated in place. */
static char *next_token(char *line, size_t len, size_t *pos)
{
    while (*pos < len && is_blank(line[*pos]))
        (*pos)++;
    if (*pos >= len)
        return NULL;
    char *start = line + *pos;
    while (*pos < len && !is_blank(line[*pos]))
        (*pos)++;
    if (*pos < len)
        line[(*pos)++] = '\0';
    return start;
}

static int table_file_line(struct route_table *t, char *line, size_t len,
                           const struct sluice_config *cfg, const struct route_source *src,
                           char *err, size_t errlen)
{
    /* A NUL inside the line would silently cut a token. */
    if (memchr(line, '\0', len) != NULL)
        return fail(err, errlen, src, "unexpected NUL byte");
    char *hash = memchr(line, '#', len);
    if (hash != NULL)
        len = (size_t)(hash - line);
    line[len] = '\0';
    size_t pos = 0;
    char *match = next_token(line, len, &pos);
    if (match == NULL)
        return 0;
    char *pool = next_token(line, len, &pos);
    if (pool == NULL || next_token(line, len, &pos) != NULL)
        return fail(err, errlen, src, "expected \"address-or-domain pool\"");
    return table_add(t, match, strlen(match), pool, cfg, src, err, errlen);
}

static int load_table_file(struct route_table *t, const struct sluice_config *cfg, char *err,
                           size_t errlen)
{
    const char *path = cfg->route_table_file;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot read the route table: %s", path, strerror(errno));
        return -1;
    }
    struct route_source src = {path, 0, true};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
        src.line++;
        rc = table_file_line(t, line, (size_t)n, cfg, &src, err, errlen);
    }
    free(line);
    fclose(f);
    return rc;
}

/* ---- public ---- */

struct route_table *route_table_build(const struct sluice_config *cfg, char *err, size_t errlen)
{
    struct route_table *t = calloc(1, sizeof *t);
    if (t == NULL || grow(t) < 0) {
        free(t);
        snprintf(err, errlen, "%s: out of memory", cfg->path);
        return NULL;
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct route_conf *r = &cfg->routes[i];
        struct route_source src = {cfg->path, r->line, false};
        if (table_add(t, r->match, strlen(r->match), r->pool, cfg, &src, err, errlen) < 0) {
            route_table_free(t);
            return NULL;
        }
    }
    if (cfg->route_table_file && load_table_file(t, cfg, err, errlen) < 0) {
        route_table_free(t);
        return NULL;
    }
    return t;
}

void route_table_free(struct route_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nslots; i++)
        free(t->slots[i].key);
    free(t->slots);
    free(t);
}

int route_lookup(const struct route_table *t, const char *addr, size_t len)
{
    if (t == NULL || t->count == 0 || addr == NULL)
        return -1;
    if (len > 0 && addr[len - 1] == '.')
        len--;
    const char *domain = addr;
    for (size_t i = len; i > 0; i--) {
        if (addr[i - 1] == '@') {
            domain = addr + i;
            break;
        }
    }
    size_t dlen = len - (size_t)(domain - addr);
    if (dlen == 0)
        return -1;
    int pool = domain != addr ? probe(t, "", addr, len) : -1;
    if (pool < 0)
        pool = probe(t, "", domain, dlen);
    for (size_t i = 0; pool < 0 && i < dlen; i++) {
        if (domain[i] == '.' && i + 1 < dlen)
            pool = probe(t, WILDCARD_PREFIX, domain + i + 1, dlen - i - 1);
    }
    return pool;
}

size_t route_table_size(const struct route_table *t) { return t ? t->count : 0; }
