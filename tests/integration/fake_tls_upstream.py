"""A fake upstream for leg 2: real SMTP and real TLS (python ssl), failing STARTTLS on demand.

TlsFakeUpstream is an SMTP server in threads on loopback. It advertises STARTTLS in its EHLO
reply (except in mode "no-starttls") and serves cleartext on any connection that does not
use it, so the proxy's cleartext retry works against it. Its mode decides what happens when
the client sends STARTTLS (or, for the post-TLS modes, after the handshake):

  tls-ok                 220, handshake (TLS 1.3 when the client offers it), SMTP inside TLS
  refuse-454             "454 4.7.0 TLS not available", the connection goes on in cleartext
  refuse-502             "502 5.5.1 STARTTLS not permitted", likewise
  starttls-garbage       a non-SMTP line "hello?", then cleartext SMTP goes on
  cert-required          the server requires a client certificate (CERT_REQUIRED): without
                         one the handshake ends with an alert (certificate_required in TLS 1.3,
                         handshake_failure in TLS 1.2)
  client-cert-disliked   the server asks for a client certificate (CERT_OPTIONAL) and checks
                         it against a CA that signed none: presenting one fails with an alert
                         (unknown_ca), presenting none succeeds
  no-shared-cipher       an incompatible server: TLS 1.2 only, DHE-RSA ciphers only (which
                         BoringSSL does not implement): handshake_failure alert
  eof-after-220          220, then close (FIN) before any handshake byte
  reset-during-handshake 220, read the ClientHello, then RST (SO_LINGER 0)
  handshake-timeout      220, read the ClientHello, then silence until the client closes
  tls13-intolerant       220, peek the ClientHello (MSG_PEEK): close when it offers TLS 1.3
                         (supported_versions 0x002b with 0x0304), else a normal handshake
  post-tls-ehlo-403      TLS works, the EHLO (or HELO) inside TLS gets "403 4.7.0 TLS handshake
                         failed"
  post-tls-ehlo-554      likewise with "554 5.7.0 ..."
  post-tls-close         TLS works, then the server closes right after the handshake
  response-injection     "220 go ahead\\r\\n250 injected\\r\\n" in one write, then TLS works
  no-starttls            STARTTLS is never advertised (and refused with 502 if sent)
  tls-break-at-mail      TLS works; the MAIL command inside TLS gets no reply: the server
                         closes the connection (after the client's EHLO was answered)
  tls-break-in-data      TLS works; after 354 inside TLS the server reads some body bytes
                         and closes the connection

With chunking=True it also advertises CHUNKING and takes BDAT (RFC 3030): "BDAT n [LAST]"
chunks read by their byte counts, the message recorded at LAST (Message.kind "BDAT").

The mode may be changed at run time (set .mode); each connection takes the mode current when
it was accepted. Records per connection: every command line (raw bytes, inside and outside
TLS, in order), STARTTLS count, the ClientHello's offered versions, the TLS version/cipher
and whether the client presented a certificate, whether the handshake resumed an earlier
session, the handshake error, and every delivered message with the transport it came over.

Like a real server it lets clients resume their sessions (TLS 1.3 tickets, TLS 1.2 tickets
and session IDs): one server context per mode serves every connection, so a ticket issued on
one connection is accepted on the next; Conn.resumed records whether it was.
"""

import socket
import ssl
import struct
import threading
import time

CRLF = b"\r\n"

MODES = ("tls-ok", "refuse-454", "refuse-502", "starttls-garbage", "cert-required",
         "client-cert-disliked", "no-shared-cipher", "eof-after-220",
         "reset-during-handshake", "handshake-timeout", "tls13-intolerant",
         "post-tls-ehlo-403", "post-tls-ehlo-554", "post-tls-close", "response-injection",
         "no-starttls", "tls-break-at-mail", "tls-break-in-data")

TLS_VERSION_NAMES = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
                     0x0304: "TLSv1.3"}


# --------------------------------------------------------------------------------------
# ClientHello parsing (for the TLS 1.3 intolerant server)
# --------------------------------------------------------------------------------------

def parse_client_hello(data):
    """Offered versions of a ClientHello record: {"legacy": 0x0303, "supported": [...],
    "resumption": bool (a TLS 1.3 pre_shared_key, a TLS 1.2 ticket or session ID)}, or None
    when |data| is not (yet) a complete ClientHello record."""
    if len(data) < 5 or data[0] != 0x16:
        return None
    reclen = struct.unpack("!H", data[3:5])[0]
    if len(data) < 5 + reclen:
        return None
    body = data[5:5 + reclen]
    if len(body) < 4 or body[0] != 0x01:
        return {"legacy": None, "supported": [], "bad": True}
    hslen = int.from_bytes(body[1:4], "big")
    hs = body[4:4 + hslen]  # a ClientHello split over records is not expected here
    try:
        pos = 0
        legacy = struct.unpack("!H", hs[pos:pos + 2])[0]
        pos += 2 + 32
        session_id_len = hs[pos]
        pos += 1 + hs[pos]                                        # session id
        pos += 2 + struct.unpack("!H", hs[pos:pos + 2])[0]        # cipher suites
        pos += 1 + hs[pos]                                        # compression
        supported = []
        psk = ticket = False
        if pos + 2 <= len(hs):
            extlen = struct.unpack("!H", hs[pos:pos + 2])[0]
            pos += 2
            end = pos + extlen
            while pos + 4 <= end:
                etype, elen = struct.unpack("!HH", hs[pos:pos + 4])
                pos += 4
                ext = hs[pos:pos + elen]
                pos += elen
                if etype == 0x002B and ext:
                    n = ext[0]
                    supported = [struct.unpack("!H", ext[1 + i:3 + i])[0]
                                 for i in range(0, n, 2)]
                elif etype == 0x0029:
                    psk = True                                    # pre_shared_key
                elif etype == 0x0023 and ext:
                    ticket = True                                 # session_ticket
        # A TLS 1.3 client always sends a (fake) session ID: only a TLS 1.2 one resumes.
        resumption = psk or ticket or (session_id_len > 0 and 0x0304 not in supported)
        return {"legacy": legacy, "supported": supported, "resumption": resumption}
    except (struct.error, IndexError):
        return {"legacy": None, "supported": [], "bad": True}


def offered_max_version(hello):
    """The highest TLS version a parsed ClientHello offers (GREASE values ignored)."""
    if hello is None:
        return None
    versions = [v for v in hello["supported"] if v in TLS_VERSION_NAMES]
    if not versions and hello.get("legacy") in TLS_VERSION_NAMES:
        versions = [hello["legacy"]]
    return TLS_VERSION_NAMES[max(versions)] if versions else None


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------

class Message:
    def __init__(self, conn, mail_from, rcpts, content, tls_version, kind="DATA"):
        self.conn = conn
        self.mail_from = mail_from
        self.rcpts = rcpts
        # DATA: the content dot-unstuffed, final CRLF included; BDAT: the chunks joined
        self.content = content
        self.kind = kind                # "DATA" or "BDAT"
        self.tls = tls_version is not None
        self.tls_version = tls_version  # "TLSv1.3", "TLSv1.2" or None (cleartext)

    def __repr__(self):
        return (f"Message(conn#{self.conn.index}, {self.kind}, tls={self.tls_version}, "
                f"from={self.mail_from!r}, to={self.rcpts!r}, {len(self.content)} bytes)")


class Conn:
    def __init__(self, index, sock, peer, mode):
        self.index = index
        self.sock = sock
        self.peer = peer
        self.mode = mode
        self.commands = []            # raw command lines (no CRLF), in order
        self.starttls = 0             # STARTTLS commands received
        self.tls_commands_start = None  # index in commands where TLS began
        self.client_hello = None      # parsed offered versions (modes that read it)
        self.hello_max = None         # highest version the ClientHello offered
        self.tls_version = None       # after a successful handshake
        self.tls_cipher = None
        self.client_cert = None       # True/False after a handshake that asked for one
        self.resumed = None           # after a successful handshake: an earlier session?
        self.offered_resumption = None  # the ClientHello offered one (modes that read it)
        self.handshake_error = None   # text of a failed server-side handshake
        self.after_starttls = b""     # bytes pipelined after the STARTTLS line (cleartext)
        self.partial = None           # body bytes read before tls-break-in-data closed
        self.header = None            # proxy_header: the parsed PROXY header
        self.header_raw = b""
        self.xclients = []            # xclient: the XCLIENT lines, in order
        self.messages = []
        self.closed = threading.Event()

    @property
    def cleartext_commands(self):
        if self.tls_commands_start is None:
            return list(self.commands)
        return self.commands[:self.tls_commands_start]

    @property
    def tls_commands(self):
        if self.tls_commands_start is None:
            return []
        return self.commands[self.tls_commands_start:]

    def verbs(self):
        return [c.split(b" ", 1)[0].upper().decode("latin-1") for c in self.commands]

    def __repr__(self):
        return (f"Conn#{self.index}(mode={self.mode}, starttls={self.starttls}, "
                f"hello_max={self.hello_max}, tls={self.tls_version}, resumed={self.resumed}, "
                f"hs_error={self.handshake_error!r}, commands={self.commands!r}, "
                f"messages={len(self.messages)})")


class _Gone(Exception):
    pass


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------

class TlsFakeUpstream:
    """See the module's docstring. |cert|/|key|: the server certificate (PEM). |greeting|:
    the 220 line's text after "220 " (its first word is the greeting host name).
    |retry_greeting|: bytes greeting every connection after the first (None: the same).
    |other_ca|: a CA file for mode client-cert-disliked (a CA that signed no client
    certificate). |dual_stack|: also listen on [::1] with the same port.
    |xclient|: advertise XCLIENT in cleartext EHLO replies and accept it (a new 220
    greeting, as Postfix answers), recording each line in Conn.xclients.
    |proxy_header|: read a PROXY v1/v2 header before greeting (Conn.header).
    |close_after_unknown|: N: the Nth unknown command gets "421 4.7.0 Too many
    unrecognized commands" and the connection is closed (Exim's behaviour), inside TLS
    too, without close_notify. |port|: listen on this port (0: any free one).
    |chunking|: advertise CHUNKING and take BDAT (see the module's docstring)."""

    def __init__(self, cert, key, mode="tls-ok", host="127.0.0.1",
                 greeting="fake.test ESMTP fake-tls", caps=("PIPELINING", "8BITMIME", "SIZE 10240000"),
                 other_ca=None, retry_greeting=None, rsa_cert=None, dual_stack=False,
                 xclient=False, proxy_header=False, close_after_unknown=None, port=0,
                 chunking=False):
        self.xclient = xclient
        self.chunking = chunking
        self.proxy_header = proxy_header
        self.close_after_unknown = close_after_unknown
        assert mode in MODES, mode
        self.cert = cert
        self.key = key
        self.rsa_cert = rsa_cert  # (cert, key) for no-shared-cipher (DHE-RSA), optional
        self.mode = mode
        self.host = host
        self.greeting = b"220 " + greeting.encode() + CRLF
        self.retry_greeting = retry_greeting
        self.caps = list(caps)
        self.other_ca = other_ca
        self.connections = []
        self._contexts = {}           # (mode, certificates) -> server context
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self.listeners = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        ls = socket.socket(family, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        self.port = ls.getsockname()[1]
        self.listeners.append(ls)
        if dual_stack and family == socket.AF_INET:
            try:
                ls6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                ls6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                ls6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls6.bind(("::1", self.port))
                self.listeners.append(ls6)
            except OSError:
                pass

    @property
    def addr(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # --- lifecycle --------------------------------------------------------------------

    def start(self):
        for ls in self.listeners:
            ls.listen(64)
            ls.settimeout(0.1)
            t = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in list(self._threads):
            t.join(5)
        for ls in self.listeners:
            ls.close()
        with self._lock:
            for c in self.connections:
                try:
                    c.sock.close()
                except OSError:
                    pass

    def _accept_loop(self, ls):
        while not self._stop.is_set():
            try:
                sock, peer = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                conn = Conn(len(self.connections), sock, peer, self.mode)
                self.connections.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    # --- queries ----------------------------------------------------------------------

    def messages(self):
        with self._lock:
            conns = list(self.connections)
        return [m for c in conns for m in c.messages]

    def conns(self):
        with self._lock:
            return list(self.connections)

    def wait_messages(self, n, timeout=10.0):
        _wait(lambda: len(self.messages()) >= n, timeout, f"{n} message(s) at the fake",
              self)
        return self.messages()

    def wait_connections(self, n, timeout=10.0):
        _wait(lambda: len(self.connections) >= n, timeout, f"{n} connection(s) to the fake",
              self)
        return self.conns()

    def wait_all_closed(self, timeout=10.0):
        _wait(lambda: all(c.closed.is_set() for c in self.conns()), timeout,
              "all fake upstream connections closed", self)

    def describe(self):
        return "\n".join(repr(c) for c in self.conns())

    # --- TLS contexts -----------------------------------------------------------------

    def _server_context(self, mode):
        """The server context of |mode| and the current certificate, made at its first use
        and kept (its ticket keys let a later connection resume)."""
        key = (mode, self.cert, self.key, self.other_ca, self.rsa_cert)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = self._contexts[key] = self._new_server_context(mode)
            return ctx

    def _new_server_context(self, mode):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if mode == "no-shared-cipher":
            if self.rsa_cert is not None:
                ctx.load_cert_chain(*self.rsa_cert)
            else:
                ctx.load_cert_chain(self.cert, self.key)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers("DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")
            return ctx
        ctx.load_cert_chain(self.cert, self.key)
        if mode == "cert-required":
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.other_ca or self.cert)
        elif mode == "client-cert-disliked":
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(self.other_ca or self.cert)
        return ctx

    # --- serving ----------------------------------------------------------------------

    def _serve(self, conn):
        io = _Io(conn.sock, self._stop)
        conn.unknown = 0
        try:
            if self.proxy_header:
                import harness
                buf = b""
                while True:
                    n, info = harness.parse_proxy_header(buf)
                    if n is not None:
                        break
                    buf += io._recv()
                if n < 0:
                    raise _Gone()
                conn.header, conn.header_raw = info, buf[:n]
                io.buf = buf[n:]
            greeting = self.greeting
            if conn.index > 0 and self.retry_greeting is not None:
                greeting = self.retry_greeting
            io.send(greeting)
            while True:
                line = io.readline()
                conn.commands.append(line)
                io = self._command(conn, io, line)
        except (_Gone, OSError, ssl.SSLError):
            pass
        finally:
            try:
                io.sock.close()
            except OSError:
                pass
            conn.closed.set()

    def _ehlo_reply(self, conn, arg, in_tls):
        first = b"fake.test greets " + arg
        caps = [c.encode() for c in self.caps]
        if self.chunking:
            caps.append(b"CHUNKING")
        if self.xclient and not in_tls:
            caps.append(b"XCLIENT NAME ADDR PROTO HELO PORT")
        if conn.mode != "no-starttls" and not in_tls:
            caps.append(b"STARTTLS")
        lines = [first] + caps
        return b"".join(b"250-" + x + CRLF for x in lines[:-1]) + b"250 " + lines[-1] + CRLF

    def _command(self, conn, io, line):
        """Handles one command; returns the I/O object to go on with (TLS after STARTTLS)."""
        words = line.split()
        verb = words[0].upper() if words else b""
        arg = line[5:] if len(line) > 5 else b""
        in_tls = conn.tls_version is not None
        if verb == b"XCLIENT" and self.xclient:
            conn.xclients.append(line)
            io.send(b"220 fake.test ESMTP after XCLIENT\r\n")
            return io
        if verb in (b"EHLO", b"HELO") and in_tls and conn.mode.startswith("post-tls-ehlo-"):
            # The greeting command inside TLS (EHLO, or HELO for a HELO client) fails.
            if conn.mode == "post-tls-ehlo-403":
                io.send(b"403 4.7.0 TLS handshake failed\r\n")
            else:
                io.send(b"554 5.7.0 TLS handshake failed, go away\r\n")
        elif verb == b"EHLO":
            io.send(self._ehlo_reply(conn, arg, in_tls))
        elif verb == b"HELO":
            io.send(b"250 fake.test\r\n")
        elif verb == b"MAIL" and in_tls and conn.mode == "tls-break-at-mail":
            io.sock.close()  # no reply, no close_notify
            raise _Gone()
        elif verb == b"MAIL":
            io.state["mail_from"] = line[10:]
            io.state["rcpts"] = []
            io.send(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT":
            io.state["rcpts"].append(line[8:])
            io.send(b"250 2.1.5 Ok\r\n")
        elif verb == b"DATA":
            io.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            if in_tls and conn.mode == "tls-break-in-data":
                conn.partial = io.read_some()
                io.sock.close()  # mid-body, no reply
                raise _Gone()
            content = io.read_data()
            msg = Message(conn, io.state.get("mail_from"), list(io.state.get("rcpts", [])),
                          content, conn.tls_version)
            with self._lock:
                conn.messages.append(msg)
            io.send(b"250 2.0.0 Ok: queued as FAKE%d\r\n" % len(self.messages()))
        elif verb == b"BDAT" and self.chunking:
            self._bdat(conn, io, words)
        elif verb == b"RSET":
            io.state["mail_from"] = None
            io.state["rcpts"] = []
            io.state.pop("bdat", None)
            io.send(b"250 2.0.0 Ok\r\n")
        elif verb == b"NOOP":
            io.send(b"250 2.0.0 Ok\r\n")
        elif verb == b"QUIT":
            io.send(b"221 2.0.0 Bye\r\n")
            raise _Gone()
        elif verb == b"STARTTLS":
            conn.starttls += 1
            return self._starttls(conn, io)
        else:
            conn.unknown += 1
            if self.close_after_unknown is not None and conn.unknown >= self.close_after_unknown:
                io.send(b"421 4.7.0 Too many unrecognized commands\r\n")
                io.sock.close()
                raise _Gone()
            io.send(b"502 5.5.2 unknown command\r\n")
        return io

    def _bdat(self, conn, io, words):
        """BDAT <size> [LAST]: the chunk is the next <size> bytes, whatever they hold."""
        if len(words) not in (2, 3) or not words[1].isdigit() or \
                (len(words) == 3 and words[2].upper() != b"LAST"):
            io.send(b"501 5.5.4 Syntax: BDAT <size> [LAST]\r\n")
            return
        size = int(words[1])
        chunks = io.state.setdefault("bdat", bytearray())
        chunks += io.read_exact(size)
        if len(words) == 2:
            io.send(b"250 2.0.0 %d octets received\r\n" % size)
            return
        del io.state["bdat"]
        msg = Message(conn, io.state.get("mail_from"), list(io.state.get("rcpts", [])),
                      bytes(chunks), conn.tls_version, kind="BDAT")
        with self._lock:
            conn.messages.append(msg)
        io.send(b"250 2.0.0 Ok: %d octets queued as FAKE%d\r\n" % (size, len(self.messages())))

    def _starttls(self, conn, io):
        mode = conn.mode
        if conn.tls_version is not None:
            io.send(b"503 5.5.1 TLS already active\r\n")
            return io
        if mode == "no-starttls":
            io.send(b"502 5.5.1 STARTTLS not supported\r\n")
            return io
        if mode == "refuse-454":
            io.send(b"454 4.7.0 TLS not available\r\n")
            return io
        if mode == "refuse-502":
            io.send(b"502 5.5.1 STARTTLS not permitted\r\n")
            return io
        if mode == "starttls-garbage":
            io.send(b"hello?\r\n")
            return io
        conn.after_starttls = io.take_buffer()
        if mode == "response-injection":
            io.send(b"220 go ahead\r\n250 injected\r\n")
        else:
            io.send(b"220 2.0.0 Ready to start TLS\r\n")
        sock = io.sock
        if mode == "eof-after-220":
            sock.shutdown(socket.SHUT_WR)
            io.drain_until_closed(timeout=5.0)
            raise _Gone()
        if mode in ("reset-during-handshake", "handshake-timeout"):
            data = io.read_client_hello(timeout=5.0)
            conn.client_hello = parse_client_hello(data)
            conn.hello_max = offered_max_version(conn.client_hello)
            if mode == "reset-during-handshake":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                raise _Gone()
            io.drain_until_closed(timeout=30.0)
            raise _Gone()
        # Modes with a real handshake: peek at the ClientHello first (it stays queued).
        data = io.read_client_hello(timeout=5.0, peek=True)
        conn.client_hello = parse_client_hello(data)
        conn.hello_max = offered_max_version(conn.client_hello)
        if conn.client_hello is not None:
            conn.offered_resumption = conn.client_hello.get("resumption", False)
        if mode == "tls13-intolerant" and conn.client_hello is not None and \
                0x0304 in conn.client_hello["supported"]:
            # Take the ClientHello off the socket so that the close is a FIN (EOF).
            sock.settimeout(1.0)
            try:
                sock.recv(len(data))
            except OSError:
                pass
            sock.close()
            raise _Gone()
        ctx = self._server_context(mode)
        sock.settimeout(5.0)
        tsock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        io.sock = tsock
        try:
            tsock.do_handshake()
        except (ssl.SSLError, OSError) as e:
            conn.handshake_error = str(e)
            raise _Gone() from None
        if mode in ("cert-required", "client-cert-disliked"):
            conn.client_cert = bool(tsock.getpeercert(binary_form=True))
        conn.tls_version = tsock.version()
        conn.tls_cipher = tsock.cipher()[0]
        conn.resumed = tsock.session_reused
        conn.tls_commands_start = len(conn.commands)
        io.state = {}
        if mode == "post-tls-close":
            try:
                tsock.unwrap()
            except (ssl.SSLError, OSError):
                pass
            raise _Gone()
        return io


class _Io:
    """Line and DATA reading over a plain or TLS socket, polling the stop flag."""

    def __init__(self, sock, stop):
        self.sock = sock
        self.stop = stop
        self.buf = b""
        self.state = {}

    def send(self, data):
        self.sock.sendall(data)

    def take_buffer(self):
        data, self.buf = self.buf, b""
        return data

    def _recv(self, flags=0):
        self.sock.settimeout(0.2)
        while True:
            if self.stop.is_set():
                raise _Gone()
            try:
                chunk = self.sock.recv(65536, flags) if flags else self.sock.recv(65536)
            except socket.timeout:
                continue
            except ssl.SSLWantReadError:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                raise _Gone()
            return chunk

    def readline(self):
        while b"\n" not in self.buf:
            self.buf += self._recv()
            if len(self.buf) > 100000:
                raise _Gone()
        line, self.buf = self.buf.split(b"\n", 1)
        if line.endswith(b"\r"):
            line = line[:-1]
        return line

    def read_exact(self, n):
        """The next |n| bytes (a BDAT chunk)."""
        while len(self.buf) < n:
            self.buf += self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_some(self):
        """Whatever is buffered or arrives next (some body bytes)."""
        if not self.buf:
            self.buf += self._recv()
        return self.take_buffer()

    def read_data(self):
        body = bytearray()
        while True:
            while b"\n" not in self.buf:
                self.buf += self._recv()
            line, self.buf = self.buf.split(b"\n", 1)
            line += b"\n"
            if line == b".\r\n":
                return bytes(body)
            if line.startswith(b"."):
                line = line[1:]
            body += line

    def read_client_hello(self, timeout, peek=False):
        """Reads (or peeks at) the first TLS record; returns the bytes seen (may be short
        when the client closed)."""
        deadline = time.monotonic() + timeout
        data = b""
        self.sock.settimeout(0.1)
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if peek:
                    data = self.sock.recv(65536, socket.MSG_PEEK)
                    if not data:
                        return data
                else:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return data
                    data += chunk
            except socket.timeout:
                continue
            except OSError:
                return data
            if parse_client_hello(data) is not None:
                return data
            if peek:
                time.sleep(0.005)  # the rest of the record has not arrived yet
        return data

    def drain_until_closed(self, timeout):
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.1)
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if not self.sock.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return


def _wait(predicate, timeout, what, fake=None):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            extra = f"\nfake upstream:\n{fake.describe()}" if fake is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(0.01)
