"""Connection limits: sessions per client address, per network, for the whole
instance, a per-address connection rate, and the allowlist. Clients bind to
127.0.0.x source addresses so each test has several "clients"."""

import time
import unittest

from sluice_harness import SluiceTestCase, pool

FLOOD = 30
PER_ADDRESS = 5


def connections(**values):
    """Every limit off but the ones a test sets."""
    out = {"max_sessions": 0, "per_address": 0, "per_network": 0, "rate": 0,
           "network_v4": 24, "network_v6": 64, "rate_interval": "1m"}
    out.update(values)
    return out


class ConnectionLimitsTest(SluiceTestCase):
    def relay(self, **limits):
        b = self.start_backend("a")
        s, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                   connections=connections(**limits))
        return s, port

    def client(self, port, source):
        return self.connect(port, source=(source, 0), timeout=10)

    def assertAdmitted(self, c):
        self.assertReply(c.read_reply(), 220)

    def assertRefused(self, c):
        self.assertReply(c.read_reply(), 421, "4.7.0")
        self.assertTrue(c.wait_closed(5), "sluice kept a refused connection open")

    def first_replies(self, clients):
        return [c.read_reply() for c in clients]

    def admitted_after_release(self, port, source, timeout=5.0):
        """Connects until the greeting is a 220 (the release of a closed session
        is asynchronous); returns the client."""
        deadline = time.monotonic() + timeout
        for _ in range(100):
            c = self.client(port, source)
            reply = c.read_reply()
            if reply.code == 220:
                return c
            c.close()
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.fail("%s not admitted again after its sessions closed" % source)

    def test_sixth_concurrent_session_of_one_address_gets_421_another_address_connects(self):
        s, port = self.relay(per_address=PER_ADDRESS)
        flood = [self.client(port, "127.0.0.2") for _ in range(FLOOD)]
        replies = self.first_replies(flood)
        codes = sorted(r.code for r in replies)
        self.assertEqual(codes, [220] * PER_ADDRESS + [421] * (FLOOD - PER_ADDRESS), replies)
        for r in replies:
            if r.code == 421:
                self.assertTrue(r.lines[-1].startswith(b"421 4.7.0 "), r)
        other = self.client(port, "127.0.0.3")
        self.assertAdmitted(other)
        self.assertReply(other.cmd("EHLO other.test"), 250)
        s.wait_log(r"127\.0\.0\.2")
        self.assertTrue(s.grep(r"too many connections from 127\.0\.0\.2"), s.log_tail())

    def test_address_admitted_again_once_its_sessions_close(self):
        _, port = self.relay(per_address=2)
        held = [self.client(port, "127.0.0.4") for _ in range(2)]
        for c in held:
            self.assertAdmitted(c)
        self.assertRefused(self.client(port, "127.0.0.4"))
        for c in held:
            self.assertReply(c.cmd("QUIT"), 221)
            c.close()
        c = self.admitted_after_release(port, "127.0.0.4")
        self.assertReply(c.cmd("EHLO back.test"), 250)

    def test_per_network_limit_counts_addresses_of_one_network_together(self):
        # /30 networks: 127.0.0.4-7 is one, 127.0.0.8-11 the next.
        _, port = self.relay(per_network=3, network_v4=30)
        held = [self.client(port, ip) for ip in ("127.0.0.4", "127.0.0.5", "127.0.0.6")]
        for c in held:
            self.assertAdmitted(c)
        self.assertRefused(self.client(port, "127.0.0.7"))
        self.assertAdmitted(self.client(port, "127.0.0.8"))

    def test_max_sessions_caps_the_whole_instance(self):
        _, port = self.relay(max_sessions=4)
        held = [self.client(port, "127.0.0.%d" % i) for i in range(20, 24)]
        for c in held:
            self.assertAdmitted(c)
        self.assertRefused(self.client(port, "127.0.0.30"))
        self.assertReply(held[0].cmd("QUIT"), 221)
        held[0].close()
        self.admitted_after_release(port, "127.0.0.31")

    def test_fourth_connection_within_the_rate_interval_gets_421(self):
        _, port = self.relay(rate=3, rate_interval="10s")
        for _ in range(3):
            c = self.client(port, "127.0.0.9")
            self.assertAdmitted(c)
            self.assertReply(c.cmd("QUIT"), 221)
            c.close()
        self.assertRefused(self.client(port, "127.0.0.9"))
        self.assertAdmitted(self.client(port, "127.0.0.10"))

    def test_allowlisted_address_is_exempt_from_every_limit(self):
        _, port = self.relay(per_address=1, per_network=2, max_sessions=3, rate=1,
                             allowlist=["127.0.0.12"])
        exempt = [self.client(port, "127.0.0.12") for _ in range(6)]
        for c in exempt:
            self.assertAdmitted(c)
        first = self.client(port, "127.0.0.13")
        self.assertAdmitted(first)
        self.assertRefused(self.client(port, "127.0.0.13"))


if __name__ == "__main__":
    unittest.main()
