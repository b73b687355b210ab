"""SIGHUP re-reads the configuration file: new sessions use the new upstream, certificate
and listeners, an open session completes under the old configuration, and a broken file
changes nothing and is logged."""

import signal

import pytest

import harness


def deliver(port, tag, starttls=False):
    c = harness.SmtpConn("127.0.0.1", port)
    try:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        der = None
        if starttls:
            c.starttls()
            der = c.peer_der()
            assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd(f"RCPT TO:<{tag}@upstream.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(f"Subject: {tag}\r\n\r\n{tag}\r\n.\r\n".encode())
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
        return der
    finally:
        c.close()


def rcpts(upstream):
    return [m.rcpt_tos[0] for m in upstream.messages]


def test_reload_changes_upstream_certificate_and_listeners(make_aio_upstream, make_proxy,
                                                           tmp_path):
    a, b = make_aio_upstream(), make_aio_upstream()
    cert1 = harness.make_cert(str(tmp_path), "one.test")
    cert2 = harness.make_cert(str(tmp_path), "two.test")
    port1, port2 = harness.free_port(), harness.free_port()
    tls = {"client_tls": {"starttls": "offer", "certificate": cert1[0], "key": cert1[1]}}
    proxy = make_proxy(a.addr, tls, listen=[f"127.0.0.1:{port1}"])

    assert deliver(port1, "first", starttls=True) == harness.cert_der(cert1[0])
    # A session open across the reload, in the middle of a transaction.
    held = harness.SmtpConn("127.0.0.1", port1)
    assert held.greeting().code == 220
    assert held.ehlo().code == 250
    assert held.cmd("MAIL FROM:<a@client.test>").code == 250

    sections = harness.base_sections([f"127.0.0.1:{port2}"], b.addr, {
        "client_tls": {"starttls": "offer", "certificate": cert2[0], "key": cert2[1]}})
    proxy.rewrite(sections)
    proxy.reload("reloaded")

    # New listener, new upstream, new certificate; the old port is closed.
    assert deliver(port2, "second", starttls=True) == harness.cert_der(cert2[0])
    with pytest.raises(OSError):
        harness.SmtpConn("127.0.0.1", port1).greeting()
    # The open session finishes under the old configuration: to upstream a.
    assert held.cmd("RCPT TO:<held@upstream.test>").code == 250
    assert held.cmd("DATA").code == 354
    held.send(b"Subject: held\r\n\r\nheld\r\n.\r\n")
    assert held.reply().code == 250
    assert held.cmd("QUIT").code == 221
    held.close()
    harness.wait_for(lambda: len(a.messages) == 2 and len(b.messages) == 1, 10,
                     what="deliveries")
    assert rcpts(a) == ["first@upstream.test", "held@upstream.test"]
    assert rcpts(b) == ["second@upstream.test"]


def test_broken_file_keeps_the_old_config(make_aio_upstream, make_proxy):
    a, b = make_aio_upstream(), make_aio_upstream()
    proxy = make_proxy(a.addr)
    port = proxy.port
    broken = harness.base_sections([f"127.0.0.1:{port}"], b.addr,
                                   {"proxy": {"mode": "sideways", "no_such_key": "1"}})
    proxy.rewrite(broken)
    proxy.reload("reload-failed")
    errors = proxy.events("config-error")
    assert any("mode" in e["_line"] and "sideways" in e["_line"] for e in errors), errors
    assert any("no_such_key" in e["_line"] for e in errors), errors
    assert proxy.running()
    deliver(port, "still")
    harness.wait_for(lambda: len(a.messages) == 1, 10, what="delivery to the old upstream")
    assert b.messages == []


def test_json_log_lines_stay_json_with_escaped_text(make_aio_upstream, make_proxy):
    """Received or configured text is escaped before it is logged (\\xHH in text format);
    in JSON format every line must still parse, with the text intact."""
    import json
    a = make_aio_upstream()
    proxy = make_proxy(a.addr, {"log": {"format": "json"}})
    broken = harness.base_sections([f"127.0.0.1:{proxy.port}"], a.addr,
                                   {"proxy": {"mode": 'f"w\\d'}, "log": {"format": "json"}})
    proxy.rewrite(broken)
    before = proxy.stderr().count('"reload-failed"')
    proxy.signal(signal.SIGHUP)
    harness.wait_for(lambda: proxy.stderr().count('"reload-failed"') > before, 10,
                     what="a reload-failed line")
    events = [json.loads(line) for line in proxy.stderr().splitlines() if line.startswith("{")]
    errors = [e for e in events if e["event"] == "config-error"]
    assert any('mode: "f"w\\d" is not valid' in e["error"] for e in errors), errors
