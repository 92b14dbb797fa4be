#!/bin/bash
# Messages per second with Postfix's smtp-source -> smtp-sink, directly and
# through sluice, in the same run on loopback. Prints a table; asserts nothing.
#
# Environment (defaults in brackets):
#   MESSAGES   messages per measurement [10000]
#   ROUNDS     measurements per cell; the best is shown [3]
#   SESSIONS   parallel smtp-source sessions [20]
#   SIZE       message payload in bytes [1024]
#   POOL_CAP   sluice's max_connections towards smtp-sink [50]
#   THREADS    sluice loop threads, 0 = one per core [0]
#   LOG_LEVEL  sluice's log level [warn]
#   XCLIENT    "true" or "false": sluice identifies clients with XCLIENT [true]
#   SLUICE_BIN use this binary instead of building build-bench (Release)
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")/.."

MESSAGES=${MESSAGES:-10000}
ROUNDS=${ROUNDS:-3}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
POOL_CAP=${POOL_CAP:-50}
THREADS=${THREADS:-0}
LOG_LEVEL=${LOG_LEVEL:-warn}
XCLIENT=${XCLIENT:-true}
DOMAIN=bench.test
READY_TIMEOUT=20

for tool in smtp-source smtp-sink; do
    if ! command -v "$tool" >/dev/null && [ ! -x "/usr/sbin/$tool" ]; then
        echo "relay-bench: $tool not found (Debian package postfix)" >&2
        exit 1
    fi
done
PATH=$PATH:/usr/sbin

if [ -z "${SLUICE_BIN:-}" ]; then
    # WERROR off: gcc -O2 format-truncation warnings in host/ stop a -Werror Release build.
    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSLUICE_TESTS=OFF -DSLUICE_WERROR=OFF >/dev/null
    cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null
    SLUICE_BIN=$PWD/build-bench/sluice
fi

work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
# sluice started as root runs its worker as the sluice user, which reads
# the configuration here and owns the store below.
chmod 755 "$work"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sink_port=$(free_port)
sluice_port=$(free_port)
dead_dns_port=$(free_port)

sink_user=()
if [ "$(id -u)" -eq 0 ]; then
    sink_user=(-u nobody)
fi
smtp-sink "${sink_user[@]}" -m 1000 "127.0.0.1:$sink_port" 1024 &
pids+=($!)

mkdir "$work/conf.d"
cat >"$work/sluice.conf" <<CONF
threads = $THREADS;
log_level = "$LOG_LEVEL";
hostname = "sluice.bench";
conf_dir = "$work/conf.d";
listen = ( { address = "127.0.0.1"; port = $sluice_port; } );
relay_networks = [ "127.0.0.0/8" ];
pools = (
    {
        name = "sink";
        servers = [ "127.0.0.1:$sink_port" ];
        max_connections = $POOL_CAP;
        xclient = $XCLIENT;
    }
);
routes = ( { match = "$DOMAIN"; pool = "sink"; } );
default_pool = "sink";
dns = { servers = [ "127.0.0.1:$dead_dns_port" ]; timeout = "1s"; };
# One load generator on one address: the per-client limits would refuse it.
connections = { per_address = 0; per_network = 0; rate = 0; };
store = { path = "$work/store"; };
CONF

"$SLUICE_BIN" -c "$work/sluice.conf" 2>"$work/sluice.log" &
pids+=($!)
# The "ready" line is logged at info; below that, the open port is the sign.
accepting() {
    (exec 3<>"/dev/tcp/127.0.0.1/$sluice_port") 2>/dev/null
}
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    if accepting || ! kill -0 "${pids[-1]}" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if ! accepting; then
    echo "relay-bench: sluice did not start:" >&2
    cat "$work/sluice.log" >&2
    exit 1
fi

# Prints the messages per second of one smtp-source run against port $1.
measure() {
    local port=$1
    shift
    local start end
    start=$(date +%s.%N)
    if ! smtp-source "$@" -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -M client.bench -f "sender@client.bench" -t "sink@$DOMAIN" \
        "127.0.0.1:$port" >"$work/source.log" 2>&1; then
        echo "relay-bench: smtp-source failed against port $port:" >&2
        cat "$work/source.log" >&2
        tail -20 "$work/sluice.log" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    awk -v n="$MESSAGES" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }'
}

# The best of ROUNDS runs: loopback numbers are noisy, and the best run is the
# one least disturbed by the rest of the machine.
best_of_rounds() {
    local best=0 rate round
    for ((round = 0; round < ROUNDS; round++)); do
        rate=$(measure "$@")
        if [ "$rate" -gt "$best" ]; then
            best=$rate
        fi
    done
    echo "$best"
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", (a > 0 ? 100 * b / a : 0) }'
}

echo "$MESSAGES messages of $SIZE bytes, $SESSIONS sessions, best of $ROUNDS," \
    "pool cap $POOL_CAP, threads $THREADS, xclient $XCLIENT, log $LOG_LEVEL"
printf '%-28s %14s %14s %8s\n' "mode" "direct msg/s" "sluice msg/s" "kept"
for mode in reused new; do
    opts=()
    label="new connection per message"
    if [ "$mode" = reused ]; then
        opts=(-d)
        label="connections reused"
    fi
    direct=$(best_of_rounds "$sink_port" "${opts[@]}")
    proxied=$(best_of_rounds "$sluice_port" "${opts[@]}")
    printf '%-28s %14s %14s %8s\n' "$label" "$direct" "$proxied" "$(ratio "$direct" "$proxied")"
done
