"""Leg 2: every way STARTTLS towards the upstream can fail, and the invisible cleartext retry.

The upstream is fake_tls_upstream.TlsFakeUpstream (real SMTP, real TLS with python's ssl),
one mode per failure. For each: the client (python smtplib; swaks for a subset) sees only
normal replies, the message reaches the upstream exactly once and byte-identical over the
expected transport; the session line says why leg 2 was cleartext; a second session while
the failure is remembered goes straight to cleartext (no STARTTLS at all), and once the
memory expires (remember_failures = 2s) TLS is tried again.

Also: the step-down ladder (no-client-cert, tls12, cleartext), the response-injection case,
HELO clients, the retry connection's greeting, a TLS connection that breaks after the
negotiation (envelope replayed in cleartext before DATA; 421 4.4.2 and remembered once body
bytes were sent), parallel sessions on two event loops, and the counters on /metrics.

Config (back_tls_support.back_extra): [client_tls] starttls = strip, [upstream_tls]
starttls = may, fallback = on, fallback_steps = cleartext (the ladder tests set their own),
remember_failures = 2s, [timeouts] tls_handshake = 1s.
"""

import re
import time

import pytest

import harness
from back_tls_support import (REMEMBER_TTL, assert_back_cleartext, assert_back_tls,
                              assert_delivered_once, assert_normal_session,
                              assert_proxy_commands_sane, assert_swaks_normal, back_extra,
                              body, failed_events, run_swaks, smtplib_send,
                              wait_session_lines, CLIENT_NAME, FROM, TO)

# mode: (reason pattern in back_tls_reason / back-tls-failed, leg-2 connections the first
#        session uses with fallback_steps = cleartext; None: 1 or 2 are both right)
FALLBACK_MODES = {
    "refuse-454": (r"454", 1),
    "refuse-502": (r"502", 1),
    "starttls-garbage": (r"bad-reply|garbage|malformed|protocol", None),
    "cert-required": (r"alert|certificate", 2),
    "no-shared-cipher": (r"alert|handshake|cipher", 2),
    "eof-after-220": (r"eof", 2),
    "reset-during-handshake": (r"reset|eof|handshake|error", 2),
    "handshake-timeout": (r"timeout", 2),
    "tls13-intolerant": (r"eof|reset|alert|handshake", 2),
    "post-tls-ehlo-403": (r"403", 2),
    "post-tls-ehlo-554": (r"554", 2),
    "post-tls-close": (r"eof|closed|post-tls", 2),
}

# Failures found after the 220 to STARTTLS: the connection is finished, the retry is a new one.
RECONNECT_MODES = [m for m, (_, n) in FALLBACK_MODES.items() if n == 2]


def probe_tries_starttls(up, port):
    """An EHLO-only session; True when the proxy sent STARTTLS upstream during it."""
    before = len(up.conns())
    with harness.SmtpConn("127.0.0.1", port) as c:
        assert c.greeting().code == 220
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
    up.wait_all_closed()
    return any(conn.starttls for conn in up.conns()[before:])


@pytest.mark.parametrize("mode", list(FALLBACK_MODES))
def test_fallback_remember_and_retry_after_ttl(make_tls_fake, make_proxy, mode):
    reason_re, n_conns = FALLBACK_MODES[mode]
    up = make_tls_fake(mode)
    proxy = make_proxy(up.addr, back_extra())

    # Session 1: STARTTLS upstream fails; the client notices nothing.
    msg1 = body("first")
    r = smtplib_send(proxy.port, msg1)
    t_failed = r.t_ehlo_sent  # the failure (and its memory) came after this
    assert_normal_session(r)
    ehlo_wait = r.t_ehlo_done - r.t_ehlo_sent
    if mode == "handshake-timeout":
        # tls_handshake = 1s, then the cleartext retry: all inside the client's EHLO wait.
        assert 0.9 <= ehlo_wait < 5.0, ehlo_wait
    else:
        assert ehlo_wait < 3.0, ehlo_wait
    m = assert_delivered_once(up, msg1, None)
    conns = up.conns()
    assert conns[0].starttls == 1, up.describe()
    if n_conns is not None:
        assert len(conns) == n_conns, up.describe()
    else:
        assert len(conns) in (1, 2), up.describe()
    if len(conns) == 2:
        # The retry: a new connection, EHLO in cleartext, no STARTTLS.
        assert conns[1].starttls == 0, up.describe()
        assert m.conn is conns[1], up.describe()
        assert conns[1].verbs()[0] == "EHLO", up.describe()
        assert not conns[0].messages, up.describe()
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    assert_back_cleartext(line, reason_re)
    failed = failed_events(proxy)
    assert failed, proxy.stderr()[-3000:]
    assert re.search(reason_re, failed[0].get("reason", ""), re.I), failed[0]["_line"]
    assert failed[0].get("upstream", "").startswith("127.0.0.1"), failed[0]["_line"]
    remembered = proxy.events("back-tls-remembered")
    assert remembered and remembered[0].get("upstream", "").startswith("127.0.0.1"), \
        proxy.stderr()[-3000:]

    # Session 2, straight away: remembered, so no STARTTLS at all.
    before = len(up.conns())
    msg2 = body("second")
    r = smtplib_send(proxy.port, msg2)
    assert_normal_session(r)
    assert_delivered_once(up, msg2, None, since_conn=before)
    assert len(up.conns()) == before + 1, up.describe()
    assert up.conns()[before].starttls == 0, up.describe()
    lines = wait_session_lines(proxy, 2)
    assert_back_cleartext(lines[1], r"remembered")

    # The upstream is fixed; after remember_failures TLS is tried again (not before).
    up.mode = "tls-ok"
    deadline = time.monotonic() + REMEMBER_TTL + 4.0
    tried_at = None
    while time.monotonic() < deadline:
        if probe_tries_starttls(up, proxy.port):
            tried_at = time.monotonic()
            break
        time.sleep(0.2)  # probe pacing; the deadline bounds the wait
    assert tried_at is not None, f"TLS never tried again within {REMEMBER_TTL + 4}s\n" \
                                 f"{proxy.stderr()[-3000:]}"
    # Remembered for about remember_failures (clock granularity allowed for).
    assert tried_at - t_failed >= REMEMBER_TTL - 1.0, tried_at - t_failed

    before = len(up.conns())
    msg3 = body("third")
    r = smtplib_send(proxy.port, msg3)
    assert_normal_session(r)
    assert_delivered_once(up, msg3, "TLSv1.3", since_conn=before)
    assert_back_tls(proxy.session_lines()[-1], "TLSv1.3")


# --------------------------------------------------------------------------------------
# swaks as the client, for a subset
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swaks_reference(tmp_path_factory, back_certs):
    """What swaks sends as content for the message file, measured straight at the fake
    (no proxy, no STARTTLS)."""
    import fake_tls_upstream as fake
    d = tmp_path_factory.mktemp("swaks")
    path = d / "message.eml"
    path.write_bytes(body("swaks"))
    up = fake.TlsFakeUpstream(*back_certs["self_localhost"], mode="no-starttls").start()
    try:
        rc, out = run_swaks(up.port, str(path))
        assert rc == 0, out
        [m] = up.wait_messages(1)
    finally:
        up.stop()
    return str(path), m.content


@pytest.mark.parametrize("mode,expect", [
    ("tls-ok", "TLSv1.3"),
    ("response-injection", "TLSv1.3"),
    ("refuse-454", None),
    ("reset-during-handshake", None),
    ("handshake-timeout", None),
    ("post-tls-ehlo-403", None),
    ("cert-required", None),
])
def test_swaks(make_tls_fake, make_proxy, swaks_reference, mode, expect):
    path, content = swaks_reference
    up = make_tls_fake(mode)
    proxy = make_proxy(up.addr, back_extra())
    rc, out = run_swaks(proxy.port, path)
    assert_swaks_normal(rc, out)
    assert_delivered_once(up, content, expect)
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    if expect:
        assert_back_tls(line, expect)
    else:
        assert_back_cleartext(line, FALLBACK_MODES[mode][0])
        # And a second swaks run while remembered: straight to cleartext.
        before = len(up.conns())
        rc, out = run_swaks(proxy.port, path)
        assert_swaks_normal(rc, out)
        assert_delivered_once(up, content, None, since_conn=before)
        assert [c.starttls for c in up.conns()[before:]] == [0], up.describe()
        assert_back_cleartext(wait_session_lines(proxy, 2)[1], r"remembered")


# --------------------------------------------------------------------------------------
# Response injection: bytes after the 220 to STARTTLS are discarded
# --------------------------------------------------------------------------------------

def test_response_injection_discarded(make_tls_fake, make_proxy):
    up = make_tls_fake("response-injection")
    proxy = make_proxy(up.addr, back_extra())
    msg = body("injection")
    r = smtplib_send(proxy.port, msg)
    assert_normal_session(r)
    # Delivered once, inside TLS: the injected "250" was neither a reply nor fed to TLS.
    m = assert_delivered_once(up, msg, "TLSv1.3")
    [conn] = up.conns()
    assert m.conn is conn
    assert conn.tls_commands and conn.tls_commands[0].upper().startswith(b"EHLO "), conn
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    assert_back_tls(line, "TLSv1.3")


def test_response_injection_raw_client_replies_in_order(make_tls_fake, make_proxy):
    """With a raw client: each command gets exactly its own reply; a stale "250 injected"
    would shift every reply by one."""
    up = make_tls_fake("response-injection")
    proxy = make_proxy(up.addr, back_extra())
    with harness.SmtpConn("127.0.0.1", proxy.port) as c:
        assert c.greeting().code == 220
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.code == 250 and "injected" not in r.text, r
        r = c.cmd(f"MAIL FROM:<{FROM}>")
        assert r.raw == b"250 2.1.0 Ok\r\n", r
        r = c.cmd(f"RCPT TO:<{TO}>")
        assert r.raw == b"250 2.1.5 Ok\r\n", r
        r = c.cmd("DATA")
        assert r.code == 354, r
        c.send(body("raw").replace(b"\r\n.", b"\r\n..") + b".\r\n")  # dot-stuffed
        r = c.reply()
        assert r.code == 250 and r.text.startswith("2.0.0 Ok: queued"), r
        assert c.cmd("NOOP").raw == b"250 2.0.0 Ok\r\n"
        assert c.cmd("QUIT").code == 221
    assert_delivered_once(up, body("raw"), "TLSv1.3")


# --------------------------------------------------------------------------------------
# The step-down ladder
# --------------------------------------------------------------------------------------

def test_ladder_tls13_intolerant_gets_tls12(make_tls_fake, make_proxy):
    """Default ladder (no client certificate): TLS 1.3 ClientHello refused by closing, the
    retry offers TLS 1.2 at most and succeeds: delivered over TLS 1.2, once."""
    up = make_tls_fake("tls13-intolerant")
    proxy = make_proxy(up.addr, back_extra(upstream_tls={
        "fallback_steps": "no-client-cert, tls12, cleartext"}))
    msg = body("tls12")
    r = smtplib_send(proxy.port, msg)
    assert_normal_session(r)
    m = assert_delivered_once(up, msg, "TLSv1.2")
    conns = up.conns()
    assert len(conns) == 2, up.describe()
    assert conns[0].hello_max == "TLSv1.3" and conns[0].tls_version is None, up.describe()
    assert conns[1].hello_max == "TLSv1.2" and conns[1].tls_version == "TLSv1.2", up.describe()
    assert m.conn is conns[1]
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    assert_back_tls(line, "TLSv1.2")

    # While remembered: no second failing TLS 1.3 attempt; one connection, either TLS 1.2
    # straight away (the README: "start at the step that worked") or cleartext.
    before = len(conns)
    msg2 = body("tls12 again")
    r = smtplib_send(proxy.port, msg2)
    assert_normal_session(r)
    after = up.conns()[before:]
    assert len(after) == 1, up.describe()
    assert after[0].hello_max in (None, "TLSv1.2"), up.describe()
    m2 = assert_delivered_once(up, msg2, after[0].tls_version, since_conn=before)
    assert m2.tls_version in (None, "TLSv1.2")


def test_ladder_cleartext_only_skips_tls12(make_tls_fake, make_proxy):
    """fallback_steps = cleartext: after the TLS 1.3 failure no TLS 1.2 attempt."""
    up = make_tls_fake("tls13-intolerant")
    proxy = make_proxy(up.addr, back_extra(upstream_tls={"fallback_steps": "cleartext"}))
    msg = body("no tls12")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, None)
    conns = up.conns()
    assert len(conns) == 2 and conns[1].starttls == 0, up.describe()


def test_ladder_reset_tries_tls12_then_cleartext(make_tls_fake, make_proxy):
    """A reset during the TLS 1.3 handshake: retried once with TLS 1.2 (reset again), then
    cleartext: three connections, delivered once in cleartext."""
    up = make_tls_fake("reset-during-handshake")
    proxy = make_proxy(up.addr, back_extra(upstream_tls={
        "fallback_steps": "no-client-cert, tls12, cleartext"}))
    msg = body("ladder")
    assert_normal_session(smtplib_send(proxy.port, msg))
    m = assert_delivered_once(up, msg, None)
    conns = up.conns()
    assert len(conns) == 3, up.describe()
    assert [c.hello_max for c in conns] == ["TLSv1.3", "TLSv1.2", None], up.describe()
    assert [c.starttls for c in conns] == [1, 1, 0], up.describe()
    assert m.conn is conns[2]
    [line] = wait_session_lines(proxy, 1)
    assert_back_cleartext(line, r"reset|eof|handshake|error")


def test_ladder_client_cert_disliked_retries_without_it(make_tls_fake, make_proxy,
                                                        back_certs):
    """With [upstream_tls] certificate/key: the server rejects our certificate (alert), the
    next step is TLS without a client certificate, which works: delivered over TLS 1.3."""
    up = make_tls_fake("client-cert-disliked")
    cert, key = back_certs["client"]
    proxy = make_proxy(up.addr, back_extra(upstream_tls={
        "fallback_steps": "no-client-cert, tls12, cleartext",
        "certificate": cert, "key": key}))
    msg = body("no client cert")
    r = smtplib_send(proxy.port, msg)
    assert_normal_session(r)
    m = assert_delivered_once(up, msg, "TLSv1.3")
    conns = up.conns()
    assert len(conns) == 2, up.describe()
    assert conns[0].handshake_error is not None and conns[0].tls_version is None, \
        up.describe()
    assert conns[1].client_cert is False, up.describe()
    assert m.conn is conns[1]
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    assert_back_tls(line, "TLSv1.3")

    # While remembered: no second attempt with the disliked certificate; one connection,
    # either TLS without the certificate (the step that worked) or cleartext.
    before = len(conns)
    msg2 = body("no client cert again")
    assert_normal_session(smtplib_send(proxy.port, msg2))
    after = up.conns()[before:]
    assert len(after) == 1, up.describe()
    assert after[0].handshake_error is None and after[0].client_cert in (None, False), \
        up.describe()
    assert_delivered_once(up, msg2, after[0].tls_version, since_conn=before)


def test_ladder_client_cert_then_tls12(make_tls_fake, make_proxy, back_certs):
    """Client certificate configured, TLS 1.3 intolerant server: TLS 1.3 with the
    certificate fails, TLS 1.3 without it fails, TLS 1.2 works: three connections."""
    up = make_tls_fake("tls13-intolerant")
    cert, key = back_certs["client"]
    proxy = make_proxy(up.addr, back_extra(upstream_tls={
        "fallback_steps": "no-client-cert, tls12, cleartext",
        "certificate": cert, "key": key}))
    msg = body("cert then tls12")
    assert_normal_session(smtplib_send(proxy.port, msg))
    m = assert_delivered_once(up, msg, "TLSv1.2")
    conns = up.conns()
    assert [c.hello_max for c in conns] == ["TLSv1.3", "TLSv1.3", "TLSv1.2"], up.describe()
    assert m.conn is conns[2]
    assert_back_tls(wait_session_lines(proxy, 1)[0], "TLSv1.2")


def test_ladder_without_no_client_cert_step(make_tls_fake, make_proxy, back_certs):
    """fallback_steps = tls12, cleartext: the disliked certificate is presented again with
    TLS 1.2 (and fails again), then cleartext: three connections, no TLS without the
    certificate."""
    up = make_tls_fake("client-cert-disliked")
    cert, key = back_certs["client"]
    proxy = make_proxy(up.addr, back_extra(upstream_tls={
        "fallback_steps": "tls12, cleartext", "certificate": cert, "key": key}))
    msg = body("no no-client-cert")
    assert_normal_session(smtplib_send(proxy.port, msg))
    m = assert_delivered_once(up, msg, None)
    conns = up.conns()
    assert [c.hello_max for c in conns] == ["TLSv1.3", "TLSv1.2", None], up.describe()
    assert all(c.tls_version is None for c in conns), up.describe()
    assert m.conn is conns[2]


def test_retry_greeting_is_swallowed(make_tls_fake, make_proxy):
    """The client sees the first connection's greeting only; the retry's 220 is not
    relayed (it would be read as the reply to the client's EHLO)."""
    up = make_tls_fake("post-tls-close", retry_greeting=b"220 retry.test ESMTP second\r\n")
    proxy = make_proxy(up.addr, back_extra())
    with harness.SmtpConn("127.0.0.1", proxy.port) as c:
        g = c.greeting()
        assert g.raw == b"220 fake.test ESMTP fake-tls\r\n", g
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.code == 250 and "retry.test" not in r.text, r
        assert c.cmd("NOOP").raw == b"250 2.0.0 Ok\r\n"
        assert c.cmd("QUIT").code == 221
    up.wait_all_closed()
    assert len(up.conns()) == 2, up.describe()


def test_client_cert_accepted_is_used(make_tls_fake, make_proxy, back_certs):
    """The server asks for a certificate and trusts our client CA: one connection, TLS with
    our certificate presented."""
    up = make_tls_fake("client-cert-disliked", other_ca=back_certs["client_ca"][0])
    cert, key = back_certs["client"]
    proxy = make_proxy(up.addr, back_extra(upstream_tls={"certificate": cert, "key": key}))
    msg = body("client cert")
    assert_normal_session(smtplib_send(proxy.port, msg))
    assert_delivered_once(up, msg, "TLSv1.3")
    [conn] = up.conns()
    assert conn.client_cert is True, up.describe()


# --------------------------------------------------------------------------------------
# The retry connection itself
# --------------------------------------------------------------------------------------

def test_retry_greeting_not_220_gives_421(make_tls_fake, make_proxy):
    """The reconnect's greeting is 554: the client's EHLO gets 421, nothing is delivered."""
    up = make_tls_fake("eof-after-220", retry_greeting=b"554 5.3.2 no service now\r\n")
    proxy = make_proxy(up.addr, back_extra())
    with harness.SmtpConn("127.0.0.1", proxy.port) as c:
        assert c.greeting().code == 220
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.code == 421, r
        c.wait_eof()
    up.wait_all_closed()
    assert not up.messages(), up.describe()
    assert not any(b"MAIL" in cmd.upper() for c in up.conns() for cmd in c.commands)


@pytest.mark.parametrize("mode", ["tls-ok", "eof-after-220", "refuse-454",
                                  "post-tls-ehlo-403", "no-starttls"])
def test_helo_client(make_tls_fake, make_proxy, mode):
    """A HELO client: EHLO probes upstream; inside TLS the proxy sends HELO; the client gets
    a one-line 250 whatever leg 2 does."""
    up = make_tls_fake(mode)
    proxy = make_proxy(up.addr, back_extra())
    with harness.SmtpConn("127.0.0.1", proxy.port) as c:
        assert c.greeting().code == 220
        r = c.cmd(f"HELO {CLIENT_NAME}")
        assert r.code == 250 and len(r.lines) == 1, r
        assert c.cmd(f"MAIL FROM:<{FROM}>").code == 250
        assert c.cmd(f"RCPT TO:<{TO}>").code == 250
        assert c.cmd("DATA").code == 354
        msg = body("helo")
        c.send(msg.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    expect = "TLSv1.3" if mode == "tls-ok" else None
    m = assert_delivered_once(up, body("helo"), expect)
    assert_proxy_commands_sane(up)
    if mode == "tls-ok":
        [conn] = up.conns()
        assert conn.tls_commands[0] == f"HELO {CLIENT_NAME}".encode(), conn
        assert conn.cleartext_commands[0].upper() == f"EHLO {CLIENT_NAME}".upper().encode()
        assert_back_tls(wait_session_lines(proxy, 1)[0], "TLSv1.3")
    elif mode == "refuse-454":
        [conn] = up.conns()  # the refusal: same connection, HELO after it
        assert conn.verbs()[:3] == ["EHLO", "STARTTLS", "HELO"], conn
    else:
        assert m.conn.starttls == 0
        assert m.conn.verbs()[0] in ("EHLO", "HELO"), up.describe()


# --------------------------------------------------------------------------------------
# After the negotiation: the TLS connection breaks later
# --------------------------------------------------------------------------------------

def test_tls_break_before_data_replays_envelope_in_cleartext(make_tls_fake, make_proxy):
    """TLS up, the client's EHLO answered, then the upstream drops the TLS connection at
    MAIL (no reply): the proxy replays EHLO and MAIL on a new connection, one step down the
    ladder (cleartext here), and goes on; the client sees normal replies, the message
    arrives once in cleartext. Nothing is remembered: a client may have made the upstream
    close, and only a failed negotiation counts."""
    up = make_tls_fake("tls-break-at-mail")
    proxy = make_proxy(up.addr, back_extra())
    msg = body("replay")
    r = smtplib_send(proxy.port, msg)
    assert_normal_session(r)
    m = assert_delivered_once(up, msg, None)
    conns = up.conns()
    assert len(conns) == 2, up.describe()
    assert conns[0].tls_version == "TLSv1.3", up.describe()
    assert conns[0].tls_commands[-1].upper().startswith(b"MAIL FROM:"), up.describe()
    assert conns[1].starttls == 0 and m.conn is conns[1], up.describe()
    verbs = conns[1].verbs()
    assert verbs[0] in ("EHLO", "HELO") and verbs[1] == "MAIL", up.describe()
    assert verbs.count("MAIL") == 1 and verbs.count("DATA") == 1, up.describe()
    assert_proxy_commands_sane(up)
    [line] = wait_session_lines(proxy, 1)
    assert line.get("messages") == "1", line["_line"]
    assert_break_reason(proxy)


def assert_break_reason(proxy):
    """The break is logged with a reason saying the TLS connection was lost after the
    negotiation (not a handshake failure: the handshake and the EHLO inside TLS had
    completed), and it is not remembered."""
    events = proxy.events("back-tls-broken")
    assert events, proxy.stderr()[-3000:]
    for ev in events:
        reason = ev.get("reason", "")
        assert re.search(r"eof|closed|lost|break|reset", reason, re.I), ev["_line"]
        assert "handshake" not in reason, \
            f"a break after the EHLO inside TLS logged as a handshake failure: {ev['_line']}"
    assert not proxy.events("back-tls-remembered"), proxy.stderr()[-3000:]


def test_tls_break_in_data_gives_421_and_is_not_remembered(make_tls_fake, make_proxy):
    """The TLS connection breaks after body bytes were sent: the client gets 421 4.4.2 (never
    a made-up 250), nothing is delivered, and nothing is remembered (a client may have made
    the upstream close): the client's retry negotiates TLS again and is delivered once."""
    up = make_tls_fake("tls-break-in-data")
    proxy = make_proxy(up.addr, back_extra())
    msg = body("in data")
    with harness.SmtpConn("127.0.0.1", proxy.port) as c:
        assert c.greeting().code == 220
        assert c.cmd(f"EHLO {CLIENT_NAME}").code == 250
        assert c.cmd(f"MAIL FROM:<{FROM}>").code == 250
        assert c.cmd(f"RCPT TO:<{TO}>").code == 250
        assert c.cmd("DATA").code == 354
        try:
            c.send(msg.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        except OSError:
            pass
        r = c.reply()
        assert r.code == 421 and r.first.startswith("4.4.2"), r
        c.wait_eof()
    up.wait_all_closed()
    assert not up.messages(), up.describe()
    [conn] = up.conns()
    assert conn.tls_version == "TLSv1.3" and conn.partial, up.describe()
    wait_session_lines(proxy, 1)
    assert_break_reason(proxy)

    up.mode = "tls-ok"
    before = len(up.conns())
    r = smtplib_send(proxy.port, msg)
    assert_normal_session(r)
    assert_delivered_once(up, msg, "TLSv1.3", since_conn=before)
    assert [c.starttls for c in up.conns()[before:]] == [1], up.describe()


# --------------------------------------------------------------------------------------
# Concurrency, and the memory shared by all event loops
# --------------------------------------------------------------------------------------

def test_parallel_sessions_each_delivered_once(make_tls_fake, make_proxy):
    """Eight clients at once against a failing upstream (two event loops): every message
    arrives exactly once, byte-identical, in cleartext."""
    import threading
    up = make_tls_fake("post-tls-ehlo-403")
    extra = back_extra()
    extra["proxy"] = {"workers": "2"}
    proxy = make_proxy(up.addr, extra)
    results, errors = {}, []

    def one(i):
        try:
            results[i] = smtplib_send(proxy.port, body(f"parallel {i}"))
        except Exception as e:  # reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for r in results.values():
        assert_normal_session(r)
    harness.wait_for(lambda: len(up.messages()) >= 8, 10, what="8 messages")
    up.wait_all_closed()
    msgs = up.messages()
    assert sorted(m.content for m in msgs) == sorted(body(f"parallel {i}") for i in range(8))
    assert all(m.tls_version is None for m in msgs), up.describe()
    # No connection carried a message after a TLS attempt.
    assert all(not c.messages for c in up.conns() if c.starttls), up.describe()
    wait_session_lines(proxy, 8)


def test_memory_shared_by_workers(make_tls_fake, make_proxy):
    """workers = 2: after one failure, sessions on either event loop go straight to
    cleartext (the memory is shared), each message once."""
    up = make_tls_fake("refuse-454")
    extra = back_extra()
    extra["proxy"] = {"workers": "2"}
    proxy = make_proxy(up.addr, extra)
    assert_normal_session(smtplib_send(proxy.port, body("w0")))
    assert_delivered_once(up, body("w0"), None)
    for i in range(1, 7):
        before = len(up.conns())
        assert_normal_session(smtplib_send(proxy.port, body(f"w{i}")))
        assert_delivered_once(up, body(f"w{i}"), None, since_conn=before)
        assert [c.starttls for c in up.conns()[before:]] == [0], \
            f"session {i} tried STARTTLS again:\n{up.describe()}"
    lines = wait_session_lines(proxy, 7)
    assert all(ln.get("back_tls_reason") == "remembered" for ln in lines[1:]), \
        [ln["_line"] for ln in lines]


# --------------------------------------------------------------------------------------
# Counters ([metrics] listen): each fallback counted once under its reason class
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,reason_class", [
    ("refuse-454", "starttls-refused"),
    ("starttls-garbage", "starttls-bad-reply"),
    ("no-shared-cipher", "tls-alert"),
    ("cert-required", "tls-alert"),
    ("eof-after-220", "eof"),
    ("handshake-timeout", "handshake-timeout"),
    ("post-tls-ehlo-403", "post-tls-ehlo"),
    ("post-tls-close", "post-tls-eof"),
])
def test_fallback_counters(make_tls_fake, make_proxy, mode, reason_class):
    up = make_tls_fake(mode)
    mport = harness.free_port()
    extra = back_extra()
    extra["metrics"] = {"listen": f"127.0.0.1:{mport}"}
    proxy = make_proxy(up.addr, extra)
    assert_normal_session(smtplib_send(proxy.port, body("counted")))
    assert_normal_session(smtplib_send(proxy.port, body("remembered")))
    wait_session_lines(proxy, 2)
    m = harness.scrape_metrics(mport)
    p = "smtp_tls_proxy_"
    fallbacks = {k: v for k, v in m.items() if k.startswith(p + "back_tls_fallback_total")}
    assert fallbacks.get(f'{p}back_tls_fallback_total{{reason="{reason_class}"}}') == 1, \
        fallbacks
    assert sum(fallbacks.values()) == 1, fallbacks
    assert m.get(f"{p}back_tls_remembered_skips_total") == 1, m
    assert m.get(f"{p}back_remembered_entries") == 1, m
    assert m.get(f"{p}messages_total") == 2, m


@pytest.mark.parametrize("mode", ["cert-required", "post-tls-ehlo-403", "post-tls-close"])
def test_fallback_after_the_handshake_is_not_counted_as_tls(make_tls_fake, make_proxy, mode):
    """The handshake completes on the proxy's side (in TLS 1.3 the server's alert for the
    missing client certificate comes after the client's Finished; or the EHLO inside TLS
    is answered 403; or the server closes right after the handshake), then the negotiation
    fails and the session goes on in cleartext. back_tls_total{result="used"} counts leg-2
    sessions over TLS: it stays 0, as the session line's back_tls=cleartext says, and only
    the fallback is counted."""
    up = make_tls_fake(mode)
    mport = harness.free_port()
    extra = back_extra()
    extra["metrics"] = {"listen": f"127.0.0.1:{mport}"}
    proxy = make_proxy(up.addr, extra)
    assert_normal_session(smtplib_send(proxy.port, body("after-the-handshake")))
    [line] = wait_session_lines(proxy, 1)
    assert_back_cleartext(line, FALLBACK_MODES[mode][0])
    assert_delivered_once(up, body("after-the-handshake"), None)
    m = harness.scrape_metrics(mport)
    p = "smtp_tls_proxy_"
    assert sum(v for k, v in m.items() if k.startswith(p + "back_tls_fallback_total")) == 1, m
    assert m.get(f'{p}back_tls_total{{result="used"}}') == 0, \
        f"a session in cleartext counted as leg-2 TLS: {line['_line']}"


def test_tls_used_and_require_counters(make_tls_fake, make_proxy):
    """One TLS session counts back_tls_total{result="used"}; a require failure counts
    back_tls_require_failures_total, and neither counts a fallback."""
    ok = make_tls_fake("tls-ok")
    mport = harness.free_port()
    extra = back_extra()
    extra["metrics"] = {"listen": f"127.0.0.1:{mport}"}
    proxy = make_proxy(ok.addr, extra)
    assert_normal_session(smtplib_send(proxy.port, body("used")))
    wait_session_lines(proxy, 1)
    m = harness.scrape_metrics(mport)
    p = "smtp_tls_proxy_"
    assert m.get(f'{p}back_tls_total{{result="used"}}') == 1, m
    assert sum(v for k, v in m.items() if k.startswith(p + "back_tls_fallback_total")) == 0

    bad = make_tls_fake("refuse-454")
    mport2 = harness.free_port()
    extra = back_extra(upstream_tls={"starttls": "require"})
    extra["metrics"] = {"listen": f"127.0.0.1:{mport2}"}
    proxy2 = make_proxy(bad.addr, extra)
    with harness.SmtpConn("127.0.0.1", proxy2.port) as c:
        assert c.greeting().code == 220
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.code == 421 and r.first.startswith("4.7.0"), r
    wait_session_lines(proxy2, 1)
    m = harness.scrape_metrics(mport2)
    assert m.get(f"{p}back_tls_require_failures_total") == 1, m
    assert m.get(f"{p}messages_total") == 0, m
