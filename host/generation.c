#include "generation.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "plugin_host.h"
#include "pool.h"
#include "worker.h"

static void generation_free(struct generation *g)
{
    if (g->chain)
        chain_free(g->chain);
    for (size_t i = 0; g->pools && i < g->cfg->npools; i++)
        if (g->pools[i])
            pool_free(g->pools[i]);
    free(g->pools);
    if (g->owns_cfg)
        config_free(g->cfg);
    free(g->retire_calls);
    free(g);
}

struct generation *generation_new(struct worker *w, struct sluice_config *cfg, bool owns_cfg,
                                  unsigned id, char *err, size_t errlen)
{
    struct generation *g = calloc(1, sizeof *g);
    if (!g) {
        if (owns_cfg)
            config_free(cfg);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->id = id;
    g->cfg = cfg;
    g->owns_cfg = owns_cfg;
    g->worker = w;
    atomic_init(&g->refs, 1);
    g->pools = calloc(cfg->npools ? cfg->npools : 1, sizeof *g->pools);
    for (size_t i = 0; g->pools && i < cfg->npools; i++) {
        g->pools[i] = pool_new(&cfg->pools[i]);
        if (!g->pools[i]) {
            snprintf(err, errlen, "out of memory");
            generation_free(g);
            return NULL;
        }
    }
    if (!g->pools) {
        snprintf(err, errlen, "out of memory");
        generation_free(g);
        return NULL;
    }
    g->chain = chain_build(cfg, w, w->nloops, err, errlen);
    if (!g->chain) {
        generation_free(g);
        return NULL;
    }
    return g;
}

int generation_thread_init(struct generation *g, struct loop *loop, char *err, size_t errlen)
{
    return chain_thread_init(g->chain, loop->index, err, errlen);
}

struct generation *generation_current(struct worker *w)
{
    pthread_mutex_lock(&w->gen_lock);
    struct generation *g = w->gen;
    if (g)
        generation_ref(g);
    pthread_mutex_unlock(&w->gen_lock);
    return g;
}

void generation_install(struct worker *w, struct generation *g)
{
    pthread_mutex_lock(&w->gen_lock);
    struct generation *old = w->gen;
    w->gen = g;
    pthread_mutex_unlock(&w->gen_lock);
    if (old)
        generation_unref(old);
}

void generation_ref(struct generation *g) { atomic_fetch_add(&g->refs, 1); }

static void generation_unlist(struct generation *g)
{
    struct worker *w = g->worker;
    pthread_mutex_lock(&w->gen_lock);
    for (struct generation **p = &w->retiring; *p; p = &(*p)->next_retiring) {
        if (*p == g) {
            *p = g->next_retiring;
            break;
        }
    }
    pthread_mutex_unlock(&w->gen_lock);
}

struct retire_call {
    struct generation *g;
    int index;
};

/* Runs on each loop thread: its per-thread plugin state goes there. */
static void generation_retire_on_loop(evutil_socket_t fd, short what, void *arg)
{
    struct retire_call *rc = arg;
    struct generation *g = rc->g;
    chain_thread_fini(g->chain, rc->index);
    if (atomic_fetch_sub(&g->finis_left, 1) == 1) {
        log_info(NULL, "configuration generation %u retired", g->id);
        generation_unlist(g);
        generation_free(g);
    }
}

void generation_retire_now(struct generation *g)
{
    for (int i = 0; i < g->worker->nloops; i++)
        chain_thread_fini(g->chain, i);
    generation_unlist(g);
    generation_free(g);
}

void generation_unref(struct generation *g)
{
    if (atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    struct worker *w = g->worker;
    pthread_mutex_lock(&w->gen_lock);
    g->next_retiring = w->retiring;
    w->retiring = g;
    bool running = w->loops_running;
    pthread_mutex_unlock(&w->gen_lock);
    if (!running) {
        generation_retire_now(g);
        return;
    }
    atomic_store(&g->finis_left, w->nloops);
    /* Owned by the generation, not by the events: a loop that stops first
     * never runs its event, and the generation is then freed at shutdown. */
    g->retire_calls = calloc((size_t)w->nloops, sizeof *g->retire_calls);
    for (int i = 0; i < w->nloops; i++) {
        struct retire_call *rc = g->retire_calls ? &g->retire_calls[i] : NULL;
        if (rc) {
            rc->g = g;
            rc->index = i;
        }
        if (!rc || event_base_once(w->loops[i].base, -1, EV_TIMEOUT, generation_retire_on_loop,
                                   rc, NULL) < 0) {
            /* Left on the retiring list: freed at shutdown. */
            atomic_fetch_sub(&g->finis_left, 1);
        }
    }
}

void generation_retire_all(struct worker *w)
{
    for (;;) {
        pthread_mutex_lock(&w->gen_lock);
        struct generation *g = w->retiring;
        pthread_mutex_unlock(&w->gen_lock);
        if (!g)
            return;
        generation_retire_now(g);
    }
}
