"""Out of file descriptors (issue 9, section 3): at EMFILE the worker pauses
accepting instead of spinning, logs a count per interval instead of a line
per failure, answers a client over the limit with 421 4.3.2 through a
reserve descriptor, and serves normal clients again once descriptors free
up. At start the descriptor budget of the configuration is checked against
RLIMIT_NOFILE: raised where allowed, a warning with the numbers otherwise."""

import os
import re
import resource
import smtplib
import socket
import subprocess
import time
import unittest
import urllib.request

from sluice_harness import (Sluice, SluiceTestCase, START_TIMEOUT, base_config, pool,
                            sluice_bin, wait_until)

SENDER = "sender@x.example"
BODY = b"Subject: fd\r\n\r\nbody\r\n"
# Low enough that a few hundred idle clients exhaust it, high enough for the
# worker's own descriptors (listeners, loops, store, sanitizer runtime).
LOW_LIMIT = 128
IDLE_CLIENTS = 260
MEASURE_SECONDS = 3.0
# A spinning accept loop burns a whole core per loop thread; a paused one
# wakes ten times a second.
MAX_CPU_SHARE = 0.3
MAX_ACCEPT_LINES_PER_SECOND = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class LimitedSluice(Sluice):
    """A sluice started with RLIMIT_NOFILE set to (soft, hard)."""

    def __init__(self, workdir, config_text, soft, hard):
        self.conf_path = os.path.join(workdir, "sluice.conf")
        with open(self.conf_path, "w") as f:
            f.write(config_text)
        self.log_path = os.path.join(workdir, "sluice.log")
        self.log = open(self.log_path, "ab")

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.proc = subprocess.Popen([sluice_bin(), "-c", self.conf_path],
                                     stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, preexec_fn=limit)
        self.wait_ready(START_TIMEOUT)

    def worker_pid(self):
        path = "/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)
        with open(path) as f:
            kids = f.read().split()
        assert len(kids) == 1, kids
        return int(kids[0])


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def soft_limit_of(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no descriptor limit in /proc/%d/limits" % pid)


class DescriptorExhaustionTest(SluiceTestCase):
    def start_limited(self, soft, hard, **overrides):
        b = self.start_backend("a")
        port = self.free_listen_port()
        overrides.setdefault("connections", {"max_sessions": 0, "per_address": 0,
                                             "per_network": 0, "rate": 0})
        text = base_config(self.workdir, port, [pool("a", [b.port])], [("a.example", "a")],
                           **overrides)
        s = LimitedSluice(self.workdir, text, soft, hard)
        self.sluices.append(s)
        return s, port, b

    def free_listen_port(self):
        from sluice_harness import free_port
        return free_port()

    def open_idle_clients(self, port, count):
        socks = []
        for _ in range(count):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.setblocking(False)
            socks.append(c)
        self.addCleanup(lambda: [c.close() for c in socks])
        return socks

    @staticmethod
    def first_bytes(socks):
        """What each client has received so far (b"" for nothing yet)."""
        out = []
        for c in socks:
            try:
                out.append(c.recv(4096, socket.MSG_PEEK))
            except (BlockingIOError, ConnectionError):
                out.append(b"")
        return out

    def accept_lines(self, s):
        return s.grep(r" accept: ")

    def test_worker_out_of_descriptors_pauses_accept_answers_421_4_3_2_and_recovers(self):
        from sluice_harness import free_port
        mport = free_port()
        s, port, b = self.start_limited(LOW_LIMIT, LOW_LIMIT,
                                        metrics_listen="127.0.0.1:%d" % mport)
        worker = s.worker_pid()
        early = self.open_session(port)
        self.assertReply(early.cmd("MAIL FROM:<s@x.example>"), 250)
        socks = self.open_idle_clients(port, IDLE_CLIENTS)
        s.wait_log(r"accept: Too many open files: accepting paused")

        # A session already in progress needs a backend socket. Whether one
        # is free at that instant is a race with the threads' reserves; if
        # none is, it is a local failure (451 4.3.0), never the backend's
        # (451 4.4.1, the server marked down).
        rcpt = early.cmd("RCPT TO:<ok@a.example>")
        self.assertIn((rcpt.code, rcpt.text[4:9]), [(250, "2.1.5"), (451, "4.3.0")], rcpt)
        if rcpt.code == 451:
            s.wait_log(r"backend 127\.0\.0\.1:\d+: cannot open a socket: Too many open files")

        # Some clients get the banner, those over the limit get 421 4.3.2.
        wait_until(lambda: any(x.startswith(b"421 4.3.2 ") for x in self.first_bytes(socks)),
                   10, what="a client over the limit to get 421 4.3.2")
        lines_before = len(self.accept_lines(s))
        cpu_before = cpu_seconds(worker)
        t0 = time.monotonic()
        time.sleep(MEASURE_SECONDS)
        elapsed = time.monotonic() - t0
        cpu_share = (cpu_seconds(worker) - cpu_before) / elapsed
        line_rate = (len(self.accept_lines(s)) - lines_before) / elapsed
        self.assertLess(cpu_share, MAX_CPU_SHARE, "worker CPU while out of descriptors")
        self.assertLessEqual(line_rate, MAX_ACCEPT_LINES_PER_SECOND, self.accept_lines(s)[-5:])
        self.assertLess(len(self.accept_lines(s)), 20)

        got = self.first_bytes(socks)
        served = [x for x in got if x.startswith(b"220 ")]
        refused = [x for x in got if x.startswith(b"421 4.3.2 ")]
        self.assertGreater(len(served), 0)
        self.assertGreater(len(refused), 0)
        for x in got:
            self.assertTrue(x == b"" or x.startswith(b"220 ") or x.startswith(b"421 4.3.2 "), x)
        # The counted summary names the failures and the clients answered.
        wait_until(lambda: s.grep(r"accept: \d+ failures \(Too many open files\), \d+ clients "
                                  r"answered 421 4\.3\.2"), 8, what="the per-interval count")

        for c in socks:
            c.close()
        self.assertReply(early.cmd("RSET"), 250)
        self.assertReply(early.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(early.cmd("RCPT TO:<ok@a.example>"), 250)
        self.assertReply(early.cmd("QUIT"), 221)
        self.assertEqual(s.grep(r"marked down|connect failed"), [])
        with smtplib.SMTP("127.0.0.1", port, local_hostname="normal.test", timeout=30) as c:
            self.assertEqual(c.sendmail(SENDER, ["ok@a.example"], BODY), {})
        b.wait_messages(1)
        s.wait_log(r"accept: working again after \d+ failures, \d+ clients answered 421 4\.3\.2")
        # Each client answered 421 4.3.2 counts as a refused session.
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10) as r:
            text = r.read().decode()
        counted = [int(float(line.split()[1])) for line in text.splitlines()
                   if line.startswith("sluice_sessions_refused_total ")]
        self.assertEqual(len(counted), 1, text)
        self.assertGreaterEqual(counted[0], len(refused))
        self.assertEqual(s.grep(r"AddressSanitizer|runtime error|worker exited"), [])

    def test_descriptor_limit_that_cannot_be_raised_is_logged_with_the_numbers(self):
        s, port, b = self.start_limited(LOW_LIMIT, LOW_LIMIT,
                                        connections={"max_sessions": 1000, "per_address": 0,
                                                     "per_network": 0, "rate": 0})
        line = s.wait_log(r"start: the configuration may need \d+ descriptors")[0]
        self.assertIn("max_sessions 1000 x 2 = 2000", line)
        self.assertIn("RLIMIT_NOFILE is %d (hard %d)" % (LOW_LIMIT, LOW_LIMIT), line)
        with smtplib.SMTP("127.0.0.1", port, local_hostname="normal.test", timeout=30) as c:
            self.assertEqual(c.sendmail(SENDER, ["ok@a.example"], BODY), {})

    def test_soft_descriptor_limit_below_the_budget_is_raised_to_the_hard_limit(self):
        hard = 4096
        s, port, b = self.start_limited(LOW_LIMIT, hard,
                                        connections={"max_sessions": 1000, "per_address": 0,
                                                     "per_network": 0, "rate": 0})
        s.wait_log(r"start: descriptor limit raised from %d to %d" % (LOW_LIMIT, hard))
        self.assertEqual(soft_limit_of(s.worker_pid()), hard)
        self.assertEqual(s.grep(r"may need \d+ descriptors"), [])

    def test_budget_that_fits_leaves_the_limit_alone(self):
        s, port, b = self.start_limited(LOW_LIMIT, 4096,
                                        connections={"max_sessions": 10, "per_address": 0,
                                                     "per_network": 0, "rate": 0})
        s.wait_log(r"start: descriptors: up to \d+ needed .*limit %d" % LOW_LIMIT)
        self.assertEqual(soft_limit_of(s.worker_pid()), LOW_LIMIT)


if __name__ == "__main__":
    unittest.main()
