#!/usr/bin/python3
"""A recording SMTP backend for sluice's integration tests.

It runs as its own process so a test can kill it mid-transaction. It is a
plain asyncio server (not aiosmtpd's SMTP class) because the tests need what a
library server hides: the exact bytes of DATA as they arrived (still
dot-stuffed), Postfix's XCLIENT semantics, a PROXY header before the banner,
and replies that are withheld or never sent.

Everything it observes goes into the record directory:
  ready                  the listening port, written once it accepts
  events.jsonl           one JSON object per event (connect, command, xclient,
                         proxy, close, data_end, replied), in order; command
                         and data_end carry segs, the data segments received
                         on the connection so far
  max_concurrent         the highest number of simultaneous connections
  msg-NNNNNN.json        envelope of each accepted message (written last, so
                         its presence means the message is complete)
  msg-NNNNNN.eml         the message as content: dot-unstuffed, CRLF lines
  msg-NNNNNN.raw         the DATA bytes exactly as received, without ".\\r\\n"

Replies given on the command line use "|" to separate the lines of a
multi-line reply: "550-5.1.1 first|550 5.1.1 last".
"""

import argparse
import asyncio
import json
import os
import re
import socket
import ssl
import struct
import sys

HOSTNAME = "backend.test"
MAX_LINE = 1 << 20
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_TIMEOUT = 10.0
XCLIENT_ATTRS = "NAME ADDR PORT PROTO HELO"
TCP_INFO_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in struct tcp_info (Linux >= 4.6)


def xtext_decode(value):
    """RFC 1891 xtext: "+XX" is the byte XX in hex."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def reply_lines(spec):
    return [line.encode() + b"\r\n" for line in spec.split("|")]


class Recorder:
    """Shared state of the process: counters and the record directory."""

    def __init__(self, opts):
        self.opts = opts
        self.dir = opts.record_dir
        self.events = open(os.path.join(self.dir, "events.jsonl"), "a", buffering=1)
        self.active = 0
        self.max_active = 0
        self.next_conn = 0
        self.next_msg = 0
        self.write_max()

    def event(self, **fields):
        self.events.write(json.dumps(fields) + "\n")

    def write_max(self):
        self.write_atomic("max_concurrent", str(self.max_active).encode())

    def write_atomic(self, name, data):
        tmp = os.path.join(self.dir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(self.dir, name))

    def connection_opened(self):
        self.next_conn += 1
        self.active += 1
        if self.active > self.max_active:
            self.max_active = self.active
            self.write_max()
        return self.next_conn

    def connection_closed(self):
        self.active -= 1

    def save_message(self, envelope, content, raw):
        self.next_msg += 1
        base = "msg-%06d" % self.next_msg
        self.write_atomic(base + ".eml", content)
        self.write_atomic(base + ".raw", raw)
        self.write_atomic(base + ".json", json.dumps(envelope, indent=1).encode())
        return base


class Session:
    """One backend connection."""

    def __init__(self, rec, reader, writer):
        self.rec = rec
        self.opts = rec.opts
        self.reader = reader
        self.writer = writer
        self.conn = rec.connection_opened()
        peer = writer.get_extra_info("peername")
        self.peer = {"addr": peer[0], "port": peer[1]}
        self.proxy = None
        self.xclient = None
        self.helo = None
        self.ehlo_names = []
        self.commands = []
        self.tls = None  # the TLS version once STARTTLS is done
        self.accepted = 0  # messages taken on this connection
        self.reset()

    def data_segments(self):
        """TCP segments with data received on this connection so far (Linux
        tcp_info's tcpi_data_segs_in), or None: what tells one write of the
        peer from two, however fast this side reads."""
        sock = self.writer.get_extra_info("socket")
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            return struct.unpack_from("I", info, TCP_INFO_DATA_SEGS_IN)[0]
        except (OSError, AttributeError, struct.error):
            return None

    def reset(self):
        self.mail_from = None
        self.mail_options = []
        self.rcpt_tos = []
        self.rcpt_options = []

    async def send(self, lines):
        for line in lines:
            self.writer.write(line)
        await self.writer.drain()

    async def run(self):
        self.rec.event(ev="connect", conn=self.conn, peer=self.peer)
        try:
            if self.opts.proxy and not await self.read_proxy_header():
                return
            await self.send([b"220 " + HOSTNAME.encode() + b" ESMTP recorder\r\n"])
            await self.command_loop()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.rec.connection_closed()
            self.rec.event(ev="close", conn=self.conn)
            self.writer.close()

    async def command_loop(self):
        while True:
            line = await self.reader.readuntil(b"\n")
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            self.commands.append(text)
            self.rec.event(ev="command", conn=self.conn, line=text, segs=self.data_segments())
            verb, _, arg = text.partition(" ")
            handler = getattr(self, "cmd_" + verb.upper(), None)
            if handler is None:
                await self.send([b"502 5.5.2 Error: command not recognized\r\n"])
                continue
            if await handler(arg.strip()) == "quit":
                return

    async def read_proxy_header(self):
        try:
            head = await asyncio.wait_for(self.reader.readexactly(6), PROXY_TIMEOUT)
            if head == b"PROXY ":
                rest = await asyncio.wait_for(self.reader.readuntil(b"\n"), PROXY_TIMEOUT)
                self.proxy = self.parse_proxy_v1(rest)
            elif head == PROXY_V2_SIGNATURE[:6]:
                rest = await asyncio.wait_for(self.reader.readexactly(10), PROXY_TIMEOUT)
                if head + rest[:6] != PROXY_V2_SIGNATURE:
                    raise ValueError("bad v2 signature")
                length = struct.unpack("!H", rest[8:10])[0]
                body = await asyncio.wait_for(self.reader.readexactly(length), PROXY_TIMEOUT)
                self.proxy = self.parse_proxy_v2(rest[6], rest[7], body)
            else:
                raise ValueError("no PROXY header")
        except (ValueError, IndexError, struct.error, asyncio.TimeoutError) as e:
            self.rec.event(ev="proxy_error", conn=self.conn, error=str(e))
            return False
        self.rec.event(ev="proxy", conn=self.conn, **self.proxy)
        return True

    @staticmethod
    def parse_proxy_v1(rest):
        parts = rest.rstrip(b"\r\n").decode("ascii").split(" ")
        if parts[0] == "UNKNOWN":
            return {"version": 1, "family": "UNKNOWN"}
        return {"version": 1, "family": parts[0], "src_addr": parts[1],
                "dst_addr": parts[2], "src_port": int(parts[3]), "dst_port": int(parts[4])}

    @staticmethod
    def parse_proxy_v2(ver_cmd, fam, body):
        if ver_cmd >> 4 != 2:
            raise ValueError("bad v2 version")
        info = {"version": 2, "command": "PROXY" if ver_cmd & 0xF == 1 else "LOCAL"}
        if fam == 0x11:
            src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
            af = socket.AF_INET
        elif fam == 0x21:
            src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
            af = socket.AF_INET6
        else:
            info["family"] = fam
            return info
        info.update(family=fam, src_addr=socket.inet_ntop(af, src),
                    dst_addr=socket.inet_ntop(af, dst), src_port=sport, dst_port=dport)
        return info

    async def cmd_EHLO(self, arg):
        self.helo = arg
        self.ehlo_names.append(arg)
        self.reset()
        if self.opts.delay_ehlo:
            await asyncio.sleep(self.opts.delay_ehlo)
        caps = ["PIPELINING", "SIZE 104857600", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN"]
        if self.opts.no_8bitmime:
            caps.remove("8BITMIME")
        if self.opts.smtputf8:
            caps.append("SMTPUTF8")
        if self.opts.tls_cert and not self.tls:
            caps.append("STARTTLS")
        if self.opts.xclient:
            caps.append("XCLIENT " + XCLIENT_ATTRS)
        lines = ["250-" + HOSTNAME] + ["250-" + c for c in caps[:-1]] + ["250 " + caps[-1]]
        await self.send([line.encode() + b"\r\n" for line in lines])
        if self.opts.speak_after_ehlo and len(self.ehlo_names) == 1:
            asyncio.get_running_loop().create_task(self.speak_unasked())

    async def speak_unasked(self):
        """A reply nobody asked for, a moment after the first EHLO."""
        await asyncio.sleep(0.3)
        self.rec.event(ev="spoke_unasked", conn=self.conn)
        await self.send(reply_lines(self.opts.speak_after_ehlo))

    async def cmd_STARTTLS(self, arg):
        if not self.opts.tls_cert or self.tls:
            await self.send([b"502 5.5.1 Error: command not implemented\r\n"])
            return
        reply = b"220 2.0.0 Ready to start TLS\r\n"
        if self.opts.tls_plaintext_after_220:
            # Response injection: a reply sluice must not take as if over TLS.
            reply += b"250 2.1.0 injected\r\n"
        await self.send([reply])
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.opts.tls_cert, self.opts.tls_key)
        await self.writer.start_tls(ctx)
        self.tls = self.writer.get_extra_info("ssl_object").version()
        self.rec.event(ev="tls", conn=self.conn, version=self.tls)
        self.helo = None
        self.reset()

    async def cmd_HELO(self, arg):
        self.helo = arg
        self.ehlo_names.append(arg)
        self.reset()
        await self.send([b"250 " + HOSTNAME.encode() + b"\r\n"])

    async def cmd_XCLIENT(self, arg):
        if not self.opts.xclient:
            await self.send([b"502 5.5.2 Error: command not recognized\r\n"])
            return
        attrs = {}
        for item in arg.split():
            name, _, value = item.partition("=")
            attrs[name.upper()] = xtext_decode(value)
        self.xclient = dict(self.xclient or {}, **attrs)
        self.rec.event(ev="xclient", conn=self.conn, attrs=attrs)
        # Postfix: XCLIENT resets the session, which starts over with a greeting.
        self.helo = None
        self.reset()
        await self.send([b"220 " + HOSTNAME.encode() + b" ESMTP recorder\r\n"])

    async def cmd_MAIL(self, arg):
        if self.opts.kept_mail and self.accepted > 0:
            return await self.end_kept_connection()
        if self.mail_from is not None:
            await self.send([b"503 5.5.1 Error: nested MAIL command\r\n"])
            return
        if self.opts.mail_reply:
            await self.send(reply_lines(self.opts.mail_reply))
            return
        path, options = split_path(arg, "FROM:")
        self.mail_from = path
        self.mail_options = options
        await self.send([b"250 2.1.0 Ok\r\n"])

    async def cmd_RCPT(self, arg):
        if self.mail_from is None:
            await self.send([b"503 5.5.1 Error: need MAIL command\r\n"])
            return
        path, options = split_path(arg, "TO:")
        override = self.opts.rcpt_reply.get(path.lower())
        if override and not override.startswith("2"):
            await self.send(reply_lines(override))
            return
        self.rcpt_tos.append(path)
        self.rcpt_options.append(options)
        await self.send(reply_lines(override) if override else [b"250 2.1.5 Ok\r\n"])

    async def cmd_DATA(self, arg):
        if not self.rcpt_tos:
            await self.send([b"554 5.5.1 Error: no valid recipients\r\n"])
            return None
        await self.send([b"354 End data with <CR><LF>.<CR><LF>\r\n"])
        content, raw, bare_lf = await self.read_body()
        self.rec.event(ev="data_end", conn=self.conn, size=len(raw), segs=self.data_segments())
        if self.opts.exit_on_data:
            os._exit(3)
        if self.opts.die_on_data:
            self.rec.event(ev="die", conn=self.conn)
            self.writer.transport.abort()
            return "quit"
        if self.opts.delay_data:
            await asyncio.sleep(self.opts.delay_data)
        if self.opts.data_reply:
            await self.send(reply_lines(self.opts.data_reply))
        else:
            name = self.save_message(content, raw, bare_lf)
            self.accepted += 1
            await self.send([b"250 2.0.0 Ok: queued as " + name.encode() + b"\r\n"])
            # Recorded, then answered: a kill between the two is the backend's
            # own RFC 1047 window, which the fault test tells apart by this.
            self.rec.event(ev="replied", conn=self.conn, msg=name)
            if self.opts.close_after_message:
                return "quit"
            if self.opts.idle_421_after:
                asyncio.get_running_loop().create_task(self.idle_421())
        self.reset()
        return None

    async def read_body(self):
        """Reads up to <CRLF>.<CRLF>; the end counts only after a real CRLF."""
        content = bytearray()
        raw = bytearray()
        bare_lf = False
        after_crlf = True
        while True:
            line = await self.reader.readuntil(b"\n")
            if after_crlf and line == b".\r\n":
                return bytes(content), bytes(raw), bare_lf
            raw += line
            ends_crlf = line.endswith(b"\r\n")
            bare_lf = bare_lf or not ends_crlf
            content += line[1:] if after_crlf and line.startswith(b".") else line
            after_crlf = ends_crlf

    def save_message(self, content, raw, bare_lf):
        envelope = {
            "conn": self.conn,
            "peer": self.peer,
            "helo": self.helo,
            "ehlo_names": self.ehlo_names,
            "xclient": self.xclient,
            "proxy": self.proxy,
            "mail_from": self.mail_from,
            "mail_options": self.mail_options,
            "rcpt_tos": self.rcpt_tos,
            "rcpt_options": self.rcpt_options,
            "bare_lf": bare_lf,
            "commands": self.commands,
            "tls": self.tls,
        }
        return self.rec.save_message(envelope, content, raw)

    async def end_kept_connection(self):
        """A server whose idle timeout crosses the next MAIL: it goes without
        a reply (close: FIN, reset: RST, exit: and no new connection either)
        or with one (a 421), never taking it."""
        how = self.opts.kept_mail
        self.rec.event(ev="kept_mail_" + ("reply" if how[:1].isdigit() else how), conn=self.conn)
        if how == "exit":
            os._exit(3)
        if how == "reset":
            self.writer.transport.abort()
        elif how != "close":
            await self.send(reply_lines(how))
        return "quit"

    async def idle_421(self):
        """Postfix's way out of an idle session: 421, then close."""
        await asyncio.sleep(self.opts.idle_421_after)
        self.rec.event(ev="idle_421", conn=self.conn)
        self.writer.write(b"421 4.4.2 " + HOSTNAME.encode() + b" Error: timeout exceeded\r\n")
        await self.writer.drain()
        self.writer.close()

    async def cmd_RSET(self, arg):
        self.reset()
        if self.opts.rset_reply:
            await self.send(reply_lines(self.opts.rset_reply))
            return "quit" if self.opts.rset_reply.startswith("421") else None
        await self.send([b"250 2.0.0 Ok\r\n"])

    async def cmd_NOOP(self, arg):
        await self.send([b"250 2.0.0 Ok\r\n"])

    async def cmd_QUIT(self, arg):
        await self.send([b"221 2.0.0 Bye\r\n"])
        return "quit"


def split_path(arg, prefix):
    if not arg.upper().startswith(prefix):
        return "", []
    rest = arg[len(prefix):].strip()
    if rest.startswith("<"):
        end = rest.find(">")
        path, params = rest[1:end], rest[end + 1:]
    else:
        path, _, params = rest.partition(" ")
    return path, params.split()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="0: pick a free one")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--record-dir", required=True)
    p.add_argument("--rcpt-reply", action="append", default=[],
                   help="ADDR=REPLY, lines separated by |")
    p.add_argument("--mail-reply", help="refuse every MAIL FROM with this reply")
    p.add_argument("--data-reply", help="answer the end of data with this instead of 250")
    p.add_argument("--xclient", action="store_true", help="offer and implement XCLIENT")
    p.add_argument("--no-8bitmime", action="store_true", help="do not offer 8BITMIME")
    p.add_argument("--smtputf8", action="store_true", help="offer SMTPUTF8")
    p.add_argument("--tls-cert", help="offer STARTTLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="its key (PEM)")
    p.add_argument("--tls-plaintext-after-220", action="store_true",
                   help="send a plain-text reply right behind STARTTLS's 220")
    p.add_argument("--proxy", action="store_true", help="require a PROXY header first")
    p.add_argument("--delay-data", type=float, default=0.0,
                   help="seconds to wait before the final reply")
    p.add_argument("--delay-ehlo", type=float, default=0.0,
                   help="seconds to wait before answering EHLO")
    p.add_argument("--rset-reply", help="answer RSET with this (a 421 closes the connection)")
    p.add_argument("--idle-421-after", type=float, default=0.0,
                   help="seconds after accepting a message: send 421 and close")
    p.add_argument("--kept-mail", metavar="close|reset|exit|REPLY",
                   help="the first MAIL on a connection that took a message ends it: "
                        "closed, reset, the process gone, or this reply then closed")
    p.add_argument("--speak-after-ehlo", metavar="REPLY",
                   help="0.3 s after the first EHLO's reply, send this unasked")
    p.add_argument("--close-after-message", action="store_true",
                   help="close the connection right after accepting a message")
    p.add_argument("--die-on-data", action="store_true",
                   help="close the connection when the body arrived, before replying")
    p.add_argument("--exit-on-data", action="store_true",
                   help="exit the process when the body arrived, before replying")
    opts = p.parse_args(argv)
    overrides = {}
    for item in opts.rcpt_reply:
        addr, _, reply = item.partition("=")
        overrides[addr.strip().lower()] = reply
    opts.rcpt_reply = overrides
    return opts


async def serve(opts):
    rec = Recorder(opts)

    async def on_client(reader, writer):
        await Session(rec, reader, writer).run()

    server = await asyncio.start_server(on_client, opts.host, opts.port, limit=MAX_LINE,
                                        reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    rec.write_atomic("ready", str(port).encode())
    print("READY %d" % port, flush=True)
    async with server:
        await server.serve_forever()


def main():
    opts = parse_args(sys.argv[1:])
    try:
        asyncio.run(serve(opts))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
