"""The metrics endpoint ([metrics] listen): Prometheus text on GET /metrics.

A scripted set of sessions (one TLS on both legs, one whose upstream refuses STARTTLS so
leg 2 falls back, one whose client fails its handshake and is learned) must leave exactly
the expected counter values; other paths get 404, other methods 405; idle and slow
connections never keep a scraper out.
"""

import re
import socket
import threading
import time
import urllib.error
import urllib.request

import harness
from back_tls_support import body, smtplib_send


def scrape(port, path="/metrics", method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def metrics_proxy(make_proxy, upstream_addr):
    mport = harness.free_port()
    extra = {
        "client_tls": {"starttls": "offer", "learn_failures": "on", "learn_ttl": "1h"},
        "upstream_tls": {"starttls": "may", "fallback": "on", "fallback_steps": "cleartext",
                         "remember_failures": "1h"},
        "timeouts": {"tls_handshake": "2s"},
        "metrics": {"listen": f"127.0.0.1:{mport}"},
    }
    return make_proxy(upstream_addr, extra), mport


def fail_front_handshake(port, source):
    c = harness.SmtpConn("127.0.0.1", port, source=source)
    try:
        assert c.greeting().code == 220
        r = c.ehlo()
        assert any(line.upper() == "STARTTLS" for line in r.lines[1:]), r
        assert c.cmd("STARTTLS").startswith("220 2.0.0")
        c.send(b"this is no ClientHello\r\n")
        c.wait_eof(10)
    finally:
        c.close()


def test_counters_after_scripted_sessions(make_tls_fake, make_proxy):
    up = make_tls_fake("tls-ok")
    proxy, mport = metrics_proxy(make_proxy, up.addr)

    # 1. TLS on both legs.
    r = smtplib_send(proxy.port, body("both-tls"), client_starttls=True)
    assert r.data[0] == 250, r
    # 2. The upstream now refuses STARTTLS: leg 2 falls back, the failure is remembered.
    up.mode = "refuse-454"
    r = smtplib_send(proxy.port, body("fallback"))
    assert r.data[0] == 250, r
    # 3. A client that fails its handshake is learned; leg 2 is skipped as remembered.
    fail_front_handshake(proxy.port, "127.0.0.7")
    proxy.wait_event("front-tls-learned")
    harness.wait_for(lambda: len(proxy.events("session")) >= 3, 10, what="three sessions")

    status, headers, text = scrape(mport)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = harness.metrics_series(text)
    expected = {
        "smtp_tls_proxy_connections_total": 3,
        "smtp_tls_proxy_connections_current": 0,
        "smtp_tls_proxy_connections_refused_total": 0,
        "smtp_tls_proxy_messages_total": 2,
        'smtp_tls_proxy_sessions_total{end="quit"}': 2,
        'smtp_tls_proxy_front_starttls_total{result="offered"}': 3,
        'smtp_tls_proxy_front_starttls_total{result="used"}': 1,
        'smtp_tls_proxy_front_starttls_total{result="failed"}': 1,
        'smtp_tls_proxy_front_starttls_total{result="hidden"}': 0,
        "smtp_tls_proxy_front_learned_total": 1,
        "smtp_tls_proxy_front_learned_entries": 1,
        'smtp_tls_proxy_back_tls_total{result="used"}': 1,
        'smtp_tls_proxy_back_tls_fallback_total{reason="starttls-refused"}': 1,
        "smtp_tls_proxy_back_tls_remembered_skips_total": 1,
        "smtp_tls_proxy_back_tls_require_failures_total": 0,
        "smtp_tls_proxy_back_remembered_entries": 1,
        "smtp_tls_proxy_front_handshake_seconds_count": 1,
        "smtp_tls_proxy_back_handshake_seconds_count": 1,
        "smtp_tls_proxy_session_seconds_count": 3,
    }
    for name, value in expected.items():
        assert got.get(name) == value, (name, got.get(name), text)
    # Every session ended somewhere, and only the three.
    ends = sum(v for k, v in got.items() if k.startswith("smtp_tls_proxy_sessions_total{"))
    assert ends == 3, text
    # Bytes: what the proxy read from clients and from the upstream, at least the bodies.
    assert got['smtp_tls_proxy_bytes_total{direction="in"}'] > 2 * len(body("x"))
    assert got['smtp_tls_proxy_bytes_total{direction="out"}'] > 0
    # Histograms are cumulative and end at +Inf with the count.
    assert got['smtp_tls_proxy_session_seconds_bucket{le="+Inf"}'] == 3
    assert len(up.messages()) == 2


def test_paths_and_methods(make_tls_fake, make_proxy):
    up = make_tls_fake("tls-ok")
    proxy, mport = metrics_proxy(make_proxy, up.addr)
    assert scrape(mport, "/")[0] == 404
    assert scrape(mport, "/metricsx")[0] == 404
    assert scrape(mport, method="POST")[0] == 405
    status, headers, text = scrape(mport, method="HEAD")
    assert status == 200 and text == "", text
    assert int(headers["Content-Length"]) > 0
    # A request head that never ends is cut off, and the proxy stays healthy.
    s = socket.create_connection(("127.0.0.1", mport), timeout=10)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 5000 + b"\r\n")
        s.settimeout(10)
        reply = s.recv(200)
        assert re.match(rb"HTTP/1\.[01] 431 ", reply), reply
    finally:
        s.close()
    assert scrape(mport)[0] == 200


def test_scrape_gets_through_idle_and_trickling_connections(make_tls_fake, make_proxy):
    """Connections that never finish their request head, idle or sending a byte at a time,
    can neither keep a scraper out nor live past the head deadline (2 s from accept)."""
    up = make_tls_fake("tls-ok")
    proxy, mport = metrics_proxy(make_proxy, up.addr)
    harness.wait_for(lambda: scrape(mport)[0] == 200, 10, what="the metrics endpoint")

    def connect():
        return socket.create_connection(("127.0.0.1", mport), timeout=5)

    idle = []
    trickling = []
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in list(trickling):
                try:
                    s.send(b"X")
                except OSError:
                    pass
            stop.wait(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    try:
        # Far more than any pool: older ones are pushed out, the newest stay.
        idle.extend(connect() for _ in range(150))
        for _ in range(20):
            s = connect()
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            trickling.append(s)
        thread.start()
        idle.extend(connect() for _ in range(100))
        for _ in range(3):
            started = time.monotonic()
            status, headers, text = scrape(mport)
            assert status == 200, (status, text)
            assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
            assert "smtp_tls_proxy_connections_total " in text, text
            assert time.monotonic() - started < 2, time.monotonic() - started
            # Attackers open fresh connections between scrapes.
            idle.extend(connect() for _ in range(30))

        # The head deadline runs from accept, not from the last byte: a connection that
        # keeps trickling (and fits in the pool) is still closed.
        slow = []
        for _ in range(5):
            s = connect()
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            slow.append((time.monotonic(), s))
        trickling.extend(s for _, s in slow)
        for accepted, s in slow:
            s.settimeout(max(0.1, accepted + 4 - time.monotonic()))
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            except socket.timeout:
                raise AssertionError("a trickling connection outlived the head deadline")
            assert time.monotonic() - accepted < 4
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
        for s in idle + trickling:
            s.close()

    # Healthy afterwards: mail still flows, and the endpoint still answers.
    r = smtplib_send(proxy.port, body("after-the-crowd"))
    assert r.data[0] == 250, r
    assert scrape(mport)[0] == 200
    assert proxy.running()
