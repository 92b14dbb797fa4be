"""Smaller protocol points (issue 9, section 5), against the daemon with a
recording backend and, for the backend's side, evil_backend.py:

- a NUL byte in a message is refused with 554 5.6.0 in both bare-newline
  modes, however the bytes arrive, and never reaches the backend (a backend
  that drops NULs would see "<CRLF><NUL>.<CRLF>" as an end of data);
  NUL in a command line is refused and never relayed;
- the size limit counts the message as RFC 1870 does (unstuffed): a message
  of exactly the limit passes however many lines start with '.', one byte
  more gets 552 5.3.4;
- a backend reply of a class the command may not get (1xx, 3xx but to DATA,
  2xx to DATA, 6xx and other codes outside RFC 5321's grammar) is a protocol
  violation: 451 4.4.2 to the client, the backend connection closed and its
  slot released, and a log line with the session id naming the command and
  the reply.

Run under ASan: each test ends by checking the log holds no sanitizer report.
"""

import re
import time
import unittest

import os

from sluice_harness import (RawClient, Sluice, base_config, free_port, make_worker_dir, pool,
                            sluice_bin, wait_until, write_lua_entry)
from test_hostile import (NO_LIMITS, SANITIZER_PATTERN, WELL_FORMED_COMMAND, EvilBackend,
                          HostileTestCase, limits)

SENDER = "sender@x.example"
SMUGGLED = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@a.example>\r\nDATA\r\n" \
           b"From: ceo@a.example\r\n\r\nsmuggled\r\n"
MODES = ("reject", "normalize")


class ProtocolTestCase(HostileTestCase):
    def relay_mode(self, mode, **conf):
        """A recording backend (its own, per mode) behind a new sluice in one
        data.bare_newline mode, with a small in-memory spool."""
        b = self.start_backend("a-" + mode)
        workdir = os.path.join(self.workdir, "sluice-" + mode)  # its own log
        os.makedirs(workdir)
        conf.setdefault("connections", NO_LIMITS)
        conf.setdefault("limits", limits())
        conf.setdefault("data", {"bare_newline": mode, "spool_memory": "64K",
                                 "spool_dir": make_worker_dir(os.path.join(workdir, "spool"))})
        port = free_port()
        self.sluice = Sluice(workdir, base_config(
            workdir, port, [pool("a", [b.port], max_connections=2, wait="5s")],
            [("a.example", "a")], **conf))
        self.sluices.append(self.sluice)
        return b, port

    def session_id(self, client):
        """The id sluice logs this client's session under."""
        pattern = r" (\S+) connect from \S*\[127\.0\.0\.1\]:%d\b" % client.local_port
        line = self.sluice.wait_log(pattern)[-1]
        return re.search(pattern, line).group(1)

    def assert_logged(self, client, pattern):
        sid = re.escape(self.session_id(client))
        self.sluice.wait_log(r" %s .*%s" % (sid, pattern))

    def start_message(self, port, helo="proto.test"):
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO " + helo), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        return c

    def assert_quiet_and_stop(self):
        self.assertEqual(self.sluice.grep(SANITIZER_PATTERN), [])
        self.sluice.stop()
        self.assertEqual(self.sluice.grep(SANITIZER_PATTERN), [])


# --- NUL ----------------------------------------------------------------------

def spread(data, size):
    """data in pieces of size bytes."""
    return [data[i:i + size] for i in range(0, len(data), size)]


# name -> the message body as the client sends it (ending before ".\r\n"),
# and how it is sent: "whole", "bytes" (the NUL's neighbourhood a byte per
# segment) or "chunks" (7-byte segments)
NUL_MESSAGES = {
    "smuggled_end_crlf_nul_dot_crlf": (b"Subject: s\r\n\r\nbefore\r\n\x00.\r\n" + SMUGGLED,
                                       "whole"),
    "smuggled_end_split_bytewise": (b"Subject: s\r\n\r\nbefore\r\n\x00.\r\n" + SMUGGLED,
                                    "bytes"),
    "dot_nul_crlf": (b"Subject: s\r\n\r\nbefore\r\n.\x00\r\n" + SMUGGLED, "chunks"),
    "nul_first_byte": (b"\x00Subject: s\r\n\r\nbody\r\n", "whole"),
    "nul_dot_right_after_data": (b"\x00.\r\n" + SMUGGLED, "bytes"),
    "nul_before_a_bare_lf_dot": (b"Subject: s\r\n\r\nx\x00\n.\n" + SMUGGLED, "bytes"),
    "nul_right_before_the_end": (b"Subject: s\r\n\r\nbody\x00\r\n", "bytes"),
    "nul_in_a_header_name": (b"Subj\x00ect: s\r\n\r\nbody\r\n", "chunks"),
    "nul_only_line": (b"Subject: s\r\n\r\n\x00\r\nafter\r\n", "whole"),
    "nul_deep_in_a_spilled_message": (b"Subject: s\r\n\r\n" + b"y" * 76 + b"\r\n" * 1
                                      + (b"z" * 78 + b"\r\n") * 3000 + b"n\x00l\r\n"
                                      + (b"w" * 78 + b"\r\n") * 100, "whole"),
}


class NulInMessageTest(ProtocolTestCase):
    def send_body(self, c, body, how):
        if how == "whole":
            c.send(body)
            return
        if how == "chunks":
            for piece in spread(body, 7):
                c.send(piece)
            return
        at = body.index(b"\x00")
        c.send(body[:max(0, at - 3)])
        for byte in body[max(0, at - 3):at + 4]:
            time.sleep(0.005)
            c.send(bytes([byte]))
        c.send(body[at + 4:])

    def test_nul_anywhere_in_a_message_gets_554_5_6_0_in_both_modes_and_is_never_relayed(self):
        for mode in MODES:
            with self.subTest(mode=mode):
                b, port = self.relay_mode(mode)
                for name, (body, how) in NUL_MESSAGES.items():
                    with self.subTest(message=name):
                        c = self.start_message(port)
                        self.send_body(c, body, how)
                        c.send(b".\r\n")
                        self.assertReply(c.read_reply(), 554, "5.6.0")
                        self.assert_logged(c, "NUL")
                        # The session goes on: the next message is relayed.
                        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
                        self.assertReply(c.cmd("RCPT TO:<next@a.example>"), 250)
                        self.assertReply(c.cmd("DATA"), 354)
                        self.assertReply(c.cmd(b"Subject: clean\r\n\r\nok\r\n."), 250)
                        self.assertReply(c.cmd("QUIT"), 221)
                msgs = b.wait_messages(len(NUL_MESSAGES))
                time.sleep(0.3)
                self.assertEqual(b.message_count(), len(NUL_MESSAGES))
                for msg in msgs:
                    self.assertEqual(msg["rcpt_tos"], ["next@a.example"])
                    self.assertNotIn(b"\x00", msg["raw"])
                for line in b.commands():
                    self.assertRegex(line, WELL_FORMED_COMMAND)
                    self.assertNotIn("evil", line)
                    self.assertNotIn("victim", line)
                self.assert_quiet_and_stop()

    def test_nul_message_pipelined_with_the_next_transaction_answers_each_command(self):
        for mode in MODES:
            with self.subTest(mode=mode):
                b, port = self.relay_mode(mode)
                c = self.raw(port)
                c.read_reply()
                self.assertReply(c.cmd("EHLO pipe.test"), 250)
                c.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<u@a.example>\r\nDATA\r\n"
                       b"Subject: n\r\n\r\n\x00.\r\n" + SMUGGLED + b".\r\n"
                       b"MAIL FROM:<b@x.example>\r\nRCPT TO:<v@a.example>\r\nDATA\r\n"
                       b"Subject: clean\r\n\r\nok\r\n.\r\nQUIT\r\n")
                codes = [c.read_reply().code for _ in range(8)]
                self.assertEqual(codes, [250, 250, 354, 554, 250, 250, 354, 250])
                self.assertReply(c.read_reply(), 221)
                [msg] = b.wait_messages(1)
                self.assertEqual((msg["mail_from"], msg["rcpt_tos"]),
                                 ("b@x.example", ["v@a.example"]))
                self.assert_quiet_and_stop()

    def test_nul_after_the_end_of_data_is_the_next_command_and_the_message_passes(self):
        b, port = self.relay_mode("reject")
        c = self.start_message(port)
        c.send(b"Subject: fine\r\n\r\nok\r\n.\r\n\x00NOOP\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["data"], b"Subject: fine\r\n\r\nok\r\n")
        self.assert_quiet_and_stop()


class NulInCommandsTest(ProtocolTestCase):
    # Each with the NUL at the start, inside, and right before the CRLF.
    COMMANDS = ["EHLO nul.test", "HELO nul.test", "MAIL FROM:<a@x.example>",
                "RCPT TO:<u@a.example>", "DATA", "RSET", "NOOP", "QUIT", "VRFY u",
                "RCPT TO:<u@a.example> NOTIFY=NEVER", "MAIL FROM:<a@x.example> SIZE=10"]

    @staticmethod
    def variants(command):
        raw = command.encode()
        mid = raw.find(b" ") if b" " in raw else 2
        return [b"\x00" + raw, raw[:mid] + b"\x00" + raw[mid:], raw + b"\x00"]

    def test_nul_in_any_command_line_is_refused_and_changes_nothing(self):
        b, port = self.relay()
        for command in self.COMMANDS:
            # A session per command: max_errors would close a longer one.
            c = self.raw(port)
            c.read_reply()
            self.assertReply(c.cmd("EHLO ok.test"), 250)
            for line in self.variants(command):
                with self.subTest(line=line):
                    self.assertReply(c.cmd(line), 500, "5.5.2")
            # Nothing was started or ended: no sender yet, the session is open.
            self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 503)
            if command.startswith("RCPT") or command.startswith("DATA"):
                self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
                if command.startswith("DATA"):
                    self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
                for line in self.variants(command):
                    self.assertReply(c.cmd(line), 500, "5.5.2")
                self.assertReply(c.cmd("RSET"), 250)
            self.assertReply(c.cmd("QUIT"), 221)
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO ok.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(b"Subject: after\r\n\r\nok\r\n."), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["rcpt_tos"], ["u@a.example"])
        for line in b.commands():
            self.assertNotIn("\x00", line)
            self.assertRegex(line, WELL_FORMED_COMMAND)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assert_quiet_and_stop()


# --- size ---------------------------------------------------------------------

LIMIT = 20000


def dotted_content(size, line=b"."):
    """size bytes of message content whose lines (but the header's) all start
    with '.': line + CRLF repeated, the last line padded to fit exactly."""
    head = b"Subject: dots\r\n\r\n"
    unit = line + b"\r\n"
    count = (size - len(head) - 8) // len(unit)
    content = head + unit * count
    pad = size - len(content) - 3
    assert pad >= 0
    return content + b"." + b"p" * pad + b"\r\n"


def stuff(content):
    """RFC 5321 4.5.2: one more '.' on every line that starts with one."""
    lines = content.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


class SizeLimitTest(ProtocolTestCase):
    VARIANTS = {
        "lone_dot_lines": b".",
        "double_dot_lines": b"..",
        "dot_text_lines": b".text",
    }

    def send_content(self, port, content, chunks=None):
        c = self.start_message(port)
        wire = stuff(content) + b".\r\n"
        for piece in spread(wire, chunks) if chunks else [wire]:
            c.send(piece)
        reply = c.read_reply()
        self.assertReply(c.cmd("QUIT"), 221)
        return c, reply

    def test_message_of_exactly_the_limit_passes_and_one_byte_more_gets_552_in_both_modes(self):
        for mode in MODES:
            with self.subTest(mode=mode):
                b, port = self.relay_mode(mode, limits=limits(max_message_size=LIMIT))
                delivered = 0
                for name, line in self.VARIANTS.items():
                    for chunks in (None, 997):
                        with self.subTest(variant=name, chunks=chunks):
                            exact = dotted_content(LIMIT, line)
                            self.assertEqual(len(exact), LIMIT)
                            self.assertGreater(len(stuff(exact)), LIMIT + 1000)
                            c, reply = self.send_content(port, exact, chunks)
                            self.assertReply(reply, 250)
                            delivered += 1
                            msg = b.wait_messages(delivered)[-1]
                            self.assertEqual(msg["data"], exact)
                            self.assert_logged(c, r"\btx .* size=%d .*result=250\b" % LIMIT)

                            over = dotted_content(LIMIT + 1, line)
                            c, reply = self.send_content(port, over, chunks)
                            self.assertReply(reply, 552, "5.3.4")
                            self.assert_logged(c, r"\btx .* result=552\b")
                time.sleep(0.3)
                self.assertEqual(b.message_count(), delivered)
                self.assert_quiet_and_stop()

    def test_bare_lf_lines_are_counted_as_normalised_content(self):
        """In normalize mode a bare LF becomes CRLF: the size is the content
        the backend gets, one byte more per bare LF than the client sent."""
        b, port = self.relay_mode("normalize", limits=limits(max_message_size=LIMIT))
        exact = dotted_content(LIMIT)
        # The same content with bare LFs on the wire, after the first line
        # (a line after a bare LF is not un-stuffed, so it is sent as is).
        head, rest = exact.split(b"\r\n", 1)
        wire_lf = head + b"\n" + rest[:-2].replace(b"\r\n", b"\n") + b"\r\n"
        for extra, code in ((b"", 250), (b"q", 552)):
            with self.subTest(extra=extra):
                c = self.start_message(port)
                c.send(wire_lf[:-2] + extra + b"\r\n.\r\n")
                self.assertEqual(c.read_reply().code, code)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["data"], exact)
        self.assert_quiet_and_stop()

    def test_declared_size_of_exactly_the_limit_is_accepted_at_mail(self):
        b, port = self.relay(limits=limits(max_message_size=LIMIT))
        c = self.raw(port)
        c.read_reply()
        self.assertReply(c.cmd("EHLO size.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example> SIZE=%d" % LIMIT), 250)
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@x.example> SIZE=%d" % (LIMIT + 1)), 552, "5.3.4")
        self.assert_quiet_and_stop()


# --- backend replies of the wrong class ----------------------------------------

BODY = b"Subject: classes\r\n\r\nbody\r\n"

# (step, reply) the first connection of a backend answers wrongly; the client
# sees 451 4.4.2 at RCPT (the backend session could not be set up or refused
# to go on) or at the end of data.
AT_RCPT = [
    ("banner", "150 wait"), ("banner", "354 go ahead"), ("banner", "600 hello"),
    ("banner", "099 hello"), ("banner", "260 out of range"), ("banner", "220-hi\\r\\n354 hi"),
    ("EHLO", "354 go ahead"), ("EHLO", "150 x"), ("EHLO", "700 x"),
    ("EHLO", "334 VXNlcm5hbWU6"),
    ("XCLIENT", "354 go ahead"), ("XCLIENT", "150 x"), ("XCLIENT", "650 x"),
    ("MAIL", "354 go ahead"), ("MAIL", "150 x"), ("MAIL", "334 x"), ("MAIL", "699 x"),
    ("RCPT", "354 3.0.0 go ahead"), ("RCPT", "354 go ahead"), ("RCPT", "150 x"),
    ("RCPT", "334 x"), ("RCPT", "600 x"), ("RCPT", "999 x"), ("RCPT", "280 x"),
    ("RCPT", "250-ok\\r\\n354 go"), ("RCPT", "354-go\\r\\n354 ahead"),
    ("RCPT", "150-wait\\r\\n150 still waiting"),
]
AT_END = [
    ("DATA", "250 2.0.0 Ok: queued as NOTHING"), ("DATA", "221 bye"), ("DATA", "150 x"),
    ("DATA", "600 x"),
    ("end_of_data", "354 again"), ("end_of_data", "150 x"), ("end_of_data", "334 x"),
    ("end_of_data", "650 x"),
]
# Replies to what the client never waits for: it sees nothing, the backend
# connection is dropped all the same.
UNSEEN = [("RSET", "354 go ahead"), ("RSET", "150 x"), ("QUIT", "354 go ahead"),
          ("QUIT", "600 x")]

LOG_NAMES = {"banner": "banner", "EHLO": "EHLO", "XCLIENT": "XCLIENT", "MAIL": "MAIL",
             "RCPT": "RCPT", "DATA": "DATA", "end_of_data": "end of data", "RSET": "RSET",
             "NOOP": "NOOP", "QUIT": "QUIT"}


def domain_of(i):
    return "v%d.example" % i


class BackendReplyClassTest(ProtocolTestCase):
    """One sluice; one pool (max_connections = 1, short wait) per variant, each
    an evil backend whose first connection answers one step wrongly and whose
    later connections behave: the next transaction's delivery proves the slot
    was released."""

    def start_variants(self, variants, eom_hook=False, **pool_options):
        self.evil = []
        relay_options = {}
        if eom_hook:
            # An eom hook keeps store-and-forward (and its keepalive NOOPs
            # while the client uploads); without one the message streams.
            relay_options["plugin_dir"] = os.path.join(os.path.dirname(sluice_bin()), "plugins")
            self.write_eom_hook()
        for step, reply in variants:
            args = ("--at", step, "--reply", reply)
            if step == "XCLIENT":
                args += ("--xclient",)
            self.evil.append(EvilBackend(self.workdir, "bad_reply", args,
                                         name="bad_reply-%d" % len(self.evil)))
        self.addCleanup(lambda: [e.close() for e in self.evil])
        for e in self.evil:
            e.wait_ready()
        pools, routes = [], []
        for i, e in enumerate(self.evil):
            opts = {"max_connections": 1, "wait": "3s", "command_timeout": "5s",
                    "final_timeout": "5s", "xclient": variants[i][0] == "XCLIENT"}
            opts.update(pool_options)
            pools.append(pool("p%d" % i, [e.port], **opts))
            routes.append((domain_of(i), "p%d" % i))
        self.sluice, self.port = self.start_relay(pools, routes, connections=NO_LIMITS,
                                                  limits=limits(), **relay_options)

    def write_eom_hook(self):
        write_lua_entry(self.workdir, "eom", 'sluice.on("eom", function(s) end)\n')

    def transaction(self, i, slow=False):
        """Returns (client, RCPT reply, final reply or None)."""
        c = RawClient(self.port, timeout=20)
        self.clients.append(c)
        c.read_reply()
        self.assertReply(c.cmd("EHLO classes.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        rcpt = c.cmd("RCPT TO:<u@%s>" % domain_of(i))
        final = None
        if rcpt.code == 250:
            self.assertReply(c.cmd("DATA"), 354)
            if slow:
                c.send(BODY[:10])
                time.sleep(1.0)  # the backend's keep-alive NOOP goes out now
            c.send(BODY[10:] if slow else BODY)
            c.send(b".\r\n")
            final = c.read_reply()
        self.assertEqual(c.cmd("NOOP").code, 250)
        return c, rcpt, final

    def assert_violation_logged(self, c, step, reply):
        """The session's log line names the step and quotes the reply's first
        line."""
        first = reply.split("\\r\\n")[0]
        self.assert_logged(c, r"protocol violation: .* to %s: \"%s\"" % (
            re.escape(LOG_NAMES[step]), re.escape(first)))

    def assert_next_transaction_delivers(self, i):
        c, rcpt, final = self.transaction(i)
        self.assertReply(rcpt, 250)
        self.assertReply(final, 250)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertTrue(any(a["conn"] >= 2 for a in self.evil[i].events("accepted")))

    def run_variants(self, variants, at_rcpt, slow=False):
        for i, (step, reply) in enumerate(variants):
            with self.subTest(step=step, reply=reply):
                c, rcpt, final = self.transaction(i, slow)
                self.assertTrue(self.evil[i].events("bad_reply"), "the step was not reached")
                seen = rcpt if at_rcpt else final
                if not at_rcpt:
                    self.assertReply(rcpt, 250)
                self.assertIsNotNone(seen)
                self.assertReply(seen, 451, "4.4.2")
                self.assertEqual([a for a in self.evil[i].events("accepted") if a["conn"] == 1],
                                 [])
                self.assert_violation_logged(c, step, reply)
                self.assertReply(c.cmd("QUIT"), 221)
                self.assert_next_transaction_delivers(i)
        self.assert_quiet_and_stop()

    def test_wrong_class_to_banner_ehlo_xclient_mail_or_rcpt_gives_451_4_4_2_at_rcpt(self):
        self.start_variants(AT_RCPT)
        self.run_variants(AT_RCPT, at_rcpt=True)

    def test_wrong_class_to_data_or_end_of_data_gives_451_4_4_2_never_250(self):
        self.start_variants(AT_END)
        self.run_variants(AT_END, at_rcpt=False)

    def test_wrong_class_to_keepalive_noop_gives_451_4_4_2_at_end_of_data(self):
        variants = [("NOOP", "354 go ahead"), ("NOOP", "150 x"), ("NOOP", "600 x")]
        self.start_variants(variants, eom_hook=True, noop_interval="200")
        self.run_variants(variants, at_rcpt=False, slow=True)

    def test_wrong_class_to_rset_or_quit_closes_the_backend_and_the_next_session_delivers(self):
        # QUIT reaches a kept connection at its idle timeout: well inside the
        # 5 s this test waits for the bad reply (the default, 5 s, races it).
        self.start_variants(UNSEEN, idle_timeout="1s")
        for i, (step, reply) in enumerate(UNSEEN):
            with self.subTest(step=step, reply=reply):
                c = RawClient(self.port, timeout=20)
                self.clients.append(c)
                c.read_reply()
                self.assertReply(c.cmd("EHLO classes.test"), 250)
                self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
                self.assertReply(c.cmd("RCPT TO:<u@%s>" % domain_of(i)), 250)
                if step == "RSET":
                    self.assertReply(c.cmd("RSET"), 250)  # answered by sluice itself
                    self.assert_violation_logged(c, step, reply)
                    self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
                    self.assertReply(c.cmd("RCPT TO:<u@%s>" % domain_of(i)), 250)
                self.assertReply(c.cmd("DATA"), 354)
                self.assertReply(c.cmd(BODY + b"."), 250)
                self.assertReply(c.cmd("QUIT"), 221)
                wait_until(lambda: self.evil[i].events("bad_reply"), 5, what="the bad reply")
                self.assert_violation_logged(c, step, reply)
                if step == "RSET":
                    # The broken connection was dropped: the retry opened a new one.
                    self.assertEqual(len(self.evil[i].events("connect")), 2)
                started = time.monotonic()
                self.assert_next_transaction_delivers(i)
                self.assertLess(time.monotonic() - started, 3)
        self.assert_quiet_and_stop()


if __name__ == "__main__":
    unittest.main()
