"""Nothing a Lua script does may crash or stall the daemon: hostile verdicts,
metamethods the host would trigger, message handlers, catastrophic patterns,
collector tricks, forged replies and log lines, a malicious script at
`sluice -t` and at SIGHUP, and the latency a normal client sees on the loop
thread a hostile script runs on. Every hostile call must end in the entry's
on_error outcome (451 4.7.1 by default) with the daemon still serving."""

import os
import re
import signal
import statistics
import sys
import threading
import time
import unittest

from sluice_harness import (SluiceTestCase, base_config, free_port, pool, render_config,
                            run_sluice_check, sluice_bin, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.normpath(os.path.join(HERE, "..", "..", "lua", "examples"))
TEST_PLUGIN_DIR = os.path.join(os.path.dirname(sluice_bin()), "test-plugins")
ROUTES = [("example.test", "a")]
RELOAD_TIMEOUT = 30.0
MAX_TIME_MS = 200
# Timing tests assert only wide bounds: at most the deadline plus 2 s.
LATENCY_BOUND = MAX_TIME_MS / 1000.0 + 2.0
HOSTILE_CALLS = 12

# rcpt handlers, by the recipient's local part: each returns or does
# something hostile. "ok" is the control.
HOSTILE = {
    "index_error": 'return setmetatable({}, {__index = function() error("x") end})',
    "index_loop": "return setmetatable({}, {__index = function() while true do end end})",
    "verdict_tostring_loop":
        "return {verdict = setmetatable({}, {__tostring = function() while true do end end})}",
    "verdict_len_eq": "return {verdict = setmetatable({}, {__len = spin, __eq = spin})}",
    "text_tostring_error":
        'return "reject", 550, "5.7.1", setmetatable({}, {__tostring = function() error("t") end})',
    "text_concat": 'return {verdict = "reject", text = setmetatable({}, {__concat = spin})}',
    "code_index": 'return {verdict = "reject", code = setmetatable({}, {__index = spin})}',
    "esc_crlf": 'return "reject", 550, "5.7.1\\r\\n250 x"',
    "esc_class": 'return "reject", 550, "3.7.1"',
    "esc_letters": 'return "reject", 550, "5.x.1"',
    "esc_long": 'return "reject", 550, "5.7.1000"',
    "code_range": 'return "reject", 999',
    "code_float": 'return "reject", 550.5',
    "text_crlf": 'return "reject", 550, "5.7.1", "no\\r\\n250 2.0.0 fake"',
    "text_lf": 'return {verdict = "tempfail", text = "a\\nb"}',
    "text_nul": 'return "reject", 550, "5.7.1", "a\\0b"',
    "xpcall_handler": "xpcall(error, function() while true do end end)",
    "xpcall_budget": "xpcall(function() while true do end end, function() while true do end end)",
    "pattern": 'return ("free money "):rep(372):find("[Ff]ree.-[Mm]oney.-[Nn]ow")',
    "gsub_pattern": 'return (("a"):rep(2000):gsub(".-.-.-b", ""))',
    "gc_stop": 'collectgarbage("stop")',
    "gc_generational": 'collectgarbage("generational")',
    "error_table": "error(setmetatable({}, {__tostring = function() while true do end end}))",
    "rep_bomb": 'return string.rep("", 1e15)',
    "rep_memory": 'return string.rep("x", 1e9)',
    "move_bomb": "table.move({}, 1, 1e12, 1, {})",
    "coroutine_loop": "coroutine.wrap(function() while true do end end)()",
    "coroutine_close": "local co = coroutine.create(function() while true do end end)\n"
                       "coroutine.resume(co) coroutine.close(co) while true do end",
    "recursion": "local function f() return 1 + f() end return f()",
    "load_bytecode": 'return load("\\27Lua", "x", "b")',
    "string_metatable": 'getmetatable("").__index = spin return ("x"):len()',
    "close_metamethod": "local x <close> = setmetatable({}, {__close = spin})",
    "yield_outside_wait": "coroutine.yield()",
    "defer_crlf": 's:defer_reject("rcpt", 550, "5.7.1\\r\\n250 x")',
    "defer_text_lf": 's:defer_reject("data", 550, "5.7.1", "a\\nb")',
    "print_tostring_loop":
        "print(setmetatable({}, {__tostring = function() while true do end end}))",
    # a huge log line is cut, not refused: the tempfail is the variant's own
    "log_huge": 's:log(("x\\r\\n"):rep(1e6)) return "tempfail"',
}

POLICY = """
local function spin() while true do end end
local variants = {}
%s
sluice.on("rcpt", function(s)
    local who = s:rcpt():match("^([%%w_]+)@") or ""
    if who == "ok" then return end
    if who == "huge_text" then return "reject", 550, "5.7.1", ("x"):rep(1e6) end
    local v = variants[who]
    if v then return v(s) end
end)
""" % "\n".join('variants["%s"] = function(s)\n%s\nend' % (name, body)
                for name, body in HOSTILE.items())


def plugin_dir():
    return os.path.join(os.path.dirname(sluice_bin()), "plugins")


class HostileLuaTestCase(SluiceTestCase):

    def write_script(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def write_entry(self, name, settings):
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, name + ".conf"), "w") as f:
            f.write(render_config(settings))

    def start_lua(self, script, entry_options=None, **conf):
        """sluice with one Lua entry running script; returns (sluice, backend, port)."""
        entry = {"plugin": "lua", "script": script, "max_time": "%dms" % MAX_TIME_MS}
        entry.update(entry_options or {})
        self.write_entry("50-policy", entry)
        b = self.start_backend("a")
        s, port = self.start_relay([pool("a", [b.port])], ROUTES, plugin_dir=plugin_dir(),
                                   **conf)
        return s, b, port

    def assertServing(self, port):
        """A new session still gets its recipient through."""
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<ok@example.test>"), 250)
        c.cmd("QUIT")
        c.close()

    def assertNoCrash(self, s):
        self.assertIsNone(s.proc.poll(), "the master exited")
        self.assertEqual(s.grep(r"worker exited"), [])


class HostileVerdictTest(HostileLuaTestCase):

    def test_every_hostile_handler_gets_on_error_and_the_daemon_keeps_serving(self):
        s, b, port = self.start_lua(self.write_script("hostile.lua", POLICY), threads=1)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        for name in HOSTILE:
            started = time.monotonic()
            reply = c.cmd("RCPT TO:<%s@example.test>" % name)
            took = time.monotonic() - started
            with self.subTest(variant=name):
                self.assertReply(reply, 451, "4.7.1")
                self.assertEqual(len(reply.lines), 1, reply)
                self.assertLess(took, LATENCY_BOUND, "%s held the session %.2fs" % (name, took))
            self.assertReply(c.cmd("NOOP"), 250)
        self.assertReply(c.cmd("RCPT TO:<ok@example.test>"), 250)
        self.assertNoCrash(s)
        self.assertServing(port)
        # every failure is a log line with the session id and the reason
        self.assertGreaterEqual(len(s.grep(r"50-policy: lua: .*\(hook rcpt\)")), len(HOSTILE) - 1)
        self.assertTrue(s.grep(r"50-policy: lua: (x\\x0d\\x0a)+"))

    def test_forged_second_reply_in_enhanced_code_or_text_never_reaches_the_client(self):
        s, b, port = self.start_lua(self.write_script("hostile.lua", POLICY))
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<esc_crlf@example.test>"), 451, "4.7.1")
        self.assertReply(c.cmd("RCPT TO:<text_crlf@example.test>"), 451, "4.7.1")
        # had a second reply been sent, NOOP would read it instead of its own
        noop = c.cmd("NOOP")
        self.assertReply(noop, 250, "2.0.0")
        self.assertNotIn("x", noop.text)
        self.assertNotIn("fake", noop.text)
        self.assertTrue(s.grep(r"enhanced status code must be class\.subject\.detail"))
        self.assertTrue(s.grep(r"reply text must be one line"))

    def test_huge_reply_text_is_one_bounded_line(self):
        s, b, port = self.start_lua(self.write_script("hostile.lua", POLICY))
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        reply = c.cmd("RCPT TO:<huge_text@example.test>")
        self.assertReply(reply, 550, "5.7.1")
        self.assertEqual(len(reply.lines), 1)
        self.assertLess(len(reply.lines[0]), 1000)
        self.assertReply(c.cmd("NOOP"), 250)

    def test_collector_stays_running_for_the_next_calls(self):
        script = self.write_script("gc.lua", """
sluice.on("rcpt", function(s)
    if s:rcpt():find("^stop@") then collectgarbage("stop") end
    if not collectgarbage("isrunning") then return "reject", 550, "5.7.1", "stopped" end
    local t = {} for i = 1, 1000 do t[i] = ("x"):rep(1000) .. i end
end)
""")
        s, b, port = self.start_lua(script, {"max_memory": "4M"}, threads=1)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<stop@example.test>"), 451, "4.7.1")
        for _ in range(5):
            self.assertReply(c.cmd("RCPT TO:<ok@example.test>"), 250)
        self.assertTrue(s.grep(r"collectgarbage: option 'stop' is not allowed"))


class HostileCPluginReplyTest(HostileLuaTestCase):

    def start_plugin(self, **reply):
        self.write_entry("10-reply", dict({"plugin": os.path.join(TEST_PLUGIN_DIR, "verdicts.so"),
                                           "hook": "rcpt", "verdict": "reject"}, **reply))
        b = self.start_backend("a")
        return self.start_relay([pool("a", [b.port])], ROUTES, plugin_dir=plugin_dir())

    def check_refused(self, **reply):
        s, port = self.start_plugin(**reply)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        got = c.cmd("RCPT TO:<ok@example.test>")
        self.assertReply(got, 451, "4.7.1")
        self.assertEqual(len(got.lines), 1, got)
        noop = c.cmd("NOOP")
        self.assertReply(noop, 250, "2.0.0")
        self.assertTrue(s.grep(r"10-reply: reply refused"), s.log_tail())
        return s

    def test_c_plugin_reply_with_crlf_in_enhanced_code_is_refused(self):
        self.check_refused(code=550, esc="5.7.1\r\n250 x", text="no")

    def test_c_plugin_reply_with_crlf_in_text_is_refused(self):
        self.check_refused(code=550, esc="5.7.1", text="no\r\n250 2.0.0 fake")

    def test_c_plugin_reply_with_code_out_of_range_is_refused(self):
        self.check_refused(code=999, esc="5.7.1", text="no")

    def test_c_plugin_reply_with_malformed_enhanced_code_is_refused(self):
        self.check_refused(code=550, esc="5.7", text="no")

    def test_c_plugin_reply_that_is_well_formed_is_sent(self):
        s, port = self.start_plugin(code=553, esc="5.7.9", text="not you")
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<ok@example.test>"), 553, "5.7.9", "not you")


class ScriptLogTest(HostileLuaTestCase):

    def test_script_log_lines_cannot_forge_log_lines(self):
        script = self.write_script("log.lua", """
sluice.on("rcpt", function(s)
    s:log("one\\r\\nFORGED1 master: ready")
    print("two\\nFORGED2", "\\0three")
    sluice.log("warn", "four\\rFORGED3\\27[31m")
    error("five\\nFORGED4")
end)
""")
        s, b, port = self.start_lua(script)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<ok@example.test>"), 451, "4.7.1")
        s.wait_log(r"FORGED4")
        for line in s.log_text().splitlines():
            self.assertNotRegex(line, r"^FORGED")
            self.assertNotIn("\x1b", line)
        self.assertTrue(s.grep(r"lua: one\\x0d\\x0aFORGED1"))
        self.assertTrue(s.grep(r"lua: two\\x0aFORGED2 \\x00three"))
        self.assertTrue(s.grep(r"lua: four\\x0dFORGED3\\x1b\[31m"))
        self.assertTrue(s.grep(r"five\\x0aFORGED4 \(hook rcpt\)"))


MALICIOUS_AT_LOAD = {
    "index_error": 'return setmetatable({}, {__index = function() error("boom at load") end})',
    "index_loop": "return setmetatable({}, {__index = function() while true do end end})",
    "top_level_loop": "while true do end",
    "xpcall_loop": "xpcall(error, function() while true do end end)",
    "pattern": 'local x = ("free money "):rep(372):find("[Ff]ree.-[Mm]oney.-[Nn]ow")',
}


class MaliciousScriptAtLoadTest(HostileLuaTestCase):

    def test_sluice_t_refuses_a_malicious_script_without_crashing(self):
        for name, body in MALICIOUS_AT_LOAD.items():
            with self.subTest(variant=name):
                script = self.write_script(name + ".lua", body + "\n")
                self.write_entry("50-policy", {"plugin": "lua", "script": script,
                                               "max_time": "%dms" % MAX_TIME_MS})
                started = time.monotonic()
                rc, out = run_sluice_check(self.workdir, base_config(
                    self.workdir, free_port(), [pool("a", [1])], plugin_dir=plugin_dir()))
                took = time.monotonic() - started
                # a positive status: refused, not killed by a signal
                self.assertGreater(rc, 0, out)
                self.assertIn(name + ".lua", out)
                self.assertRegex(out, r"boom at load|budget exhausted")
                self.assertLess(took, 30.0)

    def test_sighup_with_a_malicious_script_is_refused_and_the_daemon_keeps_serving(self):
        script = self.write_script("policy.lua", 'sluice.on("rcpt", function(s) end)\n')
        s, b, port = self.start_lua(script)
        self.assertServing(port)
        for n, (name, body) in enumerate(MALICIOUS_AT_LOAD.items(), start=1):
            with self.subTest(variant=name):
                with open(script, "w") as f:
                    f.write(body + "\n")
                s.proc.send_signal(signal.SIGHUP)
                wait_until(lambda: len(s.grep(r"master: reload (refused|error)")) >= n,
                           RELOAD_TIMEOUT, what="reload %d to be refused" % n)
                self.assertNoCrash(s)
                self.assertServing(port)
        self.assertEqual(s.grep(r"master: reload done"), [])


NOOP_SCRIPT = """
sluice.on("rcpt", function(s)
    if s:rcpt():find("^loop@") then while true do end end
    if s:rcpt():find("^pattern@") then
        return ("free money "):rep(372):find("[Ff]ree.-[Mm]oney.-[Nn]ow")
    end
end)
"""


class LatencyTest(HostileLuaTestCase):

    def measure(self, port, hostile_rcpt):
        """NOOP latencies of a normal client while another session of the
        same loop thread runs HOSTILE_CALLS hostile calls."""
        normal = self.open_session(port)
        hostile = self.open_session(port)
        self.assertReply(hostile.cmd("MAIL FROM:<a@sender.test>"), 250)
        done = threading.Event()
        replies = []

        def attack():
            try:
                for _ in range(HOSTILE_CALLS):
                    replies.append(hostile.cmd("RCPT TO:<%s>" % hostile_rcpt).code)
            finally:
                done.set()

        t = threading.Thread(target=attack, daemon=True)
        latencies = []
        t.start()
        deadline = time.monotonic() + HOSTILE_CALLS * LATENCY_BOUND + 10
        while not done.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            self.assertReply(normal.cmd("NOOP"), 250)
            latencies.append(time.monotonic() - started)
        t.join(10)
        self.assertTrue(done.is_set(), "the hostile client did not finish")
        self.assertEqual(replies, [451] * HOSTILE_CALLS)
        return latencies

    def check(self, options, hostile_rcpt):
        s, b, port = self.start_lua(self.write_script("noop.lua", NOOP_SCRIPT), options,
                                    threads=1)
        latencies = self.measure(port, hostile_rcpt)
        worst = max(latencies)
        print("\n%s: %d NOOPs during %d hostile calls (%s): median %.1f ms, max %.1f ms"
              % (self.id().split(".")[-1], len(latencies), HOSTILE_CALLS, hostile_rcpt,
                 statistics.median(latencies) * 1000, worst * 1000), file=sys.stderr)
        self.assertLess(worst, LATENCY_BOUND)
        self.assertNoCrash(s)
        return s

    def test_noop_latency_is_bounded_by_max_time_while_a_loop_runs_on_the_same_thread(self):
        s = self.check({"max_instructions": 2000000000}, "loop@example.test")
        self.assertTrue(s.grep(r"time budget exhausted \(max_time = %d ms\)" % MAX_TIME_MS))

    def test_noop_latency_is_bounded_while_a_catastrophic_pattern_runs_on_the_same_thread(self):
        self.check({"max_instructions": 2000000000}, "pattern@example.test")


SUBJECT_RULE_CONF = {"subjects": ["[Ff]ree.-[Mm]oney.-[Nn]ow"]}


class SubjectRuleExampleTest(HostileLuaTestCase):

    def test_shipped_subject_rule_stays_fast_on_a_hostile_4k_subject(self):
        s, b, port = self.start_lua(os.path.join(EXAMPLES, "subject_rule.lua"),
                                    SUBJECT_RULE_CONF, threads=1)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        subject = (b"free money " * 372)[:4096]
        started = time.monotonic()
        c.send(b"From: a@sender.test\r\nSubject: " + subject + b"\r\n\r\nhi\r\n.\r\n")
        reply = c.read_reply()
        took = time.monotonic() - started
        self.assertReply(reply, 250)
        self.assertLess(took, LATENCY_BOUND)
        self.assertEqual(s.grep(r"budget exhausted"), [])
        # and the rule still matches a spam subject within its first bytes
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"From: a@sender.test\r\nSubject: Free money now\r\n\r\nhi\r\n.\r\n")
        self.assertReply(c.read_reply(), 554, "5.7.1")


if __name__ == "__main__":
    unittest.main()
