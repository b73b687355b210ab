"""smtp-tls-proxy --self-test: the real binary, run on configurations, judged by its table.

Each test writes an INI file, runs `smtp-tls-proxy --self-test -c FILE [--json]` and checks
the exact cells (what the binary's fake upstreams recorded), the exit status, and that the
run stayed on loopback: every socket the process ever had (sampled from /proc while it
runs) is on 127.0.0.1; the configured listen and metrics addresses are never bound; the
configured upstream (a listener here that counts connections) is never contacted; a
configured [store] Redis (a real redis-server on loopback) gets no connection and no key.

No configuration makes a require destination get cleartext from this proxy, so exit status
1 is not reachable from here; tests/unit/test_selftest_table.c checks that a leak (and an
answer the upstream's record contradicts) gives 1.
"""

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

FAILURES = ["no-starttls", "refuse-454", "alert", "client-cert-rejected", "eof-after-220",
            "handshake-timeout", "post-tls-403", "tls-ok"]

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error")

# What one row shows, per policy and [upstream_tls] setting, column by column.
DEFERRED = "deferred 421 4.7.0"
MAY_DEFAULT = {
    "no-starttls": "cleartext",
    "refuse-454": "cleartext after 454",
    "alert": "cleartext via tls->tls12->cleartext",
    "client-cert-rejected": "TLS 1.3",
    "eof-after-220": "cleartext via tls->tls12->cleartext",
    "handshake-timeout": "cleartext via tls->tls12->cleartext",
    "post-tls-403": "cleartext via tls->cleartext",
    "tls-ok": "TLS 1.3",
}
REQUIRE = dict({f: DEFERRED for f in FAILURES}, **{"client-cert-rejected": "TLS 1.3",
                                                    "tls-ok": "TLS 1.3"})
OFF = {f: "cleartext" for f in FAILURES}


@pytest.fixture(scope="module")
def proxy_bin():
    path = os.environ.get("PROXY_BIN")
    assert path and os.access(path, os.X_OK), "PROXY_BIN must name the built binary"
    return os.path.abspath(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------
# Watching the process's sockets
# --------------------------------------------------------------------------------------

def _proc_sockets(pid):
    """The process's TCP sockets as {inode: (local, remote, state)} right now."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return {}
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[9] in inodes:
                        found[fields[9]] = (_endpoint(fields[1], family),
                                            _endpoint(fields[2], family), fields[3])
        except OSError:
            pass
    return found


def _endpoint(text, family):
    """Decodes /proc/net/tcp's "0100007F:1F90" into ("127.0.0.1", 8080)."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    if family == socket.AF_INET:
        host = socket.inet_ntop(family, raw[::-1])
    else:
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        host = socket.inet_ntop(family, words)
    return host, int(port, 16)


class SocketWatcher:
    """Samples a process's sockets every few milliseconds until stopped."""

    def __init__(self, pid):
        self.pid = pid
        self.seen = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for inode, entry in _proc_sockets(self.pid).items():
                self.seen.setdefault(inode, set()).add(entry)
            time.sleep(0.003)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return [e for entries in self.seen.values() for e in entries]


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


# --------------------------------------------------------------------------------------
# Running the self-test
# --------------------------------------------------------------------------------------

class Run:
    def __init__(self, proc, stdout, stderr, seconds, sockets):
        self.status = proc.returncode
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds
        self.sockets = sockets
        self.doc = None

    def row(self, policy, pattern=None):
        for row in self.doc["rows"]:
            if row["policy"] == policy and row["pattern"] == pattern:
                return row
        raise AssertionError(f"no row {policy} {pattern} in {[r['pattern'] for r in self.doc['rows']]}")

    def texts(self, row):
        return {f: row["cells"][f]["text"] for f in FAILURES}


def run_self_test(proxy_bin, tmp_path, ini, json_out=True, name="st.ini"):
    path = tmp_path / name
    path.write_text(ini)
    args = [proxy_bin, "--self-test", "-c", str(path)] + (["--json"] if json_out else [])
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = SocketWatcher(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    sockets = watcher.stop()
    run = Run(proc, stdout, stderr, time.monotonic() - start, sockets)
    for marker in SANITIZER_MARKERS:
        assert marker not in stderr, stderr
    if json_out and stdout.strip():
        run.doc = json.loads(stdout)
        assert run.doc["exit_status"] == run.status
    return run


def assert_loopback_only(run, forbidden_ports=()):
    """Every socket the self-test had is on 127.0.0.1, and none uses |forbidden_ports|."""
    assert run.sockets, "the watcher saw no socket at all"
    for local, remote, state in run.sockets:
        assert local[0] == "127.0.0.1", (local, remote, state)
        if state != "0A":  # not listening: connected to loopback too
            assert remote[0] == "127.0.0.1", (local, remote, state)
        assert local[1] not in forbidden_ports, (local, remote, state)
        assert remote[1] not in forbidden_ports, (local, remote, state)
    listening = [s for s in run.sockets if s[2] == "0A"]
    assert listening, "the watcher saw no listening socket"


def make_cert(tmp_path, name):
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "30", "-subj", f"/CN={name}"], check=True, capture_output=True)
    return str(cert), str(key)


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------

def test_default_configuration_table(proxy_bin, tmp_path):
    """An empty file: one row, the default policy may, each failure as the README says."""
    run = run_self_test(proxy_bin, tmp_path, "", json_out=False)
    assert run.status == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("policy "))
    assert header.split() == ["policy"] + FAILURES
    row = next(line for line in lines if line.startswith("default (may)"))
    cells = [c for c in row[len("default (may)"):].split("  ") if c.strip()]
    assert [c.strip() for c in cells] == [MAY_DEFAULT[f] for f in FAILURES]
    assert "tls_handshake shortened from 30s to 1s for the test" in run.stdout
    assert "no client certificate is configured" in run.stdout
    assert "Result: ok: no require destination got anything in cleartext (exit 0)" in run.stdout
    assert "Ran 8 cells in" in run.stdout
    # Bounded: the slowest cell waits two 1 s handshake timeouts.
    assert run.seconds < 30, run.seconds
    assert_loopback_only(run)


def test_policies_json(proxy_bin, tmp_path):
    """require / off / may patterns (names, a wildcard, IPv4 and IPv6 networks) and a
    default; the JSON holds every connection the fakes recorded."""
    run = run_self_test(proxy_bin, tmp_path, """
[upstream_policy]
require = *.example.com, mx.partner.example
off = legacy.example.net, 2001:db8:5::/48
may = 192.0.2.0/24
""")
    assert run.status == 0, run.stdout + run.stderr
    doc = run.doc
    assert doc["failures"] == FAILURES
    assert [(r["policy"], r["pattern"]) for r in doc["rows"]] == [
        ("require", "*.example.com"), ("require", "mx.partner.example"),
        ("off", "legacy.example.net"), ("off", "2001:db8:5::/48"), ("may", "192.0.2.0/24"),
        ("may", None)]
    assert run.row("require", "*.example.com")["greeting"] == "selftest.example.com"
    assert run.row("require", "mx.partner.example")["greeting"] == "mx.partner.example"
    assert run.row("off", "2001:db8:5::/48")["greeting"] == "selftest.invalid"
    for pattern in ("*.example.com", "mx.partner.example"):
        row = run.row("require", pattern)
        assert run.texts(row) == REQUIRE
        assert row["require_leak"] is False
        for failure in FAILURES:
            for conn in row["cells"][failure]["connections"]:
                assert conn["envelope_cleartext"] is False, (pattern, failure, conn)
                assert conn["message"] in (None, "tls"), (pattern, failure, conn)
        assert row["cells"]["no-starttls"]["reply"].startswith("421 4.7.0 ")
    for pattern in ("legacy.example.net", "2001:db8:5::/48"):
        row = run.row("off", pattern)
        assert run.texts(row) == OFF
        # off: the proxy never even tries, whatever the fake offers.
        for failure in FAILURES:
            conns = row["cells"][failure]["connections"]
            assert [c["starttls"] for c in conns] == [False], (pattern, failure)
    for pattern in ("192.0.2.0/24", None):
        assert run.texts(run.row("may", pattern)) == MAY_DEFAULT

    may = run.row("may", None)["cells"]
    alert = may["alert"]
    assert alert["outcome"] == "cleartext" and alert["delivered"] is True
    assert [(c["step"], c["offered_max"], c["message"]) for c in alert["connections"]] == [
        ("tls", "TLSv1.3", None), ("tls12", "TLSv1.2", None), ("cleartext", None, "cleartext")]
    refused = may["refuse-454"]["connections"]
    assert len(refused) == 1 and refused[0]["starttls_reply"] == 454
    assert refused[0]["message"] == "cleartext"
    ok = may["tls-ok"]
    assert ok["outcome"] == "tls" and ok["connections"][0]["tls_version"] == "TLSv1.3"
    assert ok["connections"][0]["client_certificate"] == "none"
    assert may["post-tls-403"]["connections"][0]["tls_version"] == "TLSv1.3"
    assert run.doc["setup_error"] is None
    assert_loopback_only(run)


def test_fallback_off(proxy_bin, tmp_path):
    """fallback = off: a failed handshake defers; a STARTTLS refused by a reply, or not
    offered, still goes on in cleartext (RFC 3207), as the proxy does in production."""
    run = run_self_test(proxy_bin, tmp_path, "[upstream_tls]\nfallback = off\n")
    assert run.status == 0
    assert run.texts(run.row("may")) == {
        "no-starttls": "cleartext",
        "refuse-454": "cleartext after 454",
        "alert": DEFERRED,
        "client-cert-rejected": "TLS 1.3",
        "eof-after-220": DEFERRED,
        "handshake-timeout": DEFERRED,
        "post-tls-403": DEFERRED,
        "tls-ok": "TLS 1.3",
    }


def test_fallback_steps_without_cleartext(proxy_bin, tmp_path):
    """fallback_steps = tls12: one more TLS attempt after a failed handshake, never a
    cleartext connection; a 403 after TLS has no step left."""
    run = run_self_test(proxy_bin, tmp_path, "[upstream_tls]\nfallback_steps = tls12\n")
    assert run.status == 0
    texts = run.texts(run.row("may"))
    assert texts == {
        "no-starttls": "cleartext",
        "refuse-454": "cleartext after 454",
        "alert": "deferred 421 4.7.0 via tls->tls12",
        "client-cert-rejected": "TLS 1.3",
        "eof-after-220": "deferred 421 4.7.0 via tls->tls12",
        "handshake-timeout": "deferred 421 4.7.0 via tls->tls12",
        "post-tls-403": DEFERRED,
        "tls-ok": "TLS 1.3",
    }
    assert "fallback_steps = tls12" in run.doc["notes"][0]


def test_client_certificate(proxy_bin, tmp_path):
    """With a client certificate: the rejecting fake is met by the no-client-cert step,
    which the fake sees as a handshake without a certificate; require gets no step."""
    cert, key = make_cert(tmp_path, "client")
    run = run_self_test(proxy_bin, tmp_path, f"""
[upstream_tls]
certificate = {cert}
key = {key}
[upstream_policy]
require = mx.partner.example
""")
    assert run.status == 0, run.stdout + run.stderr
    may = run.row("may")
    assert run.texts(may) == {
        "no-starttls": "cleartext",
        "refuse-454": "cleartext after 454",
        # The second attempt is no-client-cert, which a fake failing at the ClientHello
        # cannot tell from the first; the third is no-client-cert+tls12.
        "alert": "cleartext via tls->tls->tls12->cleartext",
        "client-cert-rejected": "TLS 1.3 via tls->no-client-cert",
        "eof-after-220": "cleartext via tls->tls->tls12->cleartext",
        "handshake-timeout": "cleartext via tls->tls->tls12->cleartext",
        "post-tls-403": "cleartext via tls->cleartext",
        "tls-ok": "TLS 1.3",
    }
    rejected = may["cells"]["client-cert-rejected"]["connections"]
    assert [c["client_certificate"] for c in rejected] == ["presented", "none"]
    assert may["cells"]["tls-ok"]["connections"][0]["client_certificate"] == "presented"
    assert run.texts(run.row("require", "mx.partner.example")) == dict(
        {f: DEFERRED for f in FAILURES}, **{"tls-ok": "TLS 1.3"})
    assert not any("no client certificate is configured" in n for n in run.doc["notes"])
    assert run.doc["client_certificate"] is True


def test_default_require(proxy_bin, tmp_path):
    """starttls = require with a may exception: the default row defers every failure and
    never lets anything through in cleartext, so the exit status is 0."""
    run = run_self_test(proxy_bin, tmp_path, """
[upstream_tls]
starttls = require
[upstream_policy]
may = *.legacy.example
""")
    assert run.status == 0
    assert run.texts(run.row("require")) == REQUIRE
    assert run.texts(run.row("may", "*.legacy.example")) == MAY_DEFAULT
    assert run.row("require")["require_leak"] is False


def test_touches_nothing_configured(proxy_bin, tmp_path):
    """The configured listen and metrics addresses are never bound, the configured upstream
    is never contacted, and the [store] Redis gets no connection and no key."""
    redis_server = shutil.which("redis-server")
    assert redis_server, "redis-server is installed by tests/install-deps"
    upstream = CountingListener()
    redis_port = free_port()
    redis = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def redis_cli(*args):
        out = subprocess.run(["redis-cli", "-p", str(redis_port)] + list(args),
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    def connections_received():
        info = redis_cli("INFO", "stats")
        line = next(line for line in info.splitlines()
                    if line.startswith("total_connections_received:"))
        return int(line.split(":")[1])

    try:
        deadline = time.monotonic() + 10
        while redis_cli("PING") != "PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        listen_port, metrics_port = free_port(), free_port()
        before = connections_received()
        run = run_self_test(proxy_bin, tmp_path, f"""
[proxy]
listen = 0.0.0.0:{listen_port}, 127.0.0.1:{listen_port}
upstream = 127.0.0.1:{upstream.port}
upstream_identity = xclient
proxy_protocol = v2
[client_tls]
learn_failures = on
[upstream_policy]
require = *.example.com
[store]
redis = redis://127.0.0.1:{redis_port}
[metrics]
listen = 127.0.0.1:{metrics_port}
""")
        assert run.status == 0, run.stdout + run.stderr
        # The XCLIENT and PROXY settings are not the fakes' business: mail still flows.
        assert run.texts(run.row("may")) == MAY_DEFAULT
        assert run.texts(run.row("require", "*.example.com")) == REQUIRE
        assert upstream.accepted == 0
        assert_loopback_only(run, forbidden_ports={listen_port, metrics_port, upstream.port,
                                                   redis_port})
        # Only the INFO query itself connected since |before| was read.
        assert connections_received() == before + 1
        assert redis_cli("DBSIZE") == "0"
    finally:
        upstream.stop()
        redis.terminate()
        redis.wait(timeout=10)


def test_setup_errors(proxy_bin, tmp_path):
    """A file with errors, or a client certificate whose key does not match, cannot be
    tested: exit status 2, with the reason in the table or the JSON."""
    run = run_self_test(proxy_bin, tmp_path, "[proxy]\nmode = fwd\n")
    assert run.status == 2
    assert "mode" in run.stderr
    assert run.doc["setup_error"].endswith("st.ini has errors")
    assert run.doc["rows"] == []

    cert, _ = make_cert(tmp_path, "one")
    _, other_key = make_cert(tmp_path, "two")
    run = run_self_test(proxy_bin, tmp_path,
                        f"[upstream_tls]\ncertificate = {cert}\nkey = {other_key}\n",
                        json_out=False)
    assert run.status == 2
    assert "Result: the self-test could not be set up: " in run.stdout
    assert "[upstream_tls]" in run.stdout


def test_json_needs_self_test(proxy_bin, tmp_path):
    proc = subprocess.run([proxy_bin, "--json", "-c", "/nonexistent"], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 2
    assert "--self-test" in proc.stderr
