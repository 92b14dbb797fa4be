/* Milliseconds, the unit of every duration in the configuration, to the
 * timeval libevent wants. The one conversion of the host. */
#ifndef SLUICE_MSTIME_H
#define SLUICE_MSTIME_H

#include <stdint.h>
#include <sys/time.h>

static inline struct timeval ms_to_timeval(int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

#endif
