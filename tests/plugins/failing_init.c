/* Test plugin: init fails with a message; the chain must not be built. */
#include <stdio.h>

#include <sluice/sluice.h>

static int failing_init_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    (void)e;
    (void)state;
    snprintf(err, errlen, "failing_init refuses to start on purpose");
    return -1;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "failing_init",
    .version = "1",
    .init = failing_init_init,
};
