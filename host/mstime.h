/* Milliseconds, the unit of every duration in the configuration: to the
 * timeval libevent wants, and the monotonic clock in them. The one place of
 * both conversions in the host. */
#ifndef SLUICE_MSTIME_H
#define SLUICE_MSTIME_H

#include <stdint.h>
#include <sys/time.h>
#include <time.h>

static inline struct timeval ms_to_timeval(int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* Milliseconds of CLOCK_MONOTONIC: for intervals, never for dates. */
static inline int64_t mstime_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Microseconds of CLOCK_MONOTONIC: for a timer that must not ring before
 * its time by a rounding. */
static inline int64_t mstime_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
