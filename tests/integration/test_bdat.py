"""BDAT (RFC 3030 CHUNKING): chunks relayed by their byte counts, never parsed as lines.

The upstream is a recording fake that advertises (or not) CHUNKING: aiosmtpd has no BDAT.
"""

import pytest

PRELUDE = b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@upstream.test>\r\n"


def start_transaction(c):
    assert c.greeting().code == 220
    r = c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    return r


@pytest.fixture
def chunking(make_fake_upstream, make_proxy):
    up = make_fake_upstream(caps=("PIPELINING", "CHUNKING", "8BITMIME"))
    return up, make_proxy(up.addr)


def test_chunking_is_advertised_to_the_client(chunking, connect):
    up, proxy = chunking
    c = connect(proxy.port)
    r = start_transaction(c)
    assert "CHUNKING" in r.lines, r


def test_two_pipelined_chunks_arrive_byte_exact(chunking, connect):
    up, proxy = chunking
    c = connect(proxy.port)
    start_transaction(c)
    c.send(b"BDAT 5\r\nhelloBDAT 3 LAST\r\nabc")
    r1, r2 = c.replies(2)
    assert r1.code == 250 and b"5 octets #4" in r1.raw, r1
    assert r2.code == 250 and b"3 octets queued #5" in r2.raw, r2
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert bytes(conn.raw) == PRELUDE + b"BDAT 5\r\nhelloBDAT 3 LAST\r\nabcQUIT\r\n"
    [msg] = conn.messages
    assert msg.kind == "BDAT" and msg.content == b"helloabc"


def test_chunk_content_is_opaque(chunking, connect):
    """A chunk holding CRLF.CRLF, bare CR/LF, NUL and command text is data, not commands."""
    up, proxy = chunking
    c = connect(proxy.port)
    start_transaction(c)
    chunk = b"x\r\n.\r\nQUIT\r\n\n.\n\r\x00RSET\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    r = c.reply()
    assert r.code == 250, r
    assert c.cmd("NOOP").code == 250
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert bytes(conn.raw) == (PRELUDE + b"BDAT %d LAST\r\n" % len(chunk) + chunk
                               + b"NOOP\r\nQUIT\r\n")
    assert conn.messages[0].content == chunk


def test_chunks_split_across_writes(chunking, connect):
    up, proxy = chunking
    c = connect(proxy.port)
    start_transaction(c)
    payload = bytes(range(256)) * 64  # 16 KiB, every byte value
    c.send(b"BDAT %d\r\n" % len(payload))
    for i in range(0, len(payload), 1000):
        c.send(payload[i:i + 1000])
    assert c.reply().code == 250
    c.send(b"BDAT 0 LAST\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert conn.messages[0].content == payload


def test_bdat_without_upstream_chunking_is_refused_and_chunk_swallowed(make_fake_upstream,
                                                                        make_proxy, connect):
    up = make_fake_upstream(caps=("PIPELINING", "8BITMIME"))
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    r = start_transaction(c)
    assert "CHUNKING" not in r.lines, r
    # The chunk is "QUIT\r\n": if the proxy did not swallow it, it would become a command.
    c.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    r1, r2 = c.replies(2)
    assert r1.startswith("502 5.5.1"), r1
    assert r2.code == 250 and b"#4" in r2.raw, r2  # the upstream's 4th command: NOOP
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert bytes(conn.raw) == PRELUDE + b"NOOP\r\nQUIT\r\n"
    assert conn.messages == []
