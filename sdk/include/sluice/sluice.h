/* sluice plugin SDK: everything. Build with `pkg-config --cflags sluice-plugin`. */
#ifndef SLUICE_SDK_H
#define SLUICE_SDK_H

#include "plugin.h"
#include "session.h"
#include "async.h"
#include "store.h"
#include "config.h"
#include "log.h"
#include "net.h"

#endif
