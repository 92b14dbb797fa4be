/* See block_cache.h. */
#include "block_cache.h"

#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__SANITIZE_ADDRESS__)
#define BLOCK_CACHE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BLOCK_CACHE_ASAN 1
#endif
#endif

#ifdef BLOCK_CACHE_ASAN
#include <sanitizer/asan_interface.h>
/* A kept block stays poisoned but for its link: a use after free of a
 * chain is still caught although the block was not given back. */
#define BLOCK_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define BLOCK_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define BLOCK_POISON(p, n) ((void)(p), (void)(n))
#define BLOCK_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define BLOCK_MIN_SHIFT 10 /* 1 KiB: glibc's own thread cache serves smaller */
#define BLOCK_MAX_SHIFT 17 /* 128 KiB: a full read's chain (io.c) */
#define BLOCK_CLASSES (BLOCK_MAX_SHIFT - BLOCK_MIN_SHIFT + 1)

struct block_link {
    struct block_link *next;
};

struct block_class {
    struct block_link *head;
    unsigned count;
};

static _Thread_local struct block_class block_classes[BLOCK_CLASSES];
static _Thread_local size_t block_kept_bytes;
static _Thread_local bool block_exit_hooked;
static pthread_key_t block_exit_key;
static bool block_key_made;
static pthread_once_t block_key_once = PTHREAD_ONCE_INIT;

__attribute__((weak)) bool block_cache_enabled(void) { return true; }

static void block_thread_exit(void *unused)
{
    (void)unused;
    block_cache_flush();
}

static void block_key_create(void)
{
    block_key_made = pthread_key_create(&block_exit_key, block_thread_exit) == 0;
}

/* A thread that keeps blocks returns them when it ends. */
static bool block_hook_exit(void)
{
    if (block_exit_hooked)
        return true;
    pthread_once(&block_key_once, block_key_create);
    if (!block_key_made || pthread_setspecific(block_exit_key, (void *)1) != 0)
        return false;
    block_exit_hooked = true;
    return true;
}

static unsigned block_floor_shift(size_t n) { return 63u - (unsigned)__builtin_clzl(n); }

static size_t block_class_cap(unsigned shift)
{
    return BLOCK_CACHE_CLASS_BYTES >> shift;
}

void *block_cache_alloc(size_t n)
{
    if (n < ((size_t)1 << BLOCK_MIN_SHIFT) || n > ((size_t)1 << BLOCK_MAX_SHIFT) ||
        !block_cache_enabled())
        return malloc(n);
    unsigned shift = block_floor_shift(n - 1) + 1;
    struct block_class *c = &block_classes[shift - BLOCK_MIN_SHIFT];
    struct block_link *b = c->head;
    if (!b) /* the class's size, so the block can come back to it */
        return malloc((size_t)1 << shift);
    c->head = b->next;
    c->count--;
    size_t usable = malloc_usable_size(b);
    block_kept_bytes -= usable;
    BLOCK_UNPOISON(b, usable);
    return b;
}

void block_cache_free(void *p)
{
    if (!p)
        return;
    size_t usable = malloc_usable_size(p);
    if (usable < ((size_t)1 << BLOCK_MIN_SHIFT) ||
        usable >= ((size_t)1 << (BLOCK_MAX_SHIFT + 1)) || !block_cache_enabled()) {
        free(p);
        return;
    }
    /* Every block of a class serves any request of the class. */
    unsigned shift = block_floor_shift(usable);
    struct block_class *c = &block_classes[shift - BLOCK_MIN_SHIFT];
    if (c->count >= block_class_cap(shift) || !block_hook_exit()) {
        free(p);
        return;
    }
    struct block_link *b = p;
    b->next = c->head;
    c->head = b;
    c->count++;
    block_kept_bytes += usable;
    BLOCK_POISON((char *)b + sizeof *b, usable - sizeof *b);
}

void *block_cache_realloc(void *p, size_t n) { return realloc(p, n); }

void block_cache_flush(void)
{
    for (unsigned i = 0; i < BLOCK_CLASSES; i++) {
        struct block_class *c = &block_classes[i];
        while (c->head) {
            struct block_link *b = c->head;
            c->head = b->next;
            BLOCK_UNPOISON(b, malloc_usable_size(b));
            free(b);
        }
        c->count = 0;
    }
    block_kept_bytes = 0;
}

size_t block_cache_kept(void) { return block_kept_bytes; }
