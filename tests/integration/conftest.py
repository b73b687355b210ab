"""Fixtures for the integration tests (see harness.py for the pieces).

Run:  PROXY_BIN=build/smtp-tls-proxy PROXY_SOURCE_DIR=. /usr/bin/python3 -m pytest -q \
          -p no:cacheprovider tests/integration
ctest runs one ctest test per test_*.py file the same way.

Every test gets its own ports, its own proxy process and its own upstream; everything is
stopped at teardown, even on failure. The proxy's teardown sends SIGTERM and requires exit
status 0 within 10 s and no sanitizer report in its stderr.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


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
    """A self-signed P-256 certificate and key for a STARTTLS-capable aiosmtpd."""
    return harness.make_self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def front_certs(tmp_path_factory):
    """Certificates for the proxy's leg 1, made once: {"ec": (cert, key), "rsa": (...)}.

    Self-signed by the openssl CLI, CN and subjectAltName "ec.proxy.test" (ECDSA P-256)
    and "rsa.proxy.test" (RSA 2048)."""
    d = str(tmp_path_factory.mktemp("front-certs"))
    return {"ec": harness.make_cert(d, "ec.proxy.test", "ec"),
            "rsa": harness.make_cert(d, "rsa.proxy.test", "rsa")}


@pytest.fixture
def make_cert(tmp_path):
    """make_cert(name, kind="ec"|"rsa", stem=None) -> (cert, key) in this test's tmp dir."""
    d = tmp_path / "certs"
    d.mkdir(exist_ok=True)

    def make(name, kind="ec", stem=None):
        return harness.make_cert(str(d), name, kind, stem=stem)

    return make


@pytest.fixture
def sclient(make_proxy):
    """sclient(port, **kwargs) -> harness.SClient (openssl s_client), killed at teardown
    (before the proxy is stopped)."""
    started = []

    def make(port, **kwargs):
        c = harness.SClient(port, **kwargs)
        started.append(c)
        return c

    yield make
    for c in started:
        c.kill()


@pytest.fixture
def make_aio_upstream(tls_files):
    """make_aio_upstream(starttls=False, host="127.0.0.1") -> started harness.AioUpstream."""
    started = []

    def make(starttls=False, host="127.0.0.1"):
        ctx = harness.make_tls_context(*tls_files) if starttls else None
        up = harness.AioUpstream(host=host, tls_context=ctx)
        up.start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture
def aio_upstream(make_aio_upstream):
    return make_aio_upstream()


@pytest.fixture
def make_fake_upstream():
    """make_fake_upstream(**options) -> started harness.FakeUpstream."""
    started = []

    def make(**options):
        up = harness.FakeUpstream(**options)
        up.start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture
def make_upstream():
    """make_upstream(cls=harness.FakeUpstream, **options) -> a started fake upstream
    (harness.FakeUpstream or a subclass), stopped at teardown."""
    started = []

    def make(cls=harness.FakeUpstream, **options):
        up = cls(**options)
        up.start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture
def make_postfix():
    """make_postfix(**LocalPostfix options) -> a started Postfix on 127.0.0.1, stopped at
    teardown (request it before make_proxy, so the proxy stops first). Needs root: a test
    using it is skipped with the reason otherwise."""
    import postfix_local
    reason = postfix_local.available()
    if reason is not None:
        pytest.skip(reason)
    started = []

    def make(**options):
        pf = postfix_local.LocalPostfix(**options)
        started.append(pf)
        return pf.start()

    yield make
    for pf in started:
        pf.stop()


@pytest.fixture
def make_proxy(proxy_bin, tmp_path):
    """make_proxy(upstream_addr, extra=None, listen=None, start=True) -> harness.Proxy.

    |extra| merges into the base config ({section: {key: value}}); |listen| is a list of
    "host:port" strings (default: one free port on 127.0.0.1). At teardown: SIGTERM, exit
    status 0 within 10 s, no sanitizer text in stderr.
    """
    started = []
    count = [0]

    def make(upstream, extra=None, listen=None, start=True):
        if listen is None:
            listen = [f"127.0.0.1:{harness.free_port()}"]
        ports = [int(a.rsplit(":", 1)[1]) for a in listen]
        count[0] += 1
        name = "proxy" if count[0] == 1 else f"proxy{count[0]}"
        sections = harness.base_sections(listen, upstream, extra)
        p = harness.Proxy(proxy_bin, str(tmp_path), sections, ports, name=name)
        started.append(p)
        if start:
            p.start()
        return p

    yield make
    errors = []
    for p in started:
        try:
            if p.proc is not None and p.returncode is None:
                p.stop()
            elif p.proc is not None:
                p.check_clean(p.returncode)
        except AssertionError as e:
            errors.append(str(e))
        finally:
            p.kill()
    assert not errors, "\n\n".join(errors)


@pytest.fixture
def connect(make_proxy):
    """connect(port, host="127.0.0.1", source=None) -> harness.SmtpConn, closed at teardown.

    |source|: the client's own address (e.g. "127.0.0.2"), for per-address behaviour.

    Depends on make_proxy so that clients close before the proxy is stopped.
    """
    conns = []

    def make(port, host="127.0.0.1", timeout=10.0, source=None):
        c = harness.SmtpConn(host, port, timeout=timeout, source=source)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()


@pytest.fixture
def relay(aio_upstream, make_proxy):
    """aiosmtpd behind a started proxy: an object with .upstream, .proxy, .port."""

    class Relay:
        upstream = aio_upstream
        proxy = make_proxy(aio_upstream.addr)
        port = proxy.port

    return Relay


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
