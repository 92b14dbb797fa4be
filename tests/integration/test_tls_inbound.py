"""STARTTLS on a listener with a certificate (RFC 3207): smtplib delivers over
it, STARTTLS is not offered again and EHLO is needed again after the
handshake, and plaintext pipelined behind STARTTLS is discarded, never
executed (the CVE-2011-0411 class). Certificates are made with the openssl
CLI."""

import os
import shutil
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import unittest

from sluice_harness import RawClient, SluiceTestCase, base_config, free_port, pool, sluice_bin

SENDER = "sender@x.example"
BODY = b"Subject: tls\r\n\r\nover TLS\r\n"


def make_cert(workdir, name, stem=None):
    cert = os.path.join(workdir, (stem or name) + ".crt")
    key = os.path.join(workdir, (stem or name) + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + name, "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % name,
                    "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    os.chmod(key, 0o644)  # readable by the worker's user, as ssl-cert would make it
    return cert, key


def client_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    return ctx


class StartTlsTest(SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.cert, self.key = make_cert(self.workdir, "mx.sluice.test")
        self.backend = self.start_backend("a")
        self.sluice, self.port = self.start_relay(
            [pool("a", [self.backend.port])], [("a.example", "a")],
            listen_options={"tls_cert": self.cert, "tls_key": self.key})

    def test_smtplib_delivers_over_starttls_and_the_certificate_verifies(self):
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                          timeout=30) as c:
            c.ehlo()
            self.assertTrue(c.has_extn("starttls"))
            c.starttls(context=client_context(self.cert))
            c.ehlo()
            self.assertFalse(c.has_extn("starttls"), "STARTTLS offered again over TLS")
            self.assertEqual(c.sendmail(SENDER, ["u@a.example"], BODY), {})
        [msg] = self.backend.wait_messages(1)
        self.assertTrue(msg["data"].endswith(BODY))
        self.sluice.wait_log(r"TLS established: TLSv1\.[23] ")

    @unittest.skipUnless(shutil.which("swaks"), "swaks is not installed")
    def test_swaks_tls_delivers(self):
        done = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.port), "--tls",
             "--from", SENDER, "--to", "u@a.example", "--helo", "client.test",
             "--body", "sent by swaks over TLS", "--timeout", "20"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("TLS started", done.stdout)
        [msg] = self.backend.wait_messages(1)
        self.assertIn(b"sent by swaks over TLS", msg["data"])

    def test_after_the_handshake_ehlo_is_needed_again(self):
        c = RawClient(self.port)
        self.clients.append(c)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("STARTTLS"), 220, "2.0.0")
        tls = client_context(self.cert).wrap_socket(c.sock, server_hostname="mx.sluice.test")
        c.sock = tls
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 503, "5.5.1")
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("STARTTLS"), 503, "5.5.1")

    def test_plaintext_pipelined_after_starttls_is_discarded_not_executed(self):
        c = RawClient(self.port)
        self.clients.append(c)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@x.example>\r\n")
        self.assertReply(c.read_reply(), 220, "2.0.0")
        self.assertEqual(c.buf, b"", "a reply to the injected commands in plaintext")
        tls = client_context(self.cert).wrap_socket(c.sock, server_hostname="mx.sluice.test")
        c.sock = tls
        # The first reply over TLS answers our EHLO: nothing injected ran.
        ehlo = c.cmd("EHLO client.test")
        self.assertReply(ehlo, 250)
        self.assertIn("sluice.test", ehlo.lines[0].decode())
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("QUIT"), 221)

    def test_a_failed_handshake_closes_that_session_only(self):
        c = RawClient(self.port)
        self.clients.append(c)
        c.read_reply()
        c.cmd("EHLO client.test")
        self.assertReply(c.cmd("STARTTLS"), 220)
        c.send(b"this is not a TLS record\r\n" * 4)
        self.assertTrue(c.wait_closed(10))
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
            s.starttls(context=client_context(self.cert))
            self.assertEqual(s.sendmail(SENDER, ["u@a.example"], BODY), {})



class CertificateReloadTest(SluiceTestCase):
    def test_sighup_swaps_the_certificate_without_dropping_an_open_tls_session(self):
        cert, key = make_cert(self.workdir, "mx.sluice.test", "live")
        b = self.start_backend("a")
        s, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                   listen_options={"tls_cert": cert, "tls_key": key})
        first = RawClient(port)
        self.clients.append(first)
        first.read_reply()
        first.cmd("EHLO client.test")
        self.assertReply(first.cmd("STARTTLS"), 220)
        first.sock = client_context(cert).wrap_socket(first.sock, server_hostname="mx.sluice.test")
        self.assertReply(first.cmd("EHLO client.test"), 250)
        first_cert = first.sock.getpeercert(binary_form=True)

        new_cert, new_key = make_cert(self.workdir, "mx.sluice.test", "new")
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        s.proc.send_signal(signal.SIGHUP)
        s.wait_log(r"reload: TLS of .*read again")

        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.starttls(context=client_context(cert))  # trusts only the new one
            self.assertNotEqual(c.sock.getpeercert(binary_form=True), first_cert)
            self.assertEqual(c.sendmail(SENDER, ["v@a.example"], BODY), {})
        # The session opened before the reload goes on with its certificate.
        self.assertReply(first.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(first.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(first.cmd("DATA"), 354)
        self.assertReply(first.cmd(BODY + b"."), 250)
        self.assertEqual(len(b.wait_messages(2)), 2)


class TlsAfterProxyHeaderTest(SluiceTestCase):
    def test_starttls_after_a_proxy_v2_header_and_the_backend_sees_the_real_client(self):
        cert, key = make_cert(self.workdir, "mx.sluice.test")
        b = self.start_backend("a", "--xclient")
        _, port = self.start_relay(
            [pool("a", [b.port])], [("a.example", "a")],
            listen_options={"tls_cert": cert, "tls_key": key, "proxy_protocol": True,
                            "proxy_trusted": ["127.0.0.1"]})
        c = RawClient(port)
        self.clients.append(c)
        addrs = socket.inet_aton("192.0.2.7") + socket.inet_aton("127.0.0.1") + \
            struct.pack("!HH", 4000, 25)
        c.send(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(addrs)) + addrs)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("STARTTLS"), 220)
        c.sock = client_context(cert).wrap_socket(c.sock, server_hostname="mx.sluice.test")
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        [msg] = b.wait_messages(1)
        self.assertIn("192.0.2.7", str(msg["xclient"]))

class StartTlsBackendSessionTest(SluiceTestCase):
    def test_a_backend_session_opened_in_plain_text_does_not_carry_its_helo_over_tls(self):
        """RFC 3207 4.2: what the client said before TLS is forgotten. A
        backend session opened for a transaction in plain text was told that
        HELO by XCLIENT; the message sent after STARTTLS and a new EHLO must
        reach the backend with the new name, not the plain-text one."""
        cert, key = make_cert(self.workdir, "mx.sluice.test")
        b = self.start_backend("a", "--xclient")
        _, port = self.start_relay(
            [pool("a", [b.port])], [("a.example", "a")],
            listen_options={"tls_cert": cert, "tls_key": key})
        c = RawClient(port)
        self.clients.append(c)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO injected.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("STARTTLS"), 220, "2.0.0")
        c.sock = client_context(cert).wrap_socket(c.sock, server_hostname="mx.sluice.test")
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(BODY + b".\r\n")
        self.assertReply(c.read_reply(), 250)
        [msg] = b.wait_messages(1)
        self.assertEqual(msg["xclient"]["HELO"], "client.test")
        self.assertNotIn("injected.test", [e["attrs"].get("HELO") for e in b.events("xclient")][-1:])


class ImplicitTlsTest(SluiceTestCase):
    def test_smtplib_over_implicit_tls_delivers_and_is_offered_no_starttls(self):
        cert, key = make_cert(self.workdir, "mx.sluice.test")
        b = self.start_backend("a")
        _, port = self.start_relay(
            [pool("a", [b.port])], [("a.example", "a")],
            listen_options={"tls_cert": cert, "tls_key": key, "tls_implicit": True})
        with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", timeout=30,
                              context=client_context(cert)) as c:
            c.ehlo()
            self.assertFalse(c.has_extn("starttls"))
            self.assertEqual(c.sendmail(SENDER, ["u@a.example"], BODY), {})
        [msg] = b.wait_messages(1)
        self.assertTrue(msg["data"].endswith(BODY))

    def test_a_plaintext_client_on_an_implicit_tls_listener_gets_no_greeting(self):
        cert, key = make_cert(self.workdir, "mx.sluice.test")
        b = self.start_backend("a")
        _, port = self.start_relay(
            [pool("a", [b.port])], [("a.example", "a")],
            listen_options={"tls_cert": cert, "tls_key": key, "tls_implicit": True})
        c = RawClient(port, timeout=10)
        self.clients.append(c)
        c.send(b"EHLO client.test\r\n")
        self.assertTrue(c.wait_closed(10))
        self.assertNotIn(b"220", c.buf)


class TlsFactsTest(SluiceTestCase):
    def test_lua_and_the_transaction_log_see_the_tls_protocol_and_cipher(self):
        cert, key = make_cert(self.workdir, "mx.sluice.test")
        script = os.path.join(self.workdir, "policy.lua")
        with open(script, "w") as f:
            f.write('sluice.on("eom", function(s)\n'
                    '    local tls = s:tls()\n'
                    '    s:add_header("X-TLS", tls and (tls.version .. " " .. tls.cipher) or "plain")\n'
                    'end)\n')
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "50-policy.conf"), "w") as f:
            f.write('plugin = "lua";\nscript = "%s";\n' % script)
        b = self.start_backend("a")
        plugins = os.path.join(os.path.dirname(os.path.abspath(sluice_bin())), "plugins")
        s, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")],
                                   plugin_dir=plugins,
                                   listen_options={"tls_cert": cert, "tls_key": key})
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
            c.sendmail(SENDER, ["u@a.example"], BODY)
            c.starttls(context=client_context(cert))
            c.sendmail(SENDER, ["v@a.example"], BODY)
        plain, tls = b.wait_messages(2)
        self.assertIn(b"X-TLS: plain\r\n", plain["data"])
        self.assertRegex(tls["data"], rb"X-TLS: TLSv1\.[23] \S+\r\n")
        s.wait_log(r"\btx .*<u@a\.example>.* tls=-$")
        s.wait_log(r"\btx .*<v@a\.example>.* tls=TLSv1\.[23]/\S+$")


class TlsListenerOptionsTest(SluiceTestCase):
    def start_with_policy(self, **listen):
        self.cert, key = make_cert(self.workdir, "mx.sluice.test")
        script = os.path.join(self.workdir, "policy.lua")
        with open(script, "w") as f:
            f.write('sluice.on("eom", function(s)\n'
                    '    local t = s:tls()\n'
                    '    s:add_header("X-SNI", tostring(t.sni))\n'
                    '    s:add_header("X-Client", tostring(t.client_subject) .. " " ..\n'
                    '                 tostring(t.client_verified))\n'
                    'end)\n')
        conf_dir = os.path.join(self.workdir, "conf.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "50-policy.conf"), "w") as f:
            f.write('plugin = "lua";\nscript = "%s";\n' % script)
        self.backend = self.start_backend("a")
        plugins = os.path.join(os.path.dirname(os.path.abspath(sluice_bin())), "plugins")
        listen.update({"tls_cert": self.cert, "tls_key": key})
        _, self.port = self.start_relay([pool("a", [self.backend.port])], [("a.example", "a")],
                                        plugin_dir=plugins, listen_options=listen)

    def deliver_with(self, ctx, server_hostname):
        c = RawClient(self.port)
        self.clients.append(c)
        c.read_reply()
        c.cmd("EHLO client.test")
        self.assertReply(c.cmd("STARTTLS"), 220)
        c.sock = ctx.wrap_socket(c.sock, server_hostname=server_hostname)
        c.cmd("EHLO client.test")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<u@a.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd(BODY + b"."), 250)
        c.cmd("QUIT")

    def test_client_certificate_subject_and_verification_and_sni_reach_lua(self):
        ca_cert, ca_key = make_cert(self.workdir, "trusted.client.test")
        other_cert, other_key = make_cert(self.workdir, "unknown.client.test")
        self.start_with_policy(tls_client_ca=ca_cert)
        trusted = client_context(self.cert)
        trusted.load_cert_chain(ca_cert, ca_key)
        self.deliver_with(trusted, "mx.sluice.test")
        unknown = client_context(self.cert)
        unknown.load_cert_chain(other_cert, other_key)
        self.deliver_with(unknown, "mx.sluice.test")
        self.deliver_with(client_context(self.cert), "mx.sluice.test")
        first, second, third = self.backend.wait_messages(3)
        self.assertIn(b"X-SNI: mx.sluice.test\r\n", first["data"])
        self.assertIn(b"X-Client: /CN=trusted.client.test true\r\n", first["data"])
        self.assertIn(b"X-Client: /CN=unknown.client.test false\r\n", second["data"])
        self.assertIn(b"X-Client: nil false\r\n", third["data"])

    def test_tls_min_protocol_tls13_refuses_a_tls12_client(self):
        self.start_with_policy(tls_min_protocol="TLSv1.3")
        old = client_context(self.cert)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        c = RawClient(self.port)
        self.clients.append(c)
        c.read_reply()
        c.cmd("EHLO client.test")
        self.assertReply(c.cmd("STARTTLS"), 220)
        with self.assertRaises(ssl.SSLError):
            old.wrap_socket(c.sock, server_hostname="mx.sluice.test")
        self.deliver_with(client_context(self.cert), "mx.sluice.test")


    def test_two_listeners_with_one_certificate_keep_their_own_protocols(self):
        # The context is the listener's: the same certificate on another
        # listener does not lend it this one's minimum protocol.
        cert, key = make_cert(self.workdir, "mx.sluice.test")
        backend = self.start_backend("a")
        strict, relaxed = free_port(), free_port()
        listen = ({"address": "127.0.0.1", "port": strict, "tls_cert": cert, "tls_key": key,
                   "tls_min_protocol": "TLSv1.3"},
                  {"address": "127.0.0.1", "port": relaxed, "tls_cert": cert, "tls_key": key})
        self.start_sluice(base_config(self.workdir, strict, [pool("a", [backend.port])],
                                      [("a.example", "a")], listen=listen))
        for port, accepted in ((strict, False), (relaxed, True), (strict, False)):
            old = client_context(cert)
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            c = RawClient(port)
            self.clients.append(c)
            c.read_reply()
            c.cmd("EHLO client.test")
            self.assertReply(c.cmd("STARTTLS"), 220)
            if accepted:
                c.sock = old.wrap_socket(c.sock, server_hostname="mx.sluice.test")
                self.assertReply(c.cmd("EHLO client.test"), 250)
            else:
                with self.assertRaises(ssl.SSLError):
                    old.wrap_socket(c.sock, server_hostname="mx.sluice.test")

class SniTest(SluiceTestCase):
    def test_sni_picks_the_certificate_of_the_name_the_client_asks_for(self):
        main_cert, main_key = make_cert(self.workdir, "mx.sluice.test")
        other_cert, other_key = make_cert(self.workdir, "mx2.other.test")
        b = self.start_backend("a")
        _, port = self.start_relay(
            [pool("a", [b.port])], [("a.example", "a")],
            listen_options={"tls_cert": main_cert, "tls_key": main_key,
                            "tls_sni": ({"name": "mx2.other.test", "cert": other_cert,
                                         "key": other_key},)})

        def served(cafile, name):
            c = RawClient(port)
            self.clients.append(c)
            c.read_reply()
            c.cmd("EHLO client.test")
            self.assertReply(c.cmd("STARTTLS"), 220)
            ctx = client_context(cafile)
            c.sock = ctx.wrap_socket(c.sock, server_hostname=name)
            self.assertReply(c.cmd("EHLO client.test"), 250)
            subject = dict(x[0] for x in c.sock.getpeercert()["subject"])
            self.assertReply(c.cmd("QUIT"), 221)
            return subject["commonName"]

        self.assertEqual(served(other_cert, "mx2.other.test"), "mx2.other.test")
        self.assertEqual(served(main_cert, "mx.sluice.test"), "mx.sluice.test")
        # Case does not matter in a name; an unknown one gets the main certificate.
        self.assertEqual(served(other_cert, "MX2.Other.Test"), "mx2.other.test")
        ctx = client_context(main_cert)
        ctx.check_hostname = False
        c = RawClient(port)
        self.clients.append(c)
        c.read_reply()
        c.cmd("EHLO client.test")
        c.cmd("STARTTLS")
        c.sock = ctx.wrap_socket(c.sock, server_hostname="unknown.test")
        self.assertEqual(dict(x[0] for x in c.sock.getpeercert()["subject"])["commonName"],
                         "mx.sluice.test")

class StalledHandshakeTest(SluiceTestCase):
    """A client that never finishes its TLS handshake is closed when
    timeouts.command passes, like one that never sends a command line: the
    421 waits in the TLS output for a handshake that will not come, and that
    wait is bounded too (it used to hold the session, its descriptor and its
    connection slot for ever)."""

    def start(self, **listen_options):
        cert, key = make_cert(self.workdir, "mx.sluice.test")
        b = self.start_backend("a")
        self.sluice, port = self.start_relay(
            [pool("a", [b.port])], [("a.example", "a")],
            listen_options=dict({"tls_cert": cert, "tls_key": key}, **listen_options),
            timeouts={"command": "1s", "data_block": "3m", "shutdown": "2s"})
        return port

    def test_a_client_silent_after_starttls_is_closed(self):
        c = RawClient(self.start(), timeout=30)
        self.clients.append(c)
        self.assertReply(c.read_reply(), 220)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        self.assertReply(c.cmd("STARTTLS"), 220, "2.0.0")
        c.send(b"\x16\x03\x01\x02\x00\x01")  # the first bytes of a ClientHello, no more
        self.sluice.wait_log(r"timeout: no complete command line")
        self.assertTrue(c.wait_closed(25), "the session outlived its timeout")

    def test_a_silent_client_on_an_implicit_tls_listener_is_closed(self):
        c = RawClient(self.start(tls_implicit=True), timeout=30)
        self.clients.append(c)
        self.sluice.wait_log(r"timeout: no complete command line")
        self.assertTrue(c.wait_closed(25), "the session outlived its timeout")
        self.assertEqual(c.buf, b"")


class NoTlsListenerTest(SluiceTestCase):
    def test_listener_without_certificate_offers_no_starttls(self):
        b = self.start_backend("a")
        _, port = self.start_relay([pool("a", [b.port])], [("a.example", "a")])
        c = RawClient(port)
        self.clients.append(c)
        c.read_reply()
        ehlo = c.cmd("EHLO client.test")
        self.assertNotIn("STARTTLS", ehlo.text)
        self.assertReply(c.cmd("STARTTLS"), 502, "5.5.1")


if __name__ == "__main__":
    unittest.main()
