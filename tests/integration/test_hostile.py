"""Hostile peers on both sides (DESIGN "Bad input"): nothing a client or a
backend sends crashes the daemon, trips the sanitizers, leaks a pool slot, or
makes sluice send the backend something a compliant server would not; a
client hears 250 to a message only when the backend said 250 to its end.

Run against a sluice built with -DSLUICE_SANITIZE=ON: every test ends by
proving a normal transaction still works and that the log holds no
sanitizer report."""

import json
import os
import random
import re
import smtplib
import socket
import struct
import subprocess
import threading
import time
import unittest

from sluice_harness import (PYTHON, make_worker_dir, START_TIMEOUT, Raw, RawClient, SluiceTestCase, free_port,
                            pool, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
EVIL_SCRIPT = os.path.join(HERE, "evil_backend.py")
SENDER = "sender@x.example"
BODY = b"Subject: hostile\r\n\r\nbody\r\n"
SANITIZER_PATTERN = r"ERROR: AddressSanitizer|LeakSanitizer|runtime error|worker exited"
NO_LIMITS = {"max_sessions": 0, "per_address": 0, "per_network": 0, "rate": 0}
MAX_LINE = 2048

# What sluice may send a backend: the commands a compliant server would
# relay, with their parameters in canonical form.
XTEXT = r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+"
MAILBOX = r"[^<>\x00-\x20\x7f]*"
WELL_FORMED_COMMAND = re.compile(
    r"^(?:EHLO [\x21-\x7e]+|QUIT|RSET|NOOP|DATA"
    r"|XCLIENT(?: [A-Z]+=" + XTEXT + r")+"
    r"|MAIL FROM:<" + MAILBOX + r">(?: SIZE=\d+| BODY=(?:7BIT|8BITMIME)| SMTPUTF8"
    r"| RET=(?:FULL|HDRS)| ENVID=" + XTEXT + r")*"
    r"|RCPT TO:<" + MAILBOX + r">(?: NOTIFY=(?:NEVER|(?:SUCCESS|FAILURE|DELAY)"
    r"(?:,(?:SUCCESS|FAILURE|DELAY))*)| ORCPT=[A-Za-z0-9-]+;" + XTEXT + r")*)$")


def limits(**values):
    out = {"max_message_size": "40M", "max_recipients": 100, "max_line_length": MAX_LINE}
    out.update(values)
    return out


class EvilBackend:
    """An evil_backend.py process in one misbehaving mode."""

    def __init__(self, workdir, mode, args=(), name=None):
        self.dir = os.path.join(workdir, "evil-" + (name or mode))
        os.makedirs(self.dir)
        self.out = open(os.path.join(self.dir, "output.txt"), "wb")
        self.proc = subprocess.Popen([PYTHON, EVIL_SCRIPT, "--record-dir", self.dir,
                                      "--mode", mode] + list(args),
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.port = None

    def wait_ready(self):
        ready = os.path.join(self.dir, "ready")
        wait_until(lambda: os.path.exists(ready) or self.proc.poll() is not None,
                   START_TIMEOUT, what="evil backend to listen")
        with open(ready) as f:
            self.port = int(f.read())

    def events(self, kind):
        path = os.path.join(self.dir, "events.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            evs = [json.loads(line) for line in f if line.endswith("\n")]
        return [e for e in evs if e["ev"] == kind]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.out.close()


class HostileTestCase(SluiceTestCase):
    def relay(self, backend_args=(), pool_options=None, **conf):
        b = self.start_backend("a", *backend_args)
        opts = {"max_connections": 2, "wait": "5s"}
        opts.update(pool_options or {})
        conf.setdefault("connections", NO_LIMITS)
        conf.setdefault("limits", limits())
        self.sluice, port = self.start_relay([pool("a", [b.port], **opts)],
                                             [("a.example", "a")], **conf)
        return b, port

    def raw(self, port, timeout=20):
        c = RawClient(port, timeout=timeout)
        self.clients.append(c)
        return c

    def read_replies(self, c, count):
        return [c.read_reply() for _ in range(count)]

    def send_in_background(self, c, data):
        """sendall from a thread: sluice stops reading while its replies pile up."""
        t = threading.Thread(target=lambda: _sendall_quietly(c.sock, data), daemon=True)
        t.start()
        return t

    def deliver(self, port, rcpt="ok@a.example"):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="normal.test", timeout=30) as c:
            return c.sendmail(SENDER, [rcpt], BODY)

    def assert_sanitizers_quiet(self):
        found = self.sluice.grep(SANITIZER_PATTERN)
        self.assertEqual(found, [], "sanitizer report or worker crash in the log")

    def assert_survived(self, port, backend=None):
        """The daemon still relays a normal message, and then shuts down with
        no sanitizer report (leaks are reported at exit)."""
        before = backend.message_count() if backend else 0
        self.assertEqual(self.deliver(port), {})
        if backend:
            backend.wait_messages(before + 1)
            self.assert_backend_commands_well_formed(backend)
        self.assert_sanitizers_quiet()
        self.sluice.stop()
        self.assert_sanitizers_quiet()

    def assert_backend_commands_well_formed(self, backend):
        for line in backend.commands():
            self.assertRegex(line, WELL_FORMED_COMMAND)


def _sendall_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


def _abort(sock):
    """Closes with a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class HostileClientTest(HostileTestCase):
    def test_random_bytes_from_300_connections_never_crash_the_daemon(self):
        b, port = self.relay()
        rng = random.Random(20240611)
        prefixes = [b"", b"EHLO r.test\r\n",
                    b"EHLO r.test\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<u@a.example>\r\n",
                    b"EHLO r.test\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<u@a.example>\r\n"
                    b"DATA\r\n"]
        tokens = [b"\r\n", b"\n", b"\r", b".", b"\x00", b"MAIL FROM:<", b"RCPT TO:<", b">",
                  b"DATA", b"BDAT 5", b"\r\n.\r\n", b"\xff", b" SIZE=", b"@", b"PROXY "]
        deadline = time.monotonic() + 25
        for i in range(300):
            if time.monotonic() > deadline:
                break
            data = bytearray(rng.choice(prefixes))
            for _ in range(rng.randrange(1, 60)):
                if rng.random() < 0.5:
                    data += rng.choice(tokens)
                else:
                    data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                if i % 3:
                    s.recv(512)  # the banner first, or talk early
                s.sendall(bytes(data))
                if i % 4 == 0:
                    s.settimeout(0.2)
                    try:
                        s.recv(65536)
                    except (socket.timeout, OSError):
                        pass
            except OSError:
                pass
            finally:
                if i % 2:
                    _abort(s)
                else:
                    s.close()
        self.assert_survived(port, b)

    def test_nul_bytes_in_commands_and_addresses_are_refused_and_never_relayed(self):
        b, port = self.relay()
        c = self.raw(port)
        c.read_reply()
        self.assertEqual(c.cmd(b"EHLO a\x00b.test").code // 100, 5)
        self.assertReply(c.cmd("EHLO ok.test"), 250)
        self.assertEqual(c.cmd(b"NO\x00OP").code // 100, 5)
        self.assertEqual(c.cmd(b"MAIL FROM:<a\x00b@x.example>").code // 100, 5)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertEqual(c.cmd(b"RCPT TO:<u\x00v@a.example>").code // 100, 5)
        self.assertEqual(c.cmd(b"RCPT TO:<uv@a.example>\x00 NOTIFY=NEVER").code // 100, 5)
        # A bare CR cannot smuggle a second command into the relayed line.
        self.assertEqual(c.cmd(b"RCPT TO:<cr@a.example>\rRCPT TO:<evil@a.example>").code // 100,
                         5)
        self.assertEqual(c.cmd(b"RCPT TO:<cr@a.example> NOTIFY=NEVER\rDATA").code // 100, 5)
        self.assertReply(c.cmd("RCPT TO:<uv@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        # NUL in the body is refused too (a backend dropping it could be
        # smuggled an end of data); the session goes on.
        self.assertReply(c.cmd(b"Subject: nul\r\n\r\na\x00b\r\n."), 554, "5.6.0")
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<uv@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"Subject: clean\r\n\r\nab\r\n."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["uv@a.example"])
        self.assertNotIn(b"\x00", msg["raw"])
        for line in b.commands():
            self.assertNotIn("\x00", line)
            self.assertNotIn("\r", line)
            self.assertNotIn("evil", line)
        self.assert_survived(port, b)

    def test_1mib_line_without_lf_gets_one_500_5_5_2_and_the_session_continues(self):
        b, port = self.relay()
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO big.test"), 250)
        t = self.send_in_background(c, b"A" * (1 << 20))
        self.assertReply(c.read_reply(), 500, "5.5.2")
        t.join(20)
        self.assertReply(c.cmd(b"\r\nNOOP"), 250)
        self.assertEqual(c.buf, b"", "more than one reply to one long line")
        self.assert_survived(port, b)

    def test_line_of_exactly_max_line_length_accepted_and_one_more_refused(self):
        b, port = self.relay()
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO edge.test"), 250)
        for total, code in ((MAX_LINE - 1, 250), (MAX_LINE, 250), (MAX_LINE + 1, 500),
                            (MAX_LINE, 250), (MAX_LINE + 2, 500)):
            line = b"NOOP " + b"x" * (total - len(b"NOOP ") - 2)
            self.assertEqual(len(line) + 2, total)
            self.assertReply(c.cmd(line), code)
        self.assertReply(c.cmd("NOOP"), 250)
        self.assert_survived(port, b)

    def test_20000_pipelined_commands_answered_in_order_while_client_reads_late(self):
        b, port = self.relay()
        c = self.raw(port, timeout=30)
        c.read_reply()
        count = 20000
        burst = b"EHLO burst.test\r\n" + b"NOOP\r\nHELP\r\n" * (count // 2)
        burst += b"MAIL FROM:<a@x.example>\r\nRCPT TO:<u@a.example>\r\nDATA\r\n"
        burst += BODY + b".\r\nQUIT\r\n"
        t = self.send_in_background(c, burst)
        time.sleep(1.5)  # not reading: sluice must stop at its output high-water mark
        self.assertReply(c.read_reply(), 250)
        for i in range(count):
            self.assertEqual(c.read_reply().code, 250 if i % 2 == 0 else 214, "reply %d" % i)
        for code in (250, 250, 354, 250, 221):
            self.assertReply(c.read_reply(), code)
        t.join(10)
        b.wait_messages(1)
        self.assert_survived(port, b)

    def test_malformed_mail_and_rcpt_parameters_refused_and_never_relayed(self):
        b, port = self.relay(limits=limits(max_errors=1000))
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO params.test"), 250)
        bad_mail = [
            "MAIL FROM:<a@x.example> SIZE=abc", "MAIL FROM:<a@x.example> SIZE=",
            "MAIL FROM:<a@x.example> SIZE=-1", "MAIL FROM:<a@x.example> SIZE=1e9",
            "MAIL FROM:<a@x.example> SIZE=999999999999999999999999999",
            "MAIL FROM:<a@x.example> BODY=9BIT", "MAIL FROM:<a@x.example> BODY=",
            "MAIL FROM:<a@x.example> RET=ALL", "MAIL FROM:<a@x.example> RET=",
            "MAIL FROM:<a@x.example> ENVID=+ZZ", "MAIL FROM:<a@x.example> ENVID=a+",
            "MAIL FROM:<a@x.example> ENVID=" + "e" * 200,
            "MAIL FROM:<a@x.example> SMTPUTF8=yes", "MAIL FROM:<a@x.example> X-EVIL=1",
            "MAIL FROM:<a@x.example> =1", "MAIL FROM:<a@x.example> SIZE=1 SIZE=2",
            "MAIL FROM:<a@x.example> RET=FULL RET=HDRS",
            "MAIL FROM:<a@x.example> " + " ".join("SIZE=%d" % i for i in range(60)),
            "MAIL FROM:<a@x.example>SIZE=1", "MAIL FROM:a@x.example",
            "MAIL FROM:<<a@x.example>>", "MAIL FROM:<a@x.example", "MAIL FROM:a@x.example>",
            "MAIL FROM:<a b@x.example>", "MAIL FROM:<a@x.example> \x01",
            "MAIL FROM:<a@x.example> AUTH=<>", "MAIL FROM:<a@x.example> BODY=8BITMIME\x7f",
            "MAIL FROM:<" + "l" * 70 + "@x.example>", "MAIL FROM:<a@" + "d" * 300 + ">",
            "MAIL FROM:", "MAIL", "MAIL TO:<a@x.example>", "MAIL FROM:<a@[1.2.3]>",
        ]
        for line in bad_mail:
            r = c.cmd(line)
            self.assertEqual(r.code // 100, 5, "%r got %r" % (line, r))
        self.assertReply(c.cmd("MAIL FROM:<a@x.example> SIZE=100 RET=HDRS ENVID=abc+2B"), 250)
        bad_rcpt = [
            "RCPT TO:<u@a.example> NOTIFY=SOMETIMES", "RCPT TO:<u@a.example> NOTIFY=",
            "RCPT TO:<u@a.example> NOTIFY=NEVER,SUCCESS", "RCPT TO:<u@a.example> NOTIFY=,",
            "RCPT TO:<u@a.example> ORCPT=bogus", "RCPT TO:<u@a.example> ORCPT=rfc822;+G0",
            "RCPT TO:<u@a.example> ORCPT=;u@a.example", "RCPT TO:<u@a.example> ORCPT=rfc822;",
            "RCPT TO:<u@a.example> ORCPT=rfc822;" + "o" * 600,
            "RCPT TO:<u@a.example> NOTIFY=DELAY NOTIFY=DELAY", "RCPT TO:<u@a.example> X=Y",
            "RCPT TO:<u@a.example> SIZE=10", "RCPT TO:<u@a.example>NOTIFY=NEVER",
            "RCPT TO:u@a.example", "RCPT TO:<>", "RCPT TO:<u@a.example", "RCPT TO:",
            "RCPT FROM:<u@a.example>", "RCPT TO:<u@a.example> \x1b[31m",
        ]
        for line in bad_rcpt:
            r = c.cmd(line)
            self.assertEqual(r.code // 100, 5, "%r got %r" % (line, r))
        self.assertReply(c.cmd("RCPT TO:<u@a.example> NOTIFY=SUCCESS,FAILURE "
                               "ORCPT=rfc822;u+2Bx@a.example"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["u@a.example"])
        self.assert_survived(port, b)

    def test_10000_recipients_first_max_recipients_relayed_rest_get_452_4_5_3(self):
        b, port = self.relay(limits=limits(max_recipients=1000))
        c = self.raw(port, timeout=60)
        c.read_reply()
        self.assertReply(c.cmd("EHLO many.test"), 250)
        burst = b"MAIL FROM:<a@x.example>\r\n"
        burst += b"".join(b"RCPT TO:<r%d@a.example>\r\n" % i for i in range(10000))
        burst += b"DATA\r\n"
        t = self.send_in_background(c, burst)
        self.assertReply(c.read_reply(), 250)
        codes = [c.read_reply() for _ in range(10000)]
        self.assertEqual([r.code for r in codes[:1000]], [250] * 1000)
        for r in codes[1000:]:
            self.assertReply(r, 452, "4.5.3")
        self.assertReply(c.read_reply(), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        t.join(10)
        [msg] = b.wait_messages(1)
        self.assertEqual(len(msg["rcpt_tos"]), 1000)
        self.assert_survived(port, b)

    # --- SMTP smuggling -----------------------------------------------------

    SMUGGLED = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@a.example>\r\nDATA\r\n" \
               b"From: ceo@a.example\r\n\r\nsmuggled"
    FAKE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r",
                 b"\n..\n", b"\r\n\x00.\r\n", b".\n", b"\n.\x00\r\n"]

    def smuggle(self, port, fake_end, split):
        """One transaction whose body carries a fake end of data followed by a
        second transaction; returns the final reply."""
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO smuggler.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        # The only <CRLF>.<CRLF> the client sends is the real one at the end.
        body = b"Subject: smuggle\r\n\r\nbefore" + fake_end + self.SMUGGLED + fake_end
        body += b"after\r\n"
        self.assertNotIn(b"\r\n.\r\n", body)
        if split:
            # Each byte of the fake end in its own segment: the decoder keeps
            # its state across reads.
            head, tail = body.split(fake_end, 1)
            c.send(head)
            for byte in fake_end:
                time.sleep(0.005)
                c.send(bytes([byte]))
            c.send(tail)
        else:
            c.send(body)
        c.send(b".\r\n")
        reply = c.read_reply()
        self.assertReply(c.cmd("QUIT"), 221)
        return reply

    def assert_nothing_smuggled(self, b):
        for line in b.commands():
            self.assertNotIn("evil@", line)
            self.assertNotIn("victim@", line)
            self.assertRegex(line, WELL_FORMED_COMMAND)
        for msg in b.messages():
            self.assertEqual(msg["mail_from"], "a@x.example")
            self.assertFalse(msg["bare_lf"])
            raw = msg["raw"]
            self.assertIsNone(re.search(rb"\r(?!\n)|(?<!\r)\n", raw), raw)
            self.assertNotIn(b"\r\n.\r\n", b"\r\n" + raw)

    def test_smuggling_in_reject_mode_refused_and_backend_sees_no_message(self):
        b, port = self.relay()
        for i, fake_end in enumerate(self.FAKE_ENDS):
            reply = self.smuggle(port, fake_end, split=i % 2 == 1)
            if b"\x00" in fake_end:
                self.assertReply(reply, 554, "5.6.0")  # refused in every mode
            else:
                self.assertReply(reply, 550, "5.5.2")
        time.sleep(0.3)
        self.assertEqual(b.message_count(), 0)
        self.assert_nothing_smuggled(b)
        self.assert_survived(port, b)

    def test_smuggling_in_normalize_mode_becomes_body_text_of_one_message(self):
        b, port = self.relay(data={"bare_newline": "normalize", "spool_memory": "1M",
                                   "spool_dir": make_worker_dir(
                                       os.path.join(self.workdir, "spool"))})
        with_nul = [f for f in self.FAKE_ENDS if b"\x00" in f]
        for i, fake_end in enumerate(self.FAKE_ENDS):
            reply = self.smuggle(port, fake_end, split=i % 2 == 1)
            if fake_end in with_nul:
                self.assertReply(reply, 554, "5.6.0")
            else:
                self.assertReply(reply, 250)
        relayed = len(self.FAKE_ENDS) - len(with_nul)
        msgs = b.wait_messages(relayed)
        time.sleep(0.3)
        self.assertEqual(b.message_count(), relayed)
        self.assert_nothing_smuggled(b)
        for msg in msgs:
            self.assertIn(b"MAIL FROM:<evil@x.example>\r\n", msg["data"])
            self.assertTrue(msg["data"].endswith(b"after\r\n"), msg["data"][-40:])
        self.assertEqual(len(b.events("data_end")), relayed)
        self.assert_survived(port, b)

    # --- disconnects ----------------------------------------------------------

    def test_abrupt_disconnect_at_every_stage_releases_the_pool_slot(self):
        b, port = self.relay(backend_args=("--delay-data", "0.5"),
                             pool_options={"max_connections": 1, "wait": "5s"})
        head = b"EHLO gone.test\r\nMAIL FROM:<a@x.example>\r\n"
        stages = [
            (b"", 0), (b"EHLO gone.test\r\nMAIL FR", 1), (head, 2),
            (head + b"RCPT TO:<u@a.example>\r\n", 0),       # the backend is being opened
            (head + b"RCPT TO:<u@a.example>\r\n", 3),       # with the RCPT answered
            (head + b"RCPT TO:<u@a.example>\r\nDATA\r\nSubject: x\r\n\r\nhalf a bo", 4),
            (head + b"RCPT TO:<u@a.example>\r\nDATA\r\n" + BODY + b".\r\n", 4),  # final wait
            (head + b"RCPT TO:<u@a.example>\r\nDATA\r\n" + BODY + b".", 4),
        ]
        for reset in (False, True):
            for data, replies in stages:
                c = RawClient(port, timeout=10)
                c.read_reply()
                c.send(data)
                for _ in range(replies):
                    c.read_reply()
                if reset:
                    _abort(c.sock)
                else:
                    c.close()
        # One slot, five seconds of wait: a slot leaked by any stage fails this.
        self.assert_survived(port, b)

    def test_half_closed_client_after_quit_still_gets_its_replies(self):
        b, port = self.relay()
        c = self.raw(port)
        c.read_reply()
        c.send(b"EHLO half.test\r\nNOOP\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        time.sleep(0.3)
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 221)
        self.assertTrue(c.wait_closed(5))
        self.assert_survived(port, b)

    def test_half_closed_client_after_end_of_data_and_quit_gets_250_and_221(self):
        b, port = self.relay()
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO half.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(BODY + b".\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 221)
        self.assertTrue(c.wait_closed(5))
        b.wait_messages(1)
        self.assert_survived(port, b)

    def test_half_closed_client_mid_transaction_sends_no_message(self):
        b, port = self.relay()
        c = self.raw(port)
        c.read_reply()
        c.send(b"EHLO half.test\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<u@a.example>\r\n"
               b"DATA\r\nSubject: cut\r\n\r\nno end of data")
        c.sock.shutdown(socket.SHUT_WR)
        self.assertTrue(c.wait_closed(10))
        time.sleep(0.3)
        self.assertEqual(b.message_count(), 0)
        self.assert_survived(port, b)

    def test_client_that_never_reads_keeps_worker_memory_bounded(self):
        b, port = self.relay()
        worker = worker_pid(self.sluice.proc.pid)
        before = rss_kib(worker)
        c = self.raw(port)
        c.sock.setblocking(False)
        chunk = b"NOOP\r\n" * 10000
        sent = 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and sent < (64 << 20):
            try:
                sent += c.sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        grown = rss_kib(worker) - before
        self.assertLess(grown, 48 * 1024, "worker grew by %d KiB for %d bytes of NOOPs"
                        % (grown, sent))
        _abort(c.sock)
        self.assert_survived(port, b)

    # --- commands sluice refuses ---------------------------------------------

    def test_starttls_auth_bdat_xclient_refused_and_client_cannot_forge_identity(self):
        b, port = self.relay(backend_args=("--xclient",))
        c = self.raw(port)
        c.read_reply()
        ehlo = c.cmd("EHLO forger.test")
        for cap in ("STARTTLS", "AUTH", "CHUNKING", "XCLIENT", "BINARYMIME"):
            self.assertNotIn(cap, ehlo.text)
        for line in ("STARTTLS", "AUTH PLAIN AGZvbwBiYXI=", "BDAT 5 LAST",
                     "XCLIENT ADDR=6.6.6.6 NAME=trusted.example", "XFORWARD ADDR=6.6.6.6",
                     "ETRN a.example", "TURN", "EXPN staff"):
            self.assertEqual(c.cmd(line).code // 100, 5, line)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertEqual(c.cmd("BDAT 5 LAST").code // 100, 5)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["xclient"]["ADDR"], "127.0.0.1")
        self.assertNotEqual(msg["xclient"].get("NAME"), "trusted.example")
        self.assert_survived(port, b)

    def test_longest_oddest_helo_still_gives_the_backend_a_well_formed_handshake(self):
        b, port = self.relay(backend_args=("--xclient",))
        c = self.raw(port)
        c.read_reply()
        # The longest name sluice takes, made of what xtext must encode.
        name = ("x+=<>\"%~" * 40)[:255]
        self.assertReply(c.cmd("EHLO " + name), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertEqual(c.cmd("RCPT TO:<u@a.example>").code // 100, 2)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["xclient"]["HELO"], name)
        self.assert_survived(port, b)

    def test_ehlo_1000_times_and_rset_storms_keep_the_session_sane(self):
        b, port = self.relay()
        c = self.raw(port, timeout=30)
        c.read_reply()
        t = self.send_in_background(c, b"EHLO again.test\r\n" * 1000)
        for _ in range(1000):
            self.assertReply(c.read_reply(), 250)
        t.join(10)
        storm = b"RSET\r\n" * 2000
        storm += (b"MAIL FROM:<a@x.example>\r\nRCPT TO:<u@a.example>\r\nRSET\r\n") * 200
        storm += b"EHLO mid.test\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<u@a.example>\r\n"
        storm += b"EHLO again.test\r\nRSET\r\nRSET\r\n"
        t = self.send_in_background(c, storm)
        for _ in range(2000):
            self.assertReply(c.read_reply(), 250)
        for _ in range(200 * 3 + 6):
            self.assertEqual(c.read_reply().code, 250)
        t.join(10)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<last@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["last@a.example"])
        self.assertEqual(b.connection_count(), 1, "the backend session was not reused")
        self.assert_survived(port, b)


class HostileProxyHeaderTest(HostileTestCase):
    def test_garbage_proxy_headers_are_closed_without_banner(self):
        b = self.start_backend("a")
        normal, proxied = free_port(), free_port()
        listen = ({"address": "127.0.0.1", "port": normal},
                  {"address": "127.0.0.1", "port": proxied, "proxy_protocol": True,
                   "proxy_trusted": ["127.0.0.1"]})
        from sluice_harness import base_config
        self.sluice = self.start_sluice(base_config(
            self.workdir, normal, [pool("a", [b.port])], [("a.example", "a")],
            listen=listen, connections=NO_LIMITS, limits=limits()))
        sig = b"\r\n\r\n\x00\r\nQUIT\n"
        garbage = [
            b"PROXY TCP4 1.2.3.4\r\n", b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY " + b"A" * 200, b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n",
            b"proxy tcp4 1.2.3.4 5.6.7.8 1 2\r\n", b"EHLO x\r\n", b"\x00" * 300,
            sig + b"\x21\x11\xff\xff" + b"\x00" * 64,       # length beyond what follows
            sig + b"\x21\x11\x00\x04" + b"\x00" * 4,         # too short for IPv4
            sig + b"\x31\x11\x00\x0c" + b"\x00" * 12,        # version 3
            sig + b"\x2f\x11\x00\x0c" + b"\x00" * 12,        # command 15
            sig + b"\x21\x21\x00\x0c" + b"\x00" * 12,        # IPv6 with IPv4 length
            sig[:8] + b"XXXX" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
        ]
        rng = random.Random(7)
        garbage += [sig + bytes(rng.randrange(256) for _ in range(rng.randrange(4, 300)))
                    for _ in range(20)]
        for data in garbage:
            c = self.raw(proxied, timeout=10)
            c.send(data)
            if data.endswith(b"\x00" * 64):
                c.sock.shutdown(socket.SHUT_WR)
            c.wait_closed(12)
            self.assertNotIn(b"220", c.buf, data)
            c.close()
        c = self.raw(proxied)
        c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 25\r\n")
        self.assertReply(c.read_reply(), 220)
        self.assert_survived(normal, b)


# --- the hostile backend ------------------------------------------------------

# mode -> (expected class of the RCPT reply, of the final reply or None when the
# transaction ends at RCPT, extra evil_backend arguments)
BACKEND_CASES = {
    "garbage_banner": (4, None, ()),
    "nul_banner": (4, None, ()),
    "never_banner": (4, None, ()),
    "ehlo_refused": (4, None, ()),
    "ehlo_garbage_caps": (2, 2, ()),
    "garbage_rcpt": (4, None, ()),
    "mixed_codes_rcpt": (4, None, ()),
    "huge_line_rcpt": (4, None, ()),
    "nul_rcpt": (4, None, ()),
    "bare_cr_rcpt": (4, None, ()),
    "never_reply_rcpt": (4, None, ()),
    "close_mid_reply_rcpt": (4, None, ()),
    "reply_before_mail": (4, None, ()),
    "hang_after_354": (2, 4, ()),
    "data_250_instead_of_354": (2, 4, ()),
    "final_reply_with_354": (2, 4, ()),
    "close_mid_final_reply": (2, 4, ()),
    "garbage_final_reply": (2, 4, ()),
    "never_reply_final": (2, 4, ()),
    "xclient_rejected": (4, None, ("--xclient",)),
    "xclient_garbage": (4, None, ("--xclient",)),
}


class HostileBackendTest(HostileTestCase):
    """One sluice, one pool (max_connections = 1) per evil backend mode. The
    first connection to each backend misbehaves, later ones are well-behaved:
    a following transaction that delivers proves the slot was released."""

    def setUp(self):
        super().setUp()
        self.evil = {}
        for mode, (_, _, args) in BACKEND_CASES.items():
            self.evil[mode] = EvilBackend(self.workdir, mode, args)
        self.addCleanup(self._close_evil)
        for e in self.evil.values():
            e.wait_ready()
        self.normal = self.start_backend("normal")
        pools = [pool("normal", [self.normal.port])]
        routes = [("a.example", "normal")]
        for mode, e in self.evil.items():
            pools.append(pool(mode, [e.port], max_connections=1, wait="8s",
                              command_timeout="2s", final_timeout="2s", connect_timeout="2s"))
            routes.append((mode.replace("_", "-") + ".example", mode))
        self.sluice, self.port = self.start_relay(pools, routes, connections=NO_LIMITS,
                                                  limits=limits())

    def _close_evil(self):
        for e in self.evil.values():
            e.close()

    def transaction(self, domain):
        """MAIL, RCPT, and DATA + body when the RCPT passed. Returns the
        (RCPT reply, final reply or None)."""
        c = RawClient(self.port, timeout=20)
        self.clients.append(c)
        c.read_reply()
        self.assertReply(c.cmd("EHLO victim.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        rcpt = c.cmd("RCPT TO:<u@%s>" % domain)
        final = None
        if rcpt.code // 100 == 2:
            data = c.cmd("DATA")
            if data.code == 354:
                c.send(BODY + b".\r\n")
                final = c.read_reply()
            else:
                final = data
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertReply(c.cmd("QUIT"), 221)
        return rcpt, final

    def run_mode(self, mode, results):
        try:
            domain = mode.replace("_", "-") + ".example"
            first = self.transaction(domain)
            second = self.transaction(domain)
            results[mode] = (first, second)
        except Exception as e:  # reported by the main thread
            results[mode] = e

    def test_every_backend_misbehaviour_gives_4xx_never_250_and_releases_the_slot(self):
        results = {}
        threads = [threading.Thread(target=self.run_mode, args=(mode, results), daemon=True)
                   for mode in BACKEND_CASES]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        for mode, (rcpt_class, final_class, _) in BACKEND_CASES.items():
            with self.subTest(mode=mode):
                outcome = results.get(mode)
                self.assertIsNotNone(outcome, "still running")
                if isinstance(outcome, Exception):
                    raise outcome
                (rcpt, final), (rcpt2, final2) = outcome
                accepted = self.evil[mode].events("accepted")
                if rcpt_class is None:
                    self.assertIn(rcpt.code // 100, (4, 5), rcpt)
                else:
                    self.assertEqual(rcpt.code // 100, rcpt_class, rcpt)
                if final_class is not None:
                    self.assertIsNotNone(final)
                    self.assertEqual(final.code // 100, final_class, final)
                    if final_class == 4:
                        self.assertEqual([a for a in accepted if a["conn"] == 1], [])
                else:
                    self.assertTrue(final is None or final.code // 100 != 2, final)
                # The next transaction gets a slot and a well-behaved connection.
                self.assertEqual(rcpt2.code, 250, rcpt2)
                self.assertIsNotNone(final2)
                self.assertEqual(final2.code, 250, final2)
                # A connection that misbehaved is never kept for the next
                # session; one that served well (garbage EHLO capabilities
                # are ignored) may be.
                if final_class != 2:
                    self.assertTrue(any(a["conn"] >= 2 for a in accepted))
        self.assert_survived(self.port)



class HandshakeRefusalTest(HostileTestCase):
    """A 5xx to EHLO or XCLIENT says the backend is misconfigured for sluice,
    not that the mail is bad: relayed, it would bounce good mail."""

    def refusing_backend(self, mode, args=()):
        e = EvilBackend(self.workdir, mode, args)
        self.addCleanup(e.close)
        e.wait_ready()
        self.sluice, port = self.start_relay(
            [pool("evil", [e.port], command_timeout="2s")], [("a.example", "evil")],
            connections=NO_LIMITS, limits=limits())
        return port

    def assert_handshake_451(self, port, backend_text):
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO victim.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 451, "4.4.0")
        # Every later recipient of the transaction gets the same answer.
        self.assertReply(c.cmd("RCPT TO:<v@a.example>"), 451, "4.4.0")
        self.assertReply(c.cmd("QUIT"), 221)
        self.sluice.wait_log(re.escape(backend_text))

    def test_backend_554_to_ehlo_gives_the_client_451_4_4_0_and_is_logged(self):
        port = self.refusing_backend("ehlo_refused")
        self.assert_handshake_451(port, "554 5.7.1 go away")

    def test_backend_550_to_xclient_gives_the_client_451_4_4_0_and_is_logged(self):
        port = self.refusing_backend("xclient_rejected", ("--xclient",))
        self.assert_handshake_451(port, "550 5.7.0 Error: insufficient authorization")


class HostileIdleBackendTest(HostileTestCase):
    def test_unsolicited_421_on_an_idle_backend_session_next_transaction_reconnects(self):
        e = EvilBackend(self.workdir, "unsolicited_421_idle", ())
        self.addCleanup(e.close)
        e.wait_ready()
        self.sluice, self.port = self.start_relay(
            [pool("idle", [e.port], max_connections=1, wait="5s")],
            [("idle.example", "idle")], connections=NO_LIMITS, limits=limits())
        c = RawClient(self.port, timeout=20)
        self.clients.append(c)
        c.read_reply()
        self.assertReply(c.cmd("EHLO victim.test"), 250)
        for i in range(2):
            self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            self.assertReply(c.cmd("RCPT TO:<u%d@idle.example>" % i), 250)
            self.assertReply(c.cmd("DATA"), 354)
            self.assertReply(c.cmd(BODY + b"."), 250)
            time.sleep(0.6)  # the 421 arrives while the backend session is idle
        self.assertEqual(len(e.events("accepted")), 2)
        self.assertEqual(len(e.events("connect")), 2)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assert_sanitizers_quiet()
        self.sluice.stop()
        self.assert_sanitizers_quiet()


class HostileBackendDisconnectTest(HostileTestCase):
    def leave_while_backend_hangs(self, mode):
        e = EvilBackend(self.workdir, mode, ())
        self.addCleanup(e.close)
        e.wait_ready()
        self.sluice, port = self.start_relay(
            [pool("hung", [e.port], max_connections=1, wait="10s")],
            [("hung.example", "hung")], connections=NO_LIMITS, limits=limits())
        c = RawClient(port, timeout=20)
        c.read_reply()
        c.send(b"EHLO leaver.test\r\nMAIL FROM:<a@x.example>\r\n"
               b"RCPT TO:<u@hung.example>\r\nDATA\r\n" + BODY + b".\r\n")
        wait_until(lambda: e.events("connect"), 5, what="the backend connection")
        if mode == "never_reply_final":
            wait_until(lambda: e.events("data_end"), 5, what="the message")
        _abort(c.sock)
        # The backend never answers: the slot must come back anyway.
        self.assertEqual(self.deliver(port, "ok@hung.example"), {})
        self.assertEqual(len(e.events("accepted")), 1)
        self.assert_sanitizers_quiet()
        self.sluice.stop()
        self.assert_sanitizers_quiet()

    def test_client_leaving_while_a_silent_backend_is_opened_releases_the_slot(self):
        self.leave_while_backend_hangs("never_banner")

    def test_client_leaving_while_the_backend_withholds_the_final_reply_releases_the_slot(self):
        self.leave_while_backend_hangs("never_reply_final")


def worker_pid(master_pid):
    def child():
        try:
            with open("/proc/%d/task/%d/children" % (master_pid, master_pid)) as f:
                pids = f.read().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None
    return wait_until(child, 5, what="sluice's worker process")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


if __name__ == "__main__":
    unittest.main()
