"""--health: the probe a container's HEALTHCHECK runs (proxy/health.c).

Healthy (exit 0, "healthy: ADDRESS: GREETING" on stdout) when the proxy answers with a
well-formed reply, whatever its code: the upstream's 220, or the proxy's own 421 while the
upstream is down. Unhealthy (exit 1, "unhealthy: REASON") when nothing listens, the
greeting does not come within 5 s, or it is not SMTP (on stdout too); a bad config file
gives its errors on stderr and exit 1.
"""

import re
import subprocess
import time

import pytest

import harness


def health(proxy_bin, ini, timeout=20):
    started = time.monotonic()
    p = subprocess.run([proxy_bin, "--health", "-c", ini], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    for marker in harness.SANITIZER_MARKERS:
        assert marker not in err, f"sanitizer report:\n{err}"
    return p.returncode, out, err, time.monotonic() - started


def test_healthy_with_the_upstreams_greeting(proxy_bin, aio_upstream, make_proxy):
    proxy = make_proxy(aio_upstream.addr)
    rc, out, err, _ = health(proxy_bin, proxy.ini_path)
    assert rc == 0, (out, err)
    assert re.fullmatch(rf"healthy: 127\.0\.0\.1:{proxy.port}: 220 .*\n", out), out
    # The probe ends its session with QUIT, as a polite client does.
    proxy.wait_session_line(end="quit")


def test_healthy_with_421_when_the_upstream_is_down(proxy_bin, make_proxy):
    proxy = make_proxy(f"127.0.0.1:{harness.free_port()}")
    rc, out, err, _ = health(proxy_bin, proxy.ini_path)
    assert rc == 0, (out, err)
    assert re.fullmatch(rf"healthy: 127\.0\.0\.1:{proxy.port}: 421 4\.4\.0 .*\n", out), out


def test_unhealthy_when_nothing_listens(proxy_bin, aio_upstream, make_proxy):
    proxy = make_proxy(aio_upstream.addr, start=False)
    rc, out, err, _ = health(proxy_bin, proxy.ini_path)
    assert rc == 1, (out, err)
    assert re.fullmatch(rf"unhealthy: 127\.0\.0\.1:{proxy.port}: connect: Connection refused\n",
                        out), out


def test_unhealthy_when_the_greeting_does_not_come(proxy_bin, make_fake_upstream, make_proxy):
    silent = make_fake_upstream(greeting=None)
    proxy = make_proxy(silent.addr)
    rc, out, err, elapsed = health(proxy_bin, proxy.ini_path)
    assert rc == 1, (out, err)
    assert "unhealthy: " in out and "no complete greeting within 5000 ms" in out, out
    assert 4.5 < elapsed < 10, elapsed


def test_wildcard_listener_is_probed_on_loopback(proxy_bin, aio_upstream, make_proxy):
    port = harness.free_port()
    proxy = make_proxy(aio_upstream.addr, listen=[f"0.0.0.0:{port}"])
    rc, out, err, _ = health(proxy_bin, proxy.ini_path)
    assert rc == 0, (out, err)
    assert out.startswith(f"healthy: 127.0.0.1:{port}: 220 "), out


def test_bad_config_is_unhealthy(proxy_bin, tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[proxy]\nmode = fwd\n")
    rc, out, err, _ = health(proxy_bin, str(ini))
    assert rc == 1, (out, err)
    assert re.search(r"bad\.ini:2: mode: ", err), err
    assert out == "unhealthy: configuration error (see above)\n", out


@pytest.mark.parametrize("version", ["v1", "v2", "any"])
def test_healthy_behind_proxy_protocol(proxy_bin, aio_upstream, make_proxy, version):
    """A listener that wants a PROXY header first: the probe sends a health-check header
    (v1 UNKNOWN, v2 LOCAL) and gets the greeting, and the proxy logs no bad header."""
    proxy = make_proxy(aio_upstream.addr, {"proxy": {"proxy_protocol": version}})
    rc, out, err, _ = health(proxy_bin, proxy.ini_path)
    assert rc == 0, (out, err)
    assert out.startswith(f"healthy: 127.0.0.1:{proxy.port}: 220 "), out
    proxy.wait_session_line(end="quit")
    assert "proxy-header-bad" not in proxy.stderr()
