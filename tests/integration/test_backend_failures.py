"""When the backend fails, the client gets a 4xx and retries: sluice says 250
to a message only when the backend said 250 to it."""

import signal
import smtplib
import time
import unittest

from sluice_harness import SluiceTestCase, free_port, pool, server_entry, wait_until
from test_lua import Dnsmasq

SENDER = "sender@x.example"
BODY = b"Subject: failure test\r\n\r\nbody\r\n"


class BackendFailureTest(SluiceTestCase):
    def send_until_final_reply(self, port, rcpt="u@a.example"):
        """A raw transaction up to the end of data; returns the final reply."""
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(BODY + b".\r\n")
        return c.read_reply()

    def test_backend_down_gives_451_4_4_1_at_rcpt(self):
        dead = free_port()
        _, port = self.start_relay([pool("a", [dead])], [("a.example", "a")])
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 451, "4.4.1")
        self.assertNotEqual(c.cmd("DATA").code, 354)

    def test_failover_to_second_server_when_first_refuses_connections(self):
        dead = free_port()
        b = self.start_backend("a")
        _, port = self.start_relay([pool("a", [dead, b.port])], [("a.example", "a")])
        for i in range(3):
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
                self.assertEqual(c.sendmail(SENDER, ["u%d@a.example" % i], BODY), {})
        msgs = b.wait_messages(3)
        self.assertEqual(sorted(m["rcpt_tos"][0] for m in msgs),
                         ["u0@a.example", "u1@a.example", "u2@a.example"])

    def test_backend_closing_before_final_reply_gives_4xx_never_250(self):
        b = self.start_backend("a", "--die-on-data")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        reply = self.send_until_final_reply(port)
        self.assertEqual(reply.code // 100, 4, reply)
        b.wait_event("die")
        self.assertEqual(b.message_count(), 0)

    def test_backend_killed_while_client_waits_gives_4xx(self):
        b = self.start_backend("a", "--delay-data", "20")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(BODY + b".\r\n")
        b.wait_event("data_end")
        b.kill()
        started = time.monotonic()
        reply = c.read_reply()
        self.assertEqual(reply.code // 100, 4, reply)
        self.assertLess(time.monotonic() - started, 10)

    def test_final_reply_beyond_final_timeout_gives_4xx(self):
        b = self.start_backend("a", "--delay-data", "6")
        _, port = self.start_relay([pool("a", [b.port], final_timeout="1s")],
                                   [("a.example", "a")])
        started = time.monotonic()
        reply = self.send_until_final_reply(port)
        elapsed = time.monotonic() - started
        self.assertEqual(reply.code // 100, 4, reply)
        self.assertLess(elapsed, 5, "the client waited for the backend, not for final_timeout")

    def test_backend_refusing_the_message_reaches_client_verbatim(self):
        b = self.start_backend("a", "--data-reply", "554 5.7.1 Content refused by backend")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        self.assertEqual(self.send_until_final_reply(port).text,
                         "554 5.7.1 Content refused by backend")

    def test_backend_tempfail_at_end_of_data_reaches_client_verbatim(self):
        b = self.start_backend("a", "--data-reply", "451 4.3.0 Queue full, try later")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        self.assertEqual(self.send_until_final_reply(port).text,
                         "451 4.3.0 Queue full, try later")

    def relay_by_name(self, dns, b):
        """A pool naming its server good.test (127.0.0.1 at dnsmasq, TTL 0),
        a new backend connection per session, so each one resolves it."""
        named = pool("a", [], servers=(server_entry(b.port, host="good.test"),),
                     idle_connections=0)
        return self.start_relay([named], [("a.example", "a")], threads=1,
                                dns={"servers": ["127.0.0.1:%d" % dns.port],
                                     "timeout": "500ms", "tries": 1})

    def send_one(self, port, n):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
            self.assertEqual(c.sendmail(SENDER, ["u%d@a.example" % n], BODY), {})

    def resolver_down_after_one_message(self):
        """sluice relaying to good.test, which it resolved for a first
        message; then the resolver stops. Returns (sluice, port, backend)."""
        dns = Dnsmasq()
        self.addCleanup(dns.stop)
        b = self.start_backend("a")
        s, port = self.relay_by_name(dns, b)
        self.send_one(port, 1)
        dns.stop()
        return s, port, b

    def test_a_backend_name_keeps_its_last_addresses_while_the_resolver_is_down(self):
        s, port, b = self.resolver_down_after_one_message()
        self.send_one(port, 2)
        self.send_one(port, 3)
        self.assertEqual(len(b.wait_messages(3)), 3)
        # One warning for the failure; the next connection within the
        # recheck period did not ask.
        self.assertEqual(len(s.grep(r"dns: cannot resolve good\.test: using its "
                                    r"addresses of \d+ s ago")), 1)

    def test_a_reload_while_the_resolver_is_down_keeps_the_last_addresses(self):
        s, port, b = self.resolver_down_after_one_message()
        s.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: s.grep(r"master: reload done"), 20, what="the reload")
        self.send_one(port, 2)
        self.assertEqual(len(b.wait_messages(2)), 2)
        s.wait_log(r"dns: cannot resolve good\.test: using its addresses")

    def test_a_backend_name_never_resolved_has_nothing_to_fall_back_on(self):
        dns = Dnsmasq()
        dns.stop()
        b = self.start_backend("a")
        s, port = self.relay_by_name(dns, b)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 451, "4.4.1")
        s.wait_log(r"cannot resolve the server's name")
        self.assertEqual(b.connection_count(), 0)


if __name__ == "__main__":
    unittest.main()
