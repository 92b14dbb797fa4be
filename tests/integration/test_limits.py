"""Limits hold under load and against bad input: the pool cap, bare newlines,
idle clients, long lines, error counts and recipient counts."""

import concurrent.futures
import os
import smtplib
import time
import unittest

from sluice_harness import SluiceTestCase, make_worker_dir, pool

SENDER = "sender@x.example"
CLIENTS = 50
POOL_CAP = 5


def limits(**values):
    out = {"max_message_size": "40M", "max_recipients": 100}
    out.update(values)
    return out


class LimitsTest(SluiceTestCase):
    def relay(self, pool_options=None, **conf):
        b = self.start_backend("a")
        _, port = self.start_relay([pool("a", [b.port], **(pool_options or {}))],
                                   [("a.example", "a")], **conf)
        return b, port

    def start_data(self, port):
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        return c

    def test_50_concurrent_clients_never_exceed_pool_cap_and_all_deliver(self):
        b, port = self.relay(pool_options={"max_connections": POOL_CAP, "wait": "60s"})

        def send_one(i):
            with smtplib.SMTP("127.0.0.1", port, local_hostname="c%d.test" % i, timeout=90) as c:
                return c.sendmail(SENDER, ["u%d@a.example" % i], b"message %d\r\n" % i)

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as ex:
            results = list(ex.map(send_one, range(CLIENTS), timeout=120))
        self.assertEqual(results, [{}] * CLIENTS)
        msgs = b.wait_messages(CLIENTS, timeout=30)
        self.assertEqual(sorted(m["data"] for m in msgs),
                         sorted(b"message %d\r\n" % i for i in range(CLIENTS)))
        self.assertLessEqual(b.max_concurrent(), POOL_CAP)

    def test_full_pool_after_the_wait_gives_451_4_4_5(self):
        b, port = self.relay(pool_options={"max_connections": 1, "wait": "1s"})
        holder = self.start_data(port)  # holds the only backend slot
        b.wait_event("connect")
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        started = time.monotonic()
        self.assertReply(c.cmd("RCPT TO:<v@a.example>"), 451, "4.4.5")
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(b.max_concurrent(), 1)
        self.assertReply(holder.cmd(b"held\r\n."), 250)

    def test_bare_lf_rejected_with_550_5_5_2_and_nothing_delivered(self):
        b, port = self.relay()
        c = self.start_data(port)
        c.send(b"Subject: smuggle\r\n\r\nline one\nline two\r\n.\r\n")
        self.assertReply(c.read_reply(), 550, "5.5.2")
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(b.message_count(), 0)

    def test_bare_lf_normalized_to_crlf_and_lf_dot_lf_does_not_end_data(self):
        b, port = self.relay(data={"bare_newline": "normalize", "spool_memory": "1M",
                                   "spool_dir": make_worker_dir(
                                       os.path.join(self.workdir, "spool"))})
        c = self.start_data(port)
        c.send(b"Subject: smuggle\r\n\r\nfirst\n.\nsecond\r\nthird\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["data"], b"Subject: smuggle\r\n\r\nfirst\r\n.\r\nsecond\r\nthird\r\n")
        self.assertFalse(msg["bare_lf"], msg["raw"])
        self.assertIn(b"\r\n..\r\n", msg["raw"])

    def test_message_past_spool_memory_in_small_pieces_with_bare_lf_arrives_normalised_whole(self):
        """The decoder writes into the spool run by run: a message that moves
        to the spool file early, sent in pieces that cut its line ends and
        stuffing dots, with a bare LF on every third line (each one a short
        run), arrives whole and normalised."""
        b, port = self.relay(data={"bare_newline": "normalize", "spool_memory": "4K",
                                   "spool_dir": make_worker_dir(
                                       os.path.join(self.workdir, "spool"))})
        wire, want = [b"Subject: pieces\r\n\r\n"], [b"Subject: pieces\r\n\r\n"]
        for i in range(3000):
            wire.append(b"bare %d\nplain %d\r\n..dot %d\r\n" % (i, i, i))
            want.append(b"bare %d\r\nplain %d\r\n.dot %d\r\n" % (i, i, i))
        wire = b"".join(wire) + b".\r\n"
        c = self.start_data(port)
        sizes = (1, 2, 3, 5, 700, 4096, 13)
        pos, k = 0, 0
        while pos < len(wire) and k < 100000:
            n = sizes[k % len(sizes)]
            c.send(wire[pos:pos + n])
            pos, k = pos + n, k + 1
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["data"], b"".join(want))
        self.assertFalse(msg["bare_lf"], "a bare LF reached the backend")

    def test_a_failed_spool_write_refuses_only_its_own_message(self):
        """The spool directory gone (a full or lost disk) refuses the message
        being written with 451; once it is back, the next message of the
        same session is taken."""
        spool = make_worker_dir(os.path.join(self.workdir, "spool"))
        b, port = self.relay(data={"spool_memory": 0, "spool_dir": spool})
        os.rmdir(spool)
        c = self.start_data(port)
        c.send(b"Subject: first\r\n\r\nlost\r\n.\r\n")
        self.assertReply(c.read_reply(), 451, "4.3.0")
        make_worker_dir(spool)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: second\r\n\r\nkept\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["data"], b"Subject: second\r\n\r\nkept\r\n")

    def test_idle_client_gets_421_4_4_2_and_is_closed(self):
        _, port = self.relay(timeouts={"command": "2s", "data_block": "3m"})
        c = self.connect(port)
        self.assertReply(c.read_reply(), 220)
        started = time.monotonic()
        reply = c.read_reply()
        elapsed = time.monotonic() - started
        self.assertReply(reply, 421, "4.4.2")
        self.assertGreaterEqual(elapsed, 1.9)
        self.assertLess(elapsed, 4.0)
        self.assertTrue(c.wait_closed(3), "connection still open after the 421")

    def test_overlong_command_line_gets_500_5_5_2_and_session_continues(self):
        _, port = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("NOOP " + "x" * 3000), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250)

    def test_too_many_errors_gets_421_and_close(self):
        max_errors = 3
        _, port = self.relay(limits=limits(max_errors=max_errors))
        c = self.open_session(port)
        codes = []
        for _ in range(max_errors + 2):
            reply = c.cmd("FROBNICATE")
            codes.append(reply.code)
            if reply.code == 421:
                break
        self.assertEqual(codes[-1], 421, codes)
        self.assertLessEqual(len(codes), max_errors + 1)
        self.assertTrue(c.wait_closed(3), "connection still open after the 421")

    def test_too_many_recipients_gets_452_4_5_3_and_the_rest_deliver(self):
        b, port = self.relay(limits=limits(max_recipients=3))
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        for i in range(3):
            self.assertReply(c.cmd("RCPT TO:<r%d@a.example>" % i), 250)
        self.assertReply(c.cmd("RCPT TO:<r3@a.example>"), 452, "4.5.3")
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"body\r\n."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["r0@a.example", "r1@a.example", "r2@a.example"])


if __name__ == "__main__":
    unittest.main()
