"""A message that needs SMTPUTF8 or 8BITMIME reaches only a backend that
offers it: on a route whose backend lacks it the client gets 550 5.6.7 /
550 5.6.3 at RCPT (DESIGN's reply table), never a corrupted message; the
same message on a route whose backend offers it is relayed."""

import unittest

from sluice_harness import RawClient, SluiceTestCase, pool

SENDER = "sender@x.example"
BODY_8BIT = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode("utf-8")


class CapabilitiesTest(SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.plain = self.start_backend("plain", "--no-8bitmime")
        self.full = self.start_backend("full", "--smtputf8")
        # Both pools say they accept SMTPUTF8, so sluice offers it; the
        # plain pool's server then does not: what the route decides.
        self.sluice, self.port = self.start_relay(
            [pool("plain", [self.plain.port], smtputf8=True),
             pool("full", [self.full.port], smtputf8=True)],
            [("plain.example", "plain"), ("full.example", "full")])

    def session(self):
        c = RawClient(self.port)
        self.clients.append(c)
        self.assertReply(c.read_reply(), 220)
        ehlo = c.cmd("EHLO client.test")
        self.assertReply(ehlo, 250)
        self.assertIn("SMTPUTF8", ehlo.text)
        self.assertIn("8BITMIME", ehlo.text)
        return c

    def send_message(self, c, mail_params, rcpt):
        self.assertReply(c.cmd("MAIL FROM:<%s>%s" % (SENDER, mail_params)), 250)
        reply = c.cmd("RCPT TO:<%s>" % rcpt)
        if reply.code == 250:
            self.assertReply(c.cmd("DATA"), 354)
            reply = c.cmd(BODY_8BIT + b".")
        else:
            self.assertReply(c.cmd("RSET"), 250)
        return reply

    def test_8bitmime_message_to_a_backend_without_8bitmime_gets_550_5_6_3(self):
        c = self.session()
        self.assertReply(self.send_message(c, " BODY=8BITMIME", "u@plain.example"), 550, "5.6.3")
        self.assertReply(self.send_message(c, " BODY=8BITMIME", "u@full.example"), 250)
        self.assertEqual(self.plain.message_count(), 0)
        [msg] = self.full.wait_messages(1)
        self.assertIn("d\u00e9j\u00e0 vu".encode("utf-8"), msg["data"])

    def test_smtputf8_message_to_a_backend_without_smtputf8_gets_550_5_6_7(self):
        c = self.session()
        rcpt_plain = "\u00fcser@plain.example"
        self.assertReply(self.send_message(c, " SMTPUTF8 BODY=8BITMIME", rcpt_plain), 550, "5.6.7")
        self.assertReply(self.send_message(c, " SMTPUTF8", "\u00fcser@full.example"), 250)
        self.assertEqual(self.plain.message_count(), 0)
        [msg] = self.full.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["\u00fcser@full.example"])

    def test_every_later_recipient_of_the_transaction_gets_the_same_refusal(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<%s> BODY=8BITMIME" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<a@plain.example>"), 550, "5.6.3")
        self.assertReply(c.cmd("RCPT TO:<b@plain.example>"), 550, "5.6.3")
        self.assertReply(c.cmd("DATA"), 554, "5.5.1")
        self.assertEqual(self.plain.message_count(), 0)


if __name__ == "__main__":
    unittest.main()
