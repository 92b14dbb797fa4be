"""Cut-through DATA: when no plugin reads the message at its end (no eom
hook), sluice sends DATA to the backend at the client's DATA and the
message while it arrives; the client's 354 is still sluice's own. A message
that turns bad (a NUL, a bare newline under reject, over the size limit)
or a client that leaves mid-body closes the backend connection without the
final dot, so the backend discards what it got; the client gets the same
reply as with a stored message, and 250 only when the backend said 250.
With an eom hook the message is stored and forwarded as before.

The backend here is a raw socket server that records the body bytes as
they arrive, so a test can see them before the client's final dot."""

import os
import smtplib
import socket
import threading
import time
import unittest

from sluice_harness import SluiceTestCase, pool, sluice_bin, wait_until, write_lua_entry

IO_TIMEOUT = 30.0
LINE = b"x" * 70 + b"\r\n"
HALF = LINE * 1500  # about 105 KiB: past any single read, under spool_memory
HEADER = b"Subject: streamed\r\n\r\n"
# sluice passes a streamed message on in pieces of 32 KiB or more (the rest
# at its end): this much of what the client sent may still be in sluice.
PIECE = 32 * 1024


class StreamBackend:
    """A minimal SMTP server on 127.0.0.1 recording, per connection, the
    commands and the body bytes as they arrive.

    data_reply: the answer to DATA (a 354 starts the body).
    refuse_after: once the body holds this many bytes, send refuse_reply and
    close the connection (a server giving up mid-body)."""

    def __init__(self, data_reply=b"354 go ahead", refuse_after=None,
                 refuse_reply=b"451 4.3.0 out of space", unknown=(), data_without_rcpt=False,
                 close_after_rcpts=None, pipelining=True):
        self.data_reply = data_reply
        # Without PIPELINING it enforces lock-step as Exim does: a command
        # that arrives before the reply to the one before it gets "554 SMTP
        # synchronization error" and the connection closes.
        self.pipelining = pipelining
        # The first connection closes right after its answer to this many
        # RCPTs (a server restarting, or at its own limit, mid-transaction).
        self.close_after_rcpts = close_after_rcpts
        # RCPT to these gets 550; DATA with no recipient taken gets 554
        # (unless data_without_rcpt: a broken server that starts a message).
        self.unknown = {u.encode() for u in unknown}
        self.data_without_rcpt = data_without_rcpt
        self.refuse_after = refuse_after
        self.refuse_reply = refuse_reply
        self.lock = threading.Lock()
        self.conns = []
        self.stopping = False
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def close(self):
        self.stopping = True
        for t in list(self.threads):
            t.join(IO_TIMEOUT)
        self.listener.close()

    def _accept(self):
        deadline = time.monotonic() + 600
        while not self.stopping and time.monotonic() < deadline:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            rec = {"commands": [], "chunks": [], "body": bytearray(), "messages": [],
                   "closed": False}
            with self.lock:
                self.conns.append(rec)
            t = threading.Thread(target=self._serve, args=(sock, rec), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock, rec):
        sock.settimeout(0.2)
        try:
            sock.sendall(b"220 stream.test ESMTP\r\n")
            self._converse(sock, rec)
        except OSError:
            pass
        finally:
            with self.lock:
                rec["closed"] = True
            sock.close()

    def _converse(self, sock, rec):
        buf = b""
        in_body = False
        received = 0  # recv calls with data: commands of one write share one
        rcpts = 0
        answered_rcpts = 0
        deadline = time.monotonic() + 300
        while not self.stopping and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return
            received += 1
            if in_body:
                with self.lock:
                    rec["body"] += chunk
                    body = bytes(rec["body"])
                end = (b"\r\n" + body).find(b"\r\n.\r\n")
                if end < 0:
                    if self.refuse_after is not None and len(body) >= self.refuse_after:
                        sock.sendall(self.refuse_reply + b"\r\n")
                        return
                    continue
                with self.lock:
                    rec["messages"].append(body[:end])
                    rec["body"] = bytearray()
                buf = body[end + 3:]
                in_body = False
                sock.sendall(b"250 2.0.0 queued\r\n")
            else:
                buf += chunk
            while not in_body and b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                with self.lock:
                    rec["commands"].append(line.decode("latin-1"))
                    rec["chunks"].append(received)
                verb = line.split(b" ")[0].upper()
                if not self.pipelining and buf:
                    sock.sendall(b"554 5.5.0 SMTP synchronization error\r\n")
                    return
                if verb == b"EHLO":
                    sock.sendall(b"250-stream.test\r\n" +
                                 (b"250-PIPELINING\r\n" if self.pipelining else b"") +
                                 b"250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    rcpts = 0
                    sock.sendall(b"250 ok\r\n")
                elif verb == b"RCPT":
                    taken = line[8:].strip(b"<>").lower() not in self.unknown
                    rcpts += taken
                    sock.sendall(b"250 ok\r\n" if taken else b"550 5.1.1 no such user\r\n")
                    answered_rcpts += 1
                    with self.lock:
                        first = rec is self.conns[0]
                    if first and answered_rcpts == self.close_after_rcpts:
                        return
                elif verb == b"DATA" and rcpts == 0 and not self.data_without_rcpt:
                    sock.sendall(b"554 5.5.1 no valid recipients\r\n")
                elif verb == b"DATA":
                    sock.sendall(self.data_reply + b"\r\n")
                    if self.data_reply.startswith(b"354"):
                        in_body = True
                        with self.lock:
                            rec["body"] += buf
                        buf = b""
                elif verb == b"QUIT":
                    sock.sendall(b"221 bye\r\n")
                    return
                else:
                    sock.sendall(b"250 ok\r\n")

    # ---- what the tests read ----

    def connection_count(self):
        with self.lock:
            return len(self.conns)

    def received(self, i=-1):
        """Body bytes of the message in progress on connection i."""
        with self.lock:
            return bytes(self.conns[i]["body"]) if self.conns else b""

    def messages(self):
        with self.lock:
            return [m for c in self.conns for m in c["messages"]]

    def closed(self, i=-1):
        with self.lock:
            return bool(self.conns) and self.conns[i]["closed"]

    def commands(self, i=-1):
        with self.lock:
            return list(self.conns[i]["commands"]) if self.conns else []

    def arrivals(self, i=-1):
        """(command, number of the recv it came in) on connection i."""
        with self.lock:
            return list(zip(self.conns[i]["commands"], self.conns[i]["chunks"]))


class CutThroughTest(SluiceTestCase):

    def relay(self, backend, **overrides):
        overrides.setdefault("threads", 1)
        return self.start_relay([pool("a", [backend.port], xclient=False)],
                                [("a.example", "a")], **overrides)

    def stream_backend(self, **kwargs):
        b = StreamBackend(**kwargs)
        self.addCleanup(b.close)
        return b

    def half_at_backend(self, b, port):
        """A client past its 354 whose first half of the message the
        backend already holds."""
        c = self.begin_message(port)
        c.send(HEADER + HALF)
        self.wait_received(b, HEADER + HALF, "the first half at the backend")
        return c

    def begin_message(self, port):
        """A raw client past its DATA's 354 (sluice's own)."""
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        return c

    def wait_received(self, b, sent, what):
        """Until the backend holds all of sent but the last piece."""
        wait_until(lambda: len(b.received()) >= len(sent) - PIECE, 20, what=what)
        self.assertTrue(sent.startswith(b.received()))

    def test_backend_has_the_first_part_before_the_final_dot_and_the_message_arrives_intact(self):
        b = self.stream_backend()
        _, port = self.relay(b)
        c = self.half_at_backend(b, port)
        self.assertEqual(b.messages(), [])
        rest = b"..dot-stuffed line stays stuffed\r\n" + HALF
        c.send(rest + b".\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertEqual(b.messages(), [HEADER + HALF + rest])
        self.assertReply(c.cmd("QUIT"), 221)

    def test_client_gone_mid_body_closes_the_backend_without_a_dot_and_the_next_session_delivers(self):
        b = self.stream_backend()
        _, port = self.relay(b)
        c = self.half_at_backend(b, port)
        c.close()
        wait_until(lambda: b.closed(0), 10, what="the backend connection closed")
        self.assertEqual(b.messages(), [])
        self.assertNotIn(b"QUIT", b.received(0))
        self.assertNotIn("QUIT", b.commands(0))
        with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
            self.assertEqual(s.sendmail("s@x.example", ["r@a.example"], HEADER + b"next\r\n"), {})
        self.assertEqual(b.messages(), [HEADER + b"next\r\n"])
        self.assertEqual(b.connection_count(), 2)

    def refused_mid_body(self, bad, code, esc, **overrides):
        """Sends a clean first half, then bad (which carries the marker
        BAD-PART), more text and the dot: the client gets code, the backend
        connection is closed without the dot, and nothing from the bad part
        on reaches the backend."""
        b = self.stream_backend()
        _, port = self.relay(b, **overrides)
        c = self.half_at_backend(b, port)
        c.send(bad)
        c.send(b"AFTER-BAD\r\n" + HALF + b".\r\n")
        self.assertReply(c.read_reply(), code, esc)
        wait_until(lambda: b.closed(0), 10, what="the backend connection closed")
        got = b.received(0)
        self.assertEqual(b.messages(), [])
        self.assertNotIn(b"BAD-PART", got)
        self.assertNotIn(b"AFTER-BAD", got)
        self.assertNotIn(b"\0", got)
        self.assertTrue(got.startswith(HEADER + HALF[:1000]))
        # The session goes on: sluice answers the next command.
        self.assertReply(c.cmd("RSET"), 250)
        return c

    def test_nul_mid_body_never_reaches_the_backend_and_nothing_is_delivered(self):
        self.refused_mid_body(b"BAD-PART \0 here\r\n", 554, "5.6.0")

    def test_bare_lf_mid_body_under_reject_never_reaches_the_backend(self):
        self.refused_mid_body(b"BAD-PART bare\n.\r\nMAIL FROM:<smuggled@x>\r\n", 550, "5.5.2")

    def test_over_the_size_limit_mid_body_gets_552_and_nothing_is_delivered(self):
        limit = len(HEADER + HALF) + 10000
        self.refused_mid_body(b"BAD-PART" + b"y" * 20000 + b"\r\n", 552, "5.3.4",
                              limits={"max_message_size": limit, "max_recipients": 100})

    def test_backend_refusing_data_answers_the_client_after_its_final_dot(self):
        b = self.stream_backend(data_reply=b"554 5.7.1 not from you")
        _, port = self.relay(b)
        c = self.begin_message(port)
        c.send(HEADER + HALF)
        wait_until(lambda: "DATA" in b.commands(), 10, what="DATA at the backend")
        time.sleep(0.3)
        c.send(HALF + b".\r\n")
        reply = c.read_reply()
        self.assertReply(reply, 554, "5.7.1", "not from you")
        self.assertEqual(b.messages(), [])
        # The backend connection is still in step: the next message goes through it.
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@a.example>"), 250)

    def test_backend_answering_451_and_closing_mid_body_gives_a_4xx_never_250(self):
        b = self.stream_backend(refuse_after=50000)
        _, port = self.relay(b)
        c = self.begin_message(port)
        c.send(HEADER + HALF)
        wait_until(lambda: b.closed(0), 10, what="the backend giving up")
        c.send(HALF + b".\r\n")
        reply = c.read_reply()
        self.assertEqual(reply.code // 100, 4, reply)
        self.assertEqual(b.messages(), [])

    def test_kept_connection_serves_two_streamed_messages_in_a_row(self):
        b = self.stream_backend()
        _, port = self.relay(b)
        for n in range(2):
            with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
                body = HEADER + b"message %d\r\n" % n + HALF
                self.assertEqual(s.sendmail("s%d@x.example" % n, ["r@a.example"], body), {})
            time.sleep(0.3)
        self.assertEqual(b.messages(), [HEADER + b"message %d\r\n" % n + HALF for n in range(2)])
        self.assertEqual(b.connection_count(), 1)
        self.assertEqual([v for v in b.commands(0) if v.upper().startswith("MAIL")],
                         ["MAIL FROM:<s0@x.example>", "MAIL FROM:<s1@x.example>"])

    def test_an_eom_hook_keeps_store_and_forward(self):
        write_lua_entry(self.workdir, "eom",
                        'sluice.on("eom", function(s) s:add_header("X-Seen", "whole") end)\n')
        b = self.stream_backend()
        _, port = self.relay(b, plugin_dir=plugin_dir())
        c = self.begin_message(port)
        c.send(HEADER + HALF)
        time.sleep(1.0)
        self.assertNotIn("DATA", b.commands())
        self.assertEqual(b.received(), b"")
        c.send(b".\r\n")
        self.assertReply(c.read_reply(), 250)
        [m] = b.messages()
        self.assertTrue(m.startswith(b"X-Seen: whole\r\n"), m[:200])
        self.assertTrue(m.endswith(HALF))


    def test_a_lua_script_without_an_eom_function_still_streams(self):
        """The Lua bridge tells the host which hooks its script handles: a
        script with only a rcpt function adds no eom hook, so the message
        still streams (and the rcpt function still runs)."""
        write_lua_entry(self.workdir, "rcpt",
                        'sluice.on("rcpt", function(s)\n'
                        '  if s:rcpt():find("^nobody@") then\n'
                        '    return sluice.reject(550, "5.1.1", "no")\n'
                        '  end\n'
                        'end)\n')
        b = self.stream_backend()
        _, port = self.relay(b, plugin_dir=plugin_dir())
        with smtplib.SMTP("127.0.0.1", port, timeout=IO_TIMEOUT) as s:
            s.ehlo("client.example")
            s.mail("s@x.example")
            self.assertEqual(s.rcpt("nobody@a.example")[0], 550)
        c = self.half_at_backend(b, port)
        c.send(b".\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertEqual(b.messages(), [HEADER + HALF])

    # ---- DATA pipelined by the client goes with the last RCPT ----

    PIPELINED = b"MAIL FROM:<s@x.example>\r\nRCPT TO:<%s>\r\nDATA\r\n"

    def pipelined(self, c, rcpt="r@a.example", codes=(250, 250, 354)):
        c.send(self.PIPELINED % rcpt.encode())
        self.assertEqual([c.read_reply().code for _ in codes], list(codes))

    def test_pipelined_data_reaches_the_backend_in_one_write_with_mail_and_rcpt(self):
        b = self.stream_backend()
        _, port = self.relay(b)
        c = self.open_session(port)
        self.pipelined(c)
        c.send(HEADER + b"one round trip less\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertEqual(b.messages(), [HEADER + b"one round trip less\r\n"])
        group = [(cmd.split(" ")[0], n) for cmd, n in b.arrivals(0)
                 if cmd.split(" ")[0] in ("MAIL", "RCPT", "DATA")]
        self.assertEqual([cmd for cmd, _ in group], ["MAIL", "RCPT", "DATA"])
        self.assertEqual(len({n for _, n in group}), 1, group)

    def test_data_sent_one_command_at_a_time_goes_on_its_own(self):
        b = self.stream_backend()
        _, port = self.relay(b)
        c = self.begin_message(port)
        c.send(HEADER + b".\r\n")
        self.assertReply(c.read_reply(), 250)
        chunk = dict(b.arrivals(0))
        self.assertNotEqual(chunk["RCPT TO:<r@a.example>"], chunk["DATA"])

    def test_a_body_sent_before_the_354_is_still_relayed_whole(self):
        b = self.stream_backend()
        _, port = self.relay(b)
        c = self.open_session(port)
        c.send(self.PIPELINED % b"r@a.example" + HEADER + HALF + b".\r\n")
        self.assertEqual([c.read_reply().code for _ in range(4)], [250, 250, 354, 250])
        self.assertEqual(b.messages(), [HEADER + HALF])

    def test_pipelined_data_behind_a_refused_recipient_leaves_the_backend_in_step(self):
        b = self.stream_backend(unknown=["nobody@a.example"])
        _, port = self.relay(b)
        c = self.open_session(port)
        self.pipelined(c, "nobody@a.example", (250, 550, 554))
        self.assertReply(c.cmd("RSET"), 250)
        self.pipelined(c)
        c.send(HEADER + b"second\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertEqual(b.messages(), [HEADER + b"second\r\n"])

    def test_a_backend_that_takes_data_with_no_recipient_is_closed_without_a_message(self):
        # A broken server answers 354 though it refused every recipient:
        # the connection is in a message, and only closing ends it unsent.
        b = self.stream_backend(unknown=["nobody@a.example"], data_without_rcpt=True)
        _, port = self.relay(b)
        c = self.open_session(port)
        self.pipelined(c, "nobody@a.example", (250, 550, 554))
        wait_until(lambda: b.closed(0), 10, what="the first backend connection closed")
        self.assertReply(c.cmd("RSET"), 250)
        self.pipelined(c)
        c.send(HEADER + b"second\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        # Nothing of the second transaction went into the first's message.
        self.assertEqual(b.messages(), [HEADER + b"second\r\n"])
        self.assertEqual(b.connection_count(), 2)

    def test_a_backend_lost_between_recipients_never_loses_an_accepted_one(self):
        # The backend takes the first recipient, then closes its connection
        # (a restart, its own limit). The next recipient must not open a new
        # backend transaction without the first: a 250 at the end would
        # then cover a recipient nobody has.
        b = self.stream_backend(close_after_rcpts=1)
        sluice, port = self.relay(b)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<one@a.example>"), 250)
        wait_until(lambda: b.closed(0), 10, what="the first backend connection closed")
        time.sleep(0.5)  # sluice has read the close
        # The transaction fails for now: the client keeps the message and
        # tries again later, with every recipient.
        self.assertReply(c.cmd("RCPT TO:<two@a.example>"), 451)
        self.assertReply(c.cmd("DATA"), 451)
        self.assertEqual(b.messages(), [])
        self.assertEqual(b.connection_count(), 1, "no new backend transaction without one@")
        sluice.wait_log("backend lost between recipients")
        # A new transaction in the same session is relayed on a new connection.
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<one@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(HEADER + b"again\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertEqual(b.messages(), [HEADER + b"again\r\n"])

    def test_a_backend_without_pipelining_gets_rset_and_the_next_mail_one_at_a_time(self):
        # The client pipelines RSET and its next transaction (RFC 2920 lets
        # it: sluice offers PIPELINING). The backend does not offer it, so
        # the RSET sluice relays must be answered before MAIL goes: a
        # server enforcing lock-step (Exim) would otherwise refuse the
        # group and close, and the recipient would get 451.
        b = self.stream_backend(pipelining=False, unknown=["gone@a.example"])
        _, port = self.relay(b)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<gone@a.example>"), 550)
        c.send(b"RSET\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<r@a.example>\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(HEADER + b"after rset\r\n.\r\n")
        self.assertReply(c.read_reply(), 250)
        self.assertEqual(b.messages(), [HEADER + b"after rset\r\n"])
        self.assertEqual(b.connection_count(), 1)

    def test_a_data_hook_keeps_data_for_the_client_s_own_turn(self):
        write_lua_entry(self.workdir, "data", 'sluice.on("data", function(s) end)\n')
        b = self.stream_backend()
        _, port = self.relay(b, plugin_dir=plugin_dir())
        c = self.open_session(port)
        self.pipelined(c)
        c.send(HEADER + b".\r\n")
        self.assertReply(c.read_reply(), 250)
        chunk = dict(b.arrivals(0))
        self.assertNotEqual(chunk["RCPT TO:<r@a.example>"], chunk["DATA"])


class HeaderRemovalTest(SluiceTestCase):
    """A plugin that removes every field of a name (a scanner's or a policy's
    header the client may forge, as clamav's X-Virus-Scanned) must not let
    one through because sluice's header parser stopped early: at a field
    with blanks before its colon (RFC 5322 obs-optional, a field to MTAs and
    mail readers), or at its caps on the number of fields."""

    relay = CutThroughTest.relay
    stream_backend = CutThroughTest.stream_backend
    begin_message = CutThroughTest.begin_message

    TAG = ('sluice.on("eom", function(s)\n'
           '  s:remove_header("X-Tag")\n'
           '  s:add_header("X-Tag", "genuine")\n'
           'end)\n')

    def send_header(self, header):
        write_lua_entry(self.workdir, "tag", self.TAG)
        b = self.stream_backend()
        _, port = self.relay(b, plugin_dir=plugin_dir())
        c = self.begin_message(port)
        c.send(header + b"X-Tag: forged\r\n\r\nbody\r\n.\r\n")
        return b, c.read_reply()

    def test_a_field_with_a_blank_before_its_colon_does_not_hide_the_fields_after_it(self):
        b, reply = self.send_header(b"Subject : spaced\r\n")
        self.assertReply(reply, 250)
        [m] = b.messages()
        self.assertNotIn(b"forged", m)
        self.assertTrue(m.startswith(b"X-Tag: genuine\r\nSubject : spaced\r\n"), m[:200])

    def test_a_forged_field_past_the_field_cap_is_never_relayed(self):
        b, reply = self.send_header(b"".join(b"X-Pad-%d: x\r\n" % i for i in range(1000)))
        self.assertReply(reply, 552, "5.3.4")
        self.assertIn("header too big", reply.text)
        self.assertEqual(b.messages(), [])


def plugin_dir():
    return os.path.join(os.path.dirname(sluice_bin()), "plugins")


if __name__ == "__main__":
    unittest.main()
