#!/usr/bin/python3
"""User-space instructions per relayed message, by function: sluice under
callgrind in the setup of full-bench.py (row (b), smtp-source -> sluice ->
smtp-sink). Two runs of different lengths; their difference divided by the
extra messages is the cost of one message, without start and stop. Unlike
CPU time on this shared machine, the count does not move between runs, so
a change of a few per cent in the proxy's own code shows. The kernel's
share (system calls) is not counted: full-bench.py's strace part counts
those. See bench/README.md.
"""

import argparse
import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
_spec = importlib.util.spec_from_file_location("full_bench", os.path.join(HERE, "full-bench.py"))
fb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fb)

SHORT_RUN = 1000  # messages of the run whose cost is subtracted


def wrapper(work, sluice_bin):
    """A script standing in for sluice: the same binary under callgrind,
    each process (master, worker) writing its own profile into out/."""
    out = os.path.join(work, "callgrind")
    os.makedirs(out)
    os.chmod(out, 0o777)  # the worker writes after dropping privileges
    path = os.path.join(work, "sluice-callgrind")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --trace-children=yes --vgdb=no "
                "--callgrind-out-file=%s/callgrind.%%p %s \"$@\"\n" % (out, sluice_bin))
    os.chmod(path, 0o755)
    return path, out


def function_costs(profile):
    """Exclusive instructions per function of one callgrind profile."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", profile],
                          capture_output=True, text=True, check=True).stdout
    costs, total = Counter(), 0
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) (?:\([^)]*\))?\s*(\S.*)$", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = n
        elif ":" in m.group(2):
            costs[m.group(2).split(" [")[0].rsplit(":", 1)[-1]] += n
    return total, costs


def one_run(args, messages):
    """sluice under callgrind for one smtp-source run; the summed costs of
    its processes."""
    work = tempfile.mkdtemp(prefix="sluice-instructions-")
    run_args = argparse.Namespace(load_cpus=args.load_cpus, proxy_cpus=args.proxy_cpus,
                                  probe_cpus=None)
    run_args.sluice_bin, out = wrapper(work, args.sluice_bin)
    setup = fb.Setup(run_args, work)
    os.sched_setaffinity(0, setup.load_cpus)
    try:
        setup.start_dns()
        setup.start_sink()
        setup.start_sluice("b", "sluice-plain", None)
        fb.smtp_source(setup, setup.ports["b"], args.sessions, messages, args.size,
                       not args.new)
    finally:
        setup.daemons.stop_all()
    total, costs = 0, Counter()
    for _ in range(100):  # the profiles are written at exit: bounded wait
        profiles = glob.glob(os.path.join(out, "callgrind.*"))
        if len(profiles) >= 2 and all(os.path.getsize(p) > 0 for p in profiles):
            break
        time.sleep(0.1)
    for profile in profiles:
        t, c = function_costs(profile)
        total += t
        costs.update(c)
    return total, costs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sluice-bin", default=os.environ.get("SLUICE_BIN",
                                                          os.path.join(fb.REPO, "build-bench",
                                                                       "sluice")))
    p.add_argument("--size", type=int, default=1024, help="message bytes (default 1024)")
    p.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (default 20)")
    p.add_argument("--new", action="store_true", help="a new connection per message")
    p.add_argument("--messages", type=int, default=6000,
                   help="messages of the long run (default 6000)")
    p.add_argument("--top", type=int, default=30, help="functions listed (default 30)")
    p.add_argument("--load-cpus", default="0")
    p.add_argument("--proxy-cpus", default="1")
    args = p.parse_args()
    if args.messages <= SHORT_RUN:
        sys.exit("instructions: --messages must be over %d" % SHORT_RUN)
    short_total, short_costs = one_run(args, SHORT_RUN)
    long_total, long_costs = one_run(args, args.messages)
    extra = args.messages - SHORT_RUN
    per_msg = (long_total - short_total) / extra
    print("# sluice, %d-byte messages, %d sessions, %s connections: %.0f user instructions "
          "per message\n" % (args.size, args.sessions, "new" if args.new else "reused", per_msg))
    print("| instructions | share | function |\n| ---: | ---: | --- |")
    diff = {f: (long_costs[f] - short_costs.get(f, 0)) / extra for f in long_costs}
    for f, n in sorted(diff.items(), key=lambda kv: -kv[1])[:args.top]:
        print("| %.0f | %.1f %% | `%s` |" % (n, 100 * n / per_msg, f))


if __name__ == "__main__":
    main()
