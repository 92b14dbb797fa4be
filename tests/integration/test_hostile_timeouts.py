"""Timeouts that always fire (issue 9, section 4): the PROXY header, one
command line and one backend reply each have a deadline for the whole wait,
which bytes dribbled in one at a time do not push back; and no single client
address can hold a whole backend pool.

Bounds are wide: a timeout fires no earlier than configured and less than
2 s after."""

import select
import smtplib
import socket
import struct
import threading
import time
import unittest

from sluice_harness import (SluiceTestCase, base_config, free_port, pool, wait_until)
from test_hostile import EvilBackend, NO_LIMITS, limits

SENDER = "sender@x.example"
BODY = b"Subject: timeouts\r\n\r\nbody\r\n"
SLACK = 2.0          # a timeout fires within this much after its deadline
# sluice starts a deadline when it sends what the client waits for; the
# client's clock starts when that arrives and its thread runs, which on a
# loaded machine can be a little later: the lower bounds allow this much.
EARLY = 0.25
WATCH_LIMIT = 20.0   # no watched connection is followed longer than this
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class Watch:
    """Sends `chunks` on a connection, one every `interval` seconds, in a
    thread, and records when the peer closed and what it said. Bounded by
    the number of chunks and WATCH_LIMIT."""

    def __init__(self, port, chunks=(), interval=1.0, start_after=b"", connect_data=b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.received = b""
        self.closed_at = None
        self.chunks = list(chunks)
        self.interval = interval
        self.start_after = start_after
        self.connect_data = connect_data
        self.t0 = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _read(self, timeout):
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return True
        try:
            data = self.sock.recv(4096)
        except ConnectionError:
            data = b""
        if not data:
            self.closed_at = time.monotonic()
            return False
        self.received += data
        return True

    def _run(self):
        if self.connect_data:
            self.sock.sendall(self.connect_data)
        deadline = time.monotonic() + WATCH_LIMIT
        # The deadline under test starts once what we wait for has arrived.
        while self.start_after not in self.received and time.monotonic() < deadline:
            if not self._read(deadline - time.monotonic()):
                return
        self.t0 = time.monotonic()
        for chunk in self.chunks:
            try:
                self.sock.sendall(chunk)
            except OSError:
                break
            end = time.monotonic() + self.interval
            while time.monotonic() < end:
                if not self._read(end - time.monotonic()):
                    return
        while time.monotonic() < deadline:
            if not self._read(deadline - time.monotonic()):
                return

    def wait(self):
        self.thread.join(WATCH_LIMIT + 5)
        self.sock.close()
        return self

    @property
    def open_for(self):
        return None if self.closed_at is None or self.t0 is None else self.closed_at - self.t0


def one_byte_chunks(data):
    return [data[i:i + 1] for i in range(len(data))]


class TimeoutTestCase(SluiceTestCase):
    def assertClosedWithin(self, w, seconds, what):
        self.assertIsNotNone(w.closed_at, "%s: still open after %.0f s" % (what, WATCH_LIMIT))
        self.assertGreaterEqual(w.open_for, seconds - EARLY, what)
        self.assertLess(w.open_for, seconds + SLACK, what)

    def deliver(self, port):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="normal.test", timeout=30) as c:
            self.assertEqual(c.sendmail(SENDER, ["ok@a.example"], BODY), {})


class ProxyHeaderTimeoutTest(TimeoutTestCase):
    """A trusted balancer that sends nothing, or part of a header, is closed
    when the header wait is over: timeouts.proxy_header."""

    def start(self, **timeouts):
        b = self.start_backend("a")
        normal, proxied = free_port(), free_port()
        listen = ({"address": "127.0.0.1", "port": normal},
                  {"address": "127.0.0.1", "port": proxied, "proxy_protocol": True,
                   "proxy_trusted": ["127.0.0.1"]})
        t = {"command": "30s"}
        t.update(timeouts)
        self.sluice = self.start_sluice(base_config(
            self.workdir, normal, [pool("a", [b.port])], [("a.example", "a")], listen=listen,
            connections=NO_LIMITS, timeouts=t))
        return normal, proxied, b

    def test_silent_half_v1_half_v2_and_dribbled_proxy_headers_closed_at_proxy_header(self):
        normal, proxied, b = self.start(proxy_header="2s")
        v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 25\r\n"
        v2_addr = struct.pack("!4s4sHH", bytes([192, 0, 2, 7]), bytes([127, 0, 0, 1]), 4000, 25)
        v2 = PROXY_V2_SIG + b"\x21\x11" + struct.pack("!H", len(v2_addr)) + v2_addr
        cases = {
            "silent balancer": Watch(proxied),
            "half v1 header": Watch(proxied, [v1[:20]]),
            "half v2 header": Watch(proxied, [v2[:16]]),
            "v2 header missing its last address byte": Watch(proxied, [v2[:-1]]),
            "v1 header dribbled a byte every 0.3 s": Watch(proxied, one_byte_chunks(v1), 0.3),
            "v2 header dribbled a byte every 0.5 s": Watch(proxied, one_byte_chunks(v2), 0.5),
        }
        for w in cases.values():
            w.start()
        for what, w in cases.items():
            w.wait()
            self.assertClosedWithin(w, 2.0, what)
            self.assertNotIn(b"220", w.received, what)
        self.assertGreaterEqual(len(self.sluice.grep(r"no complete PROXY header from 127\.0\.0\.1 "
                                                     r"within 2000 ms")), len(cases))
        # A whole header in time still gets the banner, and the session
        # afterwards lives by timeouts.command, not by the header's deadline.
        c = self.connect(proxied)
        c.send(v1)
        self.assertReply(c.read_reply(), 220)
        time.sleep(2.5)
        self.assertReply(c.cmd("NOOP"), 250)
        self.deliver(normal)

    def test_proxy_header_wait_defaults_to_a_few_seconds(self):
        normal, proxied, b = self.start()
        w = Watch(proxied, [b"PROXY TCP4 192.0.2.7"]).start().wait()
        self.assertClosedWithin(w, 5.0, "half v1 header, default proxy_header")


class CommandLineTimeoutTest(TimeoutTestCase):
    """timeouts.command bounds the whole wait for one command line, not the
    gap between bytes."""

    def test_command_line_dribbled_at_any_rate_is_cut_at_the_command_timeout(self):
        b = self.start_backend("a")
        self.sluice, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                             connections=NO_LIMITS,
                                             timeouts={"command": "2s"})
        line = b"MAIL FROM:<dribbler@x.example>\r\n"
        cases = {
            "silent after the banner": Watch(port, start_after=b"\r\n"),
            "a byte every 0.2 s": Watch(port, one_byte_chunks(line), 0.2, start_after=b"\r\n"),
            "a byte every 1 s": Watch(port, one_byte_chunks(line), 1.0, start_after=b"\r\n"),
            "a byte every 1.9 s": Watch(port, one_byte_chunks(line), 1.9, start_after=b"\r\n"),
            # After EHLO: the deadline of the next line starts with EHLO's reply.
            "EHLO, then a byte every 0.5 s": Watch(
                port, one_byte_chunks(b"NOOP\r\n"), 0.5, start_after=b"250 ",
                connect_data=b"EHLO dribbler.test\r\n"),
        }
        for w in cases.values():
            w.start()
        for what, w in cases.items():
            w.wait()
            self.assertClosedWithin(w, 2.0, what)
            self.assertIn(b"421 4.4.2 ", w.received, what)
        self.assertEqual(len(self.sluice.grep(r"timeout: no complete command line within 2000 ms")),
                         len(cases))
        self.deliver(port)
        b.wait_messages(1)

    def test_client_sending_whole_commands_slower_than_nothing_but_within_the_timeout_stays(self):
        b = self.start_backend("a")
        self.sluice, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                             connections=NO_LIMITS,
                                             timeouts={"command": "2s"})
        c = self.open_session(port)
        # Five commands 1.5 s apart: 7.5 s in all, each line well within 2 s.
        for _ in range(5):
            time.sleep(1.5)
            self.assertReply(c.cmd("NOOP"), 250)
        # A command line sent in pieces, whole within the timeout.
        c.send(b"MAIL FROM:<")
        time.sleep(0.8)
        c.send(b"s@x.example>")
        time.sleep(0.8)
        c.send(b"\r\n")
        self.assertReply(c.read_reply(), 250)

    def test_dribbled_message_is_cut_at_data_total(self):
        b = self.start_backend("a")
        self.sluice, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                             connections=NO_LIMITS,
                                             timeouts={"command": "30s", "data_block": "2s",
                                                       "data_total": "3s"})
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<ok@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        t0 = time.monotonic()
        closed = None
        for _ in range(20):
            try:
                c.send(b"a line of body, every second\r\n")
            except OSError:
                break
            if c.wait_closed(1.0):
                closed = time.monotonic() - t0
                break
        self.assertIsNotNone(closed, "a dribbled message outlived data_total")
        self.assertGreaterEqual(closed, 3.0 - EARLY)
        self.assertLess(closed, 3.0 + SLACK)
        self.assertIn(b"421 4.4.2 ", c.buf)
        self.assertEqual(b.message_count(), 0)


class BackendReplyTimeoutTest(TimeoutTestCase):
    """A pool's command_timeout and final_timeout bound the whole reply: a
    backend dribbling a well-formed reply is cut like a silent one, and the
    client gets a 4xx, never the backend's late 250."""

    def start(self, mode, **pool_options):
        evil = EvilBackend(self.workdir, mode, ("--dribble-interval", "0.5"))
        self.addCleanup(evil.close)
        evil.wait_ready()
        good = self.start_backend("good")
        opts = {"max_connections": 1, "wait": "10s", "command_timeout": "3s",
                "final_timeout": "3s", "connect_timeout": "3s"}
        opts.update(pool_options)
        self.sluice, port = self.start_relay(
            [pool("good", [good.port]), pool("evil", [evil.port], **opts)],
            [("a.example", "good"), ("evil.example", "evil")],
            connections=NO_LIMITS, limits=limits())
        return port, evil, good

    def timed(self, fn):
        t0 = time.monotonic()
        value = fn()
        return value, time.monotonic() - t0

    def test_dribbled_rcpt_reply_cut_at_command_timeout_and_client_gets_451(self):
        port, evil, good = self.start("dribble_rcpt")
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        reply, took = self.timed(lambda: c.cmd("RCPT TO:<r@evil.example>"))
        self.assertReply(reply, 451, "4.4.2")
        self.assertGreaterEqual(took, 3.0 - EARLY)
        self.assertLess(took, 3.0 + SLACK)
        self.sluice.wait_log(r"no complete reply in time")
        # The slot came back: the pool's next (well-behaved) connection works.
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@evil.example>"), 250)
        self.deliver(port)

    def test_dribbled_banner_cut_at_command_timeout_and_client_gets_4xx(self):
        port, evil, good = self.start("dribble_banner")
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        reply, took = self.timed(lambda: c.cmd("RCPT TO:<r@evil.example>"))
        self.assertEqual(reply.code // 100, 4, reply)
        self.assertGreaterEqual(took, 3.0 - EARLY)
        self.assertLess(took, 3.0 + SLACK)
        self.sluice.wait_log(r"greeting: no complete reply in time")

    def test_dribbled_final_reply_cut_at_final_timeout_never_250(self):
        port, evil, good = self.start("dribble_final")
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@evil.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(BODY)
        reply, took = self.timed(lambda: c.cmd("."))
        self.assertReply(reply, 451, "4.4.2")
        self.assertGreaterEqual(took, 3.0 - EARLY)
        self.assertLess(took, 3.0 + SLACK)
        self.assertReply(c.cmd("QUIT"), 221)


class PoolShareTest(TimeoutTestCase):
    """A session in DATA holds its backend slot up to data_total: no single
    client address may hold a whole pool. Over its share (by default a
    quarter of max_connections) a session waits like one facing a full
    pool, for one of its own address's slots, then gets 451 4.4.5."""

    def start(self, max_connections=4, share=None, wait="2s"):
        b = self.start_backend("a")
        p = pool("a", [b.port], max_connections=max_connections, wait=wait)
        if share is None:
            del p["max_connections_per_client"]  # the shipped default
        else:
            p["max_connections_per_client"] = share
        self.sluice, port = self.start_relay([p], [("a.example", "a")], connections=NO_LIMITS)
        return port, b

    def in_data(self, port, source="127.0.0.1"):
        """A session holding a backend slot: past RCPT and DATA's 354."""
        c = self.connect(port, source=(source, 0))
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO holder.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        return c

    def rcpt_after_mail(self, port, source="127.0.0.1"):
        c = self.connect(port, source=(source, 0))
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO waiter.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        t0 = time.monotonic()
        reply = c.cmd("RCPT TO:<r@a.example>")
        return c, reply, time.monotonic() - t0

    def finish(self, c):
        c.send(BODY + b".\r\n")
        self.assertReply(c.read_reply(), 250)

    def test_by_default_one_address_holds_a_quarter_of_a_pool_and_others_still_get_in(self):
        port, b = self.start(max_connections=4)
        holder = self.in_data(port)
        c, reply, took = self.rcpt_after_mail(port)
        self.assertReply(reply, 451, "4.4.5")
        self.assertGreaterEqual(took, 2.0 - EARLY)
        self.assertLess(took, 2.0 + SLACK)
        self.sluice.wait_log(r"no free connection within 2000 ms \(this client address holds 1, "
                             r"its share is 1\)")
        # Three slots are still free for everyone else.
        others = [self.in_data(port, "127.0.0.%d" % i) for i in (2, 3, 4)]
        self.finish(holder)
        for o in others:
            self.finish(o)
        b.wait_messages(4)

    def test_explicit_share_of_two_lets_a_third_session_of_the_address_wait_then_451(self):
        port, b = self.start(max_connections=4, share=2)
        holders = [self.in_data(port), self.in_data(port)]
        c, reply, took = self.rcpt_after_mail(port)
        self.assertReply(reply, 451, "4.4.5")
        self.assertGreaterEqual(took, 2.0 - EARLY)
        self.assertLess(took, 2.0 + SLACK)
        other = self.in_data(port, "127.0.0.2")
        for h in holders + [other]:
            self.finish(h)
        b.wait_messages(3)

    def test_waiter_over_its_share_gets_its_own_slot_when_it_comes_back(self):
        port, b = self.start(max_connections=4, wait="10s")
        holder = self.in_data(port)
        result = {}

        def wait_for_slot():
            result["reply"] = self.rcpt_after_mail(port)[1]
        t = threading.Thread(target=wait_for_slot, daemon=True)
        t.start()
        time.sleep(1.0)  # the waiter is queued for one of its own slots
        self.assertNotIn("reply", result)
        # The session keeps its backend session for its next transaction:
        # the slot comes back when the session ends.
        self.finish(holder)
        self.assertReply(holder.cmd("QUIT"), 221)
        t.join(10)
        self.assertReply(result["reply"], 250)

    def test_share_0_lets_one_address_fill_the_pool(self):
        port, b = self.start(max_connections=3, share=0)
        holders = [self.in_data(port) for _ in range(3)]
        c, reply, took = self.rcpt_after_mail(port, "127.0.0.2")
        self.assertReply(reply, 451, "4.4.5")
        for h in holders:
            self.finish(h)
        b.wait_messages(3)


if __name__ == "__main__":
    unittest.main()
