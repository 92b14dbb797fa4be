/* The allocator of sluice-failalloc, a test build of the daemon: sluice's
 * own calls to malloc, calloc, realloc, strdup and strndup (linked with
 * --wrap) go through here. Armed from outside, it fails exactly one of them,
 * the Nth after arming, in the worker process:
 *
 *   SLUICE_FAILALLOC_DIR=dir   the test writes N into dir/arm (by rename);
 *                              the worker takes it and counts from there;
 *                              the failure writes "N caller-address" into
 *                              dir/fired.
 *
 * libevent allocates through sluice too (io_use_own_allocator), so its
 * buffers' and events' allocations fail here as well; OpenSSL's and
 * c-ares' own are not touched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

static char arm_path[PATH_MAX], fired_path[PATH_MAX];
static pid_t master_pid;
static atomic_long countdown; /* >0: the allocation that brings it to 0 fails */
static atomic_long taken;     /* the N being counted, for the fired file */

__attribute__((constructor)) static void failalloc_init(void)
{
    const char *dir = getenv("SLUICE_FAILALLOC_DIR");
    if (!dir || strlen(dir) + 8 > sizeof arm_path)
        return;
    snprintf(arm_path, sizeof arm_path, "%s/arm", dir);
    snprintf(fired_path, sizeof fired_path, "%s/fired", dir);
    master_pid = getpid();
    void *warm[1];
    backtrace(warm, 1); /* loads libgcc now: a backtrace in a failure must not allocate */
}

/* Reads and removes dir/arm: no allocation here (open/read/unlink only). */
static void failalloc_take_arm(void)
{
    int fd = open(arm_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[32] = {0};
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (unlink(arm_path) < 0 || got <= 0)
        return; /* another thread took it */
    long n = strtol(buf, NULL, 10);
    if (n > 0) {
        atomic_store(&taken, n);
        atomic_store(&countdown, n);
    }
}

/* "N exe+offset ..." for the caller and the frames above it (libevent's
 * allocations come through a relay function in sluice), for
 * addr2line -e sluice-failalloc. */
static void failalloc_report(void *caller)
{
    char line[1024];
    void *frames[14];
    int nf = backtrace(frames, 14);
    int n = snprintf(line, sizeof line, "%ld", atomic_load(&taken));
    for (int i = 0; i < nf + 1 && n > 0 && (size_t)n < sizeof line - 64; i++) {
        void *at = i == 0 ? caller : frames[i - 1];
        Dl_info info = {0};
        dladdr(at, &info);
        if (i > 0 && i < 3)
            continue; /* failalloc_report and failalloc_now */
        n += snprintf(line + n, sizeof line - (size_t)n, " %s+%#lx",
                      info.dli_fname ? info.dli_fname : "?",
                      (unsigned long)((char *)at - (char *)info.dli_fbase));
    }
    if (n < 0 || (size_t)n >= sizeof line - 1)
        return;
    line[n++] = '\n';
    int fd = open(fired_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) < 0) {
            /* the test sees no fired file: nothing more to do here */
        }
        close(fd);
    }
}

static int failalloc_now(void *caller)
{
    if (!arm_path[0] || getpid() == master_pid)
        return 0;
    if (atomic_load(&countdown) <= 0) {
        failalloc_take_arm();
        if (atomic_load(&countdown) <= 0)
            return 0;
    }
    if (atomic_fetch_sub(&countdown, 1) != 1)
        return 0;
    failalloc_report(caller);
    return 1;
}

void *__wrap_malloc(size_t n)
{
    return failalloc_now(__builtin_return_address(0)) ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return failalloc_now(__builtin_return_address(0)) ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return failalloc_now(__builtin_return_address(0)) ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return failalloc_now(__builtin_return_address(0)) ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return failalloc_now(__builtin_return_address(0)) ? NULL : __real_strndup(s, n);
}

/* Every buffer allocation reaches malloc here: none is served from the
 * blocks io keeps (block_cache.h), so each can be the one that fails. */
bool block_cache_enabled(void) { return false; }
