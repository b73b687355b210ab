"""Timeouts (RFC 5321 section 4.5.3.2, shortened by the config): idle client, silent
upstream greeting, stalled DATA."""

import time


def test_idle_client_gets_421_after_command_timeout(make_proxy, connect, aio_upstream):
    proxy = make_proxy(aio_upstream.addr, extra={"timeouts": {"command": "2s"}})
    c = connect(proxy.port)
    assert c.greeting().code == 220
    c.ehlo()
    start = time.monotonic()
    r = c.reply(timeout=10)
    elapsed = time.monotonic() - start
    assert r.startswith("421 4.4.2"), r
    assert 1.5 <= elapsed <= 5.0, f"timed out after {elapsed:.2f}s, configured 2s"
    c.wait_closed(5)
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["end"] == "timeout", line["_line"]
    aio_upstream.wait_all_closed()


def test_activity_resets_command_timeout(make_proxy, connect, aio_upstream):
    proxy = make_proxy(aio_upstream.addr, extra={"timeouts": {"command": "1s"}})
    c = connect(proxy.port)
    c.greeting()
    start = time.monotonic()
    # A command every ~0.3 s for ~2 s: longer than the timeout in total, never idle 1 s.
    while time.monotonic() - start < 2.0:
        assert c.cmd("NOOP").code == 250
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # pacing the client, not synchronisation
            time.sleep(0.05)
    assert c.cmd("QUIT").code == 221


def test_upstream_without_greeting_gives_421(make_fake_upstream, make_proxy, connect):
    up = make_fake_upstream(greeting=None)
    proxy = make_proxy(up.addr, extra={"timeouts": {"greeting": "1s"}})
    start = time.monotonic()
    c = connect(proxy.port)
    r = c.greeting(timeout=10)
    elapsed = time.monotonic() - start
    assert r.code == 421, r
    assert r.startswith("421 4."), r
    assert 0.8 <= elapsed <= 4.0, f"421 after {elapsed:.2f}s, greeting timeout 1s"
    c.wait_closed(5)
    # The silent upstream's connection was closed by the proxy.
    up.wait_closed(timeout=5)


def test_stalled_data_times_out(make_proxy, connect, aio_upstream):
    proxy = make_proxy(aio_upstream.addr, extra={"timeouts": {"data_block": "1s"}})
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: stalled\r\n\r\nhalf a mess")
    r = c.reply(timeout=10)
    assert r.startswith("421 4.4.2"), r
    c.wait_closed(5)
    aio_upstream.wait_all_closed()
    assert aio_upstream.messages == []
