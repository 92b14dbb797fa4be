"""Harness for sluice's black-box integration tests.

Starts a real sluice with a generated configuration and recording backends
(backend.py, each its own process) on 127.0.0.1, and offers the helpers the
tests need: a raw SMTP client, reading what a backend recorded, bounded waits,
and grepping sluice's log. Every wait here is bounded.
"""

import fcntl
import glob
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
BACKEND_SCRIPT = os.path.join(HERE, "backend.py")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 60
CLIENT_TIMEOUT = 30.0


WORKER_USER = "sluice"
USER_LOCK = "/tmp/sluice-tests-user.lock"


def worker_user():
    """The user sluice's worker runs as in the tests, as in production: the
    dedicated "sluice" user when the tests run as root (tests/install-deps.sh
    creates it; created here when missing), else the user running them (who
    has nothing to drop). Returns its passwd entry."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    with open(USER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(WORKER_USER)
        except KeyError:
            subprocess.run(["adduser", "--system", "--group", "--home", "/var/lib/sluice",
                            "--no-create-home", WORKER_USER], check=True,
                           stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            return pwd.getpwnam(WORKER_USER)


def make_traversable(path):
    """Lets the worker's user reach path: the plugins of the build tree and
    the scripts and data of the source tree, which it reads after dropping
    privileges as it reads /usr/lib/sluice in production. A checkout under a
    private directory (mktemp -d is 0700) would hide them, so the tests add
    the search bit (o+x, not read) to each directory on the way. Root only."""
    if os.geteuid() != 0:
        return
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            os.chmod(path, (mode & 0o7777) | 0o001)
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def make_worker_dir(path):
    """A directory only the worker's user may write (its spool, its files)."""
    user = worker_user()
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def sluice_bin():
    """SLUICE_BIN, or the default build directory next to the sources."""
    path = os.environ.get("SLUICE_BIN")
    if path:
        return path
    return os.path.normpath(os.path.join(HERE, "..", "..", "build", "sluice"))


# Ports handed to tests come from below Linux's ephemeral range (32768 and
# up), so no client socket of a parallel test can hold one; each is locked
# (flock on a file per port) for the life of the test process, so two test
# processes under `ctest -j` never get the same one (sluice binds with
# SO_REUSEPORT: two daemons on one port would share it silently).
PORT_RANGE = (20000, 32000)
PORT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "sluice-test-ports")
PORT_TRIES = 500
_held_port_locks = []


def _bindable(port, kind):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(kind=socket.SOCK_STREAM):
    """A port nothing listens on now, reserved for this test process."""
    os.makedirs(PORT_LOCK_DIR, mode=0o1777, exist_ok=True)
    rng = random.SystemRandom()
    for _ in range(PORT_TRIES):
        port = rng.randrange(*PORT_RANGE)
        fd = os.open(os.path.join(PORT_LOCK_DIR, str(port)), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if _bindable(port, socket.SOCK_STREAM) and _bindable(port, socket.SOCK_DGRAM):
            _held_port_locks.append(fd)
            return port
        os.close(fd)
    raise AssertionError("no free port in %d-%d after %d tries" % (PORT_RANGE + (PORT_TRIES,)))


def connect_refused(port):
    """True when a TCP connect to the port is refused (no listener). A
    connect caught in the backlog of a listener being closed is reset: not
    refused yet, the next attempt will tell."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def wait_until(predicate, timeout, interval=0.02, what="condition"):
    """Polls predicate until it returns something true; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# --- configuration --------------------------------------------------------

class Raw(str):
    """A value written into the configuration as is (no quoting)."""


def _conf_value(value, indent):
    pad = "    " * indent
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        inner = "".join("%s    %s = %s;\n" % (pad, k, _conf_value(v, indent + 1))
                        for k, v in value.items())
        return "{\n" + inner + pad + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "( )" if isinstance(value, tuple) else "[ ]"
        if all(isinstance(v, dict) for v in value) or isinstance(value, tuple):
            items = ",\n".join(pad + "    " + _conf_value(v, indent + 1) for v in value)
            return "(\n" + items + "\n" + pad + ")"
        return "[ " + ", ".join(_conf_value(v, indent) for v in value) + " ]"
    raise TypeError("cannot write %r into a configuration" % (value,))


def render_config(settings):
    """libconfig text from a dict: dict -> group, list of dicts or tuple ->
    list, list of scalars -> array."""
    return "".join("%s = %s;\n" % (k, _conf_value(v, 0)) for k, v in settings.items())


def server_entry(port, host="127.0.0.1"):
    return {"host": host, "port": port}


def pool(name, ports, **options):
    """A pool of backends on 127.0.0.1; options override the test defaults."""
    conf = {
        "name": name,
        "servers": tuple(server_entry(p) for p in ports),
        "max_connections": 5,
        "xclient": True,
        "proxy_protocol": False,
        "wait": "30s",
        # Everything arrives from 127.0.0.1: only the share tests
        # (test_hostile_timeouts.py) keep a per-client share of the pool.
        "max_connections_per_client": 0,
    }
    conf.update(options)
    return conf


# --- the recording backend ------------------------------------------------

class Backend:
    """A backend.py process and what it recorded."""

    def __init__(self, workdir, name, args=()):
        self.name = name
        self.dir = os.path.join(workdir, "backend-" + name)
        os.makedirs(self.dir)
        self.output = open(os.path.join(self.dir, "output.txt"), "wb")
        cmd = [PYTHON, BACKEND_SCRIPT, "--record-dir", self.dir] + list(args)
        self.proc = subprocess.Popen(cmd, stdout=self.output, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        ready = os.path.join(self.dir, "ready")
        wait_until(lambda: os.path.exists(ready) or self.proc.poll() is not None,
                   START_TIMEOUT, what="backend %s to listen" % name)
        if self.proc.poll() is not None:
            raise AssertionError("backend %s exited: %s" % (name, self.output_text()))
        with open(ready) as f:
            self.port = int(f.read())

    def output_text(self):
        with open(os.path.join(self.dir, "output.txt"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        self.kill()
        self.output.close()

    def messages(self):
        """Accepted messages in arrival order: the envelope plus 'data' (the
        unstuffed content) and 'raw' (DATA bytes as received)."""
        out = []
        for path in sorted(glob.glob(os.path.join(self.dir, "msg-*.json"))):
            with open(path) as f:
                msg = json.load(f)
            base = path[:-len(".json")]
            with open(base + ".eml", "rb") as f:
                msg["data"] = f.read()
            with open(base + ".raw", "rb") as f:
                msg["raw"] = f.read()
            msg["name"] = os.path.basename(base)
            out.append(msg)
        return out

    def message_count(self):
        return len(glob.glob(os.path.join(self.dir, "msg-*.json")))

    def wait_messages(self, count, timeout=10.0):
        wait_until(lambda: self.message_count() >= count, timeout,
                   what="%d message(s) at backend %s" % (count, self.name))
        return self.messages()

    def events(self, kind=None):
        path = os.path.join(self.dir, "events.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            evs = [json.loads(line) for line in f if line.endswith("\n")]
        return [e for e in evs if kind is None or e["ev"] == kind]

    def wait_event(self, kind, count=1, timeout=10.0):
        return wait_until(lambda: len(self.events(kind)) >= count and self.events(kind),
                          timeout, what="%d %s event(s) at backend %s" % (count, kind, self.name))

    def connection_count(self):
        return len(self.events("connect"))

    def commands(self, conn=None):
        return [e["line"] for e in self.events("command") if conn is None or e["conn"] == conn]

    def max_concurrent(self):
        with open(os.path.join(self.dir, "max_concurrent")) as f:
            return int(f.read())


# --- sluice ---------------------------------------------------------------

class Sluice:
    """A running sluice (master and worker) with its log in a file."""

    def __init__(self, workdir, config_text, name="sluice.conf", ready_timeout=START_TIMEOUT,
                 binary=None, env=None):
        self.conf_path = os.path.join(workdir, name)
        with open(self.conf_path, "w") as f:
            f.write(config_text)
        self.log_path = os.path.join(workdir, "sluice.log")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary or sluice_bin(), "-c", self.conf_path],
                                     stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, **(env or {})))
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout):
        """The log's "ready" line; the process dying first is a failure."""
        def started():
            if self.proc.poll() is not None:
                return "exited"
            return "ready" if re.search(r"\bready\b", self.log_text()) else None
        state = wait_until(started, timeout, what="sluice to log 'ready'")
        if state == "exited":
            raise AssertionError("sluice exited with %s before ready:\n%s"
                                 % (self.proc.returncode, self.log_tail()))

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines=LOG_TAIL_LINES):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def grep(self, pattern):
        return [line for line in self.log_text().splitlines() if re.search(pattern, line)]

    def wait_log(self, pattern, timeout=10.0):
        return wait_until(lambda: self.grep(pattern), timeout,
                          what="log line matching %r" % pattern)

    def worker_pid(self):
        """The worker: the master's child (None while it is being restarted)."""
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return None
        return pids[0] if pids else None

    def stop(self):
        """SIGTERM (sessions drain), a second one (at once), then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            worker = self.worker_pid()
            self.proc.send_signal(sig)
            if sig == signal.SIGKILL and worker:
                os.kill(worker, signal.SIGKILL)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()


def run_sluice_check(workdir, config_text, check_only=True, timeout=START_TIMEOUT):
    """Runs sluice to completion ("-t" or a start that is expected to fail).
    Returns (exit code, stdout + stderr)."""
    path = os.path.join(workdir, "sluice.conf")
    with open(path, "w") as f:
        f.write(config_text)
    args = [sluice_bin()] + (["-t"] if check_only else []) + ["-c", path]
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("sluice did not exit within %.0fs: %r" % (timeout, e.output))
    return done.returncode, done.stdout.decode("utf-8", "replace")


# --- a raw SMTP client ----------------------------------------------------

class Reply:
    def __init__(self, lines):
        self.lines = lines  # bytes, without CRLF
        self.code = int(lines[-1][:3])

    @property
    def text(self):
        return b"\r\n".join(self.lines).decode("utf-8", "replace")

    def __repr__(self):
        return "Reply(%r)" % (self.text,)


class RawClient:
    """An SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port, host="127.0.0.1", timeout=CLIENT_TIMEOUT, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=source)
        self.sock.settimeout(timeout)
        self.buf = b""

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed; unparsed: %r" % self.buf)
        self.buf += chunk

    def read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_reply(self):
        lines = []
        for _ in range(1000):
            line = self.read_line()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return Reply(lines)
        raise AssertionError("reply of more than 1000 lines")

    def cmd(self, line):
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.read_reply()

    def wait_closed(self, timeout=10.0):
        """True when the peer closes (EOF or reset) within timeout; what arrived
        before is kept in self.buf."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionError:
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def close(self):
        self.sock.close()


def write_lua_entry(workdir, name, source):
    """A Lua entry in workdir's conf.d: the script NAME.lua holding source,
    enabled by 50-NAME.conf."""
    conf_dir = os.path.join(workdir, "conf.d")
    os.makedirs(conf_dir, exist_ok=True)
    script = os.path.join(workdir, name + ".lua")
    with open(script, "w") as f:
        f.write(source)
    with open(os.path.join(conf_dir, "50-%s.conf" % name), "w") as f:
        f.write(render_config({"plugin": "lua", "script": script}))


# --- the test base --------------------------------------------------------

def base_config(workdir, listen_port, pools, routes=(), listen_options=None, **overrides):
    """The configuration most tests run with: one listener (plus
    listen_options), the given pools and routes, nobody trusted, DNS that
    fails fast. An override of None removes the setting."""
    conf_dir = os.path.join(workdir, "conf.d")
    os.makedirs(conf_dir, exist_ok=True)
    settings = {
        "hostname": "sluice.test",
        "threads": 2,
        "log_level": "info",
        "listen": (dict({"address": "127.0.0.1", "port": listen_port}, **(listen_options or {})),),
        "relay_networks": [],
        "pools": tuple(pools),
        "routes": tuple({"match": m, "pool": p} for m, p in routes),
        "default_pool": pools[0]["name"],
        "limits": {"max_message_size": "40M", "max_recipients": 100},
        # Sessions a test leaves open would otherwise hold every stop 30 s.
        "timeouts": {"command": "5m", "data_block": "3m", "shutdown": "2s"},
        "user": worker_user().pw_name,
        "data": {"bare_newline": "reject", "spool_memory": "1M",
                 "spool_dir": make_worker_dir(os.path.join(workdir, "spool"))},
        # Nobody answers on this port, so reverse lookups fail at once.
        "dns": {"servers": ["127.0.0.1:%d" % free_port(socket.SOCK_DGRAM)],
                "timeout": "1s"},
        "conf_dir": conf_dir,
        # Everything arrives from 127.0.0.1: only the limit tests turn these on.
        "connections": {"per_address": 0, "per_network": 0, "rate": 0},
        "store": {"backend": "lmdb", "path": os.path.join(workdir, "store")},
        # What sluice -t compares a new file with; each test has its own.
        "state_file": os.path.join(workdir, "running.state"),
    }
    for key, value in overrides.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    return render_config(settings)


class SluiceTestCase(unittest.TestCase):
    """Gives each test a temporary directory and stops whatever it started;
    when a test fails, prints the tail of sluice's log."""

    def setUp(self):
        if not os.environ.get("SLUICE_BIN") and not os.path.exists(sluice_bin()):
            self.skipTest("no sluice binary at %s (set SLUICE_BIN)" % sluice_bin())
        make_traversable(os.path.join(os.path.dirname(sluice_bin()), "plugins"))
        make_traversable(HERE)
        self.workdir = tempfile.mkdtemp(prefix="sluice-it-")
        # The worker runs as an unprivileged user: it reads what is here
        # (configuration, scripts) like /etc/sluice, and writes only its own
        # directories (spool, store).
        os.chmod(self.workdir, 0o755)
        self.backends = []
        self.sluices = []
        self.clients = []
        self.addCleanup(self._cleanup)

    def _failed(self):
        # The outcome's success flag is per test part (cleanups start afresh),
        # so look at what the result has recorded against this test.
        result = getattr(self._outcome, "result", None)
        reported = getattr(result, "errors", []) + getattr(result, "failures", [])
        return any(test is self for test, _ in reported) or not self._outcome.success

    def _cleanup(self):
        failed = self._failed()
        for c in self.clients:
            c.close()
        for s in self.sluices:
            s.stop()
            if failed:
                print("\n--- sluice log tail (%s) ---\n%s\n--- end ---"
                      % (self.id(), s.log_tail()))
        for b in self.backends:
            b.close()
            if failed:
                print("--- backend %s output ---\n%s" % (b.name, b.output_text()[-3000:]))
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start_backend(self, name="a", *args):
        b = Backend(self.workdir, name, args)
        self.backends.append(b)
        return b

    def start_sluice(self, config_text, **kwargs):
        s = Sluice(self.workdir, config_text, **kwargs)
        self.sluices.append(s)
        return s

    def start_relay(self, pools, routes, **overrides):
        """Allocates the listen port, starts sluice; returns (sluice, port)."""
        port = free_port()
        s = self.start_sluice(base_config(self.workdir, port, pools, routes, **overrides))
        return s, port

    def connect(self, port, **kwargs):
        c = RawClient(port, **kwargs)
        self.clients.append(c)
        return c

    def open_session(self, port, helo="client.test"):
        """A raw client past the banner and EHLO."""
        c = self.connect(port)
        banner = c.read_reply()
        self.assertEqual(banner.code, 220, banner)
        ehlo = c.cmd("EHLO " + helo)
        self.assertEqual(ehlo.code, 250, ehlo)
        return c

    def assertReply(self, reply, code, esc=None, text=None):
        self.assertEqual(reply.code, code, reply)
        if esc is not None:
            self.assertTrue(reply.lines[-1][4:].decode().startswith(esc + " "),
                            "expected %s %s, got %r" % (code, esc, reply))
        if text is not None:
            self.assertIn(text, reply.text)


def has_enhanced_code(reply):
    """Every line's text starts with an enhanced status code of the reply's class."""
    for line in reply.lines:
        m = re.match(rb"^(\d)\d\d[ -](\d)\.\d{1,3}\.\d{1,3}( |$)", line)
        if not m or m.group(1) != m.group(2):
            return False
    return True
