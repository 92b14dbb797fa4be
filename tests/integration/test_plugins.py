"""The plugin host: conf.d entries load C plugins whose verdicts, replies,
pending waits, notes, deferred rejections and header changes reach the
client and the backend as DESIGN promises; plugins that do not fit are
refused with a clear message. The plugins are tests/plugins/*.c, built into
<build>/test-plugins; the last test builds sdk/examples out of tree against
an installed SDK."""

import email.parser
import glob
import os
import re
import shutil
import subprocess
import time
import unittest

from sluice_harness import (Backend, Sluice, SluiceTestCase, base_config, free_port, pool,
                            render_config, run_sluice_check, sluice_bin)

BUILD_DIR = os.path.dirname(os.path.abspath(sluice_bin()))
TEST_PLUGIN_DIR = os.path.join(BUILD_DIR, "test-plugins")
SHIPPED_PLUGIN_DIR = os.path.join(BUILD_DIR, "plugins")
SOURCE_DIR = os.environ.get("SLUICE_SOURCE_DIR",
                            os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
ROUTES = (("a.example", "a"),)
BODY = b"From: s@x.example\r\nSubject: plugin test\r\n\r\nhello\r\n"
BUILD_TIMEOUT = 300

HOOKS = ("connect", "helo", "mail", "rcpt", "data", "eom")
VERDICTS = ("continue", "accept", "reject", "tempfail", "disconnect")
# DESIGN's reply table: what each refusing verdict answers at each hook.
REJECT_REPLY = {"connect": (554, "5.7.1"), "helo": (550, "5.7.1"), "mail": (550, "5.7.1"),
                "rcpt": (550, "5.7.1"), "data": (554, "5.7.1"), "eom": (554, "5.7.1")}
TEMPFAIL_REPLY = {h: (451, "4.7.1") for h in HOOKS}
TEMPFAIL_REPLY["connect"] = (421, "4.7.0")
DISCONNECT_REPLY = (421, "4.7.0")


def test_plugin(name):
    return os.path.join(TEST_PLUGIN_DIR, name + ".so")


def write_entry(conf_dir, name, plugin, /, **settings):
    """conf.d/<name>.conf naming plugin (a test plugin's name or a path)."""
    os.makedirs(conf_dir, exist_ok=True)
    path = plugin if os.sep in plugin else test_plugin(plugin)
    with open(os.path.join(conf_dir, name + ".conf"), "w") as f:
        f.write(render_config(dict({"plugin": path}, **settings)))


def headers_of(data):
    return email.parser.BytesParser().parsebytes(data, headersonly=True)


class PluginTestCase(SluiceTestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(test_plugin("verdicts")):
            self.skipTest("test plugins not built in %s" % TEST_PLUGIN_DIR)
        self.conf_dir = os.path.join(self.workdir, "conf.d")

    def entry(self, name, plugin, /, **settings):
        write_entry(self.conf_dir, name, plugin, **settings)

    def config(self, backend_port, **overrides):
        overrides.setdefault("plugin_dir", SHIPPED_PLUGIN_DIR)
        return base_config(self.workdir, free_port(), [pool("a", [backend_port])], ROUTES,
                           **overrides)

    def relay(self, **overrides):
        """A backend and a sluice with the entries written so far."""
        b = self.start_backend("a")
        s, port = self.start_relay([pool("a", [b.port])], ROUTES,
                                   plugin_dir=SHIPPED_PLUGIN_DIR, **overrides)
        return s, port, b

    def send_body(self, c, body=BODY):
        self.assertReply(c.cmd("DATA"), 354)
        c.send(body + b".\r\n")
        return c.read_reply()

    def deliver(self, c, sender, rcpt="user@a.example", body=BODY):
        self.assertReply(c.cmd("MAIL FROM:<%s>" % sender), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 250)
        self.assertReply(self.send_body(c, body), 250)


class ChainVerdictTest(PluginTestCase):
    def test_rejected_sender_gets_plugin_code_and_text_and_backend_sees_nothing(self):
        self.entry("10-reject", "reject_sender", sender="bad@x.example", code=553,
                   esc="5.7.26", text="bad sender, go away")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<bad@x.example>"), 553, "5.7.26", "bad sender, go away")
        self.assertEqual(b.connection_count(), 0)
        self.deliver(c, "good@x.example")
        self.assertEqual(len(b.wait_messages(1)), 1)

    def test_disabled_entry_is_not_loaded_and_does_not_run(self):
        self.entry("10-reject", "reject_sender", sender="bad@x.example", enabled=False)
        self.entry("20-broken", "wrong_abi", enabled=False)
        _, port, b = self.relay()
        c = self.open_session(port)
        self.deliver(c, "bad@x.example")
        self.assertEqual(len(b.wait_messages(1)), 1)

    def test_header_added_at_eom_arrives_at_backend_on_top(self):
        self.entry("10-header", "add_header", name="X-Test-Added", value="by plugin")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.deliver(c, "s@x.example")
        [msg] = b.wait_messages(1)
        self.assertTrue(msg["data"].startswith(b"X-Test-Added: by plugin\r\n"), msg["data"])
        self.assertTrue(msg["data"].endswith(BODY), msg["data"])


class PendingTest(PluginTestCase):
    def test_pending_on_timer_resumes_with_tempfail_after_the_delay(self):
        self.entry("10-slow", "pending_timer", hook="mail", delay="700ms", verdict="tempfail",
                   text="try again later")
        _, port, b = self.relay()
        c = self.open_session(port)
        started = time.monotonic()
        reply = c.cmd("MAIL FROM:<s@x.example>")
        elapsed = time.monotonic() - started
        self.assertReply(reply, 451, "4.7.1", "try again later")
        self.assertGreaterEqual(elapsed, 0.7)
        self.assertEqual(b.connection_count(), 0)

    def test_a_disconnect_hook_resumed_from_its_timer_ends_the_session_cleanly(self):
        # The disconnect hook waits on a timer; its callback resumes the hook,
        # which ends (frees) the session inside the callback: nothing of the
        # session may be touched after that (under ASan: no use after free).
        self.entry("10-slow", "pending_timer", hook="disconnect", delay="50ms",
                   verdict="continue")
        s, port, b = self.relay()
        for _ in range(3):
            c = self.open_session(port)
            self.assertReply(c.cmd("QUIT"), 221)
            c.close()
        s.wait_log(r"pending_timer: timer fired")
        time.sleep(0.5)
        self.assertEqual(s.grep(r"Sanitizer|worker .*(died|exited|signal)"), [])
        c = self.open_session(port)
        self.deliver(c, "s@x.example")
        self.assertEqual(len(b.wait_messages(1)), 1)

    def test_pending_on_timer_resuming_continue_lets_the_message_through(self):
        self.entry("10-slow", "pending_timer", hook="rcpt", delay="200ms", verdict="continue")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.deliver(c, "s@x.example")
        self.assertEqual(len(b.wait_messages(1)), 1)

    def test_commands_written_after_a_timer_resumes_a_hook_leave_in_one_segment(self):
        # The next transaction on an open backend session: the RCPT hook
        # resumes from its timer, and the MAIL and the pipelined RCPT must
        # reach the backend in one write. In two, a server that answers each
        # with a write of its own (smtp-sink, Postfix) meets delayed ACK and
        # Nagle: the RCPT's reply waited 40 ms in the bench, 1 in 70 times.
        self.entry("10-slow", "pending_timer", hook="rcpt", delay="10ms", verdict="continue")
        _, port, b = self.relay()
        c = self.open_session(port)
        for i in range(3):
            self.deliver(c, "s%d@x.example" % i)
        b.wait_messages(3)
        events = [e for e in b.events() if e["ev"] in ("command", "data_end")]
        if events[0].get("segs") is None:
            self.skipTest("no tcpi_data_segs_in on this kernel")
        ends = [i for i, e in enumerate(events) if e["ev"] == "data_end"]
        for end in ends[:-1]:
            rcpt = next(e for e in events[end:] if e.get("line", "").startswith("RCPT"))
            self.assertEqual(rcpt["segs"] - events[end]["segs"], 1, events)

    def test_pending_past_entry_timeout_tempfails_logs_and_ignores_the_late_timer(self):
        self.entry("10-slow", "pending_timer", hook="rcpt", delay="1500ms", verdict="reject",
                   timeout="300ms")
        s, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        started = time.monotonic()
        reply = c.cmd("RCPT TO:<user@a.example>")
        elapsed = time.monotonic() - started
        self.assertReply(reply, 451, "4.7.1")
        self.assertGreaterEqual(elapsed, 0.3)
        self.assertLess(elapsed, 1.4)
        s.wait_log(r"10-slow\b.*(no verdict|timed? ?out)")
        # The timer's own answer would come at 1.5 s: it must never run.
        time.sleep(1.6)
        self.assertEqual(s.grep("timer fired"), [])
        self.assertReply(c.cmd("RSET"), 250)
        self.assertEqual(b.connection_count(), 0)

    def test_pending_past_entry_timeout_with_on_timeout_continue_passes(self):
        self.entry("10-slow", "pending_timer", hook="rcpt", delay="3s", verdict="reject",
                   timeout="200ms", on_timeout="continue")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.deliver(c, "s@x.example")
        self.assertEqual(len(b.wait_messages(1)), 1)


class NotesTest(PluginTestCase):
    def test_notes_set_by_one_entry_are_read_by_the_next(self):
        self.entry("10-writer", "note_writer", conn_value="from-connect", int_value=7,
                   txn_value="from-mail", txn_sender="first@x.example")
        self.entry("20-reader", "note_reader")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.deliver(c, "first@x.example")
        self.deliver(c, "second@x.example")
        first, second = b.wait_messages(2)
        h1, h2 = headers_of(first["data"]), headers_of(second["data"])
        self.assertEqual(h1["X-Note-Conn"], "from-connect")
        self.assertEqual(h1["X-Note-Int"], "7")
        self.assertEqual(h1["X-Note-Txn"], "from-mail")
        # Connection notes live on; the transaction note ended with the first message.
        self.assertEqual(h2["X-Note-Conn"], "from-connect")
        self.assertEqual(h2["X-Note-Txn"], "none")

    def test_transaction_note_can_make_a_later_entry_reject(self):
        self.entry("10-writer", "note_writer", txn_value="flagged",
                   txn_sender="spammer@x.example")
        self.entry("20-reader", "note_reader", reject_txn="flagged")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<spammer@x.example>"), 550, "5.7.1",
                         "note said flagged")
        self.deliver(c, "other@x.example")
        self.assertEqual(len(b.wait_messages(1)), 1)


class DeferredRejectionTest(PluginTestCase):
    def test_deferred_rejection_refuses_rcpt_but_postmaster_and_accepted_rcpt_pass(self):
        self.entry("10-defer", "defer_reject", text="you are listed")
        self.entry("20-allow", "allow_rcpt", rcpt="vip@a.example")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<user@a.example>"), 550, "5.7.1", "you are listed")
        self.assertReply(c.cmd("RCPT TO:<postmaster@a.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<vip@a.example>"), 250)
        # The accept cleared the mark for vip only.
        self.assertReply(c.cmd("RCPT TO:<other@a.example>"), 550, "5.7.1")
        self.assertReply(self.send_body(c), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["postmaster@a.example", "vip@a.example"])

    def test_deferred_rejection_at_data_lets_rcpt_pass_and_refuses_data(self):
        self.entry("10-defer", "defer_reject", when="data")
        _, port, b = self.relay()
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<user@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 550, "5.7.1")
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(b.message_count(), 0)


class RefusedPluginTest(PluginTestCase):
    """A plugin that does not fit stops `sluice -t` and a start, naming why."""

    def refused_both_ways(self, plugin):
        self.entry("10-entry", plugin)
        text = self.config(free_port())
        code, output = run_sluice_check(self.workdir, text)
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("configuration ok", output)
        start_code, start_output = run_sluice_check(self.workdir, text, check_only=False)
        self.assertNotEqual(start_code, 0, start_output)
        return output, start_output

    def test_wrong_abi_major_refused_naming_file_and_versions(self):
        for output in self.refused_both_ways("wrong_abi"):
            self.assertIn("wrong_abi.so", output)
            self.assertRegex(output, r"\b2\.0\b")
            self.assertIn("provides %s" % sdk_abi_version(), output)

    def test_missing_descriptor_refused_naming_file_and_symbol(self):
        for output in self.refused_both_ways("no_symbol"):
            self.assertIn("no_symbol.so", output)
            self.assertIn("sluice_plugin", output)

    def test_failing_init_refused_with_its_message_and_entry(self):
        for output in self.refused_both_ways("failing_init"):
            self.assertIn("failing_init refuses to start on purpose", output)
            self.assertIn("10-entry", output)

    def test_missing_plugin_file_refused_naming_it(self):
        for output in self.refused_both_ways(os.path.join(self.workdir, "nosuch.so")):
            self.assertIn("nosuch.so", output)

    def test_disabled_misfit_passes_the_check(self):
        self.entry("10-entry", "wrong_abi", enabled=False)
        code, output = run_sluice_check(self.workdir, self.config(free_port()))
        self.assertEqual(code, 0, output)
        self.assertIn("configuration ok", output)


class VerdictMatrixTest(PluginTestCase):
    """Each verdict at each hook, with the reply table's default replies."""

    def walk(self, port, hook, verdict):
        """Runs a transaction up to the hook; returns (reply at the hook,
        client) or (None, client) when the whole message went through."""
        c = self.connect(port)
        steps = [("connect", lambda: c.read_reply(), 220),
                 ("helo", lambda: c.cmd("EHLO client.test"), 250),
                 ("mail", lambda: c.cmd("MAIL FROM:<s@x.example>"), 250),
                 ("rcpt", lambda: c.cmd("RCPT TO:<user@a.example>"), 250),
                 ("data", lambda: c.cmd("DATA"), 354),
                 ("eom", lambda: (c.send(BODY + b".\r\n"), c.read_reply())[1], 250)]
        for name, step, normal in steps:
            reply = step()
            if name == hook and verdict not in ("continue", "accept"):
                return reply, c
            self.assertReply(reply, normal)
        return None, c

    def check_cell(self, hook, verdict):
        cell = os.path.join(self.workdir, "%s-%s" % (hook, verdict))
        conf_dir = os.path.join(cell, "conf.d")
        write_entry(conf_dir, "10-verdict", "verdicts", hook=hook, verdict=verdict)
        b = Backend(cell, "a")
        self.backends.append(b)
        port = free_port()
        s = Sluice(cell, base_config(cell, port, [pool("a", [b.port])], ROUTES,
                                     plugin_dir=SHIPPED_PLUGIN_DIR))
        self.sluices.append(s)
        reply, c = self.walk(port, hook, verdict)
        if verdict in ("continue", "accept"):
            self.assertIsNone(reply)
            self.assertEqual(len(b.wait_messages(1)), 1)
        elif verdict == "disconnect" or (verdict == "tempfail" and hook == "connect"):
            code, esc = DISCONNECT_REPLY if verdict == "disconnect" else TEMPFAIL_REPLY[hook]
            self.assertReply(reply, code, esc)
            self.assertTrue(c.wait_closed(), "session not closed after %r" % (reply,))
        else:
            code, esc = (REJECT_REPLY if verdict == "reject" else TEMPFAIL_REPLY)[hook]
            self.assertReply(reply, code, esc)
            if hook == "connect":
                self.assertReply(c.cmd("EHLO client.test"), 503, "5.5.1")
            self.assertReply(c.cmd("QUIT"), 221)
        if verdict not in ("continue", "accept"):
            self.assertEqual(b.message_count(), 0)
            if hook in ("connect", "helo", "mail", "rcpt"):
                self.assertEqual(b.connection_count(), 0)
        c.close()
        s.stop()
        b.close()

    def check_hook(self, hook):
        for verdict in VERDICTS:
            with self.subTest(hook=hook, verdict=verdict):
                self.check_cell(hook, verdict)

    def test_verdicts_at_connect(self):
        self.check_hook("connect")

    def test_verdicts_at_helo(self):
        self.check_hook("helo")

    def test_verdicts_at_mail(self):
        self.check_hook("mail")

    def test_verdicts_at_rcpt(self):
        self.check_hook("rcpt")

    def test_verdicts_at_data(self):
        self.check_hook("data")

    def test_verdicts_at_eom(self):
        self.check_hook("eom")


def run(args, timeout=BUILD_TIMEOUT, env=None):
    done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout, env=env)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def sdk_abi_version():
    """major.minor as sdk/include/sluice/plugin.h defines them."""
    with open(os.path.join(SOURCE_DIR, "sdk", "include", "sluice", "plugin.h")) as f:
        text = f.read()
    major = re.search(r"^#define SLUICE_ABI_MAJOR (\d+)", text, re.M).group(1)
    minor = re.search(r"^#define SLUICE_ABI_MINOR (\d+)", text, re.M).group(1)
    return "%s.%s" % (major, minor)


class ExamplePluginTest(PluginTestCase):
    """sdk/examples built the way a third party would: against an installed
    SDK found through pkg-config, enabled by the conf.d file it ships."""

    def install_sdk(self):
        if not os.path.exists(os.path.join(BUILD_DIR, "CMakeCache.txt")):
            self.skipTest("%s is not a CMake build directory" % BUILD_DIR)
        if shutil.which("cmake") is None or shutil.which("pkg-config") is None:
            self.skipTest("cmake or pkg-config missing")
        prefix = os.path.join(self.workdir, "prefix")
        code, output = run(["cmake", "--install", BUILD_DIR, "--prefix", prefix])
        self.assertEqual(code, 0, output)
        pcs = glob.glob(os.path.join(prefix, "**", "sluice-plugin.pc"), recursive=True)
        self.assertEqual(len(pcs), 1, output)
        self.assertTrue(os.path.exists(os.path.join(prefix, "include", "sluice", "sluice.h")))
        return prefix, os.path.dirname(pcs[0])

    def pkg_config(self, env, *args):
        code, output = run(["pkg-config"] + list(args) + ["sluice-plugin"], env=env)
        self.assertEqual(code, 0, output)
        return output.strip()

    def test_example_built_out_of_tree_against_installed_sdk_rejects_and_adds_header(self):
        prefix, pc_dir = self.install_sdk()
        env = dict(os.environ, PKG_CONFIG_PATH=pc_dir)
        self.assertEqual(self.pkg_config(env, "--variable=abi"), sdk_abi_version())
        plugindir = self.pkg_config(env, "--variable=plugindir")
        self.assertTrue(plugindir.startswith(prefix), plugindir)
        self.assertIn("-I" + os.path.join(prefix, "include"), self.pkg_config(env, "--cflags"))

        example_src = os.path.join(SOURCE_DIR, "sdk", "examples")
        example_build = os.path.join(self.workdir, "example-build")
        for step in (["cmake", "-S", example_src, "-B", example_build],
                     ["cmake", "--build", example_build],
                     ["cmake", "--install", example_build]):
            code, output = run(step, env=env)
            self.assertEqual(code, 0, "%s:\n%s" % (" ".join(step), output))
        self.assertTrue(os.path.exists(os.path.join(plugindir, "sender_domain_policy.so")))

        os.makedirs(self.conf_dir, exist_ok=True)
        shutil.copy(os.path.join(example_src, "50-example.conf"), self.conf_dir)
        b = self.start_backend("a")
        _, port = self.start_relay([pool("a", [b.port])], ROUTES, plugin_dir=plugindir)
        c = self.open_session(port)
        reply = c.cmd("MAIL FROM:<someone@spam.example>")
        self.assertReply(reply, 550, "5.7.1", "spam.example")
        self.deliver(c, "someone@good.example")
        [msg] = b.wait_messages(1)
        self.assertEqual(headers_of(msg["data"])["X-Example-Checked"], "yes")


if __name__ == "__main__":
    unittest.main()
