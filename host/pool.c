/* Backend pools at run time: connection slots shared by every loop thread,
 * a FIFO of waiting sessions, the slots each client address holds, smooth
 * weighted round-robin over the servers and down marks after failed
 * connects. One mutex guards all of it; it is never held while a session
 * callback runs. */
#include "pool.h"
#include "mstime.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"

/* A client address as the per-client share counts it (v4-mapped v6 as v4). */
struct client_key {
    unsigned char addr[16];
    unsigned char len; /* 0: not counted */
};

/* A client address holding slots: at most max_connections of them exist, so
 * a linear scan of a short array is all the lookup needs. */
struct holder {
    struct client_key key;
    int held;
};

struct pool_waiter {
    struct pool *pool;
    struct client_key client;
    struct event *ev; /* timeout, or activated by the releasing thread */
    pool_slot_cb cb;
    void *arg;
    bool granted; /* under pool->lock: the slot is ours, the callback pending */
    TAILQ_ENTRY(pool_waiter) link;
};

TAILQ_HEAD(waiter_queue, pool_waiter);

struct server_state {
    int weight;
    int64_t current_weight;
    uint64_t down_until_ms; /* monotonic; 0 when up */
    uint64_t failure_seq;   /* orders failures: oldest first when all are down */
};

struct pool {
    const struct pool_conf *conf;
    pthread_mutex_t lock;
    int in_use;
    int nwaiting;
    struct waiter_queue waiters;
    TAILQ_HEAD(, pool_idle) idle; /* oldest first */
    int nidle;
    struct holder *holders; /* max_connections entries, nholders in use */
    int nholders;
    struct server_state *servers;
    int nservers;
    uint64_t failure_count;
};

static uint64_t monotonic_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct pool *pool_new(const struct pool_conf *conf)
{
    struct pool *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->conf = conf;
    p->holders = calloc((size_t)(conf->max_connections > 0 ? conf->max_connections : 1),
                        sizeof(*p->holders));
    if (p->holders == NULL) {
        free(p);
        return NULL;
    }
    p->nservers = (int)conf->nservers;
    if (p->nservers > 0) {
        p->servers = calloc((size_t)p->nservers, sizeof(*p->servers));
        if (p->servers == NULL) {
            free(p->holders);
            free(p);
            return NULL;
        }
    }
    for (int i = 0; i < p->nservers; i++)
        p->servers[i].weight = conf->servers[i].weight > 0 ? conf->servers[i].weight : 1;
    TAILQ_INIT(&p->waiters);
    TAILQ_INIT(&p->idle);
    pthread_mutex_init(&p->lock, NULL);
    return p;
}

void pool_free(struct pool *p)
{
    if (p == NULL)
        return;
    if (p->in_use != 0 || p->nwaiting != 0)
        log_err(NULL, "pool %s freed with %d slots held and %d waiting", p->conf->name,
                p->in_use, p->nwaiting);
    pthread_mutex_destroy(&p->lock);
    free(p->servers);
    free(p->holders);
    free(p);
}

const struct pool_conf *pool_conf(const struct pool *p)
{
    return p->conf;
}

static struct client_key client_key_of(const struct sockaddr *sa)
{
    struct client_key k = {.len = 0};
    if (sa == NULL)
        return k;
    if (sa->sa_family == AF_INET) {
        memcpy(k.addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        k.len = 4;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            memcpy(k.addr, a->s6_addr + 12, 4);
            k.len = 4;
        } else {
            memcpy(k.addr, a->s6_addr, 16);
            k.len = 16;
        }
    }
    return k;
}

static struct holder *holder_find_locked(struct pool *p, const struct client_key *k)
{
    for (int i = 0; i < p->nholders; i++) {
        struct holder *h = &p->holders[i];
        if (h->key.len == k->len && memcmp(h->key.addr, k->addr, k->len) == 0)
            return h;
    }
    return NULL;
}

static int held_by_locked(struct pool *p, const struct client_key *k)
{
    struct holder *h = k->len ? holder_find_locked(p, k) : NULL;
    return h ? h->held : 0;
}

/* The client's share of the pool is not used up. */
static bool client_may_take_locked(struct pool *p, const struct client_key *k)
{
    int share = p->conf->max_per_client;
    return share <= 0 || k->len == 0 || held_by_locked(p, k) < share;
}

/* Called with in_use already counting the slot, so a holder entry is free. */
static void holder_take_locked(struct pool *p, const struct client_key *k)
{
    if (k->len == 0)
        return;
    struct holder *h = holder_find_locked(p, k);
    if (h == NULL && p->nholders < p->conf->max_connections) {
        h = &p->holders[p->nholders++];
        h->key = *k;
        h->held = 0;
    }
    if (h != NULL)
        h->held++;
}

static void holder_give_locked(struct pool *p, const struct client_key *k)
{
    struct holder *h = k->len ? holder_find_locked(p, k) : NULL;
    if (h == NULL)
        return;
    if (--h->held == 0)
        *h = p->holders[--p->nholders];
}

/* Hands free slots to the oldest waiters whose address is within its
 * share; a waiter over its share keeps its place until one of its own
 * slots comes back. Afterwards either the pool is full or no waiter can
 * take a slot, so pool_acquire may take a free slot without looking at the
 * queue. Called with the lock held: a waiter cannot be freed by its own
 * thread until we let go. */
static void grant_waiters_locked(struct pool *p)
{
    struct pool_waiter *w = TAILQ_FIRST(&p->waiters);

    while (w != NULL && p->in_use < p->conf->max_connections) {
        struct pool_waiter *next = TAILQ_NEXT(w, link);

        if (client_may_take_locked(p, &w->client)) {
            TAILQ_REMOVE(&p->waiters, w, link);
            p->nwaiting--;
            p->in_use++;
            holder_take_locked(p, &w->client);
            w->granted = true;
            event_active(w->ev, EV_READ, 0);
        }
        w = next;
    }
}

static void give_back_locked(struct pool *p, const struct client_key *k)
{
    if (p->in_use > 0) {
        p->in_use--;
        holder_give_locked(p, k);
    } else {
        log_err(NULL, "pool %s: slot released but none held", p->conf->name);
    }
    grant_waiters_locked(p);
}

/* Runs on the waiter's loop thread, for the timeout or the handover alike:
 * whichever took the lock first decided the outcome. */
static void waiter_fire(evutil_socket_t fd, short what, void *arg)
{
    struct pool_waiter *w = arg;
    struct pool *p = w->pool;
    pool_slot_cb cb = w->cb;
    void *cb_arg = w->arg;
    bool granted;

    pthread_mutex_lock(&p->lock);
    granted = w->granted;
    if (!granted) {
        TAILQ_REMOVE(&p->waiters, w, link);
        p->nwaiting--;
    }
    pthread_mutex_unlock(&p->lock);
    event_free(w->ev);
    free(w);
    cb(cb_arg, granted);
}

/* No queued waiter can take a free slot (see grant_waiters_locked), so a
 * free slot is the caller's if its share allows. */
static bool slot_free_locked(struct pool *p, const struct client_key *k)
{
    return p->in_use < p->conf->max_connections && client_may_take_locked(p, k);
}

static struct pool_waiter *waiter_new(struct pool *p, struct event_base *base, pool_slot_cb cb,
                                      void *arg)
{
    struct pool_waiter *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return NULL;
    w->ev = event_new(base, -1, 0, waiter_fire, w);
    if (w->ev == NULL) {
        free(w);
        return NULL;
    }
    w->pool = p;
    w->cb = cb;
    w->arg = arg;
    return w;
}

static struct timeval wait_timeout(const struct pool_conf *conf)
{
    int64_t ms = conf->wait_ms > 0 ? conf->wait_ms : 0;
    struct timeval tv = ms_to_timeval(ms);

    return tv;
}

/* The pool is full and a session is about to wait: the oldest idle
 * connection goes (its owner sends QUIT and releases the slot), so kept
 * connections never make a session wait. */
static void evict_idle_locked(struct pool *p)
{
    struct pool_idle *e = TAILQ_FIRST(&p->idle);
    if (e == NULL || p->in_use < p->conf->max_connections)
        return;
    TAILQ_REMOVE(&p->idle, e, link);
    p->nidle--;
    e->listed = false;
    e->evicted = true;
    event_active(e->ev, EV_READ, 0);
}

int pool_acquire(struct pool *p, struct event_base *base, const struct sockaddr *client,
                 pool_slot_cb cb, void *arg, struct pool_waiter **waiter)
{
    struct pool_waiter *w;
    struct timeval tv = wait_timeout(p->conf);
    struct client_key k = client_key_of(client);

    *waiter = NULL;
    pthread_mutex_lock(&p->lock);
    if (slot_free_locked(p, &k)) {
        p->in_use++;
        holder_take_locked(p, &k);
        pthread_mutex_unlock(&p->lock);
        return 1;
    }
    w = waiter_new(p, base, cb, arg);
    if (w != NULL)
        w->client = k;
    if (w == NULL || event_add(w->ev, &tv) != 0) {
        pthread_mutex_unlock(&p->lock);
        if (w != NULL) {
            event_free(w->ev);
            free(w);
        }
        return -1;
    }
    TAILQ_INSERT_TAIL(&p->waiters, w, link);
    p->nwaiting++;
    evict_idle_locked(p);
    pthread_mutex_unlock(&p->lock);
    *waiter = w;
    return 0;
}

bool pool_try_acquire(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    bool taken = p->nwaiting == 0 && p->in_use < p->conf->max_connections;
    if (taken)
        p->in_use++;
    pthread_mutex_unlock(&p->lock);
    return taken;
}

void pool_cancel(struct pool_waiter *w)
{
    struct pool *p;

    if (w == NULL)
        return;
    p = w->pool;
    pthread_mutex_lock(&p->lock);
    if (w->granted) {
        give_back_locked(p, &w->client);
    } else {
        TAILQ_REMOVE(&p->waiters, w, link);
        p->nwaiting--;
    }
    pthread_mutex_unlock(&p->lock);
    event_free(w->ev);
    free(w);
}

void pool_release(struct pool *p, const struct sockaddr *client)
{
    struct client_key k = client_key_of(client);

    pthread_mutex_lock(&p->lock);
    give_back_locked(p, &k);
    pthread_mutex_unlock(&p->lock);
}

bool pool_idle_add(struct pool *p, struct pool_idle *e)
{
    bool kept;

    pthread_mutex_lock(&p->lock);
    kept = p->nwaiting == 0;
    if (kept) {
        TAILQ_INSERT_TAIL(&p->idle, e, link);
        p->nidle++;
        e->listed = true;
        e->evicted = false;
    }
    pthread_mutex_unlock(&p->lock);
    return kept;
}

static void idle_unlist_locked(struct pool *p, struct pool_idle *e)
{
    if (!e->listed)
        return;
    TAILQ_REMOVE(&p->idle, e, link);
    p->nidle--;
    e->listed = false;
}

/* A held slot passes from one client address to another, within to's
 * share; false leaves it where it was. */
static bool move_slot_locked(struct pool *p, const struct sockaddr *from, const struct sockaddr *to)
{
    struct client_key kf = client_key_of(from), kt = client_key_of(to);
    if (kf.len == kt.len && memcmp(kf.addr, kt.addr, kf.len) == 0)
        return true;
    if (!client_may_take_locked(p, &kt))
        return false;
    holder_give_locked(p, &kf);
    holder_take_locked(p, &kt);
    /* A waiter of the previous holder's address may fit its share now. */
    grant_waiters_locked(p);
    return true;
}

bool pool_idle_take(struct pool *p, struct pool_idle *e, const struct sockaddr *from,
                    const struct sockaddr *to)
{
    pthread_mutex_lock(&p->lock);
    bool ok = e->listed && move_slot_locked(p, from, to);
    if (ok)
        idle_unlist_locked(p, e);
    pthread_mutex_unlock(&p->lock);
    return ok;
}

bool pool_move_slot(struct pool *p, const struct sockaddr *from, const struct sockaddr *to)
{
    pthread_mutex_lock(&p->lock);
    bool ok = move_slot_locked(p, from, to);
    pthread_mutex_unlock(&p->lock);
    return ok;
}

void pool_idle_remove(struct pool *p, struct pool_idle *e)
{
    pthread_mutex_lock(&p->lock);
    idle_unlist_locked(p, e);
    pthread_mutex_unlock(&p->lock);
}

static bool server_up(const struct server_state *s, uint64_t now)
{
    return s->down_until_ms <= now;
}

/* Smooth weighted round-robin (as nginx does it) over the servers that are
 * up: every pick raises each by its weight, the highest wins and pays the
 * total back, which spreads a 3:1 pool as a a b a rather than a a a b. */
static int pick_weighted_locked(struct pool *p, uint64_t now)
{
    int64_t total = 0;
    int best = -1;

    for (int i = 0; i < p->nservers; i++) {
        struct server_state *s = &p->servers[i];

        if (!server_up(s, now))
            continue;
        s->current_weight += s->weight;
        total += s->weight;
        if (best < 0 || s->current_weight > p->servers[best].current_weight)
            best = i;
    }
    if (best >= 0)
        p->servers[best].current_weight -= total;
    return best;
}

/* Stale down marks must never leave a pool dead: when all are down, try the
 * one that failed longest ago. Within one attempt sequence the servers just
 * tried carry the newest marks, so this also finds the ones not tried yet. */
static int pick_oldest_failure_locked(const struct pool *p)
{
    int best = -1;

    for (int i = 0; i < p->nservers; i++) {
        if (best < 0 || p->servers[i].failure_seq < p->servers[best].failure_seq)
            best = i;
    }
    return best;
}

int pool_first_server(struct pool *p)
{
    int idx;

    if (p->nservers == 0)
        return -1;
    pthread_mutex_lock(&p->lock);
    idx = pick_weighted_locked(p, monotonic_ms());
    if (idx < 0)
        idx = pick_oldest_failure_locked(p);
    pthread_mutex_unlock(&p->lock);
    return idx;
}

int pool_next_server(struct pool *p, int prev, int tried)
{
    uint64_t now = monotonic_ms();
    int idx = -1;

    if (tried >= p->nservers || p->nservers == 0)
        return -1;
    if (prev < 0 || prev >= p->nservers)
        prev = p->nservers - 1;
    pthread_mutex_lock(&p->lock);
    for (int step = 1; step < p->nservers && idx < 0; step++) {
        int i = (prev + step) % p->nservers;

        if (server_up(&p->servers[i], now))
            idx = i;
    }
    if (idx < 0)
        idx = pick_oldest_failure_locked(p);
    pthread_mutex_unlock(&p->lock);
    return idx;
}

void pool_server_failed(struct pool *p, int idx)
{
    uint64_t down_ms = p->conf->down_ms > 0 ? (uint64_t)p->conf->down_ms : 0;

    if (idx < 0 || idx >= p->nservers)
        return;
    pthread_mutex_lock(&p->lock);
    p->servers[idx].down_until_ms = monotonic_ms() + down_ms;
    p->servers[idx].failure_seq = ++p->failure_count;
    pthread_mutex_unlock(&p->lock);
}

void pool_server_ok(struct pool *p, int idx)
{
    if (idx < 0 || idx >= p->nservers)
        return;
    pthread_mutex_lock(&p->lock);
    p->servers[idx].down_until_ms = 0;
    pthread_mutex_unlock(&p->lock);
}

/* The counters are read under the lock too: the mutex is the only thing that
 * makes them consistent, and const here only promises the pool is unchanged. */
int pool_in_use(const struct pool *p)
{
    struct pool *mp = (struct pool *)p;
    int n;

    pthread_mutex_lock(&mp->lock);
    n = mp->in_use;
    pthread_mutex_unlock(&mp->lock);
    return n;
}

int pool_waiting(const struct pool *p)
{
    struct pool *mp = (struct pool *)p;
    int n;

    pthread_mutex_lock(&mp->lock);
    n = mp->nwaiting;
    pthread_mutex_unlock(&mp->lock);
    return n;
}

int pool_held_by(const struct pool *p, const struct sockaddr *client)
{
    struct pool *mp = (struct pool *)p;
    struct client_key k = client_key_of(client);
    int n;

    pthread_mutex_lock(&mp->lock);
    n = held_by_locked(mp, &k);
    pthread_mutex_unlock(&mp->lock);
    return n;
}

int pool_idle_count(const struct pool *p)
{
    struct pool *mp = (struct pool *)p;
    int n;

    pthread_mutex_lock(&mp->lock);
    n = mp->nidle;
    pthread_mutex_unlock(&mp->lock);
    return n;
}
