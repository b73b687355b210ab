"""The session line at the end of each session, in text and JSON format."""

import json
import re

import harness

SECRET = b"SECRET-CONTENT-5d1e7f3a"
BODY = b"Subject: logged\r\n\r\n" + SECRET + b"\r\n"


def deliver_raw(port, connect):
    c = connect(port)
    assert c.greeting().code == 220
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(BODY + b".\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    c.wait_closed()
    return c


def check_fields(fields, c, upstream):
    assert fields["client"] == f"127.0.0.1:{c.local_port}"
    assert fields["upstream"] == upstream.addr
    assert str(fields["messages"]) == "1"
    assert fields["front_tls"] == "none"
    assert fields["back_tls"] == "cleartext"
    assert fields["back_tls_reason"] == "policy-off"
    assert fields["end"] == "quit"
    assert re.fullmatch(r"\d+", str(fields["duration_ms"]))
    # Bytes each way on the client's leg: what the client sent and what it received.
    assert str(fields["bytes_in"]) == str(c.sent), (fields["bytes_in"], c.sent)
    assert str(fields["bytes_out"]) == str(c.received), (fields["bytes_out"], c.received)


def test_text_session_line(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr)
    c = deliver_raw(proxy.port, connect)
    aio_upstream.wait_messages(1)
    fields = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert re.fullmatch(r"[0-9a-f]{16}", fields["id"])
    check_fields(fields, c, aio_upstream)
    # One line per session, and this was the only session.
    assert len(proxy.session_lines()) == 1, proxy.stderr()
    # Message content never reaches the log, even at debug level.
    assert SECRET.decode() not in proxy.stderr()


def test_json_session_line(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra={"log": {"format": "json"}})
    c = deliver_raw(proxy.port, connect)
    aio_upstream.wait_messages(1)
    events = harness.wait_for(lambda: proxy.json_events("session"), 10,
                              what="a JSON session event")
    assert len(events) == 1, events
    check_fields(events[0], c, aio_upstream)
    # Every line the proxy wrote is one JSON object.
    for line in proxy.stderr().splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    assert SECRET.decode() not in proxy.stderr()


def test_client_closed_without_quit(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr)
    c = connect(proxy.port)
    assert c.greeting().code == 220
    c.ehlo()
    c.close()
    fields = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert fields["end"] == "client-closed", fields["_line"]
    assert fields["messages"] == "0", fields["_line"]
