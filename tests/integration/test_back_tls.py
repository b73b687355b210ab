"""Leg 2: the proxy as the TLS client towards the upstream (issue 4), success paths and policy.

- A real TLS upstream (aiosmtpd with a TLS context, STARTTLS offered, not required).
- The fake TLS upstream (fake_tls_upstream.TlsFakeUpstream) where TLS works: the message
  arrives once over TLS 1.3, the EHLO is repeated inside TLS with the client's name.
- Both legs TLS: the client's STARTTLS (leg 1) and the proxy's own (leg 2).
- [upstream_tls] starttls = off / require; [upstream_policy] matched against the configured
  upstream name, its address and the greeting's host name, the most specific pattern winning.
- verify = ca: with may a failed verification is logged and the session stays encrypted;
  with require it fails the session (421 4.7.0) and nothing is delivered.

The failure modes and the cleartext retry are in test_back_tls_fallback.py.
"""

import re

import pytest

import harness
from back_tls_support import (CLIENT_NAME, FROM, TO, assert_back_cleartext, assert_back_tls,
                              assert_delivered_once, assert_normal_session,
                              assert_proxy_commands_sane, back_extra, body, smtplib_send,
                              wait_session_lines)

VERIFY_FAIL_RE = re.compile(r"certificate-host-mismatch|validation-failure|verif|"
                            r"host.?mismatch|untrusted|unknown.?ca", re.I)


# --------------------------------------------------------------------------------------
# Success
# --------------------------------------------------------------------------------------

def test_real_tls_upstream_aiosmtpd(make_aio_upstream, make_proxy):
    """aiosmtpd offering STARTTLS (not requiring it): one connection, STARTTLS once, the
    message delivered once and byte-identical, and the session line says TLSv1.3."""
    up = make_aio_upstream(starttls=True)
    proxy = make_proxy(up.addr, back_extra())
    msg = body("aiosmtpd")
    r = smtplib_send(proxy.port, msg)
    assert_normal_session(r, caps=("8bitmime",))
    [m] = up.wait_messages(1)
    # aiosmtpd calls connection_made again for the TLS transport after STARTTLS, so the
    # harness lists one TCP connection twice (same peer), and only the last one sees
    # connection_lost.
    harness.wait_for(lambda: up.connections and up.connections[-1].closed.is_set(), 10,
                     what="the upstream connection to close")
    assert len(up.messages) == 1
    assert m.content == msg
    assert (m.mail_from, m.rcpt_tos) == (FROM, [TO])
    # A failed handshake would have meant a second (cleartext) TCP connection.
    assert len({c.peer for c in up.connections}) == 1, [c.peer for c in up.connections]
    assert up.starttls_commands == 1
    [line] = wait_session_lines(proxy, 1)
    assert_back_tls(line, "TLSv1.3")


def test_auth_offered_inside_tls_only_reaches_tls_clients(make_aio_upstream, make_proxy):
    """aiosmtpd offers AUTH only inside TLS. When leg 2 is TLS and leg 1 is not, the client
    must not see AUTH (it would send its password in the clear on leg 1); after its own
    STARTTLS it does."""
    up = make_aio_upstream(starttls=True)
    proxy = make_proxy(up.addr, back_extra(client_tls={"starttls": "offer"}))
    r = smtplib_send(proxy.port, body("auth-clear"))
    assert "auth" not in r.features, r.features
    r = smtplib_send(proxy.port, body("auth-tls"), client_starttls=True)
    assert "auth" in r.features, r.features
    assert len(up.wait_messages(2)) == 2


def test_tls_ok_fake(make_tls_fake, make_proxy):
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra())
    msg = body("tls-ok")
    r = smtplib_send(proxy.port, msg)
    assert_normal_session(r)
    m = assert_delivered_once(up, msg, "TLSv1.3")
    [conn] = up.conns()
    assert m.conn is conn and conn.starttls == 1
    # EHLO, STARTTLS in cleartext; EHLO again inside TLS, then the transaction.
    assert [c.upper() for c in conn.cleartext_commands] == [
        f"EHLO {CLIENT_NAME}".upper().encode(), b"STARTTLS"], conn
    assert conn.tls_commands[0] == f"EHLO {CLIENT_NAME}".encode(), conn
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    assert_back_tls(line, "TLSv1.3")
    assert line["back_cipher"] == conn.tls_cipher, (line["_line"], conn.tls_cipher)
    assert not proxy.events("back-tls-failed"), proxy.stderr()[-3000:]


def test_ehlo_reply_comes_from_inside_tls(make_tls_fake, make_proxy):
    """The client's EHLO reply is the upstream's reply to the EHLO inside TLS (which has no
    STARTTLS), and it is only sent after the handshake."""
    up = make_tls_fake("tls-ok", caps=("PIPELINING", "8BITMIME", "X-MARK"))
    proxy = make_proxy(up.addr, back_extra())
    with harness.SmtpConn("127.0.0.1", proxy.port) as c:
        assert c.greeting().code == 220
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.raw == (b"250-fake.test greets client.test\r\n250-PIPELINING\r\n"
                         b"250-8BITMIME\r\n250 X-MARK\r\n"), r.raw
        [conn] = up.conns()
        assert conn.tls_version == "TLSv1.3" and len(conn.tls_commands) == 1, conn
        assert c.cmd("QUIT").code == 221
    up.wait_all_closed()


def test_both_legs_tls(make_tls_fake, make_proxy):
    """Client STARTTLS on leg 1 (the proxy's self-signed certificate), the proxy's own
    STARTTLS on leg 2: delivered once over TLS both ways; STARTTLS is never forwarded."""
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra(client_tls={"starttls": "offer"}))
    msg = body("both legs")
    r = smtplib_send(proxy.port, msg, client_starttls=True)
    assert r.tls_version == "TLSv1.3", r
    assert r.mail[0] == 250 and r.rcpt[0] == 250 and r.data[0] == 250, r
    assert "starttls" not in r.features, r  # inside TLS no STARTTLS is offered again
    assert_delivered_once(up, msg, "TLSv1.3")
    [conn] = up.conns()
    assert conn.starttls == 1, conn  # the proxy's own; the client's was not forwarded
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    assert line.get("front_tls") == "TLSv1.3", line["_line"]
    assert_back_tls(line, "TLSv1.3")


def test_two_messages_one_tls_session(make_tls_fake, make_proxy):
    """Two transactions in one session: both over the one TLS connection."""
    import smtplib
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra())
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname=CLIENT_NAME, timeout=20) as s:
        assert s.ehlo()[0] == 250
        assert s.sendmail(FROM, [TO], body("one")) == {}
        assert s.sendmail(FROM, [TO], body("two")) == {}
    up.wait_all_closed()
    msgs = up.messages()
    assert [m.content for m in msgs] == [body("one"), body("two")]
    assert all(m.tls_version == "TLSv1.3" for m in msgs)
    assert len(up.conns()) == 1


# --------------------------------------------------------------------------------------
# starttls = off / require, and no STARTTLS offered
# --------------------------------------------------------------------------------------

def test_starttls_off_never_starttls(make_tls_fake, make_proxy):
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra(upstream_tls={"starttls": "off"}))
    msg = body("off")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, None)
    assert [c.starttls for c in up.conns()] == [0], up.describe()
    [line] = wait_session_lines(proxy, 1)
    assert line.get("back_tls") in ("cleartext", "none"), line["_line"]


def test_no_starttls_offered_may(make_tls_fake, make_proxy):
    up = make_tls_fake("no-starttls")
    proxy = make_proxy(up.addr, back_extra())
    msg = body("not offered")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, None)
    assert [c.starttls for c in up.conns()] == [0], up.describe()
    [line] = wait_session_lines(proxy, 1)
    assert_back_cleartext(line, r"starttls-not-supported|not.?(offered|supported|advertised)")


def expect_421_470(port, up):
    """The client's EHLO gets 421 4.7.0 and the proxy closes; nothing reaches the upstream
    beyond the negotiation (no MAIL on any connection)."""
    with harness.SmtpConn("127.0.0.1", port) as c:
        assert c.greeting().code == 220
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.code == 421 and r.first.startswith("4.7.0"), r
        c.wait_eof()
    up.wait_all_closed()
    assert not up.messages(), up.describe()
    for conn in up.conns():
        assert not any(cmd.upper().startswith((b"MAIL", b"RCPT", b"DATA"))
                       for cmd in conn.commands), up.describe()


@pytest.mark.parametrize("mode,reason", [("refuse-454", "454"),
                                         ("no-starttls", "not-supported"),
                                         ("eof-after-220", "eof"),
                                         ("post-tls-ehlo-403", "403"),
                                         ("handshake-timeout", "timeout")])
def test_require_failure_gives_421(make_tls_fake, make_proxy, mode, reason):
    up = make_tls_fake(mode)
    proxy = make_proxy(up.addr, back_extra(upstream_tls={"starttls": "require"}))
    expect_421_470(proxy.port, up)
    # No cleartext retry connection with require.
    assert len(up.conns()) == 1, up.describe()
    [line] = wait_session_lines(proxy, 1)
    assert line.get("end") != "quit" and line.get("messages") == "0", line["_line"]
    why = line.get("back_tls_reason", "") + " " + line.get("back_tls_note", "")
    assert reason in why, line["_line"]


def test_require_smtplib_sees_421(make_tls_fake, make_proxy):
    import smtplib
    up = make_tls_fake("refuse-454")
    proxy = make_proxy(up.addr, back_extra(upstream_tls={"starttls": "require"}))
    s = smtplib.SMTP("127.0.0.1", proxy.port, local_hostname=CLIENT_NAME, timeout=20)
    try:
        code, text = s.ehlo()
        assert code == 421 and text.startswith(b"4.7.0"), (code, text)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.sendmail(FROM, [TO], body("require"))
    finally:
        s.close()
    up.wait_all_closed()
    assert not up.messages()


def test_require_tls_ok_delivers(make_tls_fake, make_proxy):
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra(upstream_tls={"starttls": "require"}))
    msg = body("require ok")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, "TLSv1.3")
    assert_back_tls(wait_session_lines(proxy, 1)[0], "TLSv1.3")


# --------------------------------------------------------------------------------------
# [upstream_policy]
# --------------------------------------------------------------------------------------

def test_policy_off_by_network(make_tls_fake, make_proxy):
    """upstream = 127.0.0.1:PORT, off = 127.0.0.0/8: no STARTTLS although offered."""
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra(policy={"off": "127.0.0.0/8"}))
    msg = body("policy off")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, None)
    assert [c.starttls for c in up.conns()] == [0], up.describe()
    assert_back_cleartext(wait_session_lines(proxy, 1)[0], r"policy")


def test_policy_require_by_address(make_tls_fake, make_proxy):
    """Global may, require = 127.0.0.1, STARTTLS refused with 454: 421 4.7.0."""
    up = make_tls_fake("refuse-454")
    proxy = make_proxy(up.addr, back_extra(policy={"require": "127.0.0.1"}))
    expect_421_470(proxy.port, up)


def test_policy_off_by_greeting_name(make_tls_fake, make_proxy):
    """The greeting "220 mx1.test.example ESMTP": off = *.test.example matches it."""
    up = make_tls_fake("tls-ok", greeting="mx1.test.example ESMTP fake")
    proxy = make_proxy(up.addr, back_extra(policy={"off": "*.test.example"}))
    msg = body("greeting off")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, None)
    assert [c.starttls for c in up.conns()] == [0], up.describe()
    assert_back_cleartext(wait_session_lines(proxy, 1)[0], r"policy")


def test_policy_require_by_greeting_name(make_tls_fake, make_proxy):
    up = make_tls_fake("no-starttls", greeting="mx1.test.example ESMTP fake")
    proxy = make_proxy(up.addr, back_extra(policy={"require": "*.test.example"}))
    expect_421_470(proxy.port, up)


def test_policy_longer_prefix_wins(make_tls_fake, make_proxy):
    """off = 127.0.0.0/8 but may = 127.0.0.1: the /32 is more specific, TLS is used."""
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra(policy={"off": "127.0.0.0/8",
                                                   "may": "127.0.0.1"}))
    msg = body("prefix")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, "TLSv1.3")


def test_policy_exact_name_beats_network(make_tls_fake, make_proxy):
    """upstream = localhost:PORT: may = localhost (exact name) beats off = 127.0.0.0/8."""
    up = make_tls_fake("tls-ok", dual_stack=True)
    proxy = make_proxy(f"localhost:{up.port}",
                       back_extra(policy={"off": "127.0.0.0/8", "may": "localhost"}))
    msg = body("exact name")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, "TLSv1.3")


def test_policy_suffix_beats_network(make_tls_fake, make_proxy):
    """require = 127.0.0.0/8 but off = *.test.example (the greeting's name): a *. suffix
    beats a network, so no STARTTLS and the message is delivered."""
    up = make_tls_fake("tls-ok", greeting="mx1.test.example ESMTP fake")
    proxy = make_proxy(up.addr, back_extra(policy={"require": "127.0.0.0/8",
                                                   "off": "*.test.example"}))
    msg = body("suffix")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, None)
    assert [c.starttls for c in up.conns()] == [0], up.describe()


def test_policy_configured_name_off(make_tls_fake, make_proxy):
    """upstream = localhost:PORT, off = localhost: matched on the configured name."""
    up = make_tls_fake("tls-ok", dual_stack=True)
    proxy = make_proxy(f"localhost:{up.port}", back_extra(policy={"off": "localhost"}))
    msg = body("name off")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, None)
    assert [c.starttls for c in up.conns()] == [0], up.describe()


# --------------------------------------------------------------------------------------
# verify = ca
# --------------------------------------------------------------------------------------

def verify_extra(back_certs, starttls):
    return back_extra(upstream_tls={"starttls": starttls, "verify": "ca",
                                    "ca_file": back_certs["ca"][0]})


def test_verify_ok(make_tls_fake, make_proxy, back_certs):
    up = make_tls_fake("tls-ok", cert=back_certs["ca_localhost"], dual_stack=True)
    proxy = make_proxy(f"localhost:{up.port}", verify_extra(back_certs, "require"))
    msg = body("verified")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, "TLSv1.3")
    [line] = wait_session_lines(proxy, 1)
    assert_back_tls(line, "TLSv1.3")
    bad = [ln for ln in proxy.stderr().splitlines()
           if re.search(r"certificate-host-mismatch|validation-failure|verify.?fail", ln, re.I)]
    assert not bad, bad


@pytest.mark.parametrize("which", ["ca_other", "self_localhost"],
                         ids=["wrong-name", "wrong-ca"])
def test_verify_failure_with_may_stays_encrypted(make_tls_fake, make_proxy, back_certs,
                                                 which):
    up = make_tls_fake("tls-ok", cert=back_certs[which], dual_stack=True)
    proxy = make_proxy(f"localhost:{up.port}", verify_extra(back_certs, "may"))
    msg = body("verify may " + which)
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, "TLSv1.3")
    assert len(up.conns()) == 1, up.describe()
    [line] = wait_session_lines(proxy, 1)
    assert_back_tls(line, "TLSv1.3")
    logged = [ln for ln in proxy.stderr().splitlines() if VERIFY_FAIL_RE.search(ln)]
    assert logged, f"verification failure not logged:\n{proxy.stderr()[-3000:]}"


@pytest.mark.parametrize("which", ["ca_other", "self_localhost"],
                         ids=["wrong-name", "wrong-ca"])
def test_verify_failure_with_require_gives_421(make_tls_fake, make_proxy, back_certs, which):
    up = make_tls_fake("tls-ok", cert=back_certs[which], dual_stack=True)
    proxy = make_proxy(f"localhost:{up.port}", verify_extra(back_certs, "require"))
    expect_421_470(proxy.port, up)
    assert len(up.conns()) == 1, up.describe()
    logged = [ln for ln in proxy.stderr().splitlines() if VERIFY_FAIL_RE.search(ln)]
    assert logged, f"verification failure not logged:\n{proxy.stderr()[-3000:]}"


# --------------------------------------------------------------------------------------
# Relaying over the TLS leg 2
# --------------------------------------------------------------------------------------

def test_pipelined_transaction_over_tls(make_tls_fake, make_proxy):
    """MAIL, two RCPTs and DATA in one write (PIPELINING): replies in order, over TLS."""
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra())
    msg = body("pipelined")
    with harness.SmtpConn("127.0.0.1", proxy.port) as c:
        assert c.greeting().code == 220
        assert "PIPELINING" in c.cmd(f"EHLO {CLIENT_NAME}").lines
        c.send(f"MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nRCPT TO:<second@upstream.test>\r\n"
               f"DATA\r\n".encode())
        replies = c.replies(4)
        assert [r.raw for r in replies[:3]] == [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n",
                                                b"250 2.1.5 Ok\r\n"], replies
        assert replies[3].code == 354, replies
        c.send(msg.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
        r1, r2 = c.replies(2)
        assert r1.code == 250 and r2.code == 221, (r1, r2)
    up.wait_all_closed()
    [m] = up.messages()
    assert m.tls_version == "TLSv1.3" and m.content == msg
    assert m.rcpts == [f"<{TO}>".encode(), b"<second@upstream.test>"]


def test_large_message_over_tls(make_tls_fake, make_proxy):
    """4 MiB through the TLS leg 2: byte-identical, once."""
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra())
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_\xc3\xa9\r\n"
    big = body("large") + line * (4 * 1024 * 1024 // len(line)) + b".dot line\r\n"
    r = smtplib_send(proxy.port, big, timeout=60)
    assert_normal_session(r)
    assert_delivered_once(up, big, "TLSv1.3", timeout=30)


def test_client_tls_with_leg2_fallback(make_tls_fake, make_proxy):
    """The legs are independent: the client's STARTTLS works (leg 1 TLS) while the
    upstream's handshake fails and leg 2 falls back to cleartext."""
    up = make_tls_fake("eof-after-220")
    proxy = make_proxy(up.addr, back_extra(client_tls={"starttls": "offer"}))
    msg = body("leg1 tls leg2 clear")
    r = smtplib_send(proxy.port, msg, client_starttls=True)
    assert r.tls_version == "TLSv1.3", r
    assert r.mail[0] == 250 and r.rcpt[0] == 250 and r.data[0] == 250, r
    assert_delivered_once(up, msg, None)
    [line] = wait_session_lines(proxy, 1)
    assert line.get("front_tls") == "TLSv1.3", line["_line"]
    assert_back_cleartext(line, r"eof")
