"""The Lua bridge through a running sluice: the shipped example policies, the
instruction budget and runtime errors as session outcomes, waits (DNS against a
dnsmasq of our own, timers, the LMDB store) and sluice -t on a broken script."""

import os
import signal
import socket
import subprocess
import threading
import time
import unittest

from sluice_harness import (SluiceTestCase, base_config, free_port, pool, render_config,
                            run_sluice_check, sluice_bin, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.normpath(os.path.join(HERE, "..", "..", "lua", "examples"))
DNSMASQ = "/usr/sbin/dnsmasq"
DNS_START_TIMEOUT = 5.0
MESSAGE = (b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: %s\r\n"
           b"X-Sluice-Policy: forged\r\n\r\nHello there.\r\n%s\r\n.\r\n")


def plugin_dir():
    return os.path.join(os.path.dirname(sluice_bin()), "plugins")


def free_udp_and_tcp_port():
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no port free for both UDP and TCP")


class Dnsmasq:
    """A dnsmasq answering the test zones on a free UDP port of 127.0.0.1."""

    START_ATTEMPTS = 5

    def __init__(self, local_ttl=0):
        # Answers carry this TTL (dnsmasq's default for its own records is 0,
        # which nobody may keep).
        self.local_ttl = local_ttl
        # dnsmasq also listens on TCP: another test may hold that port, so a
        # start that loses the race is retried on a fresh port.
        for attempt in range(self.START_ATTEMPTS):
            try:
                self._start()
                return
            except AssertionError:
                self.stop()
                if attempt == self.START_ATTEMPTS - 1:
                    raise

    def _start(self):
        self.port = free_udp_and_tcp_port()
        args = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                "--port=%d" % self.port, "--listen-address=127.0.0.1", "--bind-interfaces",
                "--pid-file=", "--conf-file=/dev/null", "--user=root", "--group=root",
                "--local=/test/", "--local=/127.in-addr.arpa/",
                "--local-ttl=%d" % self.local_ttl,
                # 127.0.0.1 is forward-confirmed; 127.0.0.2 claims a name that
                # points elsewhere.
                "--host-record=good.test,127.0.0.1",
                "--ptr-record=2.0.0.127.in-addr.arpa,liar.test",
                "--host-record=liar.test,127.0.0.99",
                "--address=/listed.test/127.0.0.2",
                "--txt-record=listed.test,spam source seen"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(self._listening, DNS_START_TIMEOUT, what="dnsmasq to listen")

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("dnsmasq exited with %s" % self.proc.returncode)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError:
                return True
        return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class LuaTestCase(SluiceTestCase):

    def write_script(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_lua(self, script, entry_options=None, dns=None, **conf):
        """sluice with one Lua entry running script; returns (backend, port)."""
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        entry = {"plugin": "lua", "script": script}
        entry.update(entry_options or {})
        with open(os.path.join(conf_dir, "50-policy.conf"), "w") as f:
            f.write(render_config(entry))
        b = self.start_backend("a")
        if dns is not None:
            conf["dns"] = {"servers": ["127.0.0.1:%d" % dns.port], "timeout": "2s"}
        _, port = self.start_relay([pool("a", [b.port])], [("example.test", "a")],
                                   plugin_dir=plugin_dir(), **conf)
        return b, port

    def start_dns(self):
        d = Dnsmasq()
        self.addCleanup(d.stop)
        return d

    def sluice(self):
        return self.sluices[-1]

    def send_message(self, c, subject=b"hello", body=b""):
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(MESSAGE % (subject, body))
        return c.read_reply()


class ExampleScripts(LuaTestCase):

    def test_allowlist_accepts_listed_users_and_refuses_others_of_the_domain(self):
        _, port = self.start_lua(os.path.join(EXAMPLES, "rcpt_allowlist.lua"), {
            "domains": ({"domain": "example.test", "users": ["alice", "Bob"]},)})
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<alice@example.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<bob@EXAMPLE.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<mallory@example.test>"), 550, "5.1.1", "No such user")

    def test_helo_bare_ip_is_refused_and_own_literal_passes(self):
        dns = self.start_dns()
        _, port = self.start_lua(os.path.join(EXAMPLES, "helo_sanity.lua"), dns=dns)
        c = self.connect(port)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO 192.0.2.1"), 550, "5.7.1", "Bare IP")
        self.assertReply(c.cmd("EHLO [192.0.2.1]"), 550, "5.7.1", "not your address")
        self.assertReply(c.cmd("EHLO [127.0.0.1]"), 250)

    def test_helo_needs_forward_confirmed_reverse_dns(self):
        dns = self.start_dns()
        _, port = self.start_lua(os.path.join(EXAMPLES, "helo_sanity.lua"), dns=dns)
        good = self.connect(port)
        self.assertReply(good.read_reply(), 220)
        self.assertReply(good.cmd("EHLO good.test"), 250)
        liar = self.connect(port, source=("127.0.0.2", 0))
        self.assertReply(liar.read_reply(), 220)
        self.assertReply(liar.cmd("EHLO liar.test"), 550, "5.7.25", "127.0.0.2")

    def test_rate_limit_counts_senders_in_the_lmdb_store(self):
        store = {"backend": "lmdb", "path": os.path.join(self.workdir, "store")}
        _, port = self.start_lua(os.path.join(EXAMPLES, "rate_limit.lua"),
                                 {"limit": 2, "window": "1h"}, store=store)
        c = self.open_session(port)
        for _ in range(2):
            self.assertReply(c.cmd("MAIL FROM:<bulk@sender.test>"), 250)
            self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<bulk@sender.test>"), 451, "4.7.1", "slow down")
        self.assertReply(c.cmd("MAIL FROM:<other@sender.test>"), 250)
        # the count is in the store, not in the session
        c2 = self.open_session(port)
        self.assertReply(c2.cmd("MAIL FROM:<bulk@sender.test>"), 451, "4.7.1")

    def test_subject_rule_refuses_at_end_of_message_and_passes_clean_mail(self):
        b, port = self.start_lua(os.path.join(EXAMPLES, "subject_rule.lua"), {
            "subjects": ["[Cc]heap [Pp]ills"], "body_phrases": ["wire the fee"]})
        c = self.open_session(port)
        self.assertReply(self.send_message(c, b"Cheap pills today"), 554, "5.7.1", "subject")
        self.assertReply(self.send_message(c, b"hi", b"Please WIRE THE FEE now"), 554, "5.7.1",
                         "body")
        self.assertReply(self.send_message(c, b"lunch?"), 250)
        msgs = b.wait_messages(1)
        self.assertEqual(len(msgs), 1)
        self.assertIn(b"Subject: lunch?", msgs[0]["data"])

    def test_header_tag_is_added_and_forged_copy_removed(self):
        b, port = self.start_lua(os.path.join(EXAMPLES, "header_tag.lua"))
        c = self.open_session(port)
        self.assertReply(self.send_message(c), 250)
        data = b.wait_messages(1)[0]["data"]
        self.assertIn(b"X-Sluice-Policy: checked; score=0.0; client=127.0.0.1", data)
        self.assertNotIn(b"forged", data)


LOOP_SCRIPT = """
sluice.on("rcpt", function(s)
    local r = s:rcpt()
    if r:find("^loop@") then
        while true do end
    elseif r:find("^pcall@") then
        for _ = 1, 1000 do pcall(function() while true do end end) end
        return sluice.accept()
    end
end)
"""

ERROR_SCRIPT = """
sluice.on("rcpt", function(s)
    local r = s:rcpt()
    if r:find("^boom@") then
        local t = nil
        return t.field
    end
end)
"""


class Limits(LuaTestCase):

    def test_infinite_loops_are_tempfailed_while_other_sessions_are_served(self):
        script = self.write_script("loop.lua", LOOP_SCRIPT)
        _, port = self.start_lua(script, {"max_instructions": 1000000}, threads=1)
        other = self.open_session(port)
        self.assertReply(other.cmd("MAIL FROM:<x@sender.test>"), 250)
        for victim in ("loop", "pcall"):
            c = self.open_session(port)
            self.assertReply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
            started = time.monotonic()
            self.assertReply(c.cmd("RCPT TO:<%s@example.test>" % victim), 451, "4.7.1")
            self.assertLess(time.monotonic() - started, 5.0)
            # the same loop thread keeps serving the other session
            self.assertReply(other.cmd("NOOP"), 250)
            self.assertReply(other.cmd("RCPT TO:<fine@example.test>"), 250)
            self.assertReply(c.cmd("RCPT TO:<fine@example.test>"), 250)
        self.sluice().wait_log(r"loop\.lua:\d+: instruction budget exhausted")

    def test_runtime_error_is_logged_with_file_and_line_and_tempfails(self):
        script = self.write_script("policy.lua", ERROR_SCRIPT)
        _, port = self.start_lua(script)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<boom@example.test>"), 451, "4.7.1")
        self.assertReply(c.cmd("RCPT TO:<fine@example.test>"), 250)
        # the session id, the entry, then file:line
        self.sluice().wait_log(r"[0-9A-F]{12} 50-policy: lua: \S*policy\.lua:6: "
                               r".*attempt to index")

    def test_on_error_continue_lets_the_session_through(self):
        script = self.write_script("policy.lua", ERROR_SCRIPT)
        _, port = self.start_lua(script, {"on_error": "continue"})
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<boom@example.test>"), 250)

    def test_syntax_error_fails_the_check_with_file_and_line(self):
        script = self.write_script("broken.lua", "sluice.on('rcpt', function(s)\n"
                                                 "  return 'accept'\n\n")
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "50-policy.conf"), "w") as f:
            f.write(render_config({"plugin": "lua", "script": script}))
        rc, out = run_sluice_check(self.workdir, base_config(
            self.workdir, free_port(), [pool("a", [1])], plugin_dir=plugin_dir()))
        self.assertNotEqual(rc, 0, out)
        self.assertIn("broken.lua:4:", out)


WAIT_SCRIPT = """
sluice.on("rcpt", function(s)
    local r = s:rcpt()
    if r:find("^dns@") then
        local rr, st = sluice.dns("listed.test", "A")
        local txt = sluice.dns("listed.test", "TXT")
        if st == "ok" and rr[1] == "127.0.0.2" then
            return sluice.reject(550, "5.7.1", "listed: " .. txt[1])
        end
        return sluice.tempfail("dns said " .. st)
    elseif r:find("^missing@") then
        local rr, st = sluice.dns("nothing.test", "A")
        return sluice.reject(550, "5.7.1", "status " .. st .. " records " .. #rr)
    elseif r:find("^sleep@") then
        sluice.sleep(300)
        return sluice.accept()
    end
end)
"""


class Waits(LuaTestCase):

    def test_dns_answers_reach_the_script_without_blocking(self):
        dns = self.start_dns()
        script = self.write_script("waits.lua", WAIT_SCRIPT)
        _, port = self.start_lua(script, dns=dns)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<dns@example.test>"), 550, "5.7.1",
                         "listed: spam source seen")
        self.assertReply(c.cmd("RCPT TO:<missing@example.test>"), 550, "5.7.1",
                         "status notfound records 0")

    def test_sleep_suspends_one_session_not_the_loop(self):
        script = self.write_script("waits.lua", WAIT_SCRIPT)
        _, port = self.start_lua(script, threads=1)
        sleeper = self.open_session(port)
        other = self.open_session(port)
        self.assertReply(sleeper.cmd("MAIL FROM:<x@sender.test>"), 250)
        started = time.monotonic()
        sleeper.send(b"RCPT TO:<sleep@example.test>\r\n")
        # answered while the other session's handler sleeps
        self.assertReply(other.cmd("NOOP"), 250)
        self.assertLess(time.monotonic() - started, 0.3)
        self.assertReply(sleeper.read_reply(), 250)
        self.assertGreaterEqual(time.monotonic() - started, 0.29)

    def test_timed_out_wait_is_abandoned_and_the_next_call_runs(self):
        script = self.write_script("waits.lua", WAIT_SCRIPT)
        _, port = self.start_lua(script, {"timeout": "100ms", "on_timeout": "tempfail"},
                                 threads=1)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<sleep@example.test>"), 451)
        # the timer the host cancelled must not resume anything later
        time.sleep(0.4)
        self.assertReply(c.cmd("RCPT TO:<fine@example.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<missing@example.test>"), 550, "5.7.1",
                         "status tempfail")


MESSAGE_SCRIPT = """
local kept
sluice.on("rcpt", function(s)
    kept = s
    assert(os.execute == nil and io == nil and debug == nil)
end)
sluice.on("eom", function(s)
    assert(not pcall(kept.ip, kept), "a kept session object must be dead")
    local n, bytes = 0, 0
    for chunk in s:body_chunks(7) do
        n = n + 1
        bytes = bytes + #chunk
    end
    local names = {}
    for _, h in ipairs(s:headers()) do names[#names + 1] = h.name end
    s:add_header("X-Chunks", n .. " chunks " .. bytes .. " bytes of " .. s:size())
    s:add_header("X-Names", table.concat(names, ","))
    s:add_header("X-Rcpts", table.concat(s:recipients(), ","))
end)
"""


class MessageAccess(LuaTestCase):

    def test_eom_handler_streams_the_message_and_sees_headers_and_recipients(self):
        script = self.write_script("message.lua", MESSAGE_SCRIPT)
        b, port = self.start_lua(script)
        c = self.open_session(port)
        self.assertReply(self.send_message(c), 250)
        data = b.wait_messages(1)[0]["data"]
        size = len(MESSAGE % (b"hello", b"")) - len(b".\r\n")
        chunks = (size + 6) // 7
        self.assertIn(b"X-Chunks: %d chunks %d bytes of %d" % (chunks, size, size), data)
        self.assertIn(b"X-Names: From,To,Subject,X-Sluice-Policy", data)
        self.assertIn(b"X-Rcpts: b@example.test", data)


def verdict_script(text):
    """A policy refusing RCPT with text (so a test can tell scripts apart)."""
    return ("sluice.on('rcpt', function(s)\n"
            "  return sluice.reject(550, '5.7.1', %r)\n"
            "end)\n" % text)


class Reload(LuaTestCase):
    RELOAD_TIMEOUT = 30.0
    CLIENTS = 6
    SEND_SECONDS = 4.0

    def reload(self, pattern):
        s = self.sluice()
        before = len(s.grep(pattern))
        s.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(s.grep(pattern)) > before, self.RELOAD_TIMEOUT,
                   what="log line %r after SIGHUP" % pattern)

    def refusal(self, port):
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        reply = c.cmd("RCPT TO:<b@example.test>")
        c.cmd("QUIT")
        return reply

    def test_reload_swaps_the_script_under_load(self):
        script = self.write_script("policy.lua", verdict_script("first script"))
        _, port = self.start_lua(script)
        seen, errors, stop = [], [], threading.Event()

        def client():
            deadline = time.monotonic() + self.SEND_SECONDS
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    started = time.monotonic()
                    reply = self.refusal(port)
                    seen.append((started, reply.text))
                except Exception as e:  # any failure is the test's failure
                    errors.append(repr(e))
                    return

        threads = [threading.Thread(target=client) for _ in range(self.CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(self.SEND_SECONDS / 3)
        self.write_script("policy.lua", verdict_script("second script"))
        self.reload(r"master: reload done")
        reloaded = time.monotonic()
        for t in threads:
            t.join(self.SEND_SECONDS + 30)
        stop.set()
        self.assertEqual(errors, [])
        self.assertTrue(any("first script" in t for _, t in seen), seen[:3])
        self.assertTrue(any("second script" in t for _, t in seen), seen[-3:])
        # a session that began after the reload was done runs the new script
        late_old = [t for started, t in seen if started > reloaded and "first script" in t]
        self.assertEqual(late_old, [])
        self.assertTrue(all("script" in t for _, t in seen), seen)
        self.assertIn("second script", self.refusal(port).text)

    def test_reload_with_a_syntax_error_keeps_the_old_script(self):
        script = self.write_script("policy.lua", verdict_script("good script"))
        _, port = self.start_lua(script)
        self.write_script("policy.lua", "sluice.on('rcpt', function(s)\n  return\n")
        self.reload(r"master: reload error")
        self.sluice().wait_log(r"reload refused.*policy\.lua:\d+")
        self.assertIn("good script", self.refusal(port).text)
        self.write_script("policy.lua", verdict_script("fixed script"))
        self.reload(r"master: reload done")
        self.assertIn("fixed script", self.refusal(port).text)


if __name__ == "__main__":
    unittest.main()
