"""Protecting the legacy server: command line cap, path cap, NUL and CR in commands.

Refused lines get the proxy's own 5xx, are never forwarded (the recording upstream's raw
bytes prove it), and the session stays in sync: exactly one reply per line, in order.
"""

import pytest

EHLO = b"EHLO client.test\r\n"


@pytest.fixture
def limited(make_fake_upstream, make_proxy, connect):
    up = make_fake_upstream(caps=("PIPELINING", "8BITMIME"))
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    assert c.greeting().code == 220
    c.ehlo()
    return up, proxy, c


def finish(up, c):
    """QUIT, then the raw bytes the upstream received on this session's connection."""
    assert c.cmd("QUIT").code == 221
    return bytes(up.wait_closed().raw)


def noop_line(total):
    """A NOOP command line of exactly |total| octets, CRLF included."""
    line = b"NOOP " + b"x" * (total - 7) + b"\r\n"
    assert len(line) == total
    return line


def test_line_over_1000_octets_is_refused_not_forwarded(limited):
    up, proxy, c = limited
    c.send(noop_line(1001))
    r = c.reply()
    assert r.startswith("500 5.5.2"), r
    r = c.cmd("NOOP")
    assert r.code == 250 and b"#2" in r.raw, r  # the upstream's second command
    raw = finish(up, c)
    assert raw == EHLO + b"NOOP\r\nQUIT\r\n", raw[:300]


def test_line_of_exactly_1000_octets_is_forwarded(limited):
    up, proxy, c = limited
    line = noop_line(1000)
    c.send(line)
    r = c.reply()
    assert r.code == 250 and b"#2" in r.raw, r
    raw = finish(up, c)
    assert raw == EHLO + line + b"QUIT\r\n", raw[:300]


def test_very_long_line_in_pieces_gets_one_reply(limited):
    up, proxy, c = limited
    c.send(b"MAIL FROM:<")
    for _ in range(100):
        c.send(b"y" * 1000)
    c.send(b"@client.test>\r\nNOOP\r\n")
    r1, r2 = c.replies(2)
    assert r1.startswith("500 5.5.2"), r1
    assert r2.code == 250 and b"#2" in r2.raw, r2
    raw = finish(up, c)
    assert raw == EHLO + b"NOOP\r\nQUIT\r\n", raw[:300]


def path(n):
    """An angle-bracketed path of exactly |n| octets, brackets included."""
    domain = b"@example.test"
    p = b"<" + b"l" * (n - 2 - len(domain)) + domain + b">"
    assert len(p) == n
    return p


def test_mail_path_of_257_octets_is_refused(limited):
    up, proxy, c = limited
    r = c.cmd(b"MAIL FROM:" + path(257))
    assert r.startswith("501 5.1.7"), r
    raw = finish(up, c)
    assert raw == EHLO + b"QUIT\r\n", raw[:400]


def test_rcpt_path_of_257_octets_is_refused(limited):
    up, proxy, c = limited
    assert c.cmd(b"MAIL FROM:<a@client.test>").code == 250
    r = c.cmd(b"RCPT TO:" + path(257))
    assert r.startswith("501 5.1.3"), r
    raw = finish(up, c)
    assert raw == EHLO + b"MAIL FROM:<a@client.test>\r\nQUIT\r\n", raw[:400]


def test_paths_of_256_octets_are_forwarded(limited):
    up, proxy, c = limited
    mail = b"MAIL FROM:" + path(256) + b" SIZE=100\r\n"
    rcpt = b"RCPT TO:" + path(256) + b"\r\n"
    c.send(mail)
    assert c.reply().code == 250
    c.send(rcpt)
    assert c.reply().code == 250
    raw = finish(up, c)
    assert raw == EHLO + mail + rcpt + b"QUIT\r\n", raw[:800]


@pytest.mark.parametrize("line", [
    b"NOOP a\x00b\r\n",
    b"\x00NOOP\r\n",
    b"RCPT TO:<a@b.test>\x00RCPT TO:<c@d.test>\r\n",  # a NUL must not split a line
    b"NOOP a\rb\r\n",  # a bare CR inside a command
], ids=["nul-inside", "nul-first", "nul-splitting", "bare-cr"])
def test_nul_or_cr_in_command_is_refused_not_forwarded(limited, line):
    up, proxy, c = limited
    assert c.cmd(b"MAIL FROM:<a@client.test>").code == 250
    c.send(line)
    r = c.reply()
    assert r.startswith("500 5.5.2"), r
    r = c.cmd("NOOP")
    assert r.code == 250 and b"#3" in r.raw, r
    raw = finish(up, c)
    assert raw == EHLO + b"MAIL FROM:<a@client.test>\r\nNOOP\r\nQUIT\r\n", raw


def test_pipelined_mix_gets_one_reply_per_line_in_order(limited):
    up, proxy, c = limited
    lines = [
        (b"NOOP\r\n", 250, b"#2"),
        (noop_line(1001), 500, None),
        (b"MAIL FROM:<a@client.test>\r\n", 250, b"#3"),
        (b"RCPT TO:" + path(257) + b"\r\n", 501, None),
        (b"RCPT TO:<b@upstream.test>\r\n", 250, b"#4"),
        (b"NOOP \x00\r\n", 500, None),
        (b"RCPT TO:<c@upstream.test>\r\n", 250, b"#5"),
        (b"RSET\r\n", 250, b"#6"),
        (b"MAIL FROM:" + path(257) + b"\r\n", 501, None),
        (b"NOOP\r\n", 250, b"#7"),
    ]
    c.send(b"".join(line for line, _, _ in lines))
    replies = c.replies(len(lines))
    for (line, code, tag), r in zip(lines, replies):
        assert r.code == code, (line[:40], r)
        if tag is not None:
            assert tag in r.raw, (line[:40], r)  # relayed from the upstream, in order
    raw = finish(up, c)
    forwarded = b"".join(line for line, _, tag in lines if tag is not None)
    assert raw == EHLO + forwarded + b"QUIT\r\n", raw
