"""Faults: upstream unreachable or lost, client lost mid-DATA, upstream errors relayed
as they are, too many connections. The proxy never sends a 250 the upstream did not send.
"""

import smtplib
import time

import pytest

import harness
from harness import open_data


def test_upstream_unreachable_gives_421_greeting_promptly(make_proxy, connect):
    dead = harness.free_port()  # nothing listens there
    proxy = make_proxy(f"127.0.0.1:{dead}")
    start = time.monotonic()
    c = connect(proxy.port)
    r = c.greeting(timeout=5)
    elapsed = time.monotonic() - start
    assert r.startswith("421 4.4.0"), r
    assert elapsed < 2.0, f"421 took {elapsed:.2f}s"
    c.wait_closed(5)
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["end"] == "upstream-unreachable", line["_line"]
    assert line["messages"] == "0", line["_line"]


def test_upstream_unreachable_with_smtplib(make_proxy):
    dead = harness.free_port()
    proxy = make_proxy(f"127.0.0.1:{dead}")
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=5)
    assert e.value.smtp_code == 421
    assert e.value.smtp_error.startswith(b"4.4.0"), e.value.smtp_error


@pytest.mark.parametrize("how", ["close", "rst"])
def test_upstream_lost_mid_data_gives_421_never_250(make_fake_upstream, make_proxy, connect,
                                                    how):
    up = make_fake_upstream(die_after_body_bytes=1000, die=how)
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    open_data(c)
    # More than the upstream will read before dying, but no end of data yet.
    c.send(b"Subject: doomed\r\n\r\n" + (b"x" * 78 + b"\r\n") * 40)
    r = c.reply(timeout=10)
    assert r.startswith("421 4.4.2"), r
    c.wait_closed(5)  # 421: the proxy closes the session; no 250 can follow
    up.wait_closed()
    assert up.connections[0].died.is_set()
    assert up.messages() == []
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    ends = ["upstream-closed"] if how == "close" else ["upstream-closed", "upstream-error"]
    assert line["end"] in ends, line["_line"]
    assert line["messages"] == "0", line["_line"]


def test_upstream_lost_after_end_of_data_gives_421(make_fake_upstream, make_proxy, connect):
    """The upstream read the final dot and died before replying: no 250 may be invented."""
    up = make_fake_upstream(die_at_data_end=True)
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    open_data(c)
    c.send(b"body\r\n.\r\n")
    r = c.reply()
    assert r.startswith("421 4.4.2"), r
    c.wait_closed(5)
    assert up.wait_closed().died.is_set()


def test_client_lost_mid_data_upstream_stores_nothing(relay, connect):
    c = connect(relay.port)
    open_data(c)
    c.send(b"Subject: partial\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100)
    relay.upstream.wait_connections(1)
    c.close()
    relay.upstream.wait_all_closed(timeout=10)
    assert relay.upstream.messages == []
    line = relay.proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["end"] in ("client-closed", "client-lost-in-data"), line["_line"]


@pytest.mark.parametrize("how", ["close", "rst"])
def test_client_lost_mid_data_upstream_gets_no_final_dot(make_fake_upstream, make_proxy,
                                                         connect, how):
    up = make_fake_upstream()
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    open_data(c)
    partial = b"Subject: partial\r\n\r\n" + (b"z" * 70 + b"\r\n") * 50
    c.send(partial)
    conn = up.wait_connections(1)[0]
    # Wait until the body reached the upstream, so the abort happens mid-DATA.
    harness.wait_for(lambda: bytes(conn.raw).endswith(partial), 10,
                     what="the partial body upstream")
    if how == "rst":
        c.reset()
    else:
        c.close()
    assert conn.closed.wait(10), "upstream connection not closed after the client left"
    assert conn.peer_closed.is_set()
    raw = bytes(conn.raw)
    assert raw.endswith(partial), raw[-200:]  # nothing appended: no "." line, no QUIT
    assert conn.messages == []


def test_upstream_451_at_end_of_data_is_relayed_exactly(make_fake_upstream, make_proxy,
                                                        connect):
    up = make_fake_upstream(data_end_reply=b"451 4.3.0 Try again later, queue full\r\n")
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    open_data(c)
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    r = c.reply()
    assert r.raw == b"451 4.3.0 Try again later, queue full\r\n", r
    assert c.cmd("QUIT").code == 221


def test_upstream_multiline_error_is_relayed_exactly(make_fake_upstream, make_proxy, connect):
    reply = (b"554-5.7.1 rejected by policy\r\n"
             b"554-5.7.1 see https://example.test/why\r\n"
             b"554 5.7.1 goodbye\r\n")
    up = make_fake_upstream(data_end_reply=reply)
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    open_data(c)
    c.send(b"body\r\n.\r\n")
    assert c.reply().raw == reply


def test_upstream_451_with_smtplib(make_fake_upstream, make_proxy):
    up = make_fake_upstream(data_end_reply=b"451 4.3.0 Try again later\r\n")
    proxy = make_proxy(up.addr)
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=10) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@client.test", ["b@upstream.test"], b"Subject: x\r\n\r\nbody\r\n")
        assert e.value.smtp_code == 451
        assert e.value.smtp_error == b"4.3.0 Try again later"


def test_upstream_garbage_greeting_is_not_relayed(make_fake_upstream, make_proxy, connect):
    up = make_fake_upstream(greeting=b"HTTP/1.1 400 Bad Request\r\n\r\n")
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    r = c.greeting(timeout=5)
    assert 400 <= r.code < 600, r
    assert b"HTTP" not in r.raw, r


def test_upstream_garbage_reply_mid_session(make_fake_upstream, make_proxy, connect):
    up = make_fake_upstream(ehlo_reply=b"250-ok\r\nthis is not smtp\r\n250 done\r\n")
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    assert c.greeting().code == 220
    c.send(b"EHLO client.test\r\n")
    try:
        r = c.reply(timeout=5)
    except harness.Closed:
        return  # closing is an acceptable answer to a broken upstream
    assert 400 <= r.code < 600, r
    assert b"not smtp" not in r.raw, r


def test_max_connections(aio_upstream, make_proxy, connect):
    # No exempt network: loopback (exempt by default) would get the reserve over the cap.
    proxy = make_proxy(aio_upstream.addr, extra={"proxy": {"max_connections": "2"},
                                                 "limits": {"exempt": ""}})
    c1 = connect(proxy.port)
    c2 = connect(proxy.port)
    assert c1.greeting().code == 220
    assert c2.greeting().code == 220
    c3 = connect(proxy.port)
    r = c3.greeting(timeout=5)
    assert r.startswith("421 4.7.0"), r
    c3.wait_closed(5)
    # The first two still work.
    for i, c in enumerate((c1, c2)):
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<c{i}@client.test>").code == 250
        assert c.cmd("RCPT TO:<r@upstream.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"message %d\r\n.\r\n" % i)
        assert c.reply().code == 250
    for c in (c1, c2):
        assert c.cmd("QUIT").code == 221
        c.wait_closed(5)
    got = aio_upstream.wait_messages(2)
    assert sorted(m.content for m in got) == [b"message 0\r\n", b"message 1\r\n"]
    line = proxy.wait_session_line(client=f"127.0.0.1:{c3.local_port}")
    assert line["end"] == "too-many-connections", line["_line"]
    # The refused client never cost an upstream connection.
    assert len(aio_upstream.connections) == 2
    # Once a slot is free again, a new client is served.
    harness.wait_for(lambda: len(proxy.session_lines()) >= 3, 5, what="sessions to end")
    c4 = connect(proxy.port)
    assert c4.greeting().code == 220
