#!/usr/bin/python3
"""A hostile SMTP backend for sluice's adversarial tests.

It behaves like a plain SMTP server except at one step, where it does what
--mode says (garbage replies, silence, an early close, ...). Mode bad_reply
answers the step named by --at (banner, EHLO, XCLIENT, MAIL, RCPT, DATA,
end_of_data, RSET, NOOP, QUIT) with --reply instead (backslash escapes
allowed, "\r\n" appended): a reply of a class that step may not get. Only the first
--bad-conns connections misbehave; later ones are well-behaved, so a test can
prove that the failure released its pool slot and the next transaction works.

Record directory (like backend.py):
  ready          the listening port, written once it accepts
  events.jsonl   one JSON object per event: connect, command, data_end,
                 accepted (a message got 250 to its end of data), bad_reply
                 (the --reply was sent), close
"""

import argparse
import asyncio
import json
import os
import sys

HOSTNAME = "evil.test"
MAX_LINE = 1 << 20
HANG_SECONDS = 3600

MODES = {
    # where the misbehaviour happens, what is sent
    "garbage_banner": "banner",
    "nul_banner": "banner",
    "garbage_rcpt": "RCPT",
    "mixed_codes_rcpt": "RCPT",
    "huge_line_rcpt": "RCPT",
    "nul_rcpt": "RCPT",
    "bare_cr_rcpt": "RCPT",
    "never_reply_rcpt": "RCPT",
    "close_mid_reply_rcpt": "RCPT",
    "reply_before_mail": "EHLO",
    "unsolicited_421_idle": "after_message",
    "hang_after_354": "DATA",
    "data_250_instead_of_354": "DATA",
    "final_reply_with_354": "DATA",
    "close_mid_final_reply": "end_of_data",
    "garbage_final_reply": "end_of_data",
    "never_reply_final": "end_of_data",
    "xclient_rejected": "XCLIENT",
    "xclient_garbage": "XCLIENT",
    "ehlo_garbage_caps": "EHLO",
    "ehlo_refused": "EHLO",
    "never_banner": "banner",
    # a well-formed reply, one byte per --dribble-interval seconds
    "dribble_banner": "banner",
    "dribble_rcpt": "RCPT",
    "dribble_final": "end_of_data",
    "bad_reply": None,  # where: --at
}
DRIBBLED_TEXT = b" dribbled one byte at a time, slower than any timeout allows"

BAD_REPLY_STEPS = ("banner", "EHLO", "XCLIENT", "MAIL", "RCPT", "DATA", "end_of_data", "RSET",
                   "NOOP", "QUIT")


class Recorder:
    def __init__(self, record_dir):
        self.dir = record_dir
        self.events = open(os.path.join(record_dir, "events.jsonl"), "a", buffering=1)
        self.next_conn = 0

    def event(self, **fields):
        self.events.write(json.dumps(fields) + "\n")

    def write_ready(self, port):
        tmp = os.path.join(self.dir, ".ready.tmp")
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, os.path.join(self.dir, "ready"))


class Session:
    def __init__(self, rec, opts, reader, writer):
        self.rec = rec
        self.opts = opts
        self.reader = reader
        self.writer = writer
        rec.next_conn += 1
        self.conn = rec.next_conn
        self.evil = self.conn <= opts.bad_conns
        self.where = (opts.at or MODES[opts.mode]) if self.evil else None
        self.have_rcpt = False

    def evil_at(self, step):
        return self.where == step

    async def send(self, data):
        self.writer.write(data)
        await self.writer.drain()

    async def hang(self):
        await asyncio.sleep(HANG_SECONDS)

    async def dribble(self, data):
        for i in range(len(data)):
            await self.send(data[i:i + 1])
            await asyncio.sleep(self.opts.dribble_interval)
    async def bad_reply_at(self, step):
        """Sends --reply when this connection misbehaves at step; returns
        whether it did."""
        if self.opts.mode != "bad_reply" or not self.evil_at(step):
            return False
        reply = self.opts.reply.encode("latin-1").decode("unicode_escape").encode("latin-1")
        self.rec.event(ev="bad_reply", conn=self.conn, at=step)
        await self.send(reply + b"\r\n")
        return True

    async def run(self):
        self.rec.event(ev="connect", conn=self.conn, evil=self.evil)
        try:
            await self.greet()
            await self.command_loop()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.rec.event(ev="close", conn=self.conn)
            self.writer.close()

    async def greet(self):
        mode = self.opts.mode
        if await self.bad_reply_at("banner"):
            return
        if self.evil_at("banner"):
            if mode == "garbage_banner":
                await self.send(b"hello there, I am not SMTP\r\n")
            elif mode == "nul_banner":
                await self.send(b"220 evil\x00.test ESMTP\r\n")
            elif mode == "dribble_banner":
                await self.dribble(b"220 " + HOSTNAME.encode() + DRIBBLED_TEXT + b"\r\n")
            else:
                await self.hang()
            return
        await self.send(b"220 " + HOSTNAME.encode() + b" ESMTP evil\r\n")

    async def command_loop(self):
        while True:
            line = await self.reader.readuntil(b"\n")
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            self.rec.event(ev="command", conn=self.conn, line=text)
            verb = text.partition(" ")[0].upper()
            handler = getattr(self, "cmd_" + verb, None)
            if handler is None:
                await self.send(b"502 5.5.2 Error: command not recognized\r\n")
                continue
            if await handler(text) == "quit":
                return

    async def cmd_EHLO(self, text):
        mode = self.opts.mode
        if await self.bad_reply_at("EHLO"):
            return
        if self.evil_at("EHLO") and mode == "ehlo_refused":
            await self.send(b"554 5.7.1 go away\r\n")
            return
        caps = [b"250-" + HOSTNAME.encode(), b"250-PIPELINING", b"250-8BITMIME",
                b"250-ENHANCEDSTATUSCODES", b"250-DSN"]
        if self.opts.xclient:
            caps.append(b"250-XCLIENT NAME ADDR PORT PROTO HELO")
        if self.evil_at("EHLO") and mode == "ehlo_garbage_caps":
            caps += [b"250-SIZE 99999999999999999999999999", b"250-XCLIENT",
                     b"250-" + b"X" * 1500, b"250-AUTH \x7f\x01"]
        caps.append(b"250 SIZE 104857600")
        out = b"".join(c + b"\r\n" for c in caps)
        if self.evil_at("EHLO") and mode == "reply_before_mail":
            # Answers MAIL and RCPT before sluice has sent them.
            out += b"250 2.1.0 early\r\n250 2.1.5 early\r\n"
        await self.send(out)

    async def cmd_HELO(self, text):
        await self.send(b"250 " + HOSTNAME.encode() + b"\r\n")

    async def cmd_XCLIENT(self, text):
        if await self.bad_reply_at("XCLIENT"):
            return
        if self.evil_at("XCLIENT"):
            if self.opts.mode == "xclient_rejected":
                await self.send(b"550 5.7.0 Error: insufficient authorization\r\n")
            else:
                await self.send(b"2x0 what\r\n")
            return
        await self.send(b"220 " + HOSTNAME.encode() + b" ESMTP evil\r\n")

    async def cmd_MAIL(self, text):
        if await self.bad_reply_at("MAIL"):
            return
        await self.send(b"250 2.1.0 Ok\r\n")

    async def cmd_RCPT(self, text):
        self.have_rcpt = True
        if await self.bad_reply_at("RCPT"):
            return
        if not self.evil_at("RCPT"):
            await self.send(b"250 2.1.5 Ok\r\n")
            return
        mode = self.opts.mode
        if mode == "garbage_rcpt":
            await self.send(b"OK then\r\n")
        elif mode == "mixed_codes_rcpt":
            await self.send(b"250-2.1.5 fine\r\n550-5.1.1 not fine\r\n250 2.1.5 fine\r\n")
        elif mode == "huge_line_rcpt":
            await self.send(b"250 2.1.5 " + b"A" * (100 * 1024) + b"\r\n")
        elif mode == "nul_rcpt":
            await self.send(b"250 2.1.5 O\x00k\r\n")
        elif mode == "bare_cr_rcpt":
            await self.send(b"250 2.1.5 Ok\rMAIL FROM:<x>\r\n")
        elif mode == "dribble_rcpt":
            await self.dribble(b"250 2.1.5" + DRIBBLED_TEXT + b"\r\n")
        elif mode == "close_mid_reply_rcpt":
            await self.send(b"250-2.1.5 first line\r\n250-2.1")
            self.writer.transport.abort()
            raise ConnectionError("closed mid-reply")
        else:
            await self.hang()

    async def cmd_DATA(self, text):
        mode = self.opts.mode
        if await self.bad_reply_at("DATA"):
            return
        if self.evil_at("DATA"):
            if mode == "hang_after_354":
                await self.send(b"354 go ahead\r\n")
                await self.hang()
            elif mode == "data_250_instead_of_354":
                await self.send(b"250 2.0.0 Ok: queued as NOTHING\r\n")
                return
            elif mode == "final_reply_with_354":
                # The final reply before the body has even been sent.
                await self.send(b"354 go ahead\r\n250 2.0.0 Ok: queued early\r\n")
                await self.read_body()
                return
        await self.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        size = await self.read_body()
        self.rec.event(ev="data_end", conn=self.conn, size=size)
        if await self.bad_reply_at("end_of_data"):
            return
        if self.evil_at("end_of_data"):
            if mode == "close_mid_final_reply":
                await self.send(b"250-2.0.0 Ok\r\n250 2.0")
                self.writer.transport.abort()
                raise ConnectionError("closed mid-reply")
            if mode == "garbage_final_reply":
                await self.send(b"2500 queued\r\n")
                return
            if mode == "dribble_final":
                await self.dribble(b"250 2.0.0" + DRIBBLED_TEXT + b"\r\n")
                return
            await self.hang()
        self.rec.event(ev="accepted", conn=self.conn)
        await self.send(b"250 2.0.0 Ok: queued\r\n")
        if self.evil_at("after_message"):
            await asyncio.sleep(0.2)
            await self.send(b"421 4.3.2 Shutting down\r\n")
            self.writer.transport.abort()
            raise ConnectionError("unsolicited 421")

    async def read_body(self):
        size = 0
        after_crlf = True
        for _ in range(10 ** 7):
            line = await self.reader.readuntil(b"\n")
            if after_crlf and line == b".\r\n":
                return size
            size += len(line)
            after_crlf = line.endswith(b"\r\n")
        return size

    async def cmd_RSET(self, text):
        if await self.bad_reply_at("RSET"):
            return
        await self.send(b"250 2.0.0 Ok\r\n")

    async def cmd_NOOP(self, text):
        if await self.bad_reply_at("NOOP"):
            return
        await self.send(b"250 2.0.0 Ok\r\n")

    async def cmd_QUIT(self, text):
        if not await self.bad_reply_at("QUIT"):
            await self.send(b"221 2.0.0 Bye\r\n")
        return "quit"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--record-dir", required=True)
    p.add_argument("--mode", required=True, choices=sorted(MODES))
    p.add_argument("--bad-conns", type=int, default=1,
                   help="how many connections misbehave before it turns well-behaved")
    p.add_argument("--xclient", action="store_true", help="offer XCLIENT")
    p.add_argument("--dribble-interval", type=float, default=0.5,
                   help="seconds between the bytes of a dribbled reply")
    p.add_argument("--at", choices=BAD_REPLY_STEPS, help="bad_reply: the step answered wrongly")
    p.add_argument("--reply", default="354 3.0.0 go ahead",
                   help="bad_reply: the reply sent there (backslash escapes allowed)")
    opts = p.parse_args(argv)
    if (opts.mode == "bad_reply") != (opts.at is not None):
        p.error("--at goes with --mode bad_reply, and only with it")
    return opts


async def serve(opts):
    rec = Recorder(opts.record_dir)

    async def on_client(reader, writer):
        await Session(rec, opts, reader, writer).run()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, limit=MAX_LINE,
                                        reuse_address=True)
    rec.write_ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main():
    try:
        asyncio.run(serve(parse_args(sys.argv[1:])))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
