#include "dns_addr_memo.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct memo_entry {
    char *name; /* NULL: a free entry */
    struct sockaddr_storage *addrs;
    size_t n;
    int64_t got_ms;        /* when the resolver gave them */
    int64_t fresh_until;   /* used without asking until then */
    int64_t recheck_after; /* after a failure: served stale, not asked, until then */
    int64_t used_ms;       /* for forgetting the least recently used */
};

struct dns_addr_memo {
    struct memo_entry entries[DNS_ADDR_MEMO_NAMES];
    unsigned holders;
};

struct dns_addr_memo *dns_addr_memo_new(void)
{
    struct dns_addr_memo *m = calloc(1, sizeof(struct dns_addr_memo));
    if (m)
        m->holders = 1;
    return m;
}

struct dns_addr_memo *dns_addr_memo_share(struct dns_addr_memo *m)
{
    if (m)
        m->holders++;
    return m;
}

static void entry_clear(struct memo_entry *e)
{
    free(e->name);
    free(e->addrs);
    memset(e, 0, sizeof *e);
}

void dns_addr_memo_free(struct dns_addr_memo *m)
{
    if (!m || --m->holders > 0)
        return;
    for (size_t i = 0; i < DNS_ADDR_MEMO_NAMES; i++)
        entry_clear(&m->entries[i]);
    free(m);
}

/* Host names are case-insensitive (RFC 4343). */
static struct memo_entry *entry_of(struct dns_addr_memo *m, const char *name)
{
    for (size_t i = 0; i < DNS_ADDR_MEMO_NAMES; i++) {
        if (m->entries[i].name && strcasecmp(m->entries[i].name, name) == 0)
            return &m->entries[i];
    }
    return NULL;
}

static size_t copy_out(const struct memo_entry *e, struct sockaddr_storage *out, size_t max)
{
    size_t n = e->n < max ? e->n : max;
    memcpy(out, e->addrs, n * sizeof *out);
    return n;
}

enum dns_addr_use dns_addr_memo_find(struct dns_addr_memo *m, const char *name, int64_t now_ms,
                                     struct sockaddr_storage *out, size_t max, size_t *n)
{
    struct memo_entry *e = m ? entry_of(m, name) : NULL;
    if (!e)
        return DNS_ADDR_ASK;
    enum dns_addr_use use = DNS_ADDR_ASK;
    if (now_ms < e->fresh_until) {
        use = DNS_ADDR_FRESH;
    } else if (e->recheck_after && now_ms - e->got_ms < DNS_ADDR_STALE_MAX_MS) {
        /* After a failure: the stale answer until the recheck; then this
         * caller asks, and the others keep the stale answer meanwhile
         * instead of each asking and waiting for the resolver's timeout. */
        if (now_ms < e->recheck_after)
            use = DNS_ADDR_STALE;
        else
            e->recheck_after = now_ms + DNS_ADDR_RECHECK_MS;
    }
    if (use != DNS_ADDR_ASK) {
        e->used_ms = now_ms;
        *n = copy_out(e, out, max);
    }
    return use;
}

/* The entry of name, or a free one, or the one used longest ago. */
static struct memo_entry *entry_for(struct dns_addr_memo *m, const char *name)
{
    struct memo_entry *e = entry_of(m, name);
    if (e)
        return e;
    struct memo_entry *oldest = &m->entries[0];
    for (size_t i = 0; i < DNS_ADDR_MEMO_NAMES; i++) {
        if (!m->entries[i].name)
            return &m->entries[i];
        if (m->entries[i].used_ms < oldest->used_ms)
            oldest = &m->entries[i];
    }
    entry_clear(oldest);
    return oldest;
}

void dns_addr_memo_keep(struct dns_addr_memo *m, const char *name,
                        const struct sockaddr_storage *addrs, size_t n, int64_t fresh_ms,
                        int64_t now_ms)
{
    if (!m || n == 0)
        return;
    if (n > DNS_ADDR_MEMO_ADDRS)
        n = DNS_ADDR_MEMO_ADDRS;
    struct memo_entry *e = entry_for(m, name);
    struct sockaddr_storage *copy = malloc(n * sizeof *copy);
    if (!copy || (!e->name && !(e->name = strdup(name)))) {
        free(copy); /* out of memory: simply not remembered */
        return;
    }
    memcpy(copy, addrs, n * sizeof *copy);
    free(e->addrs);
    e->addrs = copy;
    e->n = n;
    e->got_ms = now_ms;
    e->fresh_until = now_ms + (fresh_ms > 0 ? fresh_ms : 0);
    e->recheck_after = 0;
    e->used_ms = now_ms;
}

bool dns_addr_memo_failed(struct dns_addr_memo *m, const char *name, int64_t now_ms,
                          struct sockaddr_storage *out, size_t max, size_t *n, int64_t *age_ms)
{
    struct memo_entry *e = m ? entry_of(m, name) : NULL;
    if (!e || now_ms - e->got_ms >= DNS_ADDR_STALE_MAX_MS)
        return false;
    e->recheck_after = now_ms + DNS_ADDR_RECHECK_MS;
    e->used_ms = now_ms;
    *n = copy_out(e, out, max);
    *age_ms = now_ms - e->got_ms;
    return true;
}

unsigned dns_addr_memo_families(const struct dns_addr_memo *m, const char *name, int64_t now_ms)
{
    const struct memo_entry *e = m ? entry_of((struct dns_addr_memo *)m, name) : NULL;
    if (!e || now_ms - e->got_ms >= DNS_ADDR_STALE_MAX_MS)
        return 0;
    unsigned fam = 0;
    for (size_t i = 0; i < e->n; i++)
        fam |= e->addrs[i].ss_family == AF_INET6 ? DNS_ADDR_V6 : DNS_ADDR_V4;
    return fam;
}

void dns_addr_memo_forget(struct dns_addr_memo *m, const char *name)
{
    struct memo_entry *e = m ? entry_of(m, name) : NULL;
    if (e)
        entry_clear(e);
}

void dns_addr_memo_expire(struct dns_addr_memo *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < DNS_ADDR_MEMO_NAMES; i++) {
        m->entries[i].fresh_until = 0;
        m->entries[i].recheck_after = 0;
    }
}
