"""sluice in front of a real Postfix: the backend must see the original client.

A private Postfix instance (its own config, queue and mailbox under a temporary
directory, its own port) is sluice's backend, with XCLIENT allowed from
loopback. A client sends a message through sluice; Postfix delivers it to a
file, and the Received: line Postfix wrote must name the client's address and
HELO name, not sluice's. The system's own Postfix is never touched.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from sluice_harness import free_port

POSTFIX = "/usr/sbin/postfix"
HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "postfix")

DOMAIN = "interop.test"
RECIPIENT = "sink@" + DOMAIN
SENDER = "me@example.org"
CLIENT_HELO = "client.test"
# Loopback has all of 127/8; a client address other than sluice's own source
# (127.0.0.1) proves Postfix learned it from XCLIENT and not from the socket.
CLIENT_ADDR = "127.0.0.2"
PROXY_HELO = "sluice-proxy.test"

DELIVERY_TIMEOUT = 30.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0




def wait_for_port(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def read_text(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class PrivatePostfix:
    """A Postfix instance living entirely in one temporary directory."""

    def __init__(self, base, extra_main_cf=""):
        self.extra_main_cf = extra_main_cf
        self.dir = os.path.join(base, "postfix")
        self.etc = os.path.join(self.dir, "etc")
        self.mbox = os.path.join(self.dir, "mail", "sink.mbox")
        self.maillog = os.path.join(self.dir, "maillog")
        self.port = free_port()
        self.started = False

    def _make_dirs(self):
        # Postfix daemons run as user postfix and local delivery to a file as
        # nobody: every directory on the way must be traversable by them.
        os.makedirs(self.etc)
        for sub in ("queue", "data", "mail"):
            os.makedirs(os.path.join(self.dir, sub))
        for path in (os.path.dirname(self.dir), self.dir, self.etc,
                     os.path.join(self.dir, "queue")):
            os.chmod(path, 0o755)
        os.chown(os.path.join(self.dir, "queue"), 0, 0)
        shutil.chown(os.path.join(self.dir, "data"), user="postfix")
        os.chmod(os.path.join(self.dir, "mail"), 0o1777)

    def _write_config(self):
        subst = {"@DIR@": self.dir, "@PORT@": str(self.port), "@DOMAIN@": DOMAIN}
        for name in ("main.cf", "master.cf"):
            text = read_text(os.path.join(TEMPLATES, name + ".in"))
            for key, value in subst.items():
                text = text.replace(key, value)
            if name == "main.cf":
                text += self.extra_main_cf
            with open(os.path.join(self.etc, name), "w") as f:
                f.write(text)

    def _postfix(self, *args):
        return subprocess.run([POSTFIX, "-c", self.etc, *args], capture_output=True,
                              text=True, timeout=60)

    def start(self):
        self._make_dirs()
        self._write_config()
        for action in ("check", "start"):
            res = self._postfix(action)
            if res.returncode != 0:
                raise RuntimeError("postfix %s failed:\n%s%s\nmaillog:\n%s" % (
                    action, res.stdout, res.stderr, read_text(self.maillog)))
            self.started = action == "start"
        if not wait_for_port(self.port, START_TIMEOUT):
            raise RuntimeError("private postfix does not listen on %d; maillog:\n%s"
                               % (self.port, read_text(self.maillog)))

    def stop(self):
        if not self.started:
            return
        self._postfix("stop")
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and self._postfix("status").returncode == 0:
            time.sleep(0.2)
        self.started = False

    def wait_for_delivery(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = read_text(self.mbox)
            if text:
                return text
            time.sleep(0.2)
        return ""


class Sluice:
    """The daemon under test, in the foreground, with a generated config."""

    def __init__(self, base, backend_port, pool_extra=""):
        self.pool_extra = pool_extra
        self.dir = os.path.join(base, "sluice")
        self.conf = os.path.join(self.dir, "sluice.conf")
        self.port = free_port()
        self.backend_port = backend_port
        self.proc = None
        self.log = []
        self._ready = threading.Event()
        self._reader = None

    def _write_config(self):
        os.makedirs(os.path.join(self.dir, "conf.d"))
        with open(self.conf, "w") as f:
            f.write("""
threads = 1;
log_level = "debug";
hostname = "sluice.test";
conf_dir = "{dir}/conf.d";
listen = ( {{ address = "127.0.0.1"; port = {port}; }} );
relay_networks = [ "127.0.0.0/8" ];
pools = (
    {{
        name = "postfix";
        servers = [ "127.0.0.1:{backend}" ];
        xclient = true;
        helo_name = "{helo}";
        max_connections = 5;
        {extra}
    }}
);
routes = ( {{ match = "{domain}"; pool = "postfix"; }} );
default_pool = "postfix";
dns = {{ servers = [ "127.0.0.1:{dns}" ]; timeout = "1s"; }};
store = {{ path = "{dir}/store"; }};
""".format(dir=self.dir, port=self.port, backend=self.backend_port, helo=PROXY_HELO,
           domain=DOMAIN, dns=free_port(socket.SOCK_DGRAM), extra=self.pool_extra))

    def _collect_stderr(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if "ready" in line:
                self._ready.set()

    def start(self, binary):
        self._write_config()
        self.proc = subprocess.Popen([binary, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        self._reader = threading.Thread(target=self._collect_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or not wait_for_port(self.port, 5):
            raise RuntimeError("sluice did not become ready:\n" + "".join(self.log))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        self.proc.stderr.close()


def received_lines(mbox):
    """The Received: headers of the first message, unfolded."""
    header = mbox.split("\n\n", 1)[0]
    unfolded = re.sub(r"\n[ \t]+", " ", header)
    return [line for line in unfolded.split("\n") if line.lower().startswith("received:")]


def send_message(port, helo, subject, bind_addr=CLIENT_ADDR):
    body = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nHello through the proxy.\r\n"
            % (SENDER, RECIPIENT, subject))
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=30,
                      source_address=(bind_addr, 0)) as smtp:
        refused = smtp.sendmail(SENDER, [RECIPIENT], body.encode())
        smtp.quit()
    return refused


@unittest.skipUnless(os.path.exists(POSTFIX), "Postfix is not installed")
@unittest.skipUnless(os.geteuid() == 0, "starting a Postfix instance needs root")
class PostfixInteropTest(unittest.TestCase):

    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="sluice-postfix-")
        self.postfix = PrivatePostfix(self.base)
        self.addCleanup(shutil.rmtree, self.base, True)
        self.addCleanup(self.postfix.stop)
        self.postfix.start()

    def assert_received_names_client(self, mbox):
        self.assertTrue(mbox, "nothing delivered within %ds; maillog:\n%s"
                        % (DELIVERY_TIMEOUT, read_text(self.postfix.maillog)))
        lines = received_lines(mbox)
        self.assertEqual(len(lines), 1, mbox)
        received = lines[0]
        pattern = r"from %s \(\S+ \[%s\]\)" % (re.escape(CLIENT_HELO), re.escape(CLIENT_ADDR))
        self.assertRegex(received, pattern)
        self.assertNotIn(PROXY_HELO, received)

    def test_private_postfix_takes_client_identity_from_xclient(self):
        # The test's own footing: Postfix, spoken to by hand the way sluice
        # speaks to it, writes the client's identity into Received:.
        with smtplib.SMTP("127.0.0.1", self.postfix.port, local_hostname=PROXY_HELO,
                          timeout=30) as smtp:
            smtp.ehlo()
            self.assertTrue(smtp.has_extn("xclient"))
            code, _ = smtp.docmd("XCLIENT", "ADDR=%s NAME=[UNAVAILABLE] HELO=%s"
                                 % (CLIENT_ADDR, CLIENT_HELO))
            self.assertEqual(code, 220)
            smtp.ehlo(CLIENT_HELO)
            smtp.sendmail(SENDER, [RECIPIENT], b"Subject: by hand\r\n\r\nbody\r\n")
        self.assert_received_names_client(self.postfix.wait_for_delivery(DELIVERY_TIMEOUT))

    def test_message_through_sluice_reaches_postfix_with_client_identity(self):
        binary = os.environ.get("SLUICE_BIN")
        self.assertTrue(binary and os.access(binary, os.X_OK), "SLUICE_BIN is not set")
        sluice = Sluice(self.base, self.postfix.port)
        self.addCleanup(sluice.stop)
        sluice.start(binary)

        refused = send_message(sluice.port, CLIENT_HELO, "through sluice")

        self.assertEqual(refused, {})
        mbox = self.postfix.wait_for_delivery(DELIVERY_TIMEOUT)
        self.assertIn("Subject: through sluice", mbox)
        self.assertIn("Hello through the proxy.", mbox)
        self.assert_received_names_client(mbox)

    def test_kept_connection_gives_postfix_the_second_clients_identity_not_the_firsts(self):
        # One loop thread: the second client's session gets the connection
        # the first one left, with a new XCLIENT.
        binary = os.environ.get("SLUICE_BIN")
        self.assertTrue(binary and os.access(binary, os.X_OK), "SLUICE_BIN is not set")
        sluice = Sluice(self.base, self.postfix.port)
        self.addCleanup(sluice.stop)
        sluice.start(binary)

        self.assertEqual(send_message(sluice.port, "first.test", "one", "127.0.0.2"), {})
        self.assertEqual(send_message(sluice.port, "second.test", "two", "127.0.0.3"), {})

        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline and read_text(self.postfix.mbox).count("\nFrom ") < 1:
            time.sleep(0.2)
        mbox = read_text(self.postfix.mbox)
        messages = re.split(r"\n(?=From )", mbox.strip())
        self.assertEqual(len(messages), 2, "maillog:\n%s" % read_text(self.postfix.maillog))
        by_subject = {}
        for m in messages:
            subject = re.search(r"^Subject: (\S+)", m, re.M).group(1)
            by_subject[subject] = received_lines(m + "\n\n")[0]
        self.assertRegex(by_subject["one"], r"from first\.test \(\S+ \[127\.0\.0\.2\]\)")
        self.assertRegex(by_subject["two"], r"from second\.test \(\S+ \[127\.0\.0\.3\]\)")
        self.assertNotIn("first.test", by_subject["two"])
        self.assertNotIn("127.0.0.2", by_subject["two"])
        self.assertTrue([l for l in sluice.log if "ready (kept connection)" in l],
                        "the second session did not reuse the connection:\n" + "".join(sluice.log))


@unittest.skipUnless(os.path.exists(POSTFIX), "Postfix is not installed")
@unittest.skipUnless(os.geteuid() == 0, "starting a Postfix instance needs root")
class PostfixTlsInteropTest(unittest.TestCase):
    """sluice to a Postfix with smtpd_tls_security_level = may, TLS required
    and verified on sluice's side: Postfix's Received: line says TLS."""

    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="sluice-postfix-tls-")
        os.chmod(self.base, 0o755)
        self.addCleanup(shutil.rmtree, self.base, True)
        name = "backend." + DOMAIN
        self.cert = os.path.join(self.base, "backend.crt")
        key = os.path.join(self.base, "backend.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=" + name, "-addext", "subjectAltName=DNS:" + name,
                        "-keyout", key, "-out", self.cert], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.chmod(key, 0o644)
        os.chmod(self.cert, 0o644)
        self.postfix = PrivatePostfix(self.base, (
            "\nsmtpd_tls_security_level = may\n"
            "smtpd_tls_cert_file = %s\nsmtpd_tls_key_file = %s\n"
            "smtpd_tls_received_header = yes\n" % (self.cert, key)))
        self.addCleanup(self.postfix.stop)
        self.postfix.start()

    def test_postfix_receives_over_verified_tls_and_its_received_line_says_so(self):
        binary = os.environ.get("SLUICE_BIN")
        self.assertTrue(binary and os.access(binary, os.X_OK), "SLUICE_BIN is not set")
        sluice = Sluice(self.base, self.postfix.port, 'tls = "required"; tls_ca = "%s"; '
                        'tls_name = "backend.%s";' % (self.cert, DOMAIN))
        self.addCleanup(sluice.stop)
        sluice.start(binary)
        try:
            refused = send_message(sluice.port, CLIENT_HELO, "over TLS")
        except smtplib.SMTPException as e:
            raise AssertionError("%s\nsluice:\n%s\nmaillog:\n%s" % (
                e, "".join(sluice.log[-30:]), read_text(self.postfix.maillog)))
        self.assertEqual(refused, {})
        mbox = self.postfix.wait_for_delivery(DELIVERY_TIMEOUT)
        self.assertIn("Subject: over TLS", mbox, read_text(self.postfix.maillog))
        [received] = received_lines(mbox)
        self.assertRegex(received, r"\(using TLSv1\.[23] with cipher ")
        self.assertRegex(received, r"from %s \(\S+ \[%s\]\)" % (re.escape(CLIENT_HELO),
                                                               re.escape(CLIENT_ADDR)))


if __name__ == "__main__":
    unittest.main()
