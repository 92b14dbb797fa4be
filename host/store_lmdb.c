/* The LMDB backend: one environment per worker, one unnamed database.
 * Writes run on the thread pool (a commit waits for the disk); results come
 * back on the loop thread. A read runs on the loop thread itself: LMDB reads
 * take no lock and copy from the map, microseconds when its pages are in
 * memory (a store kept small by its purge stays there), less than the
 * handoff to a pool thread and back; its result still comes on the loop's
 * next turn, as a pool job's would. While writes of the same loop thread
 * are in flight, a read waits on the loop until every write submitted before
 * it is done (pool threads may commit them in any order), so that a read
 * never overtakes that thread's own write (a set then a get sees the set).
 * A record is an 8-byte expiry (absolute ms since the epoch, 0 = none, host
 * byte order: LMDB files are not portable anyway) followed by the value.
 * Counters are stored as decimal text, as Redis does, so a get after an
 * incr reads the same on both backends. */
#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "store_backend.h"
#include "workpool.h"

#define LMDB_EXPIRY_LEN STORE_LMDB_EXPIRY_LEN
#define LMDB_DIR_MODE 0750
#define LMDB_FILE_MODE 0640
#define LMDB_INT_TEXT_MAX 24
#define LMDB_PURGE_INTERVAL_MS (5 * 60 * 1000)
#define LMDB_PURGE_MAX_PER_TXN 10000
#define LMDB_ERROR_LOG_INTERVAL_MS 60000

enum lmdb_op { LOP_GET, LOP_SET, LOP_DEL, LOP_INCR, LOP_PURGE };

struct lmdb_job {
    struct store *st;
    struct store_thread *t; /* whose loop submitted it */
    enum lmdb_op op;
    void *key;
    size_t klen;
    void *val; /* set: the input (inside the job); get: the copy out of the txn */
    size_t vlen;
    int64_t delta, ttl_ms;
    enum store_status status;
    int64_t result;
    union {
        store_get_cb get;
        store_done_cb done;
        store_int_cb incr;
    } cb;
    void *arg;
    /* A write: its place among the loop's writes in flight (seq, in order).
     * A deferred read: the last write submitted before it (seq), and its
     * place among the reads waiting. */
    uint64_t seq;
    struct lmdb_job *prev, *next;
    char data[]; /* key, then the value to set */
};

/* ---- opening ---------------------------------------------------------------- */

static int lmdb_mkdir_p(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int rc = 0;
    for (char *p = copy + 1; rc == 0; p++) {
        bool end = *p == '\0';
        if (*p != '/' && !end)
            continue;
        *p = '\0';
        if (mkdir(copy, LMDB_DIR_MODE) < 0 && errno != EEXIST)
            rc = -1;
        if (end)
            break;
        *p = '/';
    }
    free(copy);
    return rc;
}

/* flags: MDB_RDONLY for a read-only view, MDB_NOSUBDIR for a scratch file. */
static int lmdb_env_open(struct store *st, const char *path, unsigned flags, int64_t map_size)
{
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&st->env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(st->env, (size_t)map_size);
    /* NOTLS: read transactions belong to a job, not to a pool thread. */
    if (rc == 0)
        rc = mdb_env_open(st->env, path, MDB_NOTLS | flags, LMDB_FILE_MODE);
    if (rc == 0) {
        int dead = 0;
        mdb_reader_check(st->env, &dead); /* slots left by a crashed worker */
        rc = mdb_txn_begin(st->env, NULL, flags & MDB_RDONLY, &txn);
    }
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, &st->dbi);
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (txn)
        mdb_txn_abort(txn);
    return rc;
}

int store_lmdb_open(struct store *st, const struct store_conf *conf, char *err, size_t errlen)
{
    const char *path = conf->path;
    bool read_only = st->mode == STORE_MODE_READ_ONLY;
    /* A read-only view never creates what the daemon has not. */
    if (!path || !*path || (!read_only && lmdb_mkdir_p(path) < 0)) {
        snprintf(err, errlen, "store: cannot create %s: %s", path ? path : "(none)",
                 strerror(errno));
        return -1;
    }
    int rc = lmdb_env_open(st, path, read_only ? MDB_RDONLY : 0, conf->map_size);
    if (rc != 0) {
        snprintf(err, errlen, "store: cannot open LMDB%s in %s: %s",
                 read_only ? " read-only" : "", path, mdb_strerror(rc));
        return -1;
    }
    return 0;
}

int store_lmdb_open_scratch(struct store *st, const struct store_conf *conf, char *err,
                            size_t errlen)
{
    const char *tmp = getenv("TMPDIR");
    char path[PATH_MAX], lock[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/sluice-scratch-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        snprintf(err, errlen, "store: cannot create a scratch file %s: %s", path,
                 strerror(errno));
        return -1;
    }
    close(fd);
    snprintf(lock, sizeof lock, "%s-lock", path);
    int rc = lmdb_env_open(st, path, MDB_NOSUBDIR, conf->map_size);
    /* LMDB keeps its descriptors and map: the files need no name. */
    unlink(path);
    unlink(lock);
    if (rc != 0) {
        snprintf(err, errlen, "store: cannot open a scratch LMDB: %s", mdb_strerror(rc));
        return -1;
    }
    return 0;
}

void store_lmdb_close(struct store *st)
{
    if (st->env)
        mdb_env_close(st->env);
    st->env = NULL;
}

/* ---- records ---------------------------------------------------------------- */

static int64_t lmdb_expiry(const MDB_val *v)
{
    int64_t at;
    memcpy(&at, v->mv_data, sizeof at);
    return at;
}

static bool lmdb_live(const MDB_val *v, int64_t now)
{
    if (v->mv_size < LMDB_EXPIRY_LEN)
        return false;
    int64_t at = lmdb_expiry(v);
    return at == 0 || at > now;
}

static int lmdb_put(struct store *st, MDB_txn *txn, const void *key, size_t klen, int64_t at,
                    const void *val, size_t vlen)
{
    MDB_val k = {klen, (void *)key};
    MDB_val v = {LMDB_EXPIRY_LEN + vlen, NULL};
    int rc = mdb_put(txn, st->dbi, &k, &v, MDB_RESERVE);
    if (rc != 0)
        return rc;
    memcpy(v.mv_data, &at, sizeof at);
    if (vlen)
        memcpy((char *)v.mv_data + LMDB_EXPIRY_LEN, val, vlen);
    return 0;
}

/* A full map or a failing disk is logged once a minute, not per call. */
static void lmdb_log_error(struct store *st, const char *what, int rc)
{
    int64_t now = store_now_ms();
    int64_t last = st->last_error_log_ms;
    if (now - last < LMDB_ERROR_LOG_INTERVAL_MS)
        return;
    st->last_error_log_ms = now;
    log_warn(NULL, "store: LMDB %s: %s", what, mdb_strerror(rc));
}

static enum store_status lmdb_status(struct store *st, const char *what, int rc)
{
    if (rc == 0)
        return STORE_OK;
    if (rc == MDB_NOTFOUND)
        return STORE_NOTFOUND;
    /* not a counter, or one that would overflow: the caller's mistake */
    if (rc != EINVAL && rc != ERANGE)
        lmdb_log_error(st, what, rc);
    return STORE_ERROR;
}

/* ---- work: writes on a pool thread, reads on the loop thread ----------------- */

static int lmdb_read(struct lmdb_job *job)
{
    struct store *st = job->st;
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return rc;
    MDB_val k = {job->klen, job->key}, v;
    rc = mdb_get(txn, st->dbi, &k, &v);
    if (rc == 0 && !lmdb_live(&v, store_now_ms()))
        rc = MDB_NOTFOUND; /* the purge deletes it later */
    if (rc == 0) {
        job->vlen = v.mv_size - LMDB_EXPIRY_LEN;
        job->val = malloc(job->vlen ? job->vlen : 1);
        if (job->val)
            memcpy(job->val, (char *)v.mv_data + LMDB_EXPIRY_LEN, job->vlen);
        else
            rc = ENOMEM;
    }
    mdb_txn_abort(txn);
    return rc;
}

static int lmdb_write_set(struct lmdb_job *job, MDB_txn *txn)
{
    int64_t at = job->ttl_ms > 0 ? store_now_ms() + job->ttl_ms : 0;
    return lmdb_put(job->st, txn, job->key, job->klen, at, job->val, job->vlen);
}

static int lmdb_write_del(struct lmdb_job *job, MDB_txn *txn)
{
    MDB_val k = {job->klen, job->key}, v;
    int rc = mdb_get(txn, job->st->dbi, &k, &v);
    bool live = rc == 0 && lmdb_live(&v, store_now_ms());
    if (rc == 0)
        rc = mdb_del(txn, job->st->dbi, &k, NULL);
    return rc == 0 && !live ? MDB_NOTFOUND : rc;
}

/* Decimal text as written by incr (or by a plugin's set); anything else is
 * not a counter. */
static bool lmdb_parse_int(const char *p, size_t len, int64_t *out)
{
    char text[LMDB_INT_TEXT_MAX];
    if (len == 0 || len >= sizeof text)
        return false;
    memcpy(text, p, len);
    text[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || !(text[0] == '-' || (text[0] >= '0' && text[0] <= '9')))
        return false;
    *out = v;
    return true;
}

static int lmdb_write_incr(struct lmdb_job *job, MDB_txn *txn)
{
    MDB_val k = {job->klen, job->key}, v;
    int64_t now = store_now_ms(), cur = 0;
    int64_t at = job->ttl_ms > 0 ? now + job->ttl_ms : 0;
    int rc = mdb_get(txn, job->st->dbi, &k, &v);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    if (rc == 0 && lmdb_live(&v, now)) {
        if (!lmdb_parse_int((char *)v.mv_data + LMDB_EXPIRY_LEN, v.mv_size - LMDB_EXPIRY_LEN,
                            &cur))
            return EINVAL;
        at = lmdb_expiry(&v);
    }
    if (__builtin_add_overflow(cur, job->delta, &job->result))
        return ERANGE;
    char text[LMDB_INT_TEXT_MAX];
    int n = snprintf(text, sizeof text, "%" PRId64, job->result);
    return lmdb_put(job->st, txn, job->key, job->klen, at, text, (size_t)n);
}

/* Deletes expired records, at most LMDB_PURGE_MAX_PER_TXN in one transaction
 * so writers are not held up long. Returns how many, or -1. */
static int64_t lmdb_purge_txn(struct store *st)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    if (mdb_txn_begin(st->env, NULL, 0, &txn) != 0)
        return -1;
    if (mdb_cursor_open(txn, st->dbi, &cur) != 0) {
        mdb_txn_abort(txn);
        return -1;
    }
    int64_t now = store_now_ms(), n = 0;
    MDB_val k, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == 0 && n < LMDB_PURGE_MAX_PER_TXN) {
        if (!lmdb_live(&v, now)) {
            if (mdb_cursor_del(cur, 0) != 0)
                break;
            n++;
        }
        /* after a delete, NEXT yields the record that took its place */
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (mdb_txn_commit(txn) != 0)
        return -1;
    return n;
}

static int lmdb_write_once(struct lmdb_job *job)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(job->st->env, NULL, 0, &txn);
    if (rc != 0)
        return rc;
    if (job->op == LOP_SET)
        rc = lmdb_write_set(job, txn);
    else if (job->op == LOP_DEL)
        rc = lmdb_write_del(job, txn);
    else
        rc = lmdb_write_incr(job, txn);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

/* A full map may be full of expired records: purge, then try once more. */
static int lmdb_write(struct lmdb_job *job)
{
    int rc = lmdb_write_once(job);
    if (rc == MDB_MAP_FULL && lmdb_purge_txn(job->st) > 0)
        rc = lmdb_write_once(job);
    return rc;
}

static void lmdb_work(void *p)
{
    struct lmdb_job *job = p;
    static const char *const names[] = {"get", "set", "del", "incr", "purge"};
    int rc;
    if (job->op == LOP_PURGE) {
        job->result = 0;
        int64_t n;
        while ((n = lmdb_purge_txn(job->st)) == LMDB_PURGE_MAX_PER_TXN)
            job->result += n;
        job->result += n > 0 ? n : 0;
        rc = n < 0 ? MDB_PANIC : 0;
    } else if (job->op == LOP_GET) {
        rc = lmdb_read(job);
    } else {
        rc = lmdb_write(job);
    }
    job->status = lmdb_status(job->st, names[job->op], rc);
}

/* ---- completion, on the loop thread ------------------------------------------- */

static void lmdb_release_reads(struct store_thread *t);

static void lmdb_write_unlink(struct store_thread *t, struct lmdb_job *job)
{
    if (job->prev)
        job->prev->next = job->next;
    else
        t->lmdb_writes_head = job->next;
    if (job->next)
        job->next->prev = job->prev;
    else
        t->lmdb_writes_tail = job->prev;
    job->prev = job->next = NULL;
}

static void lmdb_done(void *p)
{
    struct lmdb_job *job = p;
    if (job->op != LOP_GET && job->op != LOP_PURGE) {
        job->t->lmdb_writes_in_flight--;
        lmdb_write_unlink(job->t, job);
        /* Pool threads may commit writes out of order: a read goes once
         * every write submitted before it is done. */
        lmdb_release_reads(job->t);
    }
    switch (job->op) {
    case LOP_GET:
        job->cb.get(job->arg, job->status, job->status == STORE_OK ? job->val : NULL,
                    job->status == STORE_OK ? job->vlen : 0);
        free(job->val);
        break;
    case LOP_SET:
    case LOP_DEL:
        job->cb.done(job->arg, job->status);
        break;
    case LOP_INCR:
    case LOP_PURGE:
        job->cb.incr(job->arg, job->status, job->status == STORE_OK ? job->result : 0);
        break;
    }
    free(job);
}

static struct lmdb_job *lmdb_job_new(struct store_thread *t, enum lmdb_op op, const void *key,
                                     size_t klen, const void *val, size_t vlen)
{
    struct lmdb_job *job = calloc(1, sizeof *job + klen + vlen);
    if (!job)
        return NULL;
    job->st = t->st;
    job->t = t;
    job->op = op;
    job->key = job->data;
    job->klen = klen;
    if (klen)
        memcpy(job->data, key, klen);
    if (op == LOP_SET) {
        job->val = job->data + klen;
        job->vlen = vlen;
        if (vlen)
            memcpy(job->val, val, vlen);
    }
    return job;
}

/* A write or the purge (reads run on the loop thread, lmdb_read_now). The
 * purge only deletes what reads find expired already: no read waits for it. */
static int lmdb_submit(struct store_thread *t, struct lmdb_job *job)
{
    if (workpool_submit(t->st->wp, t->base, lmdb_work, lmdb_done, job) < 0) {
        free(job);
        return -1;
    }
    if (job->op == LOP_PURGE)
        return 0;
    t->lmdb_writes_in_flight++;
    job->seq = ++t->lmdb_write_seq;
    job->prev = t->lmdb_writes_tail;
    job->next = NULL;
    if (t->lmdb_writes_tail)
        t->lmdb_writes_tail->next = job;
    else
        t->lmdb_writes_head = job;
    t->lmdb_writes_tail = job;
    return 0;
}

/* The read runs now; its result comes on the loop's next turn. */
static int lmdb_read_now(struct store_thread *t, struct lmdb_job *job)
{
    return workpool_run_here(t->base, lmdb_work, lmdb_done, job);
}

/* The reads whose earlier writes are all done, in order. A read that cannot
 * start (out of memory) is answered as a store error, on the next turn if
 * possible: its caller was told it started. */
static void lmdb_release_reads(struct store_thread *t)
{
    while (t->lmdb_reads_head &&
           (!t->lmdb_writes_head || t->lmdb_writes_head->seq > t->lmdb_reads_head->seq)) {
        struct lmdb_job *job = t->lmdb_reads_head;
        t->lmdb_reads_head = job->next;
        if (!t->lmdb_reads_head)
            t->lmdb_reads_tail = NULL;
        job->next = NULL;
        if (lmdb_read_now(t, job) < 0) {
            job->cb.get(job->arg, STORE_ERROR, NULL, 0);
            free(job);
        }
    }
}

int store_lmdb_get(struct store_thread *t, const void *key, size_t klen, store_get_cb cb,
                   void *arg)
{
    struct lmdb_job *job = lmdb_job_new(t, LOP_GET, key, klen, NULL, 0);
    if (!job)
        return -1;
    job->cb.get = cb;
    job->arg = arg;
    if (t->lmdb_writes_in_flight > 0) {
        /* Behind this thread's writes: a pool thread could overtake them. */
        job->seq = t->lmdb_write_seq;
        if (t->lmdb_reads_tail)
            t->lmdb_reads_tail->next = job;
        else
            t->lmdb_reads_head = job;
        t->lmdb_reads_tail = job;
        return 0;
    }
    if (lmdb_read_now(t, job) < 0) {
        free(job);
        return -1;
    }
    return 0;
}

int store_lmdb_set(struct store_thread *t, const void *key, size_t klen, const void *val,
                   size_t vlen, int64_t ttl_ms, store_done_cb cb, void *arg)
{
    struct lmdb_job *job = lmdb_job_new(t, LOP_SET, key, klen, val, vlen);
    if (!job)
        return -1;
    job->ttl_ms = ttl_ms;
    job->cb.done = cb;
    job->arg = arg;
    return lmdb_submit(t, job);
}

int store_lmdb_del(struct store_thread *t, const void *key, size_t klen, store_done_cb cb,
                   void *arg)
{
    struct lmdb_job *job = lmdb_job_new(t, LOP_DEL, key, klen, NULL, 0);
    if (!job)
        return -1;
    job->cb.done = cb;
    job->arg = arg;
    return lmdb_submit(t, job);
}

int store_lmdb_incr(struct store_thread *t, const void *key, size_t klen, int64_t delta,
                    int64_t ttl_ms, store_int_cb cb, void *arg)
{
    struct lmdb_job *job = lmdb_job_new(t, LOP_INCR, key, klen, NULL, 0);
    if (!job)
        return -1;
    job->delta = delta;
    job->ttl_ms = ttl_ms;
    job->cb.incr = cb;
    job->arg = arg;
    return lmdb_submit(t, job);
}

int store_purge_expired(struct store_thread *t, store_int_cb cb, void *arg)
{
    if (t->st->backend != STORE_LMDB || t->st->mode == STORE_MODE_READ_ONLY)
        return -1;
    struct lmdb_job *job = lmdb_job_new(t, LOP_PURGE, NULL, 0, NULL, 0);
    if (!job)
        return -1;
    job->cb.incr = cb;
    job->arg = arg;
    return lmdb_submit(t, job);
}

/* ---- the periodic purge ------------------------------------------------------- */

static void lmdb_purge_done(void *arg, enum store_status status, int64_t n)
{
    struct store *st = arg;
    st->purge_running = false;
    if (status == STORE_OK && n > 0)
        log_debug(NULL, "store: purged %" PRId64 " expired keys", n);
}

static void lmdb_purge_timer_cb(evutil_socket_t fd, short what, void *p)
{
    struct store_thread *t = p;
    if (t->st->purge_running)
        return;
    if (store_purge_expired(t, lmdb_purge_done, t->st) == 0)
        t->st->purge_running = true;
}

/* The first thread purges for everyone: one purge at a time is enough. */
int store_lmdb_thread_init(struct store_thread *t)
{
    struct store *st = t->st;
    if (st->purger || st->mode == STORE_MODE_READ_ONLY)
        return 0;
    t->purge_timer = event_new(t->base, -1, EV_PERSIST, lmdb_purge_timer_cb, t);
    if (!t->purge_timer)
        return -1;
    struct timeval tv = {LMDB_PURGE_INTERVAL_MS / 1000, 0};
    event_add(t->purge_timer, &tv);
    st->purger = t;
    return 0;
}

void store_lmdb_thread_free(struct store_thread *t)
{
    /* Reads still waiting when the loop stopped never answer (as a pool
     * job's done never runs after the pool is freed). */
    while (t->lmdb_reads_head) {
        struct lmdb_job *job = t->lmdb_reads_head;
        t->lmdb_reads_head = job->next;
        free(job);
    }
    t->lmdb_reads_tail = NULL;
    if (t->purge_timer)
        event_free(t->purge_timer);
    if (t->st->purger == t)
        t->st->purger = NULL;
}
