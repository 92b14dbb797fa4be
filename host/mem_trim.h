/* Memory freed after a flood of sessions goes back to the system. glibc
 * keeps what the worker freed for its next allocations: after 10,000 held
 * sessions have left, the worker would stay at its peak size until it
 * restarts. The worker's main thread looks every few seconds (idle work:
 * it only waits for signals) and trims when enough has been freed since
 * the last look. */
#ifndef SLUICE_MEM_TRIM_H
#define SLUICE_MEM_TRIM_H

#include <stddef.h>

struct mem_trim {
    size_t free_after_trim; /* free heap bytes right after the last trim */
};

/* Trims when the free heap grew by at least min_bytes since the last trim
 * (the pages a trim gave back still count as free, so growth is what tells
 * new garbage). Logs what went back. Returns the bytes of resident memory
 * given back (0 when it did not trim). */
size_t mem_trim_check(struct mem_trim *t, size_t min_bytes);

#endif
