"""lua/examples/score_tarpit.lua: the connection's score becomes a delay and a
read throttle. A small scorer entry before it stands in for the DNSBL: it adds
points for HELO names that say how bad they are. Timing checks assert wide
bounds only (at least the delay, less than delay + 2 s)."""

import os
import time
import unittest

from sluice_harness import Raw, SluiceTestCase, pool, render_config, sluice_bin

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.normpath(os.path.join(HERE, "..", "..", "lua", "examples",
                                        "score_tarpit.lua"))
SLACK = 2.0
QUICK = 0.9
SENDER = "sender@x.example"

# "spammy.test" scores 3, "awful.test" 100, anything else 0.
SCORER = """
local points = { ["spammy.test"] = 3, ["awful.test"] = 100 }
sluice.on("helo", function(s)
    local p = points[s:helo()]
    if p and s:note("test.scored") == nil then
        s:add_score(p)
        s:set_note("test.scored", 1)
    end
end)
"""


def plugin_dir():
    return os.path.join(os.path.dirname(sluice_bin()), "plugins")


class LuaScoreTarpitTest(SluiceTestCase):
    def relay(self, **options):
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        scorer = os.path.join(self.workdir, "scorer.lua")
        with open(scorer, "w") as f:
            f.write(SCORER)
        entries = {
            "05-scorer.conf": {"plugin": "lua", "script": scorer},
            "30-score-tarpit.conf": dict({"plugin": "lua", "script": EXAMPLE,
                                          "timeout": "30s", "per_point_ms": 400,
                                          "max_ms": 1000}, **options),
        }
        for name, entry in entries.items():
            with open(os.path.join(conf_dir, name), "w") as f:
                f.write(render_config(entry))
        b = self.start_backend("a")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                   plugin_dir=plugin_dir())
        return port

    def timed(self, fn, *args):
        started = time.monotonic()
        result = fn(*args)
        return result, time.monotonic() - started

    def assertDelayed(self, elapsed, delay):
        self.assertGreaterEqual(elapsed, delay - 0.05)
        self.assertLess(elapsed, delay + SLACK)

    def session(self, port):
        c = self.connect(port)
        self.assertReply(c.read_reply(), 220)
        return c

    def test_clean_client_is_not_delayed(self):
        port = self.relay()
        c = self.session(port)
        ehlo, elapsed = self.timed(c.cmd, "EHLO clean.test")
        self.assertReply(ehlo, 250)
        self.assertLess(elapsed, QUICK)
        mail, elapsed = self.timed(c.cmd, "MAIL FROM:<%s>" % SENDER)
        self.assertReply(mail, 250)
        self.assertLess(elapsed, QUICK)

    def test_scored_client_waits_per_point_at_each_listed_hook(self):
        port = self.relay(per_point_ms=300, max_ms=5000, hooks=["helo", "mail"])
        c = self.session(port)
        ehlo, elapsed = self.timed(c.cmd, "EHLO spammy.test")  # 3 points x 300 ms
        self.assertReply(ehlo, 250)
        self.assertDelayed(elapsed, 0.9)
        mail, elapsed = self.timed(c.cmd, "MAIL FROM:<%s>" % SENDER)
        self.assertReply(mail, 250)
        self.assertDelayed(elapsed, 0.9)
        rcpt, elapsed = self.timed(c.cmd, "RCPT TO:<u@a.example>")  # rcpt not listed
        self.assertReply(rcpt, 250)
        self.assertLess(elapsed, QUICK)

    def test_delay_is_capped_at_max_ms(self):
        port = self.relay()
        c = self.session(port)
        ehlo, elapsed = self.timed(c.cmd, "EHLO awful.test")  # 100 points, cap 1 s
        self.assertReply(ehlo, 250)
        self.assertDelayed(elapsed, 1.0)

    def test_no_delay_once_a_recipient_holds_a_backend(self):
        port = self.relay(hooks=["rcpt"])
        c = self.session(port)
        self.assertReply(c.cmd("EHLO spammy.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        first, elapsed = self.timed(c.cmd, "RCPT TO:<u@a.example>")
        self.assertReply(first, 250)
        self.assertDelayed(elapsed, 1.0)
        second, elapsed = self.timed(c.cmd, "RCPT TO:<v@a.example>")
        self.assertReply(second, 250)
        self.assertLess(elapsed, QUICK)

    def noop_burst_seconds(self, c, count):
        started = time.monotonic()
        c.send(b"NOOP\r\n" * count)
        for _ in range(count):
            self.assertReply(c.read_reply(), 250)
        return time.monotonic() - started

    def test_client_over_throttle_score_is_read_slowly(self):
        port = self.relay(per_point_ms=0, throttle=2048, throttle_score=Raw("3.0"))
        c = self.session(port)
        self.assertReply(c.cmd("EHLO spammy.test"), 250)
        # 6 KiB at 2 KiB/s: the first second's burst, then two more seconds.
        self.assertGreaterEqual(self.noop_burst_seconds(c, 1024), 1.5)

    def test_client_under_throttle_score_is_read_at_full_speed(self):
        port = self.relay(per_point_ms=0, throttle=2048, throttle_score=Raw("5.0"))
        c = self.session(port)
        self.assertReply(c.cmd("EHLO spammy.test"), 250)
        self.assertLess(self.noop_burst_seconds(c, 1024), 1.5)


if __name__ == "__main__":
    unittest.main()
