"""The dnsbl plugin against a real rbldnsd: listed clients are refused with
the zone's reason (deferred to RCPT, or at connect), weights add up against
the threshold, allowlists and DNSWL zones let clients through, score-only
zones never refuse, and a misbehaving or silent DNS never refuses anyone."""

import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from sluice_harness import (Raw, SluiceTestCase, base_config, free_port, pool, render_config,
                            run_sluice_check, sluice_bin, wait_until)

SENDER = "sender@x.example"
BODY = b"Subject: dnsbl\r\n\r\nbody\r\n"
RBLDNSD = "/usr/sbin/rbldnsd"
START_TIMEOUT = 10.0

LISTED = "127.0.0.9"        # one.test, TXT "Listed because 127.0.0.9"
CLEAN = "127.0.0.8"         # listed nowhere but in the zones that list everything
CODE4 = "127.0.0.20"        # one.test answers 127.0.0.4
BOTH_HALVES = "127.0.0.11"  # half1.test and half2.test
ONE_HALF = "127.0.0.12"     # half2.test only
DNSWL = "127.0.0.13"        # one.test and allow.test
SCORED = "127.0.0.14"       # score.test only
REFUSED = "127.0.0.30"      # flaky.test answers the error code 127.255.255.254
LISTED_V6 = "2001:db8::1"   # six.test (ip6tset)

# rbldnsd datasets: every IP zone lists its RFC 5782 test point 127.0.0.2.
ZONES = {
    "one.test": ("ip4set", ":127.0.0.2:Listed because $\n127.0.0.2\n127.0.0.9\n"
                           "127.0.0.13\n127.0.0.20 :127.0.0.4:Listed with code four\n"),
    "half1.test": ("ip4set", "127.0.0.2\n127.0.0.11\n"),
    "half2.test": ("ip4set", "127.0.0.2\n127.0.0.11\n127.0.0.12\n"),
    "allow.test": ("ip4set", "127.0.0.2\n127.0.0.13\n"),
    "score.test": ("ip4set", "127.0.0.2\n127.0.0.14\n"),
    "six.test": ("ip6tset", ":127.0.0.2:Listed v6\n2001:db8:0:0\n"),
    "errcode.test": ("ip4set", "127.0.0.0/8 :127.255.255.254:Query refused\n"),
    "listsall.test": ("ip4set", "127.0.0.0/8\n"),
    "flaky.test": ("ip4set", "127.0.0.2\n127.0.0.9\n127.0.0.30 :127.255.255.254:Refused\n"),
    "dom.test": ("dnset", ":127.0.0.2:Domain listed\nspammer.example\ntest\n"),
    # Spamhaus DBL's answer to a name that is an address: an error code
    # inside 127/8, "IP queries prohibited!".
    "dbl.test": ("dnset", "test\n192.0.2.1 :127.0.1.255:IP queries prohibited\n"),
}


def rbldns_user():
    for name in ("rbldns", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    return "nobody"


class Rbldnsd:
    """rbldnsd serving ZONES on a UDP port of 127.0.0.1."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-rbldnsd-")
        os.chmod(self.dir, 0o755)  # rbldnsd drops to its own user
        specs = []
        for i, (zone, (kind, data)) in enumerate(sorted(ZONES.items())):
            name = "zone%d" % i
            path = os.path.join(self.dir, name)
            with open(path, "w") as f:
                f.write(data)
            os.chmod(path, 0o644)
            specs.append("%s:%s:%s" % (zone, kind, name))
        self.port = free_port(socket.SOCK_DGRAM)
        self.out_path = os.path.join(self.dir, "out.txt")
        self.out = open(self.out_path, "wb")
        cmd = [RBLDNSD, "-n", "-u", rbldns_user(), "-r", self.dir, "-t", "300",
               "-b", "127.0.0.1/%d" % self.port] + specs
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_until(lambda: self.proc.poll() is not None or b"started" in self.output(),
                   START_TIMEOUT, what="rbldnsd to start")
        if self.proc.poll() is not None:
            raise AssertionError("rbldnsd exited: %r" % self.output())

    def output(self):
        with open(self.out_path, "rb") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SilentDns:
    """A UDP socket that reads DNS queries and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._swallow, daemon=True)
        self.thread.start()

    def _swallow(self):
        while not self.stopping.is_set():
            try:
                self.sock.recvfrom(4096)
                self.queries += 1
            except socket.timeout:
                pass

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


def zone(name, weight=1.0, **options):
    out = {"zone": name, "weight": Raw(repr(float(weight)))}
    out.update(options)
    return out


def proxy_v2_tcp6(src, sport, dport):
    addrs = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
             + struct.pack("!HH", sport, dport))
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x21" + struct.pack("!H", len(addrs)) + addrs


@unittest.skipUnless(os.path.exists(RBLDNSD), "rbldnsd is not installed")
class DnsblTest(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.rbldnsd = Rbldnsd()

    @classmethod
    def tearDownClass(cls):
        cls.rbldnsd.stop()

    def relay(self, zones, dns_port=None, listen_options=None, dns_timeout="1s", timeouts=None,
              **settings):
        """sluice with one dnsbl entry; returns its port."""
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        entry = dict({"zones": tuple(zones)}, **settings)
        with open(os.path.join(conf_dir, "20-dnsbl.conf"), "w") as f:
            f.write('plugin = "dnsbl";\n' + render_config(entry))
        self.backend = self.start_backend("a")
        port = free_port()
        dns = {"servers": ["127.0.0.1:%d" % (dns_port or self.rbldnsd.port)],
               "timeout": dns_timeout, "tries": 1}
        plugin_dir = os.path.join(os.path.dirname(sluice_bin()), "plugins")
        self.sluice = self.start_sluice(base_config(
            self.workdir, port, [pool("a", [self.backend.port])], [("a.example", "a")],
            listen_options=listen_options, dns=dns, plugin_dir=plugin_dir,
            timeouts=dict({"command": "5m", "data_block": "3m"}, **(timeouts or {}))))
        return port

    def session_from(self, port, source):
        c = self.connect(port, source=(source, 0))
        return c

    def mail_until_rcpt(self, c, rcpt="u@a.example", sender=SENDER):
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % sender), 250)
        return c.cmd("RCPT TO:<%s>" % rcpt)

    def deliver(self, c, rcpt="u@a.example"):
        self.assertReply(self.mail_until_rcpt(c, rcpt), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        self.assertReply(c.cmd("QUIT"), 221)

    # --- listed or not ------------------------------------------------------

    def test_listed_client_is_refused_at_rcpt_with_the_zone_txt_reason(self):
        port = self.relay([zone("one.test")])
        reply = self.mail_until_rcpt(self.session_from(port, LISTED))
        self.assertReply(reply, 550, "5.7.1",
                         "Service unavailable; client [127.0.0.9] blocked using one.test; "
                         "Listed because 127.0.0.9")

    def test_unlisted_client_delivers(self):
        port = self.relay([zone("one.test")])
        self.deliver(self.session_from(port, CLEAN))
        self.backend.wait_messages(1)

    def test_postmaster_passes_a_deferred_rejection_other_recipients_do_not(self):
        port = self.relay([zone("one.test")])
        c = self.session_from(port, LISTED)
        self.assertReply(self.mail_until_rcpt(c, "postmaster@a.example"), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 550, "5.7.1", "one.test")

    def test_not_deferred_listed_client_gets_554_greeting(self):
        port = self.relay([zone("one.test")], defer=False)
        c = self.session_from(port, LISTED)
        self.assertReply(c.read_reply(), 554, "5.7.1",
                         "client [127.0.0.9] blocked using one.test; Listed because 127.0.0.9")

    def test_not_deferred_unlisted_client_gets_220(self):
        port = self.relay([zone("one.test")], defer=False)
        self.deliver(self.session_from(port, CLEAN))

    # --- weights ------------------------------------------------------------

    def test_two_zones_below_threshold_each_refuse_together(self):
        port = self.relay([zone("half1.test", 0.6), zone("half2.test", 0.6)],
                          threshold=Raw("1.0"))
        self.assertReply(self.mail_until_rcpt(self.session_from(port, BOTH_HALVES)), 550,
                         "5.7.1", "blocked using half1.test")
        self.deliver(self.session_from(port, ONE_HALF))

    def test_return_code_weights_count_only_matching_answers(self):
        codes = ({"ip": "127.0.0.4", "weight": Raw("2.0")},)
        port = self.relay([zone("one.test", 0.1, codes=codes)], threshold=Raw("1.5"))
        self.assertReply(self.mail_until_rcpt(self.session_from(port, CODE4)), 550, "5.7.1",
                         "Listed with code four")
        self.deliver(self.session_from(port, LISTED))  # answers 127.0.0.2: no code matches

    # --- IPv6 ---------------------------------------------------------------

    def test_ipv6_client_presented_by_proxy_is_looked_up_in_nibble_form(self):
        port = self.relay([zone("six.test", type="ip6")],
                          listen_options={"proxy_protocol": True,
                                          "proxy_trusted": ["127.0.0.1"]})
        c = self.connect(port)
        c.send(proxy_v2_tcp6(LISTED_V6, 40000, port))
        reply = self.mail_until_rcpt(c)
        self.assertReply(reply, 550, "5.7.1",
                         "client [2001:db8::1] blocked using six.test; Listed v6")

    # --- allowlists ---------------------------------------------------------

    def test_allowlisted_network_passes_although_listed(self):
        port = self.relay([zone("one.test")], allowlist=["127.0.0.0/29", "127.0.0.9"])
        self.deliver(self.session_from(port, LISTED))
        self.backend.wait_messages(1)

    def test_dnswl_listing_lets_a_listed_client_through(self):
        port = self.relay([zone("one.test"), zone("allow.test", action="allow")])
        self.deliver(self.session_from(port, DNSWL))
        self.backend.wait_messages(1)

    def test_dnswl_listing_accepts_at_connect_when_not_deferred(self):
        port = self.relay([zone("one.test"), zone("allow.test", action="allow")], defer=False)
        self.deliver(self.session_from(port, DNSWL))

    # --- score only ---------------------------------------------------------

    def test_score_zone_adds_to_the_score_and_never_refuses(self):
        port = self.relay([zone("score.test", 5.0, action="score")], threshold=Raw("1.0"))
        self.deliver(self.session_from(port, SCORED))
        self.backend.wait_messages(1)
        lines = self.sluice.wait_log(r"20-dnsbl: client score=5 reject=0 listed=score\.test")
        self.assertTrue(lines)

    def test_a_scored_client_is_held_by_the_tarpit_from_its_first_lookup(self):
        """The score zone's answer is in before the tarpit's connect hook
        decides: the first session (nothing cached) is held like the next."""
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "30-tarpit.conf"), "w") as f:
            f.write('plugin = "tarpit";\n' + render_config(
                {"hooks": ["connect"], "delay_per_score": "400ms", "max_delay": "2s",
                 "timeout": "60s"}))
        port = self.relay([zone("score.test", 5.0, action="score")])
        for _ in range(2):  # the lookup, then the cached answer
            c = self.session_from(port, SCORED)
            started = time.monotonic()
            self.assertReply(c.read_reply(), 220)
            self.assertGreaterEqual(time.monotonic() - started, 1.95)
            c.close()
        c = self.session_from(port, CLEAN)
        started = time.monotonic()
        self.assertReply(c.read_reply(), 220)
        self.assertLess(time.monotonic() - started, 0.9)

    # --- domains ------------------------------------------------------------

    def test_listed_sender_domain_refuses_that_transaction_only(self):
        port = self.relay([zone("dom.test", type="sender")])
        c = self.session_from(port, CLEAN)
        reply = self.mail_until_rcpt(c, sender="bad@spammer.example")
        self.assertReply(reply, 550, "5.7.1",
                         "sender domain spammer.example blocked using dom.test; Domain listed")
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)

    def test_listed_helo_name_refuses_at_rcpt(self):
        port = self.relay([zone("dom.test", type="helo")])
        c = self.session_from(port, CLEAN)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO spammer.example"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 550, "5.7.1",
                         "helo name spammer.example blocked using dom.test")

    def test_helo_that_is_a_bare_address_is_not_looked_up_in_a_domain_zone(self):
        port = self.relay([zone("dbl.test", type="domain")])
        c = self.session_from(port, CLEAN)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO 192.0.2.1"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)

    # --- misbehaving and silent DNS -------------------------------------------

    def test_zone_answering_an_error_code_is_disabled_and_refuses_nobody(self):
        port = self.relay([zone("errcode.test")])
        self.deliver(self.session_from(port, LISTED))
        self.sluice.wait_log(r"zone errcode\.test DISABLED")

    def test_zone_listing_its_negative_test_point_is_disabled_and_refuses_nobody(self):
        port = self.relay([zone("listsall.test")])
        self.deliver(self.session_from(port, CLEAN))
        self.sluice.wait_log(r"zone listsall\.test DISABLED")

    def test_zone_broken_from_the_start_is_disabled_before_any_client_connects(self):
        port = self.relay([zone("listsall.test"), zone("one.test")])
        # No session yet: the health check runs when the loop threads start.
        self.sluice.wait_log(r"zone listsall\.test DISABLED: it lists the test point", 5.0)
        self.assertFalse(self.sluice.grep(r"zone one\.test DISABLED"))
        self.deliver(self.session_from(port, CLEAN))  # listsall.test no longer counts
        self.backend.wait_messages(1)

    def test_disabled_zone_is_enabled_again_when_its_health_check_passes(self):
        port = self.relay([zone("flaky.test")], health_interval="1s")
        self.deliver(self.session_from(port, REFUSED))
        self.sluice.wait_log(r"zone flaky\.test DISABLED")
        self.deliver(self.session_from(port, LISTED))  # disabled: the listing is ignored
        time.sleep(1.2)
        reply = self.mail_until_rcpt(self.session_from(port, LISTED))
        self.assertReply(reply, 550, "5.7.1", "blocked using flaky.test")
        self.sluice.wait_log(r"zone flaky\.test re-enabled")

    def test_silent_dns_server_fails_open_within_the_timeout(self):
        silent = SilentDns()
        self.addCleanup(silent.stop)
        port = self.relay([zone("one.test")], dns_port=silent.port, defer=False,
                          timeouts={"reverse_lookup": "1s"})
        started = time.monotonic()
        self.deliver(self.session_from(port, LISTED))
        self.assertLess(time.monotonic() - started, 5)  # reverse lookup 1s, the list 1s
        self.assertGreater(silent.queries, 0)
        self.sluice.wait_log(r"one\.test: lookup of .* failed")

    def test_entry_timeout_cutting_the_wait_fails_open_and_later_hooks_do_not_wait(self):
        silent = SilentDns()
        self.addCleanup(silent.stop)
        port = self.relay([zone("one.test")], dns_port=silent.port, dns_timeout="30s",
                          query_timeout="30s", timeout="1s", on_timeout="continue")
        c = self.session_from(port, LISTED)
        self.assertReply(c.read_reply(), 220)  # after the host's own reverse lookup gave up
        started = time.monotonic()
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<v@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        self.assertLess(time.monotonic() - started, 4)  # one cut wait (1s), not one per hook
        self.sluice.wait_log(r"timeout cut the wait")

    # --- configuration ------------------------------------------------------

    def test_unknown_setting_is_refused_at_check(self):
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "20-dnsbl.conf"), "w") as f:
            f.write('plugin = "dnsbl";\nzones = ( { zone = "one.test"; wieght = 1; } );\n')
        plugin_dir = os.path.join(os.path.dirname(sluice_bin()), "plugins")
        rc, out = run_sluice_check(self.workdir, base_config(
            self.workdir, free_port(), [pool("a", [1])], plugin_dir=plugin_dir))
        self.assertNotEqual(rc, 0, out)
        self.assertIn("wieght", out)

    def test_threshold_that_every_client_reaches_is_refused_at_check(self):
        """A sum of 0 (listed nowhere) reaches a threshold of 0 or below:
        every recipient of every client would get 550."""
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        plugin_dir = os.path.join(os.path.dirname(sluice_bin()), "plugins")
        for threshold in ("0", "0.0", "-1"):
            with open(os.path.join(conf_dir, "20-dnsbl.conf"), "w") as f:
                f.write('plugin = "dnsbl";\nthreshold = %s;\n'
                        'zones = ( { zone = "one.test"; } );\n' % threshold)
            rc, out = run_sluice_check(self.workdir, base_config(
                self.workdir, free_port(), [pool("a", [1])], plugin_dir=plugin_dir))
            self.assertNotEqual(rc, 0, "threshold = %s: %s" % (threshold, out))
            self.assertIn("threshold", out)


if __name__ == "__main__":
    unittest.main()
