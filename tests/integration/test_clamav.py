"""The clamav plugin with the test signature database (tests/data/clamav):
a message with a virus is refused with 554 5.7.0 while the sender is
connected and the backend receives nothing; clean messages are relayed
byte-exact; scans run on the thread pool, so other sessions stay prompt; the
database reloads in the background (directory change, SIGHUP) and a broken
one keeps the loaded engine; over-size and error policies; clamd mode
against a real clamd started here."""

import base64
import binascii
import io
import os
import quopri
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.request
import zipfile

from sluice_harness import (SluiceTestCase, base_config, free_port, pool, render_config,
                            run_sluice_check, sluice_bin, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_NDB = os.path.normpath(os.path.join(HERE, "..", "data", "clamav", "test.ndb"))
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CLAMD = "/usr/sbin/clamd"
SENDER = "sender@x.example"
RCPT = "u@a.example"
START_TIMEOUT = 30.0
RELOAD_TIMEOUT = 20.0
PARALLEL_SCANS = 20
NOOP_ROUNDS = 200


def ndb_line(name, data=EICAR):
    return "%s:0:*:%s\n" % (name, data.hex())


def head(subject="clamav", extra=b""):
    return (b"From: sender@x.example\r\nTo: u@a.example\r\nSubject: " + subject.encode()
            + b"\r\nMessage-ID: <%d@clamav.test>\r\n" % time.monotonic_ns() + extra)


def plain_message(body):
    return head() + b"\r\n" + body + b"\r\n"


def attachment_message(payload, filename="a.bin", subject="clamav"):
    enc = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (head(subject, b"MIME-Version: 1.0\r\n"
                          b"Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\r\n")
            + b"\r\n--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            + b"--BOUNDARY\r\nContent-Type: application/octet-stream; name=\"" + filename.encode()
            + b"\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; "
            + b"filename=\"" + filename.encode() + b"\"\r\n\r\n" + enc + b"--BOUNDARY--\r\n")


def zip_of(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            z.writestr(name, data)
    return buf.getvalue()


def stuffed(message):
    """The DATA form: dot-stuffed, ended by CRLF.CRLF."""
    lines = message.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines) + b".\r\n"


class ClamavBase(SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.db = os.path.join(self.workdir, "db")
        os.makedirs(self.db)
        shutil.copy(TEST_NDB, os.path.join(self.db, "test.ndb"))

    def entry_text(self, **settings):
        entry = dict({"database": self.db}, **settings)
        return 'plugin = "clamav";\n' + render_config(entry)

    def write_entry(self, **settings):
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "30-clamav.conf"), "w") as f:
            f.write(self.entry_text(**settings))

    def config(self, port, backend_port, **overrides):
        plugin_dir = os.path.join(os.path.dirname(sluice_bin()), "plugins")
        return base_config(self.workdir, port, [pool("a", [backend_port])], [("a.example", "a")],
                           plugin_dir=plugin_dir, **overrides)

    def relay(self, overrides=None, **settings):
        """sluice with one clamav entry; returns its port."""
        self.write_entry(**settings)
        self.backend = self.start_backend("a")
        port = free_port()
        self.sluice = self.start_sluice(self.config(port, self.backend.port, **(overrides or {})))
        return port

    def send(self, port, message):
        """One transaction; returns the reply to the end of data."""
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(stuffed(message))
        reply = c.read_reply()
        c.cmd("QUIT")
        c.close()
        return reply

    def assertVirus(self, reply, name="Eicar-Test"):
        self.assertReply(reply, 554, "5.7.0")
        self.assertRegex(reply.text, r"Virus found: %s\.UNOFFICIAL" % re.escape(name))


class ClamavScanTest(ClamavBase):
    def test_eicar_in_the_plain_body_is_refused_554_and_the_backend_gets_nothing(self):
        port = self.relay()
        self.assertVirus(self.send(port, plain_message(EICAR)))
        time.sleep(0.3)
        self.assertEqual(self.backend.message_count(), 0)
        self.assertNotIn("DATA", [c.upper() for c in self.backend.commands()])
        self.sluice.wait_log(r"virus Eicar-Test\.UNOFFICIAL found, rejected")

    def test_eicar_as_a_base64_attachment_is_refused(self):
        port = self.relay()
        self.assertVirus(self.send(port, attachment_message(EICAR, "eicar.com")))
        self.assertEqual(self.backend.message_count(), 0)

    def test_eicar_inside_a_zip_attachment_is_refused(self):
        port = self.relay()
        archive = zip_of([("readme.txt", b"nothing here\n"), ("eicar.com", EICAR)])
        self.assertVirus(self.send(port, attachment_message(archive, "files.zip")))
        self.assertEqual(self.backend.message_count(), 0)

    def test_clean_messages_are_relayed_byte_exact(self):
        # Small (memory spool) and large (file spool, 1M threshold), with
        # dot-stuffed lines and a zip attachment.
        port = self.relay(header="")
        small = plain_message(b"hello\r\n.leading dot\r\n..two dots\r\nend")
        big = attachment_message(zip_of([("data.bin", os.urandom(3 << 20))]), "data.zip")
        big = big.replace(b"see attached", b"see attached\r\n.dot line in a big one")
        for i, message in enumerate((small, big)):
            self.assertReply(self.send(port, message), 250)
            got = self.backend.wait_messages(i + 1)[i]["data"]
            self.assertEqual(got, message)

    def test_clean_message_gets_the_scanned_header_and_a_forged_one_is_dropped(self):
        port = self.relay()
        message = head(extra=b"X-Virus-Scanned: clean, trust me\r\n") + b"\r\nhello\r\n"
        self.assertReply(self.send(port, message), 250)
        got = self.backend.wait_messages(1)[0]["data"]
        fields = re.findall(rb"(?mi)^X-Virus-Scanned: (.*)\r$", got)
        self.assertEqual(len(fields), 1, got)
        self.assertRegex(fields[0], rb"^sluice clamav: clean \(database version \d+\)$")
        self.assertTrue(got.endswith(b"\r\n\r\nhello\r\n"))

    def test_on_virus_header_passes_the_message_marked(self):
        port = self.relay(on_virus="header")
        self.assertReply(self.send(port, plain_message(EICAR)), 250)
        got = self.backend.wait_messages(1)[0]["data"]
        self.assertRegex(got, rb"X-Virus-Scanned: sluice clamav: "
                              rb"infected \(Eicar-Test\.UNOFFICIAL\)")

    def test_on_virus_tempfail_defers_the_message(self):
        port = self.relay(on_virus="tempfail")
        reply = self.send(port, plain_message(EICAR))
        self.assertReply(reply, 451, "4.7.1", "Virus found: Eicar-Test.UNOFFICIAL")
        self.assertEqual(self.backend.message_count(), 0)

    def test_message_over_max_scan_size_passes_unscanned_with_a_header_by_default(self):
        port = self.relay(max_scan_size="4K")
        message = plain_message(EICAR + b"\r\n" + b"x" * 8000)
        self.assertReply(self.send(port, message), 250)
        got = self.backend.wait_messages(1)[0]["data"]
        self.assertIn(b"X-Virus-Scanned: sluice clamav: not scanned (over 4096 bytes)", got)
        self.sluice.wait_log(r"over max_scan_size \(4096\): not scanned")

    def test_message_over_max_scan_size_refused_with_on_oversize_reject(self):
        port = self.relay(max_scan_size="4K", on_oversize="reject")
        reply = self.send(port, plain_message(b"x" * 8000))
        self.assertReply(reply, 552, "5.3.4")
        self.assertEqual(self.backend.message_count(), 0)

    def archives(self):
        """EICAR four archives deep, and as the 6th member of one."""
        deep = EICAR
        for level in range(4):
            deep = zip_of([("level%d.zip" % level if level else "eicar.com", deep)])
        wide = zip_of([("f%d.txt" % i, b"filler %d\n" % i) for i in range(5)]
                      + [("eicar.com", EICAR)])
        return attachment_message(deep, "deep.zip"), attachment_message(wide, "wide.zip")

    def test_eicar_deep_in_nested_archives_is_found_within_the_default_limits(self):
        port = self.relay()
        for message in self.archives():
            self.assertVirus(self.send(port, message))

    def test_engine_limits_stop_the_scan_of_an_archive_and_mark_it_partly_scanned(self):
        # Past max_recursion / max_files libclamav stops looking into the
        # archive (what keeps a bomb from pinning a thread): by default the
        # message passes on what was scanned, with the header saying so.
        port = self.relay(max_recursion=2, max_files=3)
        for i, message in enumerate(self.archives()):
            self.assertReply(self.send(port, message), 250)
            got = self.backend.wait_messages(i + 1)[i]["data"]
            self.assertRegex(got, rb"X-Virus-Scanned: sluice clamav: partly scanned "
                                  rb"\(Heuristics\.Limits\.Exceeded\.Max\w+")
        self.sluice.wait_log(r"scan cut short by an engine limit: Heuristics\.Limits\.Exceeded")

    def test_on_limit_reject_refuses_an_archive_beyond_the_limits(self):
        port = self.relay(max_recursion=2, on_limit="reject")
        reply = self.send(port, self.archives()[0])
        self.assertReply(reply, 554, "5.7.0", "could not be fully scanned")
        self.assertEqual(self.backend.message_count(), 0)

    def test_a_scan_outliving_its_transaction_leaves_the_next_message_intact(self):
        # The entry's timeout (20 ms, on_timeout continue) decides before the
        # scan of a big message ends: the message is relayed while the pool
        # thread still reads the spool, and the same session's next message
        # goes into a new spool. Both arrive byte-exact.
        self.write_entry(header="", timeout="20ms", on_timeout="continue")
        self.backend = self.start_backend("a")
        port = free_port()
        self.sluice = self.start_sluice(self.config(port, self.backend.port,
                                                    log_level="debug"))
        big = attachment_message(zip_of([("r%d.bin" % i, os.urandom(1 << 20)) for i in range(12)]),
                                 "big.zip")
        small = plain_message(b"second message\r\n.dot")
        c = self.open_session(port)
        for i, message in enumerate((big, small)):
            self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
            self.assertReply(c.cmd("DATA"), 354)
            c.send(stuffed(message))
            self.assertReply(c.read_reply(), 250)
        got = self.backend.wait_messages(2)
        self.assertEqual(got[0]["data"], big)
        self.assertEqual(got[1]["data"], small)
        self.sluice.wait_log(r"timed out|timeout")
        self.sluice.wait_log(r"still being read by a plugin: a new spool")

    def test_clients_leaving_during_their_scan_cost_nothing(self):
        port = self.relay()
        big = attachment_message(zip_of([("r%d.bin" % i, os.urandom(1 << 20)) for i in range(6)]
                                        + [("eicar.com", EICAR)]), "big.zip")
        for _ in range(3):
            c = self.open_session(port)
            self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
            self.assertReply(c.cmd("DATA"), 354)
            c.send(stuffed(big))
            c.close()
        self.assertVirus(self.send(port, plain_message(EICAR)))
        self.assertEqual(self.backend.message_count(), 0)
        self.assertEqual(self.sluice.grep(r"Sanitizer|worker .*(died|exited|signal)"), [])

    def test_a_scan_past_max_scan_time_gets_the_error_policy_451(self):
        port = self.relay(max_scan_time=1)
        archive = zip_of([("f%d.txt" % i, os.urandom(64 << 10)) for i in range(200)]
                         + [("eicar.com", EICAR)])
        reply = self.send(port, attachment_message(archive, "slow.zip"))
        self.assertReply(reply, 451, "4.3.0", "Virus scan failed")
        self.assertEqual(self.backend.message_count(), 0)
        self.sluice.wait_log(r"scan failed: max_scan_time reached")

    def test_scans_work_in_temp_dir_and_one_the_worker_cannot_write_gets_451(self):
        # libclamav writes each scan's work under temp_dir: EICAR in a base64
        # part is still found there, nothing is left behind, and when the
        # directory turns unwritable the scans fail (on_error), proving they
        # used it.
        tmp = os.path.join(self.workdir, "clamav-tmp")
        os.makedirs(tmp)
        os.chmod(tmp, 0o1777)
        port = self.relay(temp_dir=tmp)
        self.assertVirus(self.send(port, attachment_message(EICAR, "eicar.com")))
        self.assertReply(self.send(port, plain_message(b"clean\r\n")), 250)
        self.assertEqual(self.backend.message_count(), 1)
        self.assertEqual(os.listdir(tmp), [])
        os.chmod(tmp, 0o755)
        reply = self.send(port, plain_message(b"clean again\r\n"))
        self.assertReply(reply, 451, "4.3.0", "Virus scan failed")
        self.assertEqual(self.backend.message_count(), 1)
        self.sluice.wait_log(r"scan failed: libclamav could not write its work files")

    def test_twenty_scans_at_once_leave_another_sessions_noop_prompt(self):
        # Each message carries a 2 MiB zip to inflate and scan; meanwhile a
        # session on the same (2) loop threads times its NOOPs.
        port = self.relay(overrides={"thread_pool_size": 4})
        payload = zip_of([("blob%d.bin" % i, os.urandom(256 << 10)) for i in range(8)]
                         + [("eicar.com", EICAR)])
        message = attachment_message(payload, "many.zip")
        replies, errors = [], []

        def one():
            try:
                replies.append(self.send(port, message))
            except Exception as e:  # reported below
                errors.append(e)

        watcher = self.open_session(port)
        threads = [threading.Thread(target=one) for _ in range(PARALLEL_SCANS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        worst, rounds = 0.0, 0
        while any(t.is_alive() for t in threads) and rounds < NOOP_ROUNDS:
            n0 = time.monotonic()
            self.assertReply(watcher.cmd("NOOP"), 250)
            worst = max(worst, time.monotonic() - n0)
            rounds += 1
            time.sleep(0.01)
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - t0
        self.assertEqual(errors, [])
        self.assertEqual(len(replies), PARALLEL_SCANS)
        for r in replies:
            self.assertVirus(r)
        print("\n%d scans of %d-byte messages in %.2f s; %d NOOPs meanwhile, slowest %.1f ms"
              % (PARALLEL_SCANS, len(message), elapsed, rounds, worst * 1000))
        self.assertGreater(rounds, 0)
        self.assertLess(worst, 1.0)


class ClamavMailParserTest(ClamavBase):
    """mail_parser = "when_needed" (the default) scans single-part plain text
    as it is, and runs libclamav's mail parser on everything it could decode:
    on every shape below, the same verdict as "always"."""

    def shapes(self):
        """(name, message, plain text?, virus?)"""
        b64 = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
        uu = (b"begin 644 eicar.com\r\n"
              + b"".join(binascii.b2a_uu(EICAR[i:i + 45]).replace(b"\n", b"\r\n")
                         for i in range(0, len(EICAR), 45))
              + b"`\r\nend\r\n")
        single = head(extra=b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
                            b"Content-Transfer-Encoding: base64\r\n") + b"\r\n" + b64
        qp = (head(extra=b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
                         b"Content-Transfer-Encoding: quoted-printable\r\n") + b"\r\n"
              + quopri.encodestring(b"=" + EICAR).replace(b"\n", b"\r\n") + b"\r\n")
        bounce = (head() + b"\r\nYour message could not be delivered.\r\n\r\n"
                  + attachment_message(EICAR, "eicar.com"))
        archive = zip_of([("eicar.com", EICAR)])
        return [
            ("plain text", plain_message(EICAR), True, True),
            ("plain text, clean", plain_message(b"nothing to see"), True, False),
            ("plain text with a MIME header", head(
                extra=b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
                      b"Content-Transfer-Encoding: 8bit\r\n") + b"\r\n" + EICAR + b"\r\n",
             True, True),
            ("base64 in a part that says 7bit", head(
                extra=b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n")
             + b"\r\n" + b64, False, True),
            ("a base64 attachment", attachment_message(EICAR, "eicar.com"), False, True),
            ("a zip attachment", attachment_message(archive, "a.zip"), False, True),
            ("single-part base64", single, False, True),
            ("single-part quoted-printable", qp, False, True),
            ("uuencoded in plain text", head() + b"\r\nhere it is:\r\n" + uu, False, True),
            ("a bounce quoting a message with an attachment", bounce, False, True),
        ]

    @staticmethod
    def plain_looking():
        """Encodings without the headers or markers that announce them, under
        every transfer encoding header: libclamav's verdict with and without
        its parser must agree wherever the shape check skips it."""
        b64 = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
        bodies = (b64, b"\r\n" + b64, b"Hello\r\n" + b64,
                  b"".join(b"=%02X" % c for c in EICAR) + b"\r\n",
                  b"".join(binascii.b2a_uu(EICAR[i:i + 45]).replace(b"\n", b"\r\n")
                           for i in range(0, len(EICAR), 45)))
        encodings = (b"", b"7bit", b"8bit", b"binary", b"7BIT")
        types = (b"", b"text/plain", b"text/plain; charset=utf-8")
        for body in bodies:
            for enc in encodings:
                for ctype in types:
                    extra = (b"Content-Type: " + ctype + b"\r\n" if ctype else b"") + (
                        b"Content-Transfer-Encoding: " + enc + b"\r\n" if enc else b"")
                    yield head(extra=extra) + b"\r\n" + body

    def verdicts(self, mode):
        mport, port = free_port(), free_port()
        self.write_entry(mail_parser=mode)
        backend = self.start_backend(mode)
        sluice = self.start_sluice(self.config(port, backend.port,
                                               metrics_listen="127.0.0.1:%d" % mport))
        found = [self.send(port, message).code == 554 for _, message, _, _ in self.shapes()]
        generated = [self.send(port, message).code for message in self.plain_looking()]
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10) as r:
            text = r.read().decode()
        unparsed = re.search(r'(?m)^sluice_plugin_clamav_scans_without_mail_parser'
                             r'\{entry="30-clamav"\} (\d+)$', text)
        self.assertIsNotNone(unparsed, text)
        sluice.stop()
        # The next sluice's readiness is read from a log of its own.
        os.rename(sluice.log_path, sluice.log_path + "." + mode)
        return found, int(unparsed.group(1)), generated

    def test_when_needed_finds_what_always_finds_and_skips_the_parser_only_on_plain_text(self):
        shapes = self.shapes()
        always, always_unparsed, always_generated = self.verdicts("always")
        when_needed, unparsed, generated = self.verdicts("when_needed")
        for (name, _, _, virus), a, w in zip(shapes, always, when_needed):
            self.assertEqual(a, virus, "always: " + name)
            self.assertEqual(w, virus, "when_needed: " + name)
        self.assertEqual(always_unparsed, 0)
        self.assertEqual(always_generated, generated)
        # The generated set has both kinds: some scanned as they are, and
        # some the parser decodes into a virus.
        self.assertIn(554, generated)
        self.assertGreater(unparsed, sum(1 for s in shapes if s[2]))

    def test_mail_parser_is_refused_in_clamd_mode_and_checked(self):
        for settings in ({"mail_parser": "sometimes"},
                         {"mode": "clamd", "clamd": ["127.0.0.1:3310"], "mail_parser": "always"}):
            self.write_entry(**settings)
            rc, out = run_sluice_check(self.workdir, self.config(free_port(), free_port()),
                                       timeout=START_TIMEOUT)
            self.assertNotEqual(rc, 0, out)
            self.assertIn("mail_parser", out)


class ClamavReloadTest(ClamavBase):
    def wait_loaded(self, count, timeout=RELOAD_TIMEOUT):
        return wait_until(lambda: len(self.sluice.grep(r"database .* loaded")) >= count, timeout,
                          what="%d engine load(s)" % count)

    def write_db(self, text, name="test.ndb"):
        # As freshclam does: a new file renamed into place.
        tmp = os.path.join(self.db, "." + name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.db, name))

    def test_database_directory_change_swaps_the_engine_under_load(self):
        port = self.relay(check_interval="200ms")
        self.wait_loaded(1)
        stop = threading.Event()
        replies, errors = [], []

        # Bounded by time and count, not by a count alone: plain text scans
        # in about a millisecond, so a small count could run out before the
        # swap and leave nothing to see after it.
        deadline = time.monotonic() + 60

        def load():
            while (not stop.is_set() and len(replies) < 50000
                   and time.monotonic() < deadline):
                try:
                    replies.append(self.send(port, plain_message(EICAR)))
                except Exception as e:
                    errors.append(e)
                    return

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        # Touch the mtime a second ahead: a rewrite within the same second
        # must still be seen as a change.
        self.write_db(ndb_line("Eicar-Swapped"))
        st = os.stat(os.path.join(self.db, "test.ndb"))
        os.utime(os.path.join(self.db, "test.ndb"), (st.st_atime + 2, st.st_mtime + 2))
        self.wait_loaded(2)
        before = len(replies)
        wait_until(lambda: len(replies) >= before + 8, 20, what="scans after the swap")
        stop.set()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        names = [re.search(r"Virus found: (\S+)", r.text).group(1) if r.code == 554 else r.text
                 for r in replies]
        self.assertEqual(set(names), {"Eicar-Test.UNOFFICIAL", "Eicar-Swapped.UNOFFICIAL"}, names)
        # Once the new engine answers, the old never does again.
        first_new = names.index("Eicar-Swapped.UNOFFICIAL")
        self.assertNotIn("Eicar-Test.UNOFFICIAL", names[first_new + 4 * 2:])
        self.assertEqual(self.backend.message_count(), 0)
        self.sluice.wait_log(r"loaded \(the database directory changed\)")

    def test_a_database_that_fails_to_load_keeps_the_engine_loaded_before(self):
        port = self.relay(check_interval="200ms")
        self.wait_loaded(1)
        self.write_db("this is not a signature\n", name="broken.ndb")
        self.sluice.wait_log(r"load \(the database directory changed\) failed, "
                             r"the loaded engine stays", RELOAD_TIMEOUT)
        self.assertVirus(self.send(port, plain_message(EICAR)))

    def test_sighup_reloads_the_database_and_a_broken_one_refuses_the_reload(self):
        port = self.relay(check_interval=0)
        self.wait_loaded(1)
        self.write_db(ndb_line("Eicar-Hup"))
        self.sluice.proc.send_signal(signal.SIGHUP)
        self.sluice.wait_log(r"master: reload done", RELOAD_TIMEOUT)
        self.sluice.wait_log(r"loaded \(configuration reload\)")
        self.assertVirus(self.send(port, plain_message(EICAR)), "Eicar-Hup")

        self.write_db("broken\n", name="broken.ndb")
        self.sluice.proc.send_signal(signal.SIGHUP)
        self.sluice.wait_log(r"reload refused|master: reload error", RELOAD_TIMEOUT)
        self.assertVirus(self.send(port, plain_message(EICAR)), "Eicar-Hup")

    def test_stop_the_world_reload_frees_the_old_engine_first_and_scans_go_on(self):
        port = self.relay(check_interval="200ms", reload="stop")
        self.wait_loaded(1)
        self.write_db(ndb_line("Eicar-Stop"))
        st = os.stat(os.path.join(self.db, "test.ndb"))
        os.utime(os.path.join(self.db, "test.ndb"), (st.st_atime + 2, st.st_mtime + 2))
        self.wait_loaded(2)
        self.assertVirus(self.send(port, plain_message(EICAR)), "Eicar-Stop")


class ClamavConfigTest(ClamavBase):
    def check(self, **settings):
        self.write_entry(**settings)
        plugin_dir = os.path.join(os.path.dirname(sluice_bin()), "plugins")
        return run_sluice_check(self.workdir, base_config(
            self.workdir, free_port(), [pool("a", [free_port()])], [("a.example", "a")],
            plugin_dir=plugin_dir), timeout=START_TIMEOUT)

    def test_an_empty_database_directory_refuses_to_start(self):
        os.remove(os.path.join(self.db, "test.ndb"))
        rc, out = self.check()
        self.assertNotEqual(rc, 0, out)
        self.assertIn("30-clamav", out)
        self.assertRegex(out, r"database directory .* is empty \(get a database with freshclam\)")

    def test_unknown_and_bad_settings_are_refused_with_their_line(self):
        for settings, what in (({"on_virus": "ignore"}, "on_virus"),
                               ({"max_recursion": 1000}, "max_recursion"),
                               ({"clamd": ["127.0.0.1:3310"]}, "clamd"),
                               ({"mode": "clamd", "clamd": ["localhost"]}, "clamd"),
                               ({"on_virus": "header", "header": ""}, "on_virus"),
                               ({"temp_dir": "relative/tmp"}, "temp_dir"),
                               ({"temp_dir": "/nonexistent/sluice-tmp"}, "temp_dir"),
                               ({"mode": "clamd", "clamd": ["127.0.0.1:3310"],
                                 "temp_dir": "/tmp"}, "temp_dir"),
                               ({"max_scan_sise": "1M"}, "max_scan_sise")):
            rc, out = self.check(**settings)
            self.assertNotEqual(rc, 0, out)
            self.assertIn(what, out)

    def test_the_shipped_entry_is_off_and_every_option_valid_once_a_database_exists(self):
        source = os.environ.get("SLUICE_SOURCE_DIR", os.path.join(HERE, "..", ".."))
        with open(os.path.join(source, "conf.d", "30-clamav.conf")) as f:
            shipped = f.read()
        self.assertRegex(shipped, r"(?m)^enabled = false;$")
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        plugin_dir = os.path.join(os.path.dirname(sluice_bin()), "plugins")
        config = base_config(self.workdir, free_port(), [pool("a", [free_port()])],
                             [("a.example", "a")], plugin_dir=plugin_dir)
        enabled = shipped.replace("enabled = false;", "enabled = true;").replace(
            '"/var/lib/clamav"', '"%s"' % self.db)
        for text in (shipped, enabled):
            with open(os.path.join(conf_dir, "30-clamav.conf"), "w") as f:
                f.write(text)
            rc, out = run_sluice_check(self.workdir, config, timeout=START_TIMEOUT)
            self.assertEqual(rc, 0, out)

    def test_sluice_check_reports_the_virus_and_the_reply(self):
        backend = self.start_backend("a")
        self.write_entry()
        port = free_port()
        s = self.start_sluice(self.config(port, backend.port))
        eml = os.path.join(self.workdir, "eicar.eml")
        with open(eml, "wb") as f:
            f.write(plain_message(EICAR))
        check_bin = os.path.join(os.path.dirname(sluice_bin()), "sluice-check")
        out = subprocess.run([check_bin, "-c", s.conf_path, "--client", "127.0.0.1",
                              "--helo", "client.test", "--from", SENDER, "--rcpt", RCPT,
                              "--message", eml], capture_output=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 1, text + out.stderr.decode())
        self.assertRegex(text, r"eom\s+30-clamav\s+reject: Virus found: Eicar-Test\.UNOFFICIAL")
        self.assertRegex(text, r"<<< 554 5\.7\.0 Virus found: Eicar-Test\.UNOFFICIAL")
        self.assertEqual(backend.connection_count(), 0)


class Clamd:
    """A private clamd on 127.0.0.1 with the given database directory."""

    def __init__(self, workdir, db):
        self.dir = os.path.join(workdir, "clamd")
        os.makedirs(self.dir)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "clamd.conf")
        with open(self.conf, "w") as f:
            f.write("Foreground yes\nDatabaseDirectory %s\nTCPSocket %d\nTCPAddr 127.0.0.1\n"
                    "LocalSocket %s/clamd.sock\nPidFile %s/clamd.pid\nLogFile %s/clamd.log\n"
                    "TemporaryDirectory %s\n"
                    % (db, self.port, self.dir, self.dir, self.dir, self.dir))
        self.out = open(os.path.join(self.dir, "out.txt"), "wb")
        self.proc = subprocess.Popen([CLAMD, "-c", self.conf], stdout=self.out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self.ping, START_TIMEOUT, interval=0.1, what="clamd to answer PING")

    @property
    def socket_path(self):
        return os.path.join(self.dir, "clamd.sock")

    def ping(self):
        if self.proc.poll() is not None:
            raise AssertionError("clamd exited: %s" % open(self.out.name).read())
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"zPING\0")
                return s.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()


@unittest.skipUnless(os.path.exists(CLAMD), "clamd (clamav-daemon) is not installed")
class ClamdModeTest(ClamavBase):
    def setUp(self):
        super().setUp()
        self.clamd = Clamd(self.workdir, self.db)
        self.addCleanup(self.clamd.stop)

    def test_clamd_instream_refuses_eicar_and_relays_clean_mail_byte_exact(self):
        port = self.relay(mode="clamd", clamd=["127.0.0.1:%d" % self.clamd.port], header="")
        self.assertVirus(self.send(port, attachment_message(zip_of([("e.com", EICAR)]))))
        clean = plain_message(b"hello\r\n.dot\r\n" + b"y" * 200000)
        self.assertReply(self.send(port, clean), 250)
        self.assertEqual(self.backend.wait_messages(1)[0]["data"], clean)

    def test_clamd_fails_over_to_the_next_address(self):
        dead = "127.0.0.1:%d" % free_port()
        port = self.relay(mode="clamd", clamd=[dead, self.clamd.socket_path],
                          clamd_timeout="2s")
        self.assertVirus(self.send(port, plain_message(EICAR)))
        self.sluice.wait_log(r"clamd failover: clamd %s: Connection refused" % re.escape(dead))

    def test_a_silent_clamd_is_given_up_after_clamd_timeout_and_the_next_answers(self):
        # Accepts and reads, never answers.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        self.addCleanup(silent.close)
        port = self.relay(mode="clamd", clamd_timeout="1s",
                          clamd=["127.0.0.1:%d" % silent.getsockname()[1],
                                 "127.0.0.1:%d" % self.clamd.port])
        t0 = time.monotonic()
        self.assertVirus(self.send(port, plain_message(EICAR)))
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 1.0)
        self.assertLess(elapsed, 1.0 + 2.0)
        self.sluice.wait_log(r"clamd failover: clamd 127\.0\.0\.1:\d+: Connection timed out")

    def test_no_clamd_answering_tempfails_by_default(self):
        port = self.relay(mode="clamd", clamd=["127.0.0.1:%d" % free_port()])
        reply = self.send(port, plain_message(b"hello"))
        self.assertReply(reply, 451, "4.3.0")
        self.assertEqual(self.backend.message_count(), 0)
        self.sluice.wait_log(r"scan failed: clamd 127\.0\.0\.1:\d+: Connection refused")


if __name__ == "__main__":
    unittest.main()
