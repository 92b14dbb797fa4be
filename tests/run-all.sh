#!/bin/bash
# The one test command of sluice: warning-free builds with gcc and clang, then
# the whole suite (unit and integration tests) under ASan+UBSan.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")/.."

jobs=$(nproc)

build() {
    local dir=$1 cc=$2
    shift 2
    echo "=== build $dir ($cc)"
    CC=$cc cmake -S . -B "$dir" -DSLUICE_WERROR=ON -DSLUICE_TESTS=ON "$@"
    cmake --build "$dir" -j"$jobs"
}

# Optimised builds: some warnings (uninitialised values, overflows) only
# appear when the compiler analyses data flow.
build build-ci-gcc gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo
build build-ci-clang clang -DCMAKE_BUILD_TYPE=RelWithDebInfo
build build-ci-asan gcc -DSLUICE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

echo "=== tests (ASan+UBSan)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-ci-asan --output-on-failure -j2

echo "=== all passed"
