#!/bin/bash
# Runs every fuzz target for a few seconds on its seed corpus (tests/fuzz/
# corpus/<target>), so a regression in a parser fails CI. New inputs go to a
# scratch directory; the committed seeds are never changed.
#   tests/fuzz/run-short.sh BUILD_DIR [SECONDS]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=$1
seconds=${2:-8}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

export LSAN_OPTIONS=suppressions=$here/lsan.supp
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

for seeds in "$here"/corpus/*/; do
    target=$(basename "$seeds")
    echo "=== $target (${seconds}s)"
    mkdir -p "$scratch/$target"
    (cd "$scratch" && "$build/$target" -max_total_time="$seconds" -max_len=4096 \
        -print_final_stats=1 "$scratch/$target" "$seeds" 2>"$scratch/$target.log") || {
        tail -40 "$scratch/$target.log"
        echo "fuzz target $target failed" >&2
        exit 1
    }
    grep -E "stat::number_of_executed_units" "$scratch/$target.log" || true
done
echo "=== fuzz: every target ran clean"
