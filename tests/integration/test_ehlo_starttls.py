"""EHLO reply rewriting (STARTTLS stripped on leg 1) and a client's STARTTLS.

The upstream is aiosmtpd with a TLS context, so it advertises STARTTLS (without requiring
it); with [client_tls] starttls = strip the client must never see it, and a client's
STARTTLS is answered by the proxy and never forwarded.
"""

import smtplib

import harness


def direct_ehlo(upstream, name="client.test"):
    with harness.SmtpConn(upstream.host, upstream.port) as c:
        c.greeting()
        r = c.ehlo(name)
        c.cmd("QUIT")
        return r


def test_ehlo_reply_loses_starttls_and_keeps_the_rest(make_aio_upstream, make_proxy, connect):
    up = make_aio_upstream(starttls=True)
    direct = direct_ehlo(up)
    assert "STARTTLS" in [line.upper() for line in direct.lines], direct  # the premise

    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    assert c.greeting().code == 220
    r = c.ehlo()
    assert r.code == 250
    assert all(line.split(" ")[0].upper() != "STARTTLS" for line in r.lines), r
    # Every capability other than STARTTLS is relayed unchanged and in order.
    expected = [line for line in direct.lines[1:] if line.upper() != "STARTTLS"]
    assert r.lines[1:] == expected, (r.raw, direct.raw)
    # Wire format: "250-" on all lines but the last, "250 " on the last.
    raw_lines = r.raw.split(b"\r\n")[:-1]
    assert all(line.startswith(b"250-") for line in raw_lines[:-1]), r.raw
    assert raw_lines[-1].startswith(b"250 "), r.raw
    assert c.cmd("QUIT").code == 221
    up.wait_all_closed()
    assert up.starttls_commands == 0


def test_ehlo_reply_with_starttls_last_line(make_fake_upstream, make_proxy, connect):
    """STARTTLS as the last capability: the new last line must become "250 "."""
    up = make_fake_upstream(caps=("PIPELINING", "8BITMIME", "STARTTLS"))
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    c.greeting()
    r = c.ehlo()
    assert r.raw == (b"250-fake.test greets client.test\r\n"
                     b"250-PIPELINING\r\n"
                     b"250 8BITMIME\r\n"), r.raw


def test_smtplib_sees_no_starttls(make_aio_upstream, make_proxy):
    up = make_aio_upstream(starttls=True)
    proxy = make_proxy(up.addr)
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert not s.has_extn("starttls"), s.esmtp_features
        assert s.has_extn("8bitmime") and s.has_extn("size"), s.esmtp_features
        s.quit()


def test_client_starttls_is_refused_locally_and_session_goes_on(make_aio_upstream, make_proxy,
                                                                connect):
    up = make_aio_upstream(starttls=True)
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    r = c.cmd("STARTTLS")
    assert r.startswith("502 5.5.1"), r
    # The session goes on in cleartext: a message is still delivered.
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: after starttls\r\n\r\nstill here\r\n.\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    [msg] = up.wait_messages(1)
    assert msg.content == b"Subject: after starttls\r\n\r\nstill here\r\n"
    up.wait_all_closed()
    assert up.starttls_commands == 0, "STARTTLS was forwarded upstream"


def test_client_starttls_never_reaches_upstream_bytes(make_fake_upstream, make_proxy, connect):
    """With a recording upstream: not one byte of STARTTLS goes upstream, and the command
    pipelined after it is relayed as an ordinary command."""
    up = make_fake_upstream(caps=("PIPELINING", "STARTTLS"))
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    c.send(b"STARTTLS\r\nNOOP\r\n")
    r1, r2 = c.replies(2)
    assert r1.startswith("502 5.5.1"), r1
    assert r2.code == 250, r2
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"STARTTLS" not in bytes(conn.raw).upper(), bytes(conn.raw)
    assert bytes(conn.raw) == b"EHLO client.test\r\nNOOP\r\nQUIT\r\n"


def test_helo_is_relayed(relay, connect):
    c = connect(relay.port)
    c.greeting()
    r = c.cmd("HELO client.test")
    assert r.code == 250, r
    assert c.cmd("MAIL FROM:<h@client.test>").code == 250
    assert c.cmd("RCPT TO:<r@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"helo body\r\n.\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    [msg] = relay.upstream.wait_messages(1)
    assert msg.content == b"helo body\r\n"


def test_greeting_is_relayed_exactly(make_fake_upstream, make_proxy, connect):
    greeting = b"220-fake.test first line\r\n220 fake.test ESMTP second line\r\n"
    up = make_fake_upstream(greeting=greeting)
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    assert c.greeting().raw == greeting
    assert c.cmd("QUIT").code == 221
