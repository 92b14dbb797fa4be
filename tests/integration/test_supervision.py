"""Supervision: the master restarts a worker that dies, within a second,
says why in the log, and backs off when it keeps dying; the listening
sockets stay open meanwhile, so clients wait in the backlog instead of being
refused, and no message that got 250 is lost or doubled."""

import os
import signal
import threading
import time

from load_clients import RCPT, LoadClient, Tally, message_id_of
from sluice_harness import RawClient, SluiceTestCase, base_config, free_port, pool, sluice_bin, \
    wait_until

TEST_PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(sluice_bin())), "test-plugins")
ROUTES = (("a.example", "a"),)
RESTART_WITHIN = 1.0
LOAD_CLIENTS = 6
CLIENT_TIMEOUT = 20.0
CRASH_RCPT = "crash@a.example"


class SupervisionTest(SluiceTestCase):
    def setUp(self):
        super().setUp()
        os.makedirs(os.path.join(self.workdir, "conf.d"))

    def config(self, backend, **overrides):
        self.port = free_port()
        return base_config(self.workdir, self.port, [pool("a", [backend.port],
                                                          max_connections=20)], ROUTES,
                           **overrides)

    def new_worker(self, s, old, timeout):
        return wait_until(lambda: (s.worker_pid() or old) != old and s.worker_pid(), timeout,
                          what="a new worker")

    def test_worker_killed_under_load_is_restarted_within_a_second_and_nothing_is_lost(self):
        b = self.start_backend("a")
        s = self.start_sluice(self.config(b))
        stop = threading.Event()
        clients = [LoadClient(i, self.port, stop, CLIENT_TIMEOUT) for i in range(LOAD_CLIENTS)]
        for c in clients:
            c.start()
        wait_until(lambda: b.message_count() >= 20, 20.0, what="mail flowing")
        old = s.worker_pid()
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        self.new_worker(s, old, RESTART_WITHIN)
        forked_after = time.monotonic() - killed_at
        s.wait_log(r"master: worker restarted", 10.0)
        before = b.message_count()
        wait_until(lambda: b.message_count() >= before + 20, 20.0, what="mail flowing again")
        stop.set()
        for c in clients:
            c.join(CLIENT_TIMEOUT + 5)
        self.assertLess(forked_after, RESTART_WITHIN)
        s.wait_log(r"master: the worker exited \(killed by signal 9 \(Killed\)\) after [0-9.]+ s; "
                   r"restarting it in 0 ms \(1 death in a row\)")
        tally = Tally(clients, [message_id_of(m["data"]) for m in b.messages()])
        print("\nworker SIGKILLed under load: new worker forked after %.3f s; %s"
              % (forked_after, tally.summary()))
        self.assertEqual(tally.lost, [], "250'd messages missing at the backend")
        self.assertEqual(tally.doubled, [])
        self.assertEqual(tally.refused_but_delivered, [])
        self.assertEqual(tally.unknown, [])
        self.assertLess(max(c.longest_wait for c in clients), CLIENT_TIMEOUT + 1)

    def crash_once(self, s, n):
        """A session that makes the plugin crash the worker; returns when the
        master has logged the n-th death."""
        old = s.worker_pid()
        c = self.open_session(self.port)
        self.assertReply(c.cmd("MAIL FROM:<c@x.example>"), 250)
        c.send(b"RCPT TO:<%s>\r\n" % CRASH_RCPT.encode())
        self.assertTrue(c.wait_closed(10.0), "the crash closed the session")
        wait_until(lambda: len(s.grep(r"master: the worker exited \(killed by signal")) >= n, 10.0,
                   what="death %d in the log" % n)
        return old

    def relay(self, mid, timeout=30.0):
        c = RawClient(self.port, timeout=timeout)
        self.clients.append(c)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<c@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Message-ID: %s\r\n\r\nbody\r\n.\r\n" % mid.encode())
        self.assertReply(c.read_reply(), 250)
        c.cmd("QUIT")

    def test_plugin_crashing_the_worker_backs_off_and_other_sessions_recover(self):
        b = self.start_backend("a")
        with open(os.path.join(self.workdir, "conf.d", "20-crash.conf"), "w") as f:
            f.write('plugin = "%s";\nrcpt = "%s";\n'
                    % (os.path.join(TEST_PLUGIN_DIR, "crash_on_rcpt.so"), CRASH_RCPT))
        s = self.start_sluice(self.config(b))
        bystander = self.open_session(self.port)
        self.crash_once(s, 1)
        # A session of the dead worker is gone with it; a new one is served.
        self.assertTrue(bystander.wait_closed(5.0))
        s.wait_log(r"master: worker restarted", 10.0)
        self.relay("<after-1@x.example>")
        self.crash_once(s, 2)
        s.wait_log(r"restarting it in 1000 ms \(2 deaths in a row\)")
        # During the back-off the port still accepts: the client waits in
        # the backlog and is served by the next worker.
        started = time.monotonic()
        self.relay("<queued-2@x.example>")
        self.assertGreater(time.monotonic() - started, 0.5, "served only after the back-off")
        self.crash_once(s, 3)
        s.wait_log(r"restarting it in 2000 ms \(3 deaths in a row\)")
        self.relay("<after-3@x.example>")
        s.wait_log(r"crash_on_rcpt: crashing the worker")
        self.assertEqual(sorted(message_id_of(m["data"]) for m in b.messages()),
                         ["<after-1@x.example>", "<after-3@x.example>", "<queued-2@x.example>"])
        self.assertEqual(s.proc.poll(), None, "the master kept running")

    def gen_entry(self, value):
        with open(os.path.join(self.workdir, "conf.d", "50-gen.conf"), "w") as f:
            f.write('plugin = "%s";\nname = "X-Gen";\nvalue = "%s";\n'
                    % (os.path.join(TEST_PLUGIN_DIR, "add_header.so"), value))

    def test_restarted_worker_keeps_the_reloaded_configuration_and_the_sockets(self):
        b = self.start_backend("a")
        self.gen_entry("boot")
        s = self.start_sluice(self.config(b))
        with open(s.conf_path) as f:
            text = f.read()
        with open(s.conf_path, "w") as f:
            f.write(text.replace("threads = 2;", "threads = 3;"))
        self.gen_entry("reloaded")
        s.proc.send_signal(signal.SIGHUP)
        s.wait_log(r"master: reload done")
        old = s.worker_pid()
        os.kill(old, signal.SIGKILL)
        self.new_worker(s, old, RESTART_WITHIN)
        s.wait_log(r"master: worker restarted")
        # Still the boot sockets: 2 loop threads, whatever the file says now.
        self.assertEqual(len(s.grep(r"worker: 2 loop threads, 1 listeners each")), 2)
        self.relay("<after-restart@x.example>")
        msg = b.wait_messages(1)[0]["data"]
        self.assertIn(b"X-Gen: reloaded", msg)

    def test_worker_that_cannot_start_at_boot_makes_start_fail(self):
        b = self.start_backend("a")
        with open(os.path.join(self.workdir, "conf.d", "20-fail.conf"), "w") as f:
            f.write('plugin = "%s";\n' % os.path.join(TEST_PLUGIN_DIR, "failing_init.so"))
        from sluice_harness import run_sluice_check
        code, out = run_sluice_check(self.workdir, self.config(b), check_only=False)
        self.assertEqual(code, 1, out)
        self.assertIn("failing_init refuses to start on purpose", out)
        self.assertNotIn("restarting", out)
