"""sluice-check runs the configured chain for one scripted session with no
listener and no backend, and answers what the daemon answers."""

import os
import re
import smtplib
import subprocess
import unittest

from sluice_harness import SluiceTestCase, base_config, free_port, pool, render_config, sluice_bin

BUILD_DIR = os.path.dirname(os.path.abspath(sluice_bin()))
CHECK_BIN = os.path.join(BUILD_DIR, "sluice-check")
TEST_PLUGIN_DIR = os.path.join(BUILD_DIR, "test-plugins")
CHECK_TIMEOUT = 60
MESSAGE = b"From: s@x.example\r\nSubject: check\r\n\r\nhello\r\n.dot line\r\n"


class SluiceCheckTest(SluiceTestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(CHECK_BIN) or not os.path.isdir(TEST_PLUGIN_DIR):
            self.skipTest("sluice-check or the test plugins are not built")
        self.conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(self.conf_dir, exist_ok=True)
        self.entry("10-reject-sender", "reject_sender", sender="bad@x.example", code=550,
                   esc="5.7.1", text="sender refused by policy")
        self.entry("20-tag", "add_header", name="X-Checked", value="yes")
        self.message = os.path.join(self.workdir, "message.eml")
        with open(self.message, "wb") as f:
            f.write(MESSAGE)

    def entry(self, name, plugin, /, **settings):
        path = os.path.join(TEST_PLUGIN_DIR, plugin + ".so")
        with open(os.path.join(self.conf_dir, name + ".conf"), "w") as f:
            f.write(render_config(dict({"plugin": path}, **settings)))

    def config(self, backend_port):
        return base_config(self.workdir, free_port(), [pool("a", [backend_port])],
                           (("a.example", "a"),))

    def check(self, conf_path, sender, rcpts, message=True):
        args = [CHECK_BIN, "-c", conf_path, "--client", "127.0.0.1", "--helo", "client.test",
                "--from", sender]
        for r in rcpts:
            args += ["--rcpt", r]
        if message:
            args += ["--message", self.message]
        return subprocess.run(args, capture_output=True, timeout=CHECK_TIMEOUT,
                              stdin=subprocess.DEVNULL)

    def test_refused_sender_gives_the_daemons_reply_and_names_the_entry(self):
        backend = self.start_backend("a")
        s = self.start_sluice(self.config(backend.port))
        out = self.check(s.conf_path, "bad@x.example", ["u@a.example"], message=False)
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 1, text + out.stderr.decode())
        self.assertRegex(text, r"mail\s+10-reject-sender\s+reject: sender refused by policy")
        check_reply = re.search(r"<<< (550 5\.7\.1 .*)", text).group(1).strip()

        port = int(re.search(r"port = (\d+);", open(s.conf_path).read()).group(1))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.test")
            code, msg = client.mail("bad@x.example")
        self.assertEqual("%d %s" % (code, msg.decode()), check_reply)

    def test_message_passing_every_entry_exits_0_without_touching_the_backend(self):
        backend = self.start_backend("a")
        s = self.start_sluice(self.config(backend.port))
        out = self.check(s.conf_path, "good@x.example", ["u@a.example", "w@a.example"])
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 0, text + out.stderr.decode())
        self.assertRegex(text, r"mail\s+10-reject-sender\s+continue")
        self.assertRegex(text, r"eom\s+20-tag\s+continue")
        self.assertRegex(text, r"<<< 250 2\.0\.0 .*check mode")
        self.assertEqual(backend.connection_count(), 0)

    def test_one_refused_recipient_among_accepted_ones_exits_1(self):
        backend = self.start_backend("a")
        s = self.start_sluice(self.config(backend.port))
        out = self.check(s.conf_path, "good@x.example", ["u@a.example", "v@unrouted.example"])
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 1, text + out.stderr.decode())
        self.assertIn("550 5.7.1 Relay access denied", text)
        # The accepted recipient still gets the message through the chain.
        self.assertRegex(text, r"eom\s+20-tag\s+continue")
        self.assertRegex(text, r"<<< 250 2\.0\.0 .*check mode")
        self.assertEqual(backend.connection_count(), 0)

    @unittest.skipUnless(os.geteuid() == 0, "dropping privileges needs root")
    def test_run_as_root_the_chain_gets_the_workers_rights(self):
        secret = os.path.join(self.workdir, "secret")
        with open(secret, "w") as f:
            f.write("root only\n")
        os.chmod(secret, 0o600)
        script = os.path.join(self.workdir, "peek.lua")
        with open(script, "w") as f:
            f.write('local f, err = io.open(%r, "r")\n'
                    'sluice.on("rcpt", function(s)\n'
                    '    return sluice.reject(550, "5.7.1", "peek: " .. (f and "read" or err))\n'
                    'end)\n' % secret)
        with open(os.path.join(self.conf_dir, "30-peek.conf"), "w") as f:
            f.write('plugin = "lua";\nscript = "%s";\nallow_io = true;\n' % script)
        conf = os.path.join(self.workdir, "sluice.conf")
        with open(conf, "w") as f:
            f.write(base_config(self.workdir, free_port(), [pool("a", [free_port()])],
                                (("a.example", "a"),),
                                plugin_dir=os.path.join(BUILD_DIR, "plugins")))
        out = self.check(conf, "good@x.example", ["u@a.example"], message=False)
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 1, text + out.stderr.decode())
        self.assertIn("Permission denied", text)
        self.assertNotIn("peek: read", text)

    def test_smtp_option_greets_with_helo(self):
        backend = self.start_backend("a")
        s = self.start_sluice(self.config(backend.port))
        args = [CHECK_BIN, "-c", s.conf_path, "--client", "127.0.0.1", "--helo", "client.test",
                "--smtp", "--from", "good@x.example", "--rcpt", "u@a.example"]
        out = subprocess.run(args, capture_output=True, timeout=CHECK_TIMEOUT,
                             stdin=subprocess.DEVNULL)
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 0, text + out.stderr.decode())
        self.assertIn(">>> HELO client.test", text)
        self.assertNotIn("EHLO", text)


if __name__ == "__main__":
    unittest.main()
