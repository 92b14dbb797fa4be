"""Shutdown: SIGTERM (or SIGINT) stops accepting at once, lets the sessions
in flight finish within timeouts.shutdown, answers the rest 421 4.3.2, and
the master exits 0; a second SIGTERM stops at once."""

import signal
import time

from sluice_harness import SluiceTestCase, base_config, connect_refused, free_port, pool, wait_until

ROUTES = (("a.example", "a"),)
RCPT = "user@a.example"
SLACK = 2.0


class ShutdownTest(SluiceTestCase):
    def start(self, shutdown, backend="a"):
        b = self.start_backend(backend)
        self.port = free_port()
        return b, self.start_sluice(base_config(
            self.workdir, self.port, [pool("a", [b.port])], ROUTES,
            timeouts={"command": "5m", "data_block": "3m", "shutdown": shutdown}))

    def refused(self):
        return connect_refused(self.port)

    def test_sigterm_lets_a_session_in_data_finish_and_refuses_new_clients(self):
        b, s = self.start("30s")
        c = self.open_session(self.port)
        self.assertReply(c.cmd("MAIL FROM:<c@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Message-ID: <inflight@x.example>\r\n\r\nfirst half\r\n")
        s.proc.send_signal(signal.SIGTERM)
        wait_until(self.refused, 5.0, what="new clients refused")
        time.sleep(0.5)
        c.send(b"second half\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        started = time.monotonic()
        s.proc.wait(10.0)
        self.assertLess(time.monotonic() - started, SLACK, "no wait once the last session ended")
        self.assertEqual(s.proc.returncode, 0)
        self.assertEqual(len(b.wait_messages(1)), 1)
        s.wait_log(r"worker: every session finished")

    def deadline_passes(self, sig):
        b, s = self.start("1s")
        idle = self.open_session(self.port)
        s.proc.send_signal(sig)
        started = time.monotonic()
        self.assertReply(idle.read_reply(), 421, "4.3.2")
        waited = time.monotonic() - started
        self.assertGreaterEqual(waited, 1.0)
        self.assertLess(waited, 1.0 + SLACK)
        self.assertTrue(idle.wait_closed(5.0))
        s.proc.wait(10.0)
        self.assertEqual(s.proc.returncode, 0)
        s.wait_log(r"shutdown deadline passed: closing 1 sessions with 421 4.3.2")

    def test_sessions_past_the_deadline_get_421_4_3_2_and_the_master_exits_0(self):
        self.deadline_passes(signal.SIGTERM)

    def test_sigint_stops_like_sigterm(self):
        self.deadline_passes(signal.SIGINT)

    def test_second_sigterm_stops_at_once(self):
        b, s = self.start("30s")
        idle = self.open_session(self.port)
        s.proc.send_signal(signal.SIGTERM)
        s.wait_log(r"worker: stopping: 1 sessions may finish within 30000 ms")
        s.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        self.assertReply(idle.read_reply(), 421, "4.3.2")
        s.proc.wait(10.0)
        self.assertLess(time.monotonic() - started, SLACK)
        self.assertEqual(s.proc.returncode, 0)
        s.wait_log(r"master: Terminated again: stopping at once")
