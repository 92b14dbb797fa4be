"""Reload applies log_level, dns and metrics_listen; every restart-only
setting a reload would change is named in a warning, and `sluice -t` on the
edited file says which ones need a restart (it compares with the state file
the running master writes)."""

import os
import re
import signal
import subprocess
import urllib.request

from sluice_harness import connect_refused, free_port, pool, sluice_bin, wait_until
from test_dnsbl import SilentDns
from test_lua import Dnsmasq
from test_reload import ReloadTestCase

METRICS_TIMEOUT = 5.0


def edit(path, old, new):
    with open(path) as f:
        text = f.read()
    if old not in text:
        raise AssertionError("%r not in %s" % (old, path))
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=METRICS_TIMEOUT) as r:
        return r.status


class ReloadSettingsTest(ReloadTestCase):
    def start(self, **overrides):
        self.backend = self.start_backend("a")
        return self.start_sluice(self.config([pool("a", [self.backend.port])], **overrides))

    def session(self):
        c = self.open_session(self.port)
        self.assertReply(c.cmd("QUIT"), 221)
        c.wait_closed(5.0)

    def test_log_level_applies_on_reload(self):
        s = self.start(log_level="info")
        self.session()
        self.assertEqual(s.grep(r"session closed"), [])
        edit(s.conf_path, 'log_level = "info";', 'log_level = "debug";')
        self.reload(s)
        self.session()
        s.wait_log(r"debug \S+ session closed", 5.0)
        self.assertEqual(s.grep(r"'log_level' changed"), [])

    def test_dns_servers_apply_on_reload(self):
        s = self.start()
        self.session()
        s.wait_log(r"connect from unknown\[127\.0\.0\.1\]", 5.0)
        dns = Dnsmasq()
        self.addCleanup(dns.stop)
        with open(s.conf_path) as f:
            text = f.read()
        text = re.sub(r'servers = \[ "127\.0\.0\.1:\d+" \];',
                      'servers = [ "127.0.0.1:%d" ];' % dns.port, text)
        with open(s.conf_path, "w") as f:
            f.write(text)
        self.reload(s)
        self.session()
        s.wait_log(r"connect from good\.test\[127\.0\.0\.1\]", 5.0)
        self.assertEqual(s.grep(r"'dns' changed"), [])

    def test_query_in_flight_at_a_dns_reload_ends_on_the_old_servers(self):
        silent = SilentDns()
        self.addCleanup(silent.stop)
        s = self.start(dns={"servers": ["127.0.0.1:%d" % silent.port], "timeout": "1s",
                            "tries": 1})
        c = self.connect(self.port)  # its reverse lookup waits on the silent server
        wait_until(lambda: silent.queries >= 1, 5.0, what="the reverse lookup asked")
        dns = Dnsmasq()
        self.addCleanup(dns.stop)
        edit(s.conf_path, "127.0.0.1:%d" % silent.port, "127.0.0.1:%d" % dns.port)
        self.reload(s)
        self.assertReply(c.read_reply(), 220)  # the old query timed out
        self.assertReply(c.cmd("QUIT"), 221)
        s.wait_log(r"connect from unknown\[127\.0\.0\.1\]", 5.0)
        self.session()
        s.wait_log(r"connect from good\.test\[127\.0\.0\.1\]", 5.0)

    def test_metrics_listen_applies_on_reload(self):
        s = self.start()
        first, second = free_port(), free_port()
        with open(s.conf_path, "a") as f:
            f.write('metrics_listen = "127.0.0.1:%d";\n' % first)
        self.reload(s)
        self.assertEqual(wait_until(lambda: scrape(first), METRICS_TIMEOUT, what="metrics"), 200)
        edit(s.conf_path, "127.0.0.1:%d" % first, "127.0.0.1:%d" % second)
        self.reload(s)
        self.assertEqual(scrape(second), 200)
        self.assertTrue(connect_refused(first), "the old endpoint is closed")
        s.wait_log(r"reload: metrics endpoint 127\.0\.0\.1:%d" % second, 5.0)
        self.assertEqual(s.grep(r"'metrics_listen' changed"), [])

    def check(self, s):
        done = subprocess.run([sluice_bin(), "-t", "-c", s.conf_path], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return done.returncode, done.stdout.decode()

    def test_restart_only_changes_are_named_by_the_reload_and_by_check(self):
        s = self.start()
        code, out = self.check(s)
        self.assertEqual((code, out), (0, "configuration ok\n"))
        edit(s.conf_path, "threads = 2;", "threads = 3;")
        with open(s.conf_path, "a") as f:
            f.write("thread_pool_size = 7;\n")
        code, out = self.check(s)
        self.assertEqual(code, 0, out)
        for name in ("threads", "thread_pool_size"):
            self.assertIn("'%s' differs from the running sluice" % name, out)
        self.assertNotIn("'listen'", out)
        self.reload(s)
        for name in ("threads", "thread_pool_size"):
            s.wait_log(r"reload: '%s' changed: it applies only after a restart" % name, 5.0)
        state = os.path.join(self.workdir, "running.state")
        self.assertTrue(os.path.exists(state))
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(10.0)
        self.assertFalse(os.path.exists(state), "the state file goes with the master")
        code, out = self.check(s)
        self.assertEqual((code, out), (0, "configuration ok\n"))
