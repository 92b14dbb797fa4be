"""`cmake --install` lays out a system an operator can run as it is.

The build under test is installed twice: into a DESTDIR with the /usr prefix
(the layout a package would ship, configuration in /etc, DESTDIR applied
once) and under a temporary prefix, from which the installed daemon runs
the shipped configuration with a shipped plugin and a Lua entry enabled by
name, no plugin_dir given, and relays a message. The installed systemd unit
passes `systemd-analyze verify`.
"""

import os
import re
import shutil
import smtplib
import socket
import subprocess
import unittest

from sluice_harness import SluiceTestCase, free_port, make_worker_dir, sluice_bin, wait_until

INSTALL_TIMEOUT = 120


def build_dir():
    return os.path.dirname(os.path.abspath(sluice_bin()))


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def files_under(root):
    found = []
    for dirpath, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
    return sorted(found)


class InstallTest(SluiceTestCase):
    def install(self, prefix, destdir=None):
        env = dict(os.environ)
        env.pop("DESTDIR", None)
        if destdir:
            env["DESTDIR"] = destdir
        res = subprocess.run(["cmake", "--install", build_dir(), "--prefix", prefix],
                             env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        return res.stdout

    def test_usr_prefix_in_destdir_puts_config_in_etc_and_destdir_once(self):
        dest = os.path.join(self.workdir, "dest")
        self.install("/usr", destdir=dest)
        files = files_under(dest)
        for want in ["usr/sbin/sluice", "usr/bin/sluice-check", "usr/bin/sluice-store",
                     "etc/sluice/sluice.conf",
                     "etc/sluice/conf.d/20-dnsbl.conf", "usr/include/sluice/plugin.h",
                     "usr/lib/systemd/system/sluice.service"]:
            self.assertIn(want, files)
        for plugin in ("lua", "dnsbl", "tarpit", "greylist", "clamav"):
            self.assertTrue(any(re.match(r"usr/lib/(.+/)?sluice/plugins/%s\.so$" % plugin, f)
                                for f in files), files)
        self.assertTrue(any(re.match(r"usr/lib/(.+/)?pkgconfig/sluice-plugin\.pc$", f)
                            for f in files), files)
        self.assertFalse([f for f in files if f.startswith("usr/etc")], files)
        self.assertFalse([f for f in files if dest.lstrip("/") in f], "DESTDIR applied twice")
        unit = read(os.path.join(dest, "usr/lib/systemd/system/sluice.service"))
        self.assertIn("ExecStart=/usr/sbin/sluice -c /etc/sluice/sluice.conf\n", unit)

    def test_reinstall_keeps_the_operators_configuration(self):
        dest = os.path.join(self.workdir, "dest")
        self.install("/usr", destdir=dest)
        conf = os.path.join(dest, "etc/sluice/sluice.conf")
        with open(conf, "a") as f:
            f.write("# edited by the operator\n")
        out = self.install("/usr", destdir=dest)
        self.assertIn("Kept: ", out)
        self.assertTrue(read(conf).endswith("# edited by the operator\n"))

    def test_installed_daemon_finds_its_plugins_under_another_prefix(self):
        prefix = os.path.join(self.workdir, "prefix")
        self.install(prefix)
        sluice = os.path.join(prefix, "sbin", "sluice")
        version = subprocess.run([sluice, "-V"], capture_output=True, text=True, timeout=30)
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertIn("configuration %s/etc/sluice/sluice.conf" % prefix, version.stdout)
        self.assertIn("plugin directory %s/" % prefix, version.stdout)
        self.assertRegex(version.stdout, r"plugin ABI \d+\.\d+")

        etc = os.path.join(prefix, "etc", "sluice")
        backend = self.start_backend("a")
        port = self.configure_installed(etc, backend.port)
        check = subprocess.run([sluice, "-t"], capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertIn("configuration ok", check.stdout)

        log_path = os.path.join(self.workdir, "installed.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sluice], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.addCleanup(self.stop, proc)
        wait_until(lambda: proc.poll() is not None or "ready" in read(log_path),
                   20, what="the installed sluice to be ready")
        self.assertIsNone(proc.poll(), read(log_path))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            refused = c.sendmail("me@example.org", ["user@example.com"],
                                 b"Subject: installed\r\n\r\nhello\r\n")
        self.assertEqual(refused, {})
        [msg] = backend.wait_messages(1)
        self.assertEqual(msg["data"], b"Subject: installed\r\n\r\nhello\r\n")
        self.assertIn("lua-policy saw user@example.com", read(log_path))

    @unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze is not installed")
    def test_installed_systemd_unit_verifies(self):
        prefix = os.path.join(self.workdir, "prefix")
        self.install(prefix)
        unit = os.path.join(prefix, "lib", "systemd", "system", "sluice.service")
        res = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        text = read(unit)
        self.assertIn("Type=notify", text)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", text)
        self.assertIn("ExecStart=%s/sbin/sluice -c %s/etc/sluice/sluice.conf" % (prefix, prefix),
                      text)

    def configure_installed(self, etc, backend_port):
        """The shipped files with only what a test needs changed: free ports,
        the backend, a private store and resolver; tarpit and a Lua policy
        switched on by name."""
        port = free_port()
        conf_path = os.path.join(etc, "sluice.conf")
        text = read(conf_path)
        text = text.replace("port = 2525;", "port = %d;" % port)
        text = re.sub(r',\s*\{ address = "::1"; port = %d; \}' % port, "", text)
        text = text.replace("port = 25;", "port = %d;" % backend_port)
        text += '\nstore = { path = "%s"; };\n' % os.path.join(self.workdir, "store")
        text += 'dns = { servers = [ "127.0.0.1:%d" ]; timeout = "1s"; };\n' % free_port(
            socket.SOCK_DGRAM)
        spool = make_worker_dir(os.path.join(self.workdir, "spool"))
        text = re.sub(r'spool_dir = "[^"]*";', 'spool_dir = "%s";' % spool, text)
        with open(conf_path, "w") as f:
            f.write(text)
        tarpit = os.path.join(etc, "conf.d", "10-tarpit.conf")
        t = read(tarpit).replace("enabled = false;", "enabled = true;")
        t = re.sub(r'banner_delay = "[^"]*";', 'banner_delay = "0s";', t)
        with open(tarpit, "w") as f:
            f.write(t)
        script = os.path.join(self.workdir, "policy.lua")
        with open(script, "w") as f:
            f.write('sluice.on("rcpt", function(s)\n'
                    '    sluice.log("info", "lua-policy saw " .. s:rcpt())\n'
                    'end)\n')
        with open(os.path.join(etc, "conf.d", "30-policy.conf"), "w") as f:
            f.write('plugin = "lua";\nscript = "%s";\n' % script)
        return port

    @staticmethod
    def stop(proc):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


if __name__ == "__main__":
    unittest.main()
