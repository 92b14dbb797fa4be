#!/usr/bin/python3
"""NOOP latency of one session while 20 others send 2.9 MB messages at once
(a zip of 2 MiB of random data plus EICAR, base64): with the clamav entry
(scans on the thread pool) and without it (the same upload, no scan).

    SLUICE_BIN=build/sluice bench/clamav-noop-latency.py

Uses the integration test harness and the test signature database; prints
one line per mode. Nothing is asserted: compare the two lines."""

import os
import statistics
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import test_clamav as T  # noqa: E402

SENDERS = 20
MAX_NOOPS = 2000
NOOP_PAUSE = 0.01


class NoopLatency(T.ClamavBase):
    def run_load(self, with_clamav):
        if with_clamav:
            port = self.relay(overrides={"thread_pool_size": 4})
        else:
            self.backend = self.start_backend("a")
            port = T.free_port()
            self.sluice = self.start_sluice(self.config(port, self.backend.port,
                                                        thread_pool_size=4))
        payload = T.zip_of([("blob%d.bin" % i, os.urandom(256 << 10)) for i in range(8)]
                           + [("eicar.com", T.EICAR)])
        message = T.attachment_message(payload, "many.zip")
        replies = []
        watcher = self.open_session(port)
        threads = [threading.Thread(target=lambda: replies.append(self.send(port, message)))
                   for _ in range(SENDERS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        lat = []
        while any(t.is_alive() for t in threads) and len(lat) < MAX_NOOPS:
            n0 = time.monotonic()
            watcher.cmd("NOOP")
            lat.append(time.monotonic() - n0)
            time.sleep(NOOP_PAUSE)
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - t0
        lat.sort()
        print("%-9s: %d messages of %d bytes in %.2f s, replies %s; %d NOOPs: median %.1f ms, "
              "p95 %.1f ms, max %.1f ms"
              % ("clamav" if with_clamav else "no plugin", len(replies), len(message), elapsed,
                 sorted(set(r.code for r in replies)), len(lat), statistics.median(lat) * 1e3,
                 lat[int(len(lat) * 0.95)] * 1e3, lat[-1] * 1e3))

    def test_1_with_clamav(self):
        self.run_load(True)

    def test_2_without_a_plugin(self):
        self.run_load(False)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-q"])
