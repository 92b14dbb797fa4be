"""Memory freed after a flood goes back to the system: thousands of held
sessions leave, and within a few seconds the worker trims its heap and says
so. glibc's allocator is what is trimmed, so this runs a sluice built
without sanitizers (ASan has an allocator of its own): SLUICE_PLAIN_BIN
(tests/run-all.sh points it at its gcc build), or SLUICE_BIN when that
build has no sanitizers."""

import os
import resource
import socket
import time
import unittest

from sluice_harness import SluiceTestCase, base_config, free_port, pool, wait_until

FLOOD = 5000           # sessions held at once: about 20 MB of worker heap
TRIM_WAIT = 15.0       # the worker looks every 5 s
MIN_GIVEN_BACK_KB = 4096


def plain_binary():
    path = os.environ.get("SLUICE_PLAIN_BIN")
    if path:
        return path
    if os.environ.get("SLUICE_SANITIZED", "OFF").upper() in ("ON", "1", "TRUE"):
        return None
    return os.environ.get("SLUICE_BIN")


def resident_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class MemoryReturn(SluiceTestCase):

    def setUp(self):
        super().setUp()
        self.binary = plain_binary()
        if not self.binary:
            self.skipTest("needs a sluice without sanitizers: set SLUICE_PLAIN_BIN")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < FLOOD + 200:
            self.skipTest("RLIMIT_NOFILE hard limit %d is below %d" % (hard, FLOOD + 200))
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

    def flood(self, port):
        socks = []
        self.addCleanup(lambda: [c.close() for c in socks])
        for _ in range(FLOOD):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        for c in socks:
            self.assertTrue(c.recv(100).startswith(b"220"))
        for c in socks:
            c.sendall(b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\n")
        for c in socks:
            self.assertIn(b"250", c.recv(4096))
        return socks

    def test_the_heap_of_a_flood_that_left_is_given_back(self):
        b = self.start_backend("a")
        port = free_port()
        s = self.start_sluice(base_config(
            self.workdir, port, [pool("a", [b.port])], [("example.test", "a")],
            connections={"per_address": 0, "per_network": 0, "rate": 0,
                         "max_sessions": FLOOD + 100}), binary=self.binary)
        worker = wait_until(s.worker_pid, 10, what="the worker")
        socks = self.flood(port)
        held = resident_kb(worker)
        self.assertEqual(s.grep(r"given back to the system"), [], "trimmed while held")
        for c in socks:
            c.close()
        line = s.wait_log(r"freed memory given back to the system", timeout=TRIM_WAIT)
        self.assertLess(resident_kb(worker), held - MIN_GIVEN_BACK_KB, line)


if __name__ == "__main__":
    unittest.main()
