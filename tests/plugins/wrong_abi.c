/* Test plugin: built for a future major ABI; the host must refuse it. */
#include <sluice/sluice.h>

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR + 1,
    .abi_minor = 0,
    .name = "wrong_abi",
    .version = "1",
};
