/* clamav: virus scanning at end of message, while the sender is connected,
 * so nothing is accepted that would later bounce. The scan runs on the
 * host's thread pool, never on a loop thread, over the spooled message in
 * place (a message reader handed to the pool): in process with libclamav
 * (one engine shared by every loop thread, reloaded in the background), or
 * by a running clamd (INSTREAM). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clamav.h"
#include "mail_shape.h"

#define DETAIL_MAX 192
#define HEADER_VALUE_MAX 256
#define TAG "sluice clamav"

/* One scan: built on the loop thread, filled on a pool thread, read back
 * on the loop thread. */
struct clamav_scan {
    struct clamav_conf *conf;       /* a reference */
    struct clamav_engine *engine;   /* a reference; NULL in clamd mode */
    sluice_message_reader *reader;
    enum clamav_result result;
    unsigned db_version;
    double seconds;
    char virname[CLAMAV_VIRNAME_MAX];
    char detail[DETAIL_MAX];
    char failover[DETAIL_MAX * 2];
    bool parsed_mail;
    char shape[DETAIL_MAX]; /* why the mail parser ran, or that it had nothing to do */
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- verdicts ------------------------------------------------------------------- */

/* The scanner's header, replacing any the client sent (it would vouch for
 * a scan that never happened). */
static void set_header(sluice_session *s, const struct clamav_conf *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_header(sluice_session *s, const struct clamav_conf *c, const char *fmt, ...)
{
    if (!c->header[0])
        return;
    char value[HEADER_VALUE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof value, fmt, ap);
    va_end(ap);
    for (char *p = value; *p; p++)
        if ((unsigned char)*p < ' ' || (unsigned char)*p >= 0x7f)
            *p = '?';
    sluice_header_remove(s, c->header, -1);
    if (sluice_header_add(s, c->header, value) < 0)
        sluice_log(s, SLUICE_LOG_WARN, "cannot add the %s header", c->header);
}

static enum sluice_verdict on_virus(sluice_session *s, const struct clamav_conf *c,
                                    const char *name)
{
    sluice_counter_add(c->viruses, 1);
    switch (c->on_virus) {
    case CLAMAV_REJECT:
        sluice_log(s, SLUICE_LOG_INFO, "virus %s found, rejected", name);
        sluice_reply(s, 554, "5.7.0", "Virus found: %s", name);
        return SLUICE_REJECT;
    case CLAMAV_TEMPFAIL:
        sluice_log(s, SLUICE_LOG_INFO, "virus %s found, deferred", name);
        sluice_reply(s, 451, "4.7.1", "Virus found: %s", name);
        return SLUICE_TEMPFAIL;
    default:
        sluice_log(s, SLUICE_LOG_INFO, "virus %s found, passed with a header", name);
        set_header(s, c, TAG ": infected (%s)", name);
        return SLUICE_CONTINUE;
    }
}

static enum sluice_verdict on_error(sluice_session *s, const struct clamav_conf *c,
                                    const char *why)
{
    sluice_counter_add(c->errors, 1);
    sluice_log(s, SLUICE_LOG_WARN, "scan failed: %s", why);
    switch (c->on_error) {
    case CLAMAV_REJECT:
        sluice_reply(s, 554, "5.7.0", "Message could not be scanned for viruses");
        return SLUICE_REJECT;
    case CLAMAV_TEMPFAIL:
        sluice_reply(s, 451, "4.3.0", "Virus scan failed, try again later");
        return SLUICE_TEMPFAIL;
    default:
        set_header(s, c, TAG ": not scanned (scan failed)");
        return SLUICE_CONTINUE;
    }
}

static enum sluice_verdict on_oversize(sluice_session *s, const struct clamav_conf *c,
                                       uint64_t size)
{
    sluice_counter_add(c->oversize, 1);
    sluice_log(s, SLUICE_LOG_INFO, "message of %llu bytes over max_scan_size (%lld): not scanned",
               (unsigned long long)size, (long long)c->max_message_size);
    switch (c->on_oversize) {
    case CLAMAV_REJECT:
        sluice_reply(s, 552, "5.3.4", "Message too big to be scanned for viruses");
        return SLUICE_REJECT;
    case CLAMAV_TEMPFAIL:
        sluice_reply(s, 451, "4.3.0", "Message too big to be scanned for viruses now");
        return SLUICE_TEMPFAIL;
    default:
        set_header(s, c, TAG ": not scanned (over %lld bytes)", (long long)c->max_message_size);
        return SLUICE_CONTINUE;
    }
}

/* An engine limit cut the scan short: what was scanned is clean, the rest
 * (an archive bomb's depths) was not looked at. */
static enum sluice_verdict on_limit(sluice_session *s, const struct clamav_conf *c,
                                    const char *name)
{
    sluice_counter_add(c->cut_short, 1);
    sluice_log(s, SLUICE_LOG_INFO, "scan cut short by an engine limit: %s", name);
    switch (c->on_limit) {
    case CLAMAV_REJECT:
        sluice_reply(s, 554, "5.7.0", "Message could not be fully scanned for viruses (%s)",
                     name);
        return SLUICE_REJECT;
    case CLAMAV_TEMPFAIL:
        sluice_reply(s, 451, "4.3.0", "Message could not be fully scanned for viruses (%s)",
                     name);
        return SLUICE_TEMPFAIL;
    default:
        set_header(s, c, TAG ": partly scanned (%s)", name);
        return SLUICE_CONTINUE;
    }
}

static enum sluice_verdict scan_verdict(sluice_session *s, const struct clamav_scan *job)
{
    const struct clamav_conf *c = job->conf;
    switch (job->result) {
    case CLAMAV_VIRUS:
        return on_virus(s, c, job->virname);
    case CLAMAV_CLEAN:
        if (c->mode == CLAMAV_MODE_CLAMD)
            set_header(s, c, TAG ": clean (clamd)");
        else
            set_header(s, c, TAG ": clean (database version %u)", job->db_version);
        return SLUICE_CONTINUE;
    case CLAMAV_TIMEOUT:
        return on_error(s, c, "max_scan_time reached");
    case CLAMAV_LIMIT:
        return on_limit(s, c, job->virname);
    default:
        return on_error(s, c, job->detail);
    }
}

/* ---- the scan ----------------------------------------------------------------------- */

static ssize_t shape_pread(void *reader, void *buf, size_t len, uint64_t off)
{
    return sluice_message_pread(reader, buf, len, off);
}

/* Whether libclamav's mail parser runs (a read error leaves it on: the scan
 * then reports the error itself). */
static bool needs_mail_parser(struct clamav_scan *job)
{
    if (job->conf->mail_parser == CLAMAV_PARSER_ALWAYS) {
        snprintf(job->shape, sizeof job->shape, "mail_parser = \"always\"");
        return true;
    }
    return mail_shape_read(shape_pread, job->reader, job->shape, sizeof job->shape) !=
           MAIL_SHAPE_PLAIN;
}

/* On a pool thread: nothing of the session is touched here. */
static void scan_work(void *arg)
{
    struct clamav_scan *job = arg;
    const struct clamav_conf *c = job->conf;
    double t0 = now_seconds();
    if (job->engine) {
        job->parsed_mail = needs_mail_parser(job);
        if (!job->parsed_mail)
            sluice_counter_add(c->unparsed, 1);
        job->result = clamav_engine_scan(job->engine, job->reader, job->parsed_mail,
                                         job->virname, sizeof job->virname, job->detail,
                                         sizeof job->detail);
        job->db_version = clamav_engine_version(job->engine);
        clamav_engine_put(job->engine);
        job->engine = NULL;
    } else {
        job->result = clamav_clamd_scan(c, job->reader, job->virname, sizeof job->virname,
                                        job->detail, sizeof job->detail, job->failover,
                                        sizeof job->failover);
    }
    /* The spool goes back as soon as it is read. */
    sluice_message_close(job->reader);
    job->reader = NULL;
    job->seconds = now_seconds() - t0;
    sluice_histogram_observe(c->scan_seconds, job->seconds);
}

/* On the session's loop thread; s is NULL when the session ended or the
 * entry's timeout decided meanwhile. */
static void scan_done(sluice_session *s, void *arg)
{
    struct clamav_scan *job = arg;
    if (s) {
        if (job->failover[0])
            sluice_log(s, SLUICE_LOG_WARN, "clamd failover: %s", job->failover);
        if (job->conf->mode == CLAMAV_MODE_LIBCLAMAV)
            sluice_log(s, SLUICE_LOG_DEBUG, "scanned in %.3f s, %s (%s)", job->seconds,
                       job->parsed_mail ? "with the mail parser" : "as it is", job->shape);
        else
            sluice_log(s, SLUICE_LOG_DEBUG, "scanned in %.3f s", job->seconds);
        sluice_resume(s, scan_verdict(s, job));
    }
    clamav_conf_unref(job->conf);
    free(job);
}

static void scan_free(struct clamav_scan *job)
{
    clamav_engine_put(job->engine);
    sluice_message_close(job->reader);
    clamav_conf_unref(job->conf);
    free(job);
}

static enum sluice_verdict clamav_eom(sluice_session *s, void *entry_state, void *thread_state)
{
    struct clamav_conf *c = entry_state;
    uint64_t size = sluice_message_size(s);
    if (size > (uint64_t)c->max_message_size)
        return on_oversize(s, c, size);
    sluice_counter_add(c->scanned, 1);
    struct clamav_scan *job = calloc(1, sizeof *job);
    if (!job)
        return on_error(s, c, "out of memory");
    clamav_conf_ref(c);
    job->conf = c;
    /* Taken now: a swap after this point leaves this scan on its engine. */
    if (c->mode == CLAMAV_MODE_LIBCLAMAV && !(job->engine = clamav_engine_get(c->db))) {
        scan_free(job);
        return on_error(s, c, "no engine loaded (the database is reloading, or failed to load)");
    }
    job->reader = sluice_message_open(s);
    if (!job->reader) {
        scan_free(job);
        return on_error(s, c, "cannot open the message");
    }
    if (sluice_work(s, scan_work, scan_done, job) < 0) {
        scan_free(job);
        return on_error(s, c, "cannot reach the thread pool");
    }
    return SLUICE_PENDING;
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static int clamav_init(sluice_entry *entry, void **entry_state, char *err, size_t errlen)
{
    struct clamav_conf *c;
    if (clamav_conf_load(entry, &c, err, errlen) < 0)
        return -1;
    if (c->mode == CLAMAV_MODE_LIBCLAMAV && clamav_db_attach(c, err, errlen) < 0) {
        clamav_conf_unref(c);
        return -1;
    }
    *entry_state = c;
    return 0;
}

/* Scans still running (their sessions gone) keep their engine and the
 * settings by reference; the database stops logging through this entry. */
static void clamav_fini(sluice_entry *entry, void *entry_state)
{
    struct clamav_conf *c = entry_state;
    clamav_db_detach(c);
    clamav_conf_unref(c);
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "clamav",
    .version = "1.0",
    .init = clamav_init,
    .fini = clamav_fini,
    .hooks =
        {
            [SLUICE_HOOK_EOM] = clamav_eom,
        },
};
