#!/usr/bin/python3
"""SMTP load helpers for tests/bench/run, also usable by hand.

  hold ADDR -n N       open N sessions, each waits for the greeting, sends EHLO and reads the
                       whole reply, then stays idle until stdin closes or SIGTERM/SIGINT.
  pipeline ADDR -n N   one session, N small messages with PIPELINING (MAIL+RCPT+DATA in one
                       write, the body and the final dot in two writes): prints the time per
                       message. A relay without TCP_NODELAY stalls ~40 ms per message here
                       (Nagle waiting for a delayed ACK).

Only for loopback targets; every loop is bounded in count and in time.
"""

import argparse
import errno
import selectors
import signal
import socket
import sys
import time

EHLO_NAME = "bench.test"


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Conn:
    __slots__ = ("sock", "state", "buf", "error")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connecting"  # -> greeting -> ehlo -> idle | failed
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
    """Opens sessions in batches and keeps them idle after their EHLO reply."""

    def __init__(self, addr, sources=None):
        self.addr = addr
        self.sources = sources or []  # e.g. ["127.0.0.2", ...] to spread source ports
        self.conns = []
        self.failures = {}

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
                try:
                    data = conn.sock.recv(65536)
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
                elif conn.state == "ehlo":
                    if code != "250":
                        self._fail(conn, sel, "ehlo-" + code)
                    else:
                        conn.state = "idle"
                        sel.unregister(conn.sock)
                    pending -= 1
        for conn in batch:
            if conn.state not in ("idle", "failed"):
                self._fail(conn, sel, "timeout-in-" + conn.state)
        sel.close()

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
            try:
                data = c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if data:
                    alive += 1  # unexpected bytes, but still open
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
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
    args = ap.parse_args()
    addr = parse_addr(args.addr)
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
