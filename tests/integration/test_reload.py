"""Configuration reload (SIGHUP to the master): a new generation serves new
sessions while sessions in flight finish on theirs, nothing is lost or
doubled under load, a bad configuration is refused and the old one keeps
serving, a route table change applies to new sessions only, and an old
generation is retired once its last session let go. Every test also checks
that the sanitizers reported nothing in sluice's log."""

import email.parser
import os
import random
import re
import signal
import threading
import time

from sluice_harness import (RawClient, SluiceTestCase, base_config, free_port, pool,
                            sluice_bin, wait_until)

TEST_PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(sluice_bin())), "test-plugins")
SHIPPED_PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(sluice_bin())), "plugins")
RCPT = "user@a.example"
ROUTES = (("a.example", "a"),)
RELOAD_TIMEOUT = 15.0
SANITIZER_PATTERNS = (r"ERROR: AddressSanitizer", r"ERROR: LeakSanitizer", r"runtime error")

LOAD_SECONDS = 6.0
LOAD_CLIENTS = 20
CLIENT_MAX_SESSIONS = 500
# X-Gen value of each configuration epoch; None: the entry is switched off.
EPOCH_HEADERS = ("0", None, "2", "3", None)


def message(mid, subject="reload"):
    return ("From: c@x.example\r\nTo: %s\r\nMessage-ID: %s\r\nSubject: %s\r\n\r\nbody\r\n"
            % (RCPT, mid, subject)).encode()


def headers_of(data):
    return email.parser.BytesParser().parsebytes(data, headersonly=True)


class ReloadTestCase(SluiceTestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(os.path.join(TEST_PLUGIN_DIR, "add_header.so")):
            self.skipTest("test plugins not built in %s" % TEST_PLUGIN_DIR)
        self.conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(self.conf_dir, exist_ok=True)
        self.reloads_done = 0

    def tearDown(self):
        # The log is complete only once sluice stopped (the worker's exit).
        for s in self.sluices:
            s.stop()
        for s in self.sluices:
            for pattern in SANITIZER_PATTERNS:
                self.assertEqual(s.grep(pattern), [], "sanitizer report in sluice's log")
        super().tearDown()

    def gen_entry(self, value, name="50-gen"):
        """conf.d entry adding "X-Gen: value"; None switches it off."""
        path = os.path.join(self.conf_dir, name + ".conf")
        with open(path, "w") as f:
            f.write('plugin = "%s";\nname = "X-Gen";\nvalue = "%s";\nenabled = %s;\n'
                    % (os.path.join(TEST_PLUGIN_DIR, "add_header.so"), value or "off",
                       "true" if value is not None else "false"))

    def config(self, pools, routes=ROUTES, **overrides):
        overrides.setdefault("plugin_dir", SHIPPED_PLUGIN_DIR)
        self.port = free_port()
        return base_config(self.workdir, self.port, pools, routes, **overrides)

    def reload(self, s):
        """SIGHUP to the master; waits for its "reload done"."""
        self.reloads_done += 1
        want = self.reloads_done
        s.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(s.grep(r"master: reload done")) >= want or s.grep("refused"),
                   RELOAD_TIMEOUT, what="reload %d to be done" % want)
        self.assertEqual(s.grep(r"refused|master: reload error"), [])
        self.assertEqual(len(s.grep(r"master: reload done")), want)

    def send_message(self, c, mid, subject="reload"):
        """One transaction on an open session; the reply to the end of data."""
        self.assertReply(c.cmd("MAIL FROM:<c@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message(mid, subject) + b".\r\n")
        return c.read_reply()

    def relay_one(self, mid, subject="reload"):
        c = self.open_session(self.port)
        self.assertReply(self.send_message(c, mid, subject), 250)
        c.cmd("QUIT")
        c.close()

    def delivered(self, backend, mid, timeout=10.0):
        def find():
            for m in backend.messages():
                if headers_of(m["data"])["Message-ID"] == mid:
                    return m
            return None
        return headers_of(wait_until(find, timeout, what="%s at %s" % (mid, backend.name))["data"])


class LoadClient(threading.Thread):
    """Sends messages for a while over new and reused sessions, recording the
    moments each session was opened and every reply to its end of data."""

    def __init__(self, index, port, deadline):
        super().__init__(daemon=True)
        self.index, self.port, self.deadline = index, port, deadline
        self.rng = random.Random(index)
        self.sessions = []  # {"connect": t, "banner": t, "messages": [(mid, reply)]}
        self.problems = []  # non-250 replies and exceptions

    def run(self):
        for n in range(CLIENT_MAX_SESSIONS):
            if time.monotonic() >= self.deadline:
                return
            try:
                self.one_session(n)
            except Exception as e:  # reported by the test, with its context
                self.problems.append("client %d session %d: %r" % (self.index, n, e))
                return

    def step(self, c, line, want):
        r = c.cmd(line)
        if r.code != want:
            self.problems.append("client %d: %s -> %r" % (self.index, line, r))
        return r.code == want

    def one_session(self, n):
        sess = {"connect": time.monotonic(), "messages": []}
        c = RawClient(self.port, timeout=20.0)
        try:
            banner = c.read_reply()
            sess["banner"] = time.monotonic()
            self.sessions.append(sess)
            if banner.code != 220:
                self.problems.append("client %d: banner %r" % (self.index, banner))
                return
            if not self.step(c, "EHLO c%d.test" % self.index, 250):
                return
            for i in range(self.rng.randint(1, 4)):
                mid = "<%d.%d.%d@reload.test>" % (self.index, n, i)
                if not (self.step(c, "MAIL FROM:<c%d@x.example>" % self.index, 250)
                        and self.step(c, "RCPT TO:<%s>" % RCPT, 250)
                        and self.step(c, "DATA", 354)):
                    return
                c.send(message(mid) + b".\r\n")
                r = c.read_reply()
                sess["messages"].append((mid, r.code))
                if r.code != 250:
                    self.problems.append("client %d: end of data of %s -> %r"
                                         % (self.index, mid, r))
                if time.monotonic() >= self.deadline:
                    break
                time.sleep(self.rng.uniform(0.0, 0.05))
            self.step(c, "QUIT", 221)
        finally:
            c.close()


class ReloadUnderLoadTest(ReloadTestCase):
    def test_reloads_under_load_lose_nothing_and_new_sessions_get_the_new_chain(self):
        b = self.start_backend("a")
        self.gen_entry(EPOCH_HEADERS[0])
        # Per-thread plugin state, built and retired with every generation.
        with open(os.path.join(self.conf_dir, "20-dnsbl.conf"), "w") as f:
            f.write('plugin = "dnsbl";\nzones = ( { zone = "load.test"; } );\n'
                    'health_interval = "0";\n')
        s = self.start_sluice(self.config([pool("a", [b.port], max_connections=40)]))
        start = time.monotonic()
        clients = [LoadClient(i, self.port, start + LOAD_SECONDS) for i in range(LOAD_CLIENTS)]
        for c in clients:
            c.start()
        # Reload moments: random, but apart enough for sessions to start in each epoch.
        nreloads = len(EPOCH_HEADERS) - 1
        rng = random.Random(1234)
        moments = [0.5 + k * 1.2 + rng.uniform(0.0, 0.6) for k in range(nreloads)]
        hups, dones = [], []
        for k, moment in enumerate(moments, start=1):
            time.sleep(max(0.0, start + moment - time.monotonic()))
            self.gen_entry(EPOCH_HEADERS[k])
            hups.append(time.monotonic())
            self.reload(s)
            dones.append(time.monotonic())
        for c in clients:
            c.join(LOAD_SECONDS + 30.0)
            self.assertFalse(c.is_alive(), "client %d still running" % c.index)

        problems = [p for c in clients for p in c.problems]
        self.assertEqual(problems, [], "a client got something else than success")
        sessions = [sess for c in clients for sess in c.sessions]
        accepted = [mid for sess in sessions for mid, code in sess["messages"] if code == 250]
        self.assertGreater(len(accepted), 100, "too little load to mean anything")

        got = {}
        for m in b.wait_messages(len(accepted), timeout=15.0):
            h = headers_of(m["data"])
            got.setdefault(h["Message-ID"], []).append(h.get_all("X-Gen") or [])
        not_once = {mid: len(got.get(mid, [])) for mid in accepted if len(got.get(mid, [])) != 1}
        self.assertEqual(not_once, {}, "messages not delivered exactly once")
        self.assertEqual(sorted(got), sorted(accepted), "the backend got unknown messages")

        strict = [0] * len(EPOCH_HEADERS)
        for sess in sessions:
            headers = {tuple(got[mid][0]) for mid, code in sess["messages"]}
            if not headers:
                continue
            self.assertEqual(len(headers), 1, "one session saw two configurations: %r" % sess)
            [seen] = headers
            possible = self.epochs_possible(sess, hups, dones)
            allowed = {tuple([EPOCH_HEADERS[k]]) if EPOCH_HEADERS[k] else () for k in possible}
            self.assertIn(seen, allowed, "session opened at %.3f..%.3f (reloads %r..%r)"
                          % (sess["connect"], sess["banner"], hups, dones))
            if len(possible) == 1:
                strict[possible[0]] += 1
        self.assertTrue(all(n > 0 for n in strict[1:]),
                        "every new configuration served sessions opened after it: %r" % strict)
        # Every session is closed: every generation but the current one let go.
        for gen in range(1, len(EPOCH_HEADERS)):
            s.wait_log(r"configuration generation %d retired" % gen, 10.0)
        self.assertEqual(s.grep(r"configuration generation %d retired" % len(EPOCH_HEADERS)), [])

    @staticmethod
    def epochs_possible(sess, hups, dones):
        """The epochs that may have been current when the session was
        accepted: epoch k is current from some moment in (hups[k-1],
        dones[k-1]) until some moment in (hups[k], dones[k])."""
        out = []
        for k in range(len(hups) + 1):
            begins = hups[k - 1] if k > 0 else 0.0
            ends = dones[k] if k < len(dones) else float("inf")
            if begins < sess["banner"] and sess["connect"] < ends:
                out.append(k)
        return out


class BadReloadTest(ReloadTestCase):
    def test_bad_configuration_is_refused_old_one_serves_and_a_later_good_reload_works(self):
        b = self.start_backend("a")
        self.gen_entry("old")
        s = self.start_sluice(self.config([pool("a", [b.port])]))
        with open(s.conf_path) as f:
            good_conf = f.read()

        with open(s.conf_path, "a") as f:
            f.write("limits = {\n    max_recipients = ;\n};\n")
        s.proc.send_signal(signal.SIGHUP)
        [line] = s.wait_log(r"master: reload refused", RELOAD_TIMEOUT)
        self.assertRegex(line, re.escape(s.conf_path) + r":\d+")
        self.relay_one("<syntax@reload.test>")
        self.assertEqual(self.delivered(b, "<syntax@reload.test>").get_all("X-Gen"), ["old"])

        with open(s.conf_path, "w") as f:
            f.write(good_conf)
        with open(os.path.join(self.conf_dir, "60-fail.conf"), "w") as f:
            f.write('plugin = "%s";\n' % os.path.join(TEST_PLUGIN_DIR, "failing_init.so"))
        s.proc.send_signal(signal.SIGHUP)
        [line] = s.wait_log(r"master: reload error", RELOAD_TIMEOUT)
        self.assertIn("failing_init refuses to start on purpose", line)
        [line] = s.grep(r"reload refused, the running configuration stays: .*60-fail\.conf")
        self.assertIn("failing_init refuses to start on purpose", line)
        self.relay_one("<init@reload.test>")
        self.assertEqual(self.delivered(b, "<init@reload.test>").get_all("X-Gen"), ["old"])

        os.unlink(os.path.join(self.conf_dir, "60-fail.conf"))
        self.gen_entry("new")
        self.reloads_done = 0
        s.proc.send_signal(signal.SIGHUP)
        s.wait_log(r"master: reload done", RELOAD_TIMEOUT)
        self.relay_one("<good@reload.test>")
        self.assertEqual(self.delivered(b, "<good@reload.test>").get_all("X-Gen"), ["new"])
        self.assertEqual(len(s.grep(r"master: reload refused|master: reload error")), 2)


    def test_a_sighup_sent_to_the_worker_itself_does_not_answer_the_masters_next_reload(self):
        # `systemctl kill -s HUP` or `pkill -HUP sluice` signal the worker too:
        # a report the master did not ask for must not be taken for the answer
        # to its next reload, or it adopts a configuration the worker refused
        # and a restarted worker starts with it.
        b = self.start_backend("a")
        self.gen_entry("old")
        s = self.start_sluice(self.config([pool("a", [b.port])]))
        worker = s.worker_pid()
        os.kill(worker, signal.SIGHUP)
        time.sleep(1.0)  # whatever the worker does with it, it has done it
        with open(os.path.join(self.conf_dir, "60-fail.conf"), "w") as f:
            f.write('plugin = "%s";\n' % os.path.join(TEST_PLUGIN_DIR, "failing_init.so"))
        s.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: s.grep(r"master: reload (error|done)|did not report"),
                   RELOAD_TIMEOUT, what="the master's reload outcome")
        self.assertEqual(s.grep(r"master: reload done"), [])
        [line] = s.wait_log(r"master: reload error", RELOAD_TIMEOUT)
        self.assertIn("failing_init refuses to start on purpose", line)
        # the restarted worker starts with what is serving, not the refused files
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: s.grep(r"master: worker restarted|did not start"), RELOAD_TIMEOUT,
                   what="the worker's restart")
        self.assertEqual(s.grep(r"restarted worker did not start"), [])
        self.relay_one("<restart@reload.test>")
        self.assertEqual(self.delivered(b, "<restart@reload.test>").get_all("X-Gen"), ["old"])


class RouteTableReloadTest(ReloadTestCase):
    def test_changed_route_applies_to_new_sessions_while_an_open_session_keeps_its_route(self):
        a = self.start_backend("a")
        b = self.start_backend("b")
        table = os.path.join(self.workdir, "routes.txt")
        with open(table, "w") as f:
            f.write("a.example a\n")
        s = self.start_sluice(self.config([pool("a", [a.port]), pool("b", [b.port])],
                                          routes=(), route_table=table))
        old = self.open_session(self.port)

        with open(table, "w") as f:
            f.write("# moved\na.example b\n")
        self.reload(s)
        self.relay_one("<new-session@reload.test>")
        self.delivered(b, "<new-session@reload.test>")

        self.assertReply(self.send_message(old, "<old-session@reload.test>"), 250)
        self.delivered(a, "<old-session@reload.test>")
        old.cmd("QUIT")
        self.assertEqual(a.message_count(), 1)
        self.assertEqual(b.message_count(), 1)


class RetireTest(ReloadTestCase):
    def test_old_generation_is_retired_once_its_last_session_closed(self):
        b = self.start_backend("a")
        self.gen_entry("first")
        s = self.start_sluice(self.config([pool("a", [b.port])]))
        old = self.open_session(self.port)
        self.assertReply(self.send_message(old, "<before@reload.test>"), 250)

        self.gen_entry("second")
        self.reload(s)
        s.wait_log(r"configuration generation 2 serves new sessions", RELOAD_TIMEOUT)
        self.relay_one("<after@reload.test>")
        self.assertEqual(self.delivered(b, "<after@reload.test>").get_all("X-Gen"), ["second"])
        # Still held by the open session (and its backend connection).
        self.assertReply(self.send_message(old, "<held@reload.test>"), 250)
        self.assertEqual(self.delivered(b, "<held@reload.test>").get_all("X-Gen"), ["first"])
        self.assertEqual(s.grep(r"configuration generation 1 retired"), [])

        self.assertReply(old.cmd("QUIT"), 221)
        self.assertTrue(old.wait_closed(5.0))
        s.wait_log(r"configuration generation 1 retired", 10.0)
        self.assertEqual(s.grep(r"configuration generation 2 retired"), [])
        self.relay_one("<later@reload.test>")
        self.assertEqual(self.delivered(b, "<later@reload.test>").get_all("X-Gen"), ["second"])


class LimitsReloadTest(ReloadTestCase):
    def test_lowered_per_address_limit_applies_to_connections_after_the_reload(self):
        b = self.start_backend("a")
        s = self.start_sluice(self.config([pool("a", [b.port])],
                                          connections={"per_address": 5}))
        first = self.open_session(self.port)
        second = self.open_session(self.port)

        with open(s.conf_path) as f:
            text = f.read()
        with open(s.conf_path, "w") as f:
            f.write(text.replace("per_address = 5;", "per_address = 2;"))
        self.reload(s)
        third = self.connect(self.port)
        reply = third.read_reply()
        self.assertEqual(reply.code // 100, 4, reply)
        self.assertTrue(third.wait_closed(5.0))
        s.wait_log(r"connection from 127\.0\.0\.1 refused", 5.0)
        # The sessions admitted before the reload keep working.
        self.assertReply(self.send_message(first, "<limits@reload.test>"), 250)
        self.delivered(b, "<limits@reload.test>")
        first.cmd("QUIT")
        second.cmd("QUIT")

    def test_sessions_counted_before_an_allowlist_reload_are_counted_out_when_they_end(self):
        b = self.start_backend("a")
        s = self.start_sluice(self.config([pool("a", [b.port])],
                                          connections={"max_sessions": 2, "per_address": 0,
                                                       "per_network": 0, "rate": 0}))
        held = [self.open_session(self.port) for _ in range(2)]
        with open(s.conf_path) as f:
            text = f.read()
        allowed = text.replace("max_sessions = 2;",
                               'max_sessions = 2;\n    allowlist = [ "127.0.0.1" ];')
        self.assertNotEqual(allowed, text)
        with open(s.conf_path, "w") as f:
            f.write(allowed)
        self.reload(s)
        # The two sessions were counted in before the reload; they end after it.
        for c in held:
            self.assertReply(c.cmd("QUIT"), 221)
            c.close()
        time.sleep(0.5)
        with open(s.conf_path, "w") as f:
            f.write(text)
        self.reload(s)
        # No session is left: a client off the allowlist is admitted.
        deadline = time.monotonic() + 5.0
        while True:
            c = self.connect(self.port)
            reply = c.read_reply()
            if reply.code == 220 or time.monotonic() > deadline:
                break
            c.close()
            time.sleep(0.2)
        self.assertEqual(reply.code, 220, "%r (%d refusals)" % (reply, len(s.grep(r"refused: total"))))
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(self.send_message(c, "<allowlist@reload.test>"), 250)
        c.cmd("QUIT")


class ReloadLifecycleTest(ReloadTestCase):
    def dnsbl_entry(self, zone):
        """A plugin with per-thread state (thread_init / thread_fini)."""
        with open(os.path.join(self.conf_dir, "20-dnsbl.conf"), "w") as f:
            f.write('plugin = "dnsbl";\nzones = ( { zone = "%s"; } );\n'
                    'health_interval = "0";\n' % zone)

    def test_burst_of_sighups_ends_on_the_last_configuration_and_later_reloads_report(self):
        b = self.start_backend("a")
        self.gen_entry("v0")
        self.dnsbl_entry("zero.test")
        s = self.start_sluice(self.config([pool("a", [b.port])]))
        self.gen_entry("burst")
        self.dnsbl_entry("burst.test")
        for _ in range(5):
            s.proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        s.wait_log(r"master: reload done", RELOAD_TIMEOUT)
        # Coalesced SIGHUPs: wait until every reload the master started has ended.
        wait_until(lambda: len(s.grep(r"serves new sessions")) ==
                   len(s.grep(r"master: reload done")), RELOAD_TIMEOUT, what="reloads to end")
        time.sleep(0.3)
        self.relay_one("<burst@reload.test>")
        self.assertEqual(self.delivered(b, "<burst@reload.test>").get_all("X-Gen"), ["burst"])

        done = len(s.grep(r"master: reload done"))
        self.gen_entry("after")
        self.reloads_done = done
        self.reload(s)
        self.relay_one("<after@reload.test>")
        self.assertEqual(self.delivered(b, "<after@reload.test>").get_all("X-Gen"), ["after"])
        self.assertEqual(s.grep(r"refused|reload error|did not report"), [])

    def test_stop_while_sessions_hold_old_generations_exits_cleanly(self):
        b = self.start_backend("a")
        self.gen_entry("one")
        self.dnsbl_entry("one.test")
        s = self.start_sluice(self.config([pool("a", [b.port])]))
        on_first = self.open_session(self.port)
        self.assertReply(self.send_message(on_first, "<first@reload.test>"), 250)

        self.gen_entry("two")
        self.dnsbl_entry("two.test")
        self.reload(s)
        in_data = self.open_session(self.port)
        self.assertReply(in_data.cmd("MAIL FROM:<c@x.example>"), 250)
        self.assertReply(in_data.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(in_data.cmd("DATA"), 354)
        in_data.send(b"Subject: half\r\n\r\nhalf a message")

        self.gen_entry("three")
        self.reload(s)
        self.relay_one("<third@reload.test>")
        self.assertEqual(self.delivered(b, "<third@reload.test>").get_all("X-Gen"), ["three"])
        self.assertEqual(s.grep(r"configuration generation [12] retired"), [])

        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(10.0)
        self.assertEqual(s.proc.returncode, 0, s.log_tail())
        self.assertTrue(on_first.wait_closed(5.0))
        self.assertTrue(in_data.wait_closed(5.0))
        self.assertEqual(b.message_count(), 2, "the half message must not be delivered")

    def test_changed_thread_count_is_warned_about_and_the_rest_reloads(self):
        b = self.start_backend("a")
        self.gen_entry("before")
        s = self.start_sluice(self.config([pool("a", [b.port])]))
        with open(s.conf_path) as f:
            text = f.read()
        self.assertIn("threads = 2;", text)
        with open(s.conf_path, "w") as f:
            f.write(text.replace("threads = 2;", "threads = 3;"))
        self.gen_entry("after")
        self.reload(s)
        s.wait_log(r"reload: 'threads' changed: it applies only after a restart", 5.0)
        for i in range(4):  # new sessions land on both loop threads
            self.relay_one("<threads-%d@reload.test>" % i)
            self.assertEqual(self.delivered(b, "<threads-%d@reload.test>" % i).get_all("X-Gen"),
                             ["after"])

    def test_session_pending_in_a_plugin_during_reload_resumes_on_its_generation(self):
        b = self.start_backend("a")
        self.gen_entry("old")
        with open(os.path.join(self.conf_dir, "30-slow.conf"), "w") as f:
            f.write('plugin = "%s";\nhook = "rcpt";\ndelay = "1500ms";\nverdict = "continue";\n'
                    % os.path.join(TEST_PLUGIN_DIR, "pending_timer.so"))
        s = self.start_sluice(self.config([pool("a", [b.port])]))
        slow = self.open_session(self.port)
        self.assertReply(slow.cmd("MAIL FROM:<c@x.example>"), 250)
        slow.send(b"RCPT TO:<%s>\r\n" % RCPT.encode())  # pending on the timer now

        os.unlink(os.path.join(self.conf_dir, "30-slow.conf"))
        self.gen_entry("new")
        self.reload(s)
        started = time.monotonic()
        self.relay_one("<quick@reload.test>")
        self.assertLess(time.monotonic() - started, 1.2, "the new chain has no pending entry")
        self.assertEqual(self.delivered(b, "<quick@reload.test>").get_all("X-Gen"), ["new"])

        self.assertReply(slow.read_reply(), 250)
        self.assertReply(slow.cmd("DATA"), 354)
        slow.send(message("<slow@reload.test>") + b".\r\n")
        self.assertReply(slow.read_reply(), 250)
        self.assertEqual(self.delivered(b, "<slow@reload.test>").get_all("X-Gen"), ["old"])
        self.assertReply(slow.cmd("QUIT"), 221)
        s.wait_log(r"configuration generation 1 retired", 10.0)

    def test_stop_while_a_session_of_an_old_generation_is_pending_exits_cleanly(self):
        self.start_backend("a")
        with open(os.path.join(self.conf_dir, "30-slow.conf"), "w") as f:
            f.write('plugin = "%s";\nhook = "mail";\ndelay = "5s";\nverdict = "continue";\n'
                    % os.path.join(TEST_PLUGIN_DIR, "pending_timer.so"))
        s = self.start_sluice(self.config([pool("a", [self.backends[0].port])]))
        slow = self.open_session(self.port)
        slow.send(b"MAIL FROM:<c@x.example>\r\n")
        self.gen_entry("new")
        self.reload(s)
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(10.0)
        self.assertEqual(s.proc.returncode, 0, s.log_tail())
        self.assertTrue(slow.wait_closed(5.0))
