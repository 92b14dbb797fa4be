"""The tarpit plugin: delays measured at the client, the banner delay with the
early-talker test, score-based delays, the read throttle. Timing checks only
assert wide bounds: at least the configured delay, less than delay + 2 s."""

import os
import socket
import time
import unittest

from sluice_harness import (Raw, SluiceTestCase, base_config, free_port, pool, render_config,
                            run_sluice_check, sluice_bin)

SLACK = 2.0  # upper bound over a configured delay
QUICK = 0.9  # a reply that was not delayed by a 1 s delay comes before this
SENDER = "sender@x.example"


def real(value):
    """A float in the configuration (the harness writes ints and strings only)."""
    return Raw(repr(float(value)))


def plugin_dir():
    return os.path.join(os.path.dirname(sluice_bin()), "plugins")


class TarpitTest(SluiceTestCase):
    def relay(self, own_timeout=True, sluice_conf=None, **tarpit):
        entry = {"plugin": "tarpit"}
        if own_timeout:
            entry["timeout"] = "60s"
        entry.update(tarpit)
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "10-tarpit.conf"), "w") as f:
            f.write(render_config(entry))
        b = self.start_backend("a")
        self.backend = b
        s, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                   plugin_dir=plugin_dir(), **(sluice_conf or {}))
        return s, port

    def timed(self, fn, *args):
        started = time.monotonic()
        result = fn(*args)
        return result, time.monotonic() - started

    def assertDelayed(self, elapsed, delay):
        self.assertGreaterEqual(elapsed, delay - 0.05)
        self.assertLess(elapsed, delay + SLACK)

    def test_delay_longer_than_plugin_timeout_needs_no_entry_timeout(self):
        # Without `timeout`, the tarpit gives its entry one that outlasts its
        # delays (sluice_entry_set_timeout): the delay ends, not the timeout.
        _, port = self.relay(own_timeout=False, sluice_conf={"plugin_timeout": "1s"},
                             delay="1500ms", hooks=["helo"])
        c = self.connect(port)
        self.assertReply(c.read_reply(), 220)
        ehlo, elapsed = self.timed(c.cmd, "EHLO client.test")
        self.assertReply(ehlo, 250)
        self.assertDelayed(elapsed, 1.5)

    def test_fixed_delay_holds_the_replies_of_listed_hooks_only(self):
        _, port = self.relay(delay="1s", hooks=["helo", "rcpt"])
        c = self.connect(port)
        banner, elapsed = self.timed(c.read_reply)
        self.assertReply(banner, 220)
        self.assertLess(elapsed, QUICK)
        ehlo, elapsed = self.timed(c.cmd, "EHLO client.test")
        self.assertReply(ehlo, 250)
        self.assertDelayed(elapsed, 1.0)
        mail, elapsed = self.timed(c.cmd, "MAIL FROM:<%s>" % SENDER)
        self.assertReply(mail, 250)
        self.assertLess(elapsed, QUICK)
        rcpt, elapsed = self.timed(c.cmd, "RCPT TO:<u@a.example>")
        self.assertReply(rcpt, 250)
        self.assertDelayed(elapsed, 1.0)

    def test_no_delay_once_a_backend_connection_is_open(self):
        _, port = self.relay(delay="1s", hooks=["rcpt", "data"])
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        _, elapsed = self.timed(c.cmd, "RCPT TO:<u@a.example>")
        self.assertDelayed(elapsed, 1.0)
        rcpt, elapsed = self.timed(c.cmd, "RCPT TO:<v@a.example>")
        self.assertReply(rcpt, 250)
        self.assertLess(elapsed, QUICK)
        data, elapsed = self.timed(c.cmd, "DATA")
        self.assertReply(data, 354)
        self.assertLess(elapsed, QUICK)
        self.assertReply(c.cmd(b"Subject: t\r\n\r\nbody\r\n."), 250)
        self.backend.wait_messages(1)

    def test_banner_delay_greets_a_patient_client_after_the_delay(self):
        _, port = self.relay(banner_delay="1s", early_talker="reject")
        c = self.connect(port)
        banner, elapsed = self.timed(c.read_reply)
        self.assertReply(banner, 220)
        self.assertDelayed(elapsed, 1.0)
        self.assertReply(c.cmd("EHLO client.test"), 250)

    def test_early_talker_gets_554_greeting_then_503_to_everything_but_quit(self):
        s, port = self.relay(banner_delay="1s", early_talker="reject")
        c = self.connect(port)
        started = time.monotonic()
        c.send(b"EHLO early.test\r\n")
        greeting = c.read_reply()
        self.assertDelayed(time.monotonic() - started, 1.0)
        self.assertReply(greeting, 554, "5.7.1")
        self.assertReply(c.read_reply(), 503, "5.5.1")  # the EHLO sent too early
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 503, "5.5.1")
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertTrue(s.grep(r"early talker: rejected"), s.log_tail())
        self.assertEqual(self.backend.connection_count(), 0)

    def test_early_talker_disconnected_with_421(self):
        _, port = self.relay(banner_delay="1s", early_talker="disconnect")
        c = self.connect(port)
        c.send(b"EHLO early.test\r\n")
        self.assertReply(c.read_reply(), 421, "4.7.0")
        self.assertTrue(c.wait_closed(5))

    def test_a_client_gone_during_the_greeting_delay_frees_its_slot_at_once(self):
        """A client that closes while the tarpit holds its greeting is not
        kept until the delay ends: its session ends, and the one connection
        its address may have is free for the next."""
        s, port = self.relay(delay="30s", hooks=["connect"], sluice_conf={
            "connections": {"per_address": 1, "per_network": 0, "rate": 0}})
        first = self.connect(port)
        time.sleep(0.5)  # accepted, the reverse lookup failed, the delay runs
        first.close()
        s.wait_log(r"client disconnected", timeout=5)
        second = self.connect(port, timeout=1.5)
        with self.assertRaises(TimeoutError):  # held by the tarpit, not refused
            second.read_reply()
        self.assertFalse(s.grep(r"refused"), s.log_tail())

    def test_a_client_gone_during_the_reverse_lookup_is_closed_before_the_connect_hook(self):
        """The resolver never answers: a client that closes while its
        reverse lookup runs is let go at once, and the connect hook never
        runs for it (no "connect from" line once the lookup's time is up)."""
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        self.addCleanup(silent.close)
        s, port = self.relay(delay="30s", hooks=["connect"], sluice_conf={
            "dns": {"servers": ["127.0.0.1:%d" % silent.getsockname()[1]], "timeout": "3s"},
            "timeouts": {"command": "5m", "reverse_lookup": "2s", "shutdown": "2s"}})
        c = self.connect(port)
        time.sleep(0.3)
        c.close()
        s.wait_log(r"client disconnected", timeout=1.5)  # before the lookup's 2 s
        time.sleep(2.5)
        self.assertFalse(s.grep(r"connect from"), s.log_tail())

    def test_early_talker_scored_is_delayed_by_its_score(self):
        s, port = self.relay(banner_delay="1s", early_talker="score",
                             early_talker_score=real(5.0), delay_per_score="300ms",
                             max_delay="10s", hooks=["helo"])
        c = self.connect(port)
        c.send(b"EHLO early.test\r\n")
        self.assertReply(c.read_reply(), 220)
        # score 5 x 300 ms before the answer to the pipelined EHLO
        ehlo, elapsed = self.timed(c.read_reply)
        self.assertReply(ehlo, 250)
        self.assertDelayed(elapsed, 1.5)
        self.assertTrue(s.grep(r"early talker: score \+5"), s.log_tail())

    def test_delay_per_score_does_not_delay_a_clean_client(self):
        _, port = self.relay(delay_per_score="2s", hooks=["connect", "helo", "mail", "rcpt"])
        c = self.connect(port)
        banner, elapsed = self.timed(c.read_reply)
        self.assertReply(banner, 220)
        self.assertLess(elapsed, QUICK)
        ehlo, elapsed = self.timed(c.cmd, "EHLO client.test")
        self.assertReply(ehlo, 250)
        self.assertLess(elapsed, QUICK)

    def noop_burst_seconds(self, port, count):
        """Seconds from sending count pipelined NOOPs to reading every reply."""
        c = self.open_session(port)
        started = time.monotonic()
        c.send(b"NOOP\r\n" * count)
        for _ in range(count):
            self.assertReply(c.read_reply(), 250)
        return time.monotonic() - started

    def test_throttle_limits_how_fast_a_suspect_client_is_read(self):
        # 6 KiB at 2 KiB/s: the first second's burst, then two more seconds.
        _, port = self.relay(throttle="2K", throttle_score=real(0.0))
        elapsed = self.noop_burst_seconds(port, 1024)
        self.assertGreaterEqual(elapsed, 1.5)
        self.assertLess(elapsed, 15)

    def test_throttle_spares_a_client_below_the_score(self):
        _, port = self.relay(throttle="2K", throttle_score=real(5.0))
        elapsed = self.noop_burst_seconds(port, 1024)
        self.assertLess(elapsed, 1.5)

    def test_unknown_setting_refuses_to_start(self):
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "10-tarpit.conf"), "w") as f:
            f.write(render_config({"plugin": "tarpit", "delai": "5s"}))
        text = base_config(self.workdir, free_port(), [pool("a", [2525])],
                           plugin_dir=plugin_dir())
        rc, out = run_sluice_check(self.workdir, text)
        self.assertNotEqual(rc, 0)
        self.assertIn("delai", out)


if __name__ == "__main__":
    unittest.main()
