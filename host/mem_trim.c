/* See mem_trim.h. */
#include "mem_trim.h"

#include <malloc.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

#define MIB (1024.0 * 1024.0)

/* Resident bytes of the process (the second field of /proc/self/statm). */
static size_t mem_resident(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

size_t mem_trim_check(struct mem_trim *t, size_t min_bytes)
{
    size_t free_now = mallinfo2().fordblks;
    if (free_now < t->free_after_trim) {
        t->free_after_trim = free_now; /* reused since: count from here */
        return 0;
    }
    if (free_now - t->free_after_trim < min_bytes)
        return 0;
    size_t before = mem_resident();
    malloc_trim(0);
    size_t after = mem_resident();
    t->free_after_trim = mallinfo2().fordblks;
    size_t given = before > after ? before - after : 0;
    log_info(NULL, "worker: %.1f MB of freed memory given back to the system (resident %.1f -> "
                   "%.1f MB)",
             (double)given / MIB, (double)before / MIB, (double)after / MIB);
    return given;
}
