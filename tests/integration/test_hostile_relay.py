"""Relay control against sender-specified routing: sluice is never an open
relay, not even through a backend that trusts sluice's address.

An untrusted client names a routed domain but hides another destination in
the local part (%, !, a quoted or escaped @, Unicode look-alikes a backend
may normalise), in a source route, or in a domain that IDNA mapping changes.
Each is refused with 550 5.7.1 before any plugin or backend; trusted clients
and pools that allow it keep the old behaviour. The last test puts a stock
Postfix that trusts sluice behind it: nothing reaches other.test.
"""

import os
import time
import unittest

from sluice_harness import SluiceTestCase, base_config, free_port, pool

import test_postfix_interop as interop

ROUTED = "a.example"

SENDER_ROUTING = [
    "user%other.test@a.example",
    "other.test!user@a.example",
    "\"user@other.test\"@a.example",
    "\"user%other.test\"@a.example",
    "\"other.test!user\"@a.example",
    "\"user\\@other.test\"@a.example",
    "u%v%other.test@a.example",
    "user%other.test@sub.a.example",
    "@relay.other.test:user@a.example",
    "@one.test,@two.test:user@a.example",
]

# Needs MAIL FROM ... SMTPUTF8: look-alikes a backend applying NFKC or IDNA
# mapping would turn into routing or into another domain.
UNICODE_ROUTING = [
    "user\uff20other.test@a.example",
    "user\ufe6bother.test@a.example",
    "user\uff05other.test@a.example",
    "other.test\uff01user@a.example",
    "\"user\uff20other.test\"@a.example",
    "user@evil\u3002x.a.example",
    "user@\uff45vil.a.example",
    "user@other.test\uff20x.a.example",
]


class UntrustedRoutingTest(SluiceTestCase):
    def relay(self, relay_networks=(), **pool_options):
        b = self.start_backend("a")
        pools = [pool("a", [b.port], smtputf8=True, **pool_options)]
        s, port = self.start_relay(pools, [(ROUTED, "a"), ("*." + ROUTED, "a")],
                                   relay_networks=list(relay_networks))
        return s, port, b

    def mail(self, c, utf8=False):
        r = c.cmd("MAIL FROM:<s@x.example>" + (" SMTPUTF8" if utf8 else ""))
        self.assertReply(r, 250)

    def assert_refused(self, c, rcpt):
        r = c.cmd(("RCPT TO:<%s>" % rcpt).encode("utf-8"))
        self.assertReply(r, 550, "5.7.1", "Relay access denied")

    def test_ascii_sender_routing_from_untrusted_client_is_550_and_no_backend(self):
        s, port, b = self.relay()
        c = self.open_session(port)
        self.mail(c)
        for rcpt in SENDER_ROUTING:
            with self.subTest(rcpt=rcpt):
                self.assert_refused(c, rcpt)
        self.assertReply(c.cmd("DATA"), 554, "5.5.1")
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(b.connection_count(), 0)
        s.wait_log("sender-specified routing")

    def test_unicode_lookalikes_from_untrusted_client_are_550(self):
        s, port, b = self.relay()
        c = self.open_session(port)
        self.mail(c, utf8=True)
        for rcpt in UNICODE_ROUTING:
            with self.subTest(rcpt=rcpt):
                self.assert_refused(c, rcpt)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(b.connection_count(), 0)
        s.wait_log("domain not in normalised form")

    def test_refused_routing_leaves_the_transaction_usable(self):
        _, port, b = self.relay()
        c = self.open_session(port)
        self.mail(c)
        self.assert_refused(c, "user%other.test@a.example")
        self.assertReply(c.cmd("RCPT TO:<user@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"Subject: t\r\n\r\nbody\r\n."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["user@a.example"])

    def test_trusted_client_may_use_routing_syntax(self):
        _, port, b = self.relay(relay_networks=["127.0.0.0/8"])
        c = self.open_session(port)
        self.mail(c)
        self.assertReply(c.cmd("RCPT TO:<user%other.test@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"Subject: t\r\n\r\nbody\r\n."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["user%other.test@a.example"])

    def test_pool_allowing_untrusted_routing_relays_it(self):
        _, port, b = self.relay(allow_untrusted_routing=True)
        c = self.open_session(port)
        self.mail(c)
        self.assertReply(c.cmd("RCPT TO:<other.test!user@a.example>"), 250)
        # The domain check still holds for such a pool.
        c.cmd("RSET")
        self.mail(c, utf8=True)
        self.assert_refused(c, "user@evil\u3002x.a.example")


@unittest.skipUnless(os.path.exists(interop.POSTFIX), "Postfix is not installed")
@unittest.skipUnless(os.geteuid() == 0, "starting a Postfix instance needs root")
class PostfixBehindSluiceIsNoOpenRelayTest(SluiceTestCase):
    """Postfix trusts sluice (mynetworks = 127.0.0.0/8) and sluice sends no
    XCLIENT: Postfix would relay whatever sluice passes on."""

    def setUp(self):
        super().setUp()
        self.postfix = interop.PrivatePostfix(self.workdir)
        self.addCleanup(self.postfix.stop)
        self.postfix.start()

    def maillog_mentions(self, needle, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in interop.read_text(self.postfix.maillog):
                return True
            time.sleep(0.2)
        return False

    def test_postfix_itself_would_relay_percent_routing_from_sluice(self):
        # The footing: spoken to directly from a trusted address, this
        # Postfix queues user%other.test@interop.test for user@other.test.
        with interop.smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=30) as smtp:
            refused = smtp.sendmail("me@example.org", ["user%other.test@" + interop.DOMAIN],
                                    b"Subject: direct\r\n\r\nbody\r\n")
        self.assertEqual(refused, {})
        self.assertTrue(self.maillog_mentions("to=<user@other.test>", 20),
                        interop.read_text(self.postfix.maillog))

    def test_sender_routing_through_sluice_never_reaches_other_test(self):
        port = free_port()
        conf = base_config(self.workdir, port,
                           [pool("postfix", [self.postfix.port], xclient=False)],
                           [(interop.DOMAIN, "postfix")])
        self.start_sluice(conf)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<me@example.org>"), 250)
        for rcpt in ["user%other.test@", "other.test!user@", "\"user@other.test\"@",
                     "@relay.other.test:user@"]:
            with self.subTest(rcpt=rcpt):
                r = c.cmd("RCPT TO:<%s%s>" % (rcpt, interop.DOMAIN))
                self.assertReply(r, 550, "5.7.1", "Relay access denied")
        # A plain recipient still goes through: the path to Postfix works.
        self.assertReply(c.cmd("RCPT TO:<%s>" % interop.RECIPIENT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"Subject: legit\r\n\r\nbody\r\n."), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertIn("Subject: legit", self.postfix.wait_for_delivery(interop.DELIVERY_TIMEOUT))
        self.assertFalse(self.maillog_mentions("other.test", 2),
                         interop.read_text(self.postfix.maillog))


if __name__ == "__main__":
    unittest.main()
