#!/bin/sh
# How long hostile Lua calls hold a loop thread, stock Lua 5.4 against the
# bridge's runtime with its default limits (see bench/README.md).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${TMPDIR:-/tmp}/sluice-lua-hostile
cc -O2 -o "$out" -I"$here/../lua" "$here/lua-hostile.c" "$here/../lua/lua_runtime.c" \
    "$here/../lua/lua_pattern.c" $(pkg-config --cflags --libs lua5.4)
exec "$out"
