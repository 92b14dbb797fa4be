/* Where an installed sluice finds its configuration and shipped plugins.
 * The defaults follow the prefix the binaries run from, so an install with
 * `cmake --install --prefix X` (or a tree moved as a whole) still finds its
 * own files; a binary run from its build tree uses the build's plugins/. */
#ifndef SLUICE_PATHS_H
#define SLUICE_PATHS_H

/* The default configuration file (<sysconfdir>/sluice/sluice.conf). */
const char *paths_default_config(void);

/* The default directory of shipped plugins (<libdir>/sluice/plugins). */
const char *paths_plugin_dir(void);

/* The installation prefix the running binary belongs to, or the configured
 * one when it runs from elsewhere (the build tree). */
const char *paths_prefix(void);

#endif
