"""Backend connections kept across client sessions: a connection idle after
its session serves the next session of the same pool on the same loop
thread, with the new client's identity only, within the pool's bounds; a
kept connection that fails is replaced unseen; PROXY pools never keep one.

Sessions run on one loop thread (threads = 1) so that the next session
meets the connection the last one left, except where a test says so."""

import os
import signal
import smtplib
import time
import unittest

from sluice_harness import SluiceTestCase, pool, wait_until

BODY = b"Subject: kept\r\n\r\nbody of message %d\r\n"
# How sluice names a kept connection's end under the next MAIL, per --kept-mail.
# (A reset may be read as an end: the kernel reports what it saw first.)
event_why = {"close": "closed the connection", "reset": "closed the connection|connection error",
             "421 4.4.2 Error: timeout exceeded": r"closing \(421\)"}
SETTLE = 0.5  # long enough for sluice to act on a session's end


def verbs_of(message):
    """The verbs the backend received on the message's connection, in order."""
    return [c.split(" ")[0].upper() for c in message["commands"]]


def last_index(verbs, verb):
    return len(verbs) - 1 - verbs[::-1].index(verb)


class BackendReuseTest(SluiceTestCase):
    def relay(self, *pools_, **overrides):
        overrides.setdefault("threads", 1)
        return self.start_relay(list(pools_), [("a.example", pools_[0]["name"])], **overrides)

    def send(self, port, n, helo="client.test", sender=None, rcpt=None):
        """One client session, one message; returns the client's port."""
        with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=30) as c:
            client_port = c.sock.getsockname()[1]
            refused = c.sendmail(sender or "s%d@x.example" % n, [rcpt or "r%d@a.example" % n],
                                 BODY % n)
            self.assertEqual(refused, {})
        return client_port

    def leave_transaction_open(self, port):
        """A client that quits between RCPT and DATA: its backend connection
        is kept with a transaction open."""
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<left@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@a.example>"), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        c.wait_closed()
        time.sleep(SETTLE)

    def quits(self, b):
        return [e for e in b.events("command") if e["line"].upper() == "QUIT"]

    def test_two_sessions_in_a_row_deliver_over_one_connection_with_their_own_envelope(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port]))
        self.send(port, 1)
        self.send(port, 2)
        m1, m2 = b.wait_messages(2)
        self.assertEqual(b.connection_count(), 1)
        self.assertEqual(m1["conn"], m2["conn"])
        self.assertEqual((m1["mail_from"], m1["rcpt_tos"]), ("s1@x.example", ["r1@a.example"]))
        self.assertEqual((m2["mail_from"], m2["rcpt_tos"]), ("s2@x.example", ["r2@a.example"]))
        self.assertEqual(m1["data"], BODY % 1)
        self.assertEqual(m2["data"], BODY % 2)
        self.assertEqual(self.quits(b), [])

    def test_kept_connection_without_xclient_sends_the_next_mail_with_no_ehlo_in_between(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port]))
        self.send(port, 1)
        self.send(port, 2)
        m1, m2 = b.wait_messages(2)
        self.assertEqual(m1["conn"], m2["conn"])
        # The connection's EHLO state is unchanged: one EHLO, at connect;
        # the second session's MAIL follows the first's end of data.
        verbs = verbs_of(m2)
        self.assertEqual(verbs.count("EHLO"), 1)
        self.assertEqual(verbs.count("RSET"), 0)
        self.assertEqual(verbs.count("MAIL"), 2)
        self.assertEqual(m2["mail_from"], "s2@x.example")
        self.assertEqual(m2["data"], BODY % 2)

    def test_kept_xclient_connection_still_gets_xclient_then_ehlo_before_the_next_mail(self):
        b = self.start_backend("a", "--xclient")
        _, port = self.relay(pool("a", [b.port]))
        self.send(port, 1, helo="first.test")
        self.send(port, 2, helo="second.test")
        m1, m2 = b.wait_messages(2)
        self.assertEqual(m1["conn"], m2["conn"])
        verbs = verbs_of(m2)
        second_mail = last_index(verbs, "MAIL")
        between = verbs[verbs.index("MAIL") + 1:second_mail]
        self.assertEqual([v for v in between if v in ("XCLIENT", "EHLO")], ["XCLIENT", "EHLO"])
        self.assertEqual(m2["ehlo_names"][-1], "second.test")

    def test_open_transaction_is_reset_before_the_next_mail_on_a_kept_connection_without_xclient(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port]))
        self.leave_transaction_open(port)
        self.send(port, 2)
        [m] = b.wait_messages(1)
        self.assertEqual(b.connection_count(), 1)
        verbs = verbs_of(m)
        self.assertEqual(verbs.count("EHLO"), 1)
        self.assertEqual(verbs.count("RSET"), 1)
        self.assertLess(verbs.index("RSET"), last_index(verbs, "MAIL"))
        self.assertEqual((m["mail_from"], m["rcpt_tos"]), ("s2@x.example", ["r2@a.example"]))

    def test_kept_xclient_connection_carries_every_attribute_of_the_new_client_only(self):
        b = self.start_backend("a", "--xclient")
        _, port = self.relay(pool("a", [b.port]))
        self.send(port, 1, helo="first.test")
        second_port = self.send(port, 2, helo="second.test")
        b.wait_messages(2)
        self.assertEqual(b.connection_count(), 1)
        first, second = [e["attrs"] for e in b.events("xclient")]
        self.assertEqual(set(second), set(first), "an attribute was not sent again")
        self.assertEqual(second["HELO"], "second.test")
        self.assertEqual(second["PORT"], str(second_port))
        m2 = b.messages()[1]
        self.assertEqual(m2["ehlo_names"][-1], "second.test")

    def test_open_transaction_is_reset_before_xclient_on_a_kept_connection(self):
        b = self.start_backend("a", "--xclient")
        _, port = self.relay(pool("a", [b.port]))
        self.leave_transaction_open(port)
        self.send(port, 2)
        [m] = b.wait_messages(1)
        self.assertEqual(b.connection_count(), 1)
        verbs = verbs_of(m)
        self.assertEqual(verbs.count("RSET"), 1)
        self.assertLess(verbs.index("RSET"), last_index(verbs, "XCLIENT"))
        self.assertEqual(m["mail_from"], "s2@x.example")

    def test_transaction_opened_after_a_client_rset_is_reset_before_the_next_session_on_a_kept_connection(self):
        # The client's RSET is relayed; the MAIL after it may leave before
        # RSET's reply is in: that reply does not end the newer transaction.
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port]))
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<first@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@a.example>"), 250)
        # Pipelined: the backend's MAIL leaves in the turn its RSET did.
        c.send(b"RSET\r\nMAIL FROM:<left@x.example>\r\nRCPT TO:<r@a.example>\r\n")
        for code in (250, 250, 250):
            self.assertReply(c.read_reply(), code)
        self.assertReply(c.cmd("QUIT"), 221)
        c.wait_closed()
        time.sleep(SETTLE)
        self.send(port, 2)
        [m] = b.wait_messages(1)
        self.assertEqual(b.connection_count(), 1)
        self.assertEqual((m["mail_from"], m["rcpt_tos"]), ("s2@x.example", ["r2@a.example"]))

    def test_backend_that_closed_the_idle_connection_the_next_client_still_delivers(self):
        b = self.start_backend("a", "--close-after-message")
        s, port = self.relay(pool("a", [b.port]))
        self.send(port, 1)
        self.send(port, 2)
        b.wait_messages(2)
        self.assertEqual(b.connection_count(), 2)

    def assert_delivered_again_unseen(self, how, event):
        """The server ends the kept connection just as the next client's
        MAIL (and its pipelined RCPT) arrive: they go again on a new
        connection, and the client sees only its 250s."""
        b = self.start_backend("a", "--kept-mail", how)
        s, port = self.relay(pool("a", [b.port]))
        self.send(port, 1)
        time.sleep(SETTLE)
        self.send(port, 2)
        m1, m2 = b.wait_messages(2)
        self.assertEqual((m1["conn"], m2["conn"]), (1, 2))
        self.assertEqual((m2["mail_from"], m2["rcpt_tos"]), ("s2@x.example", ["r2@a.example"]))
        self.assertEqual(verbs_of(m2), ["EHLO", "MAIL", "RCPT", "DATA"])
        self.assertEqual(len(b.events(event)), 1)
        s.wait_log(r"kept connection lost before its first reply \((%s)\): its commands go "
                   r"again on a new connection" % event_why[how])
        self.assertEqual(b.connection_count(), 2)

    def test_kept_connection_closed_under_the_next_mail_delivers_on_a_new_one_unseen(self):
        self.assert_delivered_again_unseen("close", "kept_mail_close")

    def test_kept_connection_reset_under_the_next_mail_delivers_on_a_new_one_unseen(self):
        self.assert_delivered_again_unseen("reset", "kept_mail_reset")

    def test_kept_connection_answering_421_to_the_next_mail_delivers_on_a_new_one_unseen(self):
        self.assert_delivered_again_unseen("421 4.4.2 Error: timeout exceeded", "kept_mail_reply")

    def test_new_connection_failing_under_the_commands_sent_again_answers_451(self):
        """Once only: when the new connection cannot be opened either, the
        client gets the 451 of a lost backend, not a wait."""
        b = self.start_backend("a", "--kept-mail", "exit")
        s, port = self.relay(pool("a", [b.port]))
        self.send(port, 1)
        time.sleep(SETTLE)
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<s2@x.example>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r2@a.example>"), 451)
        s.wait_log(r"its commands go again on a new connection")
        self.assertReply(c.cmd("QUIT"), 221)

    def test_unsolicited_421_on_an_idle_connection_closes_it_and_the_next_client_delivers(self):
        b = self.start_backend("a", "--idle-421-after", "0.2")
        s, port = self.relay(pool("a", [b.port], idle_timeout="1m"))
        self.send(port, 1)
        b.wait_event("idle_421")
        # No session owns an idle connection: its line carries no session
        # id ("-"), and names the last session that used it in the text.
        s.wait_log(r" info - backend \S+: idle connection \(last session [0-9A-F]{12}\) "
                   r"closed after an unsolicited reply: \"421 4\.4\.2")
        self.send(port, 2)
        m1, m2 = b.wait_messages(2)
        self.assertEqual((m1["conn"], m2["conn"]), (1, 2))
        self.assertEqual(self.quits(b), [])

    def test_kept_connection_answering_421_to_rset_is_replaced_unseen(self):
        b = self.start_backend("a", "--xclient", "--rset-reply", "421 4.3.2 going away")
        s, port = self.relay(pool("a", [b.port]))
        self.leave_transaction_open(port)
        self.send(port, 2)
        [m] = b.wait_messages(1)
        self.assertEqual(m["mail_from"], "s2@x.example")
        self.assertEqual(b.connection_count(), 2)
        s.wait_log(r"kept connection unusable")

    def test_idle_timeout_closes_a_kept_connection_with_quit(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port], idle_timeout="300ms"))
        self.send(port, 1)
        wait_until(lambda: self.quits(b), 5, what="QUIT after idle_timeout")
        b.wait_event("close")
        self.send(port, 2)
        b.wait_messages(2)
        self.assertEqual(b.connection_count(), 2)

    def test_max_transactions_ends_a_connection_after_that_many(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port], max_transactions=2))
        for n in range(1, 5):
            self.send(port, n)
        msgs = b.wait_messages(4)
        self.assertEqual([m["conn"] for m in msgs], [1, 1, 2, 2])
        wait_until(lambda: len(self.quits(b)) == 2, 5, what="QUIT after 2 transactions each")

    def test_a_connection_retired_after_max_transactions_is_replaced_before_the_next_session(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port], max_transactions=2))
        self.send(port, 1)
        self.send(port, 2)
        # No client is connected now: the second connection is sluice's own,
        # greeted and EHLOed ahead of need.
        wait_until(lambda: any(c.upper().startswith("EHLO") for c in b.commands(conn=2)), 5,
                   what="EHLO on the replacing connection")
        self.assertEqual(b.commands(conn=2)[0].split()[1], "sluice.test")
        self.send(port, 3)
        m1, m2, m3 = b.wait_messages(3)
        self.assertEqual([m["conn"] for m in (m1, m2, m3)], [1, 1, 2])
        self.assertEqual(b.connection_count(), 2)
        # The third session's MAIL follows that EHLO with nothing in between.
        self.assertEqual(verbs_of(m3), ["EHLO", "MAIL", "RCPT", "DATA"])
        self.assertEqual((m3["mail_from"], m3["data"]), ("s3@x.example", BODY % 3))

    def test_a_session_takes_over_a_replacing_connection_still_in_its_handshake(self):
        b = self.start_backend("a", "--delay-ehlo", "1.0")
        _, port = self.relay(pool("a", [b.port], max_transactions=1))
        self.send(port, 1)
        wait_until(lambda: b.commands(conn=2), 5, what="EHLO on the replacing connection")
        # Its EHLO is unanswered for a second: the next session waits for
        # that connection rather than opening a third.
        self.send(port, 2)
        _, m2 = b.wait_messages(2)
        # (A third connection would have been accepted, and numbered, first.)
        self.assertEqual(m2["conn"], 2)
        self.assertEqual(verbs_of(m2), ["EHLO", "MAIL", "RCPT", "DATA"])

    def test_a_replacing_xclient_connection_names_its_first_client_with_xclient(self):
        b = self.start_backend("a", "--xclient")
        _, port = self.relay(pool("a", [b.port], max_transactions=1))
        self.send(port, 1, helo="first.test")
        wait_until(lambda: b.commands(conn=2), 5, what="the replacing connection")
        self.send(port, 2, helo="second.test")
        _, m2 = b.wait_messages(2)
        self.assertEqual(m2["conn"], 2)
        verbs = verbs_of(m2)
        self.assertEqual(verbs[:3], ["EHLO", "XCLIENT", "EHLO"])
        self.assertEqual(m2["ehlo_names"][-1], "second.test")
        self.assertEqual(b.events("xclient")[-1]["attrs"]["HELO"], "second.test")

    def test_no_replacement_when_the_pool_has_no_free_slot(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port], max_transactions=1, max_connections=1))
        self.send(port, 1)
        wait_until(lambda: len(self.quits(b)) == 1, 5, what="QUIT after the one transaction")
        time.sleep(SETTLE)
        # The retired connection held the only slot until its QUIT was
        # answered: nothing was opened ahead of need.
        self.assertEqual(b.connection_count(), 1)
        self.send(port, 2)
        b.wait_messages(2)
        self.assertEqual(b.connection_count(), 2)

    def test_idle_connections_zero_switches_reuse_off(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port], idle_connections=0))
        self.send(port, 1)
        self.send(port, 2)
        b.wait_messages(2)
        self.assertEqual(b.connection_count(), 2)
        wait_until(lambda: len(self.quits(b)) == 2, 5, what="QUIT to each connection")

    def test_no_more_idle_connections_than_idle_connections(self):
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port], idle_connections=1))
        clients = [self.open_session(port) for _ in range(2)]
        for n, c in enumerate(clients):
            self.assertReply(c.cmd("MAIL FROM:<s%d@x.example>" % n), 250)
            self.assertReply(c.cmd("RCPT TO:<r@a.example>"), 250)
        wait_until(lambda: b.connection_count() == 2, 5, what="two backend connections")
        for c in clients:
            self.assertReply(c.cmd("QUIT"), 221)
            c.wait_closed()
        wait_until(lambda: len(self.quits(b)) == 1, 5, what="QUIT to the one not kept")
        time.sleep(SETTLE)
        self.assertEqual(len(self.quits(b)), 1)
        self.send(port, 3)
        b.wait_messages(1)
        self.assertEqual(b.connection_count(), 2)

    def test_tls_stays_up_on_a_kept_connection_without_a_new_starttls(self):
        from test_tls_inbound import make_cert
        cert, key = make_cert(self.workdir, "backend.sluice.test")
        b = self.start_backend("a", "--xclient", "--tls-cert", cert, "--tls-key", key)
        _, port = self.relay(pool("a", [b.port], tls="required", tls_ca=cert,
                                  tls_name="backend.sluice.test"))
        self.send(port, 1, helo="first.test")
        self.send(port, 2, helo="second.test")
        m1, m2 = b.wait_messages(2)
        self.assertEqual(b.connection_count(), 1)
        self.assertRegex(m2["tls"] or "", r"^TLSv1\.[23]$")
        verbs = verbs_of(m2)
        self.assertEqual(verbs.count("STARTTLS"), 1)
        self.assertEqual(b.events("xclient")[-1]["attrs"]["HELO"], "second.test")

    def test_proxy_pool_opens_one_connection_per_session(self):
        b = self.start_backend("a", "--proxy")
        _, port = self.relay(pool("a", [b.port], proxy_protocol=True, xclient=False))
        p1 = self.send(port, 1)
        p2 = self.send(port, 2)
        m1, m2 = b.wait_messages(2)
        self.assertEqual(b.connection_count(), 2)
        self.assertEqual([m1["proxy"]["src_port"], m2["proxy"]["src_port"]], [p1, p2])

    def test_full_pool_closes_an_idle_connection_for_a_waiting_session(self):
        # Two loop threads, one slot: a session on the other thread cannot
        # reuse the kept connection, and must not wait for its idle_timeout.
        b = self.start_backend("a")
        _, port = self.relay(pool("a", [b.port], max_connections=1, wait="3s",
                                  idle_timeout="1m"), threads=2)
        for n in range(1, 7):
            self.send(port, n)
        b.wait_messages(6)
        self.assertEqual(b.max_concurrent(), 1)

    def test_reload_closes_kept_connections_and_new_sessions_get_new_ones(self):
        b = self.start_backend("a")
        s, port = self.relay(pool("a", [b.port], idle_timeout="1m"))
        self.send(port, 1)
        time.sleep(SETTLE)
        self.assertEqual(self.quits(b), [])
        s.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: s.grep(r"master: reload done"), 20, what="the reload")
        wait_until(lambda: self.quits(b), 5, what="QUIT to the kept connection")
        self.send(port, 2)
        b.wait_messages(2)
        self.assertEqual(b.connection_count(), 2)

    def test_shutdown_sends_quit_to_kept_connections(self):
        b = self.start_backend("a")
        s, port = self.relay(pool("a", [b.port], idle_timeout="1m"))
        self.send(port, 1)
        time.sleep(SETTLE)
        s.stop()
        wait_until(lambda: self.quits(b), 5, what="QUIT at shutdown")


if __name__ == "__main__":
    unittest.main()
