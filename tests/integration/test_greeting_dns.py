"""The greeting and the client's reverse lookup: without a connect hook the
greeting goes at once, and everything that reads the name (hooks, XCLIENT to
the backend, the disconnect hook) waits for the lookup; with a connect hook
the greeting waits for it as before. The resolver is dnsmasq behind a relay
that holds every answer DELAY seconds, so a lookup (PTR, then A) takes about
twice that."""

import os
import select
import socket
import threading
import time

from sluice_harness import free_port, pool, wait_until
from test_lua import Dnsmasq, LuaTestCase, plugin_dir
from test_metrics import scrape, series

DELAY = 1.5            # seconds each DNS answer is held
LOOKUP_TIMEOUT = "8s"  # timeouts.reverse_lookup: longer than the two answers
LOOKUP_TIMEOUT_S = 8.0
RELAY_MAX_LIFE = 120.0  # the relay thread never outlives a test by much


def refusing_by_name(hook, code, text):
    """A Lua script whose hook refuses with the client's name in the text,
    so the reply shows which name the hook saw."""
    return ("sluice.on('%s', function(s)\n"
            "  return sluice.reject(%d, '5.7.1', '%s ' .. tostring(s:hostname()))\n"
            "end)\n" % (hook, code, text))


class SlowResolver:
    """A UDP relay on 127.0.0.1 in front of a dnsmasq: each query is
    forwarded at once, each answer sent back DELAY seconds after it came."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.queries = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _answer_later(self, query, client):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(2.0)
            up.sendto(query, self.upstream)
            try:
                answer = up.recv(4096)
            except socket.timeout:
                return
        if not self.stopping.wait(DELAY):
            self.sock.sendto(answer, client)

    def _run(self):
        deadline = time.monotonic() + RELAY_MAX_LIFE
        while not self.stopping.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            query, client = self.sock.recvfrom(4096)
            self.queries += 1
            threading.Thread(target=self._answer_later, args=(query, client),
                             daemon=True).start()

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


class GreetingAndReverseLookup(LuaTestCase):

    def slow_dns(self, local_ttl=0):
        d = Dnsmasq(local_ttl)
        self.addCleanup(d.stop)
        r = SlowResolver(d.port)
        self.addCleanup(r.stop)
        return r

    def start(self, script_text, backend_args=(), connections=None, local_ttl=0,
              metrics_port=None, **pool_options):
        """sluice with one Lua entry (script_text) and the slow resolver;
        returns (backend, port). The DNS timeout per try (dns.timeout) is
        longer than DELAY, so nothing is asked twice."""
        dns = self.slow_dns(local_ttl)
        self.resolver = dns
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "50-policy.conf"), "w") as f:
            f.write('plugin = "lua";\nscript = "%s";\n'
                    % self.write_script("policy.lua", script_text))
        b = self.start_backend("a", *backend_args)
        _, port = self.start_relay(
            [pool("a", [b.port], **pool_options)], [("example.test", "a")],
            plugin_dir=plugin_dir(),
            dns={"servers": ["127.0.0.1:%d" % dns.port], "timeout": "4s"},
            timeouts={"command": "5m", "data_block": "3m", "shutdown": "2s",
                      "reverse_lookup": LOOKUP_TIMEOUT},
            # Kept backend connections are per loop thread: one, so the
            # next session finds the last one's.
            threads=1,
            **({"connections": connections} if connections else {}),
            **({"metrics_listen": "127.0.0.1:%d" % metrics_port} if metrics_port else {}))
        return b, port

    def greet(self, port, **connect_options):
        """Connects; returns (client, seconds until the greeting)."""
        t0 = time.monotonic()
        c = self.connect(port, **connect_options)
        banner = c.read_reply()
        return c, banner, time.monotonic() - t0

    def deliver_one(self, c):
        """One message over a greeted client, relayed with 250."""
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)

    def test_without_connect_hook_the_greeting_comes_before_the_slow_lookup(self):
        b, port = self.start("sluice.on('rcpt', function(s) return sluice.continue() end)\n")
        c, banner, waited = self.greet(port)
        self.assertReply(banner, 220)
        self.assertLess(waited, DELAY, "the greeting waited for DNS")
        self.assertLess(waited, LOOKUP_TIMEOUT_S / 2)

    def test_xclient_carries_the_confirmed_name_though_the_greeting_went_first(self):
        b, port = self.start("sluice.on('rcpt', function(s) return sluice.continue() end)\n",
                             ("--xclient",))
        c, banner, waited = self.greet(port)
        self.assertReply(banner, 220)
        self.assertLess(waited, DELAY)
        self.deliver_one(c)
        xc = b.wait_messages(1)[0]["xclient"]
        self.assertEqual(xc["NAME"], "good.test")
        self.assertEqual(xc["ADDR"], "127.0.0.1")

    NO_EARLY_HOOK = "sluice.on('disconnect', function(s) end)\n"

    def test_the_backend_is_opened_while_the_lookup_runs_and_xclient_waits_for_the_name(self):
        """No hook waits at RCPT: the backend connection is opened, greeted
        and EHLO'd while the lookup runs; only XCLIENT waits for it."""
        b, port = self.start(self.NO_EARLY_HOOK, ("--xclient",))
        c, banner, _ = self.greet(port)
        t0 = time.monotonic()
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        c.send(b"RCPT TO:<b@example.test>\r\n")
        b.wait_event("connect", timeout=DELAY)
        self.assertLess(time.monotonic() - t0, DELAY, "the backend waited for the lookup")
        self.assertReply(c.read_reply(), 250)
        self.assertGreaterEqual(time.monotonic() - t0, DELAY, "XCLIENT did not wait")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertEqual(b.wait_messages(1)[0]["xclient"]["NAME"], "good.test")

    def test_a_server_without_xclient_does_not_wait_for_the_name(self):
        b, port = self.start(self.NO_EARLY_HOOK)
        c, banner, waited = self.greet(port)
        t0 = time.monotonic()
        self.deliver_one(c)
        self.assertLess(time.monotonic() - t0, DELAY, "the transaction waited for the lookup")
        self.assertIsNone(b.wait_messages(1)[0]["xclient"])

    def test_a_recipient_sent_before_leaving_while_xclient_waits_is_still_relayed(self):
        """As any command a client sent before it left: carried out once the
        name is known, XCLIENT first; no message, and the next client is
        served."""
        b, port = self.start(self.NO_EARLY_HOOK, ("--xclient",))
        c, banner, _ = self.greet(port)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        c.send(b"RCPT TO:<b@example.test>\r\n")
        b.wait_event("connect", timeout=DELAY)
        self.assertEqual(b.events("xclient"), [])
        c.close()
        xc = b.wait_event("xclient", timeout=LOOKUP_TIMEOUT_S)[0]
        self.assertEqual(xc["attrs"]["NAME"], "good.test")
        wait_until(lambda: any(e["line"].startswith("RCPT TO:<b@example.test>")
                               for e in b.events("command")), 5, what="the RCPT relayed")
        self.assertEqual(b.messages(), [])
        c2, banner2, _ = self.greet(port)
        self.assertReply(banner2, 220)

    def test_a_server_that_speaks_while_xclient_waits_is_dropped_and_the_client_told(self):
        """Nothing was asked: the reply is a violation, the client gets the
        lost-backend 451 for its recipient, and sluice serves on."""
        b, port = self.start(self.NO_EARLY_HOOK,
                             ("--xclient", "--speak-after-ehlo", "250 2.0.0 surprise"))
        c, banner, _ = self.greet(port)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.test>"), 451, "4.4.2")
        b.wait_event("spoke_unasked")
        self.assertEqual(b.events("xclient"), [])
        self.sluice().wait_log(r"reply while nothing was asked", timeout=2)
        c2, banner2, _ = self.greet(port)
        self.assertReply(banner2, 220)

    def test_a_kept_connection_waits_for_the_next_clients_name_before_its_xclient(self):
        """The second client's session takes the first one's kept backend
        connection: its XCLIENT, too, waits for that client's own lookup."""
        b, port = self.start(self.NO_EARLY_HOOK, ("--xclient",), idle_connections=2)
        for source in ("127.0.0.1", "127.0.0.2"):
            c, banner, _ = self.greet(port, source=(source, 0))
            self.deliver_one(c)
            self.assertReply(c.cmd("QUIT"), 221)
        names = [m["xclient"]["NAME"] for m in b.wait_messages(2)]
        self.assertEqual(names, ["good.test", "[UNAVAILABLE]"])
        self.assertEqual(b.connection_count(), 1, "the kept connection was not taken")

    def test_xclient_says_unavailable_when_the_name_is_not_confirmed(self):
        b, port = self.start("sluice.on('rcpt', function(s) return sluice.continue() end)\n",
                             ("--xclient",))
        # 127.0.0.2 has a PTR (liar.test) whose A record points elsewhere.
        c, banner, waited = self.greet(port, source=("127.0.0.2", 0))
        self.assertReply(banner, 220)
        self.assertLess(waited, DELAY)
        self.deliver_one(c)
        self.assertEqual(b.wait_messages(1)[0]["xclient"]["NAME"], "[UNAVAILABLE]")

    def test_with_a_connect_hook_the_greeting_waits_and_the_hook_sees_the_name(self):
        _, port = self.start(refusing_by_name("connect", 554, "no mail from"))
        c, banner, waited = self.greet(port)
        self.assertReply(banner, 554, "5.7.1", "no mail from good.test")
        self.assertGreaterEqual(waited, 2 * DELAY - 0.2, "the greeting did not wait for DNS")

    def test_a_helo_hook_sees_the_confirmed_name_when_the_greeting_went_first(self):
        _, port = self.start(refusing_by_name("helo", 550, "helo from"))
        c, banner, waited = self.greet(port)
        self.assertReply(banner, 220)
        self.assertLess(waited, DELAY)
        self.assertReply(c.cmd("EHLO client.test"), 550, "5.7.1", "helo from good.test")

    def test_a_mail_hook_sees_the_confirmed_name_when_the_client_pipelines(self):
        _, port = self.start(refusing_by_name("mail", 550, "mail from"))
        c, banner, waited = self.greet(port)
        self.assertReply(banner, 220)
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 550, "5.7.1", "mail from good.test")

    HOOKS_LOGGED = (
        "sluice.on('helo', function(s) s:log('info', 'HELO-HOOK') end)\n"
        "sluice.on('disconnect', function(s)\n"
        "  s:log('info', 'DISCONNECT-HOOK name=' .. tostring(s:hostname()))\n"
        "end)\n")

    def test_a_client_gone_before_the_lookup_ends_gets_one_disconnect_hook_with_the_name(self):
        _, port = self.start(self.HOOKS_LOGGED)
        c, banner, waited = self.greet(port)
        self.assertReply(banner, 220)
        self.assertLess(waited, DELAY)
        c.close()
        s = self.sluice()
        s.wait_log(r"DISCONNECT-HOOK", timeout=LOOKUP_TIMEOUT_S)
        time.sleep(0.5)
        log = s.log_text()
        self.assertEqual(log.count("DISCONNECT-HOOK"), 1, s.log_tail())
        self.assertIn("DISCONNECT-HOOK name=good.test", log)
        self.assertNotIn("HELO-HOOK", log)
        # the daemon is fine: the next client is served
        c2, banner2, _ = self.greet(port)
        self.assertReply(banner2, 220)

    def test_a_command_sent_before_leaving_is_hooked_once_the_name_is_known_then_disconnect(self):
        """A client may send its commands and close (the session answers
        what it sent): the helo hook waits for the name, then the disconnect
        hook runs, once, and nothing after it."""
        _, port = self.start(self.HOOKS_LOGGED)
        c, banner, _ = self.greet(port)
        self.assertReply(banner, 220)
        c.send(b"EHLO client.test\r\n")
        c.close()
        s = self.sluice()
        s.wait_log(r"DISCONNECT-HOOK", timeout=LOOKUP_TIMEOUT_S)
        time.sleep(0.5)
        log = s.log_text()
        self.assertEqual(log.count("HELO-HOOK"), 1, s.log_tail())
        self.assertEqual(log.count("DISCONNECT-HOOK"), 1, s.log_tail())
        self.assertLess(log.index("HELO-HOOK"), log.index("DISCONNECT-HOOK"))

    def test_a_client_gone_before_the_lookup_ends_is_still_logged_with_its_name(self):
        """Without a disconnect hook nothing runs for it, and the connect
        line still names it once the lookup ends."""
        _, port = self.start("sluice.on('helo', function(s) s:log('info', 'HELO-HOOK') end)\n")
        c, banner, _ = self.greet(port)
        self.assertReply(banner, 220)
        c.close()
        s = self.sluice()
        s.wait_log(r"client disconnected", timeout=DELAY)
        s.wait_log(r"connect from good\.test\[127\.0\.0\.1\]", timeout=LOOKUP_TIMEOUT_S)
        time.sleep(0.5)
        self.assertNotIn("HELO-HOOK", s.log_text())
        self.assertEqual(len(s.grep(r"connect from")), 1, s.log_tail())
        c2, banner2, _ = self.greet(port)
        self.assertReply(banner2, 220)

    def test_a_client_gone_before_the_lookup_ends_gives_back_its_place_at_once(self):
        """With one connection per address, the client's next connection is
        greeted while the first one's lookup still runs; that connection's
        connect line still comes when its lookup ends."""
        _, port = self.start("sluice.on('helo', function(s) s:log('info', 'HELO-HOOK') end)\n",
                             connections={"per_address": 1, "per_network": 0, "rate": 0})
        c, banner, _ = self.greet(port)
        self.assertReply(banner, 220)
        c.close()
        s = self.sluice()
        s.wait_log(r"client disconnected", timeout=DELAY)
        c2, banner2, waited = self.greet(port)
        self.assertReply(banner2, 220)
        self.assertLess(waited, DELAY)
        self.assertEqual(s.grep(r"connect from"), [], "the first lookup had ended: " + s.log_tail())
        s.wait_log(r"connect from good\.test\[127\.0\.0\.1\]", timeout=LOOKUP_TIMEOUT_S)

    def test_the_disconnect_hook_runs_also_for_a_connection_whose_connect_hook_never_ran(self):
        """A second connection of the address is refused by the limit while
        the first one's lookup (and so its connect hook) is still waiting:
        the refused one's disconnect hook runs, its connect hook never."""
        _, port = self.start("sluice.on('connect', function(s) s:log('info', 'CONNECT-HOOK') end)\n"
                             "sluice.on('disconnect', function(s) s:log('info', 'DISCONNECT-HOOK') end)\n",
                             connections={"per_address": 1, "per_network": 0, "rate": 0})
        first = self.connect(port)
        s = self.sluice()
        time.sleep(0.3)  # the first is accepted before the second
        second = self.connect(port)
        self.assertReply(second.read_reply(), 421, "4.7.0")
        s.wait_log(r"DISCONNECT-HOOK", timeout=DELAY)
        self.assertEqual(s.grep(r"\bCONNECT-HOOK"), [], s.log_tail())
        self.assertReply(first.read_reply(), 220)
        self.assertEqual(len(s.grep(r"\bCONNECT-HOOK")), 1, s.log_tail())

    def test_a_client_that_comes_back_is_named_from_the_cache_without_asking_again(self):
        """Records with a TTL are kept: the second connection's lookup (PTR,
        then A) costs no question, so its connect hook, and the greeting,
        do not wait for the slow resolver."""
        mport = free_port()
        _, port = self.start(refusing_by_name("connect", 554, "NAME"), local_ttl=300,
                             metrics_port=mport)
        c, banner, waited = self.greet(port)
        self.assertReply(banner, 554, text="NAME good.test")
        self.assertGreaterEqual(waited, 2 * DELAY - 0.2)
        asked = self.resolver.queries
        self.assertEqual(asked, 2, "PTR and A")
        c2, banner2, waited2 = self.greet(port)
        self.assertReply(banner2, 554, text="NAME good.test")
        self.assertLess(waited2, DELAY)
        self.assertEqual(self.resolver.queries, asked)
        counts = series(scrape(mport)[2])
        self.assertEqual(counts['sluice_dns_cache_lookups_total{result="hit"}'], 2)
        self.assertEqual(counts['sluice_dns_cache_lookups_total{result="miss"}'], 2)

    def test_answers_with_a_ttl_of_zero_are_asked_again(self):
        _, port = self.start(refusing_by_name("connect", 554, "NAME"))
        for _ in range(2):
            c, banner, waited = self.greet(port)
            self.assertReply(banner, 554, text="NAME good.test")
            self.assertGreaterEqual(waited, 2 * DELAY - 0.2)
        self.assertEqual(self.resolver.queries, 4)


if __name__ == "__main__":
    import unittest
    unittest.main()
