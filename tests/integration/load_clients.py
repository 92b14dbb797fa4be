"""Clients that send messages for a while, one session per message, and
record what each message got: the tests of faults (worker killed, backend
restarted, reloads) compare that with what the backends recorded."""

import email.parser
import socket
import threading
import time

from sluice_harness import RawClient

RCPT = "user@a.example"


def message_id_of(data):
    return email.parser.BytesParser().parsebytes(data, headersonly=True)["Message-ID"]


class Outcome:
    """What the client of one message saw: the reply code to the end of data
    (or an earlier refusal), or None when the session broke before it."""

    def __init__(self, mid, code, text, seconds):
        self.mid, self.code, self.text, self.seconds = mid, code, text, seconds


class LoadClient(threading.Thread):
    """Sends messages until stop is set or max_messages, each on a new session
    with a bounded timeout; records an Outcome for each."""

    def __init__(self, index, port, stop, timeout, max_messages=100000, pause=0.0):
        super().__init__(daemon=True)
        self.index, self.port, self.stop, self.timeout = index, port, stop, timeout
        self.max_messages, self.pause = max_messages, pause
        self.outcomes = []
        self.longest_wait = 0.0

    def one(self, mid):
        started = time.monotonic()
        c = None
        code, text = None, ""
        try:
            c = RawClient(self.port, timeout=self.timeout)
            for step in (None, "EHLO load.test", "MAIL FROM:<load@x.example>",
                         "RCPT TO:<%s>" % RCPT, "DATA"):
                reply = c.read_reply() if step is None else c.cmd(step)
                want = 354 if step == "DATA" else (220 if step is None else 250)
                if reply.code != want:
                    code, text = reply.code, reply.text
                    break
            else:
                c.send(b"From: load@x.example\r\nTo: %s\r\nMessage-ID: %s\r\n\r\nbody\r\n.\r\n"
                       % (RCPT.encode(), mid.encode()))
                reply = c.read_reply()
                code, text = reply.code, reply.text
                if code == 250:
                    c.cmd("QUIT")
        except (OSError, ConnectionError, ValueError) as e:
            text = repr(e)
        finally:
            if c:
                c.close()
        seconds = time.monotonic() - started
        self.longest_wait = max(self.longest_wait, seconds)
        self.outcomes.append(Outcome(mid, code, text, seconds))

    def run(self):
        for n in range(self.max_messages):
            if self.stop.is_set():
                return
            self.one("<load-%d-%d@x.example>" % (self.index, n))
            if self.pause:
                time.sleep(self.pause)


class Tally:
    """Outcomes of every client checked against what the backends recorded."""

    def __init__(self, clients, delivered_ids):
        self.outcomes = [o for c in clients for o in c.outcomes]
        self.delivered = {}
        for mid in delivered_ids:
            self.delivered[mid] = self.delivered.get(mid, 0) + 1
        self.accepted = [o for o in self.outcomes if o.code == 250]
        self.refused = [o for o in self.outcomes if o.code is not None and o.code != 250]
        self.broken = [o for o in self.outcomes if o.code is None]
        self.lost = [o.mid for o in self.accepted if self.delivered.get(o.mid, 0) == 0]
        self.doubled = sorted(mid for mid, n in self.delivered.items() if n > 1)
        self.refused_but_delivered = [o.mid for o in self.refused if o.mid in self.delivered]
        # RFC 1047: the backend took it, the client never heard the 250.
        self.unheard = [o.mid for o in self.broken if o.mid in self.delivered]
        known = {o.mid for o in self.outcomes}
        self.unknown = sorted(mid for mid in self.delivered if mid not in known)

    def refusals(self):
        """How many refusals of each reply (code and enhanced code)."""
        counts = {}
        for o in self.refused:
            key = " ".join(o.text.splitlines()[-1].split()[:2]) if o.text else str(o.code)
            counts[key] = counts.get(key, 0) + 1
        return ", ".join("%s: %d" % kv for kv in sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self):
        return ("%d messages: %d got 250, %d refused (4xx/5xx) [%s], %d broken sessions "
                "(%d of them delivered: RFC 1047 window); %d lost, %d doubled, "
                "%d refused but delivered"
                % (len(self.outcomes), len(self.accepted), len(self.refused), self.refusals(),
                   len(self.broken), len(self.unheard), len(self.lost), len(self.doubled),
                   len(self.refused_but_delivered)))
