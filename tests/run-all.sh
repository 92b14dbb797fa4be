#!/bin/bash
# The one test command of sluice: warning-free builds with gcc and clang, then
# the whole suite (unit and integration tests) under ASan+UBSan, then every
# fuzz target for a few seconds on its seeds.
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
# What glibc's allocator does is tested on a build without sanitizers.
export SLUICE_PLAIN_BIN=$PWD/build-ci-gcc/sluice
ctest --test-dir build-ci-asan --output-on-failure -j2

# Every libFuzzer target, a few seconds each on its seed corpus.
echo "=== fuzz (clang, libFuzzer)"
CC=clang cmake -S tests/fuzz -B build-ci-fuzz -DCMAKE_BUILD_TYPE=Debug
cmake --build build-ci-fuzz -j"$jobs"
tests/fuzz/run-short.sh "$PWD/build-ci-fuzz" 8

echo "=== all passed"
