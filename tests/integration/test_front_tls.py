"""Leg 1 STARTTLS (issue 3): the proxy is the TLS server towards clients.

Real clients (openssl s_client -starttls smtp, swaks --tls, smtplib.starttls(), python ssl
sockets) talk to the real binary; the upstream is aiosmtpd in cleartext (or advertising
STARTTLS), or the recording fake upstream when the exact commands it received matter.

Covered here: the STARTTLS offer in the EHLO reply, delivery over TLS (byte-identical), the
EHLO after the handshake, every refusal (503 / 501 / 502 / 530), the injection of commands
after STARTTLS (RFC 3207 section 6), strip mode, require = on, certificates (configured RSA
and ECDSA, the self-signed default), protocol versions and ciphers, the session line, and
certificate reload on SIGHUP. Learning failing clients: test_front_tls_learning.py.
"""

import os
import re
import signal
import socket
import smtplib
import ssl
import subprocess
import threading
import time

import pytest

import harness
from harness import client_tls_extra, starttls_lines

FROM = "sender@client.test"
TO = ["rcpt1@upstream.test", "rcpt2@upstream.test"]

SIMPLE = (b"From: sender@client.test\r\n"
          b"To: rcpt1@upstream.test\r\n"
          b"Subject: over TLS\r\n"
          b"\r\n"
          b"Hello through the proxy, encrypted on the client's leg.\r\n")

DOTS = (b"Subject: dots over TLS\r\n"
        b"\r\n"
        b".\r\n"
        b"..\r\n"
        b".x\r\n"
        b"middle\r\n"
        b"caf\xc3\xa9 \xff\x80 8-bit\r\n"
        b"end\r\n")

# TLS 1.2 cipher names: python (OpenSSL) names them one way; the log may use either the
# OpenSSL name or the IANA one.
IANA = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
}


def offer_proxy(make_proxy, upstream_addr, pairs=(), extra=None, **client_tls):
    """A started proxy with [client_tls] starttls = offer and the given certificates."""
    return make_proxy(upstream_addr,
                      extra=harness.merge_sections(client_tls_extra(pairs, **client_tls),
                                                   extra))


def tls_session(connect, port, context=None, source=None, ehlo=True):
    """A raw client (from the |connect| fixture) that did EHLO, STARTTLS (220 2.0.0), the
    handshake and (by default) the second EHLO. Returns (conn, post_tls_ehlo_reply)."""
    c = connect(port, source=source)
    assert c.greeting().code == 220
    r = c.ehlo()
    assert len(starttls_lines(r)) == 1, r
    c.starttls(context)
    r2 = c.ehlo("client.test") if ehlo else None
    return c, r2


def peer_der_of_new_session(connect, port, context=None):
    """The certificate a new client gets from the proxy (then QUIT)."""
    c, _ = tls_session(connect, port, context, ehlo=False)
    try:
        der = c.peer_der()
        assert c.cmd("QUIT").code == 221
        return der
    finally:
        c.close()


def send_message(c, body, mail_from=FROM, rcpts=("rcpt1@upstream.test",)):
    """MAIL/RCPT/DATA with |body| (dot-stuffed here) on a raw connection."""
    r = c.cmd(f"MAIL FROM:<{mail_from}>")
    assert r.code == 250, r
    for rcpt in rcpts:
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code == 250, r
    r = c.cmd("DATA")
    assert r.code == 354, r
    stuffed = b"".join(b"." + line if line.startswith(b".") else line
                       for line in body.splitlines(keepends=True))
    c.send(stuffed + b".\r\n")
    r = c.reply()
    assert r.code == 250, r
    return r


def sclient_done(s):
    """Waits for s_client to exit after QUIT. Its exit status is 1 when the proxy closes
    without close_notify ("unexpected eof while reading"): that is checked on its own by
    test_quit_inside_tls_ends_with_close_notify, so here only other errors count."""
    s.finish()
    errors = [line for line in s.stderr().splitlines()
              if ":error:" in line and "unexpected eof while reading" not in line]
    assert not errors, s.stderr()


def assert_no_starttls(reply):
    assert starttls_lines(reply) == [], reply.raw


def assert_ehlo_wire_format(reply):
    raw_lines = reply.raw.split(b"\r\n")[:-1]
    assert all(line.startswith(b"250-") for line in raw_lines[:-1]), reply.raw
    assert raw_lines[-1].startswith(b"250 "), reply.raw


# --------------------------------------------------------------------------------------
# The offer in the EHLO reply
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("caps", [
    ("PIPELINING", "8BITMIME"),
    ("PIPELINING", "STARTTLS", "8BITMIME"),
    ("PIPELINING", "8BITMIME", "STARTTLS"),
    ("STARTTLS",),
    ("STARTTLS", "PIPELINING", "STARTTLS"),
], ids=["upstream-without", "upstream-with-middle", "upstream-with-last", "only-starttls",
        "upstream-with-twice"])
def test_ehlo_advertises_starttls_exactly_once(make_fake_upstream, make_proxy, front_certs,
                                               connect, caps):
    up = make_fake_upstream(caps=caps)
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    assert c.greeting().code == 220
    r = c.ehlo()
    assert r.lines[0] == "fake.test greets client.test", r.raw
    assert len(starttls_lines(r)) == 1, r.raw
    assert starttls_lines(r) == ["STARTTLS"], r.raw
    # The upstream's other capabilities are passed on unchanged and in order.
    others = [line for line in r.lines[1:] if line.upper() != "STARTTLS"]
    assert others == [cap for cap in caps if cap != "STARTTLS"], r.raw
    assert_ehlo_wire_format(r)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert conn.commands == [b"EHLO client.test", b"QUIT"], conn.commands


@pytest.mark.parametrize("reply", [b"502 5.5.2 EHLO not here\r\n",
                                   b"421 4.3.0 busy\r\n"], ids=["502", "421"])
def test_ehlo_error_reply_is_not_given_starttls(make_fake_upstream, make_proxy, front_certs,
                                                connect, reply):
    up = make_fake_upstream(ehlo_reply=reply)
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    r = c.cmd("EHLO client.test")
    assert r.raw == reply, r.raw


def test_starttls_advertising_upstream_never_sees_starttls(make_aio_upstream, make_proxy,
                                                           front_certs, connect):
    """aiosmtpd advertises STARTTLS itself; the client's STARTTLS is the proxy's business."""
    up = make_aio_upstream(starttls=True)
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c, r = tls_session(connect, proxy.port)
    assert_no_starttls(r)
    # The certificate is the proxy's, not aiosmtpd's (CN=localhost).
    assert c.peer_der() == harness.cert_der(front_certs["ec"][0])
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    [msg] = up.wait_messages(1)
    assert msg.content == SIMPLE
    up.wait_all_closed()
    assert up.starttls_commands == 0, "the client's STARTTLS was forwarded upstream"
    assert all(conn.starttls == 0 for conn in up.connections)


# --------------------------------------------------------------------------------------
# Delivery over STARTTLS with real clients
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("maximum,version", [(None, "TLSv1.3"),
                                             (ssl.TLSVersion.TLSv1_2, "TLSv1.2")],
                         ids=["tls13", "tls12"])
def test_smtplib_starttls_delivers_byte_identical(aio_upstream, make_proxy, front_certs,
                                                  maximum, version):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    ctx = harness.tls_client_context(maximum=maximum)
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls"), s.esmtp_features
        code, text = s.starttls(context=ctx)
        assert code == 220 and text.startswith(b"2.0.0"), (code, text)
        assert s.sock.version() == version
        code, _ = s.ehlo()
        assert code == 250
        assert not s.has_extn("starttls"), s.esmtp_features
        assert s.has_extn("8bitmime"), s.esmtp_features
        assert s.sendmail(FROM, TO, SIMPLE) == {}
        assert s.sendmail(FROM, TO[:1], DOTS) == {}
        code, _ = s.quit()
        assert code == 221
    first, second = aio_upstream.wait_messages(2)
    assert (first.mail_from, first.rcpt_tos, first.content) == (FROM, TO, SIMPLE)
    assert (second.mail_from, second.rcpt_tos, second.content) == (FROM, TO[:1], DOTS)
    aio_upstream.wait_all_closed()
    assert aio_upstream.starttls_commands == 0
    line = proxy.wait_session_line(starttls="used")
    assert line["front_tls"] == version, line["_line"]


@pytest.mark.parametrize("args,version", [((), "TLSv1.3"), (("-tls1_2",), "TLSv1.2")],
                         ids=["tls13", "tls12"])
def test_sclient_starttls_delivers_byte_identical(aio_upstream, make_proxy, front_certs,
                                                  sclient, args, version):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c = sclient(proxy.port, args=args)
    info = c.wait_established()
    assert info.get("Protocol version") == version, c.stderr()
    assert info.get("Peer certificate") == "CN = ec.proxy.test", c.stderr()
    r = c.cmd("EHLO client.test")
    assert r.code == 250, r
    assert_no_starttls(r)
    assert c.cmd(f"MAIL FROM:<{FROM}>").code == 250
    assert c.cmd("RCPT TO:<rcpt1@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    # s_client turns each LF into CRLF (-crlf); "..x" is the dot-stuffed ".x".
    for line in ("Subject: s_client", "", "first line", "..x", "...", "last line"):
        c.send_line(line)
    r = c.cmd(".")
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221
    sclient_done(c)
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == b"Subject: s_client\r\n\r\nfirst line\r\n.x\r\n..\r\nlast line\r\n"
    assert msg.rcpt_tos == ["rcpt1@upstream.test"]
    aio_upstream.wait_all_closed()
    assert aio_upstream.starttls_commands == 0


@pytest.mark.parametrize("extra,version", [((), "TLSv1.3"),
                                           (("--tls-protocol", "tlsv1_2"), "TLSv1.2")],
                         ids=["tls13", "tls12"])
@pytest.mark.parametrize("body", [SIMPLE, DOTS], ids=["simple", "dots"])
def test_swaks_tls_delivers_byte_identical(aio_upstream, make_proxy, front_certs, tmp_path,
                                           extra, version, body):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    path = tmp_path / "message.eml"
    path.write_bytes(body)
    # The reference: swaks straight to aiosmtpd, in cleartext.
    rc, out = harness.run_swaks(aio_upstream.port, path, TO, mail_from=FROM)
    assert rc == 0, out[-3000:]
    [direct] = aio_upstream.wait_messages(1)
    rc, out = harness.run_swaks(proxy.port, path, TO, extra=["--tls", *extra],
                                mail_from=FROM)
    assert rc == 0, out[-3000:]
    assert f"=== TLS started with cipher {version}:" in out, out
    assert 'TLS peer DN="/CN=ec.proxy.test"' in out, out
    # The EHLO reply inside TLS (swaks marks it "<~") has no STARTTLS.
    assert not re.search(r"^<~ +250[ -]STARTTLS", out, re.M), out
    assert "<~  250 2.0.0 Message accepted for delivery" in out, out
    direct, proxied = aio_upstream.wait_messages(2)
    assert direct.content == body + b"\r\n"  # swaks adds CRLF before its "."
    assert (proxied.mail_from, proxied.rcpt_tos) == (FROM, TO)
    assert proxied.content == direct.content
    aio_upstream.wait_all_closed()
    assert aio_upstream.starttls_commands == 0


# --------------------------------------------------------------------------------------
# After the handshake: the new EHLO, and what is refused before it
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("caps", [
    ("PIPELINING", "STARTTLS", "8BITMIME"),
    ("PIPELINING", "8BITMIME"),
    ("PIPELINING", "8BITMIME", "starttls"),
], ids=["upstream-with", "upstream-without", "upstream-lowercase-last"])
def test_post_tls_ehlo_goes_upstream_without_starttls(make_fake_upstream, make_proxy,
                                                      front_certs, connect, caps):
    up = make_fake_upstream(caps=caps)
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    assert c.greeting().code == 220
    assert len(starttls_lines(c.ehlo("first.test"))) == 1
    r = c.cmd("STARTTLS")
    assert r.startswith("220 2.0.0 Ready to start TLS"), r
    assert r.raw.count(b"\r\n") == 1, r.raw
    c.start_tls()
    assert c.tls_version() == "TLSv1.3"
    r = c.ehlo("second.test")
    # The upstream's reply to the second EHLO, rewritten: no STARTTLS.
    assert r.lines == ["fake.test greets second.test", "PIPELINING", "8BITMIME"], r.raw
    assert_ehlo_wire_format(r)
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert conn.commands == [b"EHLO first.test", b"EHLO second.test",
                             b"MAIL FROM:<sender@client.test>",
                             b"RCPT TO:<rcpt1@upstream.test>", b"DATA", b"QUIT"], conn.commands
    assert b"STARTTLS" not in bytes(conn.raw).upper()
    [msg] = up.messages()
    assert msg.content == SIMPLE


def test_post_tls_ehlo_when_starttls_was_the_only_capability(make_fake_upstream, make_proxy,
                                                             front_certs, connect):
    """The rewritten reply loses its last line: the first line becomes "250 "."""
    up = make_fake_upstream(caps=("STARTTLS",))
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c, r = tls_session(connect, proxy.port)
    assert r.raw == b"250 fake.test greets client.test\r\n", r.raw
    assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("greet", ["EHLO", "HELO"])
def test_commands_before_the_new_ehlo_get_503(make_fake_upstream, make_proxy, front_certs,
                                              connect, greet):
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c, _ = tls_session(connect, proxy.port, ehlo=False)
    try:
        for command in ("MAIL FROM:<early@client.test>", "RCPT TO:<early@upstream.test>",
                        "DATA", "VRFY early"):  # BDAT: test_bdat_refused_503_...
            r = c.cmd(command)
            assert r.startswith("503 5.5.1"), (command, r)
        assert c.cmd("NOOP").code == 250
        assert c.cmd("RSET").code == 250
        r = c.cmd(f"{greet} again.test")
        assert r.code == 250, r
        if greet == "EHLO":
            assert_no_starttls(r)
        send_message(c, SIMPLE)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    conn = up.wait_closed()
    assert b"early" not in bytes(conn.raw), bytes(conn.raw)
    assert f"{greet} again.test".encode() in conn.commands, conn.commands
    [msg] = up.messages()
    assert msg.content == SIMPLE


def test_quit_before_the_new_ehlo_is_answered(aio_upstream, make_proxy, front_certs, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c, _ = tls_session(connect, proxy.port, ehlo=False)
    try:
        assert c.cmd("QUIT").code == 221
        assert c.wait_eof() == b""
    finally:
        c.close()


def test_quit_inside_tls_ends_with_close_notify(aio_upstream, make_proxy, front_certs,
                                                connect):
    """RFC 8446 section 6.1: each party sends close_notify before closing its write side;
    without it the client cannot tell the end of the session from a truncation."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.start_tls(harness.tls_client_context(strict_eof=True), suppress_ragged_eofs=False)
    c.ehlo()
    assert c.cmd("QUIT").code == 221
    c.sock.settimeout(10)
    try:
        rest = c.sock.recv(100)
    except ssl.SSLError as e:  # UNEXPECTED_EOF_WHILE_READING
        raise AssertionError(f"the proxy closed the TLS session without close_notify: {e}")
    assert rest == b"", rest


@pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd on the proxy's socket needs root")
def test_close_notify_follows_a_backlog_of_replies(aio_upstream, make_proxy, front_certs):
    """A client that pipelines thousands of NOOPs and QUIT inside TLS and reads nothing for
    a while (small socket buffers on both ends: the proxy's writes stall, a write stays in
    flight and back-pressure stops its reading) still gets every reply, then the 221, then
    close_notify: the alert is queued behind replies still in flight, never before them."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    with harness.SmtpConn("127.0.0.1", proxy.port, rcvbuf=4096) as c:
        c.greeting()
        theirs = harness.proxy_socket(proxy.proc.pid, c.sock.getsockname())
        assert theirs is not None
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.close()
        c.ehlo()
        assert c.cmd("STARTTLS").startswith("220 2.0.0")
        c.start_tls(harness.tls_client_context(strict_eof=True), suppress_ragged_eofs=False)
        c.ehlo()
        n = 8000
        c.send(b"NOOP\r\n" * n + b"QUIT\r\n")
        time.sleep(1.0)  # the proxy's writes stall meanwhile
        replies = c.replies(n + 1, timeout=60)
        assert [r.code for r in replies[:n]] == [250] * n
        assert replies[n].code == 221, replies[n]
        c.sock.settimeout(10)
        try:
            rest = c.sock.recv(100)
        except ssl.SSLError as e:
            raise AssertionError(f"no close_notify after the replies: {e}")
        assert rest == b"", rest


def test_idle_timeout_inside_tls_ends_with_421_and_close_notify(aio_upstream, make_proxy,
                                                                front_certs, connect):
    """Another way into the session's end: the command timeout. Inside TLS the 421 comes
    first, then close_notify (a clean end the client can tell from a truncation), then the
    proxy's FIN."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]],
                        extra={"timeouts": {"command": "1s"}})
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.start_tls(harness.tls_client_context(strict_eof=True), suppress_ragged_eofs=False)
    c.ehlo()
    r = c.reply(timeout=10)
    assert r.startswith("421 4.4.2"), r
    c.sock.settimeout(10)
    try:
        rest = c.sock.recv(100)
    except ssl.SSLError as e:
        raise AssertionError(f"the proxy closed the TLS session without close_notify: {e}")
    assert rest == b"", rest


def test_sclient_exits_cleanly_after_quit(aio_upstream, make_proxy, front_certs, sclient):
    """openssl s_client (OpenSSL 3) exits 1 with "unexpected eof while reading" when the
    server closes without close_notify."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    s = sclient(proxy.port)
    s.wait_established()
    assert s.cmd("EHLO client.test").code == 250
    assert s.cmd("QUIT").code == 221
    assert s.finish() == 0, s.stderr()


# --------------------------------------------------------------------------------------
# STARTTLS refusals
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["after-new-ehlo", "before-new-ehlo"])
def test_starttls_inside_tls_gets_503(aio_upstream, make_proxy, front_certs, when, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c, _ = tls_session(connect, proxy.port, ehlo=(when == "after-new-ehlo"))
    try:
        r = c.cmd("STARTTLS")
        assert r.startswith("503 5.5.1"), r
        # Still the same TLS session, and it goes on.
        assert c.tls_version() == "TLSv1.3"
        if when == "before-new-ehlo":
            c.ehlo()
        send_message(c, SIMPLE)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE
    aio_upstream.wait_all_closed()
    assert aio_upstream.starttls_commands == 0


@pytest.mark.parametrize("line", ["STARTTLS now", "STARTTLS x=y", "STARTTLS tls1.3 please"])
def test_starttls_with_arguments_gets_501(make_fake_upstream, make_proxy, front_certs,
                                          connect, line):
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    r = c.cmd(line)
    assert r.startswith("501 5.5.4"), (line, r)
    # Still cleartext; a proper STARTTLS works afterwards.
    c.starttls()
    c.ehlo()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"STARTTLS" not in bytes(conn.raw).upper()


@pytest.mark.parametrize("verb", ["starttls", "StartTLS"])
def test_starttls_is_case_insensitive(aio_upstream, make_proxy, front_certs, connect, verb):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd(verb).startswith("220 2.0.0")
    c.start_tls()
    assert starttls_lines(c.ehlo()) == []
    assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("stage", ["after-mail", "after-rcpt"])
def test_starttls_in_a_transaction_gets_503(make_fake_upstream, make_proxy, front_certs,
                                            connect, stage):
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("MAIL FROM:<t@client.test>").code == 250
    if stage == "after-rcpt":
        assert c.cmd("RCPT TO:<t@upstream.test>").code == 250
    r = c.cmd("STARTTLS")
    assert r.startswith("503 5.5.1"), r
    # The transaction goes on in cleartext...
    if stage == "after-mail":
        assert c.cmd("RCPT TO:<t@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: cleartext\r\n\r\nin a transaction\r\n.\r\n")
    assert c.reply().code == 250
    # ...and once it ended, STARTTLS is accepted.
    c.starttls()
    c.ehlo()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"STARTTLS" not in bytes(conn.raw).upper()
    assert [m.content for m in up.messages()] == [b"Subject: cleartext\r\n\r\nin a transaction\r\n",
                                                 SIMPLE]


def test_starttls_after_rset_is_accepted(make_fake_upstream, make_proxy, front_certs, connect):
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("MAIL FROM:<t@client.test>").code == 250
    assert c.cmd("STARTTLS").startswith("503 5.5.1")
    assert c.cmd("RSET").code == 250
    c.starttls()
    c.ehlo()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    up.wait_closed()
    assert [m.content for m in up.messages()] == [SIMPLE]


# --------------------------------------------------------------------------------------
# Injection: bytes after STARTTLS, before the handshake (RFC 3207 section 6)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("injected", [
    b"RSET\r\n",
    b"MAIL FROM:<injected@evil.test>\r\nRCPT TO:<injected@upstream.test>\r\n",
    b"NOOP\r\nNOOP\r\nRSET\r\n",
], ids=["rset", "mail-rcpt", "noop-noop-rset"])
def test_commands_sent_with_starttls_are_discarded(make_fake_upstream, make_proxy, front_certs,
                                                   connect, injected):
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    c.send(b"STARTTLS\r\n" + injected)  # one write
    r = c.reply()
    assert r.startswith("220 2.0.0"), r
    c.start_tls()  # asserts nothing came after the 220 in cleartext
    # Exactly one reply to one NOOP, then nothing: the injected commands were never run.
    c.send(b"NOOP\r\n")
    r = c.reply()
    assert r.code == 250, r
    c.expect_silence(1.0)
    # The session is fine: a new EHLO and a message.
    c.ehlo()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    raw = bytes(conn.raw)
    assert b"injected" not in raw, raw
    assert b"RSET" not in raw, raw
    assert b"STARTTLS" not in raw.upper(), raw
    assert [m.content for m in up.messages()] == [SIMPLE]


# --------------------------------------------------------------------------------------
# strip mode
# --------------------------------------------------------------------------------------

def test_strip_mode_never_offers_and_refuses_with_502(make_aio_upstream, make_proxy,
                                                      front_certs, connect):
    up = make_aio_upstream(starttls=True)
    proxy = make_proxy(up.addr, extra={"client_tls": {
        "starttls": "strip", "certificate": front_certs["ec"][0], "key": front_certs["ec"][1]}})
    c = connect(proxy.port)
    c.greeting()
    assert_no_starttls(c.ehlo())
    r = c.cmd("STARTTLS")
    assert r.startswith("502 5.5.1"), r
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    c.wait_closed()
    # smtplib sees no STARTTLS either.
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert not s.has_extn("starttls"), s.esmtp_features
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.starttls()
        s.quit()
    [msg] = up.wait_messages(1)
    assert msg.content == SIMPLE
    up.wait_all_closed()
    assert up.starttls_commands == 0
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["starttls"] == "not-offered", line["_line"]
    assert line["front_tls"] == "none", line["_line"]


# --------------------------------------------------------------------------------------
# require = on, and its default off
# --------------------------------------------------------------------------------------

def test_require_refuses_mail_before_tls(make_fake_upstream, make_proxy, front_certs, connect):
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]], require="on")
    c = connect(proxy.port)
    assert c.greeting().code == 220
    r = c.ehlo()
    assert len(starttls_lines(r)) == 1, r
    for command in ("MAIL FROM:<early@client.test>", "RCPT TO:<early@upstream.test>", "DATA",
                    "VRFY early", "EXPN early"):  # BDAT: test_bdat_refused_530_...
        r = c.cmd(command)
        assert r.startswith("530 5.7.0"), (command, r)
    assert c.cmd("NOOP").code == 250
    assert c.cmd("RSET").code == 250
    assert c.cmd("HELO client.test").code == 250
    assert c.cmd("EHLO client.test").code == 250
    c.starttls()
    c.ehlo()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"early" not in bytes(conn.raw), bytes(conn.raw)
    assert [m.content for m in up.messages()] == [SIMPLE]


def test_require_refuses_smtplib_without_tls(aio_upstream, make_proxy, front_certs):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]], require="on")
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail(FROM, TO, SIMPLE)
        assert e.value.smtp_code == 530
        assert e.value.smtp_error.startswith(b"5.7.0"), e.value.smtp_error
        s.rset()
        s.starttls(context=harness.tls_client_context())
        s.ehlo()
        assert s.sendmail(FROM, TO, SIMPLE) == {}
        s.quit()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE


def test_tls_not_required_by_default(aio_upstream, make_proxy, front_certs, connect):
    """RFC 3207 section 4: port 25 must not require STARTTLS. Offered, not used: delivered."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    assert len(starttls_lines(c.ehlo())) == 1
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    c.wait_closed()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["starttls"] == "offered", line["_line"]
    assert line["front_tls"] == "none", line["_line"]
    assert line.get("front_cipher") in (None, "none", ""), line["_line"]


# --------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------

def test_self_signed_default_certificate_names_the_hostname(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr,
                       extra=harness.merge_sections(client_tls_extra(),
                                                    {"proxy": {"hostname": "mx1.selfsigned.test"}}))
    proxy.wait_event("front-tls-self-signed")
    c, _ = tls_session(connect, proxy.port)
    try:
        text = harness.describe_der(c.peer_der())
        assert re.search(r"Subject:.*CN ?= ?mx1\.selfsigned\.test", text) or \
            "DNS:mx1.selfsigned.test" in text, text
        assert "id-ecPublicKey" in text, text
        assert "prime256v1" in text or "P-256" in text, text
        send_message(c, SIMPLE)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE


def test_self_signed_certificate_is_made_once(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra=client_tls_extra())
    first = peer_der_of_new_session(connect, proxy.port)
    second = peer_der_of_new_session(connect, proxy.port)
    assert first == second
    assert len(proxy.events("front-tls-self-signed")) == 1, proxy.stderr()


def test_configured_certificate_has_no_self_signed_warning(aio_upstream, make_proxy,
                                                           front_certs, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    assert peer_der_of_new_session(connect, proxy.port) == harness.cert_der(front_certs["ec"][0])
    assert "front-tls-self-signed" not in proxy.stderr()


@pytest.mark.parametrize("order", [("ec", "rsa"), ("rsa", "ec")], ids=["ec-first", "rsa-first"])
@pytest.mark.parametrize("cipher,kind", [("ECDHE-ECDSA-AES128-GCM-SHA256", "ec"),
                                         ("ECDHE-RSA-AES128-GCM-SHA256", "rsa")],
                         ids=["ecdsa-client", "rsa-client"])
def test_rsa_or_ecdsa_certificate_per_client_tls12(aio_upstream, make_proxy, front_certs,
                                                   order, cipher, kind, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs[k] for k in order])
    ctx = harness.tls_client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
    c, _ = tls_session(connect, proxy.port, ctx)
    try:
        assert c.tls_version() == "TLSv1.2"
        assert c.cipher_name() == cipher
        assert c.peer_der() == harness.cert_der(front_certs[kind][0])
        send_message(c, SIMPLE)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE


def test_sni_picks_among_certificates_of_one_type(aio_upstream, make_proxy, make_cert,
                                                   connect):
    """README: with several certificates that fit, the one matching the client's SNI."""
    a, b = make_cert("a.proxy.test"), make_cert("b.proxy.test")
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [a, b])
    for name, pair in (("b.proxy.test", b), ("a.proxy.test", a)):
        c = connect(proxy.port)
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS").startswith("220 2.0.0")
        c.start_tls(server_hostname=name)
        assert c.peer_der() == harness.cert_der(pair[0]), name
        assert c.cmd("QUIT").code == 221
    # An unknown name still gets one of them.
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.start_tls(server_hostname="unknown.test")
    assert c.peer_der() in (harness.cert_der(a[0]), harness.cert_der(b[0]))


@pytest.mark.parametrize("sigalgs,cn", [("ecdsa_secp256r1_sha256", "ec.proxy.test"),
                                        ("rsa_pss_rsae_sha256", "rsa.proxy.test")],
                         ids=["ecdsa-client", "rsa-client"])
def test_rsa_or_ecdsa_certificate_per_client_tls13(aio_upstream, make_proxy, front_certs,
                                                   sclient, sigalgs, cn):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["rsa"], front_certs["ec"]])
    c = sclient(proxy.port, args=["-sigalgs", sigalgs])
    info = c.wait_established()
    assert info.get("Protocol version") == "TLSv1.3", c.stderr()
    assert info.get("Peer certificate") == f"CN = {cn}", c.stderr()
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("QUIT").code == 221
    sclient_done(c)


# --------------------------------------------------------------------------------------
# Protocol versions and ciphers
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2,
                                     ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1],
                         ids=["1.3", "1.2", "1.1", "1.0"])
def test_every_tls_version_is_accepted_by_default(aio_upstream, make_proxy, front_certs,
                                                  version, connect):
    """min_protocol defaults to TLSv1.0: any TLS beats cleartext."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    old = version < ssl.TLSVersion.TLSv1_2
    ctx = harness.tls_client_context(minimum=version, maximum=version, seclevel0=old)
    c, _ = tls_session(connect, proxy.port, ctx)
    try:
        expected = {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                    ssl.TLSVersion.TLSv1_1: "TLSv1.1", ssl.TLSVersion.TLSv1: "TLSv1"}[version]
        assert c.tls_version() == expected
        send_message(c, SIMPLE)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE
    line = proxy.wait_session_line(starttls="used")
    assert line["front_tls"].startswith("TLSv1"), line["_line"]
    if version >= ssl.TLSVersion.TLSv1_2:
        assert line["front_tls"] == expected, line["_line"]


def test_min_protocol_tls12_refuses_a_tls11_client(aio_upstream, make_proxy, front_certs,
                                                   sclient, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]],
                        min_protocol="TLSv1.2")
    old = sclient(proxy.port, args=["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
    rc = old.finish()
    assert rc != 0, old.stderr()
    assert "CONNECTION ESTABLISHED" not in old.stderr(), old.stderr()
    # A TLS 1.2 client is fine (from another address: 127.0.0.1 is now learned).
    ctx = harness.tls_client_context(maximum=ssl.TLSVersion.TLSv1_2)
    c, _ = tls_session(connect, proxy.port, ctx, source="127.0.0.2")
    try:
        assert c.tls_version() == "TLSv1.2"
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()


def test_ciphers_setting_applies_to_tls12(aio_upstream, make_proxy, front_certs, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]],
                        ciphers="ECDHE-ECDSA-AES256-GCM-SHA384", learn_failures="off")
    tls12 = ssl.TLSVersion.TLSv1_2
    # The client prefers AES128 but offers both: the proxy's list leaves AES256 only.
    ctx = harness.tls_client_context(
        maximum=tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    c, _ = tls_session(connect, proxy.port, ctx)
    try:
        assert c.tls_version() == "TLSv1.2"
        assert c.cipher_name() == "ECDHE-ECDSA-AES256-GCM-SHA384"
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    # A client with only AES128: no common cipher, the handshake fails.
    c = harness.SmtpConn("127.0.0.1", proxy.port)
    try:
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS").startswith("220 2.0.0")
        with pytest.raises(ssl.SSLError):
            c.start_tls(harness.tls_client_context(maximum=tls12,
                                                   ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    finally:
        c.close()
    # TLS 1.3 is not affected by "ciphers".
    c, _ = tls_session(connect, proxy.port)
    try:
        assert c.tls_version() == "TLSv1.3"
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()


# --------------------------------------------------------------------------------------
# The session line
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("maximum,cipher", [
    (None, None),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
], ids=["tls13", "tls12"])
def test_session_line_records_tls(aio_upstream, make_proxy, front_certs, maximum, cipher, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    ctx = harness.tls_client_context(maximum=maximum, ciphers=cipher)
    c, _ = tls_session(connect, proxy.port, ctx)
    version, name = c.tls_version(), c.cipher_name()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    c.wait_eof()
    aio_upstream.wait_messages(1)
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["starttls"] == "used", line["_line"]
    assert line["front_tls"] == version, line["_line"]
    assert line["front_cipher"] in (name, IANA.get(name)), (name, line["_line"])
    assert line["messages"] == "1", line["_line"]
    assert line["end"] == "quit", line["_line"]
    assert line["back_tls"] == "cleartext", line["_line"]


def test_json_session_line_records_tls(aio_upstream, make_proxy, front_certs, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]],
                        extra={"log": {"format": "json"}})
    c, _ = tls_session(connect, proxy.port)
    name = c.cipher_name()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    c.wait_eof()
    [event] = harness.wait_for(lambda: proxy.json_events("session"), 10,
                               what="a JSON session event")
    assert event["client"] == f"127.0.0.1:{c.local_port}", event
    assert event["front_tls"] == "TLSv1.3", event
    assert event["front_cipher"] == name, event
    assert event["starttls"] == "used", event


# --------------------------------------------------------------------------------------
# SIGHUP: certificate files are read again
# --------------------------------------------------------------------------------------

def install_pair(pair, cert_path, key_path):
    """Copies |pair| over the live files, each replaced atomically."""
    for src, dst in zip(pair, (cert_path, key_path)):
        with open(src, "rb") as f:
            data = f.read()
        write_atomically(dst, data)


def write_atomically(path, data):
    tmp = f"{path}.new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def test_sighup_reloads_certificate_keeping_open_sessions(aio_upstream, make_proxy, make_cert,
                                                          tmp_path, sclient, connect):
    alpha, beta = make_cert("alpha.test"), make_cert("beta.test", "rsa")
    live = (str(tmp_path / "live.crt.pem"), str(tmp_path / "live.key.pem"))
    install_pair(alpha, *live)
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [live])
    alpha_der, beta_der = harness.cert_der(alpha[0]), harness.cert_der(beta[0])

    old, _ = tls_session(connect, proxy.port)  # opened before the reload
    try:
        assert old.peer_der() == alpha_der
        assert old.cmd(f"MAIL FROM:<{FROM}>").code == 250  # mid-transaction across SIGHUP

        install_pair(beta, *live)
        # The files changed, but without SIGHUP nothing is read again.
        assert peer_der_of_new_session(connect, proxy.port) == alpha_der
        proxy.signal(signal.SIGHUP)
        harness.wait_for(lambda: peer_der_of_new_session(connect, proxy.port) == beta_der, 10,
                         interval=0.1, what="a new session to get the new certificate")
        assert proxy.running()

        s = sclient(proxy.port)
        info = s.wait_established()
        assert info.get("Peer certificate") == "CN = beta.test", s.stderr()
        assert s.cmd("QUIT").code == 221
        sclient_done(s)

        # The session opened before the reload still works and delivers.
        assert old.cmd("RCPT TO:<rcpt1@upstream.test>").code == 250
        assert old.cmd("DATA").code == 354
        old.send(SIMPLE + b".\r\n")
        assert old.reply().code == 250
        assert old.cmd("QUIT").code == 221
    finally:
        old.close()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE
    assert "front-tls-reload-failed" not in proxy.stderr()


@pytest.mark.parametrize("breakage", ["garbage-cert", "garbage-key", "mismatched-key",
                                      "missing-cert", "empty-key"])
def test_sighup_with_broken_files_keeps_the_old_certificate(aio_upstream, make_proxy, make_cert,
                                                            tmp_path, sclient, breakage, connect):
    alpha, beta = make_cert("alpha.test"), make_cert("beta.test")
    live = (str(tmp_path / "live.crt.pem"), str(tmp_path / "live.key.pem"))
    install_pair(alpha, *live)
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [live])
    alpha_der, beta_der = harness.cert_der(alpha[0]), harness.cert_der(beta[0])
    old, _ = tls_session(connect, proxy.port)
    try:
        assert old.peer_der() == alpha_der
        if breakage == "garbage-cert":
            write_atomically(live[0], b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n"
                                      b"-----END CERTIFICATE-----\n")
        elif breakage == "garbage-key":
            write_atomically(live[1], b"this is no key\n")
        elif breakage == "mismatched-key":
            install_pair((beta[0], alpha[1]), *live)  # beta's certificate, alpha's key
        elif breakage == "missing-cert":
            os.unlink(live[0])
        elif breakage == "empty-key":
            write_atomically(live[1], b"")
        proxy.signal(signal.SIGHUP)
        failed = proxy.wait_event("front-tls-reload-failed")
        assert failed["_line"].strip() != "front-tls-reload-failed", failed["_line"]
        assert proxy.running()
        # New sessions still get the old certificate...
        assert peer_der_of_new_session(connect, proxy.port) == alpha_der
        s = sclient(proxy.port)
        assert s.wait_established().get("Peer certificate") == "CN = alpha.test", s.stderr()
        assert s.cmd("QUIT").code == 221
        sclient_done(s)
        # ...the open session still delivers...
        send_message(old, SIMPLE)
        assert old.cmd("QUIT").code == 221
    finally:
        old.close()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE
    # ...and good files with another SIGHUP are taken.
    install_pair(beta, *live)
    proxy.signal(signal.SIGHUP)
    harness.wait_for(lambda: peer_der_of_new_session(connect, proxy.port) == beta_der, 10,
                     interval=0.1, what="the certificate after the files were fixed")


# --------------------------------------------------------------------------------------
# More of the TLS path: chains, pipelining, trickled records, big messages, BDAT, replies
# the proxy makes itself inside TLS, concurrency
# --------------------------------------------------------------------------------------

def test_certificate_chain_is_sent(aio_upstream, make_proxy, tmp_path, connect):
    """certificate = a PEM chain (leaf, intermediate): a client trusting only the root
    verifies the proxy, so the intermediate was sent."""
    chain, key, root = harness.make_cert_chain(str(tmp_path), "chain.proxy.test")
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [(chain, key)])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(root)
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.start_tls(ctx, server_hostname="chain.proxy.test")  # raises when verification fails
    c.ehlo()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE


def test_pipelined_ehlo_starttls_and_injection(make_fake_upstream, make_proxy, front_certs,
                                               connect):
    """EHLO, STARTTLS and RSET in one write: the EHLO reply (from upstream) first, then
    the 220, and the RSET is never run."""
    up = make_fake_upstream(caps=("PIPELINING", "8BITMIME"))
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.send(b"EHLO client.test\r\nSTARTTLS\r\nRSET\r\n")
    r1 = c.reply()
    assert r1.code == 250 and len(starttls_lines(r1)) == 1, r1
    r2 = c.reply()
    assert r2.startswith("220 2.0.0"), r2
    c.start_tls()
    c.send(b"NOOP\r\n")
    assert c.reply().code == 250
    c.expect_silence(1.0)
    c.ehlo()
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"RSET" not in bytes(conn.raw), bytes(conn.raw)


def test_bytes_sent_while_the_220_is_held_back_are_never_run(make_fake_upstream, make_proxy,
                                                             front_certs, connect):
    """NOOP (its reply held back by the upstream) and STARTTLS, then RSET in a separate
    write while the proxy still waits: the RSET is never run, neither in cleartext nor
    after the handshake. (Whether the proxy throws it away before the handshake, or it
    reaches the TLS stack and breaks the handshake, both keep it from being run.)"""
    gate = threading.Event()
    up = make_fake_upstream(reply_gates={b"NOOP": gate})
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]], learn_failures="off")
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    c.send(b"NOOP\r\nSTARTTLS\r\n")
    harness.wait_for(lambda: b"NOOP" in bytes(up.connections[0].raw), 10,
                     what="NOOP at the upstream")
    c.send(b"RSET\r\n")
    c.expect_silence(0.3)  # the 220 must wait for the NOOP's reply
    gate.set()
    r1, r2 = c.replies(2)
    assert r1.code == 250, r1
    assert r2.startswith("220 2.0.0"), r2
    try:
        c.start_tls()
    except (ssl.SSLError, ConnectionResetError):
        pass  # the RSET bytes were fed to the handshake: fine, it was not run
    else:
        c.send(b"NOOP\r\n")
        assert c.reply().code == 250
        c.expect_silence(1.0)
        assert c.cmd("QUIT").code == 221
    c.close()
    conn = up.wait_closed()
    assert b"RSET" not in bytes(conn.raw), bytes(conn.raw)


def test_client_close_notify_mid_transaction(aio_upstream, make_proxy, front_certs, connect):
    """The client ends TLS (close_notify) in the middle of a transaction: the session ends,
    nothing is delivered, the upstream connection is closed."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c, _ = tls_session(connect, proxy.port)
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: half\r\n\r\nnever finished\r\n")
    c.sock.settimeout(10)
    try:
        c.sock.unwrap()  # sends close_notify, waits for the proxy's
    except (ssl.SSLError, OSError):
        pass  # the proxy may close the TCP connection without answering close_notify
    c.close()
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["starttls"] == "used", line["_line"]
    assert line["messages"] == "0", line["_line"]
    aio_upstream.wait_all_closed()
    assert aio_upstream.messages == []


def test_starttls_waits_for_earlier_replies(make_fake_upstream, make_proxy, front_certs,
                                            connect):
    """NOOP and STARTTLS in one write: NOOP's reply (from upstream) comes before the 220."""
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    c.send(b"NOOP\r\nSTARTTLS\r\n")
    r1, r2 = c.replies(2)
    assert r1.code == 250 and r1.lines[-1].endswith("#2"), r1  # the upstream's NOOP reply
    assert r2.startswith("220 2.0.0"), r2
    c.start_tls()
    c.ehlo()
    send_message(c, SIMPLE)
    assert c.cmd("QUIT").code == 221


def test_pipelined_transaction_inside_tls(aio_upstream, make_proxy, front_certs, connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c, _ = tls_session(connect, proxy.port)
    c.send(b"MAIL FROM:<p@client.test>\r\nRCPT TO:<r1@upstream.test>\r\n"
           b"RCPT TO:<r2@upstream.test>\r\nDATA\r\n")
    assert [x.code for x in c.replies(4)] == [250, 250, 250, 354]
    c.send(b"Subject: pipelined in TLS\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    final, bye = c.replies(2)
    assert final.code == 250 and bye.code == 221, (final, bye)
    [msg] = aio_upstream.wait_messages(1)
    assert msg.rcpt_tos == ["r1@upstream.test", "r2@upstream.test"]
    assert msg.content == b"Subject: pipelined in TLS\r\n\r\nbody\r\n"


class TrickleTLS:
    """A TLS client over a raw socket that writes every byte in its own send()."""

    def __init__(self, conn, context):
        self.conn = conn
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.inc, self.out, server_side=False)
        self.plain = b""

    def _flush(self):
        data = self.out.read()
        for i in range(len(data)):
            self.conn.sock.send(data[i:i + 1])

    def _recv(self):
        chunk = self.conn.sock.recv(65536)
        assert chunk, "connection closed"
        self.inc.write(chunk)

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._recv()
        self._flush()

    def send(self, data):
        self.obj.write(data)
        self._flush()

    def reply(self):
        while True:
            m = re.search(rb"(?:^|\r\n)(\d{3}) [^\r\n]*\r\n", self.plain)
            if m:
                end = m.end()
                out, self.plain = self.plain[:end], self.plain[end:]
                return out
            try:
                self.plain += self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._recv()


def test_handshake_and_commands_trickled_byte_by_byte(aio_upstream, make_proxy, front_certs,
                                                      connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.sock.settimeout(10)
    t = TrickleTLS(c, harness.tls_client_context())
    t.handshake()
    assert t.obj.version() == "TLSv1.3"
    t.send(b"EHLO trickle.test\r\n")
    r = t.reply()
    assert r.startswith(b"250-") and b"STARTTLS" not in r.upper(), r
    for command, code in ((b"MAIL FROM:<t@client.test>", b"250"),
                          (b"RCPT TO:<r@upstream.test>", b"250"), (b"DATA", b"354")):
        t.send(command + b"\r\n")
        assert t.reply()[:3] == code
    t.send(SIMPLE + b".\r\n")
    assert t.reply()[:3] == b"250"
    t.send(b"QUIT\r\n")
    assert t.reply()[:3] == b"221"
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == SIMPLE


def big_body(size):
    lines = [b"Subject: big over TLS\r\n", b"\r\n"]
    total, i = 25, 0
    while total < size:
        line = (b"." if i % 89 == 0 else b"") + (b"%08d" % i) * 9 + b"ABCDEF\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)


def test_large_message_over_tls_is_byte_identical(aio_upstream, make_proxy, front_certs):
    body = big_body(6 * 1024 * 1024)
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]])
    try:
        with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test",
                          timeout=60) as s:
            s.starttls(context=harness.tls_client_context())
            assert s.sendmail(FROM, TO[:1], body) == {}
            s.quit()
    except (smtplib.SMTPException, OSError) as e:
        # Once seen under load: no reply to the end of data within 60 s. Say where it was.
        got = [len(m.content) for m in aio_upstream.messages]
        raise AssertionError(f"{e!r}; upstream got {got} of {len(body)} bytes; "
                             f"proxy log:\n{proxy.stderr()[-3000:]}") from None
    [msg] = aio_upstream.wait_messages(1, timeout=60)
    assert len(msg.content) == len(body)
    assert msg.content == body


def test_bdat_inside_tls(make_fake_upstream, make_proxy, front_certs, connect):
    up = make_fake_upstream(caps=("PIPELINING", "CHUNKING", "8BITMIME"))
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c, r = tls_session(connect, proxy.port)
    assert "CHUNKING" in r.lines[1:], r
    chunk1 = b"Subject: bdat\r\n\r\n\x00\x01binary\r\n.\r\n"
    chunk2 = bytes(range(256)) * 64
    assert c.cmd("MAIL FROM:<b@client.test>").code == 250
    assert c.cmd("RCPT TO:<r@upstream.test>").code == 250
    c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
    assert c.reply().code == 250
    c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    up.wait_closed()
    [msg] = up.messages()
    assert msg.kind == "BDAT"
    assert msg.content == chunk1 + chunk2


def test_command_timeout_reply_is_sent_inside_tls(aio_upstream, make_proxy, front_certs,
                                                  connect):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]],
                        extra={"timeouts": {"command": "1s"}})
    c, _ = tls_session(connect, proxy.port)
    r = c.reply(timeout=10)  # readable through TLS: the proxy encrypted its own reply
    assert r.startswith("421 4.4.2"), r
    c.wait_eof(5)
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["end"] == "timeout", line["_line"]
    assert line["starttls"] == "used", line["_line"]


def test_upstream_lost_mid_data_inside_tls(make_fake_upstream, make_proxy, front_certs,
                                           connect):
    up = make_fake_upstream(die_after_body_bytes=100)
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c, _ = tls_session(connect, proxy.port)
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: doomed\r\n\r\n" + b"x" * 70 + b"\r\n" + b"y" * 70 + b"\r\n")
    try:
        r = c.reply(timeout=10)
    except (harness.Closed, TimeoutError, ssl.SSLError) as e:
        raise AssertionError(f"no 421 inside TLS: {e!r}; proxy log:\n"
                             f"{proxy.stderr()[-3000:]}") from None
    assert r.startswith("421 4.4.2"), r
    assert up.messages() == []


def test_concurrent_tls_sessions(aio_upstream, make_proxy, front_certs):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"], front_certs["rsa"]],
                        extra={"proxy": {"workers": "2"}})
    n = 16
    errors = []

    def one(i):
        try:
            ctx = harness.tls_client_context(
                maximum=ssl.TLSVersion.TLSv1_2 if i % 2 else None)
            with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname=f"c{i}.test",
                              timeout=30, source_address=(f"127.0.0.{20 + i}", 0)) as s:
                s.starttls(context=ctx)
                s.sendmail(FROM, [f"r{i}@upstream.test"], SIMPLE + b"n=%d\r\n" % i)
                s.quit()
        except Exception as e:  # reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    msgs = aio_upstream.wait_messages(n, timeout=30)
    assert sorted(m.content for m in msgs) == sorted(SIMPLE + b"n=%d\r\n" % i for i in range(n))
    harness.wait_for(lambda: len([f for f in proxy.session_lines()
                                  if f.get("starttls") == "used"]) == n, 10,
                     what=f"{n} session lines with starttls=used")


def test_sighup_with_the_self_signed_default_keeps_serving(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra=client_tls_extra())
    assert peer_der_of_new_session(connect, proxy.port)
    proxy.signal(signal.SIGHUP)
    # No files to re-read: TLS keeps working (with a self-signed certificate for the host).
    harness.wait_for(lambda: peer_der_of_new_session(connect, proxy.port) is not None, 10,
                     what="TLS after SIGHUP")
    after = peer_der_of_new_session(connect, proxy.port)
    assert proxy.running()
    text = harness.describe_der(after)
    assert "proxy.test" in text, text
    assert "front-tls-reload-failed" not in proxy.stderr()


@pytest.mark.parametrize("min_protocol,client_max,ok", [
    ("TLSv1.3", ssl.TLSVersion.TLSv1_2, False),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3, True),
    ("TLSv1.1", ssl.TLSVersion.TLSv1, False),
    ("TLSv1.1", ssl.TLSVersion.TLSv1_1, True),
], ids=["1.3-vs-1.2", "1.3-vs-1.3", "1.1-vs-1.0", "1.1-vs-1.1"])
def test_min_protocol(aio_upstream, make_proxy, front_certs, connect, min_protocol,
                      client_max, ok):
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [front_certs["ec"]],
                        min_protocol=min_protocol, learn_failures="off")
    old = client_max < ssl.TLSVersion.TLSv1_2
    ctx = harness.tls_client_context(minimum=client_max if old else None, maximum=client_max,
                                     seclevel0=old)
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    if ok:
        c.start_tls(ctx)
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("QUIT").code == 221
    else:
        with pytest.raises(ssl.SSLError):
            c.start_tls(ctx)
        proxy.wait_event("front-tls-failed", client=re.compile(r"127\.0\.0\.1(:\d+)?"))


# --------------------------------------------------------------------------------------
# Bad [client_tls] settings: a clear error naming the file and the key, never a start
# --------------------------------------------------------------------------------------

def bad_config_cases(front_certs, tmp_path):
    ec, rsa = front_certs["ec"], front_certs["rsa"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    missing = str(tmp_path / "missing.pem")
    return {
        "key-missing": ({"certificate": ec[0]}, "key"),
        "count-mismatch": ({"certificate": f"{ec[0]}, {rsa[0]}", "key": ec[1]}, "key"),
        "cert-key-mismatch": ({"certificate": ec[0], "key": rsa[1]}, "key"),
        "garbage-cert": ({"certificate": str(garbage), "key": ec[1]}, "certificate"),
        "missing-cert": ({"certificate": missing, "key": ec[1]}, "certificate"),
        "require-with-strip": ({"starttls": "strip", "require": "on"}, "require"),
        "bad-network": ({"never_offer_to": "127.0.0.300/32"}, "never_offer_to"),
        "bad-min-protocol": ({"min_protocol": "TLSv1.4"}, "min_protocol"),
        "bad-ciphers": ({"ciphers": "NO-SUCH-CIPHER"}, "ciphers"),
    }


CASES = ["key-missing", "count-mismatch", "cert-key-mismatch", "garbage-cert", "missing-cert",
         "require-with-strip", "bad-network", "bad-min-protocol", "bad-ciphers"]


@pytest.mark.parametrize("case", CASES)
def test_bad_client_tls_config_is_refused(aio_upstream, make_proxy, front_certs, tmp_path,
                                          proxy_bin, case):
    keys, key_name = bad_config_cases(front_certs, tmp_path)[case]
    settings = {"starttls": "offer"}
    settings.update(keys)
    proxy = make_proxy(aio_upstream.addr, extra={"client_tls": settings}, start=False)
    for args in ([proxy_bin, "-t", "-c", proxy.ini_path], [proxy_bin, "-c", proxy.ini_path]):
        p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
        err = p.stderr.decode("utf-8", "replace")
        assert p.returncode != 0, (args, err)
        for marker in harness.SANITIZER_MARKERS:
            assert marker not in err, err
        assert proxy.ini_path in err, err
        assert key_name in err, err


def test_sighup_storm_during_handshakes(aio_upstream, make_proxy, make_cert, tmp_path):
    """Reloads racing with handshakes on two workers: every session completes with one of
    the two certificates, and the proxy stays up (and sanitizer-clean at teardown)."""
    alpha, beta = make_cert("alpha.test"), make_cert("beta.test", "rsa")
    live = (str(tmp_path / "live.crt.pem"), str(tmp_path / "live.key.pem"))
    install_pair(alpha, *live)
    proxy = offer_proxy(make_proxy, aio_upstream.addr, [live],
                        extra={"proxy": {"workers": "2"}})
    ders = {harness.cert_der(alpha[0]), harness.cert_der(beta[0])}
    errors, seen = [], []
    per_thread = 25

    def clients(k):
        for _ in range(per_thread):
            try:
                c = harness.SmtpConn("127.0.0.1", proxy.port, source=f"127.0.1.{k}")
                try:
                    c.greeting()
                    c.ehlo()
                    c.starttls()
                    seen.append(c.peer_der())
                    assert c.ehlo().code == 250
                    assert c.cmd("QUIT").code == 221
                finally:
                    c.close()
            except Exception as e:  # reported below
                errors.append(repr(e))

    threads = [threading.Thread(target=clients, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    reloads = 0
    while any(t.is_alive() for t in threads) and reloads < 500:
        install_pair(beta if reloads % 2 == 0 else alpha, *live)
        proxy.signal(signal.SIGHUP)
        reloads += 1
        harness.wait_for(lambda: len(proxy.events("front-tls-reloaded")) +
                         len(proxy.events("front-tls-reload-failed")) >= reloads
                         or not proxy.running(), 10, what=f"reload {reloads} to be logged")
    for t in threads:
        t.join(60)
    assert proxy.running()
    assert not errors, errors[:5]
    assert len(seen) == 4 * per_thread
    assert set(seen) == ders, "both certificates should have been served"
    assert reloads >= 5
    assert "front-tls-reload-failed" not in proxy.stderr()


# --------------------------------------------------------------------------------------
# A refused BDAT: its chunk follows without waiting for a reply (RFC 3030), so the proxy
# must skip those octets, as it does for its own 502 to BDAT; never run them as commands.
# --------------------------------------------------------------------------------------

CHUNK_OF_COMMANDS = b"NOOP\r\nNOOP\r\n"


def test_bdat_refused_530_by_require_skips_its_chunk(make_fake_upstream, make_proxy,
                                                     front_certs, connect):
    up = make_fake_upstream(caps=("PIPELINING", "CHUNKING"))
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]], require="on")
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    c.send(b"BDAT %d LAST\r\n" % len(CHUNK_OF_COMMANDS) + CHUNK_OF_COMMANDS)
    r = c.reply()
    assert r.startswith("530 5.7.0"), r
    c.expect_silence(0.5)  # the chunk's "NOOP" lines were data, not commands
    r = c.cmd("RSET")
    assert r.code == 250, r
    c.expect_silence(0.3)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"NOOP" not in bytes(conn.raw), bytes(conn.raw)


def test_bdat_refused_503_before_the_new_ehlo_skips_its_chunk(make_fake_upstream, make_proxy,
                                                              front_certs, connect):
    up = make_fake_upstream(caps=("PIPELINING", "CHUNKING"))
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c, _ = tls_session(connect, proxy.port, ehlo=False)
    c.send(b"BDAT %d LAST\r\n" % len(CHUNK_OF_COMMANDS) + CHUNK_OF_COMMANDS)
    r = c.reply()
    assert r.startswith("503 5.5.1"), r
    c.expect_silence(0.5)
    assert c.cmd("RSET").code == 250
    c.expect_silence(0.3)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"NOOP" not in bytes(conn.raw), bytes(conn.raw)


@pytest.mark.parametrize("how", ["data", "bdat"])
def test_starttls_inside_message_content_is_content(make_fake_upstream, make_proxy, front_certs,
                                                    connect, how):
    up = make_fake_upstream(caps=("PIPELINING", "CHUNKING"))
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    content = b"STARTTLS\r\nRSET\r\n"
    if how == "data":
        assert c.cmd("DATA").code == 354
        c.send(content + b".\r\n")
    else:
        c.send(b"BDAT %d LAST\r\n" % len(content) + content)
    r = c.reply()
    assert r.code == 250, r
    c.expect_silence(0.3)
    assert c.cmd("QUIT").code == 221
    up.wait_closed()
    [msg] = up.messages()
    assert msg.content == content


@pytest.mark.parametrize("where", ["before-new-ehlo", "require", "in-transaction"])
def test_local_refusals_keep_pipelining_order(make_fake_upstream, make_proxy, front_certs,
                                              connect, where):
    """A reply the proxy makes itself never overtakes an upstream reply still due."""
    gate = threading.Event()
    up = make_fake_upstream(reply_gates={b"NOOP": gate})
    if where == "require":
        proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]], require="on")
        c = connect(proxy.port)
        c.greeting()
        c.ehlo()
        middle, refusal = b"MAIL FROM:<x@client.test>", "530 5.7.0"
    elif where == "before-new-ehlo":
        proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
        c, _ = tls_session(connect, proxy.port, ehlo=False)
        middle, refusal = b"MAIL FROM:<x@client.test>", "503 5.5.1"
    else:
        proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
        c = connect(proxy.port)
        c.greeting()
        c.ehlo()
        assert c.cmd("MAIL FROM:<x@client.test>").code == 250
        middle, refusal = b"STARTTLS", "503 5.5.1"
    c.send(b"NOOP\r\n" + middle + b"\r\nNOOP\r\n")
    c.expect_silence(0.5)  # the NOOP's reply is held back, so the refusal must wait
    gate.set()
    r1, r2, r3 = c.replies(3)
    assert r1.code == 250, (r1, r2, r3)
    assert r2.startswith(refusal), (r1, r2, r3)
    assert r3.code == 250, (r1, r2, r3)
    assert c.cmd("QUIT").code == 221


def test_starttls_with_bare_lf_and_injection(make_fake_upstream, make_proxy, front_certs,
                                             connect):
    """Command lines may end in a bare LF (README): "STARTTLS\\nRSET\\n" is STARTTLS, and
    the RSET after it is still thrown away."""
    up = make_fake_upstream()
    proxy = offer_proxy(make_proxy, up.addr, [front_certs["ec"]])
    c = connect(proxy.port)
    c.greeting()
    c.ehlo()
    c.send(b"STARTTLS\nRSET\n")
    assert c.reply().startswith("220 2.0.0")
    c.start_tls()
    c.send(b"NOOP\r\n")
    assert c.reply().code == 250
    c.expect_silence(1.0)
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"RSET" not in bytes(conn.raw), bytes(conn.raw)


def _tls_client_closes(port, trailing):
    """STARTTLS through a memory BIO (so the test chooses every byte on the wire), NOOP,
    then close_notify with |trailing| bytes after it in the same segment, then FIN."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = raw.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            assert line, "closed"
            if line[3:4] != b"-":
                return line

    assert reply().startswith(b"220")
    raw.sendall(b"EHLO client.test\r\n")
    assert reply().startswith(b"250")
    raw.sendall(b"STARTTLS\r\n")
    assert reply().startswith(b"220")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="proxy.test")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(out.read())
            inc.write(raw.recv(65536))
    tls.write(b"NOOP\r\n")
    raw.sendall(out.read())
    got = b""
    while b"\r\n" not in got:
        try:
            got += tls.read(4096)
        except ssl.SSLWantReadError:
            inc.write(raw.recv(65536))
    assert got.startswith(b"250"), got
    try:
        tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    raw.sendall(out.read() + trailing)
    raw.shutdown(socket.SHUT_WR)
    return raw


@pytest.mark.parametrize("trailing", [b"", b"\x17\x03\x03\x00\x05hello", b"QUIT\r\n"],
                         ids=["nothing", "a-record", "cleartext"])
def test_close_notify_ends_the_session_whatever_follows(aio_upstream, make_proxy, trailing):
    """A client's close_notify ends its session at once (client-closed), also when bytes
    follow it in the same segment: nothing after close_notify counts, and it must not look
    like input still to process (which kept the session open until the command timeout)."""
    proxy = offer_proxy(make_proxy, aio_upstream.addr, extra={"timeouts": {"command": "30s"}})
    raw = _tls_client_closes(proxy.port, trailing)
    try:
        line = proxy.wait_session_line(timeout=5)
        assert line["end"] == "client-closed", line
        assert int(line["duration_ms"]) < 5000, line
    finally:
        raw.close()
