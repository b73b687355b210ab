#!/usr/bin/env python3
"""Session fuzzer: a seeded hostile client and a recording upstream around the real proxy.

The parsers have libFuzzer targets; this drives the session code, where the state machines
live. Every session is one client connection through the real binary ($PROXY_BIN) to an
upstream written here, and every session is checked against the invariants below as soon
as it ends.

THE MODEL
=========

  client (seeded)  --leg 1-->  smtp-tls-proxy  --leg 2-->  RecordingUpstream (seeded)

* RecordingUpstream is an SMTP server in threads (real sockets; real TLS with python's ssl
  when it offers STARTTLS). Per session it draws its capabilities (PIPELINING, CHUNKING,
  AUTH PLAIN LOGIN, STARTTLS, XCLIENT ADDR PORT PROTO HELO NAME, 8BITMIME, SIZE) and per
  connection its behaviour: reply codes (2xx/4xx/5xx, sometimes multi-line), 334
  continuations for AUTH, what it does with STARTTLS (TLS, TLS with a reply injected after
  its 220, refusal, close, garbage), occasional early closes (silent or after a 421), an
  early rejection in the middle of DATA content, an unsolicited reply glued to its
  greeting, and unsolicited replies on demand (see "idle injection" below).
  It is *lenient* like the servers SMTP smuggling exploits: command lines end at CRLF, LF
  or a lone CR; NUL bytes are stripped; leading whitespace is ignored; DATA content ends at
  any "." line framed by CRLF, LF or CR on either side (LF.LF, CR.CR, LF.CRLF, CRLF.LF, ...)
  after NULs are stripped; and what follows is read as commands. So whatever the proxy lets
  through that a lenient server could misread shows up as an executed line.
  Every reply it sends carries a unique tag ("250 2.1.0 Ok #u17", on every line of a
  multi-line reply; on the first line of an EHLO reply), and it records per connection the
  PROXY header if any, every line it read (command or SASL response, with the TLS state at
  that time and the tag of its reply), and every message (content as read, verdict, tag).
* The client (one random.Random per session seed) speaks to the proxy in groups: pipelined
  commands with whitespace and case variants of verbs (leading space/tab, tab separators,
  lower/mixed case, trailing spaces, bare-LF line ends), NUL and bare-CR lines, over-long
  lines, XCLIENT, STARTTLS (with python ssl when the proxy answers 220, with command lines
  injected after the STARTTLS line in the same write), AUTH with pipelined follow-up lines,
  DATA with hostile content (bare LF, bare CR, NUL bytes, "\\n.\\n", "\\r\\n.\\r",
  "\\r\\n\\0.\\r\\n", ... followed by "MAIL FROM:<smuggled...>" lines), BDAT chunks of random
  sizes with LAST, writes split at random points, half-closes (shutdown(SHUT_WR)), abrupt
  closes (FIN or RST, mid-line or mid-message). It reacts only to reply codes (354 starts
  content, 220 to STARTTLS starts TLS, 334 makes the next line a SASL response).
  Every command carries a unique token (an address, an EHLO name, a NOOP argument), and
  every message starts with "X-Fuzz-Id: <id>", so upstream records map back to client
  lines and messages.
* Idle injection: now and then, after every reply of a group has arrived, the client asks
  the upstream connection that sent the last reply to send an unsolicited reply. At that
  moment the proxy provably has no command outstanding there, so the reply is unsolicited
  by any reading; the client waits 150 ms before going on.

Roles of client lines are decided afterwards from the replies the client got, exactly as a
correct proxy must decide them: a line after a 220 to STARTTLS (same write) is "injected";
a line after a 334 to an AUTH line or to a SASL response is a SASL response; other lines
are commands. A command line is *relayable* unless it has leading whitespace, a NUL, a bare
CR, is over-long, was cut by the client's close, or its verb (split on any whitespace,
case-insensitive) is XCLIENT or STARTTLS.

THE INVARIANTS (checked after every session; a failure prints seed, config, transcript)
=====================================================================================

1. Upstream-executed lines are only lines the proxy meant to relay. Each command line an
   upstream connection read is either a relayable client command (compared with
   whitespace collapsed, case folded, BDAT in canonical form), in the client's order on
   that connection (envelope commands MAIL/RCPT/NOOP/RSET may be replayed on a later
   connection, nothing else runs twice), or one the proxy originates: EHLO/HELO with a
   name from one of the client's relayable EHLO/HELO lines, "XCLIENT ..." with the
   client's real address before any client command (upstream_identity = xclient only),
   "STARTTLS" right after its EHLO (or XCLIENT) and before any client command
   ([upstream_tls] starttls = may only), "QUIT". (Per connection, executed lines are
   aligned with the client's by a weighted longest common subsequence, so one stray line
   never makes the lines after it look out of order.)
   Each SASL response it read is a client line whose role is SASL response, or "*" (the
   cancel the proxy may substitute). Nothing sent as DATA content or a BDAT chunk, after
   STARTTLS in the same write, as a SASL response, or in a refused form ever executes, even
   for the lenient reader. Also: nothing may reach the upstream before its greeting, and
   nothing after the proxy's own STARTTLS before the handshake.
2. Replies: one per command, in order. A reply with an upstream tag must be the upstream's
   reply to that same line (same text and role; for EHLO/HELO the same name; for the
   greeting the greeting of the session's first upstream connection); a tag reaches the
   client at most once, one reply carries one tag, and unsolicited replies never reach
   it. A 2xx/3xx the proxy makes up itself is allowed only for NOOP, RSET, QUIT and
   STARTTLS. The client never waits more than --reply-timeout for a reply; a session the
   proxy ends while replies are due ends with a 421 (or the 221 to QUIT); a half-closed
   client gets all its replies and then the close; nothing but a final 421 arrives
   unasked.
3. End of data: a 2xx to DATA's final dot or to BDAT LAST carries the tag the upstream sent
   when it accepted that very message (by X-Fuzz-Id). Every message the upstream accepted
   is one the client completed, accepted once, and byte-identical to what the client sent
   after normalisation (bare-LF line ends may become CRLF; compared also dot-unstuffed; BDAT
   content untouched). A truncated message (the lenient reader found an end early) fails.
4. Nothing received before a handshake is used after it: lines injected after STARTTLS
   never execute upstream and get no reply (nothing arrives between our 220 and the
   handshake); a reply the upstream injects after its own 220 to the proxy's STARTTLS never
   reaches the client.
5. Identity (upstream_identity = xclient / proxy-v1 / proxy-v2): every upstream connection
   that carried anything carried the identity first: a PROXY header of the configured
   version with the client's real address and port, or an XCLIENT with ADDR = the client's
   address (PORT = its port when sent) accepted with 220 before any client command. An
   upstream that does not offer XCLIENT or refuses it gets no client command at all.
6. The proxy is alive after every session; when a configuration's run ends it exits 0 on
   SIGTERM and its stderr has no sanitizer report.

Each run draws several proxy configurations (upstream_identity none/xclient/proxy-v1/
proxy-v2 in turn; [client_tls] starttls offer/strip; [upstream_tls] starttls off/may;
PIPELINING and CHUNKING on/off upstream; learn_failures on/off) and starts the real binary
for each with harness.Proxy and harness.base_sections(), [log] level = info.

USAGE
=====

  PROXY_BIN=build/smtp-tls-proxy python3 tests/integration/session_fuzz.py --seconds 60
      [--seed N] [--configs K] [--replay CONFIG/IDENTITY:SESSION [--max-groups G]]
      [--verbose] [--benign]

tests/fuzz/session-fuzz wraps this; tests/integration/test_session_fuzz.py runs it in the
default suite. A failing session prints a --replay argument that reruns exactly that
session under exactly that configuration (timing and what the proxy learned from earlier
sessions can still change the outcome); --max-groups cuts it short, and the report already
gives the shortest cut that still showed the failure. --benign makes the client
well-behaved (no refused spellings, no hostile content, no pipelining after EHLO or SASL),
which checks the fuzzer's own model: against a correct proxy it must find nothing.
"""

import argparse
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

CRLF = b"\r\n"
TAG_RE = re.compile(rb"#u(\d+)\b")
REPLY_RE = re.compile(rb"^([2-5][0-9][0-9])([ -]|$)(.*)$", re.S)
# What a lenient server takes for the end of DATA content (after stripping NULs).
LENIENT_END = re.compile(rb"(?:^|\r\n|\n|\r)(\.)(?:\r\n|\n|\r)")
LINE_END = re.compile(rb"\r\n|\n|\r")
MSG_ID_RE = re.compile(rb"^X-Fuzz-Id: ([A-Za-z0-9.-]+)\r?\n")

REPLAYABLE = {b"MAIL", b"RCPT", b"NOOP", b"RSET"}  # envelope replay after a broken TLS leg
LOCAL_OK_VERBS = {b"NOOP", b"RSET", b"QUIT", b"STARTTLS"}  # may get a made-up 2xx
MAX_LINE = 1000  # the proxy's default max_line_length, CRLF included

IDENTITIES = ("none", "xclient", "proxy-v1", "proxy-v2")


def _b(s):
    return s if isinstance(s, bytes) else s.encode()


def norm_cmd(text):
    """The comparable form of a command line: NULs dropped, words split on any
    whitespace, upper-cased, joined by one space; BDAT as "BDAT <n>[ LAST]"."""
    words = [w.upper() for w in text.replace(b"\0", b"").split()]
    if not words:
        return b""
    if words[0] == b"BDAT" and len(words) >= 2 and words[1].isdigit():
        out = [b"BDAT", str(int(words[1])).encode()] + words[2:]
        return b" ".join(out)
    return b" ".join(words)


def verb_of(text):
    words = text.replace(b"\0", b"").split()
    return words[0].upper() if words else b""


def norm_sasl(text):
    return text.replace(b"\0", b"").strip()


def normalize_bare_lf(data):
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def unstuff(data):
    return re.sub(rb"(^|\r\n)\.", rb"\1", data)


PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def parse_proxy_header(buf):
    """(length, info) of a PROXY v1/v2 header at the start of |buf|; (None, None) when more
    bytes are needed; (-1, None) when |buf| does not start with one."""
    n = min(len(buf), len(PROXY_V2_SIG))
    if buf[:n] == PROXY_V2_SIG[:n]:
        if len(buf) < 16:
            return None, None
        length = struct.unpack("!H", buf[14:16])[0]
        if len(buf) < 16 + length:
            return None, None
        body = buf[16:16 + length]
        info = {"version": 2, "command": buf[12] & 0x0F, "family": buf[13]}
        if buf[13] == 0x11 and length >= 12:
            info.update(src=socket.inet_ntop(socket.AF_INET, body[0:4]),
                        dst=socket.inet_ntop(socket.AF_INET, body[4:8]),
                        sport=struct.unpack("!H", body[8:10])[0],
                        dport=struct.unpack("!H", body[10:12])[0])
        return 16 + length, info
    n = min(len(buf), 6)
    if buf[:n] == b"PROXY "[:n]:
        end = buf.find(b"\r\n")
        if end < 0:
            return (None, None) if len(buf) < 107 else (-1, None)
        parts = buf[:end].decode("latin-1").split(" ")
        info = {"version": 1, "proto": parts[1] if len(parts) > 1 else None}
        if len(parts) == 6 and parts[4].isdigit() and parts[5].isdigit():
            info.update(src=parts[2], dst=parts[3], sport=int(parts[4]), dport=int(parts[5]))
        return end + 2, info
    return -1, None


def short(data, n=160):
    r = repr(bytes(data))
    return r if len(r) <= n else r[:n] + f"...({len(data)} bytes)"


class Violation:
    def __init__(self, key, text):
        self.key = key      # the failure class, e.g. "inv1:content-executed"
        self.text = text

    def __repr__(self):
        return f"[{self.key}] {self.text}"


# --------------------------------------------------------------------------------------
# The recording upstream
# --------------------------------------------------------------------------------------

class _Gone(Exception):
    """The upstream connection ends (peer closed, we closed on purpose, or stop)."""


class TagInfo:
    def __init__(self, tag, conn, kind, line=None, msg=None):
        self.tag = tag
        self.conn = conn
        self.kind = kind    # greeting | line | msg | early | unsolicited | tls-injected
        self.line = line    # UpLine answered (line, and msg for BDAT LAST)
        self.msg = msg      # UpMessage (msg, early)
        self.code = None

    def describe(self):
        where = f"upstream conn {self.conn.sess_no}"
        if self.line is not None:
            return (f"#u{self.tag} ({self.kind}) = {where}'s reply {self.code} to "
                    f"{self.line.role} line {short(self.line.raw, 80)}")
        if self.msg is not None:
            return (f"#u{self.tag} ({self.kind}) = {where}'s reply {self.code} to message "
                    f"{self.msg.msg_id}")
        return f"#u{self.tag} ({self.kind}) = {where}'s {self.kind} reply {self.code}"


class UpLine:
    def __init__(self, index, raw, term, role, tls):
        self.index = index
        self.raw = raw          # as received, line end removed
        self.term = term        # the line end it had (CRLF, LF or CR)
        self.text = raw.replace(b"\0", b"")  # what the lenient server executed
        self.role = role        # cmd | sasl
        self.tls = tls
        self.code = None
        self.tag = None
        self.origin = None      # set by the checker: client line, or proxy's own
        self.match = None


class UpMessage:
    def __init__(self, conn, kind, raw, line):
        self.conn = conn
        self.kind = kind        # DATA | BDAT
        self.raw = raw          # DATA: bytes before the "." of the end marker; BDAT: chunks
        m = MSG_ID_RE.match(raw)
        self.msg_id = m.group(1).decode() if m else None
        self.line = line        # the DATA or BDAT LAST line
        self.code = None
        self.tag = None
        self.accepted = False


class UpConn:
    def __init__(self, up, sock, peer, plan, sess_no):
        self.up = up
        self.sock = sock
        self.peer = peer
        self.plan = plan
        self.sess_no = sess_no
        self.rng = random.Random(f"{plan.seed if plan else 0}:{sess_no}")
        self.header = None
        self.lines = []
        self.messages = []
        self.log = []           # transcript of this connection
        self.notes = []         # Violations the upstream saw on the wire
        self.tls = False
        self.bytes_in = 0
        self.closed = threading.Event()
        self.actions = []
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        self.last_tag = None
        self.xclient_ok = False
        self.start = plan.t0 if plan is not None else time.monotonic()

    def note(self, key, text, line=None):
        v = Violation(key, f"upstream conn {self.sess_no}: {text}")
        v.line = line
        self.notes.append(v)

    def event(self, text):
        self.log.append(f"{time.monotonic() - self.start:7.3f} {text}")

    def request(self, fn):
        """Runs fn(io) in the connection's own thread (it owns the socket and TLS)."""
        done = threading.Event()
        box = {}

        def action(io):
            try:
                box["result"] = fn(io)
            finally:
                done.set()

        with self.lock:  # the thread closes the pipe under the lock too
            if self.closed.is_set():
                return None
            self.actions.append(action)
            try:
                os.write(self.wake_w, b"x")
            except OSError:
                return None
        if not done.wait(2.0):
            return None
        return box.get("result")


class UpPlan:
    """The upstream's behaviour for one session (drawn from the session seed)."""

    def __init__(self, seed, cfg):
        r = random.Random(f"{seed}:upstream")
        self.seed = seed
        self.t0 = time.monotonic()  # the session's clock, for both transcripts
        self.cfg = cfg
        self.pipelining = cfg.pipelining
        self.chunking = cfg.chunking
        self.auth = r.random() < 0.5
        self.starttls = r.random() < (0.7 if cfg.upstream_tls == "may" else 0.3)
        self.xclient = r.random() < (0.85 if cfg.identity == "xclient" else 0.15)
        attrs = ["PORT", "PROTO", "HELO", "NAME"]
        r.shuffle(attrs)
        self.xclient_attrs = " ".join(["ADDR"] + attrs[:r.randint(0, 4)])
        self.eightbit = r.random() < 0.7
        self.size = r.random() < 0.5
        self.fault_rate = r.choice([0.0, 0.02, 0.05, 0.1])  # scale of random misbehaviour

    def describe(self):
        caps = [c for c, on in (("PIPELINING", self.pipelining), ("CHUNKING", self.chunking),
                                ("AUTH", self.auth), ("STARTTLS", self.starttls),
                                (f"XCLIENT {self.xclient_attrs}", self.xclient),
                                ("8BITMIME", self.eightbit), ("SIZE", self.size)) if on]
        return f"caps=[{', '.join(caps)}] fault_rate={self.fault_rate}"


class _UpIO:
    """Buffered, lenient reading for one upstream connection (plain or TLS)."""

    def __init__(self, up, conn):
        self.up = up
        self.conn = conn
        self.sock = conn.sock
        self.buf = bytearray()

    def send(self, data):
        self.sock.sendall(data)

    def _run_actions(self):
        try:
            os.read(self.conn.wake_r, 64)
        except OSError:
            pass
        with self.conn.lock:
            actions, self.conn.actions = self.conn.actions, []
        for a in actions:
            a(self)

    def fill(self, timeout=None):
        """Reads more bytes into buf. False when |timeout| passed first; _Gone at EOF."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.up.stopping.is_set():
                raise _Gone()
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
            if not pending:
                wait = 0.2
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.monotonic()))
                r, _, _ = select.select([self.sock, self.conn.wake_r], [], [], wait)
                if self.conn.wake_r in r:
                    self._run_actions()
                if self.sock not in r:
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                    continue
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, socket.timeout):
                continue
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.conn.event("<- EOF")
                raise _Gone()
            self.conn.bytes_in += len(data)
            self.buf += data
            return True

    def readline(self):
        """One line ended by CRLF, LF or a lone CR (a lone CR at the end of what arrived
        waits briefly for a LF). Returns (line, line end)."""
        while True:
            m = LINE_END.search(self.buf)
            if m:
                if m.group() == b"\r" and m.end() == len(self.buf) and self.fill(1.0):
                    continue
                line, term = bytes(self.buf[:m.start()]), m.group()
                del self.buf[:m.end()]
                return line, term
            if len(self.buf) > 200000:
                self.conn.note("upstream:line-too-long", "a 200 kB line without an end")
                raise _Gone()
            self.fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_data(self, fault_after=None):
        """DATA content up to what a lenient server takes for its end; returns (content,
        None), or (bytes so far, "fault") once |fault_after| bytes have arrived first."""
        start = 0
        while True:
            raw = bytes(self.buf)
            keep = [i for i, c in enumerate(raw) if c != 0]
            stripped = bytes(raw[i] for i in keep) if len(keep) != len(raw) else raw
            m = LENIENT_END.search(stripped, max(0, start - 4))
            if m:
                if m.end() == len(stripped) and stripped.endswith(b"\r") and self.fill(1.0):
                    continue
                content = raw[:keep[m.start(1)]]
                del self.buf[:keep[m.end() - 1] + 1]
                return content, None
            if fault_after is not None and len(raw) >= fault_after:
                return raw, "fault"
            start = len(stripped)
            self.fill()


class RecordingUpstream:
    """The upstream for one proxy configuration; sessions are run one at a time."""

    def __init__(self, cert, key, host="127.0.0.1"):
        self.host = host
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.port = self.listener.getsockname()[1]
        self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls_ctx.load_cert_chain(cert, key)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.tags = {}
        self.next_tag = 1
        self.plan = None
        self.conns = []         # this session's connections
        self.threads = []

    @property
    def addr(self):
        return f"{self.host}:{self.port}"

    def start(self):
        self.listener.listen(128)
        self.listener.settimeout(0.1)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stopping.set()
        for t in list(self.threads):
            t.join(3)
        self.listener.close()

    def begin_session(self, plan):
        with self.lock:
            self.plan = plan
            self.conns = []

    def session_conns(self):
        with self.lock:
            return list(self.conns)

    def wait_quiet(self, timeout=3.0):
        """Waits until every connection of this session is closed and none new arrives
        for a moment. Returns the connections still open when time ran out."""
        deadline = time.monotonic() + timeout
        while True:
            conns = self.session_conns()
            open_ = [c for c in conns if not c.closed.is_set()]
            if not open_:
                time.sleep(0.03)
                if len(self.session_conns()) == len(conns):
                    return []
                continue
            if time.monotonic() >= deadline:
                return open_
            time.sleep(0.005)

    def force_close(self, conns):
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for c in conns:
            c.closed.wait(2.0)

    def new_tag(self, conn, kind, line=None, msg=None):
        with self.lock:
            tag = self.next_tag
            self.next_tag += 1
            info = TagInfo(tag, conn, kind, line, msg)
            self.tags[tag] = info
        return info

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, peer = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                plan = self.plan
                conn = UpConn(self, sock, peer, plan, len(self.conns) + 1)
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads = [x for x in self.threads if x.is_alive()] + [t]

    # --- replies ------------------------------------------------------------------------

    def reply(self, io, code, texts, kind="line", line=None, msg=None, extra=b"",
              ehlo_caps=None):
        conn = io.conn
        info = self.new_tag(conn, kind, line, msg)
        info.code = code
        if isinstance(texts, str):
            texts = [texts]
        if ehlo_caps is not None:
            lines = [f"{texts[0]} #u{info.tag}"] + list(ehlo_caps)
        else:
            if len(texts) == 1 and conn.rng.random() < 0.12:
                texts = texts + ["more text", "end of reply"][:conn.rng.randint(1, 2)]
            lines = [f"{t} #u{info.tag}" for t in texts]
        out = b"".join(f"{code}-{t}\r\n".encode() for t in lines[:-1])
        out += f"{code} {lines[-1]}\r\n".encode()
        if line is not None:
            line.code = code
            line.tag = info.tag
        if msg is not None:
            msg.code = code
            msg.tag = info.tag
        conn.last_tag = info.tag
        conn.event(f"-> {short(out + extra, 200)}")
        io.send(out + extra)
        return info

    def double_reply(self, conn):
        """Sometimes a second, unsolicited reply glued to a reply the proxy must wait for
        (after XCLIENT, a refused STARTTLS, 354): the proxy has nothing in flight then."""
        if conn.rng.random() >= conn.plan.fault_rate * 3:
            return b""
        info = self.new_tag(conn, "unsolicited")
        info.code = conn.rng.choice([250, 250, 220, 554])
        conn.event(f"double reply #u{info.tag}")
        return f"{info.code} 2.0.0 early reply #u{info.tag}\r\n".encode()

    def _pick(self, rng, table):
        """table: [(weight, code, text)] -> (code, text)."""
        total = sum(w for w, _, _ in table)
        x = rng.random() * total
        for w, code, text in table:
            x -= w
            if x < 0:
                return code, text
        return table[-1][1], table[-1][2]

    # --- one connection -----------------------------------------------------------------

    def _serve(self, conn):
        io = _UpIO(self, conn)
        conn.sock.settimeout(2.0)
        conn.event(f"accepted from {conn.peer[0]}:{conn.peer[1]}")
        plan = conn.plan
        try:
            if plan is None:
                raise _Gone()
            if plan.cfg.identity in ("proxy-v1", "proxy-v2"):
                self._read_header(io)
            self._greet(io)
            st = {"greeted": False, "mail": False, "rcpts": 0, "bdat": None,
                  "sasl": None, "authed": False, "count": 0}
            fault = plan.fault_rate
            st["close_at"] = (conn.rng.randint(1, 14)
                              if conn.rng.random() < fault * 3 else None)
            while True:
                line, term = io.readline()
                role = "sasl" if st["sasl"] is not None else "cmd"
                ul = UpLine(len(conn.lines), line, term, role, conn.tls)
                conn.lines.append(ul)
                conn.event(f"<- [{role}{' tls' if conn.tls else ''}] {short(line + term, 200)}")
                if role == "sasl":
                    self._sasl(io, st, ul)
                else:
                    st["count"] += 1
                    if st["close_at"] == st["count"]:
                        if conn.rng.random() < 0.5:
                            self.reply(io, 421, "4.4.2 fuzz upstream closing", line=ul)
                        conn.event("closing on purpose")
                        raise _Gone()
                    self._command(io, st, ul)
        except (_Gone, OSError, ssl.SSLError):
            pass
        except Exception:  # a bug in the fuzzer itself: show it, never hide it
            conn.note("fuzzer:upstream-exception", traceback.format_exc())
        finally:
            try:
                io.sock.close()
            except OSError:
                pass
            with conn.lock:
                conn.closed.set()
                actions, conn.actions = conn.actions, []
                for fd in (conn.wake_r, conn.wake_w):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            for a in actions:
                a(None)

    def _read_header(self, io):
        conn = io.conn
        deadline = time.monotonic() + 1.0
        while True:
            n, info = parse_proxy_header(bytes(io.buf))
            if n is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not io.fill(left):
                n, info = -1, None
                break
        if n is None or n < 0:
            conn.event(f"no PROXY header (first bytes {short(io.buf, 60)})")
            return
        conn.header = info
        del io.buf[:n]
        conn.event(f"PROXY header {info}")

    def _greet(self, io):
        conn = io.conn
        rng = conn.rng
        time.sleep(rng.choice([0, 0, 0.002, 0.01]))
        # Anything here now came before our greeting (and after the PROXY header).
        r, _, _ = select.select([conn.sock], [], [], 0)
        if r:
            try:
                io.fill(0.01)
            except _Gone:
                raise
        if io.buf:
            conn.note("inv1:sent-before-greeting",
                      f"the proxy sent {short(io.buf, 80)} before the upstream's greeting")
        f = conn.plan.fault_rate
        x = rng.random()
        name = f"up{conn.sess_no}.fuzz.test"
        if x < f * 0.3:
            conn.event("closing without a greeting")
            raise _Gone()
        if x < f * 0.6:
            self.reply(io, 421, f"4.3.2 {name} not now", kind="greeting")
            raise _Gone()
        if x < f * 0.9:
            info = self.reply(io, 554, f"5.3.2 {name} no service here", kind="greeting")
        elif x < f * 1.2:
            # An unsolicited reply glued to the greeting: nothing can have been sent yet.
            un = self.new_tag(conn, "unsolicited")
            un.code = 250
            extra = f"250 2.0.0 unsolicited #u{un.tag}\r\n".encode()
            info = self.reply(io, 220, f"{name} ESMTP fuzz", kind="greeting", extra=extra)
        elif rng.random() < 0.1:
            info = self.reply(io, 220, [f"{name} ESMTP fuzz", "multi-line greeting"],
                              kind="greeting")
        else:
            info = self.reply(io, 220, f"{name} ESMTP fuzz", kind="greeting")

    def _ehlo_caps(self, conn):
        p = conn.plan
        caps = []
        if p.pipelining:
            caps.append("PIPELINING")
        if p.size:
            caps.append("SIZE 10240000")
        if p.eightbit:
            caps.append("8BITMIME")
        if p.chunking:
            caps.append("CHUNKING")
        if p.auth:
            caps.append("AUTH PLAIN LOGIN")
        if p.xclient and not conn.xclient_ok:
            caps.append(f"XCLIENT {p.xclient_attrs}")
        if p.starttls and not conn.tls:
            caps.append("STARTTLS")
        caps.append("ENHANCEDSTATUSCODES")
        conn.rng.shuffle(caps)
        return caps

    def _command(self, io, st, ul):
        conn = io.conn
        rng = conn.rng
        p = conn.plan
        words = ul.text.split()
        verb = words[0].upper() if words else b""
        f = p.fault_rate
        if verb in (b"EHLO", b"HELO"):
            st.update(greeted=True, mail=False, rcpts=0, bdat=None)
            name = words[1].decode("latin-1") if len(words) > 1 else ""
            if rng.random() < f * 0.5:
                code = 501 if rng.random() < 0.5 else 421
                self.reply(io, code, "5.5.2 go away", line=ul)
                if code == 421:
                    raise _Gone()
                return
            if verb == b"HELO":
                self.reply(io, 250, f"up{conn.sess_no}.fuzz.test hello {name}", line=ul)
            else:
                self.reply(io, 250, [f"up{conn.sess_no}.fuzz.test greets {name}"], line=ul,
                           ehlo_caps=self._ehlo_caps(conn))
        elif verb == b"STARTTLS":
            self._starttls(io, st, ul)
        elif verb == b"XCLIENT":
            if not p.xclient:
                self.reply(io, 502, "5.5.1 XCLIENT not here", line=ul)
                return
            code, text = self._pick(rng, [(80, 220, f"up{conn.sess_no}.fuzz.test ESMTP xclient"),
                                          (10, 550, "5.7.0 XCLIENT denied"),
                                          (5, 501, "5.5.4 bad XCLIENT"),
                                          (5, 421, "4.7.0 closing")])
            self.reply(io, code, text, line=ul, extra=self.double_reply(conn))
            if code == 421:
                raise _Gone()
            if code == 220:
                conn.xclient_ok = True
                st.update(greeted=False, mail=False, rcpts=0, bdat=None, sasl=None)
        elif verb == b"AUTH":
            self._auth(io, st, ul, words)
        elif verb == b"MAIL":
            if not st["greeted"]:
                self.reply(io, 503, "5.5.1 EHLO first", line=ul)
                return
            code, text = self._pick(rng, [(80, 250, "2.1.0 Ok"), (7, 451, "4.3.0 try later"),
                                          (8, 550, "5.7.1 sender refused"),
                                          (3, 501, "5.5.4 syntax"),
                                          (100 * f, 421, "4.4.2 closing")])
            self.reply(io, code, text, line=ul)
            if code == 421:
                raise _Gone()
            if code == 250:
                st.update(mail=True, rcpts=0, bdat=None)
        elif verb == b"RCPT":
            if not st["mail"]:
                self.reply(io, 503, "5.5.1 MAIL first", line=ul)
                return
            code, text = self._pick(rng, [(80, 250, "2.1.5 Ok"), (8, 450, "4.2.0 greylisted"),
                                          (10, 550, "5.1.1 no such user"),
                                          (100 * f, 421, "4.4.2 closing")])
            self.reply(io, code, text, line=ul)
            if code == 421:
                raise _Gone()
            if code == 250:
                st["rcpts"] += 1
        elif verb == b"DATA":
            self._data(io, st, ul)
        elif verb == b"BDAT":
            self._bdat(io, st, ul, words)
        elif verb == b"RSET":
            st.update(mail=False, rcpts=0, bdat=None)
            self.reply(io, 250, "2.0.0 Ok", line=ul)
        elif verb == b"NOOP":
            self.reply(io, 250, "2.0.0 Ok", line=ul)
        elif verb == b"VRFY":
            self.reply(io, 252, "2.5.2 cannot VRFY", line=ul)
        elif verb == b"HELP":
            self.reply(io, 214, ["2.0.0 fuzz upstream", "commands: all of them"], line=ul)
        elif verb == b"QUIT":
            self.reply(io, 221, "2.0.0 Bye", line=ul)
            raise _Gone()
        elif verb == b"":
            self.reply(io, 500, "5.5.2 empty line", line=ul)
        else:
            self.reply(io, 502, "5.5.2 unknown command", line=ul)

    def _starttls(self, io, st, ul):
        conn = io.conn
        rng = conn.rng
        if conn.tls:
            self.reply(io, 503, "5.5.1 TLS already active", line=ul)
            return
        if not conn.plan.starttls:
            self.reply(io, 502, "5.5.1 STARTTLS not offered", line=ul)
            return
        if io.buf:
            conn.note("inv4:proxy-pipelined-after-starttls",
                      f"bytes after STARTTLS before the handshake: {short(io.buf, 80)}",
                      line=ul)
            del io.buf[:]
        mode = rng.choices(["ok", "inject", "454", "502", "close", "garbage"],
                           [55, 15, 10, 5, 8, 7])[0]
        conn.event(f"STARTTLS mode {mode}")
        if mode in ("454", "502"):
            self.reply(io, int(mode), "4.7.0 TLS not available" if mode == "454"
                       else "5.5.1 not permitted", line=ul, extra=self.double_reply(conn))
            return
        extra = b""
        if mode == "inject":
            inj = self.new_tag(conn, "tls-injected")
            inj.code = 250
            inj.after = ul  # the STARTTLS it follows
            extra = f"250 2.0.0 injected after 220 #u{inj.tag}\r\n".encode()
        self.reply(io, 220, "2.0.0 Ready to start TLS", line=ul, extra=extra)
        if mode == "close":
            raise _Gone()
        if mode == "garbage":
            time.sleep(0.01)
            io.send(b"this is not a TLS record\r\n" * 4)
            raise _Gone()
        conn.sock.settimeout(5.0)
        try:
            tsock = self.tls_ctx.wrap_socket(conn.sock, server_side=True,
                                             do_handshake_on_connect=False)
            io.sock = conn.sock = tsock
            tsock.do_handshake()
        except (ssl.SSLError, OSError) as e:
            conn.event(f"TLS handshake failed: {e}")
            raise _Gone() from None
        tsock.settimeout(2.0)
        conn.tls = True
        conn.event(f"TLS {tsock.version()}")
        st.update(greeted=False, mail=False, rcpts=0, bdat=None, sasl=None)

    def _auth(self, io, st, ul, words):
        conn = io.conn
        rng = conn.rng
        if not conn.plan.auth:
            self.reply(io, 502, "5.5.1 AUTH not offered", line=ul)
            return
        if st["authed"]:
            self.reply(io, 503, "5.5.1 already authenticated", line=ul)
            return
        mech = words[1].upper() if len(words) > 1 else b""
        if mech == b"PLAIN" and len(words) > 2:
            self._sasl_verdict(io, st, ul, "PLAIN")
        elif mech == b"PLAIN":
            st["sasl"] = ("PLAIN", 0)
            self.reply(io, 334, "", line=ul)
        elif mech == b"LOGIN":
            st["sasl"] = ("LOGIN", 0)
            self.reply(io, 334, "VXNlcm5hbWU6", line=ul)
        elif rng.random() < 0.1:
            self.reply(io, 454, "4.7.0 temporary authentication failure", line=ul)
        else:
            self.reply(io, 504, "5.5.4 mechanism not supported", line=ul)

    def _sasl(self, io, st, ul):
        mech, step = st["sasl"]
        if ul.text.strip() == b"*":
            st["sasl"] = None
            self.reply(io, 501, "5.7.0 authentication cancelled", line=ul)
        elif mech == "LOGIN" and step == 0:
            st["sasl"] = ("LOGIN", 1)
            self.reply(io, 334, "UGFzc3dvcmQ6", line=ul)
        else:
            self._sasl_verdict(io, st, ul, mech)

    def _sasl_verdict(self, io, st, ul, mech):
        code, text = self._pick(io.conn.rng, [(55, 235, "2.7.0 authenticated"),
                                              (35, 535, "5.7.8 bad credentials"),
                                              (10, 334, "")])
        if code == 334:
            st["sasl"] = (mech, 9)
        else:
            st["sasl"] = None
            st["authed"] = code == 235
        self.reply(io, code, text, line=ul)

    def _data(self, io, st, ul):
        conn = io.conn
        rng = conn.rng
        f = conn.plan.fault_rate
        if not st["mail"] or st["rcpts"] == 0:
            self.reply(io, 503 if rng.random() < 0.7 else 554, "5.5.1 no valid recipients",
                       line=ul)
            return
        code, text = self._pick(rng, [(90, 354, "End data with <CR><LF>.<CR><LF>"),
                                      (5, 451, "4.3.0 not now"), (5, 554, "5.7.1 no")])
        self.reply(io, code, text, line=ul,
                   extra=self.double_reply(conn) if code == 354 else b"")
        if code != 354:
            return
        st.update(mail=False, rcpts=0)
        fault = None
        x = rng.random()
        if x < f * 0.6:
            fault = ("close", rng.randint(1, 3000))
        elif x < f * 1.2:
            fault = ("early-reject", rng.randint(1, 3000))
        content, hit = io.read_data(fault_after=fault[1] if fault else None)
        msg = UpMessage(conn, "DATA", content, ul)
        conn.messages.append(msg)
        if hit:
            conn.event(f"DATA fault {fault[0]} after {len(content)} bytes")
            if fault[0] == "early-reject":
                self.reply(io, 554, "5.7.1 rejected before the end of data", kind="early",
                           msg=msg)
            raise _Gone()
        conn.event(f"message {msg.msg_id} ({len(content)} bytes) {short(content, 120)}")
        if rng.random() < f * 0.5:
            conn.event("closing at the end of data without a verdict")
            raise _Gone()
        code, text = self._pick(rng, [(80, 250, "2.0.0 Ok: queued"),
                                      (8, 451, "4.3.0 try later"),
                                      (8, 554, "5.7.1 content rejected"),
                                      (4, 552, "5.3.4 too big")])
        msg.accepted = code == 250
        self.reply(io, code, text, kind="msg", msg=msg)

    def _bdat(self, io, st, ul, words):
        conn = io.conn
        rng = conn.rng
        if not conn.plan.chunking:
            # A server without CHUNKING does not know the chunk is coming: its bytes will
            # be read as commands, which is exactly what the proxy must prevent.
            self.reply(io, 500, "5.5.1 unknown command", line=ul)
            return
        if len(words) < 2 or not words[1].isdigit():
            self.reply(io, 501, "5.5.4 BDAT size", line=ul)
            return
        size = int(words[1])
        last = len(words) > 2 and words[2].upper() == b"LAST"
        chunk = io.read_exact(size)
        conn.event(f"chunk of {size}{' LAST' if last else ''}: {short(chunk, 120)}")
        if not st["mail"] or st["rcpts"] == 0 or st["bdat"] == "failed":
            self.reply(io, 503, "5.5.1 no valid transaction", line=ul)
            return
        data = (st["bdat"] or b"") + chunk
        if not last:
            code, text = self._pick(rng, [(90, 250, f"2.0.0 {size} octets"),
                                          (5, 451, "4.3.0 not now"), (5, 552, "5.3.4 big")])
            st["bdat"] = data if code == 250 else "failed"
            self.reply(io, code, text, line=ul)
            return
        msg = UpMessage(conn, "BDAT", data, ul)
        conn.messages.append(msg)
        code, text = self._pick(rng, [(80, 250, "2.0.0 Ok: queued"),
                                      (10, 451, "4.3.0 try later"),
                                      (10, 554, "5.7.1 content rejected")])
        msg.accepted = code == 250
        st.update(mail=False, rcpts=0, bdat=None)
        self.reply(io, code, text, kind="msg", line=ul, msg=msg)

    # --- idle injection -------------------------------------------------------------------

    def inject_unsolicited(self, tag):
        """Asks the connection that sent reply |tag| to send an unsolicited reply, if it is
        idle: |tag| was its last reply and nothing has arrived since. True when sent."""
        with self.lock:
            info = self.tags.get(tag)
        if info is None or info.conn.closed.is_set():
            return False
        conn = info.conn

        def inject(io):
            if io is None:
                return False
            if conn.last_tag != tag or io.buf or conn.lines and conn.lines[-1].tag != tag:
                return False
            code = conn.rng.choice([250, 250, 550, 451])
            self.reply(io, code, "x.x.x unsolicited", kind="unsolicited")
            return True

        return bool(conn.request(inject))


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------

class _Closed(Exception):
    pass


class _ReplyTimeout(Exception):
    pass


class _End(Exception):
    """The session is over (for whatever reason, already recorded)."""


class Reply:
    def __init__(self, code, lines, raw):
        self.code = code
        self.lines = lines
        self.raw = raw
        self.tags = sorted({int(t) for t in TAG_RE.findall(raw)})

    def __repr__(self):
        return short(self.raw, 200)


class CLine:
    def __init__(self, idx, text, eol, group, kind="cmd"):
        self.idx = idx
        self.text = text      # without its line end
        self.eol = eol        # b"\r\n", b"\n", or b"" for a line cut by the close
        self.group = group
        self.kind = kind      # cmd | followup (after AUTH) | after-starttls
        self.verb = verb_of(text)
        self.tls = False
        self.role = None      # cmd | sasl | injected | unknown (decided from replies)
        self.slot = None
        self.sent = False
        self.starttls_item = False
        flags = set()
        if text[:1] in (b" ", b"\t"):
            flags.add("leading-whitespace")
        if b"\0" in text:
            flags.add("NUL")
        if b"\r" in text or b"\n" in text:
            flags.add("bare-CR")
        if len(text) + len(eol or b"\r\n") > MAX_LINE:
            flags.add("too-long")
        if not eol:
            flags.add("partial")
        if self.verb in (b"XCLIENT", b"STARTTLS"):
            flags.add(self.verb.decode())
        self.flags = flags

    @property
    def raw(self):
        return self.text + self.eol

    @property
    def relayable_cmd(self):
        return self.sent and not self.flags and self.role in ("cmd", "unknown")

    def __repr__(self):
        return f"line {self.idx} {short(self.raw, 120)}"


class Slot:
    """A reply the client expects: the greeting, one per line, one per end of data."""

    def __init__(self, kind, line=None, msg=None):
        self.kind = kind      # greeting | line | eod
        self.line = line
        self.msg = msg
        self.reply = None
        self.expected = True

    def describe(self):
        if self.kind == "greeting":
            return "the greeting"
        if self.kind == "eod":
            return f"the end of data of message {self.msg.id}"
        return f"{self.line.role + ' ' if self.line.role else ''}{self.line}"


class CMessage:
    def __init__(self, mid, kind):
        self.id = mid
        self.kind = kind      # DATA | BDAT
        self.body = b""       # DATA: content before the final CRLF.CRLF
        self.chunks = []      # BDAT: [(CLine, bytes)]
        self.completed = False  # the client sent the end (final dot or BDAT LAST)
        self.hostile = []     # notes about what is in the content
        self.end_slot = None
        self.content_sent = False  # some of its content went out

    def expected_contents(self):
        if self.kind == "BDAT":
            return [b"".join(c for _, c in self.chunks)]
        raw = self.body + CRLF
        return [raw, normalize_bare_lf(raw)]


class Group:
    def __init__(self, no):
        self.no = no
        self.items = []       # (CLine, bytes sent right after the line: a BDAT chunk)
        self.data = None      # CMessage for a DATA at the end
        self.end = None       # None | quit | half-close | abort | abort-rst
        self.starttls = None  # the STARTTLS CLine (last item, plus injected lines)
        self.partial = None   # bytes of a cut line sent before an abort

    def add(self, line, extra=b""):
        self.items.append((line, extra))


class ClientSession:
    """One seeded client session against the proxy. Records everything for the checker."""

    def __init__(self, seed, cfg, port, upstream, max_groups=None, reply_timeout=3.0,
                 benign=False):
        self.seed = seed
        self.benign = benign  # a well-behaved client (to check the fuzzer itself)
        self.cfg = cfg
        self.port = port
        self.upstream = upstream
        self.max_groups = max_groups
        self.reply_timeout = reply_timeout
        self.r = random.Random(f"{seed}:client")
        self.sid = f"s{seed % 1000000}"
        self.k = 0
        self.lines = []
        self.slots = []
        self.messages = []
        self.violations = []
        self.transcript = []
        self.groups = 0
        self.sock = None
        self.tls = False
        self.buf = b""
        self.eof = False
        self.t0 = time.monotonic()
        self.src = f"127.0.0.{2 + self.r.randrange(250)}"
        self.src_port = None
        self.last_reply = None
        self.closed_by_client = False
        self.tls_failed = False
        self.ended = None
        # generation state (from replies)
        self.greeted = False
        self.caps = set()
        self.mail_ok = False
        self.rcpt_ok = False
        self.target_groups = self.r.choice([1, 2, 3, 4, 5, 6, 8, 10])
        self.end_mode = self.r.choices(
            ["quit", "half-close", "abort", "abort-rst", "partial"], [55, 17, 14, 6, 8])[0]

    # --- recording --------------------------------------------------------------------

    def log(self, text):
        self.transcript.append(f"{time.monotonic() - self.t0:7.3f} {text}")

    def violate(self, key, text):
        self.violations.append(Violation(key, text))
        self.log(f"!! [{key}] {text}")

    # --- socket -----------------------------------------------------------------------

    def connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((self.src, 0))
        s.settimeout(5.0)
        s.connect(("127.0.0.1", self.port))
        self.sock = s
        self.src_port = s.getsockname()[1]
        self.log(f"connected from {self.src}:{self.src_port}")

    def send(self, data):
        self.log(f"C> {short(data, 400)}")
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            self.log(f"send failed: {e}")
            raise _Closed() from None

    def _recv(self, timeout):
        self.sock.settimeout(max(0.001, timeout))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise _ReplyTimeout() from None
        except ssl.SSLWantReadError:
            raise _ReplyTimeout() from None
        except (OSError, ssl.SSLError) as e:
            self.log(f"recv: {e}")
            data = b""
        if not data:
            self.eof = True
            self.log("S< EOF")
            raise _Closed()
        self.log(f"S< {short(data, 400)}")
        self.buf += data

    def read_reply(self, timeout=None):
        deadline = time.monotonic() + (self.reply_timeout if timeout is None else timeout)
        lines = []
        raw = b""
        code = None
        while True:
            while b"\n" not in self.buf:
                if self.eof:
                    raise _Closed()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _ReplyTimeout()
                self._recv(left)
            line, self.buf = self.buf.split(b"\n", 1)
            raw += line + b"\n"
            if not line.endswith(b"\r"):
                self.violate("inv2:malformed-reply", f"reply line without CRLF: {short(line)}")
                raise _End()
            line = line[:-1]
            m = REPLY_RE.match(line)
            if not m or (code is not None and int(m.group(1)) != code):
                self.violate("inv2:malformed-reply", f"malformed reply line {short(line)}")
                raise _End()
            code = int(m.group(1))
            lines.append(m.group(3))
            if m.group(2) != b"-":
                return Reply(code, lines, raw)

    def poll_unasked(self):
        """Bytes that arrived when no reply is due: only a final 421 may."""
        if self.eof:
            return
        if not self.buf:
            try:
                r, _, _ = select.select([self.sock], [], [], 0)
                pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
                if not r and not pending:
                    return
                self._recv(0.05)
            except (_ReplyTimeout, _Closed):
                return
        try:
            rep = self.read_reply(1.0)
        except (_ReplyTimeout, _Closed):
            self.violate("inv2:extra-reply", f"bytes nobody asked for: {short(self.buf)}")
            raise _End() from None
        if rep.code != 421:
            self.violate("inv2:extra-reply",
                         f"a reply nobody asked for: {rep!r} (after {self.describe_last()})")
            raise _End()
        self.log("unasked 421: the session ends")
        self.expect_close()
        raise _End()

    def describe_last(self):
        done = [s for s in self.slots if s.reply is not None]
        return done[-1].describe() if done else "nothing"

    def expect_close(self, timeout=5.0, why="after the final reply"):
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                self.violate("inv2:no-close", f"the proxy did not close {why} within {timeout}s")
                return
            try:
                self._recv(left)
            except _ReplyTimeout:
                continue
            except _Closed:
                break
            if self.buf:
                try:
                    rep = self.read_reply(1.0)
                except (_ReplyTimeout, _Closed):
                    self.violate("inv2:extra-reply", f"bytes {why}: {short(self.buf)}")
                    return
                if rep.code != 421:
                    self.violate("inv2:extra-reply", f"a reply {why}: {rep!r}")
                    return

    def close(self, rst=False):
        if self.sock is None:
            return
        if rst:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.sock = None

    # --- generation ---------------------------------------------------------------------

    def tok(self, prefix):
        self.k += 1
        return f"{prefix}{self.k}.{self.sid}"

    def new_line(self, text, eol=CRLF, kind="cmd"):
        line = CLine(len(self.lines), _b(text), eol, self.groups, kind)
        self.lines.append(line)
        return line

    def variant(self, verb, args=b"", hostile=True, kind="cmd"):
        """A command line in one of the spellings clients use, sometimes a refused one."""
        r = self.r
        verb = _b(verb)
        args = _b(args)
        x = r.random()
        if x < 0.15:
            verb = verb.lower()
        elif x < 0.22:
            verb = bytes(c ^ 0x20 if chr(c).isalpha() and r.random() < 0.5 else c
                         for c in verb)
        if args.upper().startswith((b"FROM:", b"TO:")) and r.random() < 0.2:
            head, _, rest = args.partition(b":")
            args = head.lower() + b":" + rest
        sep = r.choices([b" ", b"\t", b"  ", b" \t"], [70, 15, 10, 5])[0]
        trail = r.choices([b"", b" ", b"\t", b"  "], [80, 10, 5, 5])[0]
        eol = CRLF if r.random() < 0.9 else b"\n"
        if self.benign:
            sep, trail, eol, hostile = b" ", b"", CRLF, False
        text = verb + (sep + args if args else b"") + trail
        if hostile:
            y = r.random()
            if y < 0.05:
                text = r.choice([b" ", b"\t", b"  "]) + text
            elif y < 0.07:
                pos = r.randrange(len(text) + 1)
                text = text[:pos] + b"\0" + text[pos:]
            elif y < 0.09:
                text = text + b"\r" + self.smuggle_command()
        return self.new_line(text, eol, kind)

    def smuggle_command(self):
        r = self.r
        t = self.tok("smuggled")
        return r.choice([f"RCPT TO:<{t}@evil.test>", f"MAIL FROM:<{t}@evil.test>",
                         f"XCLIENT ADDR=192.0.2.{r.randrange(1, 255)} NAME={t}",
                         f"NOOP {t}"]).encode()

    def addr(self, prefix):
        return f"<{self.tok(prefix)}@fuzz.test>"

    def g_line_misc(self, hostile=True):
        r = self.r
        c = r.choices(["noop", "rset", "vrfy", "help", "junk", "xclient", "lead-ws", "nul",
                       "bare-cr", "long", "mail", "rcpt", "ehlo", "empty"],
                      [14, 8, 5, 4, 6, 8, 7, 4, 5, 3, 8, 8, 4, 2])[0]
        if self.benign and c in ("lead-ws", "nul", "bare-cr", "long", "empty"):
            c = "noop"
        if c == "noop":
            return self.variant("NOOP", self.tok("n"), hostile)
        if c == "rset":
            return self.variant("RSET", b"", hostile)
        if c == "vrfy":
            return self.variant("VRFY", self.tok("v"), hostile)
        if c == "help":
            return self.variant("HELP", b"", hostile)
        if c == "junk":
            return self.variant(f"X{self.tok('junk').upper()}", "arg", hostile)
        if c == "xclient":
            return self.variant("XCLIENT", f"ADDR=192.0.2.{r.randrange(1, 255)} "
                                f"NAME={self.tok('evil')}", hostile)
        if c == "lead-ws":
            verb = r.choice(["XCLIENT ADDR=192.0.2.9 NAME=", "MAIL FROM:<", "RCPT TO:<",
                             "STARTTLS ", "NOOP "])
            text = r.choice([b" ", b"\t", b"  "]) + f"{verb}{self.tok('lead')}".encode()
            if "<" in verb:
                text += b"@fuzz.test>"
            return self.new_line(text)
        if c == "nul":
            text = f"NOOP {self.tok('nul')}".encode()
            pos = r.randrange(len(text) + 1)
            return self.new_line(text[:pos] + b"\0" + text[pos:])
        if c == "bare-cr":
            return self.new_line(f"NOOP {self.tok('cr')}".encode() + b"\r" +
                                 self.smuggle_command())
        if c == "long":
            return self.new_line(b"NOOP " + b"x" * r.randint(1000, 1500) +
                                 self.tok("long").encode())
        if c == "mail":
            return self.variant("MAIL", "FROM:" + self.addr("f"), hostile)
        if c == "rcpt":
            return self.variant("RCPT", "TO:" + self.addr("r"), hostile)
        if c == "ehlo":
            return self.variant(r.choice(["EHLO", "HELO"]), self.tok("c") + ".fuzz.test",
                                hostile)
        return self.new_line(b"")

    def sasl_text(self):
        r = self.r
        c = r.choices(["b64", "cancel", "cmd", "xclient", "lead", "cr", "nul"],
                      [40, 8, 15, 8, 8, 13, 8])[0]
        if self.benign and c not in ("b64", "cancel"):
            c = "b64"
        if c == "b64":
            return self.tok("sasl").encode().hex().encode()[:40] + b"=="
        if c == "cancel":
            return b"*"
        if c == "cmd":
            return r.choice([f"MAIL FROM:<{self.tok('af')}@fuzz.test>",
                             f"RCPT TO:<{self.tok('ar')}@fuzz.test>",
                             f"NOOP {self.tok('an')}", "RSET"]).encode()
        if c == "xclient":
            return f"XCLIENT ADDR=192.0.2.7 NAME={self.tok('saslx')}".encode()
        if c == "lead":
            return f" MAIL FROM:<{self.tok('sl')}@fuzz.test>".encode()
        if c == "cr":
            return f"{self.tok('sc')}".encode().hex().encode() + b"\r" + self.smuggle_command()
        text = f"AAAA{self.tok('sn')}".encode()
        return text[:4] + b"\0" + text[4:]

    def gen_group(self):
        """The next group of the session, drawn from the RNG and the replies so far."""
        r = self.r
        g = Group(self.groups)
        final = self.groups >= self.target_groups
        sasl_pending = self.sasl_pending()
        if sasl_pending and (r.random() < 0.7 or self.benign):
            n = 1 if self.benign else r.randint(1, 3)
            for i in range(n):
                g.add(self.new_line(self.sasl_text(), kind="followup" if i else "cmd"))
        elif not self.greeted and (r.random() < 0.75 or self.benign):
            verb = "HELO" if r.random() < 0.15 else "EHLO"
            g.add(self.variant(verb, self.tok("c") + ".fuzz.test", r.random() < 0.5))
            if r.random() < 0.3 and not self.benign:  # RFC 2920: EHLO ends a group
                self.envelope(g, sasl_pending)
        else:
            kinds = ["envelope", "misc", "auth", "starttls", "bdat-more", "ehlo"]
            weights = [40, 22, 10, 0 if self.tls else 10,
                       12 if self.mail_ok and self.rcpt_ok and not sasl_pending else 0, 4]
            c = r.choices(kinds, weights)[0]
            if c == "envelope":
                self.envelope(g, sasl_pending)
            elif c == "misc":
                for _ in range(r.randint(1, 4)):
                    g.add(self.g_line_misc())
            elif c == "auth":
                mech = r.choice(["PLAIN", "LOGIN", "PLAIN " + self.tok("ir").encode().hex(),
                                 "CRAM-MD5"])
                g.add(self.variant("AUTH", mech, r.random() < 0.3))
                for _ in range(r.choices([0, 1, 2, 3], [25, 35, 25, 15])[0]):
                    if self.benign:
                        break
                    g.add(self.new_line(self.sasl_text(), kind="followup"))
            elif c == "starttls":
                for _ in range(r.choices([0, 1, 2], [70, 20, 10])[0]):
                    g.add(self.g_line_misc(hostile=False))
                text = r.choices([b"STARTTLS", b"starttls", b"StartTLS", b"STARTTLS ",
                                  b"STARTTLS\t", b" STARTTLS", b"STARTTLS now"],
                                 [60, 10, 5, 8, 7, 5, 5])[0]
                if self.benign:
                    text = b"STARTTLS"
                st = self.new_line(text)
                st.starttls_item = True
                g.add(st)
                g.starttls = st
                for _ in range(r.choices([0, 1, 2, 3], [40, 30, 20, 10])[0]):
                    inj = r.choice([f"MAIL FROM:<{self.tok('inj')}@fuzz.test>",
                                    f"RCPT TO:<{self.tok('inj')}@fuzz.test>",
                                    f"NOOP {self.tok('inj')}",
                                    f"EHLO {self.tok('inj')}.fuzz.test"])
                    g.add(self.new_line(inj, kind="after-starttls"))
            elif c == "bdat-more":
                self.bdat_chunks(g)
            else:
                g.add(self.variant("EHLO", self.tok("c") + ".fuzz.test"))
        if final:
            g.end = self.end_mode
        if g.end == "quit" and g.data is None and g.starttls is None and r.random() < 0.5 \
                and not (self.benign and sasl_pending):
            g.add(self.variant("QUIT", b"", False))
            g.end = "quit-sent"
        return g

    def envelope(self, g, sasl_pending):
        r = self.r
        if r.random() < 0.1:
            g.add(self.variant("RSET", b"", False))
        if not self.mail_ok or r.random() < 0.7:
            params = r.choice(["", "", " BODY=8BITMIME", " SIZE=1234"])
            g.add(self.variant("MAIL", "FROM:" + self.addr("f") + params))
        for _ in range(r.choices([0, 1, 2, 3], [5, 60, 25, 10])[0]):
            g.add(self.variant("RCPT", "TO:" + self.addr("r")))
        if r.random() < 0.2:
            g.add(self.g_line_misc())
        x = r.random()
        if x < 0.6:
            line = self.variant("DATA", b"", r.random() < 0.3)
            g.items.append((line, b""))
            g.data = CMessage(f"m{len(self.messages) + 1}.{self.sid}", "DATA")
            g.data.body = self.data_body(g.data)
            self.messages.append(g.data)
        elif x < 0.9 and not sasl_pending:
            self.bdat_chunks(g)

    def bdat_chunks(self, g):
        r = self.r
        msg = CMessage(f"m{len(self.messages) + 1}.{self.sid}", "BDAT")
        self.messages.append(msg)
        content = self.bdat_content(msg)
        n = r.choice([1, 1, 2, 3])
        cuts = sorted(r.randint(0, len(content)) for _ in range(n - 1))
        pieces = [content[a:b] for a, b in zip([0] + cuts, cuts + [len(content)])]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            verb = r.choice([b"BDAT", b"BDAT", b"bdat", b"Bdat"])
            sep = r.choices([b" ", b"\t", b"  "], [80, 12, 8])[0]
            text = verb + sep + str(len(piece)).encode()
            if last:
                text += sep + r.choice([b"LAST", b"LAST", b"last"])
            text += r.choices([b"", b" ", b"\t"], [85, 10, 5])[0]
            eol = CRLF if r.random() < 0.95 else b"\n"
            if self.benign:
                text = b"BDAT %d%s" % (len(piece), b" LAST" if last else b"")
                eol = CRLF
            line = self.new_line(text, eol)
            msg.chunks.append((line, piece))
            g.add(line, piece)
        msg.bdat_last_line = msg.chunks[-1][0]

    def bdat_content(self, msg):
        r = self.r
        out = f"X-Fuzz-Id: {msg.id}\r\n".encode()
        for _ in range(r.randint(0, 6)):
            out += self.hostile_segment(msg)
        if r.random() < 0.05:
            out += bytes(r.randrange(256) for _ in range(r.randint(1000, 70000)))
        return out

    def hostile_segment(self, msg):
        r = self.r
        c = r.choices(["text", "stuffed", "bare-lf", "bare-cr", "nul", "8bit", "smuggle",
                       "long", "crlf"], [30, 8, 10, 8, 6, 5, 22, 3, 8])[0]
        if self.benign and c in ("bare-lf", "bare-cr", "nul", "smuggle"):
            c = "text"
        if c == "text":
            return f"line {self.tok('t')} of text\r\n".encode()
        if c == "stuffed":
            return r.choice([b"..stuffed dot line\r\n", b".single dot start\r\n",
                             b"..\r\n"])
        if c == "bare-lf":
            msg.hostile.append("bare LF")
            return b"bare LF line\n"
        if c == "bare-cr":
            msg.hostile.append("bare CR")
            return b"bare CR\rin a line\r\n"
        if c == "nul":
            msg.hostile.append("NUL")
            return b"nul\0byte\r\n"
        if c == "8bit":
            return bytes([0xc3, 0xa9, 0xe2, 0x82, 0xac]) + b"\r\n"
        if c == "long":
            return b"L" * r.randint(1000, 3000) + b"\r\n"
        if c == "crlf":
            return b"\r\n"
        term = r.choice([b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n",
                         b"\r\n\0.\r\n", b"\r\n.\0\r\n", b"\n\0.\n", b"\r\n\0.\0\r\n",
                         b"\r\n\0\0.\r\n", b"\r\r\n.\r\r\n"])
        msg.hostile.append(f"fake end {term!r}")
        cmds = [f"MAIL FROM:<smuggled{self.k + 1}.{self.sid}@evil.test>",
                f"RCPT TO:<smuggled{self.k + 2}.{self.sid}@evil.test>"]
        self.k += 2
        if r.random() < 0.5:
            cmds.append("DATA")
            cmds.append("Subject: smuggled")
        return term + "\r\n".join(cmds).encode() + b"\r\n"

    def data_body(self, msg):
        r = self.r
        body = f"X-Fuzz-Id: {msg.id}\r\nSubject: fuzz {msg.id}\r\n\r\n".encode()
        for _ in range(r.randint(0, 8)):
            body += self.hostile_segment(msg)
        if r.random() < 0.03:
            body += (b"big content line with some words\r\n" * r.randint(500, 3000))
        body += b"last line" + r.choice([b"", b"", b"\n", b"\r"])
        if r.random() < 0.3:
            body = body.rstrip(b"\r\n") if r.random() < 0.5 else body
        if self.benign:
            body = body.rstrip(b"\r\n")
        # The first CRLF.CRLF must be ours: defuse any real one inside the body.
        while True:
            w = CRLF + body + b"\r\n.\r\n"
            i = w.find(b"\r\n.\r\n")
            if i >= len(body):
                break
            body = body[:i + 1] + b"x" + body[i + 1:] if i > 0 else b"x" + body
        return body

    def sasl_pending(self):
        """True when the last line's reply started (or continued) a SASL exchange."""
        roles = assign_roles(self.lines)
        sent = [ln for ln in self.lines if ln.sent and ln.role != "injected"]
        return bool(sent) and roles.get("next") is True

    # --- running --------------------------------------------------------------------------

    def run(self):
        try:
            self.connect()
            slot = Slot("greeting")
            self.slots.append(slot)
            try:
                slot.reply = self.read_reply()
            except _Closed:
                self.violate("inv2:closed-without-reply", "closed before any greeting")
                raise _End() from None
            self.last_reply = slot.reply
            if slot.reply.code != 220:
                self.log("greeting is not 220; sending QUIT")
            while True:
                if self.max_groups is not None and self.groups >= self.max_groups:
                    self.final_quit()
                    raise _End()
                self.groups += 1
                g = self.gen_group()
                self.run_group(g)
                if g.end is not None:
                    raise _End()
                self.maybe_inject()
        except _End:
            pass
        except _Closed:
            self.ended = self.ended or "closed"
        except _ReplyTimeout:
            self.violate("inv2:reply-timeout", f"no reply within {self.reply_timeout}s")
        except (OSError, ssl.SSLError) as e:
            self.log(f"client socket error {e}")
        finally:
            self.close()

    def final_quit(self):
        if self.benign and self.sasl_pending():
            g = Group(self.groups + 1)
            g.add(self.new_line(b"*"))
            self.run_group(g)
        line = self.new_line(b"QUIT")
        g = Group(self.groups + 1)
        g.items.append((line, b""))
        g.end = "quit-sent"
        self.run_group(g)

    def maybe_inject(self):
        if self.r.random() >= 0.05 or self.last_reply is None:
            return
        tags = self.last_reply.tags
        if len(tags) != 1 or self.last_reply.code in (334, 354):
            return
        if self.upstream.inject_unsolicited(tags[0]):
            self.log(f"asked upstream to inject an unsolicited reply after #u{tags[0]}")
            time.sleep(0.15)

    def write_group(self, g, stream, atomic):
        """Sends |stream| in one or more writes (never splitting an atomic range)."""
        r = self.r
        cuts = []
        if len(stream) > 1 and r.random() < 0.5:
            for _ in range(r.randint(1, 3)):
                c = r.randint(1, len(stream) - 1)
                if not any(a < c < b for a, b in atomic):
                    cuts.append(c)
        cuts = sorted(set(cuts))
        for a, b in zip([0] + cuts, cuts + [len(stream)]):
            self.send(stream[a:b])
            if r.random() < 0.2:
                time.sleep(r.choice([0.001, 0.003]))

    def run_group(self, g):
        r = self.r
        self.poll_unasked()
        stream = b""
        atomic = []
        start_of_starttls = None
        for line, extra in g.items:
            line.tls = self.tls
            if line.starttls_item:
                start_of_starttls = len(stream)
            stream += line.raw + extra
            line.slot = Slot("line", line)
            self.slots.append(line.slot)
        if start_of_starttls is not None:
            atomic.append((start_of_starttls, len(stream)))
        abort_now = g.end in ("abort", "abort-rst", "partial") and g.data is None
        if abort_now and r.random() < 0.4 and len(stream) > 1:
            # Cut anywhere (mid-line, mid-chunk): what was not sent whole is partial.
            stream = stream[:r.randint(1, len(stream) - 1)]
            atomic = []
        elif g.end == "partial" and g.data is None:
            partial = f"RCPT TO:<{self.tok('partial')}@fuzz.test>".encode()
            g.partial = partial[:r.randint(1, len(partial))]
        sent_bytes = len(stream)
        try:
            self.write_group(g, stream + (g.partial or b""), atomic)
        except _Closed:
            # The proxy is gone (it may have said 421 first; a reset can lose it).
            self.ended = "send-failed"
            for ln, _ in g.items:
                ln.slot.expected = False
            raise _End() from None
        pos = 0
        for line, extra in g.items:
            n = len(line.raw)
            line.sent = pos + n <= sent_bytes
            line.extra_sent = pos + n + len(extra) <= sent_bytes
            if not line.sent and pos < sent_bytes:
                line.eol = b""  # cut by the close: a partial line
                line.flags.add("partial")
            pos += n + len(extra)
        for msg in self.messages:
            if msg.kind == "BDAT" and msg.chunks and msg.chunks[-1][0] in \
                    [ln for ln, _ in g.items]:
                msg.completed = getattr(msg.chunks[-1][0], "extra_sent", False)
                msg.content_sent = any(ln.sent for ln, _ in msg.chunks)
        if g.partial:
            pl = self.new_line(g.partial, b"")
            pl.sent = True
            pl.group = g.no
        if abort_now:
            self.closed_by_client = True
            self.log(f"client closes ({g.end})")
            self.close(rst=g.end == "abort-rst")
            for s in [ln.slot for ln, _ in g.items]:
                s.expected = False
            raise _End()
        if g.end == "half-close" and g.data is None:
            self.half_close()
        self.read_group(g)

    def half_close(self):
        self.log("client half-closes (shutdown SHUT_WR)")
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
        except OSError:
            pass
        self.closed_by_client = "half"

    def read_group(self, g):
        slots = [ln.slot for ln, _ in g.items]
        for i, slot in enumerate(slots):
            if not slot.line.sent:
                slot.expected = False
                continue
            if not slot.expected:
                continue
            self.read_slot(slot)
            rep = slot.reply
            line = slot.line
            if line.verb in (b"EHLO", b"HELO") and 200 <= rep.code < 300:
                self.greeted = True
                self.caps = {ln.split()[0].upper() for ln in rep.lines[1:] if ln.split()}
            if line.verb == b"MAIL":
                self.mail_ok = 200 <= rep.code < 300
                self.rcpt_ok = False
            if line.verb == b"RCPT" and 200 <= rep.code < 300:
                self.rcpt_ok = True
            if line is g.starttls and rep.code == 220:
                for later in slots[i + 1:]:
                    later.expected = False
                    later.line.role = "injected"
                if rep.tags:
                    self.violate("inv1:client-starttls-reached-upstream",
                                 f"the 220 to {line} came from the upstream: {rep!r}")
                    raise _End()
                self.do_tls()
                break
        if g.data is not None and slots[-1].reply is not None and slots[-1].reply.code == 354:
            self.send_content(g)
        if g.end is not None:
            self.finish(g)

    def read_slot(self, slot):
        try:
            slot.reply = self.read_reply()
            self.last_reply = slot.reply
        except _Closed:
            self.closed_early(slot)
            raise _End() from None
        except _ReplyTimeout:
            self.violate("inv2:reply-timeout",
                         f"no reply to {slot.describe()} within {self.reply_timeout}s")
            raise _End() from None
        what = "greeting" if slot.kind == "greeting" else (
            f"end of data of {slot.msg.id}" if slot.kind == "eod" else f"line {slot.line.idx}")
        tag = f" #u{slot.reply.tags[0]}" if slot.reply.tags else ""
        self.log(f"   reply to {what}: {slot.reply.code}{tag}")

    def closed_early(self, slot):
        """The proxy closed while |slot| waited for its reply."""
        last = self.last_reply
        if self.tls_failed:
            return
        if last is not None and last.code == 421:
            return
        if last is not None and last.code == 221 and any(
                s.reply is last and s.line is not None and s.line.verb == b"QUIT"
                for s in self.slots):
            return
        self.violate("inv2:closed-without-421",
                     f"connection closed while waiting for the reply to {slot.describe()}; "
                     f"last reply: {last!r}")

    def do_tls(self):
        # Our 220 is in; nothing may follow it before the handshake (RFC 3207 section 4).
        if self.buf:
            self.violate("inv4:cleartext-after-220",
                         f"bytes after the 220 to STARTTLS: {short(self.buf)}")
            raise _End()
        r, _, _ = select.select([self.sock], [], [], 0.05)
        if r:
            try:
                data = self.sock.recv(65536, socket.MSG_PEEK)
            except OSError:
                data = b""
            if data:
                self.violate("inv4:cleartext-after-220",
                             f"bytes after the 220 to STARTTLS: {short(data)}")
                raise _End()
        ctx = harness.tls_client_context()
        try:
            self.sock.settimeout(5.0)
            self.sock = ctx.wrap_socket(self.sock, server_side=False,
                                        do_handshake_on_connect=False)
            self.sock.do_handshake()
        except (ssl.SSLError, OSError) as e:
            self.log(f"client TLS handshake failed: {e}")
            self.tls_failed = True
            raise _End() from None
        self.tls = True
        self.greeted = False
        self.mail_ok = self.rcpt_ok = False
        self.log(f"TLS {self.sock.version()}")

    def send_content(self, g):
        r = self.r
        msg = g.data
        w = msg.body + b"\r\n.\r\n"
        cut = None
        if g.end in ("abort", "abort-rst", "partial", "half-close") and r.random() < 0.6:
            cut = r.randint(0, len(w) - 1)
        data = w if cut is None else w[:cut]
        pieces = [data]
        if len(data) > 2 and r.random() < 0.6:
            cuts = sorted({r.randint(1, len(data) - 1) for _ in range(r.randint(1, 3))})
            pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        msg.content_sent = bool(data)
        for piece in pieces:
            self.send(piece)
            if r.random() < 0.2:
                time.sleep(0.002)
        if cut is not None:
            self.log(f"client stops after {cut} of {len(w)} content bytes ({g.end})")
            if g.end == "half-close":
                self.half_close()
                self.expect_close(why="after a half-close in the middle of a message")
                self.closed_by_client = True
                raise _End()
            self.closed_by_client = True
            self.close(rst=g.end == "abort-rst")
            raise _End()
        msg.completed = True
        slot = Slot("eod", msg=msg)
        msg.end_slot = slot
        self.slots.append(slot)
        if g.end == "half-close":
            self.half_close()
        elif g.end in ("abort", "abort-rst", "partial"):
            self.closed_by_client = True
            self.close(rst=g.end == "abort-rst")
            slot.expected = False
            raise _End()
        self.read_slot(slot)

    def finish(self, g):
        if g.end == "quit":
            self.final_quit()
        elif g.end == "quit-sent":
            quit_line = g.items[-1][0]
            assign_roles(self.lines)
            rep = quit_line.slot.reply
            if quit_line.role == "cmd" and rep is not None and rep.code in (221, 421):
                self.expect_close(why="after the reply to QUIT")
            else:
                self.log(f"QUIT was {quit_line.role or 'not sent'} and got "
                         f"{rep.code if rep else 'no reply'}: no close expected; closing")
                self.closed_by_client = True
                self.close()
        elif g.end == "half-close":
            if not self.closed_by_client:
                self.half_close()
            self.expect_close(why="after the replies to a half-closed client")
        else:
            self.closed_by_client = True
            self.log(f"client closes ({g.end})")
            self.close(rst=g.end == "abort-rst")
        raise _End()


def assign_roles(lines):
    """Decides each sent line's role from the replies, as a correct proxy decides it: a
    line after a 334 to AUTH or to a SASL response is a SASL response (None: unknown, when
    the reply that decides it never came). Returns {"next": the same for the next line}."""
    sasl_next = False
    for ln in lines:
        if not ln.sent or ln.role == "injected":
            continue
        ln.role = "sasl" if sasl_next is True else "unknown" if sasl_next is None else "cmd"
        rep = ln.slot.reply if ln.slot is not None else None
        may_start = ln.role in ("sasl", "unknown") or (ln.verb == b"AUTH" and not ln.flags)
        if ln.starttls_item and ln.role == "cmd" and rep is not None and rep.code == 220:
            sasl_next = False  # the handshake resets any exchange
        elif rep is None:
            sasl_next = None if may_start else False
        else:
            sasl_next = rep.code == 334 and may_start
    return {"next": sasl_next}


# --------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------

class Checker:
    def __init__(self, cfg, client, conns, tags):
        self.cfg = cfg
        self.c = client
        self.conns = conns
        self.tags = tags
        self.v = []

    def violate(self, key, text):
        self.v.append(Violation(key, text))

    def run(self):
        assign_roles(self.c.lines)
        self.names = set()
        for ln in self.c.lines:
            if ln.verb in (b"EHLO", b"HELO") and ln.relayable_cmd:
                words = ln.text.split()
                if len(words) > 1:
                    self.names.add(words[1].lower())
        self.inv1()
        for conn in self.conns:
            for note in conn.notes:
                line = getattr(note, "line", None)
                if line is not None and line.origin != "proxy-starttls":
                    continue  # a client's STARTTLS that got through: reported by inv1
                self.v.append(note)
        self.inv2()
        self.inv3()
        self.inv5()
        return self.v

    # --- invariant 1 --------------------------------------------------------------------

    def content_owner(self, ul, n):
        """The message whose content holds this executed line (the latest one first)."""
        sent = [m for m in self.c.messages if m.content_sent]
        for m in reversed(sent):
            blobs = [m.body] if m.kind == "DATA" else [c for _, c in m.chunks]
            for blob in blobs:
                if ul.raw and ul.raw in blob:
                    return m
        for m in reversed(sent):
            blobs = [m.body] if m.kind == "DATA" else [c for _, c in m.chunks]
            for blob in blobs:
                if any(norm_cmd(p) == n for p in LINE_END.split(blob.replace(b"\0", b""))):
                    return m
        return None

    def explain(self, ul, n, p):
        """Why an executed line is not one the proxy meant to relay: (class, text)."""
        sent = [ln for ln in self.c.lines if ln.sent]
        exact = [ln for ln in sent if ln.text == ul.raw]
        normed = [ln for ln in sent if norm_cmd(ln.text) == n]
        frags = [ln for ln in sent if "bare-CR" in ln.flags and ul.raw and
                 any(norm_cmd(f) == n for f in LINE_END.split(ln.text))]
        # Prefer what the proxy had not reached yet (after p), then anything.
        for group in (exact, normed, frags):
            group.sort(key=lambda ln: (ln.idx <= p, ln.idx))
        for ln in exact + normed + frags:
            if ln.role == "injected":
                return ("inv4:injected-after-starttls-executed",
                        f"{ln} was sent after STARTTLS (answered 220), before the handshake")
            if ln.role == "sasl":
                return ("inv1:sasl-response-executed-as-command",
                        f"{ln} was a SASL response (the reply before it was 334)")
            if ln.flags:
                why = "bare-CR" if ln in frags and ln not in exact + normed else \
                    sorted(ln.flags)[0]
                return (f"inv1:relayed-{why}-line",
                        f"{ln} must be refused by the proxy ({', '.join(sorted(ln.flags))})")
        m = self.content_owner(ul, n)
        if m is not None:
            return (f"inv1:{m.kind.lower()}-content-executed",
                    f"a line of message {m.id}'s content ({', '.join(m.hostile) or 'plain'})")
        for ln in exact + normed:
            if ln.relayable_cmd:
                return ("inv1:order-or-repeat",
                        f"{ln} executed out of the client's order or more than once")
        return ("inv1:unexpected-line", "not a line the client sent as a command")

    def proxy_origin(self, conn, i, ul):
        """The proxy's own lines (not client commands): their kind, or None."""
        words = norm_cmd(ul.text).split()
        verb = words[0] if words else b""
        prev = conn.lines[i - 1] if i > 0 else None
        if ul.role == "sasl":
            return "proxy-cancel" if ul.text.strip() == b"*" else None
        if verb in (b"EHLO", b"HELO") and len(words) == 2 and words[1].lower() in self.names:
            return "greeting"
        if ul.raw == b"STARTTLS" and not ul.tls and prev is not None and \
                prev.origin in ("greeting", "proxy-xclient"):
            # The proxy's negotiation: right after its EHLO, or after an XCLIENT that was
            # refused (it goes on with the EHLO reply it had).
            return "proxy-starttls"
        if verb == b"XCLIENT" and self.cfg.identity == "xclient" and self.xclient_ok(ul):
            return "proxy-xclient"
        if words == [b"QUIT"]:
            return "quit"
        return None

    @staticmethod
    def align(ups, cands):
        """Weighted longest common subsequence of executed lines |ups| and client lines
        |cands| (an exact spelling weighs more than an equal normal form): the reading
        of what was relayed that explains the most. Returns {index in ups: CLine}."""
        def weight(ul, ln):
            if ul.role == "sasl":
                if ln.role not in ("sasl", "unknown") or norm_sasl(ln.text) != norm_sasl(ul.text):
                    return 0
            elif ul.raw[:1] in (b" ", b"\t"):
                return 0  # a command like that can only be a refused client line
            elif not ln.relayable_cmd or norm_cmd(ln.text) != norm_cmd(ul.text):
                return 0
            return 3 if ln.text == ul.raw else 2

        n, m = len(ups), len(cands)
        best = [[0] * (m + 1) for _ in range(n + 1)]
        for i in range(n - 1, -1, -1):
            for j in range(m - 1, -1, -1):
                w = weight(ups[i], cands[j])
                best[i][j] = max(best[i + 1][j], best[i][j + 1],
                                 w + best[i + 1][j + 1] if w else 0)
        pairs = {}
        i = j = 0
        while i < n and j < m:
            w = weight(ups[i], cands[j])
            if w and best[i][j] == w + best[i + 1][j + 1]:
                pairs[i] = cands[j]
                i += 1
                j += 1
            elif best[i + 1][j] >= best[i][j + 1]:
                i += 1
            else:
                j += 1
        return pairs

    def inv1(self):
        sent = [ln for ln in self.c.lines if ln.sent]
        used = set()  # client lines already executed (envelope commands may be replayed)
        for conn in self.conns:
            for i, ul in enumerate(conn.lines):
                ul.origin = self.proxy_origin(conn, i, ul)
            ups = [ul for ul in conn.lines if ul.origin is None]
            cands = [ln for ln in sent if ln.idx not in used or ln.verb in REPLAYABLE]
            pairs = self.align(ups, cands)
            for k, ul in enumerate(ups):
                if k in pairs:
                    ul.match = pairs[k]
                    used.add(ul.match.idx)
            client_cmd_seen = False
            for ul in conn.lines:
                where = (f"upstream conn {conn.sess_no} line {ul.index} "
                         f"[{ul.role}{' tls' if ul.tls else ''}] {short(ul.raw + ul.term, 120)}")
                if ul.match is not None:
                    client_cmd_seen = True
                    continue
                if ul.origin == "proxy-starttls":
                    if self.cfg.upstream_tls != "may":
                        self.violate("inv1:proxy-starttls-when-off",
                                     f"{where}: [upstream_tls] starttls = off")
                    elif client_cmd_seen:
                        self.violate("inv1:proxy-starttls-after-client-commands",
                                     f"{where}: client commands already ran on this "
                                     f"connection in cleartext")
                    continue
                if ul.origin == "proxy-xclient":
                    if client_cmd_seen:
                        self.violate("inv5:xclient-after-client-commands",
                                     f"{where}: the proxy's XCLIENT came after client commands")
                    continue
                if ul.origin is not None:
                    continue
                if ul.role == "sasl":
                    n = norm_cmd(ul.text)
                    cmd = next((ln for ln in sent if ln.role == "cmd" and
                                norm_cmd(ln.text) == n), None)
                    if cmd is not None:
                        self.violate("inv1:command-relayed-as-sasl-response",
                                     f"{where}: the client sent it as a command ({cmd}); "
                                     f"the upstream read it as a SASL response")
                    else:
                        self.violate("inv1:unexpected-sasl-response",
                                     f"{where}: no client SASL response like it")
                    continue
                n = norm_cmd(ul.text)
                key, why = self.explain(ul, n, -1)
                if verb_of(ul.text) == b"XCLIENT" and key == "inv1:unexpected-line":
                    key = "inv5:xclient-wrong-identity"
                    why = (f"not the client's identity ({self.c.src}:{self.c.src_port}) or "
                           f"upstream_identity={self.cfg.identity}")
                self.violate(key, f"{where}: {why}")

    def xclient_ok(self, ul):
        attrs = {}
        for w in ul.text.decode("latin-1").split()[1:]:
            k, _, v = w.partition("=")
            attrs[k.upper()] = v
        if attrs.get("ADDR") != self.c.src:
            return False
        if "PORT" in attrs and attrs["PORT"] != str(self.c.src_port):
            return False
        return True

    # --- invariant 2 --------------------------------------------------------------------

    def inv2(self):
        delivered = {}
        first_conn = self.conns[0] if self.conns else None
        for slot in self.c.slots:
            rep = slot.reply
            if rep is None:
                continue
            what = f"reply {rep!r} to {slot.describe()}"
            if len(rep.tags) > 1:
                self.violate("inv2:replies-merged", f"{what}: tags of several replies")
                continue
            if not rep.tags:
                if 200 <= rep.code < 400 and not self.local_ok(slot):
                    key = "inv3:made-up-2xx-at-end-of-data" if self.is_end(slot) else \
                        "inv2:made-up-positive-reply"
                    self.violate(key, f"{what}: no upstream sent it")
                continue
            tag = rep.tags[0]
            info = self.tags.get(tag)
            if info is None or info.conn not in self.conns:
                self.violate("inv2:reply-from-elsewhere", f"{what}: #u{tag} is not from "
                             f"this session's upstream connections")
                continue
            if tag in delivered:
                self.violate("inv2:reply-delivered-twice",
                             f"{what}: #u{tag} already answered {delivered[tag].describe()}")
                continue
            delivered[tag] = slot
            if info.kind == "tls-injected":
                after = getattr(info, "after", None)
                if after is not None and after.origin == "proxy-starttls":
                    self.violate("inv4:upstream-injection-after-220-relayed",
                                 f"{what}: {info.describe()}")
                else:
                    self.violate("inv2:reply-paired-with-wrong-command",
                                 f"{what}: {info.describe()}, after the upstream's 220 to a "
                                 f"STARTTLS that was not the proxy's")
                continue
            if info.kind == "unsolicited":
                self.violate("inv2:unsolicited-reply-relayed", f"{what}: {info.describe()}")
                continue
            ok = False
            if slot.kind == "greeting":
                ok = info.kind == "greeting" and info.conn is first_conn
            elif slot.kind == "eod":
                ok = info.kind in ("msg", "early") and info.msg is not None and \
                    info.msg.kind == "DATA" and info.msg.msg_id == slot.msg.id
            elif info.line is not None:
                ok = self.same_line(slot.line, info.line)
            if not ok:
                self.violate("inv2:reply-paired-with-wrong-command",
                             f"{what}: {info.describe()}")

    def is_end(self, slot):
        if slot.kind == "eod":
            return True
        return slot.kind == "line" and any(
            m.kind == "BDAT" and m.chunks and m.chunks[-1][0] is slot.line
            for m in self.c.messages)

    def local_ok(self, slot):
        if slot.kind != "line" or slot.line.role not in ("cmd", "unknown"):
            return False
        return slot.line.verb in LOCAL_OK_VERBS

    def same_line(self, ln, ul):
        if ul.role == "sasl":
            return ln.role in ("sasl", "unknown") and (
                norm_sasl(ln.text) == norm_sasl(ul.text) or ul.text.strip() == b"*")
        if ln.role not in ("cmd", "unknown"):
            return False
        a, b = norm_cmd(ln.text).split(), norm_cmd(ul.text).split()
        if a[:1] in ([b"EHLO"], [b"HELO"]):
            return b[:1] in ([b"EHLO"], [b"HELO"]) and a[1:2] == b[1:2]
        return a == b

    # --- invariant 3 --------------------------------------------------------------------

    def inv3(self):
        by_id = {m.id: m for m in self.c.messages}
        accepted = {}
        for conn in self.conns:
            for um in conn.messages:
                if not um.accepted:
                    continue
                where = f"upstream conn {conn.sess_no} accepted a {um.kind} message " \
                        f"(#u{um.tag}, {len(um.raw)} bytes)"
                m = by_id.get(um.msg_id)
                if m is None:
                    self.violate("inv3:upstream-accepted-a-message-the-client-never-sent",
                                 f"{where}: {short(um.raw, 200)}")
                    continue
                accepted.setdefault(m.id, []).append(um)
                if not m.completed:
                    self.violate("inv3:accepted-a-message-the-client-did-not-finish",
                                 f"{where}: message {m.id} was cut by the client")
                    continue
                exp = m.expected_contents()
                ok = um.raw in exp or (m.kind == "DATA" and
                                       unstuff(um.raw) in [unstuff(e) for e in exp])
                if not ok:
                    self.violate("inv3:accepted-content-differs",
                                 f"{where}: message {m.id} ({', '.join(m.hostile) or 'plain'})"
                                 f" arrived as {short(um.raw, 200)}; the client sent "
                                 f"{short(exp[-1], 200)}")
        for mid, ums in accepted.items():
            if len(ums) > 1:
                self.violate("inv3:message-accepted-twice",
                             f"message {mid} accepted {len(ums)} times upstream")
        for m in self.c.messages:
            slot = m.end_slot if m.kind == "DATA" else (
                m.chunks[-1][0].slot if m.chunks else None)
            if slot is None or slot.reply is None or not 200 <= slot.reply.code < 300:
                continue
            rep = slot.reply
            if not rep.tags:
                continue  # reported by inv2 as made up
            info = self.tags.get(rep.tags[0])
            if info is None or info.kind != "msg" or info.msg is None or \
                    not info.msg.accepted or info.msg.msg_id != m.id:
                self.violate("inv3:2xx-at-end-of-data-not-the-upstream-acceptance",
                             f"message {m.id} got {rep!r}: "
                             f"{info.describe() if info else 'unknown tag'}")

    # --- invariant 5 --------------------------------------------------------------------

    def inv5(self):
        ident = self.cfg.identity
        for conn in self.conns:
            if conn.bytes_in == 0 and not conn.lines:
                continue
            if ident in ("proxy-v1", "proxy-v2"):
                want = 1 if ident == "proxy-v1" else 2
                h = conn.header
                if h is None:
                    self.violate("inv5:proxy-header-missing",
                                 f"upstream conn {conn.sess_no} got no PROXY header "
                                 f"({len(conn.lines)} lines followed)")
                elif h.get("version") != want or h.get("src") != self.c.src or \
                        h.get("sport") != self.c.src_port:
                    self.violate("inv5:proxy-header-wrong",
                                 f"upstream conn {conn.sess_no}: header {h}, client "
                                 f"{self.c.src}:{self.c.src_port}")
            elif ident == "xclient":
                accepted = False
                for ul in conn.lines:
                    if ul.origin == "proxy-xclient" and ul.code == 220:
                        accepted = True
                    if ul.match is not None and not accepted:
                        why = "XCLIENT was not offered" if not conn.plan.xclient else (
                            "XCLIENT was refused" if any(
                                u.origin == "proxy-xclient" for u in conn.lines)
                            else "no XCLIENT was sent")
                        self.violate("inv5:client-command-without-xclient",
                                     f"upstream conn {conn.sess_no} executed {ul.match} "
                                     f"before any accepted XCLIENT ({why})")
                        break


# --------------------------------------------------------------------------------------
# Configurations and the run
# --------------------------------------------------------------------------------------

class Config:
    def __init__(self, seed, identity=None):
        r = random.Random(f"{seed}:config")
        self.seed = seed
        drawn = r.choice(IDENTITIES)
        self.identity = identity or drawn
        self.client_tls = r.choice(["offer", "offer", "strip"])
        self.upstream_tls = r.choice(["off", "may", "may"])
        self.pipelining = r.random() < 0.75
        self.chunking = r.random() < 0.6
        self.learn = r.choice(["on", "off"])

    @property
    def token(self):
        return f"{self.seed}/{self.identity}"

    def describe(self):
        return (f"upstream_identity={self.identity} client_tls.starttls={self.client_tls} "
                f"upstream_tls.starttls={self.upstream_tls} "
                f"upstream PIPELINING={'on' if self.pipelining else 'off'} "
                f"CHUNKING={'on' if self.chunking else 'off'} learn_failures={self.learn}")

    def sections(self):
        return {
            "proxy": {"upstream_identity": self.identity},
            "client_tls": {"starttls": self.client_tls, "learn_failures": self.learn,
                           "learn_ttl": "2s"},
            "upstream_tls": {"starttls": self.upstream_tls, "remember_failures": "1s"},
            "log": {"level": "info"},
        }


class Failure:
    """The record of one failure class: its shortest example so far."""

    def __init__(self, key, violation, cfg, seed=None, client=None, conns=(), plan=None,
                 max_groups=None, text=None):
        self.key = key
        self.violation = violation
        self.cfg = cfg
        self.seed = seed
        self.max_groups = max_groups
        self.groups = client.groups if client is not None else 0
        self.size = 0 if client is None else (
            sum(len(ln.raw) for ln in client.lines if ln.sent) +
            sum(len(m.body) for m in client.messages))
        if text is None:
            text = render_session(violation, cfg, seed, client, conns, plan, max_groups)
        self.text = text

    def replay_arg(self):
        if self.seed is None:
            return f"(config {self.cfg.token}: a whole configuration run)"
        extra = f" --max-groups {self.max_groups}" if self.max_groups is not None else ""
        return f"--replay {self.cfg.token}:{self.seed}{extra}"


def render_session(violation, cfg, seed, client, conns, plan, max_groups):
    out = [f"=== [{violation.key}] {violation.text}",
           f"config {cfg.token}: {cfg.describe()}",
           f"session seed {seed}: upstream {plan.describe()}; client {client.src}:"
           f"{client.src_port}, {client.groups} groups, end={client.end_mode}",
           f"replay: PROXY_BIN=... tests/fuzz/session-fuzz --replay {cfg.token}:{seed}"
           + (f" --max-groups {max_groups}" if max_groups is not None else ""),
           "--- client (C> sent, S< received)"]
    out += ["  " + t for t in client.transcript]
    for conn in conns:
        out.append(f"--- upstream connection {conn.sess_no}")
        out += ["  " + t for t in conn.log]
    return "\n".join(out)


class Runner:
    def __init__(self, binary, workdir, log=print, reply_timeout=3.0, shrink=True,
                 benign=False):
        self.benign = benign
        self.binary = binary
        self.workdir = workdir
        self.say = log
        self.reply_timeout = reply_timeout
        self.shrink = shrink
        self.failures = {}      # key -> Failure (the shortest seen)
        self.counts = {}        # key -> occurrences
        self.sessions = 0
        self.proxy_runs = 0
        self.cert = harness.make_cert(workdir, "localhost")
        self.proxy = None
        self.upstream = None
        self.coverage = {}

    # --- proxy lifecycle ------------------------------------------------------------------

    def start(self, cfg):
        self.upstream = RecordingUpstream(*self.cert).start()
        self.proxy_runs += 1
        port = harness.free_port()
        sections = harness.base_sections([f"127.0.0.1:{port}"], self.upstream.addr,
                                         cfg.sections())
        self.proxy = harness.Proxy(self.binary, self.workdir, sections, [port],
                                   name=f"proxy{self.proxy_runs}")
        self.proxy.start()
        self.cfg = cfg

    def stop(self):
        """Invariant 6 at the end of a configuration: SIGTERM, exit 0, clean stderr."""
        if self.proxy is not None:
            p = self.proxy
            self.proxy = None
            if p.proc.poll() is None:
                p.signal(signal.SIGTERM)
                try:
                    rc = p.wait_exit(15)
                except AssertionError as e:
                    self.record_plain("inv6:no-exit-on-sigterm", str(e)[:4000])
                    rc = None
                if rc is not None and rc != 0:
                    self.record_plain("inv6:exit-status",
                                      f"exit status {rc} on SIGTERM; stderr tail:\n"
                                      f"{p.stderr()[-3000:]}")
            else:
                p.wait_exit(1)
            text = p.stderr()
            for marker in harness.SANITIZER_MARKERS:
                if marker in text:
                    i = text.find(marker)
                    self.record_plain("inv6:sanitizer-report",
                                      f"{marker} in stderr ({p.stderr_path}):\n"
                                      f"{text[max(0, i - 2000):i + 6000]}")
                    break
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None

    def record_plain(self, key, text):
        self.counts[key] = self.counts.get(key, 0) + 1
        if key not in self.failures:
            self.failures[key] = Failure(
                key, Violation(key, text), self.cfg,
                text=f"=== [{key}] config {self.cfg.token}: {self.cfg.describe()}\n{text}")
            self.say(f"NEW FAILURE CLASS {key} (config {self.cfg.token})")

    # --- one session ------------------------------------------------------------------------

    def session(self, seed, max_groups=None):
        """Runs one session; returns (violations, client, conns, plan)."""
        cfg = self.cfg
        plan = UpPlan(seed, cfg)
        self.upstream.begin_session(plan)
        client = ClientSession(seed, cfg, self.proxy.port, self.upstream, max_groups,
                               self.reply_timeout, self.benign)
        client.t0 = plan.t0
        client.run()
        left = self.upstream.wait_quiet(3.0)
        conns = self.upstream.session_conns()
        violations = list(client.violations)
        if left:
            self.upstream.force_close(left)
        try:
            violations += Checker(cfg, client, conns, self.upstream.tags).run()
        except Exception:
            violations.append(Violation("fuzzer:checker-exception", traceback.format_exc()))
        if left and not violations:
            # (After a desync the proxy rightly waits for replies that never come.)
            violations.append(Violation("session:upstream-connection-left-open",
                                        f"{len(left)} upstream connection(s) still open 3s "
                                        f"after the client's session ended"))
        if not self.proxy.running():
            violations.append(Violation("inv6:proxy-died",
                                        f"proxy exited with {self.proxy.proc.returncode}; "
                                        f"stderr tail:\n{self.proxy.stderr()[-4000:]}"))
        self.sessions += 1
        self.cover(client, conns)
        return violations, client, conns, plan

    def cover(self, client, conns):
        """Counts what the sessions exercised (printed with the report)."""
        c = self.coverage

        def add(key, n=1):
            c[key] = c.get(key, 0) + n

        add("upstream connections", len(conns))
        add("sessions with a reconnect", len(conns) > 1)
        add("upstream TLS handshakes", sum(conn.tls for conn in conns))
        add("client TLS handshakes", client.tls)
        add("messages accepted upstream", sum(m.accepted for cn in conns for m in cn.messages))
        add("BDAT messages accepted", sum(m.accepted and m.kind == "BDAT"
                                          for cn in conns for m in cn.messages))
        add("2xx to end of data", sum(
            1 for m in client.messages
            if (m.end_slot if m.kind == "DATA" else m.chunks[-1][0].slot if m.chunks else None)
            is not None and (m.end_slot if m.kind == "DATA" else m.chunks[-1][0].slot).reply
            is not None and 200 <= (m.end_slot if m.kind == "DATA"
                                    else m.chunks[-1][0].slot).reply.code < 300))
        add("SASL responses upstream", sum(u.role == "sasl" for cn in conns for u in cn.lines))
        add("XCLIENT accepted", sum(cn.xclient_ok for cn in conns))
        add("PROXY headers", sum(cn.header is not None for cn in conns))
        add("half-closes", client.closed_by_client == "half" or client.end_mode == "half-close")
        add("client aborts", client.end_mode in ("abort", "abort-rst", "partial"))
        add("lines executed upstream", sum(len(cn.lines) for cn in conns))

    def run_session(self, seed, deadline=None):
        violations, client, conns, plan = self.session(seed)
        died = any(v.key == "inv6:proxy-died" for v in violations)
        seen = set()
        for v in violations:
            if v.key in seen:
                continue
            seen.add(v.key)
            self.counts[v.key] = self.counts.get(v.key, 0) + 1
            f = Failure(v.key, v, self.cfg, seed, client, conns, plan, None)
            old = self.failures.get(v.key)
            if old is None:
                self.say(f"NEW FAILURE CLASS {v.key}: --replay {self.cfg.token}:{seed}: "
                         f"{v.text[:300]}")
                if self.shrink and not died and (deadline is None or
                                                 time.monotonic() < deadline):
                    f = self.shrink_failure(f, deadline) or f
                self.failures[v.key] = f
            elif (f.groups, f.size) < (old.groups, old.size):
                self.failures[v.key] = f
        if died:
            self.restart()
        return violations

    def shrink_failure(self, f, deadline):
        """Replays the session cut to 1, 2, ... groups; keeps the first cut that still
        shows the same class."""
        for g in range(1, f.groups):
            if deadline is not None and time.monotonic() > deadline:
                return None
            violations, client, conns, plan = self.session(f.seed, max_groups=g)
            if not self.proxy.running():
                self.restart()
                return None
            for v in violations:
                if v.key == f.key:
                    return Failure(v.key, v, self.cfg, f.seed, client, conns, plan, g)
        return None

    def restart(self):
        cfg = self.cfg
        try:
            self.stop()
        except Exception:
            pass
        self.start(cfg)

    # --- the run -----------------------------------------------------------------------

    def run(self, seconds, seed, n_configs=None):
        rng = random.Random(seed)
        if n_configs is None:
            n_configs = max(2, min(12, int(seconds // 10)))
        t_end = time.monotonic() + seconds
        per = seconds / n_configs
        offset = rng.randrange(len(IDENTITIES))
        for i in range(n_configs):
            cfg_seed = rng.randrange(1, 10 ** 9)
            cfg = Config(cfg_seed, IDENTITIES[(i + offset) % len(IDENTITIES)])
            phase_end = min(t_end, time.monotonic() + per)
            self.say(f"config {i + 1}/{n_configs} {cfg.token}: {cfg.describe()}")
            self.start(cfg)
            n = 0
            try:
                while time.monotonic() < phase_end:
                    s = rng.randrange(1, 10 ** 9)
                    self.run_session(s, deadline=phase_end + 5)
                    n += 1
            finally:
                self.stop()
            self.say(f"  {n} sessions")
        return self

    def replay(self, cfg_seed, seed, max_groups=None, identity=None):
        cfg = Config(cfg_seed, identity)
        # Config() draws the identity from the seed when none is given; a run passes the
        # one it cycled to, which --replay finds again with the same config seed.
        self.start(cfg)
        try:
            violations, client, conns, plan = self.session(seed, max_groups)
        finally:
            self.stop()
        for v in violations:
            self.counts[v.key] = self.counts.get(v.key, 0) + 1
            self.failures.setdefault(v.key, Failure(v.key, v, cfg, seed, client, conns, plan,
                                                    max_groups))
        return violations, client, conns, plan

    def report(self, full=True):
        lines = [f"{self.sessions} sessions, {self.proxy_runs} proxy runs, "
                 f"{len(self.failures)} failure classes",
                 "coverage: " + ", ".join(f"{k} {v}" for k, v in self.coverage.items())]
        for key in sorted(self.failures):
            f = self.failures[key]
            lines.append(f"  {key}: {self.counts.get(key, 0)} session(s); shortest: "
                         f"{f.replay_arg()} ({f.groups} groups)")
        if full:
            for key in sorted(self.failures):
                lines.append("")
                lines.append(self.failures[key].text)
        return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=None, help="run seed (default: random)")
    ap.add_argument("--configs", type=int, default=None, help="proxy configurations")
    ap.add_argument("--replay", default=None, metavar="CONFIG:SESSION",
                    help="rerun one session (CONFIG may be CONFIGSEED/IDENTITY)")
    ap.add_argument("--max-groups", type=int, default=None)
    ap.add_argument("--reply-timeout", type=float, default=3.0)
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--benign", action="store_true",
                    help="a well-behaved client (checks the fuzzer's own model)")
    ap.add_argument("--verbose", action="store_true", help="print replayed transcripts")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    binary = os.environ.get("PROXY_BIN")
    if not binary or not os.access(binary, os.X_OK):
        print("PROXY_BIN must name the built smtp-tls-proxy binary", file=sys.stderr)
        return 2
    workdir = args.workdir or tempfile.mkdtemp(prefix="session-fuzz-")
    os.makedirs(workdir, exist_ok=True)
    runner = Runner(os.path.abspath(binary), workdir, reply_timeout=args.reply_timeout,
                    shrink=not args.no_shrink, benign=args.benign)
    try:
        if args.replay:
            cfg_part, _, sess = args.replay.partition(":")
            cfg_seed, _, identity = cfg_part.partition("/")
            violations, client, conns, plan = runner.replay(
                int(cfg_seed), int(sess), args.max_groups, identity or None)
            if args.verbose or violations:
                v = violations[0] if violations else Violation("none", "no violation")
                print(render_session(v, runner.cfg, int(sess), client, conns, plan,
                                     args.max_groups))
            for v in violations:
                print(f"VIOLATION {v!r}")
            print(f"{len(violations)} violation(s)")
            return 1 if violations else 0
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10 ** 9)
        print(f"session fuzz: run seed {seed} (rerun with --seed {seed}), "
              f"{args.seconds:.0f}s, binary {binary}, workdir {workdir}")
        runner.run(args.seconds, seed, args.configs)
        print(runner.report())
        return 1 if runner.failures else 0
    finally:
        if runner.proxy is not None:
            runner.stop()
        if not args.workdir and not runner.failures:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
