/* The clamav plugin's shared types: an entry's configuration, the engine
 * shared by every loop thread (and by the entries of successive chains that
 * name the same database), and one scan. */
#ifndef CLAMAV_H
#define CLAMAV_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/sluice.h>

#define CLAMAV_VIRNAME_MAX 128
#define CLAMAV_MAX_CLAMD 16

/* What to do with a message: a virus found, a scan that failed or timed
 * out, a message over max_scan_size. */
enum clamav_action { CLAMAV_REJECT, CLAMAV_TEMPFAIL, CLAMAV_HEADER, CLAMAV_PASS };

enum clamav_mode { CLAMAV_MODE_LIBCLAMAV, CLAMAV_MODE_CLAMD };

/* When libclamav's mail parser runs: only for messages it has something to
 * decode in (mail_shape.h), or for every message. */
enum clamav_mail_parser { CLAMAV_PARSER_WHEN_NEEDED, CLAMAV_PARSER_ALWAYS };

/* libclamav's engine limits: what bounds one scan (an archive bomb included). */
struct clamav_limits {
    int64_t max_file_size;  /* bytes of one file inside the message */
    int64_t max_recursion;  /* archive and encoding nesting */
    int64_t max_files;      /* files per scan */
    int64_t max_scan_time;  /* ms */
    int64_t max_scan_size;  /* bytes read from all files of one scan */
};

/* Shared by the entry and its scans in flight: a scan may outlive the entry
 * (its session ended, the chain was retired), so the last one frees it. */
struct clamav_conf {
    atomic_int refs;
    sluice_entry *entry; /* loop threads and init/fini only: gone after fini */
    enum clamav_mode mode;
    char *database;
    char *temp_dir; /* libclamav's work files; "" for its default ($TMPDIR, /tmp) */
    enum clamav_mail_parser mail_parser;
    struct clamav_limits limits;
    int64_t max_message_size; /* max_scan_size: larger messages are not scanned */
    enum clamav_action on_virus, on_error, on_oversize, on_limit;
    char *header; /* the X-Virus-Scanned-style field's name; "" for none */
    bool reload_stop;          /* reload = "stop": free the old engine first */
    int64_t check_interval_ms; /* database directory watch; 0: never */
    char *clamd[CLAMAV_MAX_CLAMD];
    size_t nclamd;
    int64_t clamd_timeout_ms;
    struct clamav_db *db; /* libclamav mode */
    sluice_counter *scanned, *viruses, *errors, *oversize, *cut_short, *reloads, *reload_failures;
    sluice_counter *unparsed; /* scanned without the mail parser */
    sluice_histogram *scan_seconds;
};

int clamav_conf_load(sluice_entry *e, struct clamav_conf **out, char *err, size_t errlen);
void clamav_conf_ref(struct clamav_conf *c);
/* Drops a reference; the last frees the settings. Any thread. */
void clamav_conf_unref(struct clamav_conf *c);
/* A clamd address as the settings take it: "127.0.0.1:3310", "[::1]:3310"
 * or a unix socket path. */
bool clamav_clamd_address_ok(const char *addr);

/* ---- the shared engine (clamav_engine.c) --------------------------------------- */

struct clamav_db;
struct clamav_engine;

/* Attaches the entry to the database of its settings, loading the engine:
 * the first entry naming it loads it; a later one (a reload, SIGHUP) loads a
 * new engine and swaps it in, and when that fails keeps the old one and
 * returns -1 with err set. Not on a loop thread (init). */
int clamav_db_attach(struct clamav_conf *c, char *err, size_t errlen);
/* Detaches the entry (fini). Never blocks: freeing the engine, which may
 * take a while, happens on the database's own thread. */
void clamav_db_detach(struct clamav_conf *c);

/* The current engine with a reference for one scan, or NULL (none loaded:
 * reload = "stop" between two engines). Any thread. */
struct clamav_engine *clamav_engine_get(struct clamav_db *db);
void clamav_engine_put(struct clamav_engine *e);

/* LIMIT: an engine limit stopped the scan short (what was scanned is clean);
 * virname then holds libclamav's Heuristics.Limits.Exceeded.* name. */
enum clamav_result { CLAMAV_CLEAN, CLAMAV_VIRUS, CLAMAV_ERROR, CLAMAV_TIMEOUT, CLAMAV_LIMIT };

/* What a name found means: a virus, or an engine limit (max_scan_time is a
 * timeout). Both scanners report limits as names (clamd with
 * AlertExceedsMax). */
enum clamav_result clamav_classify(const char *name);

/* Scans the message with the engine (thread-pool thread); with parse_mail
 * false, as it is, without libclamav's mail parser (every other parser
 * stays on). virname gets the name of a virus found; detail a short reason
 * for an error. */
enum clamav_result clamav_engine_scan(struct clamav_engine *e, sluice_message_reader *r,
                                      bool parse_mail, char *virname, size_t vlen, char *detail,
                                      size_t dlen);
/* The database version and signature count of the engine, for the header. */
unsigned clamav_engine_version(const struct clamav_engine *e);

/* ---- clamd (clamav_clamd.c) ---------------------------------------------------------- */

/* INSTREAM to the first clamd address that answers, in order, each with
 * the timeout. Thread-pool thread. failover gets what went wrong with the
 * addresses skipped, for the session's log. */
enum clamav_result clamav_clamd_scan(const struct clamav_conf *c, sluice_message_reader *r,
                                     char *virname, size_t vlen, char *detail, size_t dlen,
                                     char *failover, size_t flen);

#endif
