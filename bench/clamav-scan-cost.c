/*
 * What one libclamav scan of a mail costs, apart from sluice: the floor
 * under row (c) of full-bench.py. Scans unique messages (so libclamav's
 * own cache of clean hashes never answers) from memory with the clamav
 * plugin's options (plugins/clamav/clamav_engine.c: clamd's defaults plus
 * CL_SCAN_HEURISTIC_EXCEEDS_MAX): with the mail parser, as mail_parser =
 * "always" scans every message; then as "when_needed" scans plain text:
 * the shape check (plugins/clamav/mail_shape.c), then the scan without the
 * mail parser. Also the shape check alone.
 *
 * usage: clamav-scan-cost DBDIR TEMPDIR SIZE COUNT
 */
#include <clamav.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../plugins/clamav/mail_shape.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static struct cl_engine *engine_load(const char *dbdir, const char *tempdir)
{
    if (cl_init(CL_INIT_DEFAULT) != CL_SUCCESS)
        return NULL;
    struct cl_engine *e = cl_engine_new();
    unsigned int sigs = 0;
    if (!e || cl_engine_set_str(e, CL_ENGINE_TMPDIR, tempdir) != CL_SUCCESS ||
        cl_load(dbdir, e, &sigs, CL_DB_STDOPT) != CL_SUCCESS ||
        cl_engine_compile(e) != CL_SUCCESS)
        return NULL;
    return e;
}

/* A plain text mail of size bytes in lines of 76: what smtp-source's
 * messages look like to the scanner. */
static char *mail_new(size_t size)
{
    static const char head[] = "From: <a@example.org>\r\nTo: <b@example.org>\r\n"
                               "Subject: scan cost 00000000\r\n\r\n";
    char *m = malloc(size + sizeof head);
    if (!m)
        return NULL;
    size_t n = sizeof head - 1;
    memcpy(m, head, n);
    for (size_t col = 0; n < size; n++, col++)
        m[n] = col % 78 == 76 ? '\r' : col % 78 == 77 ? '\n' : (char)('a' + col % 26);
    return m;
}

/* Rewrites the subject's counter: every scan sees a new message. */
static void mail_number(char *m, unsigned i)
{
    char *digits = strstr(m, "cost ") + 5;
    char tmp[9];
    snprintf(tmp, sizeof tmp, "%08u", i % 100000000u);
    memcpy(digits, tmp, 8);
}

struct memory {
    const char *m;
    size_t len;
};

static ssize_t memory_pread(void *handle, void *buf, size_t len, uint64_t off)
{
    const struct memory *mem = handle;
    if (off >= mem->len)
        return 0;
    size_t n = mem->len - (size_t)off < len ? mem->len - (size_t)off : len;
    memcpy(buf, mem->m + off, n);
    return (ssize_t)n;
}

/* The plugin's check, which must find the bench's mail plain. */
static int shape_is_plain(const char *m, size_t len)
{
    struct memory mem = {m, len};
    char why[192];
    if (mail_shape_read(memory_pread, &mem, why, sizeof why) == MAIL_SHAPE_PLAIN)
        return 1;
    fprintf(stderr, "the shape check did not find the mail plain: %s\n", why);
    return 0;
}

static double us_per_check(const char *m, size_t len, unsigned count)
{
    double t0 = now_s();
    for (unsigned i = 0; i < count; i++)
        if (!shape_is_plain(m, len))
            return -1;
    return (now_s() - t0) / count * 1e6;
}

/* checked: the shape check before each scan, as "when_needed" does. */
static double us_per_scan(struct cl_engine *e, char *m, size_t len, unsigned count,
                          const struct cl_scan_options *opts, int checked, unsigned *first)
{
    double t0 = now_s();
    for (unsigned i = 0; i < count; i++) {
        mail_number(m, (*first)++);
        if (checked && !shape_is_plain(m, len))
            return -1;
        cl_fmap_t *map = cl_fmap_open_memory(m, len);
        const char *vir = NULL;
        unsigned long scanned = 0;
        cl_error_t rc = map ? cl_scanmap_callback(map, NULL, &vir, &scanned, e,
                                                  (struct cl_scan_options *)opts, NULL)
                            : CL_EMEM;
        if (map)
            cl_fmap_close(map);
        if (rc != CL_CLEAN) {
            fprintf(stderr, "scan %u: %s\n", i, cl_strerror(rc));
            return -1;
        }
    }
    return (now_s() - t0) / count * 1e6;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s DBDIR TEMPDIR SIZE COUNT\n", argv[0]);
        return 2;
    }
    size_t size = strtoul(argv[3], NULL, 10);
    unsigned count = (unsigned)strtoul(argv[4], NULL, 10);
    struct cl_engine *e = engine_load(argv[1], argv[2]);
    char *m = mail_new(size);
    if (!e || !m || count == 0) {
        fprintf(stderr, "cannot load the engine from %s\n", argv[1]);
        return 1;
    }
    struct cl_scan_options plugin = {.general = CL_SCAN_GENERAL_HEURISTICS,
                                     .parse = ~0u,
                                     .heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX};
    struct cl_scan_options no_mail = plugin;
    no_mail.parse &= ~CL_SCAN_PARSE_MAIL;
    unsigned seq = 0;
    us_per_scan(e, m, size, count / 10 + 1, &plugin, 0, &seq); /* warm up */
    double with = us_per_scan(e, m, size, count, &plugin, 0, &seq);
    double without = us_per_scan(e, m, size, count, &no_mail, 1, &seq);
    double check = us_per_check(m, size, count);
    printf("%zu bytes, temp dir %s: %.1f us per scan with the mail parser (\"always\"); "
           "%.1f us as \"when_needed\" scans plain text, of which %.1f us the shape check\n",
           size, argv[2], with, without, check);
    cl_engine_free(e);
    free(m);
    return with < 0 || without < 0 || check < 0;
}
