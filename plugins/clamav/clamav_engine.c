/* The libclamav engine: one per database (directory and engine settings),
 * shared by every loop thread and by the entries of successive chains, so a
 * reload that leaves the database alone costs nothing but the load of the
 * new engine. Each database has a thread of its own that watches the
 * directory (as freshclam changes it), loads new engines and frees old ones,
 * so neither a loop thread nor a scan ever waits for that. Engines are
 * reference-counted: a swap is a pointer change under a lock, and scans in
 * flight finish on the engine they started with. */
#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <clamav.h>

#include "clamav.h"

struct clamav_engine {
    struct cl_engine *cl;
    atomic_int refs;
    unsigned version; /* the database's version (daily's, for the real one) */
    unsigned sigs;
    struct clamav_db *db;
};

struct clamav_db {
    char *key; /* directory and settings: who may share it */
    char *dir;
    char *temp_dir; /* "" for libclamav's default */
    struct clamav_limits limits;
    bool reload_stop;
    int64_t check_interval_ms;
    pthread_mutex_t lock; /* cur, live, entries, stop */
    pthread_cond_t cond;  /* wakes the thread; announces freed engines */
    struct clamav_engine *cur;
    int live; /* engines loaded and not yet freed */
    pthread_mutex_t load_lock; /* one load at a time: the watch or a reload */
    struct cl_stat stat;
    bool stat_valid;
    struct clamav_conf **entries; /* attached; the newest one logs and counts */
    size_t nentries;
    bool stop;
    pthread_t thread;
    struct clamav_db *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct clamav_db *registry;
static pthread_once_t cl_once = PTHREAD_ONCE_INIT;
static cl_error_t cl_init_rc;
/* Database threads still running, some maybe freeing an engine. */
static atomic_int threads_alive;

#define EXIT_WAIT_MS 10000
#define EXIT_POLL_MS 10

/* libclamav (1.4) reports a scan that could not create its work directory
 * or files (temp_dir unwritable or full) only as a log message, and then
 * calls the message clean although it scanned nothing. Its messages come on
 * the scanning thread, so a thread-local catches those of the scan running
 * there, which then counts as failed. */
#define SCAN_NOTE_MAX 256

struct scan_notes {
    bool work_files_failed;
    char msg[SCAN_NOTE_MAX];
};

static _Thread_local struct scan_notes *scan_notes;

/* "Can't create temporary directory ...", "... failed to generate temporary
 * file", "Can't create tmp sub-directory ...": a part left unscanned. Not
 * "Can't remove temporary directory": that one comes after the scan. */
static bool about_work_files(const char *msg)
{
    return (strstr(msg, "temp") != NULL || strstr(msg, "tmp") != NULL) &&
           strstr(msg, "remove") == NULL;
}

/* Every message still goes to stderr, as with libclamav's own callback. */
static void engine_message(enum cl_msg severity, const char *fullmsg, const char *msg,
                           void *context)
{
    (void)context;
    fputs(fullmsg, stderr);
    struct scan_notes *n = scan_notes;
    if (!n || severity != CL_MSG_ERROR || n->work_files_failed || !about_work_files(msg))
        return;
    n->work_files_failed = true;
    snprintf(n->msg, sizeof n->msg, "%.*s", (int)strcspn(msg, "\r\n"), msg);
}

static void cl_init_once(void)
{
    cl_init_rc = cl_init(CL_INIT_DEFAULT);
    cl_set_clcb_msg(engine_message);
}

/* Logs with the newest attached entry's name; counts into its metrics. */
static void db_log(struct clamav_db *db, enum sluice_log_level level, sluice_counter *(*which)(
                       struct clamav_conf *), const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void db_log(struct clamav_db *db, enum sluice_log_level level,
                   sluice_counter *(*which)(struct clamav_conf *), const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&db->lock);
    if (db->nentries > 0) {
        struct clamav_conf *c = db->entries[db->nentries - 1];
        sluice_log_entry(c->entry, level, "%s", msg);
        if (which)
            sluice_counter_add(which(c), 1);
    }
    pthread_mutex_unlock(&db->lock);
}

static sluice_counter *count_reload(struct clamav_conf *c)
{
    return c->reloads;
}

static sluice_counter *count_reload_failure(struct clamav_conf *c)
{
    return c->reload_failures;
}

/* ---- engines ---------------------------------------------------------------------- */

static int engine_settings(struct cl_engine *cl, const struct clamav_db *db)
{
    const struct clamav_limits *l = &db->limits;
    cl_error_t rc = cl_engine_set_num(cl, CL_ENGINE_MAX_FILESIZE, l->max_file_size);
    if (rc == CL_SUCCESS)
        rc = cl_engine_set_num(cl, CL_ENGINE_MAX_SCANSIZE, l->max_scan_size);
    if (rc == CL_SUCCESS)
        rc = cl_engine_set_num(cl, CL_ENGINE_MAX_RECURSION, l->max_recursion);
    if (rc == CL_SUCCESS)
        rc = cl_engine_set_num(cl, CL_ENGINE_MAX_FILES, l->max_files);
    if (rc == CL_SUCCESS)
        rc = cl_engine_set_num(cl, CL_ENGINE_MAX_SCANTIME, l->max_scan_time);
    if (rc == CL_SUCCESS && db->temp_dir[0])
        rc = cl_engine_set_str(cl, CL_ENGINE_TMPDIR, db->temp_dir);
    return rc == CL_SUCCESS ? 0 : -1;
}

/* Files in dir, hidden ones aside; -1 when it cannot be read. */
static int dir_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static struct clamav_engine *engine_load(struct clamav_db *db, char *err, size_t errlen)
{
    int files = dir_files(db->dir);
    if (files <= 0) {
        snprintf(err, errlen, "the database directory %s %s (get a database with freshclam)",
                 db->dir, files < 0 ? "cannot be read" : "is empty");
        return NULL;
    }
    struct clamav_engine *e = calloc(1, sizeof *e);
    struct cl_engine *cl = e ? cl_engine_new() : NULL;
    if (!cl) {
        free(e);
        snprintf(err, errlen, "out of memory for the engine");
        return NULL;
    }
    cl_error_t rc = CL_SUCCESS;
    if (engine_settings(cl, db) < 0)
        snprintf(err, errlen, "cannot set the engine's limits and temp_dir");
    else if ((rc = cl_load(db->dir, cl, &e->sigs, CL_DB_STDOPT)) != CL_SUCCESS)
        snprintf(err, errlen, "cannot load the database %s: %s", db->dir, cl_strerror(rc));
    else if (e->sigs == 0)
        snprintf(err, errlen, "the database %s holds no signatures", db->dir);
    else if ((rc = cl_engine_compile(cl)) != CL_SUCCESS)
        snprintf(err, errlen, "cannot compile the database %s: %s", db->dir, cl_strerror(rc));
    if (rc != CL_SUCCESS || e->sigs == 0 || err[0]) {
        cl_engine_free(cl);
        free(e);
        return NULL;
    }
    e->cl = cl;
    e->version = (unsigned)cl_engine_get_num(cl, CL_ENGINE_DB_VERSION, NULL);
    e->db = db;
    atomic_init(&e->refs, 1);
    pthread_mutex_lock(&db->lock);
    db->live++;
    pthread_mutex_unlock(&db->lock);
    return e;
}

struct clamav_engine *clamav_engine_get(struct clamav_db *db)
{
    pthread_mutex_lock(&db->lock);
    struct clamav_engine *e = db->cur;
    if (e)
        atomic_fetch_add(&e->refs, 1);
    pthread_mutex_unlock(&db->lock);
    return e;
}

/* The last reference frees the engine: normally a scan's (thread pool), the
 * swap's or the database thread's. A loop thread drops one only when a scan
 * could not start, which frees the engine only if a swap came in between. */
void clamav_engine_put(struct clamav_engine *e)
{
    if (!e || atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    struct clamav_db *db = e->db;
    cl_engine_free(e->cl);
    free(e);
    pthread_mutex_lock(&db->lock);
    db->live--;
    pthread_cond_broadcast(&db->cond);
    pthread_mutex_unlock(&db->lock);
}

unsigned clamav_engine_version(const struct clamav_engine *e)
{
    return e->version;
}

/* ---- loading and swapping --------------------------------------------------------- */

static void db_stat_refresh(struct clamav_db *db)
{
    if (db->stat_valid)
        cl_statfree(&db->stat);
    memset(&db->stat, 0, sizeof db->stat);
    db->stat_valid = cl_statinidir(db->dir, &db->stat) == CL_SUCCESS;
}

/* reload = "stop": the old engine goes (once its scans finished) before the
 * new one loads, so two never coexist; scans meanwhile find no engine. */
static void db_drop_engine(struct clamav_db *db)
{
    pthread_mutex_lock(&db->lock);
    struct clamav_engine *old = db->cur;
    db->cur = NULL;
    pthread_mutex_unlock(&db->lock);
    clamav_engine_put(old);
    pthread_mutex_lock(&db->lock);
    while (db->live > 0)
        pthread_cond_wait(&db->cond, &db->lock);
    pthread_mutex_unlock(&db->lock);
}

/* Loads a new engine and swaps it in; on failure the old one stays (with
 * reload = "stop" there is none left). why: for the log. The caller holds
 * load_lock, which also guards the directory's stat. */
static int db_reload_locked(struct clamav_db *db, const char *why, char *err, size_t errlen)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* Taken first: a change while the engine loads is seen at the next check. */
    db_stat_refresh(db);
    if (db->reload_stop)
        db_drop_engine(db);
    pthread_mutex_lock(&db->lock);
    bool had = db->cur != NULL;
    pthread_mutex_unlock(&db->lock);
    err[0] = '\0';
    struct clamav_engine *e = engine_load(db, err, errlen);
    if (!e) {
        db_log(db, SLUICE_LOG_ERR, count_reload_failure, "load (%s) failed, %s: %s", why,
               had ? "the loaded engine stays" : "no engine until a load succeeds", err);
        return -1;
    }
    pthread_mutex_lock(&db->lock);
    struct clamav_engine *old = db->cur;
    db->cur = e;
    pthread_mutex_unlock(&db->lock);
    clamav_engine_put(old);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    db_log(db, SLUICE_LOG_INFO, count_reload,
           "database %s loaded (%s): %u signatures, version %u, %.0f ms", db->dir, why, e->sigs,
           e->version, ms);
    return 0;
}

static int db_reload(struct clamav_db *db, const char *why, char *err, size_t errlen)
{
    pthread_mutex_lock(&db->load_lock);
    int rc = db_reload_locked(db, why, err, errlen);
    pthread_mutex_unlock(&db->load_lock);
    return rc;
}

/* ---- the database's thread ---------------------------------------------------------- */

static bool db_wait(struct clamav_db *db)
{
    pthread_mutex_lock(&db->lock);
    if (!db->stop) {
        if (db->check_interval_ms > 0) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += (time_t)(db->check_interval_ms / 1000);
            until.tv_nsec += (long)(db->check_interval_ms % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&db->cond, &db->lock, &until);
        } else {
            pthread_cond_wait(&db->cond, &db->lock);
        }
    }
    bool stop = db->stop;
    pthread_mutex_unlock(&db->lock);
    return !stop;
}

/* Why a new engine is due, or NULL. The caller holds load_lock. */
static const char *db_needs_load(struct clamav_db *db)
{
    pthread_mutex_lock(&db->lock);
    bool none = db->cur == NULL;
    pthread_mutex_unlock(&db->lock);
    if (none)
        return "no engine loaded";
    return !db->stat_valid || cl_statchkdir(&db->stat) == 1 ? "the database directory changed"
                                                            : NULL;
}

static void db_free(struct clamav_db *db)
{
    if (db->stat_valid)
        cl_statfree(&db->stat);
    pthread_mutex_destroy(&db->lock);
    pthread_mutex_destroy(&db->load_lock);
    pthread_cond_destroy(&db->cond);
    free(db->entries);
    free(db->key);
    free(db->dir);
    free(db->temp_dir);
    free(db);
}

/* Watches the directory until the last entry detaches; then frees the
 * engine once the scans still using it are done, and the database. */
static void *db_thread(void *arg)
{
    struct clamav_db *db = arg;
    char err[512];
    while (db_wait(db)) {
        if (db->check_interval_ms <= 0)
            continue;
        pthread_mutex_lock(&db->load_lock);
        const char *why = db_needs_load(db);
        if (why)
            db_reload_locked(db, why, err, sizeof err);
        pthread_mutex_unlock(&db->load_lock);
    }
    db_drop_engine(db);
    db_free(db);
    atomic_fetch_sub(&threads_alive, 1);
    return NULL;
}

/* At exit (the last entry detached at shutdown a moment ago), a database
 * thread may still be freeing its engine: libclamav must not be torn down
 * under it. Bounded: a stuck thread does not hold the exit. */
__attribute__((destructor)) static void clamav_wait_threads(void)
{
    struct timespec step = {.tv_sec = 0, .tv_nsec = EXIT_POLL_MS * 1000000L};
    for (int waited = 0; atomic_load(&threads_alive) > 0 && waited < EXIT_WAIT_MS;
         waited += EXIT_POLL_MS)
        nanosleep(&step, NULL);
}

/* ---- entries ---------------------------------------------------------------------- */

static char *db_key(const struct clamav_conf *c)
{
    const struct clamav_limits *l = &c->limits;
    char buf[2 * 4096 + 256]; /* two paths and the numbers */
    int n = snprintf(buf, sizeof buf, "%s|%s|%lld|%lld|%lld|%lld|%lld|%d|%lld", c->database,
                     c->temp_dir,
                     (long long)l->max_file_size, (long long)l->max_recursion,
                     (long long)l->max_files, (long long)l->max_scan_time,
                     (long long)l->max_scan_size, c->reload_stop,
                     (long long)c->check_interval_ms);
    return n > 0 && (size_t)n < sizeof buf ? strdup(buf) : NULL;
}

static int db_add_entry(struct clamav_db *db, struct clamav_conf *c)
{
    pthread_mutex_lock(&db->lock);
    struct clamav_conf **n = realloc(db->entries, (db->nentries + 1) * sizeof *n);
    if (n) {
        db->entries = n;
        db->entries[db->nentries++] = c;
    }
    pthread_mutex_unlock(&db->lock);
    return n ? 0 : -1;
}

/* Returns the entries left. */
static size_t db_remove_entry(struct clamav_db *db, struct clamav_conf *c)
{
    pthread_mutex_lock(&db->lock);
    for (size_t i = 0; i < db->nentries; i++) {
        if (db->entries[i] == c) {
            memmove(&db->entries[i], &db->entries[i + 1],
                    (db->nentries - i - 1) * sizeof *db->entries);
            db->nentries--;
            break;
        }
    }
    size_t left = db->nentries;
    pthread_mutex_unlock(&db->lock);
    return left;
}

/* The thread frees the database: nothing may touch it after this. */
static void db_stop(struct clamav_db *db)
{
    pthread_mutex_lock(&db->lock);
    db->stop = true;
    pthread_cond_broadcast(&db->cond);
    pthread_mutex_unlock(&db->lock);
}

static struct clamav_db *db_new(struct clamav_conf *c, char *key)
{
    struct clamav_db *db = calloc(1, sizeof *db);
    if (!db) {
        free(key);
        return NULL;
    }
    db->key = key;
    db->dir = strdup(c->database);
    db->temp_dir = strdup(c->temp_dir);
    db->limits = c->limits;
    db->reload_stop = c->reload_stop;
    db->check_interval_ms = c->check_interval_ms;
    pthread_mutex_init(&db->lock, NULL);
    pthread_mutex_init(&db->load_lock, NULL);
    pthread_cond_init(&db->cond, NULL);
    if (!db->dir || !db->temp_dir) {
        db_free(db);
        return NULL;
    }
    return db;
}

/* The first entry of a database: load, then start its thread. */
static struct clamav_db *db_open(struct clamav_conf *c, char *key, char *err, size_t errlen)
{
    struct clamav_db *db = db_new(c, key);
    if (!db) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (db_add_entry(db, c) < 0 || db_reload(db, "start", err, errlen) < 0) {
        db_drop_engine(db);
        db_free(db);
        return NULL;
    }
    atomic_fetch_add(&threads_alive, 1);
    int rc = pthread_create(&db->thread, NULL, db_thread, db);
    if (rc != 0) {
        atomic_fetch_sub(&threads_alive, 1);
        snprintf(err, errlen, "cannot start the database thread: %s", strerror(rc));
        db_drop_engine(db);
        db_free(db);
        return NULL;
    }
    pthread_detach(db->thread);
    db->next = registry;
    registry = db;
    return db;
}

int clamav_db_attach(struct clamav_conf *c, char *err, size_t errlen)
{
    pthread_once(&cl_once, cl_init_once);
    if (cl_init_rc != CL_SUCCESS) {
        snprintf(err, errlen, "libclamav: cl_init: %s", cl_strerror(cl_init_rc));
        return -1;
    }
    char *key = db_key(c);
    if (!key) {
        snprintf(err, errlen, "database path too long");
        return -1;
    }
    pthread_mutex_lock(&registry_lock);
    struct clamav_db *db = registry;
    while (db && strcmp(db->key, key) != 0)
        db = db->next;
    if (!db) {
        c->db = db_open(c, key, err, errlen);
        pthread_mutex_unlock(&registry_lock);
        return c->db ? 0 : -1;
    }
    free(key);
    /* A reload of the configuration (SIGHUP) reloads the database too. */
    if (db_add_entry(db, c) < 0 || db_reload(db, "configuration reload", err, errlen) < 0) {
        db_remove_entry(db, c);
        pthread_mutex_unlock(&registry_lock);
        return -1;
    }
    c->db = db;
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

void clamav_db_detach(struct clamav_conf *c)
{
    struct clamav_db *db = c->db;
    if (!db)
        return;
    pthread_mutex_lock(&registry_lock);
    if (db_remove_entry(db, c) == 0) {
        for (struct clamav_db **p = &registry; *p; p = &(*p)->next) {
            if (*p == db) {
                *p = db->next;
                break;
            }
        }
        db_stop(db);
    }
    pthread_mutex_unlock(&registry_lock);
    c->db = NULL;
}

/* ---- scanning ------------------------------------------------------------------------ */

#define LIMIT_PREFIX "Heuristics.Limits.Exceeded."
#define LIMIT_TIME LIMIT_PREFIX "MaxScanTime"

enum clamav_result clamav_classify(const char *name)
{
    if (strncmp(name, LIMIT_TIME, strlen(LIMIT_TIME)) == 0)
        return CLAMAV_TIMEOUT;
    if (strncmp(name, LIMIT_PREFIX, strlen(LIMIT_PREFIX)) == 0)
        return CLAMAV_LIMIT;
    return CLAMAV_VIRUS;
}

static off_t scan_pread(void *handle, void *buf, size_t count, off_t offset)
{
    return (off_t)sluice_message_pread(handle, buf, count, (uint64_t)offset);
}

enum clamav_result clamav_engine_scan(struct clamav_engine *e, sluice_message_reader *r,
                                      bool parse_mail, char *virname, size_t vlen, char *detail,
                                      size_t dlen)
{
    int64_t len = sluice_message_length(r);
    if (len < 0) {
        snprintf(detail, dlen, "cannot read the spooled message");
        return CLAMAV_ERROR;
    }
    if (len == 0)
        return CLAMAV_CLEAN;
    /* No aging: each page of the message is read from the spool once. */
    cl_fmap_t *map = cl_fmap_open_handle(r, 0, (size_t)len, scan_pread, 0);
    if (!map) {
        snprintf(detail, dlen, "cannot map the message");
        return CLAMAV_ERROR;
    }
    /* clamd's defaults (HeuristicAlerts), plus limits reported as names, so
     * that a scan cut short is told from a clean one. */
    struct cl_scan_options opts = {.general = CL_SCAN_GENERAL_HEURISTICS,
                                   .parse = parse_mail ? ~0u : ~(unsigned)CL_SCAN_PARSE_MAIL,
                                   .heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX};
    const char *vir = NULL;
    unsigned long scanned = 0;
    struct scan_notes notes = {0};
    scan_notes = &notes;
    cl_error_t rc = cl_scanmap_callback(map, NULL, &vir, &scanned, e->cl, &opts, NULL);
    scan_notes = NULL;
    cl_fmap_close(map);
    switch (rc) {
    case CL_CLEAN:
        if (!notes.work_files_failed)
            return CLAMAV_CLEAN;
        snprintf(detail, dlen, "libclamav could not write its work files (temp_dir): %s",
                 notes.msg);
        return CLAMAV_ERROR;
    case CL_VIRUS:
        snprintf(virname, vlen, "%s", vir ? vir : "unknown");
        return clamav_classify(virname);
    case CL_ETIMEOUT:
        snprintf(detail, dlen, "%s", cl_strerror(rc));
        return CLAMAV_TIMEOUT;
    default:
        snprintf(detail, dlen, "%s", cl_strerror(rc));
        return CLAMAV_ERROR;
    }
}
