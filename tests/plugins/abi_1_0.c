/* Test plugin: built for ABI 1.0 (before the entry-level services); a newer
 * minor of the host must still load it. */
#include <sluice/sluice.h>

SLUICE_PLUGIN = {
    .abi_major = 1,
    .abi_minor = 0,
    .name = "abi_1_0",
    .version = "1",
};
