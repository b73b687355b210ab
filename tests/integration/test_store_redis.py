"""The learned state shared through Redis ([store] redis): a real redis-server, HAProxy
(send-proxy-v2) in front of two real proxy instances, real upstreams.

- A client whose TLS handshake failed on one instance is not offered STARTTLS by the
  other; an operator's DEL takes effect on the next session.
- An upstream's fallback step learned by one instance is used by the other.
- Redis killed in the middle of a load, or hung (SIGSTOP): no message lost or duplicated,
  sessions keep their latency bound, one warning per outage per instance, and sharing
  resumes when Redis is back, without a restart.
- AUTH (password, ACL user, password file) and SELECT.
"""

import os
import re
import signal
import smtplib
import subprocess
import threading
import time

import pytest

import harness

REDIS_SERVER = "/usr/bin/redis-server"
HAPROXY = "/usr/sbin/haproxy"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(REDIS_SERVER) and os.path.exists(HAPROXY)),
    reason="redis-server and haproxy are installed by tests/install-deps")


class Redis:
    """A redis-server of our own on a free loopback port, without persistence."""

    def __init__(self, workdir, args=(), password=None):
        self.port = harness.free_port()
        self.workdir = workdir
        self.args = list(args)
        self.password = password
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.workdir, f"redis-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir, *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        harness.wait_for(lambda: self.port in harness._listening_ports(), 10,
                         what="redis-server listening")
        return self

    def cli(self, *args, db=0):
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        out = subprocess.run(["redis-cli", "-p", str(self.port), "-n", str(db), *auth, *args],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.kill()
        if self.proc is not None:
            self.log.close()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


class Haproxy:
    """HAProxy in TCP mode, round robin over |servers| with a PROXY v2 header."""

    def __init__(self, workdir, servers):
        self.port = harness.free_port()
        self.cfg = os.path.join(workdir, f"haproxy-{self.port}.cfg")
        lines = ["global", "    nbthread 1", "defaults", "    mode tcp",
                 "    timeout connect 5s", "    timeout client 60s", "    timeout server 60s",
                 "frontend smtp", f"    bind 127.0.0.1:{self.port}", "    default_backend proxies",
                 "backend proxies", "    balance roundrobin"]
        for i, port in enumerate(servers):
            lines.append(f"    server p{i} 127.0.0.1:{port} send-proxy-v2")
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_for(lambda: self.port in harness._listening_ports(), 10,
                         what="haproxy listening")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def make_redis(tmp_path):
    started = harness.Started(stop=Redis.stop)
    yield lambda **kw: started.add(Redis(str(tmp_path), **kw).start())
    started.stop_all()


@pytest.fixture
def make_haproxy(tmp_path, make_proxy):
    started = harness.Started(stop=Haproxy.stop)
    yield lambda servers: started.add(Haproxy(str(tmp_path), servers).start())
    started.stop_all()


def store_extra(redis, **store):
    section = {"redis": redis.url, "timeout": "100ms", **store}
    return {"store": section}


def fleet(make_proxy, upstream_addr, redis, extra=None, n=2, proxy_protocol="v2"):
    """|n| proxies sharing |redis|, each expecting a PROXY header from HAProxy."""
    base = harness.merge_sections(
        {"proxy": {"proxy_protocol": proxy_protocol, "workers": "2"},
         "client_tls": {"starttls": "offer"}},
        store_extra(redis))
    base = harness.merge_sections(base, extra or {})
    proxies = [make_proxy(upstream_addr, extra=base) for _ in range(n)]
    for p in proxies:
        p.wait_event("store-connected")
    return proxies


def fail_handshake(port, source):
    """A session from |source| whose TLS handshake fails: STARTTLS, then no ClientHello."""
    c = harness.SmtpConn("127.0.0.1", port, source=source)
    try:
        assert c.greeting().code == 220
        ehlo = c.ehlo()
        assert "STARTTLS" in ehlo.text, ehlo
        assert c.cmd("STARTTLS").code == 220
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        # The proxy answers with a TLS alert, then closes.
        c.sock.settimeout(10)
        try:
            while c.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    finally:
        c.close()


def ehlo_offers_starttls(port, source):
    c = harness.SmtpConn("127.0.0.1", port, source=source)
    try:
        assert c.greeting().code == 220
        offered = "STARTTLS" in c.ehlo().text
        assert c.cmd("QUIT").code == 221
        return offered
    finally:
        c.close()


def sessions_of(proxy, source):
    return [x for x in proxy.session_lines() if x.get("client", "").startswith(source + ":")]


def session_counts(proxies, source, total):
    """How many sessions of |source| each proxy logged, once |total| are logged."""
    harness.wait_for(lambda: sum(len(sessions_of(p, source)) for p in proxies) >= total, 10,
                     what=f"{total} session lines of {source}")
    return [len(sessions_of(p, source)) for p in proxies]


def test_a_client_learned_on_one_instance_is_hidden_on_the_other(aio_upstream, make_proxy,
                                                                 make_redis, make_haproxy):
    redis = make_redis()
    a, b = fleet(make_proxy, aio_upstream.addr, redis)
    lb = make_haproxy([a.port, b.port])

    fail_handshake(lb.port, "127.0.0.21")  # round robin: instance a
    line = a.wait_session_line(end="client-tls-failed")
    assert line["client"].startswith("127.0.0.21:"), line["_line"]
    assert redis.cli("GET", "smtp-tls-proxy:client:127.0.0.21") == "1"
    ttl_ms = int(redis.cli("PTTL", "smtp-tls-proxy:client:127.0.0.21"))
    assert 86_000_000 < ttl_ms <= 86_400_000  # learn_ttl = 1d

    # The next session of that client lands on b, which never saw it fail.
    assert not ehlo_offers_starttls(lb.port, "127.0.0.21")
    hidden = b.wait_session_line(starttls="hidden")
    assert hidden["client"].startswith("127.0.0.21:"), hidden["_line"]
    assert session_counts([a, b], "127.0.0.21", 2) == [1, 1]
    # Another client is offered STARTTLS on both.
    assert ehlo_offers_starttls(lb.port, "127.0.0.22")
    assert ehlo_offers_starttls(lb.port, "127.0.0.22")
    assert session_counts([a, b], "127.0.0.22", 2) == [1, 1]

    # An operator clears the key: the next session, on either instance (a learned the
    # failure itself), offers STARTTLS again.
    assert redis.cli("DEL", "smtp-tls-proxy:client:127.0.0.21") == "1"
    assert ehlo_offers_starttls(lb.port, "127.0.0.21")
    assert ehlo_offers_starttls(lb.port, "127.0.0.21")
    assert session_counts([a, b], "127.0.0.21", 4) == [2, 2]


def test_an_upstream_step_learned_by_one_instance_is_used_by_the_other(make_tls_fake, make_proxy,
                                                                       make_redis):
    up = make_tls_fake("tls13-intolerant")
    redis = make_redis()
    a, b = fleet(make_proxy, up.addr, redis, proxy_protocol="off",
                 extra={"upstream_tls": {"starttls": "may"}})

    def deliver(proxy, tag):
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=20) as s:
            s.ehlo("client.test")
            s.sendmail("a@client.test", [f"{tag}@upstream.test"], f"Subject: {tag}\r\n\r\nx\r\n")

    deliver(a, "first")
    conns = up.conns()
    assert [c.hello_max for c in conns] == ["TLSv1.3", "TLSv1.2"], conns
    assert redis.cli("GET", "smtp-tls-proxy:upstream:127.0.0.1") == "tls12"
    ttl_ms = int(redis.cli("PTTL", "smtp-tls-proxy:upstream:127.0.0.1"))
    assert 3_500_000 < ttl_ms <= 3_600_000  # remember_failures = 1h

    # b goes straight to the step a learned: one connection, TLS 1.2 at most.
    deliver(b, "second")
    conns = up.conns()
    assert len(conns) == 3, conns
    assert conns[2].hello_max == "TLSv1.2" and conns[2].tls_version == "TLSv1.2", conns[2]
    assert b.wait_session_line(back_tls="TLSv1.2")["end"] == "quit"
    assert len(up.wait_messages(2)) == 2

    # Cleared: b probes from the top again (and learns it again).
    redis.cli("DEL", "smtp-tls-proxy:upstream:127.0.0.1")
    deliver(b, "third")
    conns = up.conns()
    assert [c.hello_max for c in conns[3:]] == ["TLSv1.3", "TLSv1.2"], conns
    assert redis.cli("GET", "smtp-tls-proxy:upstream:127.0.0.1") == "tls12"


def test_redis_killed_mid_load_loses_nothing_and_sharing_resumes(aio_upstream, make_proxy,
                                                                 make_redis, make_haproxy):
    redis = make_redis()
    proxies = fleet(make_proxy, aio_upstream.addr, redis)
    lb = make_haproxy([p.port for p in proxies])

    n_clients, per_client = 8, 25
    durations, errors = [], []
    lock = threading.Lock()

    def client(i):
        for j in range(per_client):
            tag = f"c{i}m{j}"
            start = time.monotonic()
            try:
                with smtplib.SMTP("127.0.0.1", lb.port, timeout=20,
                                  source_address=(f"127.0.1.{i + 1}", 0)) as s:
                    s.ehlo("client.test")
                    s.sendmail("a@client.test", [f"{tag}@upstream.test"],
                               f"Subject: {tag}\r\n\r\n{tag}\r\n")
            except Exception as e:  # noqa: BLE001 (recorded, asserted below)
                with lock:
                    errors.append((tag, repr(e)))
            with lock:
                durations.append(time.monotonic() - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    harness.wait_for(lambda: len(aio_upstream.messages) >= 40, 30, what="the load to run")
    redis.kill()
    harness.wait_for(lambda: len(aio_upstream.messages) >= 100, 60, what="load without Redis")
    redis.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)

    total = n_clients * per_client
    assert errors == []
    got = sorted(r for m in aio_upstream.wait_messages(total) for r in m.rcpt_tos)
    want = sorted(f"c{i}m{j}@upstream.test" for i in range(n_clients) for j in range(per_client))
    assert got == want  # each message once: none lost, none duplicated
    assert max(durations) < 3, f"slowest session {max(durations):.2f}s"
    for p in proxies:
        p.wait_event("store-available", timeout=15)
        assert len(p.events("store-unavailable")) == 1, p.events("store-unavailable")
        assert len(p.events("store-available")) == 1

    # Sharing works again: a failure learned now reaches the other instance.
    fail_handshake(lb.port, "127.0.0.23")
    harness.wait_for(lambda: redis.cli("GET", "smtp-tls-proxy:client:127.0.0.23") == "1", 5,
                     what="the learned failure in Redis")
    assert not ehlo_offers_starttls(lb.port, "127.0.0.23")
    assert sorted(session_counts(proxies, "127.0.0.23", 2)) == [1, 1]


def test_a_hung_redis_bounds_the_wait(aio_upstream, make_proxy, make_redis):
    redis = make_redis()
    mport = harness.free_port()
    (proxy,) = fleet(make_proxy, aio_upstream.addr, redis, n=1, proxy_protocol="off",
                     extra={"proxy": {"workers": "1"}, "store": {"timeout": "200ms"},
                            "metrics": {"listen": f"127.0.0.1:{mport}"}})
    redis.cli("SET", "smtp-tls-proxy:client:127.0.0.24", "1")
    assert not ehlo_offers_starttls(proxy.port, "127.0.0.24")
    m = harness.scrape_metrics(mport)
    assert m["smtp_tls_proxy_store_up"] == 1
    assert m['smtp_tls_proxy_store_lookups_total{result="found"}'] == 1

    redis.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        for _ in range(3):
            start = time.monotonic()
            offered = ehlo_offers_starttls(proxy.port, "127.0.0.24")
            took = time.monotonic() - start
            # Redis never answered: the local memory (which kept the entry) decides, after
            # at most the 200 ms timeout.
            assert not offered
            assert took < 1.5, f"the session waited {took:.2f}s"
        # After 2 s without any reply the connection counts as lost: sessions stop
        # waiting at all, and the outage is logged once.
        proxy.wait_event("store-unavailable", timeout=10)
        start = time.monotonic()
        assert not ehlo_offers_starttls(proxy.port, "127.0.0.24")
        assert time.monotonic() - start < 0.5
        m = harness.scrape_metrics(mport)
        assert m["smtp_tls_proxy_store_up"] == 0
        assert m["smtp_tls_proxy_store_outages_total"] == 1
        assert m['smtp_tls_proxy_store_lookups_total{result="unanswered"}'] >= 3
        assert m['smtp_tls_proxy_store_lookups_total{result="unavailable"}'] >= 1
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    proxy.wait_event("store-available", timeout=15)
    assert len(proxy.events("store-unavailable")) == 1
    harness.wait_for(lambda: harness.scrape_metrics(mport)["smtp_tls_proxy_store_up"] == 1, 10,
                     what="store_up back to 1")
    # While Redis was hung, the proxy learned nothing it could not send later: a key
    # cleared now is cleared for the next session.
    redis.cli("DEL", "smtp-tls-proxy:client:127.0.0.24")
    assert ehlo_offers_starttls(proxy.port, "127.0.0.24")


def test_writes_made_during_an_outage_reach_redis_when_it_is_back(aio_upstream, make_proxy,
                                                                  make_redis):
    redis = make_redis()
    (proxy,) = fleet(make_proxy, aio_upstream.addr, redis, n=1, proxy_protocol="off")
    redis.kill()
    proxy.wait_event("store-unavailable")
    fail_handshake(proxy.port, "127.0.0.25")
    assert not ehlo_offers_starttls(proxy.port, "127.0.0.25")  # remembered locally
    redis.start()
    proxy.wait_event("store-available", timeout=15)
    harness.wait_for(lambda: redis.cli("GET", "smtp-tls-proxy:client:127.0.0.25") == "1", 5,
                     what="the failure learned during the outage in Redis")


def test_auth_acl_user_database_and_password_file(aio_upstream, make_proxy, make_redis,
                                                  tmp_path):
    redis = make_redis(args=["--user", "proxy", "on", ">s3cret", "~*", "+@all",
                             "--requirepass", "adminpw"], password="adminpw")
    extra = {"proxy": {"workers": "1"}, "client_tls": {"starttls": "offer"},
             "store": {"redis": f"redis://proxy:s3cret@127.0.0.1:{redis.port}/2",
                       "prefix": "mx1/"}}
    proxy = make_proxy(aio_upstream.addr, extra=extra)
    proxy.wait_event("store-connected")
    fail_handshake(proxy.port, "127.0.0.26")
    harness.wait_for(lambda: redis.cli("GET", "mx1/client:127.0.0.26", db=2) == "1", 5,
                     what="the key in database 2")
    assert redis.cli("GET", "mx1/client:127.0.0.26", db=0) == ""

    # The password from a file (a Kubernetes or Docker secret), for the default user.
    secret = tmp_path / "redis-password"
    secret.write_text("adminpw\n")
    extra2 = {"proxy": {"workers": "1"},
              "store": {"redis": redis.url, "password_file": str(secret)}}
    p2 = make_proxy(aio_upstream.addr, extra=extra2)
    p2.wait_event("store-connected")

    # A wrong password: one warning naming Redis's refusal, never the password.
    extra3 = {"proxy": {"workers": "2"},
              "store": {"redis": f"redis://proxy:wrong-pw@127.0.0.1:{redis.port}"}}
    p3 = make_proxy(aio_upstream.addr, extra=extra3)
    warn = p3.wait_event("store-unavailable")
    assert re.search(r"WRONGPASS|invalid username-password", warn["reason"]), warn
    time.sleep(1)  # several retries by both workers
    assert len(p3.events("store-unavailable")) == 1
    assert "wrong-pw" not in p3.stderr() and "s3cret" not in proxy.stderr()
    # The proxy serves mail all the same.
    with smtplib.SMTP("127.0.0.1", p3.port, timeout=20) as s:
        s.sendmail("a@client.test", ["r@upstream.test"], "Subject: x\r\n\r\nx\r\n")
    aio_upstream.wait_messages(1)


def test_store_keys_need_a_restart_and_bad_urls_are_refused(aio_upstream, make_proxy, make_redis,
                                                            proxy_bin, tmp_path):
    redis = make_redis()
    (proxy,) = fleet(make_proxy, aio_upstream.addr, redis, n=1, proxy_protocol="off")
    sections = harness.merge_sections(proxy.sections, {"store": {"prefix": "other:"}})
    with open(proxy.ini_path, "w") as f:
        f.write(harness.render_ini(sections))
    proxy.signal(signal.SIGHUP)
    line = proxy.wait_event("reload-restart-needed")
    assert "[store]" in line["keys"], line
    # The running store is unchanged.
    fail_handshake(proxy.port, "127.0.0.27")
    harness.wait_for(lambda: redis.cli("GET", "smtp-tls-proxy:client:127.0.0.27") == "1", 5,
                     what="the key under the old prefix")

    bad = tmp_path / "bad.ini"
    bad.write_text("[store]\nredis = redis://user:hunter2@\n")
    out = subprocess.run([proxy_bin, "-t", "-c", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{bad}:2: redis: the URL has no host" in out.stderr, out.stderr
    assert "hunter2" not in out.stderr
