"""Byte-identical delivery through the proxy to aiosmtpd, with smtplib, swaks and raw bytes.

aiosmtpd records the envelope and envelope.original_content: the raw bytes it received,
dot-unstuffed. Each test compares them with what the client meant to send.
"""

import smtplib

import pytest

import harness

FROM = "sender@client.test"
TO = ["rcpt1@upstream.test", "rcpt2@upstream.test"]

SIMPLE = (b"From: sender@client.test\r\n"
          b"To: rcpt1@upstream.test\r\n"
          b"Subject: simple\r\n"
          b"\r\n"
          b"Hello through the proxy.\r\n")

# Lines that only survive if dot-stuffing is left alone by the proxy and undone by the
# upstream: ".", "..", ".x", "...", and ". " (a dot then a space).
DOTS = (b"Subject: dots\r\n"
        b"\r\n"
        b".\r\n"
        b"..\r\n"
        b".x\r\n"
        b"...\r\n"
        b". \r\n"
        b"middle\r\n"
        b".\r\n"
        b"end\r\n")

EIGHT_BIT = (b"Subject: 8-bit\r\n"
             b"Content-Type: application/octet-stream\r\n"
             b"\r\n"
             + bytes(range(0x80, 0xC0)) + b"\r\n"
             + bytes(range(0xC0, 0x100)) + b"\r\n"
             + "caf\u00e9 \u65e5\u672c\u8a9e".encode("utf-8") + b"\r\n"
             + b"\x01\x02\x7f tab\there\r\n")


def big_body(size):
    """A message of about |size| bytes of 78-octet CRLF lines, dot-led lines included."""
    lines = [b"Subject: big\r\n", b"\r\n"]
    total = 16
    i = 0
    while total < size:
        if i % 97 == 0:
            line = b"." + (b"%08d" % i) * 9 + b"\r\n"
        else:
            line = (b"%08d" % i) * 9 + b"ABCDEF\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)


def send_smtplib(port, messages, host="127.0.0.1"):
    """Sends [(from, [to], bytes)] in one session; returns smtplib's per-message results."""
    results = []
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as s:
        code, _ = s.ehlo()
        assert code == 250
        for mail_from, rcpts, body in messages:
            results.append(s.sendmail(mail_from, rcpts, body))
        code, _ = s.quit()
        assert code == 221
    return results


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def assert_delivered(msg, mail_from, rcpts, content):
    assert msg.mail_from == mail_from
    assert msg.rcpt_tos == rcpts
    assert msg.content == content, (
        f"content differs: {len(msg.content)} bytes received, {len(content)} sent; first "
        f"difference at offset {first_difference(msg.content, content)}")


@pytest.mark.parametrize("body", [SIMPLE, DOTS, EIGHT_BIT], ids=["simple", "dots", "8bit"])
def test_smtplib_delivery_is_byte_identical(relay, body):
    results = send_smtplib(relay.port, [(FROM, TO, body)])
    assert results == [{}]  # every recipient accepted
    [msg] = relay.upstream.wait_messages(1)
    assert_delivered(msg, FROM, TO, body)
    # The upstream saw the proxy, not the client, as its peer.
    assert msg.peer[0] == "127.0.0.1"


def test_smtplib_10_mib_body_is_byte_identical(relay):
    body = big_body(10 * 1024 * 1024)
    send_smtplib(relay.port, [(FROM, TO[:1], body)])
    [msg] = relay.upstream.wait_messages(1, timeout=60)
    assert_delivered(msg, FROM, TO[:1], body)


def test_several_messages_in_one_session(relay):
    messages = [
        ("a@client.test", ["x@upstream.test"], SIMPLE),
        ("b@client.test", ["y@upstream.test", "z@upstream.test"], DOTS),
        ("", ["postmaster@upstream.test"], EIGHT_BIT),  # null reverse-path (a bounce)
    ]
    send_smtplib(relay.port, messages)
    got = relay.upstream.wait_messages(3)
    assert len(got) == 3
    for msg, (mail_from, rcpts, body) in zip(got, messages):
        assert_delivered(msg, mail_from or "<>", rcpts, body)  # aiosmtpd keeps "<>"
    # All three went over one upstream connection, as the client used one session.
    assert len(relay.upstream.connections) == 1


def test_rset_between_transactions(relay):
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.mail("abandoned@client.test")[0] == 250
        assert s.rcpt("nobody@upstream.test")[0] == 250
        assert s.rset()[0] == 250
        s.sendmail(FROM, TO, SIMPLE)
        s.quit()
    [msg] = relay.upstream.wait_messages(1)
    assert_delivered(msg, FROM, TO, SIMPLE)


def swaks_twice(relay, tmp_path, body, rcpts, extra=()):
    """Sends |body| with swaks straight to aiosmtpd (the reference), then through the proxy.

    Returns (direct, proxied) deliveries. swaks ends the data with CRLF "." CRLF after the
    file's own final CRLF, so the stored content is the file plus one CRLF either way.
    """
    path = tmp_path / "message.eml"
    path.write_bytes(body)
    rc, out = harness.run_swaks(relay.upstream.port, path, rcpts, extra=extra,
                                mail_from=FROM)
    assert rc == 0, out[-3000:]
    [direct] = relay.upstream.wait_messages(1, timeout=60)
    rc, out = harness.run_swaks(relay.port, path, rcpts, extra=extra, mail_from=FROM)
    assert rc == 0, out[-3000:]
    if not extra:
        assert "<-  250 2.0.0 Message accepted for delivery" in out, out
    direct, proxied = relay.upstream.wait_messages(2, timeout=60)
    return direct, proxied


@pytest.mark.parametrize("body", [SIMPLE, DOTS, EIGHT_BIT], ids=["simple", "dots", "8bit"])
def test_swaks_delivery_is_byte_identical(relay, tmp_path, body):
    direct, proxied = swaks_twice(relay, tmp_path, body, TO)
    assert_delivered(direct, FROM, TO, body + b"\r\n")  # what swaks sends (see above)
    assert_delivered(proxied, FROM, TO, direct.content)


def test_swaks_10_mib_body(relay, tmp_path):
    body = big_body(10 * 1024 * 1024)
    direct, proxied = swaks_twice(relay, tmp_path, body, TO[:1], extra=["--hide-all"])
    assert_delivered(direct, FROM, TO[:1], body + b"\r\n")
    assert_delivered(proxied, FROM, TO[:1], direct.content)


def test_pipelined_transaction_raw(relay, connect):
    c = connect(relay.port)
    assert c.greeting().code == 220
    c.ehlo()
    c.send(b"MAIL FROM:<p@client.test>\r\n"
           b"RCPT TO:<r1@upstream.test>\r\n"
           b"RCPT TO:<r2@upstream.test>\r\n"
           b"DATA\r\n")
    replies = c.replies(4)
    assert [r.code for r in replies] == [250, 250, 250, 354], replies
    body = b"Subject: pipelined\r\n\r\nbody\r\n"
    c.send(body + b".\r\n")
    r = c.reply()
    assert r.code == 250, r
    # A second transaction, its end of data pipelined with QUIT.
    c.send(b"MAIL FROM:<q@client.test>\r\nRCPT TO:<r3@upstream.test>\r\nDATA\r\n")
    assert [r.code for r in c.replies(3)] == [250, 250, 354]
    c.send(b"second\r\n.\r\nQUIT\r\n")
    final, bye = c.replies(2)
    assert final.code == 250 and bye.code == 221, (final, bye)
    c.wait_closed()
    got = relay.upstream.wait_messages(2)
    assert_delivered(got[0], "p@client.test", ["r1@upstream.test", "r2@upstream.test"], body)
    assert_delivered(got[1], "q@client.test", ["r3@upstream.test"], b"second\r\n")


def test_empty_message_and_data_end_split_at_every_byte(relay, connect):
    """The end-of-data marker split across writes (each byte its own TCP segment)."""
    c = connect(relay.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("MAIL FROM:<s@client.test>").code == 250
    assert c.cmd("RCPT TO:<t@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    for b in b"a\r\n..\r\n..\r\n.\r\n":  # content "a", ".", "." then the end marker
        c.send(bytes([b]))
    r = c.reply()
    assert r.code == 250, r
    assert c.cmd("MAIL FROM:<>").code == 250
    assert c.cmd("RCPT TO:<u@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b".\r\n")  # an empty message
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    got = relay.upstream.wait_messages(2)
    assert got[0].content == b"a\r\n.\r\n.\r\n"
    assert got[1].content == b""
    assert got[1].mail_from == "<>"


def test_parallel_sessions_on_two_workers(aio_upstream, make_proxy):
    """Sessions in parallel on two event loops do not mix their bytes."""
    import threading

    proxy = make_proxy(aio_upstream.addr, extra={"proxy": {"workers": "2"}})
    errors = []

    def client(n):
        try:
            msgs = [(f"s{n}@client.test", [f"r{n}.{i}@upstream.test"],
                     b"Subject: %d.%d\r\n\r\n" % (n, i) + (b"%d-%d line\r\n" % (n, i)) * 500)
                    for i in range(3)]
            send_smtplib(proxy.port, msgs)
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    got = aio_upstream.wait_messages(24)
    by_rcpt = {m.rcpt_tos[0]: m for m in got}
    for n in range(8):
        for i in range(3):
            m = by_rcpt[f"r{n}.{i}@upstream.test"]
            assert m.mail_from == f"s{n}@client.test"
            assert m.content == (b"Subject: %d.%d\r\n\r\n" % (n, i)
                                 + (b"%d-%d line\r\n" % (n, i)) * 500)
