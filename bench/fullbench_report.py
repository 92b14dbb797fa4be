"""The results of bench/full-bench.py: the Markdown tables and the
gnuplot chart, from the measurements it collected."""

import json
import os
import subprocess
import sys
import tempfile

ROWS = {
    "a": "direct (smtp-sink)",
    "b": "sluice, no plugins",
    "c": "sluice, full chain",
    "d": "nginx mail proxy",
}


def fmt(v, spec):
    return format(v, spec) if v is not None else "–"


def host_speed_line(meta):
    """bench/host-speed.c before and after the matrix: compare runs by it."""
    def one(hs):
        return "a loopback send + recv %.2f µs, 1,000 rounds of an integer loop %.0f ns" % (
            hs["pair_us"], hs["cpu_ns"])
    after = meta.get("host_speed_after")
    return "Host speed on the proxy CPU (`bench/host-speed.c`, median of 3): before the " \
           "matrix %s%s." % (one(meta["host_speed_before"]),
                             "; after it " + one(after) if after else "")


def spread_table(rows, matrix, header, sep):
    """Lowest–highest of a cell's repetitions, each run's messages/s over the
    median of (a): how far apart two rows must be to differ at all."""
    def spread(cell, row):
        runs = cell["runs"].get(row) or []
        direct = cell["rows"].get("a", {}).get("msgs_per_s")
        if not runs or not direct:
            return "–"
        ratios = [r["msgs_per_s"] / direct for r in runs]
        cpus = [r["cpu_us_per_msg"] for r in runs if "cpu_us_per_msg" in r]
        text = "%.2f–%.2f" % (min(ratios), max(ratios))
        return text + (" · %.0f–%.0f" % (min(cpus), max(cpus)) if cpus else "")
    out = ["## Spread of the repetitions", "",
           "Lowest–highest run of each cell: messages/s over the median of (a) · proxy "
           "CPU µs per message. Two rows whose spreads overlap have not been told apart.",
           "", header, sep]
    for row in rows:
        out.append("| (%s) %s | " % (row, ROWS[row])
                   + " | ".join(spread(c, row) for c in matrix) + " |")
    return out + [""]


def markdown(meta, matrix, syscalls, scale):
    out = ["# Relay benchmark results", "",
           "`%s` on %s, %s. Proxies and the resolver (dnsmasq, rbldnsd) on CPU %s, "
           "smtp-source and smtp-sink on CPU %s, the latency probe on CPU %s; "
           "sluice `threads = %d`, nginx `worker_processes %d`. %d repetition(s) per cell, "
           "median. Load average before: %s."
           % (meta["command"], meta["host"], meta["date"], meta["proxy_cpus"],
              meta["load_cpus"], meta.get("probe_cpus", meta["load_cpus"]), meta["threads"],
              meta["threads"], meta["reps"], meta["loadavg_before"]), ""]
    if meta.get("host_speed_before"):
        out += [host_speed_line(meta), ""]
    if meta.get("probe_pipelining"):
        out += ["The probe pipelines MAIL, RCPT and DATA (`--probe-pipelining`).", ""]
    if meta.get("sluice_pool"):
        out += ["sluice's pool also has `%s` (`--sluice-pool`)." % meta["sluice_pool"], ""]
    rows = meta["rows"]
    header = "| row | " + " | ".join(c["name"] for c in matrix) + " |"
    sep = "|---|" + "---|" * len(matrix)
    tables = [
        ("Messages per second, and the ratio to (a)",
         lambda r: "%s · %s" % (fmt(r.get("msgs_per_s"), ".0f"), fmt(r.get("ratio"), ".2f"))),
        ("Proxy CPU per message, µs (user + system, every process of the proxy)",
         lambda r: fmt(r.get("cpu_us_per_msg"), ".0f")),
        ("Transaction latency p50 / p99, ms (the probe session, median of the runs)",
         lambda r: "%s / %s" % (fmt(r.get("p50_ms"), ".2f"), fmt(r.get("p99_ms"), ".2f"))),
        ("Transaction latency p99 over every probe transaction of the runs together, ms "
         "(one disturbed run weighs on it)",
         lambda r: "%s (%s)" % (fmt(r.get("p99_pooled_ms"), ".2f"),
                                fmt(r.get("probe_samples"), ".0f"))),
        ("Where the probe's slowest transactions wait: p99 of each step, ms "
         "(connect and greeting / EHLO / MAIL / RCPT / DATA / the reply to the final dot; "
         "the first two only with a new connection per message)",
         lambda r: " / ".join(fmt(r.get("steps_p99_ms", {}).get(k), ".1f")
                              for k in ("greeting", "ehlo", "mail", "rcpt", "data", "dot"))),
        ("smtp-sink's wait for its CPU, µs per message (runnable, not running: "
         "/proc/PID/schedstat)",
         lambda r: fmt(r.get("sink_wait_us_per_msg"), ".0f")),
        ("Peak RSS of the proxy, MB (sum over its processes)",
         lambda r: fmt(r["peak_rss_kb"] / 1024 if "peak_rss_kb" in r else None, ".1f")),
    ]
    if matrix and not any("p99_pooled_ms" in r for c in matrix for r in c["rows"].values()):
        tables = [t for t in tables if "together" not in t[0]]
    for title, cellf in (tables if matrix else []):
        out += ["## " + title, "", header, sep]
        for row in rows:
            out.append("| (%s) %s | " % (row, ROWS[row])
                       + " | ".join(cellf(c["rows"][row]) for c in matrix) + " |")
        out.append("")
    if matrix and all(c.get("runs") for c in matrix):
        out += spread_table(rows, matrix, header, sep)
    if matrix:
        counts = ", ".join("%s %d" % (c["name"], c["messages"]) for c in matrix)
        out += ["Messages per run: %s." % counts, ""]
    if syscalls:
        out += ["## System calls per message", "",
                "`strace -c -f` on every process of the proxy, %d messages of 1 KiB, "
                "20 sessions (strace slows the proxy: only the counts mean something)."
                % meta["strace_msgs"], "",
                "| row | per message | most frequent (per message) |", "|---|---|---|"]
        for key, v in syscalls.items():
            top = ", ".join("%s %.1f" % kv for kv in v["top"].items())
            out.append("| (%s) %s, %s | %.1f | %s |" % (key[0], ROWS[key[0]], key[2:],
                                                       v["per_msg"], top))
        out.append("")
    if scale:
        out += ["## Scale: sessions held in the tarpit", "",
                "sluice with `bench/conf/scale` (a DNSBL score for 127.0.1.0/24, "
                "the tarpit holding scored clients' greeting 10 minutes), "
                "`connections.max_sessions = %d`, per-address limits off, "
                "RLIMIT_NOFILE %d. The held sessions come from 127.0.1.1–10; the "
                "good stream (smtp-source, 20 sessions, 1 KiB, a new connection per "
                "message, %d messages) from 127.0.0.1, %d times before the sessions are "
                "held, %d times while they are, and %d times after they are closed; "
                "\"without\" is the median of the runs before and after." % (
                    scale["max_sessions"], scale["rlimit_nofile"], meta["scale_msgs"],
                    meta["reps"], meta["reps"], meta["reps"]), "",
                "| | value |", "|---|---|",
                "| held sessions (requested %d) | %s; before the stream: %s; after it: %s |" % (
                    scale["held_requested"], scale["holder"], scale["held_before_stream"],
                    scale["held_after_stream"]),
                "| RSS idle → held | %.1f MB → %.1f MB (%.1f MB after the stream) |" % (
                    scale["rss_kb_idle"] / 1024, scale["rss_kb_held"] / 1024,
                    scale["rss_kb_held_after_stream"] / 1024),
                "| good stream without / with the held sessions | %.0f / %.0f msg/s (%.2f) |" % (
                    scale["good_msgs_per_s_without"], scale["good_msgs_per_s_with"],
                    scale["good_ratio"]),
                "| good stream p99, without / with | %s / %s ms |" % (
                    fmt(scale["good_p99_ms_without"], ".2f"),
                    fmt(scale["good_p99_ms_with"], ".2f")), ""]
    return "\n".join(out) + "\n"


GNUPLOT = r"""
set terminal pngcairo size 1100,850 font ",10"
set output '%(png)s'
set multiplot layout 2,1 title "%(title)s"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.8 border -1
set key inside left top
set grid ytics
set xtics scale 0 font ",9" rotate by -20 left
set bmargin 4
set ylabel "messages/s ÷ direct"
set yrange [0:*]
plot for [i=2:%(ncols)d] '%(dat)s' index 0 using i:xtic(1) title columnhead
set ylabel "proxy CPU µs per message"
plot for [i=2:%(ncols)d] '%(dat)s' index 1 using i:xtic(1) title columnhead
unset multiplot
"""


def chart(meta, matrix, png, work):
    proxied = [r for r in meta["rows"] if r != "a"]
    dat = os.path.join(work, "chart.dat")
    with open(dat, "w") as f:
        for key in ("ratio", "cpu_us_per_msg"):
            f.write("cell " + " ".join('"(%s) %s"' % (r, ROWS[r]) for r in proxied) + "\n")
            for c in matrix:
                f.write('"%s" ' % c["name"] + " ".join(
                    "%.4f" % c["rows"][r].get(key, 0) for r in proxied) + "\n")
            f.write("\n\n")
    script = GNUPLOT % {"png": png, "dat": dat, "ncols": len(proxied) + 1,
                        "title": "smtp-source -> proxy -> smtp-sink, %s" % meta["date"]}
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def rerender(json_path):
    """Writes the .md and .png beside a full-bench.json again, from it."""
    with open(json_path) as f:
        data = json.load(f)
    base = json_path[:-len(".json")] if json_path.endswith(".json") else json_path
    with open(base + ".md", "w") as f:
        f.write(markdown(data["meta"], data["cells"], data["syscalls"], data["scale"]))
    if data["cells"]:
        with tempfile.TemporaryDirectory() as work:
            chart(data["meta"], data["cells"], base + ".png", work)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench/fullbench_report.py bench/results/full-bench.json")
    rerender(sys.argv[1])
