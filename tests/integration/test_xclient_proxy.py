"""The client's identity crosses the proxy: XCLIENT and PROXY v2 towards the
backend, and the PROXY protocol from a trusted balancer in front."""

import smtplib
import socket
import struct
import unittest

from sluice_harness import SluiceTestCase, pool

SENDER = "sender@x.example"
BODY = b"Subject: identity\r\n\r\nbody\r\n"
PRESENTED_ADDR = "192.0.2.7"
UNRESOLVED_NAMES = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")


def proxy_v1(src, sport, dport):
    return b"PROXY TCP4 %s 127.0.0.1 %d %d\r\n" % (src.encode(), sport, dport)


def proxy_v2(src, sport, dport):
    addrs = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(addrs)) + addrs


class XclientTest(SluiceTestCase):
    def send_with_smtplib(self, port):
        """Sends one message; returns the client's own port."""
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
            client_port = c.sock.getsockname()[1]
            self.assertEqual(c.sendmail(SENDER, ["u@a.example"], BODY), {})
        return client_port

    def test_xclient_backend_sees_client_address_port_name_helo_proto(self):
        b = self.start_backend("a", "--xclient")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        client_port = self.send_with_smtplib(port)
        [msg] = b.wait_messages(1)
        xc = msg["xclient"]
        self.assertIsNotNone(xc, "the backend offered XCLIENT but got none")
        self.assertEqual(xc.get("ADDR"), "127.0.0.1")
        self.assertEqual(xc.get("PORT"), str(client_port))
        self.assertIn(xc.get("NAME"), UNRESOLVED_NAMES)
        self.assertEqual(xc.get("HELO"), "client.test")
        self.assertEqual(xc.get("PROTO"), "ESMTP")

    def test_backend_sees_ehlo_again_after_xclient_with_client_helo(self):
        b = self.start_backend("a", "--xclient")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        self.send_with_smtplib(port)
        [msg] = b.wait_messages(1)
        verbs = [line.split(" ")[0].upper() for line in msg["commands"]]
        self.assertIn("XCLIENT", verbs)
        after = verbs[verbs.index("XCLIENT") + 1:]
        self.assertIn("EHLO", after)
        self.assertLess(after.index("EHLO"), after.index("MAIL"))
        self.assertEqual(msg["ehlo_names"][-1], "client.test")

    def test_backend_without_xclient_capability_never_receives_it(self):
        b = self.start_backend("a")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        self.send_with_smtplib(port)
        [msg] = b.wait_messages(1)
        self.assertFalse([c for c in msg["commands"] if c.upper().startswith("XCLIENT")])

    def test_pool_with_xclient_off_never_sends_it(self):
        b = self.start_backend("a", "--xclient")
        _, port = self.start_relay([pool("a", [b.port], xclient=False)], [("a.example", "a")])
        self.send_with_smtplib(port)
        [msg] = b.wait_messages(1)
        self.assertIsNone(msg["xclient"])

    def test_proxy_v2_to_backend_carries_client_address(self):
        b = self.start_backend("a", "--proxy")
        _, port = self.start_relay([pool("a", [b.port], proxy_protocol=True, xclient=False)],
                                   [("a.example", "a")])
        client_port = self.send_with_smtplib(port)
        [msg] = b.wait_messages(1)
        proxy = msg["proxy"]
        self.assertEqual(proxy["version"], 2)
        self.assertEqual((proxy["src_addr"], proxy["src_port"]), ("127.0.0.1", client_port))
        self.assertEqual((proxy["dst_addr"], proxy["dst_port"]), ("127.0.0.1", port))

    def test_proxy_v2_names_the_address_connected_to_behind_a_wildcard_listener(self):
        # Bound to 0.0.0.0, the listener does not know the local address:
        # each connection's own is asked for (a specific listener's is its own).
        b = self.start_backend("a", "--proxy")
        _, port = self.start_relay([pool("a", [b.port], proxy_protocol=True, xclient=False)],
                                   [("a.example", "a")], listen_options={"address": "0.0.0.0"})
        self.send_with_smtplib(port)
        [msg] = b.wait_messages(1)
        self.assertEqual((msg["proxy"]["dst_addr"], msg["proxy"]["dst_port"]),
                         ("127.0.0.1", port))


class InboundProxyTest(SluiceTestCase):
    def proxied_relay(self, trusted=("127.0.0.1",)):
        b = self.start_backend("a", "--xclient")
        _, port = self.start_relay(
            [pool("a", [b.port])], [("a.example", "a")],
            listen_options={"proxy_protocol": True, "proxy_trusted": list(trusted)})
        return b, port

    def deliver_after_header(self, port, header):
        c = self.connect(port)
        c.send(header)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO balanced.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        self.assertReply(c.cmd("QUIT"), 221)

    def test_v1_header_from_trusted_balancer_sets_client_address(self):
        b, port = self.proxied_relay()
        self.deliver_after_header(port, proxy_v1(PRESENTED_ADDR, 40000, port))
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["xclient"]["ADDR"], PRESENTED_ADDR)
        self.assertEqual(msg["xclient"]["PORT"], "40000")

    def test_v2_header_from_trusted_balancer_sets_client_address(self):
        b, port = self.proxied_relay()
        self.deliver_after_header(port, proxy_v2(PRESENTED_ADDR, 40001, port))
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["xclient"]["ADDR"], PRESENTED_ADDR)
        self.assertEqual(msg["xclient"]["PORT"], "40001")

    def test_connection_without_header_is_closed_without_banner(self):
        _, port = self.proxied_relay()
        c = self.connect(port)
        c.send(b"EHLO sneaky.test\r\n")
        self.assertTrue(c.wait_closed(10), "sluice kept a connection that sent no PROXY header")
        self.assertNotIn(b"220", c.buf)

    def test_untrusted_sender_is_closed_even_with_valid_header(self):
        _, port = self.proxied_relay(trusted=("127.0.0.2",))
        c = self.connect(port)
        c.send(proxy_v1(PRESENTED_ADDR, 40002, port))
        self.assertTrue(c.wait_closed(10), "sluice accepted a PROXY header from an untrusted peer")
        self.assertNotIn(b"220", c.buf)


if __name__ == "__main__":
    unittest.main()
