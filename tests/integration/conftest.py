"""Fixtures for the integration tests (see harness.py for the pieces).

Run:  PROXY_BIN=build/smtp-tls-proxy PROXY_SOURCE_DIR=. /usr/bin/python3 -m pytest -q \
          -p no:cacheprovider tests/integration
ctest runs one ctest test per test_*.py file the same way.

Every test gets its own ports, its own proxy process and its own upstream; everything is
stopped at teardown, even on failure. The proxy's teardown sends SIGTERM and requires exit
status 0 within 10 s and no sanitizer report in its stderr.

The fixtures, all here: proxies (make_proxy, relay), clients (connect, sclient), upstreams
(aio_upstream, make_aio_upstream, make_upstream alias make_fake_upstream, make_tls_fake,
make_postfix), certificates (tls_files, front_certs, back_certs, make_cert), and network
namespaces (topo, module_topo, ns_servers, gw_proxy). Helpers that are not fixtures:
harness.py (the proxy process, peers, clients, certificates, swaks, metrics),
back_tls_support.py (leg-2 clients and checks), netns.py (namespaces, iptables rules).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_tls_upstream  # noqa: E402
import harness  # noqa: E402
import netns  # noqa: E402


def pytest_report_header(config):
    return f"proxy binary: {os.environ.get('PROXY_BIN', '(PROXY_BIN not set)')}"


@pytest.fixture(scope="session")
def proxy_bin():
    path = os.environ.get("PROXY_BIN")
    assert path, "PROXY_BIN must name the built smtp-tls-proxy binary"
    assert os.access(path, os.X_OK), f"PROXY_BIN={path} is not an executable file"
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def source_dir():
    path = os.environ.get("PROXY_SOURCE_DIR") or os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", ".."))
    assert os.path.isfile(os.path.join(path, "CMakeLists.txt")), path
    return path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed P-256 certificate and key (CN localhost) for a STARTTLS-capable
    aiosmtpd."""
    return harness.make_cert(str(tmp_path_factory.mktemp("tls")), "localhost")


@pytest.fixture(scope="session")
def front_certs(tmp_path_factory):
    """Certificates for the proxy's leg 1, made once: {"ec": (cert, key), "rsa": (...)}.

    Self-signed by the openssl CLI, CN and subjectAltName "ec.proxy.test" (ECDSA P-256)
    and "rsa.proxy.test" (RSA 2048)."""
    d = str(tmp_path_factory.mktemp("front-certs"))
    return {"ec": harness.make_cert(d, "ec.proxy.test", "ec"),
            "rsa": harness.make_cert(d, "rsa.proxy.test", "rsa")}


@pytest.fixture(scope="session")
def back_certs(tmp_path_factory):
    """Certificates for leg 2's tests, made once with the openssl CLI:
      self_localhost   self-signed, CN/SAN localhost (EC)
      self_rsa         self-signed, CN/SAN localhost (RSA, for the DHE-RSA server)
      ca               a test CA; ca_localhost / ca_other: leaves for localhost and
                       other.example signed by it
      other_ca         a CA that signed nothing the proxy presents
      client_ca, client  the proxy's client certificate (signed by client_ca)
    """
    d = str(tmp_path_factory.mktemp("back-certs"))
    ca = harness.make_ca(d, "Back Test CA")
    client_ca = harness.make_ca(d, "Client CA")
    return {
        "self_localhost": harness.make_cert(d, "localhost", stem="localhost-ec-self"),
        "self_rsa": harness.make_cert(d, "localhost", "rsa", stem="localhost-rsa-self"),
        "ca": ca,
        "ca_localhost": harness.make_cert(d, "localhost", ca=ca),
        "ca_other": harness.make_cert(d, "other.example", ca=ca),
        "other_ca": harness.make_ca(d, "Other CA"),
        "client_ca": client_ca,
        "client": harness.make_cert(d, "proxy-client.test", ca=client_ca, client=True),
    }


@pytest.fixture
def make_cert(tmp_path):
    """make_cert(name, kind="ec"|"rsa", stem=None) -> (cert, key) in this test's tmp dir."""
    d = tmp_path / "certs"
    d.mkdir(exist_ok=True)

    def make(name, kind="ec", stem=None):
        return harness.make_cert(str(d), name, kind, stem=stem)

    return make


# --------------------------------------------------------------------------------------
# Factories: each fixture hands the test a function that starts something, and stops
# everything it started at teardown. Request upstreams before make_proxy, so the proxy
# stops first; clients (connect, sclient) depend on make_proxy, so they close before it.
# --------------------------------------------------------------------------------------

@pytest.fixture
def make_proxy(proxy_bin, tmp_path):
    """make_proxy(upstream_addr, extra=None, listen=None, start=True) -> harness.Proxy.

    |extra| merges into the base config ({section: {key: value}}); |listen| is a list of
    "host:port" strings (default: one free port on 127.0.0.1). At teardown: SIGTERM, exit
    status 0 within 10 s, no sanitizer text in stderr.
    """
    started = harness.Started(stop=harness.Proxy.finish)

    def make(upstream, extra=None, listen=None, start=True):
        if listen is None:
            listen = [f"127.0.0.1:{harness.free_port()}"]
        ports = [int(a.rsplit(":", 1)[1]) for a in listen]
        name = "proxy" if not started else f"proxy{len(started) + 1}"
        sections = harness.base_sections(listen, upstream, extra)
        p = started.add(harness.Proxy(proxy_bin, str(tmp_path), sections, ports, name=name))
        if start:
            p.start()
        return p

    yield make
    started.stop_all()


@pytest.fixture
def connect(make_proxy):
    """connect(port, host="127.0.0.1", source=None) -> harness.SmtpConn, closed at teardown.

    |source|: the client's own address (e.g. "127.0.0.2"), for per-address behaviour.
    """
    started = harness.Started(stop=harness.SmtpConn.close)

    def make(port, host="127.0.0.1", timeout=10.0, source=None):
        return started.add(harness.SmtpConn(host, port, timeout=timeout, source=source))

    yield make
    started.stop_all()


@pytest.fixture
def sclient(make_proxy):
    """sclient(port, **kwargs) -> harness.SClient (openssl s_client), killed at teardown."""
    started = harness.Started(stop=harness.SClient.kill)
    yield lambda port, **kwargs: started.add(harness.SClient(port, **kwargs))
    started.stop_all()


@pytest.fixture
def make_aio_upstream(tls_files):
    """make_aio_upstream(starttls=False, host="127.0.0.1") -> started harness.AioUpstream."""
    started = harness.Started()

    def make(starttls=False, host="127.0.0.1"):
        ctx = harness.make_tls_context(*tls_files) if starttls else None
        return started.add(harness.AioUpstream(host=host, tls_context=ctx).start())

    yield make
    started.stop_all()


@pytest.fixture
def aio_upstream(make_aio_upstream):
    return make_aio_upstream()


@pytest.fixture
def make_upstream():
    """make_upstream(cls=harness.FakeUpstream, **options) -> a started fake upstream
    (harness.FakeUpstream or a subclass), stopped at teardown."""
    started = harness.Started()
    yield lambda cls=harness.FakeUpstream, **options: started.add(cls(**options).start())
    started.stop_all()


@pytest.fixture
def make_fake_upstream(make_upstream):
    """make_fake_upstream(**options) -> started harness.FakeUpstream."""
    return make_upstream


@pytest.fixture
def make_tls_fake(back_certs):
    """make_tls_fake(mode="tls-ok", cert=None, **options) -> a started
    fake_tls_upstream.TlsFakeUpstream (real TLS; cert: back_certs' self_localhost)."""
    started = harness.Started()

    def make(mode="tls-ok", cert=None, **options):
        cert = cert or back_certs["self_localhost"]
        options.setdefault("other_ca", back_certs["other_ca"][0])
        options.setdefault("rsa_cert", back_certs["self_rsa"])
        return started.add(fake_tls_upstream.TlsFakeUpstream(cert[0], cert[1], mode=mode,
                                                             **options).start())

    yield make
    started.stop_all()


@pytest.fixture
def make_postfix():
    """make_postfix(**LocalPostfix options) -> a started Postfix on 127.0.0.1, stopped at
    teardown. Needs root: a test using it is skipped with the reason otherwise."""
    import postfix_local
    reason = postfix_local.available()
    if reason is not None:
        pytest.skip(reason)
    started = harness.Started()
    yield lambda **options: started.add(postfix_local.LocalPostfix(**options)).start()
    started.stop_all()


@pytest.fixture
def relay(aio_upstream, make_proxy):
    """aiosmtpd behind a started proxy: an object with .upstream, .proxy, .port."""

    class Relay:
        upstream = aio_upstream
        proxy = make_proxy(aio_upstream.addr)
        port = proxy.port

    return Relay


# --------------------------------------------------------------------------------------
# Network namespaces (netns.py): transparent mode, spoofed sources. Need root; a test
# module using them skips without it.
# --------------------------------------------------------------------------------------

@pytest.fixture
def topo():
    """A fresh netns.Topology (client | gw | server), deleted at teardown."""
    with netns.Topology() as t:
        yield t


@pytest.fixture(scope="module")
def module_topo():
    """One netns.Topology shared by the tests of a module that ask for it (building one
    takes a second), deleted after the last; skips a test without root. Its tests stop
    what they start in it, so that the next one finds it as it was (rules they add stay)."""
    if not netns.is_root():
        pytest.skip("needs root for network namespaces and iptables")
    with netns.Topology() as t:
        yield t


@pytest.fixture
def ns_servers(topo, tls_files):
    """ns_servers(host, tls=False, kind="aio"|"fake", **options): an SMTP server on
    host:25 in the server namespace (aiosmtpd, offering STARTTLS with |tls|; or
    harness.FakeUpstream with |options|), stopped at teardown (before the namespaces go)."""
    started = harness.Started()

    def make(host, tls=False, kind="aio", **options):
        with topo.entered("server"):
            if kind == "aio":
                ctx = harness.make_tls_context(*tls_files) if tls else None
                up = netns.AioUpstream25(host, tls_context=ctx)
            else:
                up = netns.FakeUpstream25(host, **options)
            return started.add(up.start())

    yield make
    started.stop_all()


@pytest.fixture
def gw_proxy(proxy_bin, tmp_path, topo):
    """gw_proxy(extra=None, ...) -> the real proxy started in the gateway namespace
    (netns.GwProxies.start: transparent mode on port 10025), stopped at teardown."""
    proxies = netns.GwProxies(proxy_bin, str(tmp_path), topo)
    yield proxies.start
    proxies.stop_all()


def pytest_sessionfinish(session, exitstatus):
    """A file whose every test skipped ends with 77, ctest's SKIP_RETURN_CODE, so ctest
    reports it as skipped instead of passed."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    stats = reporter.stats
    ran = sum(len(stats.get(k, [])) for k in ("passed", "failed", "error", "xfailed", "xpassed"))
    if ran == 0 and stats.get("skipped"):
        session.exitstatus = 77
