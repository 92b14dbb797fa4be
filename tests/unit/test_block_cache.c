/* The per-thread cache of freed buffer blocks in front of malloc. */
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "block_cache.h"

static int setup(void **state)
{
    (void)state;
    block_cache_flush();
    return 0;
}

static void test_a_freed_block_serves_the_next_request_of_its_class(void **state)
{
    (void)state;
    char *a = block_cache_alloc(2048);
    assert_non_null(a);
    memset(a, 'x', 2048);
    size_t usable = malloc_usable_size(a);
    block_cache_free(a);
    assert_int_equal(block_cache_kept(), usable);
    /* Any size of the class (1025..2048) takes it, the last freed first. */
    char *b = block_cache_alloc(1500);
    assert_ptr_equal(b, a);
    assert_int_equal(block_cache_kept(), 0);
    memset(b, 'y', 2048); /* the whole block is usable again */
    block_cache_free(b);
}

static void test_a_miss_allocates_the_whole_class_size(void **state)
{
    (void)state;
    char *a = block_cache_alloc(3000);
    assert_non_null(a);
    assert_true(malloc_usable_size(a) >= 4096);
    block_cache_free(a);
    assert_ptr_equal(block_cache_alloc(4096), a);
    block_cache_free(a);
}

static void test_small_and_huge_blocks_go_straight_back_to_malloc(void **state)
{
    (void)state;
    void *small = block_cache_alloc(512);
    void *huge = block_cache_alloc(300 * 1024);
    assert_non_null(small);
    assert_non_null(huge);
    block_cache_free(small);
    block_cache_free(huge);
    assert_int_equal(block_cache_kept(), 0);
    block_cache_free(NULL);
    assert_int_equal(block_cache_kept(), 0);
}

static void test_each_class_keeps_a_bounded_number_of_blocks(void **state)
{
    (void)state;
    enum { SIZE = 1024, MANY = BLOCK_CACHE_CLASS_BYTES / SIZE + 10 };
    void *blocks[MANY];
    for (int i = 0; i < MANY; i++) {
        blocks[i] = block_cache_alloc(SIZE);
        assert_non_null(blocks[i]);
    }
    size_t usable = malloc_usable_size(blocks[0]);
    for (int i = 0; i < MANY; i++)
        block_cache_free(blocks[i]);
    assert_int_equal(block_cache_kept(), (BLOCK_CACHE_CLASS_BYTES / SIZE) * usable);
    block_cache_flush();
    assert_int_equal(block_cache_kept(), 0);
}

static void test_the_largest_class_takes_a_full_read_chain(void **state)
{
    (void)state;
    void *a = block_cache_alloc(128 * 1024);
    assert_non_null(a);
    block_cache_free(a);
    assert_true(block_cache_kept() >= 128 * 1024);
    assert_ptr_equal(block_cache_alloc(100 * 1024), a);
    block_cache_free(a);
}

static void *free_blocks_and_exit(void *arg)
{
    void **blocks = arg;
    for (int i = 0; i < 8; i++)
        block_cache_free(blocks[i]);
    return (void *)(uintptr_t)block_cache_kept();
}

/* A thread's blocks stay its own, and go when it ends (under the test
 * build's LeakSanitizer a kept block left behind fails this test). */
static void test_blocks_freed_on_a_thread_stay_with_it_and_go_when_it_ends(void **state)
{
    (void)state;
    void *blocks[8];
    for (int i = 0; i < 8; i++) {
        blocks[i] = block_cache_alloc(8192);
        assert_non_null(blocks[i]);
    }
    pthread_t t;
    void *kept_there = NULL;
    assert_int_equal(pthread_create(&t, NULL, free_blocks_and_exit, blocks), 0);
    assert_int_equal(pthread_join(t, &kept_there), 0);
    assert_true((uintptr_t)kept_there >= 8 * 8192);
    assert_int_equal(block_cache_kept(), 0);
}

static void test_realloc_keeps_the_contents(void **state)
{
    (void)state;
    char *a = block_cache_alloc(1024);
    assert_non_null(a);
    memcpy(a, "kept", 5);
    char *b = block_cache_realloc(a, 64 * 1024);
    assert_non_null(b);
    assert_string_equal(b, "kept");
    block_cache_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_a_freed_block_serves_the_next_request_of_its_class, setup),
        cmocka_unit_test_setup(test_a_miss_allocates_the_whole_class_size, setup),
        cmocka_unit_test_setup(test_small_and_huge_blocks_go_straight_back_to_malloc, setup),
        cmocka_unit_test_setup(test_each_class_keeps_a_bounded_number_of_blocks, setup),
        cmocka_unit_test_setup(test_the_largest_class_takes_a_full_read_chain, setup),
        cmocka_unit_test_setup(test_blocks_freed_on_a_thread_stay_with_it_and_go_when_it_ends,
                               setup),
        cmocka_unit_test_setup(test_realloc_keeps_the_contents, setup),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    block_cache_flush();
    return failed;
}
