"""Attacks on the downgrade gate (MTA-STS, DANE, REQUIRETLS), from both legs.

An attacker's review: each test tries a way around a rule of "Recipient policies: the
downgrade gate" in the README, or of DESIGN.md's invariants ("Nothing goes in clear to a
recipient domain whose policy forbids it", "every upstream connection carries the client's
identity", "Bad input ... never crashes the process"), against the real binary in the test
world of policy_world.py (DNSSEC-signed DNS served by nsd, MTA-STS over HTTPS, MXs with real
TLS), and asserts the correct behaviour.

A test marked xfail(strict=True) with "BUG:" shows a hole that exists today: it fails until
the proxy is fixed, and then the mark must go. The others are rules that hold, kept as
regression tests. Every test checks at its end, inside the test, that the proxy exits 0 with
no sanitizer report (run it with a Debug build for ASan/UBSan/LSan).
"""

import contextlib
import os
import subprocess
import time

import pytest

import fake_tls_upstream
import harness
import netns
import policy_world as pw
from policy_world import policy_material, policy_world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(pw.skip_reason() is not None, reason=pw.skip_reason() or "")

ENFORCE = "sts-enforce.test"


# ---- helpers ----------------------------------------------------------------------------

@pytest.fixture
def gwp(proxy_bin, tmp_path, topo):
    """Like conftest's gw_proxy, but the exit checks run inside the test (checked()), so
    that a crash is the test's failure (an xfail) and not a teardown error."""
    proxies = netns.GwProxies(proxy_bin, str(tmp_path), topo)
    yield proxies
    for p in proxies.started.items:
        p.kill()


@contextlib.contextmanager
def checked(proxy):
    """The proxy must still run at the end, then exit 0 on SIGTERM with no sanitizer
    report in its stderr."""
    try:
        yield proxy
    finally:
        alive = proxy.running()
        proxy.finish()
        assert alive, f"the proxy died during the test:\n{proxy.stderr()[-3000:]}"


def start(world, gwp, **sections):
    """The proxy in the gateway, transparent mode, port 25 of the client side intercepted."""
    world.topo.redirect(netns.PROXY_PORT)
    extra = world.proxy_extra(**sections)
    extra.setdefault("log", {})["level"] = "debug"
    return gwp.start(extra)


def line(reply):
    return reply.raw.decode(errors="replace").rstrip("\r\n")


def open_session(world, domain, hello="EHLO legacy.test"):
    c = world.connect(domain)
    assert c.greeting().code == 220
    assert c.cmd(hello).code == 250
    return c


def clear_lines(mx):
    """Every command line (any verb) that reached |mx| outside TLS: (connection, line)."""
    return [(c.index, l) for c in mx.conns() for l in c.cleartext_commands]


def rcpts_in_clear(mx, text):
    """RCPT lines mentioning |text| that |mx| got outside TLS (it answers 250 to each)."""
    return [(c.index, l) for c, l in mx.cleartext(("RCPT",)) if text.encode() in l.lower()]


def transaction(world, domain, rcpt, hello="EHLO legacy.test"):
    """MAIL, one RCPT and, when accepted, a message: the replies."""
    c = open_session(world, domain, hello)
    replies = [c.cmd("MAIL FROM:<s@legacy.test>"), c.cmd(f"RCPT TO:{rcpt}")]
    if replies[1].code == 250:
        replies.append(c.cmd("DATA"))
        if replies[-1].code == 354:
            c.send(b"Subject: gate\r\n\r\nprotected content\r\n.\r\n")
            replies.append(c.reply())
    c.cmd("QUIT")
    return replies


# ---- MX behaviours the fake does not have: patched per instance -------------------------

def mx_rcpt_needs_mail(mx):
    """A RCPT before MAIL gets 503 (as from a real server) instead of a crashed thread."""
    orig = mx._command

    def command(conn, io, line_):
        if line_.upper().startswith(b"RCPT") and "rcpts" not in io.state:
            io.send(b"503 5.5.1 Error: need MAIL command\r\n")
            return io
        return orig(conn, io, line_)

    mx._command = command


def mx_close_after_first_rcpt(mx, delay=0.3):
    """Connection 0 answers its first RCPT inside TLS, then (after |delay|) closes without
    close_notify: the TLS leg breaks mid-transaction, before any content."""
    orig = mx._command

    def command(conn, io, line_):
        out = orig(conn, io, line_)
        if conn.index == 0 and conn.tls_version and line_.upper().startswith(b"RCPT"):
            time.sleep(delay)
            io.sock.close()
            raise fake_tls_upstream._Gone()
        return out

    mx._command = command


def mx_slow_greeting(mx, seconds, from_index=1):
    """Connections from |from_index| on wait |seconds| before their 220."""
    orig = mx._serve

    def serve(conn):
        if conn.index >= from_index:
            time.sleep(seconds)
        orig(conn)

    mx._serve = serve


def mx_max_tls10(mx):
    """The MX negotiates TLS 1.0 at most (an old stack, or an attacker's)."""
    import ssl
    orig = mx._server_context

    def context(mode):
        ctx = orig(mode)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        return ctx

    mx._server_context = context


def webpki_cert(world, stem, cn, sans):
    """A certificate of the test web CA (trusted for MTA-STS) with subject CN |cn| and DNS
    SANs |sans| (none: no subjectAltName at all)."""
    d = world.material.dir
    cert, key = os.path.join(d, f"{stem}.crt.pem"), os.path.join(d, f"{stem}.key.pem")
    if os.path.exists(cert):
        return cert, key
    csr, ext = os.path.join(d, f"{stem}.csr.pem"), os.path.join(d, f"{stem}.ext")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={cn}",
                    "-keyout", key, "-out", csr], check=True, capture_output=True)
    with open(ext, "w") as f:
        if sans:
            f.write("subjectAltName=" + ",".join(f"DNS:{n}" for n in sans) + "\n")
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n")
    ca_cert, ca_key = world.material.ca
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                    "-set_serial", str(int(time.time() * 1000)), "-days", "2", "-extfile", ext,
                    "-out", cert], check=True, capture_output=True)
    return cert, key


# ==== 1. Gate bypass by spelling: the RCPT's domain as the upstream reads it ===============

ADDRESS_REFUSED = "553 5.1.3 "  # the gate cannot tell the domain: see the README


@pytest.mark.parametrize("rcpt,want", [
    ("<b@STS-ENFORCE.TEST>", "450 4.7.10"),                     # case
    ("<b@sts-enforce.test.>", "450 4.7.10"),                    # trailing dot
    ("<@nopolicy.test:b@sts-enforce.test>", "450 4.7.10"),      # source route (ignored)
    ("<@a.nopolicy.test,@b.nopolicy.test:b@sts-enforce.test>", "450 4.7.10"),
    ('<"b x>"@sts-enforce.test>', "450 4.7.10"),                # quoted local part with '>'
    ('<"b@nopolicy.test"@sts-enforce.test>', ADDRESS_REFUSED),  # quoted local part holding an @
    ('<"b>@nopolicy.test"@sts-enforce.test>', ADDRESS_REFUSED),  # ... and a '>'
    ("<b@sts-enforce.test> NOTIFY=NEVER ORCPT=rfc822;b@nopolicy.test", "450 4.7.10"),
    (" <b@sts-enforce.test>", "450 4.7.10"),                    # a space after the colon
    ("<b@sts-enforce.test>\t", "450 4.7.10"),                   # trailing whitespace
])
def test_spelling_variants_are_gated(policy_world, gwp, rcpt, want):
    """Spellings of a protected recipient that the proxy reads as the upstream does: each
    is judged as sts-enforce.test and refused over a downgraded leg; nothing reaches the
    MX in clear. A quoted local part holding an '@' is refused before any judgement, with
    the gate's permanent "address not accepted" reply: a relay in front of another domain
    would route on that '@' (test_relay_reads_another_recipient_than_the_gate), so it is
    refused whatever its domain, here too."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.mode = "reset-during-handshake"
    with checked(start(w, gwp)):
        replies = transaction(w, ENFORCE, rcpt)
        assert [r.code for r in replies] == [250, int(want[:3])], replies
        assert line(replies[1]).startswith(want), replies
        mx.assert_nothing_in_clear()


def test_addresses_without_a_domain_still_pass(policy_world, gwp):
    """What the gate lets through unjudged, over a downgraded leg: a bare local part (the
    upstream's own postmaster) and address literals, where no domain policy can apply. A
    quoted local part without routing characters is judged by its domain like any other."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.mode = "reset-during-handshake"
    with checked(start(w, gwp)):
        c = open_session(w, ENFORCE)
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        for rcpt in ("<postmaster>", '<"postmaster">', "<a@[192.0.2.1]>",
                     "<a@[IPv6:2001:db8::1]>", "<@r.nopolicy.test:a@[192.0.2.1]>"):
            assert c.cmd(f"RCPT TO:{rcpt}").code == 250, rcpt
        assert line(c.cmd('RCPT TO:<"john smith"@sts-enforce.test>')).startswith("450 4.7.10")
        assert line(c.cmd("RCPT TO:<a@[sts-enforce.test]>")).startswith(ADDRESS_REFUSED)
        assert line(c.cmd("RCPT TO:<postmaster%sts-enforce.test>")).startswith(ADDRESS_REFUSED)
        c.cmd("QUIT")
        assert rcpts_in_clear(mx, "sts-enforce") == [], mx.describe()
        assert len(mx.cleartext(("RCPT",))) == 5, mx.describe()


def test_u_label_domain_is_refused(policy_world, gwp):
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.mode = "reset-during-handshake"
    with checked(start(w, gwp)):
        c = open_session(w, ENFORCE)
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        c.send("RCPT TO:<b@stś-enforce.test>\r\n".encode())
        r = c.reply()
        assert r.code == 450 and "A-label" in r.text, r
        c.cmd("QUIT")
        mx.assert_nothing_in_clear()


@pytest.mark.parametrize("rcpt", [
    "<b@sts-enforce.test >",                      # whitespace before '>' (Postfix: ignored)
    "<b@sts-enforce.test\t>",
    "<b@sts-enforce.test(comment)>",              # an RFC 822 comment (Postfix strips it)
    "<b@sts-enforce\\.test>",                     # a quoted-pair in the domain
    '<"b@sts-enforce.test">',                     # Postfix routes on the @ of a quoted local part
])
def test_unparseable_domain_is_not_relayed_ungated(policy_world, gwp, rcpt):
    """session_gate_rcpt() forwards a RCPT whose domain is not a valid host name without any
    judgement ("No domain whose policy could apply"). Postfix (strict_rfc821_envelopes = no,
    its default) reads each of these as b@sts-enforce.test and delivers it there (checked
    with a real Postfix in test_relay_reads_another_recipient_than_the_gate): the protected
    recipient, and then its message, go over the cleartext leg. The gate must fail closed
    when it cannot tell the domain (refuse the RCPT), except for an address literal or a
    bare local part such as <postmaster>.

    The refusal is permanent, 553 5.1.3 ("mailbox name not allowed", "bad destination
    mailbox address syntax"): the same spelling is refused at every retry, so deferring it
    would only hold the message in the sender's queue for days before the same bounce; the
    text says why (routing characters, comments, spaces or escapes)."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.mode = "reset-during-handshake"  # leg 2 falls back to cleartext
    with checked(start(w, gwp)):
        replies = transaction(w, ENFORCE, rcpt)
        assert rcpts_in_clear(mx, "sts-enforce") == [], \
            f"replies {replies}; the MX got in clear: {clear_lines(mx)}"
        assert line(replies[1]).startswith(ADDRESS_REFUSED), replies


def _postfix_in_gw(world, request):
    """A real Postfix in the gateway namespace on loopback, the proxy's upstream relay in
    forward mode: relay.test is its own domain (mydestination), and sts-enforce.test a
    domain it delivers (to a maildir here; a real relay would send it on). It offers no
    STARTTLS, so leg 2 is cleartext and the gate must keep every protected recipient off
    it."""
    import postfix_local
    reason = postfix_local.available()
    if reason is not None:
        pytest.skip(reason)
    with world.topo.entered("gw"):
        pf = postfix_local.LocalPostfix(domain=ENFORCE,
                                        main_extra={"mydestination": "relay.test"})
        request.addfinalizer(pf.stop)
        pf.start()
    return pf


@pytest.mark.parametrize("rcpt", [
    "<b@sts-enforce.test >",
    "<b@sts-enforce.test(comment)>",
    '<"b@sts-enforce.test">',
    "<b%sts-enforce.test@relay.test>",
    '<"b@sts-enforce.test"@relay.test>',
    "<sts-enforce.test!b@relay.test>",
    "<b@sts-enforce.test@relay.test>",            # two @: the gate judges relay.test
    "<b@sts-enforce.test.@relay.test>",
    "<b@sts-enforce.test (x@relay.test)>",        # a comment holding the last @
])
def test_relay_reads_another_recipient_than_the_gate(policy_world, gwp, request, rcpt):
    """Forward mode with recipient_policies = on, the upstream a real Postfix relay over
    cleartext. RCPT TO:<b@sts-enforce.test> is refused (450 4.7.10): that hop must be TLS to
    an authenticated relay. The same recipient spelt so that the gate judges another domain
    (relay.test, the relay's own) or none is accepted, and Postfix delivers it to
    b@sts-enforce.test (its log: to=<b@sts-enforce.test>, orig_to=<...>): the protected
    domain's mail crossed the cleartext hop. Postfix does this by default
    (allow_percent_hack = yes, swap_bangpath = yes, routing characters inside a quoted local
    part, RFC 822 comments and whitespace inside <> ignored; "b@x@relay.test" is read as
    "b@x"@relay.test, then routed to b@x).

    The gate refuses every such spelling (553 5.1.3) in every mode: a local part holding a
    routing character ('%', '!', '@', quoted or not), a comment, whitespace outside quotes
    or a backslash escape, and a domain that is neither a host name nor an address
    literal."""
    w = policy_world
    pf = _postfix_in_gw(w, request)
    extra = w.proxy_extra(proxy={"mode": "forward", "upstream": pf.addr},
                          upstream_tls={"recipient_policies": "on"})
    extra.setdefault("log", {})["level"] = "debug"
    with checked(gwp.start(extra, listen=["192.0.2.1:10025"])):
        c = netns.connect_from(w.topo, "client", "192.0.2.1", 10025)
        try:
            assert c.greeting().code == 220
            assert c.cmd("EHLO legacy.test").code == 250
            assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
            plain = c.cmd("RCPT TO:<b@sts-enforce.test>")
            assert line(plain).startswith("450 4.7.10"), plain  # the rule, plainly spelt
            r = c.cmd(f"RCPT TO:{rcpt}")
            assert line(r).startswith(ADDRESS_REFUSED), r
            if r.code == 250:
                assert c.cmd("DATA").code == 354
                c.send(b"Subject: gate\r\n\r\nprotected content\r\n.\r\n")
                c.reply()
            c.cmd("QUIT")
        finally:
            c.close()
        time.sleep(2)
        delivered = [l for l in pf.log().splitlines() if "to=<b@sts-enforce.test>" in l]
        assert delivered == [], f"{rcpt} answered {line(r)!r}; Postfix delivered: {delivered}"


# ==== 2. Gate bypass by another code path ================================================

def test_rcpt_decided_during_the_replay_negotiation(policy_world, gwp):
    """Leg 2 is TLS with a certificate sts-enforce.test's policy accepts. A first RCPT
    (nopolicy.test) is judged: the gate caches that leg. A second RCPT, to sts-enforce.test,
    waits for its policy fetch (slow). Meanwhile an on-path attacker breaks the TLS
    connection: the proxy opens a replay connection one step down the ladder: cleartext.
    The policy arrives while that connection is still being opened (its greeting is slow).

    session_gate_facts_ready() runs whatever leg 2's state; session_gate_leg() still returns
    the cached leg (back_generation only moves once the new connection is negotiated), so
    the RCPT passes as if over the old TLS leg, and session_front_forward() queues it on the
    new socket at once: before the greeting is read, before EHLO/XCLIENT/STARTTLS, in
    cleartext, for a domain whose policy requires TLS."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx_rcpt_needs_mail(mx)
    mx_close_after_first_rcpt(mx)
    mx_slow_greeting(mx, 6.0)
    w.site(ENFORCE).delay = 3.0            # the first RCPT to it waits for this fetch
    proxy = start(w, gwp)
    with checked(proxy):
        c = open_session(w, ENFORCE)
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        assert c.cmd("RCPT TO:<a@nopolicy.test>").code == 250
        c.send(b"RCPT TO:<b@sts-enforce.test>\r\n")
        proxy.wait_event("back-tls-broken", timeout=10)
        try:
            r = c.reply(timeout=20)
        except (harness.Closed, OSError, TimeoutError) as e:
            r = e
        time.sleep(7)                     # the slow greeting, and what follows it
        leaked = [(i, l) for i, l in clear_lines(mx) if b"sts-enforce" in l.lower()]
        assert leaked == [], f"RCPT reply {r!r}; in clear at the MX: {leaked}\n{mx.describe()}"


def test_rcpt_decided_during_reconnect_goes_before_the_identity(policy_world, gwp):
    """The same hole without a cached leg: a RCPT to a domain whose policy allows anything
    (sts-none.test, its fetch slow) is held; the TLS connection breaks at MAIL; the replay
    connection (slow greeting) is still being opened when the policy arrives. The gate
    forwards the RCPT at once, so it is the first thing on the new connection: before the
    proxy read the greeting, before EHLO and before XCLIENT. The upstream reads a command
    under the proxy's own identity (DESIGN.md: every upstream connection carries the
    client's identity before any of its commands), and every reply after it is off by one
    (here the client is dropped without an answer)."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx_rcpt_needs_mail(mx)
    mx.xclient = True
    mx.mode = "tls-break-at-mail"
    mx_slow_greeting(mx, 6.0)
    w.site("sts-none.test").delay = 3.0
    proxy = start(w, gwp, proxy={"upstream_identity": "xclient"})
    with checked(proxy):
        c = open_session(w, ENFORCE)
        c.send(b"MAIL FROM:<s@legacy.test>\r\nRCPT TO:<a@sts-none.test>\r\n")
        proxy.wait_event("back-tls-broken", timeout=10)
        try:
            replies = c.replies(2, timeout=20)
        except (harness.Closed, OSError, TimeoutError) as e:
            replies = e
        time.sleep(7)
        for conn in mx.conns():
            verbs = conn.verbs()
            assert verbs and verbs[0] == "EHLO", (replies, mx.describe())
            if "RCPT" in verbs or "MAIL" in verbs:
                first = min(verbs.index(v) for v in ("RCPT", "MAIL") if v in verbs)
                assert "XCLIENT" in verbs[:first], (replies, mx.describe())


def test_replay_onto_cleartext_ends_the_session_for_a_protected_recipient(policy_world, gwp):
    """The rule that holds when the RCPT was judged before the break: an accepted
    sts-enforce.test recipient, then the TLS connection breaks before DATA; the replay
    would land in cleartext, so the session ends with 421 4.7.0 and the MX sees nothing in
    clear."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx_close_after_first_rcpt(mx)
    proxy = start(w, gwp)
    with checked(proxy):
        c = open_session(w, ENFORCE)
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        assert c.cmd("RCPT TO:<b@sts-enforce.test>").code == 250
        proxy.wait_event("gate-refused-replay", timeout=10)
        r = c.cmd("DATA")
        assert line(r).startswith("421 4.7.0"), r
        mx.assert_nothing_in_clear()


def test_reload_does_not_ungate_an_open_session(policy_world, gwp):
    """SIGHUP with recipient_policies = off while a session is open: that session finishes
    under the configuration it started with, so its protected recipient is still refused."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.mode = "reset-during-handshake"
    proxy = start(w, gwp)
    with checked(proxy):
        c = open_session(w, ENFORCE)
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        proxy.rewrite(harness.merge_sections(proxy.sections,
                                             {"upstream_tls": {"recipient_policies": "off"}}))
        proxy.reload()
        r = c.cmd("RCPT TO:<b@sts-enforce.test>")
        assert r.code == 450, r
        c.cmd("QUIT")
        mx.assert_nothing_in_clear()


def test_helo_client_is_gated(policy_world, gwp):
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.mode = "reset-during-handshake"
    with checked(start(w, gwp)):
        replies = transaction(w, ENFORCE, "<b@sts-enforce.test>", hello="HELO legacy.test")
        assert [r.code for r in replies] == [250, 450], replies
        mx.assert_nothing_in_clear()


def test_pipelined_transactions_keep_the_gate(policy_world, gwp):
    """RCPTs pipelined behind a RCPT that waits for its lookups, a RSET and a second
    transaction (BDAT-less: DATA), all in one write: each protected RCPT refused, the
    replies in order, nothing in clear."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.mode = "reset-during-handshake"
    w.site(ENFORCE).delay = 1.0
    with checked(start(w, gwp)):
        c = open_session(w, ENFORCE)
        c.send(b"MAIL FROM:<s@legacy.test>\r\nRCPT TO:<a@sts-enforce.test>\r\n"
               b"RCPT TO:<b@nopolicy.test>\r\nRSET\r\nMAIL FROM:<t@legacy.test>\r\n"
               b"RCPT TO:<c@Sts-Enforce.Test.>\r\nRCPT TO:<d@nopolicy.test>\r\nDATA\r\n")
        replies = c.replies(8, timeout=20)
        assert [r.code for r in replies] == [250, 450, 250, 250, 250, 450, 250, 354], replies
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert c.reply().code == 250
        c.cmd("QUIT")
        assert rcpts_in_clear(mx, "sts-enforce") == [], mx.describe()


# ==== 3. Downgrades by an on-path attacker on leg 2 =======================================

@pytest.mark.parametrize("domain", [ENFORCE, "dane-ok.test"])
@pytest.mark.parametrize("mode", ["no-starttls", "refuse-454", "starttls-garbage",
                                  "eof-after-220", "post-tls-ehlo-403", "post-tls-close"])
def test_every_downgrade_is_refused(policy_world, gwp, domain, mode):
    """STARTTLS stripped from the EHLO reply, refused, answered with garbage, the connection
    closed after 220 or after the handshake, the EHLO inside TLS refused: each makes leg 2
    cleartext, and each protected recipient gets 450 4.7.10 with nothing in clear."""
    w = policy_world
    mx = w.mx(domain)
    mx.mode = mode
    with checked(start(w, gwp)):
        replies = transaction(w, domain, f"<b@{domain}>")
        assert [r.code for r in replies] == [250, 450], replies
        assert line(replies[1]).startswith("450 4.7.10"), replies
        mx.assert_nothing_in_clear()


def test_tls10_server_fails_an_enforce_policy(policy_world, gwp):
    """An MX (or an attacker in its place) that negotiates TLS 1.0 with a certificate the
    policy accepts: MTA-STS requires TLS 1.2 (RFC 8461 section 4.2)."""
    w = policy_world
    mx = w.mx(ENFORCE)
    mx_max_tls10(mx)
    proxy = start(w, gwp)
    with checked(proxy):
        replies = transaction(w, ENFORCE, "<b@sts-enforce.test>")
        assert [r.code for r in replies] == [250, 450], replies
        assert mx.messages() == []
        mx.assert_nothing_in_clear()


@pytest.mark.parametrize("cn,sans", [
    ("mx.sts-enforce.test", ["other.test"]),                   # CN ignored when SANs exist
    ("mx.sts-enforce.test", []),                               # CN only: no DNS-ID
    ("x", ["*.mx.sts-enforce.test"]),                          # wildcard one level too deep
    ("x", ["mx.sts-enforce.test.evil.test"]),                  # suffix trick
    ("x", ["xmx.sts-enforce.test"]),                           # prefix trick
    ("x", ["*.test"]),                                         # wildcard over the TLD
    ("x", ["*.*.sts-enforce.test"]),
    ("x", ["mx.sts-enforce.test."]),                           # absolute form
])
def test_certificate_name_tricks_fail_the_policy(policy_world, gwp, cn, sans):
    """A WebPKI-valid certificate (the test CA) whose names do not match the policy's
    "mx: mx.sts-enforce.test": refused with 450 4.7.5, no RCPT sent."""
    w = policy_world
    mx = w.mx(ENFORCE)
    stem = "trick-" + "-".join([cn] + sans).replace("*", "star").replace("/", "_")
    mx.cert, mx.key = webpki_cert(w, stem, cn, sans)
    with checked(start(w, gwp)):
        replies = transaction(w, ENFORCE, "<b@sts-enforce.test>")
        assert [r.code for r in replies] == [250, 450], replies
        assert line(replies[1]).startswith("450 4.7.5"), replies
        assert not [l for c in mx.conns() for l in c.commands if l.upper().startswith(b"RCPT")]


def test_wildcard_certificate_in_the_policy_passes(policy_world, gwp):
    w = policy_world
    mx = w.mx(ENFORCE)
    mx.cert, mx.key = webpki_cert(w, "wild-sts-enforce", "x", ["*.STS-ENFORCE.test"])
    with checked(start(w, gwp)):
        replies = transaction(w, ENFORCE, "<b@sts-enforce.test>")
        assert [r.code for r in replies] == [250, 250, 354, 250], replies
        assert all(m.tls for m in mx.messages())


# ==== 4. The policy fetch and the cache ===================================================

@pytest.mark.parametrize("tamper", ["untrusted", "wrong-name", "self", "redirect", "404",
                                    "text-html", "hang", "garbage"])
def test_cached_enforce_survives_a_tampered_refresh(policy_world, gwp, tamper):
    """The policy (enforce) is cached; then its id changes, so the next lookup refreshes it
    in the background, and an attacker answers that fetch: a certificate the proxy must not
    trust, a redirect, an error, another type, a hang or garbage, each time offering
    "mode: none". The cached enforce policy stays in force (RFC 8461 section 5.1) and the
    downgraded leg is refused, twice."""
    w = policy_world
    mx = w.mx(ENFORCE)
    site = w.site(ENFORCE)
    proxy = start(w, gwp)
    with checked(proxy):
        assert [r.code for r in transaction(w, ENFORCE, "<a@sts-enforce.test>")] == \
            [250, 250, 354, 250]
        proxy.wait_event("mta-sts-policy", domain=ENFORCE, id="1")
        none = pw.sts_policy("none", ["mx.sts-enforce.test"])
        w.set_sts(ENFORCE, id="2")
        site.policy = none
        if tamper in ("untrusted", "wrong-name", "self"):
            site.cert = tamper
        elif tamper == "redirect":
            site.redirect = "https://mta-sts.nopolicy.test/.well-known/mta-sts.txt"
        elif tamper == "404":
            site.status = 404
        elif tamper == "text-html":
            site.content_type = "text/html"
        elif tamper == "hang":
            site.hang = "headers"
        else:
            site.raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" \
                       b"Content-Length: 5\r\nContent-Length: 50\r\n\r\n" + none.encode()
        mx.mode = "reset-during-handshake"
        time.sleep(w.ttl + 1)             # the TXT record's TTL: the new id is seen
        for _ in range(2):
            replies = transaction(w, ENFORCE, "<b@sts-enforce.test>")
            assert [r.code for r in replies] == [250, 450], replies
            time.sleep(1)
        assert not proxy.events("mta-sts-policy")[1:], proxy.events("mta-sts-policy")
        mx.assert_nothing_in_clear()


def test_sessions_waiting_for_a_hanging_fetch(policy_world, gwp):
    """Twenty sessions each wait for the same hanging policy fetch: one fetch, each RCPT
    answered 450 4.4.3 after [recipient_policy] wait, each session still usable after it,
    and the process unharmed."""
    w = policy_world
    w.site(ENFORCE).hang = "headers"
    proxy = start(w, gwp, recipient_policy={"wait": "2s", "fetch_timeout": "4s"})
    with checked(proxy):
        conns = []
        for _ in range(20):
            c = open_session(w, ENFORCE)
            c.send(b"MAIL FROM:<s@legacy.test>\r\nRCPT TO:<b@sts-enforce.test>\r\n")
            conns.append(c)
        t0 = time.monotonic()
        for c in conns:
            mail, rcpt = c.replies(2, timeout=15)
            assert mail.code == 250 and line(rcpt).startswith("450 4.4.3"), (mail, rcpt)
        assert time.monotonic() - t0 < 8
        for c in conns:
            assert c.cmd("RCPT TO:<x@nopolicy.test>").code == 250
            assert c.cmd("QUIT").code == 221
        assert len(w.https.requests_for(ENFORCE)) == 1, w.https.requests_for(ENFORCE)
        proxy.wait_event("mta-sts-fetch-failed", domain=ENFORCE, timeout=10)


def test_sessions_leaving_while_waiting_do_not_harm_the_others(policy_world, gwp):
    """Twenty sessions wait for one slow policy fetch; ten of them vanish (TCP reset) before
    it ends. The other ten get their answer when it arrives, the fetch is shared (one
    request), and nothing is freed twice (a Debug build's ASan watches)."""
    w = policy_world
    w.site(ENFORCE).delay = 2.0
    proxy = start(w, gwp)
    with checked(proxy):
        conns = []
        for _ in range(20):
            c = open_session(w, ENFORCE)
            c.send(b"MAIL FROM:<s@legacy.test>\r\nRCPT TO:<b@sts-enforce.test>\r\n")
            conns.append(c)
        w.https.wait_requests(ENFORCE)
        for c in conns[::2]:
            c.reset()
        for c in conns[1::2]:
            mail, rcpt = c.replies(2, timeout=15)
            assert (mail.code, rcpt.code) == (250, 250), (mail, rcpt)
            assert c.cmd("QUIT").code == 221
        assert len(w.https.requests_for(ENFORCE)) == 1


def test_shutdown_does_not_wait_for_a_hanging_fetch(policy_world, gwp):
    """SIGTERM with no session open must exit within drain_timeout (3 s here). A policy
    fetch still running (no session waits for it any more) holds its timer and socket
    referenced: worker.c unrefs the resolver (gate_unref) but not the fetches, so the loop
    runs until fetch_timeout (up to 1 min), past a container's stop grace period; a second
    SIGTERM does not help either."""
    w = policy_world
    w.site(ENFORCE).hang = "headers"
    proxy = start(w, gwp, recipient_policy={"wait": "1s", "fetch_timeout": "40s"})
    try:   # not checked(): the proxy is meant to be gone at the end
        c = open_session(w, ENFORCE)
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        assert line(c.cmd("RCPT TO:<b@sts-enforce.test>")).startswith("450 4.4.3")
        assert c.cmd("QUIT").code == 221
        w.https.wait_requests(ENFORCE)
        t0 = time.monotonic()
        proxy.signal()
        try:
            proxy.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        assert proxy.proc.poll() is not None, \
            f"still running {time.monotonic() - t0:.1f} s after SIGTERM (drain_timeout 3 s)"
    finally:
        proxy.finish()   # exit status 0, no sanitizer report


def test_policy_fetch_falls_over_to_the_next_address(policy_world, gwp):
    """mta-sts.<domain> has two addresses, the first refusing port 443 (here its A record
    names the DNS server's address), the second the policy server (its AAAA record). The
    fetch must try the next address and get the policy, and the process must survive.

    sts_fetch_on_connect() closes the refused TCP handle (uv_close(), asynchronous) and
    sts_fetch_connect_next() calls uv_tcp_init() on the same uv_tcp_t before its close
    callback ran (the synchronous failure path of sts_fetch_connect_next() does the same):
    libuv aborts with "uv__finish_close: Assertion `handle->flags & UV_HANDLE_CLOSING'
    failed", every session of every worker with it. Anyone who controls a recipient domain's
    DNS (or a domain with a dead IPv4 or IPv6 address for mta-sts.) crashes the proxy with
    one message to it."""
    w = policy_world
    w.zone(ENFORCE).set("mta-sts", "A", pw.DNS4)   # nsd: nothing listens on 443 there
    w.publish()
    mx = w.mx(ENFORCE)
    proxy = start(w, gwp)
    with checked(proxy):
        replies = transaction(w, ENFORCE, "<b@sts-enforce.test>")
        assert [r.code for r in replies] == [250, 250, 354, 250], replies
        assert proxy.wait_event("mta-sts-policy", domain=ENFORCE)
        assert [r.code for r in transaction(w, "nopolicy.test", "<b@nopolicy.test>")] == \
            [250, 250, 354, 250]
        assert all(m.tls for m in mx.messages())


# ==== 5. Bounds of a session's gate state =================================================

def test_recipient_domains_per_transaction_are_bounded(policy_world, gwp):
    """A transaction may name at most 16 recipient domains (the gate's per-session table):
    the 17th gets a temporary refusal, never an unjudged relay; a new transaction frees the
    table. Lookups per session are so bounded, and its memory with them."""
    w = policy_world
    mx = w.mx("nopolicy.test")
    with checked(start(w, gwp)):
        c = open_session(w, "nopolicy.test")
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        for i in range(16):
            assert c.cmd(f"RCPT TO:<u@d{i}.nopolicy.test>").code == 250, i
        over = c.cmd("RCPT TO:<u@d16.nopolicy.test>")
        assert over.code // 100 == 4, over
        assert c.cmd("RCPT TO:<v@d3.nopolicy.test>").code == 250   # a known domain: fine
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
        assert c.cmd("RCPT TO:<u@d16.nopolicy.test>").code == 250
        c.cmd("QUIT")
        got = [l for conn in mx.conns() for l in conn.commands if b"d16" in l]
        assert len(got) == 1, got


# ==== 6. DANE ==============================================================================

def test_dane_host_beyond_the_eighth_mx(policy_world, gwp):
    """A signed domain with more than 8 MX hosts; the upstream is one of them, with secure
    TLSA records, but comes 9th or later in the MX answer. gate_ask_host() silently drops
    every host after GATE_MX_MAX (8), none of the 8 looked at has TLSA or the upstream's
    address, so gate_decide_dane() concludes GATE_DANE_NONE: DANE does not apply, and a
    stripped STARTTLS sends the mail in clear. With hosts left unexamined the gate must not
    conclude "no DANE" (defer, or look further for the upstream's address)."""
    from policy_world import DomainSpec, MxSpec
    w = policy_world
    name = "many-mx.test"
    d = w.add_domain(DomainSpec(name, signed=True, mx=(
        MxSpec(host="b", cert="self", tlsa=("3 1 1",), preference=50),)), publish=False)
    zone = w.zone(name)
    n = 0
    for _ in range(12):   # decoys until the resolver's answer puts b 9th or later
        for _ in range(4):
            n += 1
            zone.add("@", "MX", f"{n} d{n}.{name}.")
        w.publish()
        hosts = [r.split()[1] for r in w.lookup(name, "MX").records]
        if f"b.{name}." in hosts and hosts.index(f"b.{name}.") >= 8:
            break
    else:
        pytest.skip(f"the resolver keeps b.{name} among the first 8: {hosts}")
    mx = d.mx
    mx.mode = "reset-during-handshake"
    with checked(start(w, gwp)):
        replies = transaction(w, name, f"<u@{name}>")
        assert [r.code for r in replies] == [250, 450], (replies, hosts)
        mx.assert_nothing_in_clear()


def test_dane_undetermined_beyond_the_examined_mx_hosts(policy_world, gwp):
    """More MX hosts than the gate examines (GATE_MX_MAX, 32, the most preferred first), and
    the upstream, a DANE host, is less preferred than all of them: whether DANE applies to
    it is unknown, so its recipient is deferred like after a failed lookup (450 4.4.3), over
    any leg, even TLS that its TLSA records would accept. Never judged as a domain without
    DANE, so a downgrade sends nothing in clear."""
    from policy_world import DomainSpec, MxSpec
    w = policy_world
    name = "more-mx.test"
    d = w.add_domain(DomainSpec(name, signed=True, mx=(
        MxSpec(host="b", cert="self", tlsa=("3 1 1",), preference=50),)), publish=False)
    zone = w.zone(name)
    for n in range(1, 41):
        zone.add("@", "MX", f"{n} d{n}.{name}.")
    w.publish()
    mx = d.mx
    proxy = start(w, gwp)
    with checked(proxy):
        replies = transaction(w, name, f"<u@{name}>")
        assert [r.code for r in replies] == [250, 450], replies
        assert line(replies[1]).startswith("450 4.4.3"), replies
        ev = proxy.wait_event("gate-refused", domain=name)
        assert "41 MX hosts" in ev["reason"], ev
        mx.mode = "reset-during-handshake"
        replies = transaction(w, name, f"<u@{name}>")
        assert [r.code for r in replies] == [250, 450], replies
        mx.assert_nothing_in_clear()


def test_dane_over_ipv6(policy_world, gwp):
    """The upstream's address is checked in the MX hosts' AAAA records when leg 2 is IPv6:
    DANE applies (TLS delivers, a downgrade is refused)."""
    w = policy_world
    mx = w.mx("dane-ok.test")
    with checked(start(w, gwp)):
        def send():
            c = w.connect("dane-ok.test", family=6)
            assert c.greeting().code == 220
            assert c.cmd("EHLO legacy.test").code == 250
            out = [c.cmd("MAIL FROM:<s@legacy.test>"), c.cmd("RCPT TO:<b@dane-ok.test>")]
            c.cmd("QUIT")
            return [r.code for r in out]

        assert send() == [250, 250]
        mx.mode = "reset-during-handshake"
        assert send() == [250, 450]
        mx.assert_nothing_in_clear()


def test_dane_domain_sent_elsewhere_is_refused(policy_world, gwp):
    """The legacy MTA was sent (say, by a spoofed MX answer) to a server that is not one of
    dane-ok.test's MX hosts: refused, even though that server does TLS."""
    w = policy_world
    other = w.mx("nopolicy.test")
    with checked(start(w, gwp)):
        replies = transaction(w, "nopolicy.test", "<u@dane-ok.test>")
        assert [r.code for r in replies] == [250, 450], replies
        assert line(replies[1]).startswith("450 4.7.5"), replies
        assert not [l for c in other.conns() for l in c.commands if b"dane-ok" in l.lower()]
