"""SMTP smuggling (CVE-2023-51764 and siblings): a "." line ended by a bare LF or CR.

The upstream here is the kind of receiver that is exploited: it takes LF.LF, CRLF.LF,
LF.CRLF and CR.CR for the end of data and reads what follows as commands. Whatever the
proxy forwards, this upstream must never store a message nor see the smuggled MAIL command.
The client must get "550 5.5.2" for the message; the upstream connection that carried it
is reset (the partial message is discarded) and a new one is opened invisibly, so the
session goes on. Lines that merely end in a bare LF are normalised to CRLF by default
(bare_newline = normalize) and refused with bare_newline = reject.
"""

import re

import pytest

from harness import open_data

SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\n"
            b"RCPT TO:<victim@upstream.test>\r\n"
            b"DATA\r\n"
            b"From: ceo@upstream.test\r\n\r\nsmuggled\r\n")

HEAD = b"From: a@client.test\r\nSubject: s\r\n\r\nhello"

# (id, body up to and including the real end of data, strict): with strict variants the
# real end (CRLF.CRLF) is unambiguous, so exactly one reply (550) must come for the body.
CASES = [
    ("lf-dot-lf", HEAD + b"\n.\n" + SMUGGLED + b".\r\n", True),
    ("crlf-dot-lf", HEAD + b"\r\n.\n" + SMUGGLED + b".\r\n", True),
    ("cr-dot-cr", HEAD + b"\r.\r" + SMUGGLED + b".\r\n", True),
    ("lf-dot-crlf", HEAD + b"\n.\r\n" + SMUGGLED + b".\r\n", False),
    ("bare-lf-only-reject-mode", HEAD + b"\nno dot here\r\n.\r\n", True),
    ("bare-cr-only", HEAD + b"\rno dot here\r\n.\r\n", True),
]

BARE_EOL = re.compile(rb"(?<!\r)\n|\r(?!\n|\Z)")


def check_upstream(up):
    """The upstream stored nothing, saw no smuggled command and no bare CR/LF content."""
    conn = up.wait_closed()  # the proxy aborted the upstream leg
    raw = bytes(conn.raw)
    assert conn.messages == [], conn.messages
    assert b"evil" not in raw, raw
    assert b"victim" not in raw, raw
    head, sep, content = raw.partition(b"DATA\r\n")
    assert sep, raw
    assert not BARE_EOL.search(content), content
    assert not content.endswith(b"\r\n.\r\n"), content
    # Exactly EHLO, MAIL, RCPT, DATA went up as commands.
    assert conn.commands[:4] == [b"EHLO client.test", b"MAIL FROM:<a@client.test>",
                                 b"RCPT TO:<b@upstream.test>", b"DATA"], conn.commands
    assert len(conn.commands) == 4, conn.commands


@pytest.fixture
def lenient(make_fake_upstream, make_proxy):
    up = make_fake_upstream(caps=("PIPELINING", "8BITMIME"), lenient_eod=True)
    return up, make_proxy(up.addr)


@pytest.mark.parametrize("case,body,strict", CASES, ids=[i for i, _, _ in CASES])
def test_smuggling_rejected_and_never_reaches_upstream(make_fake_upstream, make_proxy, connect,
                                                       case, body, strict):
    up = make_fake_upstream(caps=("PIPELINING", "8BITMIME"), lenient_eod=True)
    extra = {"proxy": {"bare_newline": "reject"}} if case.endswith("reject-mode") else None
    proxy = make_proxy(up.addr, extra)
    c = connect(proxy.port)
    open_data(c)
    c.send(body)
    r = c.reply()
    assert r.startswith("550 5.5.2"), r
    if strict:
        r = c.cmd("QUIT")
        assert r.code == 221, r
        c.wait_closed()
    else:
        # Where the real end of data is ambiguous, the smuggled lines may be read as
        # commands by the proxy; then each must be refused without the upstream.
        c.send(b"QUIT\r\n")
        codes = []
        try:
            while True:
                reply = c.reply()
                codes.append(reply.code)
                assert reply.startswith("421 4.4.2") or reply.code == 221, reply
        except Exception as e:  # the proxy closed the connection
            assert c.eof, e
        assert codes and codes[-1] in (221, 421), codes
    check_upstream(up)


def test_after_rejection_the_session_goes_on(lenient, connect):
    up, proxy = lenient
    c = connect(proxy.port)
    open_data(c)
    c.send(HEAD + b"\n.\n" + SMUGGLED + b".\r\n")
    assert c.reply().startswith("550 5.5.2")
    r = c.cmd("NOOP")
    assert r.code == 250, r
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: next\r\n\r\nclean\r\n.\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    check_upstream(up)
    conns = up.wait_connections(2)
    # (this lenient reader takes the CRLF before the dot as part of the end)
    assert [m.content for m in conns[1].messages] == [b"Subject: next\r\n\r\nclean"]
    assert conns[1].commands[0] == b"EHLO client.test", conns[1].commands


def test_smuggling_byte_by_byte(lenient, connect):
    """The bad dot split over many reads is still found."""
    up, proxy = lenient
    c = connect(proxy.port)
    open_data(c)
    for b in HEAD + b"\r\n.\n" + SMUGGLED + b".\r\n":
        c.send(bytes([b]))
    assert c.reply().startswith("550 5.5.2")
    assert c.cmd("QUIT").code == 221
    check_upstream(up)


def test_smuggling_to_aiosmtpd_stores_nothing(relay, connect):
    c = connect(relay.port)
    open_data(c)
    c.send(HEAD + b"\n.\n" + SMUGGLED + b".\r\n")
    assert c.reply().startswith("550 5.5.2")
    assert c.cmd("QUIT").code == 221
    c.wait_closed()
    relay.upstream.wait_all_closed()
    assert relay.upstream.messages == []


def test_clean_message_is_still_delivered(make_fake_upstream, make_proxy, connect):
    """The scanner is not over-eager: CRLF pairs, dots mid-line and stuffed dots pass."""
    up = make_fake_upstream(caps=("PIPELINING", "8BITMIME"))
    proxy = make_proxy(up.addr)
    c = connect(proxy.port)
    open_data(c)
    c.send(b"a.b\r\n..\r\n x.\r\n.x\r\n\r\n.\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert conn.messages[0].content == b"a.b\r\n.\r\n x.\r\nx\r\n\r\n"
