/* The plugin host: the chain of entries built from conf.d, loading of the
 * plugins, and the per-thread plugin state. A chain is immutable once built;
 * sessions hold the chain they started with. */
#ifndef SLUICE_PLUGIN_HOST_H
#define SLUICE_PLUGIN_HOST_H

#include <sys/queue.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/plugin.h>

struct sluice_config;
struct chain_entry_conf;
struct worker;

/* A chain entry; the SDK's opaque sluice_entry. */
/* One loop thread's entry-level operations of an entry (sdk_entry_async.c). */
LIST_HEAD(entry_op_list, entry_op);

struct plugin_entry {
    char *name;                          /* file stem, "20-dnsbl" */
    const struct chain_entry_conf *conf; /* owned by the config generation */
    char *path;                          /* the .so loaded */
    const struct sluice_plugin *plugin;
    void *state;          /* from init() */
    void **thread_state;  /* [loop index], from thread_init() */
    bool *thread_ready;   /* [loop index] */
    /* [loop index]: the entry-level timers and DNS queries (sluice_entry_timer,
     * sluice_entry_dns_query) outstanding on that thread, cancelled when the
     * chain is retired there; after that, new ones are refused. */
    struct entry_op_list *thread_ops;
    bool *thread_retired;
    int nthreads;
    int index;
    int64_t timeout_ms;
    bool timeout_set; /* the operator wrote `timeout`: sluice_entry_set_timeout leaves it */
    enum sluice_verdict on_timeout;
    bool initialized;
    /* sluice_entry_skip_hook(): the plugin's function at that hook does
     * nothing for this entry, so it is never called (chain.c). */
    bool skip_hook[SLUICE_HOOK_COUNT];
    struct worker *worker; /* NULL at `sluice -t` */
};

struct chain {
    struct plugin_entry *entries;
    size_t n;
    int nthreads;
    atomic_int refs; /* sessions and the worker's current pointer */
    const struct sluice_config *cfg;
};

/* Loads every enabled entry's plugin and runs its init(). On failure returns
 * NULL with "file: what is wrong" in err (nothing stays initialised). */
struct chain *chain_build(const struct sluice_config *cfg, struct worker *w, int nthreads,
                          char *err, size_t errlen);
/* Runs thread_init of every entry for loop thread index (on that thread). */
int chain_thread_init(struct chain *c, int index, char *err, size_t errlen);
void chain_thread_fini(struct chain *c, int index);
/* Cancels e's entry-level operations of loop thread index: their callbacks
 * never run (sdk_entry_async.c). On that loop thread, or once it stopped. */
void entry_ops_cancel(struct plugin_entry *e, int index);
/* fini() of every entry; the .so files stay loaded (never dlclose). */
void chain_free(struct chain *c);

/* sluice-check watches every entry's verdict through this (NULL in the
 * daemon). reply_text is the plugin's reply text when it set one. */
struct session;
typedef void (*chain_trace_fn)(const struct session *s, int hook, const char *entry,
                               enum sluice_verdict v, const char *reply_text);
extern chain_trace_fn chain_trace;
const char *chain_verdict_name(enum sluice_verdict v);

void chain_ref(struct chain *c);
/* Returns true when this was the last reference. */
bool chain_unref(struct chain *c);

#endif
