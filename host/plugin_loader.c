/* Building a chain: dlopen, ABI check, init(). */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libconfig.h>

#include "config.h"
#include "log.h"
#include "paths.h"
#include "plugin_host.h"

static const char *const timeout_outcomes[] = {"continue", "accept", "reject", "tempfail",
                                               "disconnect", NULL};

/* A sluice run from its build tree finds the plugins built beside it. */
static bool loader_beside_executable(const char *plugin, char *buf, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return false;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return false;
    *slash = '\0';
    int m = snprintf(buf, len, "%s/plugins/%s.so", exe, plugin);
    return m > 0 && (size_t)m < len && access(buf, R_OK) == 0;
}

/* "dnsbl" -> <plugin_dir>/dnsbl.so; a name with a '/' is a path. When
 * plugin_dir is the built-in default and lacks the plugin, the directory
 * of the executable's plugins/ is tried. */
static char *loader_resolve(const struct sluice_config *cfg, const char *plugin)
{
    char buf[PATH_MAX];
    if (strchr(plugin, '/')) {
        snprintf(buf, sizeof buf, "%s", plugin);
        return strdup(buf);
    }
    snprintf(buf, sizeof buf, "%s/%s.so", cfg->plugin_dir, plugin);
    if (access(buf, R_OK) != 0 && strcmp(cfg->plugin_dir, paths_plugin_dir()) == 0) {
        char beside[PATH_MAX];
        if (loader_beside_executable(plugin, beside, sizeof beside))
            return strdup(beside);
    }
    return strdup(buf);
}

/* Every .so this process loaded, as it was on disk then. dlopen() of the
 * same path gives back the loaded image, so a file replaced later is not
 * what runs: say so, and that a restart is needed. */
struct loaded_so {
    char *path;
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    struct loaded_so *next;
};
static struct loaded_so *loaded;
static pthread_mutex_t loaded_lock = PTHREAD_MUTEX_INITIALIZER;

static void loader_note_file(const struct plugin_entry *e)
{
    struct stat st;
    if (stat(e->path, &st) < 0)
        return;
    pthread_mutex_lock(&loaded_lock);
    struct loaded_so *l = loaded;
    while (l && strcmp(l->path, e->path) != 0)
        l = l->next;
    if (!l) {
        l = calloc(1, sizeof *l);
        if (l && (l->path = strdup(e->path))) {
            l->dev = st.st_dev;
            l->ino = st.st_ino;
            l->mtime = st.st_mtim;
            l->next = loaded;
            loaded = l;
        } else {
            free(l);
        }
    } else if (l->dev != st.st_dev || l->ino != st.st_ino ||
               l->mtime.tv_sec != st.st_mtim.tv_sec || l->mtime.tv_nsec != st.st_mtim.tv_nsec) {
        log_warn(NULL, "%s: %s changed on disk since it was loaded: the loaded code keeps "
                       "running until sluice is restarted",
                 e->conf->file, e->path);
    }
    pthread_mutex_unlock(&loaded_lock);
}

static int loader_open(struct plugin_entry *e, char *err, size_t errlen)
{
    /* RTLD_LOCAL: two plugins may use the same symbol names. */
    void *h = dlopen(e->path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "%s: cannot load plugin: %s", e->conf->file, dlerror());
        return -1;
    }
    const struct sluice_plugin *p = dlsym(h, SLUICE_PLUGIN_SYMBOL);
    if (!p) {
        snprintf(err, errlen, "%s: %s exports no '%s' descriptor: not a sluice plugin",
                 e->conf->file, e->path, SLUICE_PLUGIN_SYMBOL);
        dlclose(h); /* refused before any of its code ran */
        return -1;
    }
    if (p->abi_major != SLUICE_ABI_MAJOR || p->abi_minor > SLUICE_ABI_MINOR) {
        snprintf(err, errlen,
                 "%s: %s was built for plugin ABI %u.%u, this sluice provides %d.%d "
                 "(the major must match and the minor must not be newer): rebuild it",
                 e->conf->file, e->path, p->abi_major, p->abi_minor, SLUICE_ABI_MAJOR,
                 SLUICE_ABI_MINOR);
        dlclose(h);
        return -1;
    }
    e->plugin = p;
    loader_note_file(e);
    return 0;
}

static int loader_entry_settings(const struct sluice_config *cfg, struct plugin_entry *e,
                                 char *err, size_t errlen)
{
    config_t *cf = e->conf->settings;
    e->timeout_ms = cfg->plugin_timeout_ms;
    e->on_timeout = SLUICE_TEMPFAIL;
    config_setting_t *t = cf ? config_lookup(cf, "timeout") : NULL;
    if (t) {
        const char *sv = config_setting_get_string(t);
        int64_t ms = config_setting_type(t) == CONFIG_TYPE_INT ? config_setting_get_int64(t) : -1;
        if ((sv && config_parse_duration(sv, &ms) < 0) || ms <= 0) {
            snprintf(err, errlen, "%s:%d: timeout: expected a duration like \"10s\"",
                     e->conf->file, config_setting_source_line(t));
            return -1;
        }
        e->timeout_ms = ms;
        e->timeout_set = true;
    }
    t = cf ? config_lookup(cf, "on_timeout") : NULL;
    if (t) {
        const char *sv = config_setting_get_string(t);
        for (int i = 0; sv && timeout_outcomes[i]; i++) {
            if (strcasecmp(sv, timeout_outcomes[i]) == 0) {
                static const enum sluice_verdict map[] = {SLUICE_CONTINUE, SLUICE_ACCEPT,
                                                          SLUICE_REJECT, SLUICE_TEMPFAIL,
                                                          SLUICE_DISCONNECT};
                e->on_timeout = map[i];
                return 0;
            }
        }
        snprintf(err, errlen,
                 "%s:%d: on_timeout: expected continue, accept, reject, tempfail or disconnect",
                 e->conf->file, config_setting_source_line(t));
        return -1;
    }
    return 0;
}

static int loader_init_entry(const struct sluice_config *cfg, struct plugin_entry *e,
                             char *err, size_t errlen)
{
    if (loader_entry_settings(cfg, e, err, errlen) < 0 || loader_open(e, err, errlen) < 0)
        return -1;
    if (!e->plugin->init) {
        e->initialized = true;
        return 0;
    }
    char perr[512] = "";
    if (e->plugin->init((sluice_entry *)e, &e->state, perr, sizeof perr) != 0) {
        /* A plugin message that already names the file is kept as it is. */
        if (strncmp(perr, e->conf->file, strlen(e->conf->file)) == 0)
            snprintf(err, errlen, "%s", perr);
        else
            snprintf(err, errlen, "%s: %s: %s", e->conf->file, e->plugin->name,
                     perr[0] ? perr : "init failed");
        return -1;
    }
    e->initialized = true;
    return 0;
}

struct chain *chain_build(const struct sluice_config *cfg, struct worker *w, int nthreads,
                          char *err, size_t errlen)
{
    struct chain *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = cfg;
    c->nthreads = nthreads;
    atomic_init(&c->refs, 1);
    c->entries = calloc(cfg->nentries ? cfg->nentries : 1, sizeof *c->entries);
    if (!c->entries) {
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < cfg->nentries; i++) {
        const struct chain_entry_conf *ec = &cfg->entries[i];
        if (!ec->enabled)
            continue;
        struct plugin_entry *e = &c->entries[c->n++];
        e->conf = ec;
        e->index = (int)(c->n - 1);
        e->worker = w;
        e->name = strdup(ec->name);
        e->path = loader_resolve(cfg, ec->plugin);
        e->thread_state = calloc((size_t)nthreads + 1, sizeof *e->thread_state);
        e->thread_ready = calloc((size_t)nthreads + 1, sizeof *e->thread_ready);
        e->thread_ops = calloc((size_t)nthreads + 1, sizeof *e->thread_ops);
        e->thread_retired = calloc((size_t)nthreads + 1, sizeof *e->thread_retired);
        e->nthreads = nthreads;
        if (!e->name || !e->path || !e->thread_state || !e->thread_ready || !e->thread_ops ||
            !e->thread_retired) {
            snprintf(err, errlen, "%s: out of memory", ec->file);
            chain_free(c);
            return NULL;
        }
        if (loader_init_entry(cfg, e, err, errlen) < 0) {
            chain_free(c);
            return NULL;
        }
        log_debug(NULL, "chain: entry %s (%s %s) loaded from %s", e->name, e->plugin->name,
                  e->plugin->version ? e->plugin->version : "", e->path);
    }
    return c;
}

int chain_thread_init(struct chain *c, int index, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->n; i++) {
        struct plugin_entry *e = &c->entries[i];
        if (!e->plugin->thread_init) {
            e->thread_ready[index] = true;
            continue;
        }
        if (e->plugin->thread_init((sluice_entry *)e, e->state, &e->thread_state[index]) != 0) {
            snprintf(err, errlen, "%s: thread_init failed", e->conf->file);
            return -1;
        }
        e->thread_ready[index] = true;
    }
    return 0;
}

void chain_thread_fini(struct chain *c, int index)
{
    for (size_t i = c->n; i-- > 0;) {
        struct plugin_entry *e = &c->entries[i];
        /* Before thread_fini: no callback may see the thread state it frees. */
        e->thread_retired[index] = true;
        entry_ops_cancel(e, index);
        if (e->thread_ready[index] && e->plugin->thread_fini)
            e->plugin->thread_fini((sluice_entry *)e, e->state, e->thread_state[index]);
        e->thread_ready[index] = false;
    }
}

void chain_free(struct chain *c)
{
    if (!c)
        return;
    for (size_t i = c->n; i-- > 0;) {
        struct plugin_entry *e = &c->entries[i];
        if (e->initialized && e->plugin->fini)
            e->plugin->fini((sluice_entry *)e, e->state);
        free(e->name);
        free(e->path);
        free(e->thread_state);
        free(e->thread_ready);
        free(e->thread_ops);
        free(e->thread_retired);
    }
    free(c->entries);
    free(c);
}

void chain_ref(struct chain *c) { atomic_fetch_add(&c->refs, 1); }

bool chain_unref(struct chain *c) { return atomic_fetch_sub(&c->refs, 1) == 1; }
