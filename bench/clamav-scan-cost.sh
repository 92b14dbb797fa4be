#!/bin/sh
# What one libclamav scan of a 1 KiB and a 100 KiB mail costs, with its work
# files on tmpfs and on disk (see bench/README.md).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -Wall -o "$work/cost" "$here/clamav-scan-cost.c" \
    "$here/../plugins/clamav/mail_shape.c" $(pkg-config --cflags --libs libclamav) -lpthread
mkdir "$work/db" "$work/tmp"
# The tests' EICAR body signature (tests/integration ship the same one).
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!H+H*' > "$work/eicar.com"
echo "Eicar-Test:0:*:$(sigtool --hex-dump < "$work/eicar.com")" > "$work/db/test.ndb"
shm=$(mktemp -d /dev/shm/clamav-cost.XXXXXX)
trap 'rm -rf "$work" "$shm"' EXIT
for size in 1024 102400; do
    count=$([ "$size" -gt 1024 ] && echo 300 || echo 3000)
    "$work/cost" "$work/db" "$shm" "$size" "$count"
    "$work/cost" "$work/db" "$work/tmp" "$size" "$count"
done
