"""Every allocation of sluice's own code, and of libevent's (its buffers and
events go through sluice's allocator), fails once, one at a time, through a
whole relayed transaction (sluice-failalloc, tests/failalloc/failalloc.c): the
client always gets an answer, each failure is 451 4.3.0 (or 421 4.3.0 where
the session cannot go on), or, where the client's output buffer itself cannot
take a reply, a close the log explains with the session id; a message is
accepted only with exactly the recipients the client was told 250 for, and
the daemon lives on."""

import os
import sys
import time
import unittest

from sluice_harness import (RawClient, SluiceTestCase, base_config, free_port, make_worker_dir,
                            pool, wait_until)

SENDER = "sender@x.example"
RCPTS = ["one@a.example", "two@a.example"]
BODY = b"Subject: alloc\r\nX-Test: yes\r\n\r\nbody line\r\n"
MAX_STEPS = 600  # far more allocations than one transaction makes
SANITIZER_PATTERN = r"ERROR: AddressSanitizer|LeakSanitizer|runtime error|worker exited"
# A session that cannot be answered (its output buffer cannot take the
# reply) ends with this, under its id.
LOGGED_CLOSE = r" [0-9A-F]{12} out of memory in the output buffer, closing the session"
# The backend connection failed because its output buffer could not take a command.
BACKEND_OOM = r" [0-9A-F]{12} backend \S+: out of memory in the output buffer"


def failalloc_bin():
    path = os.environ.get("SLUICE_FAILALLOC_BIN")
    if path:
        return path
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "build", "sluice-failalloc"))


class AllocFailureTest(SluiceTestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(failalloc_bin()):
            self.skipTest("sluice-failalloc is not built (SLUICE_TESTS=ON builds it)")
        # The worker (an unprivileged user) takes the arm file and writes
        # the fired one: the directory is its own.
        self.ctl = make_worker_dir(os.path.join(self.workdir, "failalloc"))
        self.backend = self.start_backend("a")
        self.port = free_port()

    def start(self, **pool_options):
        conf = base_config(self.workdir, self.port, [pool("a", [self.backend.port], **pool_options)],
                           [("a.example", "a")], threads=1)
        self.sluice = self.start_sluice(conf, binary=failalloc_bin(),
                                        env={"SLUICE_FAILALLOC_DIR": self.ctl})

    def arm(self, n):
        tmp = os.path.join(self.ctl, "arm.tmp")
        with open(tmp, "w") as f:
            f.write("%d\n" % n)
        os.rename(tmp, os.path.join(self.ctl, "arm"))

    def fired(self):
        path = os.path.join(self.ctl, "fired")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            text = f.read()
        os.unlink(path)
        return text.strip()

    def assertFailure(self, reply, step):
        """A reply that is not the step's success is the internal error; once
        the backend connection was failed for a write our memory could not
        take (logged), the later commands of the transaction hear that it
        is lost, as after any lost backend."""
        allowed = [(451, b"4.3.0"), (421, b"4.3.0")]
        if len(self.sluice.grep(BACKEND_OOM)) > self.backend_ooms:
            allowed.append((451, b"4.4.2"))
        self.assertIn((reply.code, reply.lines[-1][4:9]), allowed, "%s: %r" % (step, reply))

    def greeted(self):
        """A client past its banner and EHLO, or None (the failure checked)."""
        c = RawClient(self.port, timeout=20)
        self.clients.append(c)
        banner = c.read_reply()
        if banner.code != 220:
            self.assertFailure(banner, "banner")
            return None
        ehlo = c.cmd("EHLO client.test")
        if ehlo.code != 250:
            self.assertFailure(ehlo, "EHLO")
            return None
        return c

    def finish(self, c, accepted, data):
        """From the reply to DATA to QUIT. Returns (recipients told 250,
        final reply or None)."""
        if not accepted:
            self.assertEqual(data.code, 554, data)
            c.cmd("QUIT")
            return [], None
        if data.code != 354:
            self.assertFailure(data, "DATA")
            return accepted, None
        c.send(BODY + b".\r\n")
        final = c.read_reply()
        if final.code != 250:
            self.assertFailure(final, "end of data")
        if final.code != 421:
            self.assertIn(c.cmd("QUIT").code, (221, 421))
        return accepted, final

    def transaction(self):
        """One whole relayed transaction as a patient client runs it.
        Returns (recipients told 250, final reply or None)."""
        c = self.greeted()
        if c is None:
            return [], None
        mail = c.cmd("MAIL FROM:<%s>" % SENDER)
        if mail.code != 250:
            self.assertFailure(mail, "MAIL")
            return [], None
        accepted = []
        for r in RCPTS:
            reply = c.cmd("RCPT TO:<%s>" % r)
            if reply.code == 250:
                accepted.append(r)
            else:
                self.assertFailure(reply, "RCPT")
            if reply.code == 421:
                return [], None
        return self.finish(c, accepted, c.cmd("DATA"))

    def pipelined_transaction(self):
        """The same transaction as a pipelining client sends it: MAIL, RCPT
        and DATA in one write (DATA then goes to the backend with the RCPT)."""
        c = self.greeted()
        if c is None:
            return [], None
        c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (SENDER.encode(),
                                                                   RCPTS[0].encode()))
        mail = c.read_reply()
        if mail.code != 250:
            self.assertFailure(mail, "MAIL")
            return [], None
        rcpt = c.read_reply()
        accepted = [RCPTS[0]] if rcpt.code == 250 else []
        if rcpt.code != 250:
            self.assertFailure(rcpt, "RCPT")
        if rcpt.code == 421:
            return [], None
        return self.finish(c, accepted, c.read_reply())

    def test_each_allocation_failing_in_turn_with_pipelined_data_is_answered(self):
        # A new backend connection each time: MAIL, RCPT and DATA each take
        # a fresh command entry there (a kept connection has spare ones).
        self.start(idle_connections=0)
        self.fail_each_allocation_in_turn(b"X-Test: yes", self.pipelined_transaction)

    def test_each_allocation_failing_in_turn_is_answered_and_loses_no_recipient(self):
        self.start()
        self.fail_each_allocation_in_turn(b"X-Test: yes")

    def test_header_changes_are_never_lost_to_a_failed_allocation(self):
        plugin = os.path.join(os.path.dirname(failalloc_bin()), "test-plugins", "add_header.so")
        if not os.path.exists(plugin):
            self.skipTest("test plugins not built")
        os.makedirs(os.path.join(self.workdir, "conf.d"), exist_ok=True)
        with open(os.path.join(self.workdir, "conf.d", "10-header.conf"), "w") as f:
            f.write('plugin = "%s";\nname = "X-Added";\nvalue = "by plugin";\n' % plugin)
        self.start()
        self.fail_each_allocation_in_turn(b"X-Added: by plugin")

    def fail_each_allocation_in_turn(self, must_have, transaction=None):
        transaction = transaction or self.transaction
        delivered = 0
        fired_count = 0
        for n in range(1, MAX_STEPS + 1):
            self.arm(n)
            closes = len(self.sluice.grep(LOGGED_CLOSE))
            self.backend_ooms = len(self.sluice.grep(BACKEND_OOM))
            closed = False
            try:
                accepted, final = transaction()
            except ConnectionError:
                closed = True
                accepted, final = [], None
            except (AssertionError, OSError) as e:
                time.sleep(0.1)
                raise AssertionError("allocation %d (%s): %s" % (n, self.fired(), e))
            # The client leaves once its transaction is over, refused or not:
            # an abandoned session would keep its backend connection until the
            # command timeout, and a few of them use up this client's share
            # of the pool (max_connections_per_client), so a later step would
            # wait for a backend slot instead of testing its allocation.
            while self.clients:
                self.clients.pop().close()
            if closed:
                # No reply could be written: the close is logged with the session id.
                wait_until(lambda: len(self.sluice.grep(LOGGED_CLOSE)) > closes, 10,
                           what="the logged close of allocation %d" % n)
            # The worker's log is written after the reply: let the session end.
            time.sleep(0.02)
            fired = self.fired()
            if closed:
                # The final 250 itself may be what could not be written: the
                # backend has the message the client was not told about (it
                # sends again, as after any lost reply). Never the other way.
                time.sleep(0.2)
                self.assertIn(self.backend.message_count(), (delivered, delivered + 1))
                delivered = self.backend.message_count()
            if final is not None and final.code == 250:
                delivered += 1
                msgs = self.backend.wait_messages(delivered)
                self.assertEqual(sorted(msgs[-1]["rcpt_tos"]), sorted(accepted),
                                 "allocation %d (%s)" % (n, fired))
                self.assertIn(must_have, msgs[-1]["data"], "allocation %d (%s)" % (n, fired))
            self.assertEqual(self.backend.message_count(), delivered,
                             "a message reached the backend the client was not told 250 for "
                             "(allocation %d, %s)" % (n, fired))
            self.assertEqual(self.sluice.grep(SANITIZER_PATTERN), [])
            if fired is None:
                break
            fired_count += 1
        else:
            self.fail("allocations never ran out within %d steps" % MAX_STEPS)
        print("allocations failed in turn: %d" % fired_count, file=sys.stderr)
        # Disarmed (the last run made fewer allocations than n): all is well.
        self.assertGreater(fired_count, 10)
        self.assertEqual(final.code, 250, final)
        self.assertEqual(self.sluice.grep(SANITIZER_PATTERN), [])


if __name__ == "__main__":
    unittest.main()
