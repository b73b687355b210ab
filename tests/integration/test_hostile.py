"""Hostile peers on both legs (issue 9): one test per defect, each attacking the rule that
closes it, with real programs where the harm shows (Postfix as the upstream for XCLIENT
trust and relay decisions) and fake upstreams only for behaviour no real server produces
on demand.

The rules under attack:
  1. Verbs are read the way the laxest upstream reads them: split on any whitespace,
     case-insensitive; a line with leading whitespace is refused (500 5.5.2). XCLIENT and
     STARTTLS from a client never reach the upstream in any spelling; BDAT goes up in
     canonical form, so the upstream frames the chunk as the proxy does.
  2. After AUTH nothing is relayed before its reply; a 334 makes exactly the next line a
     SASL response.
  3. Every upstream connection (each fallback step, the replay, the reconnect after a
     rejected message) carries the configured identity before any client command.
  4. Only a failed negotiation is remembered, never a connection lost later.
  5. The memory holds the ladder step that worked; cleartext only when cleartext worked;
     never cleartext with fallback = off.
  6. A TLS first flight larger than the memory BIO pair is fed whole, on both legs.
  7. A command line, a PROXY header and a TLS handshake each complete within their timeout
     counted from their first byte.
  8. Locally answered commands are subject to back-pressure like relayed ones.
  9. A rejected message does not end the session: the upstream leg is reopened invisibly.
     Bare LF lines are normalised (default) or rejected (bare_newline = reject).
 10. No byte sequence a NUL-stripping or bare-LF-tolerant server reads as end-of-data
     reaches it.
 11. A greeting other than 220/554, or a reply nobody asked for, ends the session with 421.
 14. Back-pressure never strands bytes inside the proxy (large messages over TLS).
(12 and 13 are in test_cli.py and test_metrics.py.)
"""

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

import harness
from back_tls_support import back_extra, body, identity_ok, smtplib_send, wait_session_lines
from harness import SmtpConn, wait_for

CLIENT = "client.test"


def words(line):
    """A command line split the way Postfix splits it."""
    return line.split()


def executed_verbs(conn):
    """The verbs an upstream connection executed, read the Postfix way."""
    return [words(c)[0].upper() for c in conn.commands if words(c)]


def session(port, source=None):
    c = SmtpConn("127.0.0.1", port, source=source)
    assert c.greeting().code == 220
    return c


def send_message(c, content=b"Subject: t\r\n\r\nhello\r\n", rcpt="b@upstream.test",
                 mail_from="a@client.test"):
    """MAIL, RCPT, DATA and |content| (already dot-stuffed, without the final dot) on an
    open session; returns the reply to the end of data."""
    r = c.cmd(f"MAIL FROM:<{mail_from}>")
    assert r.code == 250, r
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    assert r.code == 250, r
    r = c.cmd("DATA")
    assert r.code == 354, r
    c.send(content + b".\r\n")
    return c.reply()


# --------------------------------------------------------------------------------------
# 1. Verb recognition
# --------------------------------------------------------------------------------------

XCLIENT_CAPS = ("PIPELINING", "8BITMIME", "CHUNKING", "XCLIENT NAME ADDR PROTO HELO PORT")

REFUSED_SPELLINGS = [
    b" XCLIENT ADDR=192.0.2.1",
    b"\tXCLIENT ADDR=192.0.2.1",
    b"XCLIENT\tADDR=192.0.2.1",
    b"xclient\x0bADDR=192.0.2.1",
    b"XcLiEnT\x0cADDR=192.0.2.1",
    b"XCLIENT  ADDR=192.0.2.1",
    b"XCLIENT",
    b" STARTTLS",
    b"\tSTARTTLS",
    b"starttls\t",
    b"STARTTLS\x0b",
]


@pytest.mark.parametrize("line", REFUSED_SPELLINGS, ids=repr)
def test_refused_verbs_never_relayed_in_any_spelling(make_upstream, make_proxy, line):
    up = make_upstream(caps=XCLIENT_CAPS, xclient_reply=b"220 fake.test after XCLIENT\r\n")
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        r = c.cmd(line)
        assert 500 <= r.code < 600, r
        if line[:1].isspace():
            assert r.startswith("500 5.5.2"), r
        # The session stays in step: the next command gets its own reply.
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    verbs = executed_verbs(conn)
    assert b"XCLIENT" not in verbs and b"STARTTLS" not in verbs, conn.commands
    assert conn.xclients == []


@pytest.mark.parametrize("line", [b"\tDATA", b" DATA", b" RSET", b"\tMAIL FROM:<a@b.test>"],
                         ids=repr)
def test_leading_whitespace_refused(make_upstream, make_proxy, line):
    up = make_upstream()
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert c.cmd(line).startswith("500 5.5.2")
        assert send_message(c).code == 250
        assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert executed_verbs(conn) == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
    assert len(conn.messages) == 1


@pytest.mark.parametrize("verb", [b"DATA\t", b"data ", b"DaTa\x0b"], ids=repr)
def test_data_in_any_spelling_is_data(make_upstream, make_proxy, verb):
    """The proxy decides content mode on the upstream's 354, whatever the spelling."""
    up = make_upstream()
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
        assert c.cmd(verb).code == 354
        # A command hidden in the content would run upstream if the proxy were out of step.
        c.send(b"Subject: t\r\n\r\nXCLIENT ADDR=192.0.2.1\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert b"XCLIENT" not in executed_verbs(conn)
    assert conn.messages[0].content == b"Subject: t\r\n\r\nXCLIENT ADDR=192.0.2.1\r\n"


@pytest.mark.parametrize("line", [b"BDAT\t24 LAST", b"bdat 24\tlast", b"BDAT  24 LAST",
                                  b"BDAT 24 LAST "], ids=repr)
def test_bdat_in_any_spelling_framed_like_upstream(make_upstream, make_proxy, line):
    """BDAT goes up as "BDAT <n> LAST" (or is refused), so the upstream frames the chunk as
    the proxy does and no chunk byte is read as a command on either side."""
    up = make_upstream(caps=XCLIENT_CAPS, xclient_reply=b"220 fake.test after XCLIENT\r\n")
    proxy = make_proxy(up.addr)
    chunk = b"XCLIENT ADDR=192.0.2.1\r\n"
    assert len(chunk) == 24
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
        c.send(line + b"\r\n" + chunk)
        r = c.reply()
        if r.code == 250:
            assert c.cmd("NOOP").code == 250
        else:
            # Refused: the chunk was swallowed, never read as a command.
            assert r.code == 501, r
            assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert conn.xclients == [] and b"XCLIENT" not in executed_verbs(conn), conn.commands
    bdat = [x for x in conn.commands if x.upper().startswith(b"BDAT")]
    assert bdat in ([b"BDAT 24 LAST"], []), conn.commands
    if bdat:
        assert [m.content for m in conn.messages] == [chunk]


@pytest.mark.parametrize("line", [b" XCLIENT ADDR=192.0.2.1", b"XCLIENT\tADDR=192.0.2.1",
                                  b"\tXCLIENT ADDR=192.0.2.1", b"xclient ADDR=192.0.2.1"],
                         ids=repr)
def test_postfix_never_sees_client_xclient(make_postfix, make_proxy, line):
    """Postfix trusts the proxy's XCLIENT; a client claiming an address in Postfix's
    mynetworks must not turn 'Relay access denied' into an open relay."""
    pf = make_postfix(xclient_hosts="127.0.0.0/8", main_extra={"mynetworks": "192.0.2.0/24"})
    proxy = make_proxy(pf.addr, {"proxy": {"upstream_identity": "xclient"}})
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert 500 <= c.cmd(line).code < 600
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        r = c.cmd("RCPT TO:<victim@remote.example>")
        assert r.code == 554 and "Relay access denied" in r.text, r
        c.cmd("QUIT")
    assert "192.0.2.1" not in pf.log()


# --------------------------------------------------------------------------------------
# 2. AUTH pipelining
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("second", [b"*", b"NOOP"], ids=repr)
def test_auth_pipelining_cannot_desync(make_upstream, make_proxy, second):
    """AUTH ends a pipelined group (RFC 4954 section 4): the line after it is relayed as a
    SASL response only because the upstream answered 334, and exactly that line."""
    up = make_upstream(caps=XCLIENT_CAPS, auth=True,
                       xclient_reply=b"220 fake.test after XCLIENT\r\n")
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        c.send(b"AUTH PLAIN\r\n" + second + b"\r\n")
        r1, r2 = c.replies(2)
        assert r1.code == 334, r1
        assert r2.code == (501 if second == b"*" else 535), r2
        # Command mode again: this is a command, and refused.
        assert c.cmd("XCLIENT ADDR=192.0.2.1").code == 550
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    conn = up.wait_closed()
    assert conn.sasl == [second]
    assert conn.xclients == [] and b"XCLIENT" not in executed_verbs(conn), conn.commands


def test_auth_pipelined_commands_wait_for_the_reply(make_upstream, make_proxy):
    """Lines pipelined after AUTH with an initial response are commands only once the
    upstream answered (235/535), never SASL responses."""
    up = make_upstream(caps=XCLIENT_CAPS, auth=True,
                       xclient_reply=b"220 fake.test after XCLIENT\r\n")
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        c.send(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\nXCLIENT ADDR=192.0.2.1\r\nNOOP\r\n")
        r = c.replies(3)
        assert [x.code for x in r] == [235, 550, 250], r
    conn = up.wait_closed()
    assert conn.xclients == []
    assert executed_verbs(conn) == [b"EHLO", b"AUTH", b"NOOP"]


def test_sasl_response_with_bad_bytes_is_cancelled(make_upstream, make_proxy):
    """A SASL response the proxy cannot relay safely (a bare CR inside) goes up as "*",
    so the upstream leaves its SASL state exactly when the proxy thinks it does."""
    up = make_upstream(caps=XCLIENT_CAPS, auth=True,
                       xclient_reply=b"220 fake.test after XCLIENT\r\n")
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert c.cmd("AUTH PLAIN").code == 334
        assert c.cmd(b"abc\rXCLIENT ADDR=192.0.2.1").code == 501
        assert c.cmd("NOOP").code == 250
    conn = up.wait_closed()
    assert conn.sasl == [b"*"]
    assert conn.xclients == []


# --------------------------------------------------------------------------------------
# 3. Identity on every upstream connection
# --------------------------------------------------------------------------------------

# Leg-2 failures and the connections each produces with the default fallback_steps
# (no-client-cert is skipped without a client certificate): TLS 1.3, TLS 1.2, cleartext.
LADDER_MODES = ["cert-required", "no-shared-cipher", "eof-after-220", "reset-during-handshake",
                "tls13-intolerant", "post-tls-ehlo-403", "post-tls-ehlo-554", "post-tls-close",
                "refuse-454", "starttls-garbage"]


@pytest.mark.parametrize("identity", ["xclient", "proxy-v1", "proxy-v2"])
@pytest.mark.parametrize("mode", LADDER_MODES)
def test_identity_on_every_fallback_connection(make_tls_fake, make_proxy, mode, identity):
    up = make_tls_fake(mode, xclient=identity == "xclient",
                       proxy_header=identity.startswith("proxy"))
    extra = back_extra(upstream_tls={"fallback_steps": "no-client-cert, tls12, cleartext"})
    extra["proxy"] = {"upstream_identity": identity}
    proxy = make_proxy(up.addr, extra)
    r = smtplib_send(proxy.port, body(mode))
    assert r.data[0] == 250, r
    up.wait_messages(1)
    up.wait_all_closed()
    conns = up.conns()
    assert len(conns) >= 2 or mode in ("refuse-454", "starttls-garbage"), up.describe()
    for conn in conns:
        assert identity_ok(conn, identity, "127.0.0.1"), (mode, up.describe())


@pytest.mark.parametrize("identity", ["xclient", "proxy-v2"])
def test_identity_on_replay_connection(make_tls_fake, make_proxy, identity):
    """TLS breaks at MAIL: the envelope is replayed on a new connection, which carries the
    identity first, like every other."""
    up = make_tls_fake("tls-break-at-mail", xclient=identity == "xclient",
                       proxy_header=identity.startswith("proxy"))
    extra = back_extra()
    extra["proxy"] = {"upstream_identity": identity}
    proxy = make_proxy(up.addr, extra)
    r = smtplib_send(proxy.port, body("replay"))
    assert r.mail[0] == 250 and r.data[0] == 250, r
    assert len(up.wait_messages(1)) == 1
    conns = up.conns()
    assert len(conns) == 2, up.describe()
    for conn in conns:
        assert identity_ok(conn, identity, "127.0.0.1"), up.describe()


@pytest.mark.parametrize("identity", ["xclient", "proxy-v1"])
def test_identity_on_reconnect_after_rejected_message(make_upstream, make_proxy, identity):
    up = make_upstream(caps=XCLIENT_CAPS, xclient_reply=b"220 fake.test after XCLIENT\r\n",
                       proxy_header=identity.startswith("proxy"))
    proxy = make_proxy(up.addr, {"proxy": {"upstream_identity": identity}})
    with session(proxy.port, source="127.0.0.2") as c:
        c.ehlo(CLIENT)
        assert send_message(c, b"Subject: bad\r\n\r\nbare\rCR\r\n").startswith("550 5.5.2")
        assert send_message(c, b"Subject: good\r\n\r\nfine\r\n").code == 250
        assert c.cmd("QUIT").code == 221
    conns = up.wait_connections(2)
    assert [m.content for m in up.messages()] == [b"Subject: good\r\n\r\nfine\r\n"]
    for conn in conns:
        assert identity_ok(conn, identity, "127.0.0.2"), conn.commands


def test_identity_required_fails_closed(make_upstream, make_proxy):
    """upstream_identity = xclient and an upstream that does not offer XCLIENT: no client
    command may go up under the proxy's own identity; the client gets 421 4.7.0."""
    up = make_upstream(caps=("PIPELINING", "8BITMIME"))
    proxy = make_proxy(up.addr, {"proxy": {"upstream_identity": "xclient"}})
    with session(proxy.port) as c:
        r = c.cmd(f"EHLO {CLIENT}")
        assert r.startswith("421 4.7.0"), r
        c.wait_closed()
    conn = up.wait_closed()
    assert executed_verbs(conn) in ([b"EHLO"], [b"EHLO", b"QUIT"]), conn.commands


@pytest.mark.parametrize("reply", [b"550 5.7.0 Error: insufficient authorization\r\n",
                                   b"554 5.7.1 go away\r\n", b"421 4.3.0 busy\r\n"], ids=repr)
def test_xclient_refused_fails_closed(make_upstream, make_proxy, reply):
    up = make_upstream(caps=XCLIENT_CAPS, xclient_reply=reply)
    proxy = make_proxy(up.addr, {"proxy": {"upstream_identity": "xclient"}})
    with session(proxy.port) as c:
        assert c.cmd(f"EHLO {CLIENT}").startswith("421 4.7.0")
        c.wait_closed()
    conn = up.wait_closed()
    assert executed_verbs(conn)[:2] == [b"EHLO", b"XCLIENT"]
    assert b"MAIL" not in executed_verbs(conn)


def _postfix_dhe_only(tmp_path):
    """Postfix TLS settings a BoringSSL client cannot meet (TLS 1.2 with DHE only): every
    handshake fails, so the proxy walks the ladder to its cleartext connection."""
    cert, key = harness.make_cert(str(tmp_path), "postfix.test", "rsa")
    return {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": cert,
            "smtpd_tls_key_file": key,
            "smtpd_tls_protocols": "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1, !TLSv1.3",
            "smtpd_tls_ciphers": "high",
            "smtpd_tls_exclude_ciphers": "aNULL, ECDHE, kRSA, PSK, SRP, ECDSA, CAMELLIA, ARIA",
            "smtpd_tls_dh1024_param_file": ""}


def test_postfix_fallback_connection_keeps_client_identity(make_postfix, make_proxy, tmp_path):
    """Postfix trusts the proxy's address (mynetworks) and its XCLIENT; the client at
    127.0.0.2 is not in mynetworks. After the TLS attempts fail, the cleartext connection
    must carry XCLIENT, so Postfix still sees the client and refuses to relay."""
    pf = make_postfix(xclient_hosts="127.0.0.1/32",
                      main_extra={"mynetworks": "127.0.0.1/32", **_postfix_dhe_only(tmp_path)})
    extra = back_extra()
    extra["proxy"] = {"upstream_identity": "xclient"}
    proxy = make_proxy(pf.addr, extra, listen=[f"127.0.0.1:{harness.free_port()}"])
    with session(proxy.port, source="127.0.0.2") as c:
        c.ehlo(CLIENT)
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        r = c.cmd("RCPT TO:<victim@remote.example>")
        assert r.code == 554 and "Relay access denied" in r.text, r
        c.cmd("QUIT")
    line = proxy.wait_session_line()
    assert line["back_tls"] == "cleartext", line
    pf.wait_log(r"\[127\.0\.0\.2\]")  # Postfix writes its log after it replies


# --------------------------------------------------------------------------------------
# 4 and 5. What the proxy remembers about an upstream
# --------------------------------------------------------------------------------------

def one_session(port):
    r = smtplib_send(port, body("s"))
    assert r.data[0] == 250, r
    return r


def test_client_made_close_is_not_remembered(make_tls_fake, make_proxy):
    """A client that makes a TLS upstream close (Exim's 421 after too many unrecognized
    commands) must not send later sessions to cleartext."""
    up = make_tls_fake("tls-ok", close_after_unknown=3)
    proxy = make_proxy(up.addr, back_extra())
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        c.send(b"FOO\r\nFOO\r\nFOO\r\n")
        r = c.replies(3)
        assert [x.code for x in r] == [502, 502, 421], r
    wait_session_lines(proxy, 1)
    one_session(proxy.port)
    lines = wait_session_lines(proxy, 2)
    assert lines[1]["back_tls"].startswith("TLSv1"), lines[1]
    assert up.conns()[-1].starttls == 1
    assert not proxy.events("back-tls-remembered"), proxy.stderr()


def test_tls_break_mid_session_is_not_remembered(make_tls_fake, make_proxy):
    up = make_tls_fake("tls-break-at-mail")
    proxy = make_proxy(up.addr, back_extra())
    one_session(proxy.port)
    up.mode = "tls-ok"
    one_session(proxy.port)
    lines = wait_session_lines(proxy, 2)
    assert lines[1]["back_tls"].startswith("TLSv1"), lines
    assert not proxy.events("back-tls-remembered"), proxy.stderr()


def test_remember_the_step_that_worked(make_tls_fake, make_proxy, back_certs):
    """client-cert-disliked: TLS works without the client certificate. The next session
    goes straight to that step (TLS, no certificate), not to cleartext; once the memory
    expires the better step (with the certificate) is tried again."""
    up = make_tls_fake("client-cert-disliked")
    cert, key = back_certs["client"]
    proxy = make_proxy(up.addr, back_extra(upstream_tls={
        "fallback_steps": "no-client-cert, tls12, cleartext", "certificate": cert,
        "key": key, "remember_failures": "2s"}))
    one_session(proxy.port)
    assert [c.client_cert for c in up.conns()] == [None, False], up.describe()
    one_session(proxy.port)
    conns = up.conns()
    assert len(conns) == 3 and conns[2].client_cert is False and conns[2].tls_version, \
        up.describe()
    lines = wait_session_lines(proxy, 2)
    assert all(x["back_tls"].startswith("TLSv1") for x in lines), lines
    time.sleep(2.5)
    one_session(proxy.port)
    conns = up.conns()
    assert len(conns) == 5, up.describe()
    assert conns[3].tls_version is None and conns[4].client_cert is False


def test_cleartext_remembered_only_when_it_worked(make_tls_fake, make_proxy):
    up = make_tls_fake("eof-after-220")
    proxy = make_proxy(up.addr, back_extra())
    one_session(proxy.port)
    one_session(proxy.port)
    conns = up.conns()
    # Session 1: TLS, then cleartext; session 2: straight to cleartext (remembered).
    assert len(conns) == 3 and conns[2].starttls == 0, up.describe()
    lines = wait_session_lines(proxy, 2)
    assert lines[1]["back_tls_reason"] == "remembered", lines[1]


def test_fallback_off_never_cleartext_even_when_remembered(make_tls_fake, make_proxy):
    """A failure remembered while fallback was on, then fallback = off by a reload: the
    next session must try TLS again and, failing, refuse with 421, never go cleartext."""
    up = make_tls_fake("eof-after-220")
    proxy = make_proxy(up.addr, back_extra())
    one_session(proxy.port)  # remembered: cleartext works
    proxy.sections["upstream_tls"]["fallback"] = "off"
    with open(proxy.ini_path, "w") as f:
        f.write(harness.render_ini(proxy.sections))
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("reloaded")
    before = len(up.messages())
    with session(proxy.port) as c:
        r = c.cmd(f"EHLO {CLIENT}")
        assert r.startswith("421 4.7.0"), r
        c.wait_closed()
    assert len(up.messages()) == before
    assert up.conns()[-1].starttls == 1, up.describe()
    assert not any(c.commands and any(x.startswith(b"MAIL") for x in c.commands)
                   for c in up.conns()[2:]), up.describe()


# --------------------------------------------------------------------------------------
# 6. Large first flights
# --------------------------------------------------------------------------------------

def big_cert(directory, name, kind="ec", n_names=700):
    """A self-signed certificate of about 40 KB: many subjectAltNames."""
    cert = os.path.join(directory, f"big-{name}.crt.pem")
    key = os.path.join(directory, f"big-{name}.key.pem")
    sans = ",".join(f"DNS:host-{i:04d}.a-long-label-to-make-the-certificate-large.test"
                    for i in range(n_names))
    algo = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec" else \
        ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *algo, "-nodes", "-days", "2", "-subj",
                    f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},{sans}",
                    "-keyout", key, "-out", cert], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return cert, key


def test_large_server_flight_on_leg2(make_tls_fake, make_proxy, tmp_path):
    cert, key = big_cert(str(tmp_path), "localhost")
    assert os.path.getsize(cert) > 35000
    up = make_tls_fake("tls-ok", cert=(cert, key))
    proxy = make_proxy(up.addr, back_extra(timeouts={"tls_handshake": "3s"}))
    one_session(proxy.port)
    line = wait_session_lines(proxy, 1)[0]
    assert line["back_tls"].startswith("TLSv1"), line
    assert len(up.conns()) == 1 and up.messages()[0].tls_version


def test_large_client_certificate_on_leg1(make_upstream, make_proxy, tmp_path):
    cert, key = big_cert(str(tmp_path), "client.test")
    up = make_upstream()
    proxy = make_proxy(up.addr, {"client_tls": {"starttls": "offer",
                                                "ask_client_certificate": "on"},
                                 "timeouts": {"tls_handshake": "3s"}})
    ctx = harness.tls_client_context()
    ctx.load_cert_chain(cert, key)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        c.starttls(ctx)
        c.ehlo(CLIENT)
        assert send_message(c).code == 250
        assert c.cmd("QUIT").code == 221
    line = proxy.wait_session_line()
    assert line["starttls"] == "used", line
    der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                         stdout=subprocess.PIPE).stdout
    assert line["front_client_cert"] == "sha256:" + hashlib.sha256(der).hexdigest(), line


# --------------------------------------------------------------------------------------
# 7. Slowloris
# --------------------------------------------------------------------------------------

def trickle(sock, data, interval, stop):
    for b in data:
        if stop.is_set():
            return
        try:
            sock.send(bytes([b]))
        except OSError:
            return
        time.sleep(interval)


def test_command_line_deadline_counts_from_first_byte(make_upstream, make_proxy):
    up = make_upstream()
    proxy = make_proxy(up.addr, {"timeouts": {"command": "2s"}})
    conns = [session(proxy.port) for _ in range(20)]
    stop = threading.Event()
    t0 = time.monotonic()
    threads = [threading.Thread(target=trickle, args=(c.sock, b"NOOP NOOP NOOP NOOP\r\n", 0.4,
                                                      stop), daemon=True) for c in conns]
    for t in threads:
        t.start()
    try:
        for c in conns:
            r = c.reply(timeout=6)
            assert r.startswith("421 4.4.2"), r
        assert time.monotonic() - t0 < 4.5
    finally:
        stop.set()
        for c in conns:
            c.close()


def test_proxy_header_deadline_counts_from_first_byte(make_upstream, make_proxy):
    up = make_upstream()
    proxy = make_proxy(up.addr, {"proxy": {"proxy_protocol": "v1"},
                                 "timeouts": {"connect": "2s"}})
    c = SmtpConn("127.0.0.1", proxy.port)
    stop = threading.Event()
    t0 = time.monotonic()
    threading.Thread(target=trickle, args=(c.sock, b"PROXY TCP4 192.0.2.1 198.51.100.2 1 25\r\n",
                                           0.3, stop), daemon=True).start()
    try:
        assert c.wait_eof(timeout=6) == b""
        assert time.monotonic() - t0 < 4
    finally:
        stop.set()
        c.close()
    assert up.connections == []


def test_upstream_reply_deadline_counts_from_first_byte(make_proxy):
    """An upstream that trickles its reply to EHLO: 421 after `command`, not never."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    stop = threading.Event()

    def serve():
        s, _ = ls.accept()
        s.sendall(b"220 slow.test ESMTP\r\n")
        s.recv(1000)
        trickle(s, b"250-slow.test\r\n" * 20 + b"250 OK\r\n", 0.3, stop)
        s.close()

    threading.Thread(target=serve, daemon=True).start()
    proxy = make_proxy(f"127.0.0.1:{ls.getsockname()[1]}", {"timeouts": {"command": "2s"}})
    try:
        with session(proxy.port) as c:
            t0 = time.monotonic()
            r = c.cmd(f"EHLO {CLIENT}", timeout=8)
            assert r.startswith("421"), r
            assert time.monotonic() - t0 < 4.5
    finally:
        stop.set()
        ls.close()


# --------------------------------------------------------------------------------------
# 8. A flood of locally answered commands
# --------------------------------------------------------------------------------------

def test_local_reply_flood_is_back_pressured(make_upstream, make_proxy):
    up = make_upstream()
    proxy = make_proxy(up.addr)
    n = 60000
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        c.sock.settimeout(60)
        sender = threading.Thread(target=c.sock.sendall, args=(b"XCLIENT A=1\r\n" * n,),
                                  daemon=True)
        sender.start()
        time.sleep(1.0)  # the client reads nothing meanwhile
        replies = c.replies(n, timeout=60)
        assert all(r.code == 550 for r in replies)
        sender.join(10)
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    assert "out-of-memory" not in proxy.stderr()


def test_upstream_reply_flood_is_back_pressured(make_upstream, make_proxy):
    """A reply of 12 MB (a multi-line HELP) to a client that does not read: more than the
    kernel's buffers hold, so the proxy must stop reading the upstream instead of queueing
    it all (its queue has a hard cap), and relay every line once the client reads."""
    lines = [b"214-%06d %s" % (i, b"h" * 1900) for i in range(6300)] + [b"214 end"]
    big = b"\r\n".join(lines) + b"\r\n"
    up = make_upstream(reply_overrides={b"HELP": big})
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        c.send(b"HELP\r\n")
        time.sleep(1.5)  # the client reads nothing meanwhile
        got = bytearray()
        c.sock.settimeout(30)
        while not got.endswith(b"214 end\r\n"):
            chunk = c.sock.recv(1 << 20)
            assert chunk, f"closed after {len(got)} bytes"
            got += chunk
        assert bytes(got) == big
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    assert "out-of-memory" not in proxy.stderr() and " bug " not in proxy.stderr()


# --------------------------------------------------------------------------------------
# 9 and 10. Rejected messages, bare newlines, NUL before a dot
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    b"Subject: t\r\n\r\nbare\rCR\r\n",
    b"Subject: t\r\n\r\nline\r\n.\nMAIL FROM:<smuggled@evil.test>\r\n",
    b"Subject: t\r\n\r\nline\n.\r\nMAIL FROM:<smuggled@evil.test>\r\n",
    b"Subject: t\r\n\r\nline\r\n\x00.\r\nMAIL FROM:<smuggled@evil.test>\r\n",
    b"Subject: t\r\n\r\nline\r\n.\x00\r\nMAIL FROM:<smuggled@evil.test>\r\n",
    b"Subject: t\r\n\r\nline\r\n\x00.\x00\r\nMAIL FROM:<smuggled@evil.test>\r\n",
    b"Subject: t\r\n\r\nline\r.\rMAIL FROM:<smuggled@evil.test>\r\n",
], ids=repr)
def test_smuggling_rejected_and_session_goes_on(make_upstream, make_proxy, bad):
    """A lenient upstream (NUL-stripping, bare-LF/CR end of data) never sees the smuggled
    command; the client gets 550 5.5.2 and its next message is delivered on the same
    session."""
    up = make_upstream(lenient_eod=True, strip_nul=True)
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert send_message(c, bad).startswith("550 5.5.2")
        assert send_message(c, b"Subject: good\r\n\r\nfine\r\n").code == 250
        assert c.cmd("QUIT").code == 221
    up.wait_connections(2)
    wait_for(lambda: all(conn.closed.is_set() for conn in up.connections))
    for conn in up.connections:
        assert not any(b"smuggled" in x for x in conn.commands), conn.commands
    # (this lenient reader takes the CRLF before the dot as part of the end)
    assert [m.content for m in up.messages()] == [b"Subject: good\r\n\r\nfine"]


def test_bare_lf_normalised(make_upstream, make_proxy):
    up = make_upstream()
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        r = send_message(c, b"Subject: lf\n\nline one\nline two\r\nthree\r\n")
        assert r.code == 250, r
        c.cmd("QUIT")
    up.wait_closed()
    assert up.messages()[0].content == b"Subject: lf\r\n\r\nline one\r\nline two\r\nthree\r\n"


def test_bare_lf_rejected_in_reject_mode(make_upstream, make_proxy):
    up = make_upstream()
    proxy = make_proxy(up.addr, {"proxy": {"bare_newline": "reject"}})
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert send_message(c, b"Subject: lf\n\nline\r\n").startswith("550 5.5.2")
        assert send_message(c, b"Subject: ok\r\n\r\nline\r\n").code == 250
        c.cmd("QUIT")
    up.wait_connections(2)
    assert [m.content for m in up.messages()] == [b"Subject: ok\r\n\r\nline\r\n"]


def test_reconnect_after_rejection_redoes_tls(make_tls_fake, make_proxy):
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra())
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        assert send_message(c, b"Subject: bad\r\n\r\nx\rx\r\n").startswith("550 5.5.2")
        assert send_message(c, b"Subject: good\r\n\r\ny\r\n").code == 250
        c.cmd("QUIT")
    msgs = up.wait_messages(1)
    conns = up.conns()
    assert len(conns) == 2 and conns[1].tls_version and msgs[0].tls_version, up.describe()
    assert not conns[0].messages


# --------------------------------------------------------------------------------------
# 11. Replies paired with the wrong commands
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("greeting", [b"250 early\r\n220 fake.test ready\r\n",
                                      b"421 4.3.2 busy\r\n", b"354 go\r\n"], ids=repr)
def test_bad_greeting_ends_session(make_upstream, make_proxy, greeting):
    up = make_upstream(greeting=greeting)
    proxy = make_proxy(up.addr)
    with SmtpConn("127.0.0.1", proxy.port) as c:
        r = c.greeting()
        assert r.code == 421, r
        c.wait_closed()
    assert all(conn.commands in ([], [b"QUIT"]) for conn in up.connections)


def test_554_greeting_relayed(make_upstream, make_proxy):
    up = make_upstream(greeting=b"554 5.3.2 no service here\r\n")
    proxy = make_proxy(up.addr)
    with SmtpConn("127.0.0.1", proxy.port) as c:
        r = c.greeting()
        assert r.code == 554 and "no service here" in r.text, r
        assert c.cmd("QUIT").code == 221


def test_unsolicited_reply_ends_session(make_upstream, make_proxy):
    up = make_upstream(extra_replies={b"NOOP": b"250 2.0.0 extra reply\r\n"})
    proxy = make_proxy(up.addr)
    with session(proxy.port) as c:
        c.ehlo(CLIENT)
        r = c.cmd("NOOP")
        assert r.code == 250 and "extra" not in r.text, r
        r = c.reply(timeout=5)
        assert r.code == 421, r
        c.wait_closed()
    line = proxy.wait_session_line()
    assert line["end"] == "upstream-protocol-error", line


# --------------------------------------------------------------------------------------
# 14. Back-pressure with large messages over TLS
# --------------------------------------------------------------------------------------

def _tls_sender(port, n_messages, size, results, index):
    try:
        chunk = (b"x" * 998 + b"\r\n") * 1024  # 1 MiB of 1000-byte lines
        content = b"Subject: big\r\n\r\n" + chunk * (size // len(chunk))
        digest = hashlib.sha256(content).hexdigest()
        with SmtpConn("127.0.0.1", port, timeout=120) as c:
            assert c.greeting().code == 220
            c.ehlo(CLIENT)
            c.starttls()
            c.ehlo(CLIENT)
            for _ in range(n_messages):
                assert c.cmd("MAIL FROM:<a@client.test>", timeout=120).code == 250
                assert c.cmd("RCPT TO:<b@upstream.test>", timeout=120).code == 250
                assert c.cmd("DATA", timeout=120).code == 354
                c.sock.sendall(content + b".\r\n")
                r = c.reply(timeout=120)
                assert r.code == 250, r
            c.cmd("QUIT")
        results[index] = (len(content), digest)
    except Exception as e:  # reported by the main thread
        results[index] = e


def test_large_messages_over_tls_never_stall(make_upstream, make_proxy):
    up = make_upstream(data_sink=True, rcvbuf=8192)
    proxy = make_proxy(up.addr, {"client_tls": {"starttls": "offer"},
                                 "timeouts": {"data_block": "20s", "command": "20s"}})
    sessions, n_messages, size = 6, 3, 4 * 1024 * 1024
    for _ in range(3):
        results = [None] * sessions
        threads = [threading.Thread(target=_tls_sender,
                                    args=(proxy.port, n_messages, size, results, i))
                   for i in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for r in results:
            assert isinstance(r, tuple), r
    expected = results[0]
    msgs = [m for m in up.messages()]
    assert len(msgs) == 3 * sessions * n_messages
    assert all(m.content == expected for m in msgs)
    assert "data-timeout" not in proxy.stderr() and "client-timeout" not in proxy.stderr()
