"""The recording backend itself, driven straight (no sluice): if these fail,
every other integration result is meaningless."""

import shutil
import smtplib
import socket
import struct
import tempfile
import unittest

from sluice_harness import Backend, RawClient, free_port, render_config, Raw, wait_until


class RecordingBackendTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="sluice-harness-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.backends = []
        self.addCleanup(lambda: [b.close() for b in self.backends])

    def backend(self, *args):
        b = Backend(self.workdir, str(len(self.backends)), args)
        self.backends.append(b)
        return b

    def test_records_envelope_and_exact_content(self):
        b = self.backend("--rcpt-reply", "bad@a.example=550 5.1.1 No such user")
        body = (b"Subject: t\r\n\r\n.starts with a dot\r\n..two dots\r\n"
                b"\xe9\xff 8-bit\r\n" + b"x" * 996 + b"\r\n")
        with smtplib.SMTP("127.0.0.1", b.port, timeout=10) as s:
            refused = s.sendmail("s@x.example", ["u@a.example", "bad@a.example"], body,
                                 mail_options=["BODY=8BITMIME"])
        self.assertEqual(refused, {"bad@a.example": (550, b"5.1.1 No such user")})
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["data"], body)
        self.assertIn(b"\r\n...two dots\r\n", msg["raw"])
        self.assertEqual(msg["mail_from"], "s@x.example")
        self.assertIn("BODY=8BITMIME", msg["mail_options"])
        self.assertEqual(msg["rcpt_tos"], ["u@a.example"])
        self.assertFalse(msg["bare_lf"])

    def test_xclient_resets_and_greets_again(self):
        b = self.backend("--xclient")
        c = RawClient(b.port)
        self.addCleanup(c.close)
        c.read_reply()
        ehlo = c.cmd("EHLO proxy.test")
        self.assertIn(b"250 XCLIENT NAME ADDR PORT PROTO HELO", ehlo.lines)
        self.assertEqual(c.cmd("XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.1 PORT=4000 "
                               "PROTO=ESMTP HELO=client+2Etest").code, 220)
        self.assertEqual(c.cmd("EHLO client.test").code, 250)
        for line, code in (("MAIL FROM:<s@x>", 250), ("RCPT TO:<u@a>", 250), ("DATA", 354),
                           ("hi\r\n.", 250), ("QUIT", 221)):
            self.assertEqual(c.cmd(line).code, code, line)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["xclient"], {"NAME": "[UNAVAILABLE]", "ADDR": "192.0.2.1",
                                          "PORT": "4000", "PROTO": "ESMTP",
                                          "HELO": "client.test"})
        self.assertEqual(msg["ehlo_names"], ["proxy.test", "client.test"])

    def test_proxy_v2_header_recorded(self):
        b = self.backend("--proxy")
        c = RawClient(b.port)
        self.addCleanup(c.close)
        addrs = socket.inet_aton("192.0.2.7") + socket.inet_aton("127.0.0.1")
        c.send(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", 12) + addrs
               + struct.pack("!HH", 40001, 25))
        self.assertEqual(c.read_reply().code, 220)
        [ev] = b.wait_event("proxy")
        self.assertEqual((ev["src_addr"], ev["src_port"]), ("192.0.2.7", 40001))

    def test_die_on_data_closes_without_reply(self):
        b = self.backend("--die-on-data")
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            with smtplib.SMTP("127.0.0.1", b.port, timeout=10) as s:
                s.sendmail("s@x", ["u@a"], b"hi\r\n")
        self.assertEqual(b.message_count(), 0)

    def test_counts_simultaneous_connections(self):
        b = self.backend()
        clients = [RawClient(b.port) for _ in range(3)]
        for c in clients:
            c.read_reply()
            self.addCleanup(c.close)
        wait_until(lambda: b.max_concurrent() == 3, 5, what="3 connections")

    def test_config_rendering(self):
        text = render_config({"a": 1, "b": "x\"y", "c": [1, 2], "d": ({"e": True},),
                              "f": Raw("2")})
        self.assertEqual(text, 'a = 1;\nb = "x\\"y";\nc = [ 1, 2 ];\n'
                               'd = (\n    {\n        e = true;\n    }\n);\nf = 2;\n')
        self.assertNotEqual(free_port(), 0)


if __name__ == "__main__":
    unittest.main()
