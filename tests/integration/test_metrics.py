"""The Prometheus endpoint of a running sluice: GET /metrics serves the host's
metrics in the text format, other paths and methods are refused, a port
that cannot be bound stops the start, and the counters follow the traffic."""

import re
import smtplib
import os
import socket
import time
import unittest
import urllib.error
import urllib.request

from sluice_harness import (SluiceTestCase, base_config, free_port, pool, run_sluice_check,
                            wait_until)

SENDER = "sender@x.example"
HTTP_TIMEOUT = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4"


def scrape(port, path="/metrics", method="GET"):
    """(status, content type, body) of one request, with a bounded wait."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode("utf-8", "replace")


def series(text):
    """{series: value} of every sample line ("name{labels} value")."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class MetricsTest(SluiceTestCase):
    def relay_with_metrics(self):
        """One backend behind sluice with the endpoint on; returns
        (smtp port, metrics port, backend)."""
        b = self.start_backend("a")
        mport = free_port()
        # No kept backend connections: each session's connect is counted.
        _, port = self.start_relay([pool("a", [b.port], idle_connections=0)],
                                   [("a.example", "a")], metrics_listen="127.0.0.1:%d" % mport)
        return port, mport, b

    def send(self, port, rcpts):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as c:
            return c.sendmail(SENDER, rcpts, b"Subject: metrics\r\n\r\nbody\r\n")

    def test_get_metrics_serves_host_metrics_in_text_format(self):
        _, mport, _ = self.relay_with_metrics()
        status, ctype, body = scrape(mport)
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith(CONTENT_TYPE), ctype)
        self.assertIn("# TYPE sluice_sessions_total counter\n", body)
        self.assertIn("# TYPE sluice_sessions_open gauge\n", body)
        self.assertIn("# TYPE sluice_transaction_duration_seconds histogram\n", body)
        samples = series(body)
        self.assertEqual(samples['sluice_backend_connections_total{pool="a",result="ok"}'], 0)
        self.assertIn('sluice_transactions_total{result="2xx"}', samples)
        # each name has exactly one HELP and one TYPE line
        helps = re.findall(r"^# HELP (\S+) ", body, re.M)
        self.assertEqual(len(helps), len(set(helps)))

    def test_other_paths_get_404_and_other_methods_405(self):
        _, mport, _ = self.relay_with_metrics()
        self.assertEqual(scrape(mport, "/")[0], 404)
        self.assertEqual(scrape(mport, "/metricsx")[0], 404)
        self.assertEqual(scrape(mport, method="POST")[0], 405)
        self.assertEqual(scrape(mport, method="DELETE")[0], 405)

    def test_metrics_port_in_use_fails_the_start(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            mport = busy.getsockname()[1]
            text = base_config(self.workdir, free_port(), [pool("a", [free_port()])],
                               [("a.example", "a")], metrics_listen="127.0.0.1:%d" % mport)
            code, output = run_sluice_check(self.workdir, text, check_only=False)
        self.assertNotEqual(code, 0, output)
        self.assertIn("metrics", output)

    def test_counters_follow_sessions_transactions_and_denials(self):
        port, mport, b = self.relay_with_metrics()
        self.assertEqual(self.send(port, ["one@a.example"]), {})
        self.assertEqual(self.send(port, ["two@a.example", "three@a.example"]), {})
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            self.send(port, ["someone@elsewhere.example"])  # no route: relay denied
        b.wait_messages(2)
        expected = {
            "sluice_sessions_total": 3,
            'sluice_transactions_total{result="2xx"}': 2,
            'sluice_recipients_total{result="2xx"}': 3,
            'sluice_recipients_total{result="5xx"}': 1,
            "sluice_relay_denied_total": 1,
            "sluice_transaction_duration_seconds_count": 2,
            "sluice_sessions_open": 0,  # the last close may land just after the reply
        }

        def counted():
            samples = series(scrape(mport)[2])
            return all(samples.get(k) == v for k, v in expected.items()) and samples

        try:
            samples = wait_until(counted, 10.0, interval=0.1, what="the counters")
        except AssertionError:
            samples = series(scrape(mport)[2])
            self.fail("counters differ: %r" % {k: samples.get(k) for k in expected})
        self.assertGreaterEqual(samples["sluice_message_bytes_total"], 2 * len("body\r\n"))
        self.assertGreaterEqual(
            samples['sluice_backend_connections_total{pool="a",result="ok"}'], 2)

    def test_a_session_on_a_kept_backend_connection_counts_as_reused(self):
        b = self.start_backend("a")
        mport = free_port()
        # One loop thread: connections are kept per thread.
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")], threads=1,
                                   metrics_listen="127.0.0.1:%d" % mport)
        for n in range(2):  # one after the other: the second takes the first's
            self.assertEqual(self.send(port, ["r%d@a.example" % n]), {})
            b.wait_messages(n + 1)
        expected = {'sluice_backend_connections_total{pool="a",result="ok"}': 1,
                    'sluice_backend_connections_total{pool="a",result="reused"}': 1,
                    'sluice_backend_connections_total{pool="a",result="failed"}': 0}

        def counted():
            samples = series(scrape(mport)[2])
            return all(samples.get(k) == v for k, v in expected.items())

        try:
            wait_until(counted, 10.0, interval=0.1, what="the backend counters")
        except AssertionError:
            samples = series(scrape(mport)[2])
            self.fail("counters differ: %r" % {k: samples.get(k) for k in expected})


if __name__ == "__main__":
    unittest.main()


class MetricsHostileClientsTest(SluiceTestCase):
    """The endpoint is reachable by whoever reaches its port: it must not let
    clients hold the worker's descriptors."""

    def relay_with_metrics(self):
        b = self.start_backend("a")
        mport = free_port()
        self.sluice, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                             threads=1, metrics_listen="127.0.0.1:%d" % mport)
        return port, mport

    def worker_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.sluice.worker_pid()))

    def test_idle_connections_are_capped(self):
        _, mport = self.relay_with_metrics()
        before = self.worker_fds()
        conns = []
        try:
            for _ in range(200):  # past the backlog a paused listener drops the SYNs
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                conns.append(c)
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", mport))
            time.sleep(1.5)
            held = self.worker_fds() - before
            self.assertLess(held, 100, "the worker holds %d descriptors for idle "
                            "metrics connections" % held)
        finally:
            for c in conns:
                c.close()
        # below the limit again, the endpoint serves
        status = wait_until(lambda: scrape(mport)[0] == 200, 10.0, interval=0.5,
                            what="a scrape after the flood")
        self.assertTrue(status)

    def test_a_trickled_request_does_not_hold_its_connection(self):
        _, mport = self.relay_with_metrics()
        s = socket.create_connection(("127.0.0.1", mport), timeout=5)
        start = time.monotonic()
        closed = False
        try:
            # one byte a second: each byte restarts evhttp's own timeout
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 60:
                if time.monotonic() - start > 40:
                    break
                try:
                    s.sendall(bytes([b]))
                    s.setblocking(False)
                    try:
                        if s.recv(4096) == b"":
                            closed = True
                            break
                    except BlockingIOError:
                        pass
                    finally:
                        s.setblocking(True)
                except OSError:
                    closed = True
                    break
                time.sleep(1.0)
        finally:
            s.close()
        self.assertTrue(closed, "a request trickled for %.0f s was still open"
                        % (time.monotonic() - start))
        self.assertLess(time.monotonic() - start, 35)
