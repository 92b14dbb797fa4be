"""The greylist plugin against real stores: an unknown triplet gets 451 at
RCPT (the backend is not touched), a retry before the minimum delay 451, one
after it passes and stays known for the lifetime (refreshed by use), a
network that passed enough deliveries is auto-allowlisted, every allowlist
and vouching note skips greylisting, a transaction can mix greylisted and
passing recipients, and the state survives a restart (LMDB) and is shared
between instances (Redis). A failing store never stops mail."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from sluice_harness import (Sluice, SluiceTestCase, base_config, free_port, pool, render_config,
                            run_sluice_check, sluice_bin, wait_until, worker_user)

SENDER = "alice@sender.example"
RCPT = "bob@a.example"
BODY = b"Subject: greylist\r\n\r\nbody\r\n"
DELAY = 2.0          # min_delay of the tests, seconds
SLACK = 2.0          # timing bounds: at least the delay, less than delay + SLACK
REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT = 10.0


def plugin_dir():
    return os.path.join(os.path.dirname(sluice_bin()), "plugins")


def store_tool():
    return os.path.join(os.path.dirname(sluice_bin()), "sluice-store")


def check_tool():
    return os.path.join(os.path.dirname(sluice_bin()), "sluice-check")


class RedisServer:
    """A redis-server on a free loopback port, no persistence."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="sluice-redis-")
        self.start()

    def start(self):
        self.out = open(os.path.join(self.dir, "out.txt"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self._answers, START_TIMEOUT, what="redis-server to answer")

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("redis-server exited")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.out.close()

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


MDB_LOAD = "/usr/bin/mdb_load"
MAP_SIZE = 1 << 20      # the smallest map sluice accepts


def lmdb_fill(path, map_size=MAP_SIZE):
    """Fills an LMDB environment with never-expiring records (sluice's record
    layout: an 8-byte expiry of 0, then the value) until not one more small
    record fits: batches of decreasing size, each its own mdb_load
    transaction, until a batch of one fails. Returns the records loaded."""
    os.makedirs(path, exist_ok=True)
    loaded = 0
    for batch in (1000, 100, 10, 1):
        for _ in range(10000):
            lines = ["VERSION=3", "format=bytevalue", "type=btree",
                     "mapsize=%d" % map_size, "HEADER=END"]
            for i in range(loaded, loaded + batch):
                lines.append(" " + ("fill:%08d" % i).encode().hex())
                lines.append(" " + (b"\0" * 8 + b"x" * 80).hex())
            lines.append("DATA=END")
            done = subprocess.run([MDB_LOAD, path], input=("\n".join(lines) + "\n").encode(),
                                  capture_output=True, timeout=30)
            if done.returncode != 0:
                break
            loaded += batch
    # mdb_load ran as the test's user; the store is the worker's.
    user = worker_user()
    for name in [path] + [os.path.join(path, f) for f in os.listdir(path)]:
        os.chown(name, user.pw_uid, user.pw_gid)
    return loaded


def redis_command(port, *args):
    """One command to redis-server (RESP); returns an int or bytes."""
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        data = b""
        for _ in range(100):
            if data.endswith(b"\r\n") and not (data[:1] == b"$" and data.count(b"\r\n") < 2
                                                and not data.startswith(b"$-1")):
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if data[:1] == b":":
        return int(data[1:].strip())
    if data[:1] == b"$":
        return None if data.startswith(b"$-1") else data.split(b"\r\n")[1]
    return data


class GreylistTest(SluiceTestCase):
    def write_entries(self, greylist=None, extra=()):
        """conf.d/30-greylist.conf (short times) and any extra (name, dict)."""
        entry = {"plugin": "greylist", "min_delay": "%ds" % DELAY, "retry_window": "1h",
                 "lifetime": "1h", "refresh_interval": "1m", "auto_allowlist": 0}
        entry.update(greylist or {})
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        for name, body in [("30-greylist.conf", entry)] + list(extra):
            with open(os.path.join(conf_dir, name), "w") as f:
                f.write(render_config(body))

    def relay(self, greylist=None, extra=(), logdir=None, **overrides):
        """Starts sluice with the entries; logdir: a fresh directory for its
        log and configuration (a second instance or a restart)."""
        self.write_entries(greylist, extra)
        if not self.backends:
            self.backend = self.start_backend("a")
        overrides.setdefault("plugin_dir", plugin_dir())
        port = free_port()
        text = base_config(self.workdir, port, [pool("a", [self.backend.port])],
                           [("a.example", "a"), ("b.example", "a")], **overrides)
        where = self.workdir
        if logdir:
            where = os.path.join(self.workdir, logdir)
            os.makedirs(where)
        s = Sluice(where, text)
        self.sluices.append(s)
        return s, port

    def attempt(self, port, rcpts=(RCPT,), sender=SENDER, data=False):
        """One transaction; returns the RCPT replies (and DATA's final reply)."""
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % sender), 250)
        replies = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
        final = None
        if data and any(r.code == 250 for r in replies):
            self.assertReply(c.cmd("DATA"), 354)
            final = c.cmd(BODY + b".")
        c.cmd("QUIT")
        c.close()
        self.clients.remove(c)
        return (replies, final) if data else replies

    def codes(self, port, **kw):
        return [r.code for r in self.attempt(port, **kw)]

    def pass_greylisting(self, port, **kw):
        """First sight, then a retry after the delay: returns when it passed."""
        first = self.attempt(port, **kw)
        self.assertEqual([r.code for r in first], [451] * len(first), first)
        time.sleep(DELAY + 0.2)
        self.assertEqual(set(self.codes(port, **kw)), {250})

    # --- the core semantics (LMDB) -------------------------------------------

    def test_first_attempt_gets_451_with_a_retry_hint_and_backend_untouched(self):
        s, port = self.relay()
        [r] = self.attempt(port)
        self.assertReply(r, 451, "4.7.1", "Greylisted, please try again in 2 seconds")
        self.assertEqual(self.backend.connection_count(), 0)
        s.wait_log(r"greylisted \(first sight\): greylist:t:127\.0\.0\.0/24 "
                   r"alice@sender\.example bob@a\.example")

    def test_retry_before_min_delay_451_after_it_250(self):
        s, port = self.relay()
        start = time.monotonic()
        self.assertEqual(self.codes(port), [451])
        deadline = start + DELAY + SLACK
        passed_at = None
        while passed_at is None and time.monotonic() < deadline:
            [r] = self.attempt(port)
            now = time.monotonic()
            if r.code == 250:
                passed_at = now
            else:
                self.assertReply(r, 451, "4.7.1", "Greylisted")
                time.sleep(0.3)
        self.assertIsNotNone(passed_at, "no pass within delay + %ss" % SLACK)
        self.assertGreaterEqual(passed_at - start, DELAY)
        replies, final = self.attempt(port, data=True)
        self.assertReply(final, 250)
        self.assertEqual(self.backend.wait_messages(1)[0]["rcpt_tos"], [RCPT])

    def test_known_triplet_is_refreshed_by_use_and_outlives_its_first_lifetime(self):
        s, port = self.relay({"min_delay": "1s", "lifetime": "4s", "refresh_interval": "1s"})
        self.assertEqual(self.codes(port), [451])
        time.sleep(1.2)
        self.assertEqual(self.codes(port), [250])    # allowed until ~t+4
        time.sleep(2.0)
        self.assertEqual(self.codes(port), [250])    # refreshed: allowed until ~t+7
        time.sleep(2.5)
        self.assertEqual(self.codes(port), [250])    # t+4.5: only the refresh keeps it
        time.sleep(4.5)
        [r] = self.attempt(port)                     # unused for a whole lifetime
        self.assertReply(r, 451, "4.7.1", "Greylisted")

    def wait_net_passes(self, s, count):
        """The pass count is written after the reply: wait for it to land."""
        key = "greylist:net:127.0.0.0/24"
        wait_until(lambda: self.store_cmd(s, "get", key)[1].endswith("\t%d\n" % count), 5,
                   interval=0.1, what="%s to reach %d" % (key, count))

    def test_auto_allowlist_passes_any_sender_of_a_network_after_n_passes(self):
        s, port = self.relay({"auto_allowlist": 1})
        self.pass_greylisting(port)
        self.wait_net_passes(s, 1)
        self.assertEqual(self.codes(port, sender="new@other.example", rcpts=("x@a.example",)),
                         [250])
        s.wait_log(r"network 127\.0\.0\.0/24 is auto-allowlisted")

    def test_ipv6_client_is_keyed_by_its_64(self):
        port = free_port()
        self.write_entries()
        self.backend = self.start_backend("a")
        text = base_config(self.workdir, port, [pool("a", [self.backend.port])],
                           [("a.example", "a")], plugin_dir=plugin_dir(),
                           listen=({"address": "::1", "port": port},))
        s = self.start_sluice(text)
        c = self.connect(port, host="::1")
        self.assertReply(c.read_reply(), 220)
        c.cmd("EHLO client.test")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 451, "4.7.1")
        s.wait_log(r"greylist:t:::/64 alice@sender\.example bob@a\.example")

    def test_auto_allowlist_off_keeps_greylisting_new_senders(self):
        s, port = self.relay({"auto_allowlist": 0})
        self.pass_greylisting(port)
        self.assertEqual(self.codes(port, sender="new@other.example"), [451])

    def test_allowlisted_network_is_not_greylisted(self):
        s, port = self.relay({"allowlist": ["127.0.0.0/8"]})
        self.assertEqual(self.codes(port), [250])

    def test_allowlisted_sender_address_and_domain_are_not_greylisted(self):
        s, port = self.relay({"allow_senders": ["alice@sender.example", "*.trusted.example"]})
        self.assertEqual(self.codes(port), [250])
        self.assertEqual(self.codes(port, sender="x@mx.trusted.example"), [250])
        self.assertEqual(self.codes(port, sender="carol@sender.example"), [451])

    def test_allowlisted_recipient_domain_is_not_greylisted(self):
        s, port = self.relay({"allow_recipients": ["postmaster@a.example", "b.example"]})
        self.assertEqual(self.codes(port, rcpts=("postmaster@a.example", "x@b.example", RCPT)),
                         [250, 250, 451])

    def test_relay_networks_client_is_not_greylisted(self):
        s, port = self.relay(relay_networks=["127.0.0.0/8"])
        self.assertEqual(self.codes(port), [250])

    def test_dnsbl_allowlisted_note_skips_greylisting(self):
        dnsbl = {"plugin": "dnsbl", "zones": ({"zone": "never.test"},),
                 "allowlist": ["127.0.0.0/8"], "health_interval": 0}
        s, port = self.relay(extra=[("20-dnsbl.conf", dnsbl)])
        self.assertEqual(self.codes(port), [250])

    def test_dnsbl_allowlisted_client_is_greylisted_when_the_note_is_not_honoured(self):
        # The dnsbl accepts once per session (at connect) and says nothing at
        # RCPT: only the note keeps greylisting away.
        dnsbl = {"plugin": "dnsbl", "zones": ({"zone": "never.test"},),
                 "allowlist": ["127.0.0.0/8"], "health_interval": 0}
        s, port = self.relay({"skip_notes": []}, extra=[("20-dnsbl.conf", dnsbl)])
        self.assertEqual(self.codes(port), [451])

    def test_note_named_by_the_operator_skips_greylisting(self):
        script = os.path.join(self.workdir, "vouch.lua")
        with open(script, "w") as f:
            f.write('sluice.on("connect", function(s) s:set_note("local.vouched", 1) end)\n')
        lua = {"plugin": "lua", "script": script}
        s, port = self.relay({"skip_notes": ["local.vouched"]}, extra=[("10-vouch.conf", lua)])
        self.assertEqual(self.codes(port), [250])

    def test_null_sender_is_greylisted_by_recipient(self):
        s, port = self.relay()
        self.assertEqual(self.codes(port, sender=""), [451])
        s.wait_log(r"greylist:t:127\.0\.0\.0/24 <> bob@a\.example")
        time.sleep(DELAY + 0.2)
        self.assertEqual(self.codes(port, sender=""), [250])

    def test_sender_tags_are_normalised_so_a_new_batv_tag_is_the_same_sender(self):
        s, port = self.relay()
        self.assertEqual(self.codes(port, sender="prvs=0123abcd=Alice@Sender.example"), [451])
        time.sleep(DELAY + 0.2)
        self.assertEqual(self.codes(port, sender="prvs=9876fedc=alice@sender.example"), [250])

    def test_mixed_transaction_delivers_the_passing_recipient_only(self):
        s, port = self.relay()
        self.pass_greylisting(port)
        replies, final = self.attempt(port, rcpts=(RCPT, "new@a.example"), data=True)
        self.assertEqual([r.code for r in replies], [250, 451])
        self.assertReply(final, 250)
        self.assertEqual(self.backend.wait_messages(1)[0]["rcpt_tos"], [RCPT])

    def test_lmdb_state_survives_a_restart(self):
        s, port = self.relay()
        self.assertEqual(self.codes(port), [451])
        s.stop()
        self.sluices.remove(s)
        time.sleep(DELAY + 0.2)
        s2, port2 = self.relay(logdir="restarted")
        self.assertEqual(self.codes(port2), [250])

    # --- Redis ------------------------------------------------------------------

    def redis(self):
        r = RedisServer()
        self.addCleanup(r.close)
        return r

    def redis_store(self, redis):
        return {"backend": "redis", "redis_address": "127.0.0.1:%d" % redis.port,
                "redis_timeout": "500ms"}

    def test_two_instances_sharing_one_redis_share_triplets(self):
        redis = self.redis()
        s1, port1 = self.relay(store=self.redis_store(redis), logdir="one")
        s2, port2 = self.relay(store=self.redis_store(redis), logdir="two")
        start = time.monotonic()
        self.assertEqual(self.codes(port1), [451])
        [r] = self.attempt(port2)   # the other instance knows it: too soon, not first sight
        self.assertReply(r, 451, "4.7.1", "Greylisted")
        s2.wait_log(r"greylisted \(too soon\)")
        time.sleep(max(0, DELAY + 0.2 - (time.monotonic() - start)))
        self.assertEqual(self.codes(port2), [250])
        s2.wait_log(r"retry after \d+ s passes")
        self.assertEqual(self.codes(port1), [250])

    def test_redis_keys_carry_ttls(self):
        redis = self.redis()
        s, port = self.relay({"retry_window": "1h"}, store=self.redis_store(redis))
        self.assertEqual(self.codes(port), [451])
        key = "greylist:t:127.0.0.0/24 alice@sender.example bob@a.example"
        ttl = redis_command(redis.port, "PTTL", key)
        self.assertGreater(ttl, 3500 * 1000)
        self.assertLessEqual(ttl, 3600 * 1000)

    def test_redis_killed_fails_open_with_a_log_line_and_greylisting_resumes(self):
        redis = self.redis()
        s, port = self.relay(store=self.redis_store(redis))
        self.assertEqual(self.codes(port), [451])
        redis.kill()
        start = time.monotonic()
        [r] = self.attempt(port, sender="other@sender.example")
        self.assertReply(r, 250)
        self.assertLess(time.monotonic() - start, 3.0)   # never a stuck session
        s.wait_log(r"store failure \(read\) for greylist:t:.* passing \(fail open\)")
        redis.start()
        # The connection comes back by itself (bounded backoff): a new triplet
        # is greylisted again.
        def greylisting_again():
            [r] = self.attempt(port, sender="third@sender.example")
            return r.code == 451
        wait_until(greylisting_again, 15, interval=0.5, what="greylisting to resume")

    def test_store_failure_tempfails_when_configured(self):
        redis = self.redis()
        s, port = self.relay({"on_store_error": "tempfail"}, store=self.redis_store(redis))
        redis.kill()
        [r] = self.attempt(port)
        self.assertReply(r, 451, "4.7.1", "Greylisting temporarily unavailable")
        s.wait_log(r"store failure .*: tempfail")

    # --- LMDB map full ------------------------------------------------------------

    def test_lmdb_map_full_fails_open_with_a_log_line(self):
        store = os.path.join(self.workdir, "store")
        self.assertGreater(lmdb_fill(store), 0)
        s, port = self.relay(store={"backend": "lmdb", "path": store, "map_size": MAP_SIZE})
        start = time.monotonic()
        [r] = self.attempt(port)
        self.assertReply(r, 250)
        self.assertLess(time.monotonic() - start, 3.0)
        s.wait_log(r"store failure \(write\) for greylist:t:.* passing \(fail open\)")
        s.wait_log(r"store: LMDB set: MDB_MAP_FULL")

    # --- the operator tool (sluice-store) -------------------------------------

    def store_cmd(self, s, *args):
        done = subprocess.run([store_tool(), "-c", s.conf_path] + list(args),
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout.decode("utf-8", "replace") + \
            done.stderr.decode("utf-8", "replace")

    def operator_tool_round_trip(self, s, port):
        key = "greylist:t:127.0.0.0/24 alice@sender.example bob@a.example"
        self.assertEqual(self.codes(port), [451])
        rc, out = self.store_cmd(s, "list", "greylist:")
        self.assertEqual(rc, 0, out)
        [line] = out.splitlines()
        k, ttl, value = line.split("\t")
        self.assertEqual(k, key)
        self.assertTrue(3590 <= int(ttl.rstrip("s")) <= 3600, ttl)
        self.assertRegex(value, r"^P \d+ \d+$")
        self.assertEqual(self.store_cmd(s, "count", "greylist:t:"), (0, "1\n"))
        self.assertEqual(self.store_cmd(s, "get", key)[0], 0)
        self.assertEqual(self.store_cmd(s, "del", key), (0, "deleted\n"))
        self.assertEqual(self.store_cmd(s, "get", key)[0], 1)
        self.assertEqual(self.store_cmd(s, "del", key)[0], 1)
        self.assertEqual(self.store_cmd(s, "count"), (0, "0\n"))
        time.sleep(DELAY + 0.2)
        self.assertEqual(self.codes(port), [451])   # deleted: first sight again
        self.assertEqual(len(s.grep(r"greylisted \(first sight\)")), 2)

    def test_operator_tool_lists_counts_and_deletes_lmdb_entries_while_sluice_runs(self):
        s, port = self.relay()
        self.operator_tool_round_trip(s, port)

    def test_operator_tool_lists_counts_and_deletes_redis_entries_while_sluice_runs(self):
        redis = self.redis()
        s, port = self.relay(store=self.redis_store(redis))
        self.operator_tool_round_trip(s, port)

    def test_known_triplet_costs_no_store_write_within_the_refresh_interval(self):
        s, port = self.relay({"refresh_interval": "1h", "lifetime": "2h"})
        key = "greylist:t:127.0.0.0/24 alice@sender.example bob@a.example"
        self.pass_greylisting(port)
        # The pass is written after the reply: wait for it to land.
        before = wait_until(lambda: (lambda out: out if "\tA " in out else None)(
            self.store_cmd(s, "get", key)[1]), 5, interval=0.1, what="the passed record")
        self.assertRegex(before.split("\t")[2], r"^A \d+ \d+$")
        time.sleep(1.1)
        for _ in range(3):
            self.assertEqual(self.codes(port), [250])
        rc, after = self.store_cmd(s, "get", key)
        self.assertEqual(after.split("\t")[2], before.split("\t")[2])

    # --- metrics and the shipped file ------------------------------------------

    def test_metrics_count_seen_greylisted_passed_auto_allowlisted_and_store_failures(self):
        import urllib.request
        redis = self.redis()
        mport = free_port()
        s, port = self.relay({"auto_allowlist": 1}, store=self.redis_store(redis),
                             metrics_listen="127.0.0.1:%d" % mport)
        self.pass_greylisting(port)                               # seen 2, greylisted 1, passed 1
        self.wait_net_passes(s, 1)
        self.codes(port, sender="new@other.example")              # auto-allowlisted 1
        redis.kill()
        self.codes(port, rcpts=("z@a.example",), sender="z@z.example")  # a store failure

        def metric(name):
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if line.startswith('sluice_plugin_%s{entry="30-greylist"} ' % name):
                    return float(line.rsplit(" ", 1)[1])
            return None
        self.assertEqual(metric("greylist_seen"), 2)
        self.assertEqual(metric("greylist_greylisted"), 1)
        self.assertEqual(metric("greylist_passed"), 1)
        self.assertEqual(metric("greylist_auto_allowlisted"), 1)
        self.assertGreaterEqual(metric("greylist_store_failures"), 1)

    def test_shipped_conf_file_with_every_setting_uncommented_loads(self):
        src = os.path.join(os.environ.get("SLUICE_SOURCE_DIR", os.path.join(
            os.path.dirname(__file__), "..", "..")), "conf.d", "30-greylist.conf")
        with open(src) as f:
            text = f.read()
        self.assertIn("enabled = false;", text)
        lines = []
        for line in text.replace("enabled = false;", "enabled = true;").splitlines():
            if line.startswith("#") and " = " in line and line.rstrip().endswith(";"):
                line = line[1:]
            lines.append(line)
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "30-greylist.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        self.assertGreaterEqual(sum(1 for l in lines if l.startswith(("min_delay", "allowlist",
                                                                         "skip_notes"))), 3)
        rc, out = run_sluice_check(self.workdir, base_config(
            self.workdir, free_port(), [pool("a", [free_port()])], [("a.example", "a")],
            plugin_dir=plugin_dir()))
        self.assertEqual(rc, 0, out)

    # --- sluice-check ---------------------------------------------------------

    def check(self, conf_path, *extra):
        args = [check_tool(), "-c", conf_path, "--client", "127.0.0.1", "--from", SENDER,
                "--rcpt", RCPT] + list(extra)
        done = subprocess.run(args, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout.decode("utf-8", "replace")

    def test_sluice_check_leaves_the_live_store_untouched(self):
        s, port = self.relay()
        for _ in range(2):
            rc, out = self.check(s.conf_path)
            self.assertEqual(rc, 1, out)
            self.assertIn("Greylisted, please try again in 2 seconds", out)
            self.assertIn("set greylist:t:127.0.0.0/24 alice@sender.example bob@a.example = P ",
                          out)
            self.assertIn("scratch", out)
        [r] = self.attempt(port)
        self.assertReply(r, 451, "4.7.1", "try again in 2 seconds")
        s.wait_log(r"greylisted \(first sight\)")

    def test_sluice_check_live_store_reads_but_never_writes(self):
        s, port = self.relay()
        self.assertEqual(self.codes(port), [451])
        time.sleep(DELAY + 0.2)
        rc, out = self.check(s.conf_path, "--live-store")
        self.assertEqual(rc, 0, out)
        self.assertIn("= A ", out)
        self.assertIn("not written: read-only", out)
        # The daemon still finds the pending record the check would have changed.
        self.assertEqual(self.codes(port), [250])
        s.wait_log(r"retry after \d+ s passes")

    def test_sluice_check_creates_no_directory_the_configuration_does_not_name(self):
        self.write_entries()
        store = os.path.join(self.workdir, "absent", "store")
        conf = os.path.join(self.workdir, "check.conf")
        with open(conf, "w") as f:
            f.write(base_config(self.workdir, free_port(), [pool("a", [free_port()])],
                                [("a.example", "a")], plugin_dir=plugin_dir(),
                                store={"backend": "lmdb", "path": store}))
        for extra in ((), ("--live-store",)):
            rc, out = self.check(conf, *extra)
            self.assertIn(rc, (0, 1), out)
        self.assertFalse(os.path.exists(os.path.join(self.workdir, "absent")))
        self.assertIn("store: unavailable", out)


if __name__ == "__main__":
    unittest.main()
