/* Test plugin: a shared object without the sluice_plugin descriptor; the host
 * must refuse it. It exports something else so it is a valid library. */
#include <sluice/sluice.h>

SLUICE_PLUGIN_EXPORT int no_symbol_here(void);

int no_symbol_here(void)
{
    return 0;
}
