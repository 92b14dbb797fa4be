/* A small per-thread cache of freed blocks in front of malloc, for
 * libevent's buffer chains (io_use_own_allocator routes them here).
 *
 * Why: an evbuffer frees a chain as soon as it is drained and allocates a
 * new one for the next bytes, so each relayed message takes about fifteen
 * chains of 1 KiB and more. glibc's per-thread cache stops below that size,
 * and each one went through the main allocator (bins, consolidation): one
 * instruction in six of a relayed small message, measured with callgrind.
 *
 * Blocks of 1 KiB to 128 KiB are kept on the freeing thread, per power of
 * two of their usable size (a class of 2^k bytes keeps up to
 * BLOCK_CACHE_CLASS_BYTES / 2^k blocks of at least 2^k and under 2^(k+1)
 * bytes); everything else goes to malloc and free at once. A thread keeps
 * under 4 MiB this way, and returns it when it exits. */
#ifndef SLUICE_BLOCK_CACHE_H
#define SLUICE_BLOCK_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#define BLOCK_CACHE_CLASS_BYTES (256 * 1024)

void *block_cache_alloc(size_t n);
void block_cache_free(void *p);
void *block_cache_realloc(void *p, size_t n);

/* Frees what the calling thread keeps (also done when a thread exits). */
void block_cache_flush(void);

/* Usable bytes the calling thread keeps. */
size_t block_cache_kept(void);

/* Whether blocks are kept at all: a build may turn it off by defining this
 * function (the failing-allocation test build, so that every buffer
 * allocation reaches its malloc). */
bool block_cache_enabled(void);

#endif
