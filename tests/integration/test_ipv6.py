"""IPv6: a listener on [::1] next to one on 127.0.0.1, and an upstream on [::1]."""

import smtplib

import pytest

import harness

pytestmark = pytest.mark.skipif(not harness.ipv6_loopback_available(),
                                reason="::1 is not configured on this machine")

BODY = b"Subject: v6\r\n\r\nover IPv6\r\n"


def test_deliver_through_ipv6_listener(aio_upstream, make_proxy):
    v4 = harness.free_port()
    v6 = harness.free_port("::1")
    proxy = make_proxy(aio_upstream.addr, listen=[f"127.0.0.1:{v4}", f"[::1]:{v6}"])
    with smtplib.SMTP("::1", v6, local_hostname="client.test", timeout=30) as s:
        s.sendmail("a@client.test", ["b@upstream.test"], BODY)
        client_port = s.sock.getsockname()[1]
        s.quit()
    # The IPv4 listener works too.
    with smtplib.SMTP("127.0.0.1", v4, local_hostname="client.test", timeout=30) as s:
        s.sendmail("c@client.test", ["d@upstream.test"], BODY)
        s.quit()
    got = aio_upstream.wait_messages(2)
    assert [(m.mail_from, m.rcpt_tos, m.content) for m in got] == [
        ("a@client.test", ["b@upstream.test"], BODY),
        ("c@client.test", ["d@upstream.test"], BODY)]
    line = proxy.wait_session_line(client=f"[::1]:{client_port}")
    assert line["messages"] == "1", line["_line"]


def test_ipv6_upstream(make_aio_upstream, make_proxy):
    up = make_aio_upstream(host="::1")
    proxy = make_proxy(up.addr)
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=30) as s:
        s.sendmail("a@client.test", ["b@upstream.test"], BODY)
        s.quit()
    [msg] = up.wait_messages(1)
    assert msg.content == BODY
    assert msg.peer[0] == "::1"
    proxy.wait_session_line(upstream=f"[::1]:{up.port}")
