#!/usr/bin/python3
"""SMTP load helpers for tests/bench/run, also usable by hand.

  hold ADDR -n N       open N sessions, each waits for the greeting, sends EHLO and reads the
                       whole reply, then stays idle until stdin closes or SIGTERM/SIGINT.
  pipeline ADDR -n N   one session, N small messages with PIPELINING (MAIL+RCPT+DATA in one
                       write, the body and the final dot in two writes): prints the time per
                       message. A relay without TCP_NODELAY stalls ~40 ms per message here
                       (Nagle waiting for a delayed ACK).
  load ADDR ...        many sessions, P in parallel, each sending M messages pipelined
                       (MAIL+RCPT+DATA in one write, then the body with its dot, the last one
                       with QUIT behind it), optionally after STARTTLS; prints one JSON line.

Only for loopback targets; every loop is bounded in count and in time.
"""

import argparse
import asyncio
import errno
import json
import selectors
import signal
import socket
import ssl
import sys
import time

EHLO_NAME = "bench.test"


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class ResumingContext(ssl.SSLContext):
    """A client context that offers the newest session it was given (asyncio's start_tls
    has no session argument, so wrap_bio adds it): every handshake after the first resumes
    when the server agrees."""

    session = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None,
                 session=None):
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session=session or self.session)


def tls_client_context(resume=False):
    """TLS 1.3 only, no verification (the benchmark's peers use a throw-away self-signed
    certificate): every contender negotiates the same protocol with the same client. With
    |resume|, a ResumingContext."""
    ctx = (ResumingContext if resume else ssl.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Conn:
    __slots__ = ("sock", "state", "buf", "error")

    def __init__(self, sock):
        self.sock = sock
        # connecting -> greeting -> ehlo -> idle | failed; with STARTTLS:
        # ehlo -> starttls -> handshake -> ehlo2 -> idle
        self.state = "connecting"
        self.buf = b""
        self.error = None


def _reply_complete(buf):
    """Return (True, code) when buf holds a whole (possibly multi-line) reply."""
    start = 0
    while True:
        end = buf.find(b"\r\n", start)
        if end == -1:
            return False, None
        line = buf[start:end]
        if len(line) < 4 or line[3:4] != b"-":
            return True, line[:3].decode("ascii", "replace")
        start = end + 2


class IdleHolder:
    """Opens sessions in batches and keeps them idle after their EHLO reply (with starttls:
    after EHLO, STARTTLS, the handshake and EHLO again inside TLS)."""

    def __init__(self, addr, sources=None, starttls=False):
        self.addr = addr
        self.sources = sources or []  # e.g. ["127.0.0.2", ...] to spread source ports
        self.conns = []
        self.failures = {}
        self.tls_ctx = tls_client_context() if starttls else None

    def _fail(self, conn, sel, why):
        conn.state = "failed"
        conn.error = why
        self.failures[why] = self.failures.get(why, 0) + 1
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _open_batch(self, count, deadline):
        sel = selectors.DefaultSelector()
        batch = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            if self.sources:
                s.bind((self.sources[len(self.conns) % len(self.sources)], 0))
            conn = Conn(s)
            self.conns.append(conn)
            batch.append(conn)
            err = s.connect_ex(self.addr)
            if err not in (0, errno.EINPROGRESS):
                self._fail(conn, sel, "connect:" + errno.errorcode.get(err, str(err)))
                continue
            sel.register(s, selectors.EVENT_WRITE, conn)
        pending = sum(1 for c in batch if c.state != "failed")
        while pending > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                conn = key.data
                if conn.state == "connecting":
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err != 0:
                        self._fail(conn, sel, "connect:" + errno.errorcode.get(err, str(err)))
                        pending -= 1
                        continue
                    conn.state = "greeting"
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                if conn.state == "handshake":
                    if self._handshake_step(conn, sel):
                        conn.sock.send(b"EHLO " + EHLO_NAME.encode() + b"\r\n")
                        conn.state = "ehlo2"
                    elif conn.state == "failed":
                        pending -= 1
                    continue
                try:
                    data = conn.sock.recv(65536)
                    # TLS: more records may sit decrypted-ready in the SSL object already
                    while data and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                        data += conn.sock.recv(65536)
                except ssl.SSLWantReadError:
                    continue
                except OSError as e:
                    self._fail(conn, sel, "recv:" + errno.errorcode.get(e.errno, str(e.errno)))
                    pending -= 1
                    continue
                if not data:
                    self._fail(conn, sel, "closed-in-" + conn.state)
                    pending -= 1
                    continue
                conn.buf += data
                done, code = _reply_complete(conn.buf)
                if not done:
                    continue
                conn.buf = b""
                if conn.state == "greeting":
                    if code != "220":
                        self._fail(conn, sel, "greeting-" + code)
                        pending -= 1
                        continue
                    conn.sock.send(b"EHLO " + EHLO_NAME.encode() + b"\r\n")
                    conn.state = "ehlo"
                elif conn.state == "ehlo" and self.tls_ctx is not None:
                    if code != "250":
                        self._fail(conn, sel, "ehlo-" + code)
                        pending -= 1
                        continue
                    conn.sock.send(b"STARTTLS\r\n")
                    conn.state = "starttls"
                elif conn.state == "starttls":
                    if code != "220":
                        self._fail(conn, sel, "starttls-" + code)
                        pending -= 1
                        continue
                    sel.unregister(conn.sock)
                    conn.sock = self.tls_ctx.wrap_socket(conn.sock, do_handshake_on_connect=False)
                    sel.register(conn.sock, selectors.EVENT_READ, conn)
                    conn.state = "handshake"
                    if self._handshake_step(conn, sel):
                        conn.sock.send(b"EHLO " + EHLO_NAME.encode() + b"\r\n")
                        conn.state = "ehlo2"
                    elif conn.state == "failed":
                        pending -= 1
                elif conn.state in ("ehlo", "ehlo2"):
                    if code != "250":
                        self._fail(conn, sel, conn.state + "-" + code)
                    else:
                        conn.state = "idle"
                        sel.unregister(conn.sock)
                    pending -= 1
        for conn in batch:
            if conn.state not in ("idle", "failed"):
                self._fail(conn, sel, "timeout-in-" + conn.state)
        sel.close()

    def _handshake_step(self, conn, sel):
        """Advance a non-blocking handshake; True when it is done."""
        try:
            conn.sock.do_handshake()
            sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return True
        except ssl.SSLWantReadError:
            sel.modify(conn.sock, selectors.EVENT_READ, conn)
        except ssl.SSLWantWriteError:
            sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        except (ssl.SSLError, OSError) as e:
            self._fail(conn, sel, "handshake:" + type(e).__name__)
        return False

    def open(self, n, batch=250, timeout=120.0):
        """Open n sessions (in batches, to stay under listen backlogs); returns how many are
        idle after their EHLO reply. Gives up on whatever is unfinished after timeout s."""
        deadline = time.monotonic() + timeout
        while len(self.conns) < n and time.monotonic() < deadline:
            self._open_batch(min(batch, n - len(self.conns)), deadline)
        return self.n_idle()

    def n_idle(self):
        return sum(1 for c in self.conns if c.state == "idle")

    def n_alive(self):
        """Idle sessions the other side has not closed (non-blocking peek on each)."""
        alive = 0
        for c in self.conns:
            if c.state != "idle":
                continue
            # peek at the raw socket (an SSLSocket takes no flags): a FIN reads as b""
            raw = socket.socket(fileno=c.sock.fileno()) if isinstance(c.sock, ssl.SSLSocket) \
                else c.sock
            try:
                data = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if data:
                    alive += 1  # unexpected bytes (or TLS records), but still open
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
            finally:
                if raw is not c.sock:
                    raw.detach()
        return alive

    def close(self):
        for c in self.conns:
            if c.state != "failed":
                try:
                    c.sock.close()
                except OSError:
                    pass
        self.conns = []


class LineReader:
    def __init__(self, sock, timeout):
        self.sock = sock
        self.buf = b""
        self.timeout = timeout

    def reply(self):
        """Read one whole reply; returns its code as a string."""
        deadline = time.monotonic() + self.timeout
        while True:
            done, code = _reply_complete(self.buf)
            if done:
                # drop exactly this reply
                start = 0
                while True:
                    end = self.buf.find(b"\r\n", start)
                    line = self.buf[start:end]
                    start = end + 2
                    if len(line) < 4 or line[3:4] != b"-":
                        break
                text = self.buf[:start]
                self.buf = self.buf[start:]
                return code, text
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply within %.0f s" % self.timeout)
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed while waiting for a reply")
            self.buf += data


def pipelined_session(addr, n_messages, body_len=512, split_dot=True, timeout=30.0,
                      max_seconds=120.0, lockstep=False):
    """One session sending n_messages with PIPELINING (or, with lockstep, each command
    after the previous reply, as a client without PIPELINING does); returns a dict with
    per-message times (seconds). Raises on protocol errors."""
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = LineReader(s, timeout)
    times = []
    try:
        code, text = r.reply()
        if code != "220":
            raise RuntimeError("greeting %r" % text)
        s.sendall(b"EHLO " + EHLO_NAME.encode() + b"\r\n")
        code, text = r.reply()
        if code != "250":
            raise RuntimeError("EHLO %r" % text)
        if not lockstep and b"PIPELINING" not in text.upper():
            raise RuntimeError("PIPELINING not advertised: %r" % text)
        line = b"0123456789" * 7 + b"abcdefgh\r\n"  # 80 octets
        body = b"Subject: pipelined\r\n\r\n" + line * max(1, body_len // len(line))
        envelope = b"MAIL FROM:<a@bench.test>\r\nRCPT TO:<b@bench.test>\r\nDATA\r\n"
        stop_at = time.monotonic() + max_seconds
        for i in range(n_messages):
            if time.monotonic() > stop_at:
                break
            t0 = time.perf_counter()
            if lockstep:
                for cmd, want in zip(envelope.split(b"\r\n")[:3], ("250", "250", "354")):
                    s.sendall(cmd + b"\r\n")
                    code, text = r.reply()
                    if code != want:
                        raise RuntimeError("message %d: wanted %s, got %r" % (i, want, text))
            else:
                s.sendall(envelope)
                for want in ("250", "250", "354"):
                    code, text = r.reply()
                    if code != want:
                        raise RuntimeError("message %d: wanted %s, got %r" % (i, want, text))
            if split_dot:
                # Two writes, as MTAs do (body buffer flushed, then the dot): a relay that
                # copies them as two small segments without TCP_NODELAY holds the dot back
                # until the upstream's delayed ACK for the body.
                s.sendall(body)
                time.sleep(0.0005)
                s.sendall(b".\r\n")
            else:
                s.sendall(body + b".\r\n")
            code, text = r.reply()
            if code != "250":
                raise RuntimeError("message %d: end of data got %r" % (i, text))
            times.append(time.perf_counter() - t0)
        s.sendall(b"QUIT\r\n")
        try:
            r.reply()
        except (OSError, TimeoutError, ConnectionError):
            pass
    finally:
        s.close()
    return {"times": times, "pause": 0.0005 if split_dot else 0.0}


def summarize(times):
    if not times:
        return {"n": 0}
    st = sorted(times)
    n = len(st)
    return {
        "n": n,
        "mean_ms": 1000.0 * sum(st) / n,
        "p50_ms": 1000.0 * st[n // 2],
        "p99_ms": 1000.0 * st[min(n - 1, (n * 99) // 100)],
        "max_ms": 1000.0 * st[-1],
        "over_30ms": sum(1 for t in st if t > 0.030),
    }


# ---------------------------------------------------------------- load (asyncio)

LINE = b"0123456789" * 7 + b"abcdefgh\r\n"  # 80 octets


def make_body(size):
    """A message of about `size` octets: a header, then 80-octet lines (none starts with
    a dot), ending in CRLF."""
    head = b"From: <a@bench.test>\r\nTo: <b@bench.test>\r\nSubject: bench\r\n\r\n"
    n = max(1, (size - len(head)) // len(LINE))
    return head + LINE * n


async def _reply(reader, timeout):
    """One whole (multi-line) reply; returns (code, text)."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        lines.append(line)
        if len(lines) > 100:
            raise RuntimeError("reply of more than 100 lines")
        if len(line) < 4 or line[3:4] != b"-":
            return line[:3].decode("ascii", "replace"), b"".join(lines)


async def _expect(reader, want, what, timeout):
    code, text = await _reply(reader, timeout)
    if code != want:
        raise RuntimeError("%s: wanted %s, got %r" % (what, want, text[:200]))
    return text


async def load_session(addr, n_messages, body, tls_ctx, timeout, stats):
    """One session: greeting, EHLO, [STARTTLS, handshake, EHLO], then n_messages sent
    pipelined: MAIL+RCPT+DATA in one write, then the body with its dot (and, after the last
    message, QUIT) in the next. Counts into stats; raises on any unexpected reply."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(addr[0], addr[1], limit=1 << 16), timeout)
    try:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await _expect(reader, "220", "greeting", timeout)
        writer.write(b"EHLO " + EHLO_NAME.encode() + b"\r\n")
        await _expect(reader, "250", "EHLO", timeout)
        if tls_ctx is not None:
            writer.write(b"STARTTLS\r\n")
            await _expect(reader, "220", "STARTTLS", timeout)
            await asyncio.wait_for(writer.start_tls(tls_ctx), timeout)
            if "cipher" not in stats:
                obj = writer.get_extra_info("ssl_object")
                stats["cipher"] = "%s %s" % (obj.version(), obj.cipher()[0])
            writer.write(b"EHLO " + EHLO_NAME.encode() + b"\r\n")
            await _expect(reader, "250", "EHLO after TLS", timeout)
            if isinstance(tls_ctx, ResumingContext):
                obj = writer.get_extra_info("ssl_object")
                stats["resumed"] = stats.get("resumed", 0) + (1 if obj.session_reused else 0)
                if obj.session is not None and obj.session.has_ticket:
                    tls_ctx.session = obj.session  # its ticket arrived with the EHLO reply
        envelope = b"MAIL FROM:<a@bench.test>\r\nRCPT TO:<b@bench.test>\r\nDATA\r\n"
        for i in range(n_messages):
            writer.write(envelope)
            for want, what in (("250", "MAIL"), ("250", "RCPT"), ("354", "DATA")):
                await _expect(reader, want, what, timeout)
            last = i == n_messages - 1
            writer.write(body)
            writer.write(b".\r\nQUIT\r\n" if last else b".\r\n")
            await asyncio.wait_for(writer.drain(), timeout)
            await _expect(reader, "250", "end of data", timeout)
            stats["messages"] += 1
            stats["octets"] += len(body)
        await _expect(reader, "221", "QUIT", timeout)
        stats["sessions"] += 1
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass


async def load(addr, sessions, parallel, per_session, size, starttls, timeout, max_seconds,
               max_errors=20, resume=False):
    """Run `sessions` sessions, `parallel` at a time; returns the counts, the first errors
    and the wall time. With |resume| (and starttls), handshakes resume an earlier session:
    "resumed" counts those that did."""
    body = make_body(size)
    tls_ctx = tls_client_context(resume) if starttls else None
    stats = {"messages": 0, "octets": 0, "sessions": 0, "errors": 0, "error_samples": []}
    if resume:
        stats["resumed"] = 0
    left = [sessions]
    stop_at = time.monotonic() + max_seconds

    async def worker():
        while left[0] > 0 and stats["errors"] < max_errors and time.monotonic() < stop_at:
            left[0] -= 1
            try:
                await load_session(addr, per_session, body, tls_ctx, timeout, stats)
            except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ssl.SSLError) as e:
                stats["errors"] += 1
                if len(stats["error_samples"]) < 3:
                    stats["error_samples"].append("%s: %s" % (type(e).__name__, e))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(parallel, sessions)))))
    stats["seconds"] = time.perf_counter() - t0
    stats["timed_out"] = left[0] > 0 and time.monotonic() >= stop_at
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold", help="hold N idle sessions after EHLO")
    h.add_argument("addr")
    h.add_argument("-n", type=int, default=5000)
    h.add_argument("--spread", type=int, default=0,
                   help="bind to 127.0.0.2..127.0.0.(1+K) as source addresses")
    h.add_argument("--max-seconds", type=float, default=600.0,
                   help="stop holding after this long even if stdin stays open")
    p = sub.add_parser("pipeline", help="one pipelined session, time per message")
    p.add_argument("addr")
    p.add_argument("-n", type=int, default=500)
    p.add_argument("--body", type=int, default=512)
    p.add_argument("--no-split", action="store_true", help="send body and dot in one write")
    p.add_argument("--lockstep", action="store_true", help="no pipelining: one command at a time")
    lo = sub.add_parser("load", help="many pipelined sessions; prints one JSON line")
    lo.add_argument("addr")
    lo.add_argument("--sessions", type=int, default=1000, help="sessions in all (1000)")
    lo.add_argument("--parallel", type=int, default=50, help="sessions at once (50)")
    lo.add_argument("--per-session", type=int, default=10, help="messages per session (10)")
    lo.add_argument("--size", type=int, default=4096, help="message size, octets (4096)")
    lo.add_argument("--starttls", action="store_true", help="STARTTLS (TLS 1.3) after EHLO")
    lo.add_argument("--resume", action="store_true",
                    help="with --starttls: resume the newest TLS session (tickets)")
    lo.add_argument("--timeout", type=float, default=30.0, help="per reply, seconds (30)")
    lo.add_argument("--max-seconds", type=float, default=600.0,
                    help="start no new session after this long (600)")
    args = ap.parse_args()
    addr = parse_addr(args.addr)
    if args.cmd == "load":
        res = asyncio.run(load(addr, args.sessions, args.parallel, args.per_session, args.size,
                               args.starttls, args.timeout, args.max_seconds,
                               resume=args.resume))
        print(json.dumps(res), flush=True)
        return 0 if res["errors"] == 0 and not res["timed_out"] else 1
    if args.cmd == "hold":
        sources = ["127.0.0.%d" % (2 + i) for i in range(args.spread)]
        holder = IdleHolder(addr, sources)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        n = holder.open(args.n)
        print("held %d of %d; failures: %s" % (n, args.n, holder.failures or "none"), flush=True)
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin, selectors.EVENT_READ)
        end = time.monotonic() + args.max_seconds
        while not stop and time.monotonic() < end:
            if sel.select(timeout=0.5) and not sys.stdin.buffer.read1(4096):
                break
        print("still open: %d" % holder.n_alive(), flush=True)
        holder.close()
        return 0
    res = pipelined_session(addr, args.n, args.body, not args.no_split, lockstep=args.lockstep)
    print(" ".join("%s=%s" % (k, ("%.3f" % v) if isinstance(v, float) else v)
                   for k, v in summarize(res["times"]).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
