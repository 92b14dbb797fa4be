#!/usr/bin/python3
"""RCPT latency with the greylist plugin, on LMDB and on Redis, against the
same relay without it. One client session runs N transactions (MAIL, RCPT,
RSET), each with a new sender, three times: first sight (read + write, 451),
after min_delay (read + write, 250), then known (read only, 250). Prints the
median and 99th percentile per phase, in microseconds.

usage: SLUICE_BIN=build/sluice bench/greylist-latency.py [N]
Needs redis-server and aiosmtpd (tests/install-deps.sh)."""

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from sluice_harness import (Backend, RawClient, Sluice, base_config, free_port, pool,  # noqa
                            render_config, sluice_bin)
from test_greylist import RedisServer  # noqa

MIN_DELAY = 1.0


def run_phase(port, n, tag):
    c = RawClient(port)
    c.read_reply()
    c.cmd("EHLO bench.test")
    lat, codes = [], set()
    for i in range(n):
        c.cmd("MAIL FROM:<s%d-%s@bench.example>" % (i, tag))
        t = time.perf_counter()
        r = c.cmd("RCPT TO:<rcpt@a.example>")
        lat.append((time.perf_counter() - t) * 1e6)
        codes.add(r.code)
        c.cmd("RSET")
    c.cmd("QUIT")
    c.close()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], codes


def bench(name, n, store, greylist):
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    conf_d = os.path.join(work, "conf.d")
    os.makedirs(conf_d)
    if greylist:
        with open(os.path.join(conf_d, "30-greylist.conf"), "w") as f:
            f.write(render_config({"plugin": "greylist", "min_delay": "1s",
                                   "auto_allowlist": 0}))
    b = Backend(work, "a")
    port = free_port()
    conf = base_config(work, port, [pool("a", [b.port])], [("a.example", "a")],
                       plugin_dir=os.path.join(os.path.dirname(os.path.abspath(sluice_bin())), "plugins"),
                       log_level="info", store=store or {"backend": "lmdb",
                                                         "path": os.path.join(work, "store")})
    s = Sluice(work, conf)
    try:
        phases = ["first sight", "retry passes", "known"] if greylist else ["no plugin"]
        for i, phase in enumerate(phases):
            if i == 1:
                time.sleep(MIN_DELAY + 0.2)
            med, p99, codes = run_phase(port, n, "x")
            print("%-8s %-13s median %7.0f us   p99 %7.0f us   replies %s"
                  % (name, phase, med, p99, sorted(codes)))
    finally:
        s.stop()
        b.close()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    bench("none", n, None, False)
    bench("lmdb", n, None, True)
    redis = RedisServer()
    try:
        bench("redis", n, {"backend": "redis", "redis_address": "127.0.0.1:%d" % redis.port},
              True)
    finally:
        redis.close()


if __name__ == "__main__":
    main()
