"""TLS to backends, per pool (tls = off / opportunistic / required, tls_ca,
tls_name): the message travels over TLS when asked, a required TLS that the
backend does not offer or whose certificate does not verify gives the client
451 4.4.0 and never plain text, and a backend that sends plain text after
its 220 to STARTTLS is refused (the response-injection class). The handshake
order stays DESIGN's: banner, EHLO, STARTTLS, EHLO, XCLIENT, EHLO."""

import os
import smtplib
import unittest

from sluice_harness import RawClient, SluiceTestCase, pool
from test_tls_inbound import make_cert

SENDER = "sender@x.example"
BODY = b"Subject: to the backend\r\n\r\nover TLS\r\n"


class OutboundTlsTest(SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.cert, self.key = make_cert(self.workdir, "backend.sluice.test")
        self.other_cert, _ = make_cert(self.workdir, "someone.else.test")

    def relay(self, backend_args=(), **pool_options):
        b = self.start_backend("a", "--xclient", "--tls-cert", self.cert, "--tls-key", self.key,
                               *backend_args)
        self.sluice, port = self.start_relay([pool("a", [b.port], **pool_options)],
                                             [("a.example", "a")])
        return b, port

    def rcpt_reply(self, port):
        c = RawClient(port)
        self.clients.append(c)
        c.read_reply()
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        return c.cmd("RCPT TO:<u@a.example>")

    def test_required_tls_with_a_verified_certificate_carries_the_message(self):
        b, port = self.relay(tls="required", tls_ca=self.cert, tls_name="backend.sluice.test")
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
            self.assertEqual(c.sendmail(SENDER, ["u@a.example"], BODY), {})
        [msg] = b.wait_messages(1)
        self.assertRegex(msg["tls"] or "", r"^TLSv1\.[23]$")
        verbs = [cmd.split(" ")[0] for cmd in msg["commands"]]
        self.assertEqual(verbs[:5], ["EHLO", "STARTTLS", "EHLO", "XCLIENT", "EHLO"])
        self.sluice.wait_log(r"TLS established: TLSv1\.[23] \S+, certificate verified")

    def test_opportunistic_tls_encrypts_without_verifying(self):
        b, port = self.relay(tls="opportunistic")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            self.assertEqual(c.sendmail(SENDER, ["u@a.example"], BODY), {})
        [msg] = b.wait_messages(1)
        self.assertRegex(msg["tls"] or "", r"^TLSv1\.[23]$")

    def test_required_tls_whose_certificate_does_not_verify_gets_451_4_4_0(self):
        b, port = self.relay(tls="required", tls_ca=self.other_cert)
        self.assertReply(self.rcpt_reply(port), 451, "4.4.0")
        self.sluice.wait_log(r"TLS handshake failed: certificate")
        self.assertEqual(b.message_count(), 0)

    def test_required_tls_to_the_wrong_name_gets_451_4_4_0(self):
        b, port = self.relay(tls="required", tls_ca=self.cert, tls_name="not.the.backend.test")
        self.assertReply(self.rcpt_reply(port), 451, "4.4.0")
        self.assertEqual(b.message_count(), 0)

    def test_required_tls_to_a_plaintext_backend_gets_451_4_4_0_and_no_mail_command(self):
        b = self.start_backend("plain")
        self.sluice, port = self.start_relay(
            [pool("plain", [b.port], tls="required")], [("a.example", "plain")])
        self.assertReply(self.rcpt_reply(port), 451, "4.4.0")
        self.sluice.wait_log(r"does not offer STARTTLS and the pool requires TLS")
        self.assertFalse(any(c.startswith("MAIL") for c in b.commands()), b.commands())

    def test_plain_text_after_the_220_to_starttls_is_refused(self):
        b, port = self.relay(["--tls-plaintext-after-220"], tls="opportunistic")
        self.assertReply(self.rcpt_reply(port), 451, "4.4.0")
        self.sluice.wait_log(r"sent plain text after its 220 to STARTTLS")
        self.assertFalse(any(c.startswith("MAIL") for c in b.commands()), b.commands())


if __name__ == "__main__":
    unittest.main()
