"""Test harness for the integration tests: the real proxy binary between real peers.

Pieces:
  free_port()        a free TCP port on a loopback address
  Proxy              writes an INI, runs $PROXY_BIN -c FILE, waits for its listeners,
                     stops it with SIGTERM and checks exit status and sanitizer output
  AioUpstream        aiosmtpd (Debian's python3-aiosmtpd) recording every delivered
                     message (envelope + raw dot-unstuffed bytes), connections, STARTTLS
  FakeUpstream       a scriptable SMTP server (threads) recording the raw bytes it
                     receives, for failure modes no real server produces on demand
  SmtpConn           a raw SMTP client over a socket, for byte-exact cases; it can bind a
                     source address, and do STARTTLS with python's ssl (start_tls)
  SClient            `openssl s_client -starttls smtp` driven line by line
  make_cert, make_ca ECDSA P-256 / RSA 2048 certificates from the openssl CLI: self-signed,
                     or signed by a test CA
  Started            what a fixture started, stopped at its teardown
  run_swaks          one swaks run; scrape_metrics: the proxy's counters

Everything waits for events with a deadline (poll); nothing sleeps to synchronise.
Run the suite with Debian's /usr/bin/python3 (it has python3-aiosmtpd and python3-pytest).
"""

import ctypes
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

CRLF = b"\r\n"


def wait_for(predicate, timeout=10.0, interval=0.01, what="condition"):
    """Polls |predicate| until it returns a true value; returns that value.

    Raises AssertionError naming |what| when |timeout| seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port(host="127.0.0.1"):
    """Returns a TCP port nothing listens on right now at |host|."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_available():
    """True when ::1 is configured and can be bound."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _listening_ports():
    """Local ports in LISTEN state (TCP, IPv4 and IPv6), from /proc/net."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def fmt_addr(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Started:
    """What one fixture started (proxies, upstreams, clients), stopped at its teardown.

    add(obj) remembers |obj| and returns it. stop_all() calls |stop|(obj) (default
    obj.stop()) for each, in the order they were added, every one of them even when one
    fails an assertion, and then raises those failures together. A fixture:

        started = harness.Started()
        yield lambda **options: started.add(harness.FakeUpstream(**options).start())
        started.stop_all()
    """

    def __init__(self, stop=None):
        self._stop = stop or (lambda obj: obj.stop())
        self.items = []

    def add(self, obj):
        self.items.append(obj)
        return obj

    def __len__(self):
        return len(self.items)

    def stop_all(self):
        errors = []
        items, self.items = self.items, []
        for obj in items:
            try:
                self._stop(obj)
            except AssertionError as e:
                errors.append(str(e))
        assert not errors, "\n\n".join(errors)


# --------------------------------------------------------------------------------------
# The proxy process
# --------------------------------------------------------------------------------------

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error")


def render_ini(sections):
    """Renders {section: {key: value}} (ordered) as INI text."""
    out = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        for key, value in keys.items():
            if value is None:
                continue
            out.append(f"{key} = {value}")
        out.append("")
    return "\n".join(out)


def merge_sections(base, extra):
    merged = {s: dict(k) for s, k in base.items()}
    for section, keys in (extra or {}).items():
        merged.setdefault(section, {}).update(keys)
    return merged


SESSION_RE = re.compile(r"\b([0-9a-f]{16}) session (.*)$")
EVENT_RE = re.compile(r"^(?:([0-9a-f]{16}) )?([a-z][a-z0-9-]*)(?: (.*))?$")
KV_RE = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_kv(text):
    out = {}
    for key, value in KV_RE.findall(text):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        out[key] = value
    return out


class Proxy:
    """One run of the real binary with a generated config."""

    def __init__(self, binary, workdir, sections, listen_ports, name="proxy"):
        self.binary = binary
        self.workdir = workdir
        self.sections = sections
        self.listen_ports = listen_ports
        self.ini_path = os.path.join(workdir, f"{name}.ini")
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.stdout_path = os.path.join(workdir, f"{name}.stdout")
        self.proc = None
        self.returncode = None
        with open(self.ini_path, "w") as f:
            f.write(render_ini(sections))

    @property
    def port(self):
        return self.listen_ports[0]

    def argv(self):
        """The command that runs the proxy."""
        return [self.binary, "-c", self.ini_path]

    def listening(self):
        """True once every port of |listen_ports| is in LISTEN state where the proxy runs."""
        return set(self.listen_ports) <= _listening_ports()

    def start(self, timeout=10.0):
        self._stderr = open(self.stderr_path, "wb")
        self._stdout = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=self._stdout, stderr=self._stderr,
                                     cwd=self.workdir)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"proxy exited with status {self.proc.returncode} during start-up;"
                    f" config:\n{render_ini(self.sections)}\nstderr:\n{self.stderr()}")
            return self.listening()

        wait_for(ready, timeout, what=f"proxy listening on {self.listen_ports}")
        return self

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def rewrite(self, sections):
        """Writes |sections| as the configuration file (read again on SIGHUP)."""
        self.sections = sections
        with open(self.ini_path, "w") as f:
            f.write(render_ini(sections))

    def reload(self, event="reloaded", timeout=10.0):
        """SIGHUP, then waits for one more |event| line than there was before."""
        before = len(self.events(event))
        self.signal(signal.SIGHUP)
        wait_for(lambda: len(self.events(event)) > before, timeout, what=f"a {event} line")

    def wait_exit(self, timeout=10.0):
        """Waits for the process to exit; returns its status (fails on timeout)."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait()
            raise AssertionError(f"proxy did not exit within {timeout}s; stderr:\n"
                                 f"{self.stderr()[-4000:]}")
        finally:
            self._close_files()
        return self.returncode

    def _close_files(self):
        for f in (getattr(self, "_stderr", None), getattr(self, "_stdout", None)):
            if f is not None and not f.closed:
                f.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, wait, and check: exit status 0 and no sanitizer report."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        self.check_clean(rc)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_files()

    def check_clean(self, rc=0):
        text = self.stderr()
        for marker in SANITIZER_MARKERS:
            assert marker not in text, f"sanitizer report in proxy stderr:\n{text[-6000:]}"
        assert rc == 0, f"proxy exit status {rc}; stderr:\n{text[-4000:]}"

    def finish(self):
        """The end of a test: stop() a proxy that still runs, check_clean() one that exited
        already; the process is gone afterwards, also when a check fails."""
        try:
            if self.proc is not None and self.returncode is None:
                self.stop()
            elif self.proc is not None:
                self.check_clean(self.returncode)
        finally:
            self.kill()

    # --- log helpers -------------------------------------------------------------------

    def session_lines(self):
        """Parsed text-format session lines: a list of dicts (id, plus key=value pairs)."""
        out = []
        for line in self.stderr().splitlines():
            m = SESSION_RE.search(line)
            if m:
                fields = parse_kv(m.group(2))
                fields["id"] = m.group(1)
                fields["_line"] = line
                out.append(fields)
        return out

    def events(self, event):
        """Text-format lines of one event ("[<id> ]<event> key=value..."): parsed dicts
        (the pairs, plus "_line")."""
        out = []
        for line in self.stderr().splitlines():
            m = EVENT_RE.match(line)
            if m and m.group(2) == event:
                fields = parse_kv(m.group(3) or "")
                fields["_line"] = line
                out.append(fields)
        return out

    def wait_event(self, event, timeout=10.0, **match):
        """Waits for a text-format |event| line whose fields include |match|.

        A value in |match| may be a compiled regular expression (fullmatch)."""

        def ok(fields):
            for k, v in match.items():
                if k not in fields:
                    return False
                if hasattr(v, "fullmatch"):
                    if not v.fullmatch(fields[k]):
                        return False
                elif fields[k] != str(v):
                    return False
            return True

        def find():
            for fields in self.events(event):
                if ok(fields):
                    return fields
            return None

        try:
            return wait_for(find, timeout, what=f"log event {event} with {match}")
        except AssertionError:
            raise AssertionError(f"no {event} line with {match}; stderr:\n"
                                 f"{self.stderr()[-4000:]}") from None

    def json_events(self, event=None):
        out = []
        for line in self.stderr().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if event is None or obj.get("event") == event:
                out.append(obj)
        return out

    def wait_session_line(self, timeout=10.0, **match):
        """Waits for a session line whose fields include |match|; returns it."""

        def find():
            for fields in self.session_lines():
                if all(fields.get(k) == str(v) for k, v in match.items()):
                    return fields
            return None

        try:
            return wait_for(find, timeout, what=f"session line with {match}")
        except AssertionError:
            raise AssertionError(f"no session line with {match}; stderr:\n"
                                 f"{self.stderr()[-4000:]}") from None


def base_sections(listen, upstream, extra=None):
    """The config every test starts from (see the suite's README at the top of conftest)."""
    sections = {
        "proxy": {
            "listen": ", ".join(listen),
            "upstream": upstream,
            "hostname": "proxy.test",
            "workers": "1",
            # Bounded so that a failing test holding a connection open still lets the
            # teardown's SIGTERM finish well within its deadline.
            "drain_timeout": "3s",
        },
        "client_tls": {"starttls": "strip"},
        # Cleartext relay: the proxy must never try STARTTLS towards the upstream here.
        "upstream_tls": {"starttls": "off"},
        "timeouts": {},
        "log": {"level": "debug"},
    }
    return merge_sections(sections, extra)


# --------------------------------------------------------------------------------------
# aiosmtpd as the upstream
# --------------------------------------------------------------------------------------

class Delivered:
    """One message aiosmtpd accepted."""

    def __init__(self, mail_from, rcpt_tos, content, peer, mail_options, rcpt_options):
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.content = content  # envelope.original_content: raw, dot-unstuffed bytes
        self.peer = peer
        self.mail_options = mail_options
        self.rcpt_options = rcpt_options

    def __repr__(self):
        return (f"Delivered(from={self.mail_from!r}, to={self.rcpt_tos!r}, "
                f"{len(self.content)} bytes, peer={self.peer!r})")


class RecordingHandler:
    def __init__(self, owner):
        self.owner = owner

    async def handle_DATA(self, server, session, envelope):
        self.owner._record_message(Delivered(
            envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content),
            session.peer, list(envelope.mail_options), list(envelope.rcpt_options)))
        return "250 2.0.0 Message accepted for delivery"


class UpstreamConnection:
    def __init__(self, peer):
        self.peer = peer
        self.closed = threading.Event()
        self.starttls = 0


class RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, also recording connections and STARTTLS commands."""

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._conn = None

    def connection_made(self, transport):
        self._conn = UpstreamConnection(transport.get_extra_info("peername"))
        self._owner._record_connection(self._conn)
        super().connection_made(transport)

    def connection_lost(self, error):
        try:
            super().connection_lost(error)
        finally:
            if self._conn is not None:
                self._conn.closed.set()

    async def smtp_STARTTLS(self, arg):
        self._conn.starttls += 1
        self._owner._record_starttls()
        await super().smtp_STARTTLS(arg)


class RecordingController(Controller):
    def __init__(self, owner, *args, **kwargs):
        self._owner = owner
        super().__init__(*args, **kwargs)

    def factory(self):
        return RecordingSMTP(self.handler, owner=self._owner, **self.SMTP_kwargs)


class AioUpstream:
    """aiosmtpd on 127.0.0.1 (or |host|), storing what it receives.

    With |tls_context| it advertises STARTTLS (without requiring it).
    """

    def __init__(self, host="127.0.0.1", tls_context=None, hostname="upstream.test"):
        self.host = host
        self.port = free_port(host)
        self.messages = []
        self.connections = []
        self.starttls_commands = 0
        self._lock = threading.Lock()
        kwargs = dict(hostname=host, port=self.port, decode_data=False,
                      server_hostname=hostname, ready_timeout=10.0)
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=False)
        self.controller = RecordingController(self, RecordingHandler(self), **kwargs)

    @property
    def addr(self):
        return fmt_addr(self.host, self.port)

    def start(self):
        self.controller.start()
        # Controller.start() opened and closed one connection of its own; forget it.
        wait_for(lambda: all(c.closed.is_set() for c in self.connections), 5.0,
                 what="aiosmtpd's start-up probe connection to close")
        with self._lock:
            self.connections.clear()
            self.starttls_commands = 0
        return self

    def stop(self):
        self.controller.stop(no_assert=True)

    def _record_message(self, msg):
        with self._lock:
            self.messages.append(msg)

    def _record_connection(self, conn):
        with self._lock:
            self.connections.append(conn)

    def _record_starttls(self):
        with self._lock:
            self.starttls_commands += 1

    def wait_messages(self, n, timeout=10.0):
        wait_for(lambda: len(self.messages) >= n, timeout, what=f"{n} message(s) upstream")
        return list(self.messages)

    def wait_connections(self, n, timeout=10.0):
        wait_for(lambda: len(self.connections) >= n, timeout,
                 what=f"{n} upstream connection(s)")
        return list(self.connections)

    def wait_all_closed(self, timeout=10.0):
        wait_for(lambda: all(c.closed.is_set() for c in self.connections), timeout,
                 what="all upstream connections closed")


def make_tls_context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


# --------------------------------------------------------------------------------------
# Certificates made with the openssl CLI (both legs); TLS for leg 1: client contexts,
# s_client
# --------------------------------------------------------------------------------------

def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def _newkey(kind):
    if kind == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    if kind == "rsa":
        return ["-newkey", "rsa:2048"]
    raise ValueError(kind)


def make_cert(directory, name, kind="ec", stem=None, days=2, ca=None, client=False):
    """A certificate made with the openssl CLI: |kind| "ec" (P-256) or "rsa" (2048 bits),
    subject /CN=|name|, subjectAltName DNS:|name|. Self-signed; or, with |ca| (a (cert, key)
    pair from make_ca), a leaf signed by that CA (CA:FALSE, extendedKeyUsage serverAuth, or
    clientAuth with |client|).

    Returns (cert_path, key_path), both PEM, in |directory| (named after |stem|, default
    "|name|-|kind|", or "|name|-|kind|-by-<the CA's file name>" for a signed one).
    """
    if ca is None:
        stem = stem or f"{name}-{kind}"
    else:
        stem = stem or f"{name}-{kind}-by-{os.path.basename(ca[0]).split('.')[0]}"
    cert = os.path.join(directory, f"{stem}.crt.pem")
    key = os.path.join(directory, f"{stem}.key.pem")
    if ca is None:
        _openssl("req", "-x509", *_newkey(kind), "-nodes", "-days", str(days),
                 "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                 "-keyout", key, "-out", cert)
        return cert, key
    csr = os.path.join(directory, f"{stem}.csr.pem")
    ext = os.path.join(directory, f"{stem}.ext")
    _openssl("req", "-new", *_newkey(kind), "-nodes", "-subj", f"/CN={name}",
             "-keyout", key, "-out", csr)
    usage = "clientAuth" if client else "serverAuth"
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
                f"extendedKeyUsage={usage}\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", str(days), "-extfile", ext, "-out", cert)
    return cert, key


def make_ca(directory, name="Test CA"):
    """A self-signed CA (P-256, openssl CLI) for make_cert(ca=...): (cert, key) paths."""
    stem = name.replace(" ", "-").lower()
    cert = os.path.join(directory, f"{stem}.crt.pem")
    key = os.path.join(directory, f"{stem}.key.pem")
    _openssl("req", "-x509", *_newkey("ec"), "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", key, "-out", cert)
    return cert, key


def make_cert_chain(directory, name):
    """A root CA, an intermediate CA and a leaf for |name| (all ECDSA P-256, openssl CLI).

    Returns (chain_path, key_path, root_path): chain_path holds the leaf then the
    intermediate (what a server must send); a client trusting root_path only can verify
    the leaf just when the intermediate is sent too.
    """
    def path(stem):
        return os.path.join(directory, f"{name}-{stem}")

    def ext_file(stem, text):
        with open(path(stem), "w") as f:
            f.write(text)
        return path(stem)

    ec = [*_newkey("ec"), "-nodes"]
    ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=Test Root " + name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", path("root.key"), "-out", path("root.pem"))
    _openssl("req", "-new", *ec, "-subj", "/CN=Test Intermediate " + name,
             "-keyout", path("int.key"), "-out", path("int.csr"))
    _openssl("x509", "-req", "-in", path("int.csr"), "-CA", path("root.pem"),
             "-CAkey", path("root.key"), "-set_serial", "2", "-days", "2",
             "-extfile", ext_file("int.ext", ca_ext), "-out", path("int.pem"))
    _openssl("req", "-new", *ec, "-subj", "/CN=" + name,
             "-keyout", path("leaf.key"), "-out", path("leaf.csr"))
    leaf_ext = (f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", path("leaf.csr"), "-CA", path("int.pem"),
             "-CAkey", path("int.key"), "-set_serial", "3", "-days", "2",
             "-extfile", ext_file("leaf.ext", leaf_ext), "-out", path("leaf.pem"))
    with open(path("chain.pem"), "wb") as out:
        for stem in ("leaf.pem", "int.pem"):
            with open(path(stem), "rb") as f:
                out.write(f.read())
    return path("chain.pem"), path("leaf.key"), path("root.pem")


def cert_der(path):
    """The DER bytes of the first certificate in PEM file |path|."""
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def describe_der(der):
    """`openssl x509 -text` of a DER certificate (subject, SAN, key type...)."""
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"], input=der,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return p.stdout.decode("utf-8", "replace")


def tls_client_context(minimum=None, maximum=None, ciphers=None, verify=False,
                       seclevel0=False, strict_eof=False):
    """An ssl.SSLContext for a client of the proxy's leg 1.

    |minimum|/|maximum| are ssl.TLSVersion values (Debian's OpenSSL defaults to TLS 1.2 at
    least, so TLS 1.0/1.1 need |minimum| and |seclevel0|). |ciphers| is an OpenSSL cipher
    string for TLS 1.2 and older. |verify|: verify the server against the system CAs (the
    proxy's certificates are self-signed, so the handshake then fails with an alert).
    |strict_eof|: a close without close_notify is an error (python sets
    OP_IGNORE_UNEXPECTED_EOF by default; use with start_tls(suppress_ragged_eofs=False)).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if strict_eof:
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    if verify:
        ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    cipher_string = ciphers or "DEFAULT"
    if seclevel0:
        cipher_string += ":@SECLEVEL=0"
    if ciphers or seclevel0:
        ctx.set_ciphers(cipher_string)
    return ctx


def client_tls_extra(pairs=(), **keys):
    """The extra config for a proxy offering STARTTLS on leg 1: [client_tls] starttls = offer,
    certificate/key from |pairs| [(cert, key), ...] (none: the self-signed default), then
    |keys| (e.g. learn_ttl="2s")."""
    section = {"starttls": "offer"}
    if pairs:
        section["certificate"] = ", ".join(str(c) for c, _ in pairs)
        section["key"] = ", ".join(str(k) for _, k in pairs)
    section.update(keys)
    return {"client_tls": section}


def starttls_lines(reply):
    """The capability lines of an EHLO reply that advertise STARTTLS."""
    return [line for line in reply.lines[1:] if line.split(" ")[0].upper() == "STARTTLS"]


class SClient:
    """`openssl s_client -starttls smtp` driven through pipes, one line at a time.

    s_client reads the greeting, sends EHLO |name| and STARTTLS, then does the handshake;
    after that, lines written with send_line() go to the server (LF becomes CRLF, -crlf)
    and the server's replies are read with reply(). -brief writes the handshake summary
    ("Protocol version: TLSv1.3", "Peer certificate: CN = x") to stderr.
    """

    def __init__(self, port, host="127.0.0.1", name="client.test", source=None, args=()):
        cmd = ["openssl", "s_client", "-connect", fmt_addr(host, port), "-starttls", "smtp",
               "-name", name, "-crlf", "-ign_eof", "-nocommands", "-brief"]
        if source is not None:
            cmd += ["-bind", fmt_addr(source, 0)]
        cmd += list(args)
        self.argv = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.buf = b""
        self.eof = False
        self._out = bytearray()
        self._err = bytearray()
        self._cond = threading.Condition()
        self._done = {"out": False, "err": False}
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, "out"),
                                          daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, "err"),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, pipe, which):
        target = self._out if which == "out" else self._err
        while True:
            chunk = os.read(pipe.fileno(), 65536)
            with self._cond:
                if not chunk:
                    self._done[which] = True
                    self._cond.notify_all()
                    return
                target.extend(chunk)
                self._cond.notify_all()

    def stderr(self):
        with self._cond:
            return bytes(self._err).decode("utf-8", "replace")

    def stdout(self):
        with self._cond:
            return bytes(self._out).decode("utf-8", "replace")

    def wait_established(self, timeout=10.0):
        """Waits for the handshake; returns {"Protocol version": ..., ...} from -brief.

        Raises AssertionError when s_client exits first (a failed handshake)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while b"CONNECTION ESTABLISHED" not in self._err:
                if self._done["err"]:
                    raise AssertionError(f"s_client ended without a handshake: {self.argv}\n"
                                         f"stderr:\n{bytes(self._err).decode(errors='replace')}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"s_client: no handshake within {timeout}s")
                self._cond.wait(remaining)
            # The summary follows the marker; wait for its last line too.
            while (b"Server Temp Key" not in self._err and b"Verification" not in self._err
                   and not self._done["err"]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return self.summary()

    def summary(self):
        info = {}
        for line in self.stderr().splitlines():
            if ": " in line:
                key, value = line.split(": ", 1)
                info.setdefault(key.strip(), value.strip())
        return info

    def send_line(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def _fill(self, deadline):
        with self._cond:
            while len(self._out) == 0:
                if self._done["out"]:
                    self.eof = True
                    raise Closed(f"s_client output ended; buffered {self.buf!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no complete reply in time; buffered {self.buf!r}")
                self._cond.wait(remaining)
            self.buf += bytes(self._out)
            del self._out[:]

    def cmd(self, line, timeout=10.0):
        self.send_line(line)
        return self.reply(timeout)

    def finish(self, timeout=10.0):
        """Closes s_client's stdin and waits for it to exit; returns its exit status."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"s_client did not exit within {timeout}s") from None
        finally:
            for t in self._threads:
                t.join(5)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self._threads:
            t.join(5)


# --------------------------------------------------------------------------------------
# A raw SMTP client
# --------------------------------------------------------------------------------------

def proxy_socket(pid, peer):
    """A duplicate (pidfd_getfd, root only) of the proxy's socket connected to |peer|, or
    None: the same kernel socket, so a test can read or set its options."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir("/proc/%d/fd" % pid):
            try:
                if not os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # SYS_pidfd_getfd (x86-64)
            if fd < 0:
                continue
            s = socket.socket(fileno=fd)
            try:
                if s.type == socket.SOCK_STREAM and s.getpeername() == peer:
                    return s
            except OSError:
                pass
            s.close()
    finally:
        os.close(pidfd)
    return None


class Closed(Exception):
    """The peer closed the connection before a complete reply arrived."""


class Reply:
    def __init__(self, code, lines, raw):
        self.code = code
        self.lines = lines  # texts after "ddd-" / "ddd ", as str (latin-1)
        self.raw = raw      # the bytes as received, CRLFs included

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def first(self):
        """The first line without the code, e.g. "4.4.2 proxy.test lost..."."""
        return self.lines[0] if self.lines else ""

    def startswith(self, prefix):
        """True when "code text" of the last line starts with |prefix| ("421 4.4.2")."""
        return f"{self.code} {self.lines[-1]}".startswith(prefix)

    def __repr__(self):
        return f"Reply({self.raw!r})"


REPLY_LINE_RE = re.compile(rb"^([2-5][0-9][0-9])([ -]|$)(.*)$", re.S)


class SmtpConn:
    """A raw SMTP client: exact bytes out, replies parsed strictly."""

    def __init__(self, host, port, timeout=10.0, family=None, source=None, rcvbuf=None):
        if family is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if rcvbuf is not None:
            # Before connecting, so that the window the client offers is small too: the
            # proxy's writes stall as soon as the client stops reading.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            # A client address of our choice, e.g. 127.0.0.2 (Linux routes all of 127/8
            # to loopback).
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.tls = False
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port = self.sock.getsockname()[1]
        self.buf = b""
        self.eof = False
        self.sent = 0       # bytes written by us
        self.received = 0   # bytes received from the proxy

    def send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete reply in time; buffered {self.buf!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"no complete reply in time; buffered {self.buf!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise Closed(f"connection closed; buffered {self.buf!r}")
        self.received += len(chunk)
        self.buf += chunk

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 100000:
                raise AssertionError(f"reply line too long: {self.buf[:200]!r}...")
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout=10.0):
        """Reads one complete (possibly multi-line) reply."""
        deadline = time.monotonic() + timeout
        lines = []
        raw = b""
        code = None
        while True:
            line = self._line(deadline)
            raw += line + b"\r\n"
            m = REPLY_LINE_RE.match(line)
            assert m, f"malformed reply line {line!r} (reply so far {raw!r})"
            if code is None:
                code = int(m.group(1))
            assert int(m.group(1)) == code, f"code changed inside a reply: {raw!r}"
            lines.append(m.group(3).decode("latin-1"))
            if m.group(2) != b"-":
                return Reply(code, lines, raw)

    def replies(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        return [self.reply(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def cmd(self, line, timeout=10.0):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def greeting(self, timeout=10.0):
        return self.reply(timeout)

    def wait_closed(self, timeout=10.0):
        """Waits until the peer closes (EOF or reset), then closes our end too.

        Any bytes received before the close are an error.
        """
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection not closed within {timeout}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            else:
                self.buf += chunk
        assert not self.buf, f"bytes before close: {self.buf!r}"
        self.close()  # as a real client does once the server has closed

    def ehlo(self, name="client.test"):
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, r
        return r

    # --- TLS (leg 1) ----------------------------------------------------------------------

    def start_tls(self, context=None, timeout=10.0, server_hostname=None,
                  suppress_ragged_eofs=True):
        """The TLS handshake on this connection (after a 220 to STARTTLS).

        Nothing may be buffered: bytes that came before the handshake would be cleartext
        the server sent after its 220. |server_hostname| is needed by a verifying context.
        With |suppress_ragged_eofs| False, a close without close_notify raises
        ssl.SSLEOFError instead of reading as EOF.
        """
        assert not self.buf, f"bytes after the 220, before the handshake: {self.buf!r}"
        if context is None:
            context = tls_client_context()
        self.sock.settimeout(timeout)
        self.sock = context.wrap_socket(self.sock, server_side=False,
                                        do_handshake_on_connect=False,
                                        server_hostname=server_hostname,
                                        suppress_ragged_eofs=suppress_ragged_eofs)
        self.sock.do_handshake()
        self.tls = True
        return self

    def starttls(self, context=None, timeout=10.0):
        """STARTTLS, expecting "220 2.0.0", then the handshake. Returns the 220 reply."""
        r = self.cmd("STARTTLS", timeout)
        assert r.startswith("220 2.0.0"), r
        self.start_tls(context, timeout)
        return r

    def tls_version(self):
        return self.sock.version()

    def cipher_name(self):
        return self.sock.cipher()[0]

    def peer_der(self):
        return self.sock.getpeercert(binary_form=True)

    def expect_silence(self, seconds=1.0):
        """Asserts that nothing arrives (and the connection stays open) for |seconds|."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                raise AssertionError(f"connection closed; expected silence (buffered "
                                     f"{self.buf!r})")
            self.received += len(chunk)
            self.buf += chunk
        assert not self.buf, f"unexpected bytes: {self.buf!r}"

    def wait_eof(self, timeout=10.0):
        """Waits until the peer closes (EOF, reset or a TLS error); returns the bytes that
        arrived first (e.g. a TLS alert). Works on the raw socket or the TLS one."""
        deadline = time.monotonic() + timeout
        got = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection not closed within {timeout}s; got {got!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.eof = True
                self.close()
                return got
            got += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Closes with RST instead of FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# s_client's replies are parsed the same way.
SClient._line = SmtpConn._line
SClient.reply = SmtpConn.reply
SClient.replies = SmtpConn.replies


def open_data(c, mail_from="a@client.test", rcpt="b@upstream.test"):
    """Greeting, EHLO, MAIL, RCPT and DATA (354) on a new harness.SmtpConn."""
    assert c.greeting().code == 220
    c.ehlo()
    assert c.cmd(f"MAIL FROM:<{mail_from}>").code == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
    assert c.cmd("DATA").code == 354


# --------------------------------------------------------------------------------------
# swaks, and the proxy's metrics endpoint
# --------------------------------------------------------------------------------------

def run_swaks(port, data_path, rcpts, host="127.0.0.1", extra=(),
              mail_from="sender@client.test", helo="client.test", argv_prefix=(),
              timeout=120):
    """One swaks session to |host|:|port|: EHLO |helo|, MAIL FROM |mail_from|, RCPT TO each
    of |rcpts|, the message file |data_path|, swaks' own --timeout 30 s, then the options
    in |extra|. |argv_prefix| runs it through a wrapper (["ip", "netns", "exec", NS]).

    Returns (exit status, everything swaks wrote, stderr included).
    """
    args = [*argv_prefix, "swaks", "--server", host, "--port", str(port),
            "--from", mail_from, "--to", ",".join(rcpts), "--helo", helo,
            "--data", "@" + str(data_path), "--timeout", "30", *extra]
    p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def metrics_series(text):
    """{'name{labels}': value} for every sample line of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def scrape_metrics(port, host="127.0.0.1"):
    """GET /metrics from the proxy's [metrics] listener: metrics_series() of the answer."""
    with urllib.request.urlopen(f"http://{fmt_addr(host, port)}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return metrics_series(resp.read().decode())


# --------------------------------------------------------------------------------------
# PROXY protocol headers (HAProxy's spec), for load balancers in front and upstreams behind
# --------------------------------------------------------------------------------------

PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1_header(src, dst, sport, dport):
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def proxy_v2_header(src, dst, sport, dport, tlvs=b""):
    if ":" in src:
        fam = 0x21
        addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    else:
        fam = 0x11
        addrs = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
    body = addrs + struct.pack("!HH", sport, dport) + tlvs
    return PROXY_V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def proxy_header(version, src, dst, sport, dport):
    """A v1 or v2 header ("v1"/"v2") announcing the connection src:sport -> dst:dport."""
    return (proxy_v1_header if version == "v1" else proxy_v2_header)(src, dst, sport, dport)


def parse_proxy_header(buf):
    """(length, info) for a complete PROXY header at the start of |buf|; (None, None) when
    more bytes are needed; (-1, None) when it is not a valid header."""
    n = min(len(buf), len(PROXY_V2_SIG))
    if buf[:n] == PROXY_V2_SIG[:n]:
        if len(buf) < 16:
            return None, None
        length = struct.unpack("!H", buf[14:16])[0]
        if len(buf) < 16 + length:
            return None, None
        body = buf[16:16 + length]
        info = {"version": 2, "command": buf[12] & 0x0F, "vbits": buf[12] >> 4,
                "family": buf[13]}
        if buf[13] == 0x11 and length >= 12:
            info.update(src=socket.inet_ntop(socket.AF_INET, body[0:4]),
                        dst=socket.inet_ntop(socket.AF_INET, body[4:8]),
                        sport=struct.unpack("!H", body[8:10])[0],
                        dport=struct.unpack("!H", body[10:12])[0], tlvs=body[12:])
        elif buf[13] == 0x21 and length >= 36:
            info.update(src=socket.inet_ntop(socket.AF_INET6, body[0:16]),
                        dst=socket.inet_ntop(socket.AF_INET6, body[16:32]),
                        sport=struct.unpack("!H", body[32:34])[0],
                        dport=struct.unpack("!H", body[34:36])[0], tlvs=body[36:])
        return 16 + length, info
    n = min(len(buf), 6)
    if buf[:n] == b"PROXY "[:n]:
        end = buf.find(b"\r\n")
        if end < 0:
            return (None, None) if len(buf) < 107 else (-1, None)
        parts = buf[:end].decode("latin-1").split(" ")
        info = {"version": 1, "proto": parts[1] if len(parts) > 1 else None}
        if len(parts) == 6:
            info.update(src=parts[2], dst=parts[3], sport=int(parts[4]), dport=int(parts[5]))
        return end + 2, info
    return -1, None


def xclient_attrs(line):
    """{"ADDR": "...", ...} from b"XCLIENT ADDR=... PORT=..."."""
    words = line.decode("latin-1").split()
    assert words[0].upper() == "XCLIENT", line
    out = {}
    for w in words[1:]:
        k, _, v = w.partition("=")
        out[k.upper()] = v
    return out


# --------------------------------------------------------------------------------------
# A scriptable fake upstream speaking SMTP
# --------------------------------------------------------------------------------------

class FakeMessage:
    def __init__(self, kind, mail_from, rcpt_tos, content):
        self.kind = kind  # "DATA" or "BDAT"
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.content = content

    def __repr__(self):
        return f"FakeMessage({self.kind}, {self.mail_from!r}, {self.rcpt_tos!r}, " \
               f"{self.content[:80]!r})"


class FakeConnection:
    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.raw = bytearray()     # every byte received, in order
        self.commands = []         # command lines (without CRLF), in order
        self.messages = []
        self.closed = threading.Event()   # our handler finished (peer closed or we died)
        self.peer_closed = threading.Event()  # we read EOF/reset from the proxy
        self.died = threading.Event()     # we closed on purpose (die_*)


class _Die(Exception):
    pass


class _PeerGone(Exception):
    pass


class FakeUpstream:
    """A small SMTP server in threads, recording raw bytes per connection.

    Options:
      greeting       bytes sent on connect (None: never greet, hold the connection)
      caps           EHLO capability lines after the first one
      rcpt_reject    set of addresses answered 550 5.1.1
      data_end_reply the reply to the end of DATA
      die_after_body_bytes  N: after reading N bytes of DATA content, close (die="close")
                     or reset (die="rst") the connection
      die_at_data_end  read the whole message, then close without replying
      data_gate      a threading.Event: DATA content is not read until it is set
      data_sink      do not keep DATA content: record its length and SHA-256 only
                     (FakeMessage.content is then (length, hexdigest))
      lenient_eod    accept LF.LF, CRLF.LF, LF.CRLF and CR.CR as the end of data, like the
                     receivers exploited by SMTP smuggling; whatever follows is read as
                     commands
      ehlo_reply     replace the whole EHLO reply with these bytes
      reply_gates    {b"NOOP": threading.Event()}: the reply to that verb waits for the event
      proxy_header   read a PROXY v1/v2 header before greeting (as Postfix does with
                     smtpd_upstream_proxy_protocol = haproxy); per connection: .header (the
                     parsed header, None if invalid), .header_raw, .after_header (bytes that
                     came with the header, before our greeting: must be empty)
      xclient_reply  answer XCLIENT with these bytes (Postfix: a new 220 greeting); each
                     XCLIENT line is recorded in conn.xclients. Advertise it with caps.
      auth           advertise AUTH PLAIN and run it: "AUTH PLAIN" gets 334, the next line
                     is the SASL response ("*" cancels: 501; "AHVzZXIAcGFzcw==", i.e.
                     \0user\0pass, is 235; anything else 535); conn.sasl records responses
      strip_nul      the lenient reader (lenient_eod) also drops NUL bytes first, like
                     receivers that strip them
      extra_replies  {b"NOOP": b"250 extra\r\n"}: sent after the normal reply to that verb
                     (an upstream that answers twice)
      rcvbuf         SO_RCVBUF of every accepted connection (a slow reader)
      reply_overrides {b"HELP": b"214 ...\r\n"}: the whole reply to that verb
    """

    def __init__(self, greeting=b"220 fake.test ESMTP fake\r\n",
                 caps=("PIPELINING", "8BITMIME"), rcpt_reject=(), data_end_reply=None,
                 die_after_body_bytes=None, die="close", die_at_data_end=False,
                 lenient_eod=False, data_gate=None, data_sink=False, ehlo_reply=None,
                 host="127.0.0.1", reply_gates=None, proxy_header=False, xclient_reply=None,
                 auth=False, strip_nul=False, extra_replies=None, rcvbuf=None,
                 reply_overrides=None):
        self.greeting = greeting
        self.caps = list(caps)
        self.rcpt_reject = set(rcpt_reject)
        self.data_end_reply = data_end_reply
        self.die_after_body_bytes = die_after_body_bytes
        self.die = die
        self.die_at_data_end = die_at_data_end
        self.data_gate = data_gate
        self.data_sink = data_sink
        self.lenient_eod = lenient_eod
        self.ehlo_reply = ehlo_reply
        self.reply_gates = dict(reply_gates or {})
        self.proxy_header = proxy_header
        self.xclient_reply = xclient_reply
        self.auth = auth
        self.strip_nul = strip_nul
        self.extra_replies = dict(extra_replies or {})
        self.reply_overrides = dict(reply_overrides or {})
        if auth:
            self.caps.append("AUTH PLAIN")
        self.host = host
        self.connections = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:
            # Accepted sockets inherit it: a small window makes the proxy wait on us.
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind((host, 0))
        self.port = self.listener.getsockname()[1]

    @property
    def addr(self):
        return fmt_addr(self.host, self.port)

    def start(self):
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in list(self._threads):
            t.join(5)
        self.listener.close()
        with self._lock:
            for c in self.connections:
                try:
                    c.sock.close()
                except OSError:
                    pass

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                sock, peer = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn = FakeConnection(sock, peer)
            with self._lock:
                self.connections.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    # --- waiting helpers ----------------------------------------------------------------

    def wait_connections(self, n, timeout=10.0):
        wait_for(lambda: len(self.connections) >= n, timeout,
                 what=f"{n} connection(s) to the fake upstream")
        return list(self.connections)

    def wait_closed(self, index=0, timeout=10.0):
        conn = self.wait_connections(index + 1, timeout)[index]
        assert conn.closed.wait(timeout), "fake upstream connection still open"
        return conn

    def messages(self):
        return [m for c in self.connections for m in c.messages]

    # --- serving ------------------------------------------------------------------------

    def _recv(self, conn):
        while True:
            if self._stop.is_set():
                raise _PeerGone()
            try:
                chunk = conn.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                conn.peer_closed.set()
                raise _PeerGone()
            conn.raw += chunk
            return chunk

    def _read_proxy_header(self, conn, state):
        conn.header = None
        conn.header_raw = b""
        conn.after_header = b""
        buf = b""
        while True:
            n, info = parse_proxy_header(buf)
            if n is not None:
                break
            buf += self._recv(conn)
        if n < 0:
            conn.header_raw = buf
            raise _Die()
        conn.header, conn.header_raw, conn.after_header = info, buf[:n], buf[n:]
        state["buf"] = buf[n:]

    def _serve(self, conn):
        conn.sock.settimeout(0.2)
        state = {"buf": b"", "mail_from": None, "rcpts": [], "bdat": bytearray(), "n": 0}
        conn.xclients = []
        conn.sasl = []
        try:
            if self.proxy_header:
                self._read_proxy_header(conn, state)
            if self.greeting is None:
                while True:  # hold the connection, never greet
                    self._recv(conn)
            conn.sock.sendall(self.greeting)
            while True:
                line = self._readline(conn, state)
                conn.commands.append(line)
                self._command(conn, state, line)
        except (_PeerGone, _Die, BrokenPipeError, ConnectionResetError):
            pass
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass
            conn.closed.set()

    def _readline(self, conn, state):
        while b"\n" not in state["buf"]:
            state["buf"] += self._recv(conn)
        line, state["buf"] = state["buf"].split(b"\n", 1)
        if line.endswith(b"\r"):
            line = line[:-1]
        return line

    def _readn(self, conn, state, n):
        while len(state["buf"]) < n:
            state["buf"] += self._recv(conn)
        data, state["buf"] = state["buf"][:n], state["buf"][n:]
        return data

    def _send(self, conn, data):
        # Blocking: a proxy applying back-pressure may take its time (stop() closes the
        # socket, which ends a blocked send).
        conn.sock.settimeout(None)
        try:
            conn.sock.sendall(data)
        finally:
            conn.sock.settimeout(0.2)

    def _die(self, conn):
        conn.died.set()
        if self.die == "rst":
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
        raise _Die()

    def _command(self, conn, state, line):
        state["n"] += 1
        n = state["n"]
        # As lax as Postfix: any whitespace separates, leading whitespace is skipped.
        words = line.split()
        verb = words[0].upper() if words else b""
        gate = self.reply_gates.get(verb)
        if gate is not None:
            while not gate.wait(0.1):
                if self._stop.is_set():
                    raise _PeerGone()
        extra = self.extra_replies.get(verb)
        if verb in self.reply_overrides:
            self._send(conn, self.reply_overrides[verb])
        else:
            self._command_reply(conn, state, line, verb, n)
        if extra is not None:
            self._send(conn, extra)

    def _command_reply(self, conn, state, line, verb, n):
        if verb == b"XCLIENT" and self.xclient_reply is not None:
            conn.xclients.append(line)
            self._send(conn, self.xclient_reply)
        elif verb == b"AUTH" and self.auth:
            words = line.split()
            if len(words) > 2:
                response = words[2]
            else:
                self._send(conn, b"334 \r\n")
                response = self._readline(conn, state)
                conn.commands.append(response)
            conn.sasl.append(response)
            if response == b"*":
                self._send(conn, b"501 5.7.0 Authentication aborted #%d\r\n" % n)
            elif response == b"AHVzZXIAcGFzcw==":
                self._send(conn, b"235 2.7.0 Authentication successful #%d\r\n" % n)
            else:
                self._send(conn, b"535 5.7.8 Authentication failed #%d\r\n" % n)
        elif verb == b"EHLO":
            if self.ehlo_reply is not None:
                self._send(conn, self.ehlo_reply)
                return
            lines = [b"fake.test greets " + line[5:]] + [c.encode() for c in self.caps]
            out = b"".join(b"250-" + l + CRLF for l in lines[:-1]) + b"250 " + lines[-1] + CRLF
            self._send(conn, out)
        elif verb == b"HELO":
            self._send(conn, b"250 fake.test\r\n")
        elif verb == b"MAIL":
            state["mail_from"] = line[10:]
            state["rcpts"] = []
            self._send(conn, b"250 2.1.0 Ok #%d\r\n" % n)
        elif verb == b"RCPT":
            addr = line[8:].strip(b"<>")
            if addr.decode("latin-1") in self.rcpt_reject:
                self._send(conn, b"550 5.1.1 <%s> unknown #%d\r\n" % (addr, n))
            else:
                state["rcpts"].append(line[8:])
                self._send(conn, b"250 2.1.5 Ok #%d\r\n" % n)
        elif verb == b"DATA":
            self._send(conn, b"354 End data with <CR><LF>.<CR><LF>\r\n")
            content = self._read_data(conn, state)
            conn.messages.append(FakeMessage("DATA", state["mail_from"], state["rcpts"],
                                             content))
            if self.die_at_data_end:
                self._die(conn)
            self._send(conn, self.data_end_reply or b"250 2.0.0 Ok: queued #%d\r\n" % n)
        elif verb == b"BDAT":
            if "CHUNKING" not in self.caps:
                self._send(conn, b"500 5.5.1 BDAT not supported #%d\r\n" % n)
                return
            parts = line.split()
            size = int(parts[1])
            last = len(parts) > 2 and parts[2].upper() == b"LAST"
            state["bdat"] += self._readn(conn, state, size)
            if last:
                conn.messages.append(FakeMessage("BDAT", state["mail_from"], state["rcpts"],
                                                 bytes(state["bdat"])))
                state["bdat"] = bytearray()
                self._send(conn, self.data_end_reply or
                           b"250 2.0.0 Ok: %d octets queued #%d\r\n" % (size, n))
            else:
                self._send(conn, b"250 2.0.0 Ok: %d octets #%d\r\n" % (size, n))
        elif verb == b"RSET":
            state["mail_from"] = None
            state["rcpts"] = []
            self._send(conn, b"250 2.0.0 Ok #%d\r\n" % n)
        elif verb == b"NOOP":
            self._send(conn, b"250 2.0.0 Ok #%d\r\n" % n)
        elif verb == b"QUIT":
            self._send(conn, b"221 2.0.0 Bye\r\n")
            raise _PeerGone()
        elif verb == b"STARTTLS":
            self._send(conn, b"454 4.7.0 not here #%d\r\n" % n)
        else:
            self._send(conn, b"502 5.5.2 unknown command #%d\r\n" % n)

    def _read_data(self, conn, state):
        """Reads DATA content up to the end marker; returns it dot-unstuffed."""
        if self.data_gate is not None:
            while not self.data_gate.wait(0.1):
                if self._stop.is_set():
                    raise _PeerGone()
        if self.data_sink:
            return self._read_data_sink(conn, state)
        if self.lenient_eod:
            return self._read_data_lenient(conn, state)
        body = bytearray()
        count = 0
        while True:
            while b"\n" not in state["buf"]:
                state["buf"] += self._recv(conn)
            line, state["buf"] = state["buf"].split(b"\n", 1)
            line += b"\n"
            count += len(line)
            if self.die_after_body_bytes is not None and count >= self.die_after_body_bytes:
                self._die(conn)
            if line == b".\r\n":
                return bytes(body)
            if line.startswith(b"."):
                line = line[1:]
            body += line

    def _read_data_sink(self, conn, state):
        """Content as (length, sha256) without keeping it; no dot-unstuffing."""
        digest = hashlib.sha256()
        total = 0
        pending, state["buf"] = state["buf"], b""
        raw_len = len(conn.raw)
        while True:
            idx = pending.find(b"\r\n.\r\n")
            if idx >= 0:
                digest.update(pending[:idx + 2])
                total += idx + 2
                state["buf"] = pending[idx + 5:]
                return (total, digest.hexdigest())
            keep = pending[-4:]
            digest.update(pending[:len(pending) - len(keep)])
            total += len(pending) - len(keep)
            pending = keep + self._recv(conn)
            # Do not keep a copy of a huge body in conn.raw.
            del conn.raw[raw_len:]

    _LENIENT_END = re.compile(rb"(?:^|\r\n|\n|\r)\.(?:\r\n|\n|\r)")

    def _read_data_lenient(self, conn, state):
        while True:
            if self.strip_nul:
                state["buf"] = state["buf"].replace(b"\0", b"")
            m = self._LENIENT_END.search(state["buf"])
            if m:
                body, state["buf"] = state["buf"][:m.start()], state["buf"][m.end():]
                return bytes(body)
            state["buf"] += self._recv(conn)

