"""TLS session resumption on both legs (issue 13).

Leg 1: the proxy issues session tickets; their keys are one set per process, shared by
every worker and kept across a reload, so a client resumes whichever worker takes its next
connection. Leg 2: the proxy keeps the upstream's sessions per upstream address, name and
attempt, and offers the newest on its next connection there.

Real peers: python's ssl (OpenSSL) as the client on leg 1, the fake TLS upstream (python's
ssl server, with tickets) on leg 2. Each test asserts what the peer saw: whether its
handshake resumed, that the mail arrived over TLS, and the proxy's own log lines.
"""

import socket
import ssl

import harness
from back_tls_support import assert_delivered_once, back_extra, body, smtplib_send


def _line(f):
    """One SMTP reply (all its lines) from file |f|: (code, last line)."""
    while True:
        text = f.readline()
        if not text:
            raise harness.Closed("connection closed")
        if text[3:4] != b"-":
            return int(text[:3]), text


def client_context():
    """python's ssl resumes a session only with the context that made it: one per test."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def starttls_session(ctx, port, session=None):
    """Connects, STARTTLS with python's ssl (offering |session| when given), EHLO inside
    TLS, QUIT. Returns (the ssl session to offer next time, whether this one resumed)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        f = raw.makefile("rb")
        assert _line(f)[0] == 220
        raw.sendall(b"EHLO resume.test\r\n")
        assert _line(f)[0] == 250
        raw.sendall(b"STARTTLS\r\n")
        assert _line(f)[0] == 220
        tls = ctx.wrap_socket(raw, server_hostname="proxy.test", session=session)
        tf = tls.makefile("rb")
        tls.sendall(b"EHLO resume.test\r\n")
        assert _line(tf)[0] == 250  # TLS 1.3 tickets arrive after the handshake: read them
        tls.sendall(b"QUIT\r\n")
        assert _line(tf)[0] == 221
        out = (tls.session, tls.session_reused)
        tls.close()
        return out
    finally:
        raw.close()


def test_leg1_tickets_resume_on_every_worker(aio_upstream, make_proxy):
    """Two workers: one full handshake, then every later connection (spread over both
    workers by the kernel) resumes with the ticket of the first; the log says resumed=yes
    for exactly those."""
    proxy = make_proxy(aio_upstream.addr, harness.merge_sections(
        harness.client_tls_extra(), {"proxy": {"workers": "2"}, "log": {"level": "info"}}))
    ctx = client_context()
    session, reused = starttls_session(ctx, proxy.port)
    assert not reused
    assert session is not None and session.has_ticket
    resumed = []
    for _ in range(8):
        s, r = starttls_session(ctx, proxy.port, session)
        resumed.append(r)
        session = s if s is not None and s.has_ticket else session
    assert all(resumed), resumed
    harness.wait_for(lambda: len(proxy.events("front-tls")) == 9, 10, what="9 front-tls lines")
    flags = [e.get("resumed") for e in proxy.events("front-tls")]
    assert flags == [None] + ["yes"] * 8, flags


def test_leg1_ticket_survives_a_reload(aio_upstream, make_proxy):
    """A reload (SIGHUP) builds new TLS contexts; the ticket keys stay, so a client resumes
    across it."""
    proxy = make_proxy(aio_upstream.addr, harness.client_tls_extra())
    ctx = client_context()
    session, reused = starttls_session(ctx, proxy.port)
    assert not reused
    proxy.reload()
    _, reused = starttls_session(ctx, proxy.port, session)
    assert reused


def test_leg1_foreign_ticket_is_a_full_handshake(aio_upstream, make_proxy):
    """A ticket another proxy instance issued (other keys) is not accepted: a full
    handshake, and the session goes on normally."""
    first = make_proxy(aio_upstream.addr, harness.client_tls_extra())
    second = make_proxy(aio_upstream.addr, harness.client_tls_extra())
    ctx = client_context()
    session, _ = starttls_session(ctx, first.port)
    _, reused = starttls_session(ctx, second.port, session)
    assert not reused


def test_leg2_resumes_the_upstream_session(make_tls_fake, make_proxy):
    """Three sessions through the proxy to one TLS upstream: the first handshake is full,
    the next ones offer and resume the upstream's session; every message arrives once over
    TLS 1.3, and the back-tls lines say resumed=yes for the resumed ones."""
    up = make_tls_fake("tls-ok")
    proxy = make_proxy(up.addr, back_extra())
    for i in range(3):
        msg = body(f"resume-{i}")
        smtplib_send(proxy.port, msg)
        assert_delivered_once(up, msg, "TLSv1.3", since_conn=i)
    assert [c.resumed for c in up.conns()] == [False, True, True], up.conns()
    flags = [e.get("resumed") for e in proxy.events("back-tls")]
    assert flags == [None, "yes", "yes"], flags


def test_leg2_does_not_resume_a_session_that_failed_verification(make_tls_fake, make_proxy,
                                                                    back_certs):
    """verify = ca with starttls = may: a certificate that fails verification is logged and
    the session goes on encrypted, but its TLS session is not kept: a resumed session is
    not verified again, so every connection does a full handshake and is verified anew."""
    up = make_tls_fake("tls-ok")  # self-signed: fails verification against the test CA
    proxy = make_proxy(up.addr, back_extra(upstream_tls={
        "verify": "ca", "ca_file": back_certs["ca"][0]}))
    for i in range(2):
        msg = body(f"unverified-{i}")
        smtplib_send(proxy.port, msg)
        assert_delivered_once(up, msg, "TLSv1.3", since_conn=i)
    assert [c.resumed for c in up.conns()] == [False, False], up.conns()
