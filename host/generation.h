/* A configuration generation in the worker: the parsed configuration, the
 * backend pools and the plugin chain built from it. New sessions take the
 * current one; a reload (SIGHUP) makes a new one current while sessions in
 * flight finish on theirs. A generation is retired when its last session
 * and backend connection let go of it: its plugins' thread_fini runs on
 * every loop thread, then fini, then it is freed. */
#ifndef SLUICE_GENERATION_H
#define SLUICE_GENERATION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct sluice_config;
struct chain;
struct pool;
struct worker;
struct loop;
struct retire_call;

struct generation {
    unsigned id;
    struct sluice_config *cfg;
    struct chain *chain;
    struct pool **pools; /* one per cfg->pools[i] */
    struct worker *worker;
    bool owns_cfg; /* the first generation's config belongs to the caller */
    atomic_int refs;
    atomic_int finis_left; /* loop threads still to run thread_fini */
    struct retire_call *retire_calls; /* one per loop; a stop may skip their events */
    struct generation *next_retiring;
};

/* Builds pools and chain (plugin init) from cfg, which it takes over. NULL
 * with err on failure (cfg is freed then). Not yet initialised per thread. */
struct generation *generation_new(struct worker *w, struct sluice_config *cfg, bool owns_cfg,
                                  unsigned id, char *err, size_t errlen);

/* Runs the chain's thread_init on loop's thread (call there). */
int generation_thread_init(struct generation *g, struct loop *loop, char *err, size_t errlen);

/* The worker's current generation, with a reference taken. */
struct generation *generation_current(struct worker *w);
/* Makes g current (the worker's reference moves to it); the old one is
 * released. */
void generation_install(struct worker *w, struct generation *g);

void generation_ref(struct generation *g);
/* The last release retires g (asynchronously, on the loop threads, while
 * they run; synchronously when stopped is true: at shutdown). */
void generation_unref(struct generation *g);
void generation_retire_now(struct generation *g);
/* Shutdown, after the loop threads stopped: frees every retiring generation. */
void generation_retire_all(struct worker *w);

#endif
