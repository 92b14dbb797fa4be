"""Least privilege: the master stays root to bind the ports, the worker (where
every plugin and script runs) becomes the unprivileged user before it loads
any of them, keeps no capability and cannot gain any; what it must write is
checked by `sluice -t` and at start; run_as_root is explicit and logged."""

import os
import re
import stat

from sluice_harness import (SluiceTestCase, base_config, free_port, make_worker_dir, pool,
                            run_sluice_check, wait_until, worker_user)

RCPT = "user@a.example"
ROUTES = (("a.example", "a"),)


def proc_status(pid):
    """/proc/<pid>/status as a dict of its fields (text)."""
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class PrivilegesTest(SluiceTestCase):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("dropping privileges needs the tests to run as root")
        self.user = worker_user()

    def config(self, **overrides):
        self.port = free_port()
        return base_config(self.workdir, self.port, [pool("a", [self.backend.port])], ROUTES,
                           **overrides)

    def relay(self, mid):
        c = self.open_session(self.port)
        self.assertReply(c.cmd("MAIL FROM:<c@x.example>"), 250)
        reply = c.cmd("RCPT TO:<%s>" % RCPT)
        if reply.code != 250:
            return reply
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Message-ID: %s\r\n\r\nbody\r\n.\r\n" % mid.encode())
        return c.read_reply()

    def test_worker_runs_as_the_unprivileged_user_with_no_capabilities(self):
        self.backend = self.start_backend("a")
        s = self.start_sluice(self.config())
        worker = wait_until(s.worker_pid, 5.0, what="the worker")
        st = proc_status(worker)
        uid, gid = str(self.user.pw_uid), str(self.user.pw_gid)
        self.assertEqual(st["Uid"].split(), [uid] * 4)
        self.assertEqual(st["Gid"].split(), [gid] * 4)
        self.assertEqual(st["Groups"].split(),
                         [str(g) for g in os.getgrouplist(self.user.pw_name, self.user.pw_gid)])
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            self.assertEqual(int(st[cap], 16), 0, "%s of the worker: %s" % (cap, st[cap]))
        self.assertEqual(st["NoNewPrivs"], "1")
        # The master keeps root: it holds the ports and restarts the worker.
        self.assertEqual(proc_status(s.proc.pid)["Uid"].split()[0], "0")
        s.wait_log(r"worker: running as user %s \(uid %s\) group \S+ \(gid %s\), no capabilities"
                   % (self.user.pw_name, uid, gid))
        self.assertReply(self.relay("<priv@x.example>"), 250)

    def test_lua_script_cannot_read_a_root_only_file(self):
        self.backend = self.start_backend("a")
        secret = os.path.join(self.workdir, "secret")
        with open(secret, "w") as f:
            f.write("root only\n")
        os.chmod(secret, 0o600)
        script = os.path.join(self.workdir, "peek.lua")
        with open(script, "w") as f:
            f.write('local f, err = io.open(%r, "r")\n'
                    'local seen = f and f:read("l") or err\n'
                    'sluice.on("rcpt", function(s)\n'
                    '    return sluice.reject(550, "5.7.1", "peek: " .. seen)\n'
                    'end)\n' % secret)
        plugin_dir = os.path.join(os.path.dirname(os.path.abspath(os.environ["SLUICE_BIN"])),
                                  "plugins")
        text = self.config(plugin_dir=plugin_dir)
        with open(os.path.join(self.workdir, "conf.d", "30-peek.conf"), "w") as f:
            f.write('plugin = "lua";\nscript = "%s";\nallow_io = true;\n' % script)
        self.start_sluice(text)
        reply = self.relay("<peek@x.example>")
        self.assertReply(reply, 550, "5.7.1")
        self.assertIn("Permission denied", reply.text)
        self.assertNotIn("root only", reply.text)

    def test_store_and_spool_files_belong_to_the_worker_user(self):
        self.backend = self.start_backend("a")
        spool = make_worker_dir(os.path.join(self.workdir, "spool"))
        s = self.start_sluice(self.config(
            data={"spool_memory": 0, "spool_dir": spool, "bare_newline": "reject"}))
        store = os.path.join(self.workdir, "store")
        self.assertEqual(os.stat(store).st_uid, self.user.pw_uid)
        self.assertEqual(stat.S_IMODE(os.stat(store).st_mode), 0o750)
        s.wait_log(r"created the store directory %s for user %s" % (re.escape(store),
                                                                    self.user.pw_name))
        files = os.listdir(store)
        self.assertTrue(files, "LMDB opened its files")
        for name in files:
            self.assertEqual(os.stat(os.path.join(store, name)).st_uid, self.user.pw_uid, name)
        self.assertReply(self.relay("<spooled@x.example>"), 250)

    def test_check_names_the_spool_dir_the_worker_cannot_write(self):
        self.backend = self.start_backend("a")
        spool = os.path.join(self.workdir, "rootspool")
        os.makedirs(spool, mode=0o755)
        text = self.config(data={"spool_dir": spool, "bare_newline": "reject"})
        for check_only in (True, False):
            code, out = run_sluice_check(self.workdir, text, check_only=check_only)
            self.assertEqual(code, 1, out)
            self.assertIn("cannot write data.spool_dir %s: Permission denied" % spool, out)
            self.assertIn(self.user.pw_name, out)

    def test_check_builds_the_chain_as_the_worker_so_an_unreadable_script_is_named(self):
        self.backend = self.start_backend("a")
        script = os.path.join(self.workdir, "private.lua")
        with open(script, "w") as f:
            f.write('sluice.on("rcpt", function(s) end)\n')
        os.chmod(script, 0o600)
        plugin_dir = os.path.join(os.path.dirname(os.path.abspath(os.environ["SLUICE_BIN"])),
                                  "plugins")
        text = self.config(plugin_dir=plugin_dir)
        with open(os.path.join(self.workdir, "conf.d", "30-private.conf"), "w") as f:
            f.write('plugin = "lua";\nscript = "%s";\n' % script)
        code, out = run_sluice_check(self.workdir, text)
        self.assertEqual(code, 1, out)
        self.assertIn(script, out)
        self.assertIn("Permission denied", out)
        os.chown(script, self.user.pw_uid, self.user.pw_gid)
        code, out = run_sluice_check(self.workdir, text)
        self.assertEqual((code, out), (0, "configuration ok\n"))

    def test_check_refuses_a_store_path_whose_parent_is_missing(self):
        self.backend = self.start_backend("a")
        path = os.path.join(self.workdir, "no", "such", "store")
        code, out = run_sluice_check(self.workdir, self.config(store={"path": path}))
        self.assertEqual(code, 1, out)
        self.assertIn("store.path %s: its directory %s does not exist"
                      % (path, os.path.dirname(path)), out)
        self.assertFalse(os.path.exists(os.path.dirname(path)), "nothing created")

    def test_unknown_user_is_a_configuration_error(self):
        self.backend = self.start_backend("a")
        code, out = run_sluice_check(self.workdir, self.config(user="no-such-sluice-user"))
        self.assertEqual(code, 1, out)
        self.assertIn('user "no-such-sluice-user" does not exist', out)

    def test_root_as_user_needs_run_as_root_which_is_logged(self):
        self.backend = self.start_backend("a")
        code, out = run_sluice_check(self.workdir, self.config(user="root"))
        self.assertEqual(code, 1, out)
        self.assertIn("run_as_root = true", out)
        s = self.start_sluice(self.config(user=None, run_as_root=True))
        s.wait_log(r"run_as_root = true: every plugin and script runs as root")
        worker = wait_until(s.worker_pid, 5.0, what="the worker")
        self.assertEqual(proc_status(worker)["Uid"].split()[0], "0")
        self.assertReply(self.relay("<root@x.example>"), 250)
