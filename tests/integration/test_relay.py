"""The relay path: what a client sends reaches the routed backend unchanged,
and the backend's answers reach the client verbatim."""

import ctypes
import os
import random
import smtplib
import socket
import unittest

from sluice_harness import SluiceTestCase, has_enhanced_code, pool

SENDER = "sender@x.example"


def tricky_body():
    """Lines a relay could damage: leading dots, a lone dot, 8-bit bytes, a
    998-byte line (the RFC 5321 maximum without CRLF)."""
    return (b"From: s@x.example\r\nSubject: relay test\r\n\r\n"
            b".a line starting with a dot\r\n"
            b"..two dots\r\n"
            b".\r\n"
            b"8-bit: \xc3\xa9\xe2\x82\xac\xff\x80\r\n"
            + b"L" * 998 + b"\r\n"
            b"\r\n"
            b"last line\r\n")


class RelayTest(SluiceTestCase):
    def relay(self, *backend_args, routes=(("a.example", "a"),), pool_options=None, **conf):
        """One backend "a" behind sluice; returns (sluice, port, backend)."""
        b = self.start_backend("a", *backend_args)
        s, port = self.start_relay([pool("a", [b.port], **(pool_options or {}))], routes, **conf)
        return s, port, b

    def smtp(self, port):
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60)
        self.addCleanup(client.close)
        return client

    def test_single_recipient_body_arrives_byte_identical(self):
        _, port, b = self.relay()
        body = tricky_body()
        with self.smtp(port) as c:
            refused = c.sendmail(SENDER, ["user@a.example"], body, mail_options=["BODY=8BITMIME"])
        self.assertEqual(refused, {})
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["data"], body)
        self.assertEqual(msg["mail_from"], SENDER)
        self.assertIn("BODY=8BITMIME", msg["mail_options"])
        self.assertEqual(msg["rcpt_tos"], ["user@a.example"])
        self.assertFalse(msg["bare_lf"])

    def test_multi_recipient_message_arrives_once_byte_identical(self):
        _, port, b = self.relay()
        body = tricky_body()
        rcpts = ["one@a.example", "two@a.example", "three@a.example"]
        with self.smtp(port) as c:
            self.assertEqual(c.sendmail(SENDER, rcpts, body), {})
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], rcpts)
        self.assertEqual(msg["data"], body)

    def test_30mib_message_arrives_byte_identical(self):
        _, port, b = self.relay()
        rng = random.Random(5321)
        alphabet = bytes(range(33, 127))
        lines = [b"Subject: big\r\n\r\n"]
        size = 0
        while size < 30 * 1024 * 1024:
            n = rng.randrange(1, 999)
            line = bytes(rng.choice(alphabet) for _ in range(8)) * (n // 8) + b"\r\n"
            if rng.random() < 0.05:
                line = b"." + line
            lines.append(line)
            size += len(line)
        body = b"".join(lines)
        with self.smtp(port) as c:
            self.assertEqual(c.sendmail(SENDER, ["big@a.example"], body), {})
        [msg] = b.wait_messages(1, timeout=60)
        self.assertEqual(len(msg["data"]), len(body))
        self.assertTrue(msg["data"] == body, "30 MiB body differs")

    def test_messages_whose_last_read_holds_the_end_of_data_arrive_byte_identical(self):
        # Each message leaves the client in one write: its last read ends
        # with the end of data, and the part before it goes into the spool
        # without a copy (the read's buffer handed over). The session reads
        # on into a new buffer: the next message on the connection is whole.
        _, port, b = self.relay()
        rng = random.Random(2920)
        bodies = []
        for size in (40 * 1024, 100 * 1024, 70 * 1024, 33 * 1024):
            lines, n = [b"Subject: handed over %d\r\n\r\n" % size], 0
            while n < size:
                line = bytes(rng.choice(b"abcdefgh .") for _ in range(rng.randrange(1, 120)))
                lines.append(line + b"\r\n")
                n += len(line) + 2
            lines.append(b".last line is dot-stuffed\r\n")
            bodies.append(b"".join(lines))
        with self.smtp(port) as c:
            for body in bodies:
                self.assertEqual(c.sendmail(SENDER, ["whole@a.example"], body), {})
        msgs = b.wait_messages(len(bodies))
        self.assertEqual([len(m["data"]) for m in msgs], [len(x) for x in bodies])
        for m, body in zip(msgs, bodies):
            self.assertTrue(m["data"] == body, "a body differs")

    def test_backend_550_on_one_rcpt_reaches_client_verbatim_others_deliver(self):
        _, port, b = self.relay("--rcpt-reply", "nobody@a.example=550 5.1.1 No such user here")
        rcpts = ["first@a.example", "nobody@a.example", "last@a.example"]
        with self.smtp(port) as c:
            refused = c.sendmail(SENDER, rcpts, b"Subject: x\r\n\r\nhello\r\n")
        self.assertEqual(refused, {"nobody@a.example": (550, b"5.1.1 No such user here")})
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["first@a.example", "last@a.example"])

    def test_multiline_backend_reply_relayed_whole(self):
        lines = ["550-5.1.1 first line of the refusal", "550-5.1.1 second line",
                 "550 5.1.1 third and last line"]
        _, port, _ = self.relay("--rcpt-reply", "multi@a.example=" + "|".join(lines))
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        reply = c.cmd("RCPT TO:<multi@a.example>")
        self.assertEqual([line.decode() for line in reply.lines], lines)

    def test_fully_pipelined_transaction_answers_in_order(self):
        _, port, b = self.relay()
        c = self.open_session(port)
        c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<p1@a.example>\r\nRCPT TO:<p2@a.example>\r\nDATA\r\n"
               % SENDER.encode())
        codes = [c.read_reply().code for _ in range(4)]
        self.assertEqual(codes, [250, 250, 250, 354])
        body = b"Subject: pipelined\r\n\r\n..dot\r\nbody\r\n"
        c.send(body + b".\r\nQUIT\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 221)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["p1@a.example", "p2@a.example"])
        self.assertEqual(msg["data"], b"Subject: pipelined\r\n\r\n.dot\r\nbody\r\n")

    def test_unrouted_domain_refused_and_backend_never_contacted(self):
        s, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        reply = c.cmd("RCPT TO:<victim@elsewhere.example>")
        self.assertEqual(reply.text, "550 5.7.1 Relay access denied")
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(b.connection_count(), 0)

    def test_trusted_client_unrouted_domain_goes_to_default_pool(self):
        a = self.start_backend("a")
        d = self.start_backend("d")
        _, port = self.start_relay([pool("a", [a.port]), pool("d", [d.port])],
                                   [("a.example", "a")], relay_networks=["127.0.0.0/8"],
                                   default_pool="d")
        with self.smtp(port) as c:
            self.assertEqual(c.sendmail(SENDER, ["far@unrouted.example"], b"x\r\n"), {})
        [msg] = d.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["far@unrouted.example"])
        self.assertEqual(a.connection_count(), 0)

    def test_two_domains_routed_to_two_backends(self):
        a = self.start_backend("a")
        bb = self.start_backend("b")
        _, port = self.start_relay([pool("a", [a.port]), pool("b", [bb.port])],
                                   [("a.example", "a"), ("b.example", "b")])
        with self.smtp(port) as c:
            self.assertEqual(c.sendmail(SENDER, ["u@a.example"], b"for a\r\n"), {})
            self.assertEqual(c.sendmail(SENDER, ["u@b.example"], b"for b\r\n"), {})
        self.assertEqual(a.wait_messages(1)[0]["data"], b"for a\r\n")
        self.assertEqual(bb.wait_messages(1)[0]["data"], b"for b\r\n")
        self.assertEqual(a.message_count(), 1)

    def test_route_table_sends_one_address_of_a_domain_elsewhere(self):
        a = self.start_backend("a")
        bb = self.start_backend("b")
        table = os.path.join(self.workdir, "routes.txt")
        with open(table, "w") as f:
            f.write("c.example a\nspecial@c.example b\n")
        _, port = self.start_relay([pool("a", [a.port]), pool("b", [bb.port])], [],
                                   route_table=table)
        with self.smtp(port) as c:
            self.assertEqual(c.sendmail(SENDER, ["plain@c.example"], b"to a\r\n"), {})
            self.assertEqual(c.sendmail(SENDER, ["special@c.example"], b"to b\r\n"), {})
        self.assertEqual(a.wait_messages(1)[0]["rcpt_tos"], ["plain@c.example"])
        self.assertEqual(bb.wait_messages(1)[0]["rcpt_tos"], ["special@c.example"])

    def test_recipient_of_other_route_gets_452_and_next_transaction_delivers_it(self):
        a = self.start_backend("a")
        bb = self.start_backend("b")
        _, port = self.start_relay([pool("a", [a.port]), pool("b", [bb.port])],
                                   [("a.example", "a"), ("b.example", "b")])
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<u@b.example>"), 452, "4.5.3")
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"first\r\n."), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@b.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"second\r\n."), 250)
        self.assertEqual(a.wait_messages(1)[0]["rcpt_tos"], ["u@a.example"])
        [msg] = bb.wait_messages(1)
        self.assertEqual((msg["rcpt_tos"], msg["data"]), (["u@b.example"], b"second\r\n"))

    def test_backend_refusing_mail_from_answers_that_rcpt_and_later_ones(self):
        _, port, b = self.relay("--mail-reply", "550 5.7.1 Sender blocked by backend")
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        for rcpt in ("u1@a.example", "u2@a.example"):
            self.assertEqual(c.cmd("RCPT TO:<%s>" % rcpt).text,
                             "550 5.7.1 Sender blocked by backend")
        self.assertEqual(c.cmd("DATA").code // 100, 5)
        self.assertEqual(b.message_count(), 0)

    def test_every_reply_carries_an_enhanced_status_code(self):
        _, port, _ = self.relay()
        c = self.open_session(port)
        replies = []
        for line in ("NOOP", "HELP", "VRFY postmaster", "RSET", "FROB", "RCPT TO:<u@a.example>",
                     "MAIL FROM:<%s>" % SENDER, "RCPT TO:<x@elsewhere.example>",
                     "RCPT TO:<u@a.example>"):
            replies.append(c.cmd(line))
        self.assertReply(c.cmd("DATA"), 354)
        replies.append(c.cmd(b"body\r\n."))
        replies.append(c.cmd("QUIT"))
        for reply in replies:
            self.assertTrue(has_enhanced_code(reply), reply)

    def test_backend_reply_without_enhanced_code_gets_one_of_its_class(self):
        _, port, _ = self.relay("--rcpt-reply", "old@a.example=550 User unknown")
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertEqual(c.cmd("RCPT TO:<old@a.example>").text, "550 5.0.0 User unknown")

    def test_help_vrfy_noop_rset_answered_locally(self):
        _, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("HELP"), 214)
        self.assertReply(c.cmd("VRFY someone@a.example"), 252)
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        # RSET ended the transaction: a RCPT now lacks its MAIL.
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 503, "5.5.1")
        self.assertEqual(b.connection_count(), 0)

    def test_unknown_command_500_and_rcpt_before_mail_503(self):
        _, port, _ = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("FROBNICATE now"), 500, "5.5.1")
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 503, "5.5.1")

    def test_size_parameter_over_limit_refused_at_mail(self):
        _, port, _ = self.relay()
        c = self.open_session(port)
        too_big = 40 * 1024 * 1024 + 1
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=%d" % (SENDER, too_big)), 552, "5.3.4")

    def test_message_over_limit_refused_and_not_delivered(self):
        _, port, b = self.relay(limits={"max_message_size": "1M", "max_recipients": 100})
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        try:
            c.send((b"x" * 998 + b"\r\n") * 2100 + b".\r\n")
        except ConnectionError:
            pass  # refusing early and closing is allowed; the reply is still read below
        self.assertReply(c.read_reply(), 552, "5.3.4")
        self.assertEqual(b.message_count(), 0)

    def test_each_transaction_logs_one_tx_line_with_envelope_and_result(self):
        s, port, b = self.relay("--rcpt-reply", "gone@a.example=550 5.1.1 Gone")
        with self.smtp(port) as c:
            c.sendmail(SENDER, ["u@a.example", "gone@a.example"], b"logged\r\n")
        b.wait_messages(1)
        [line] = s.wait_log(r"\btx ")
        self.assertIn("from=<%s>" % SENDER, line)
        self.assertRegex(line, r"rcpt=<?u@a\.example>?:250,<?gone@a\.example>?:550\b")
        self.assertIn("helo=client.test", line)
        self.assertIn("backend=127.0.0.1:%d" % b.port, line)
        self.assertRegex(line, r"\bresult=250\b")
        self.assertRegex(line, r"\bsize=\d+")

    def test_later_transactions_reuse_the_backend_connection(self):
        _, port, b = self.relay()
        with self.smtp(port) as c:
            self.assertEqual(c.sendmail(SENDER, ["u@a.example"], b"one\r\n"), {})
            self.assertEqual(c.sendmail(SENDER, ["v@a.example"], b"two\r\n"), {})
        msgs = b.wait_messages(2)
        self.assertEqual([m["data"] for m in msgs], [b"one\r\n", b"two\r\n"])
        self.assertEqual(msgs[0]["conn"], msgs[1]["conn"])
        self.assertEqual(b.connection_count(), 1)

    def test_later_transaction_of_a_session_carries_nothing_of_the_earlier_one(self):
        """The session keeps its recipient slots and its spool between
        transactions: a smaller second message with fewer recipients arrives
        with only its own recipients and bytes, and the tx line names only
        its own recipients."""
        s, port, b = self.relay()
        first_rcpts = ["r%d@a.example" % i for i in range(6)]
        first = b"Subject: first\r\n\r\n" + b"F" * 5000 + b"\r\n"
        second = b"Subject: second\r\n\r\nshort\r\n"
        with self.smtp(port) as c:
            self.assertEqual(c.sendmail(SENDER, first_rcpts, first), {})
            self.assertEqual(c.sendmail(SENDER, ["only@a.example"], second), {})
        msgs = b.wait_messages(2)
        self.assertEqual([m["rcpt_tos"] for m in msgs], [first_rcpts, ["only@a.example"]])
        self.assertEqual([m["data"] for m in msgs], [first, second])
        lines = s.wait_log(r"\btx .*only@a\.example")
        self.assertNotIn("r0@a.example", lines[-1])

    def test_client_and_backend_sockets_have_tcp_nodelay(self):
        """The client's socket has it from the listener (no setsockopt per
        connection), the backend's from the connect: each reply and command
        leaves at once, not held back by Nagle's algorithm."""
        s, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        client_end = c.sock.getsockname()
        by_peer = {}
        for fd in worker_sockets(s.worker_pid()):
            try:
                by_peer[fd.getpeername()] = fd.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:
                pass  # listeners, UDP, unix sockets
            finally:
                fd.close()
        self.assertEqual(by_peer.get(client_end), 1, by_peer)
        self.assertEqual(by_peer.get(("127.0.0.1", b.port)), 1, by_peer)


SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438  # x86_64 and arm64 alike


def worker_sockets(pid):
    """Copies of the worker's sockets (pidfd_getfd, as root), to look at
    their options from here."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    copies = []
    try:
        for name in os.listdir("/proc/%d/fd" % pid):
            try:
                if not os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd >= 0:
                copies.append(socket.socket(fileno=fd))
    finally:
        os.close(pidfd)
    return copies


if __name__ == "__main__":
    unittest.main()
