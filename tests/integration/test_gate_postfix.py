"""The downgrade gate (issue 11) with a real MTA as the sending client: Debian's Postfix is
the legacy MTA of the outbound transparent deployment.

The policy world (policy_world.py) provides DNSSEC-signed DNS (nsd), the MTA-STS HTTPS
server and one fake MX per domain, with real TLS and failure modes; the proxy runs in the
gateway namespace in transparent mode (REDIRECT of port 25, `[client_tls] starttls =
strip`, `[upstream_tls] starttls = may` with the cleartext retry, recipient_policies auto,
which is on in transparent mode). Postfix (postfix_sender.SendingPostfix) runs inside the
client namespace and sends as a legacy MTA does:

  - It resolves each recipient domain's MX itself, from the world's nsd (a resolv.conf
    bind-mounted over /etc/resolv.conf in its own mount namespace only), and connects to
    the address it found; the gateway intercepts that connection. So the proxy's original
    destination is the MX address as Postfix chose it, exactly as in the deployment (a
    transport_maps route to [address]:25 would reach the same address but skip the MX
    lookup the legacy MTA really makes).
  - Its own TLS is opportunistic (smtp_tls_security_level = may, Debian's default); the
    proxy strips STARTTLS towards it (the deployment's typical leg 1), so Postfix's hop to
    the proxy is cleartext and the proxy alone decides about TLS to the MX. Postfix does no
    DANE of its own (smtp_dns_support_level = enabled, not dnssec): the legacy MTA is the
    one that cannot, which is why the gate exists.
  - No automatic retries during the test (backoff one hour): a deferred message waits in
    the deferred queue until `postqueue -f`.

What it proves, in one Postfix run:

  1. A message to an MTA-STS enforce domain (sts-enforce.test) whose MX fails TLS (reset
     during the handshake; the proxy's cleartext retry would work) is deferred by
     Postfix, not bounced: its log shows the proxy's `450 4.7.10` reply to RCPT TO and
     status=deferred, `postqueue -j` shows it in the deferred queue with that reason, the
     proxy logged gate-refused (mta-sts, enforce, starttls-not-supported), and the MX
     received nothing of the transaction in cleartext.
  2. The same for a DANE domain (dane-ok.test: DNSSEC-signed, TLSA 3 1 1).
  3. A message to a domain without policy (nopolicy.test) whose MX fails TLS the same way
     is delivered at once, in cleartext: the fallback still works where it is allowed.
  4. Once the MXs' TLS works again, `postqueue -f` delivers each deferred message exactly
     once, over TLS (TLS 1.2+), byte for byte as submitted below the Received header
     Postfix added, and the queue is empty; nothing was bounced.

Two proxy bugs showed up here, now fixed; each keeps a minimal regression test below:
DATA relayed upstream after the gate refused every RCPT, and a refusal that did not
forget a cleartext step remembered by the same session.

Needs root, Postfix and the policy world's tools (nsd, ldnsutils, unbound-host); skips
otherwise (exit status 77 when every test skipped).
"""

import re
import time

import pytest

import netns
import postfix_sender
from policy_world import DNS4, policy_material, policy_world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not netns.is_root(),
                                reason="needs root (network namespaces, Postfix's master)")

PROTECTED = ("sts-enforce.test", "dane-ok.test")
REFUSAL = {
    "sts-enforce.test": ("4.7.10", "450 4.7.10 The recipient domain's MTA-STS policy requires TLS",
                         "mta-sts"),
    "dane-ok.test": ("4.7.10", "450 4.7.10 The recipient domain's DANE policy requires TLS",
                     "dane"),
}


@pytest.fixture
def legacy_mta(policy_world):
    """A started SendingPostfix in the policy world's client namespace, using the world's
    nsd as its DNS server; stopped (and its directory removed) at teardown, before the
    world and its namespaces go."""
    reason = postfix_sender.available()
    if reason:
        pytest.skip(reason)
    pf = postfix_sender.SendingPostfix(policy_world.topo, role="client", nameserver=DNS4)
    try:
        yield pf.start()
    finally:
        pf.stop()


def message(domain, tag):
    """A message as a legacy MTA's user submits it, with the headers Postfix would
    otherwise add (Date, From, Message-ID), so that Postfix only prepends Received. The
    body has dot-stuffing cases and is large enough to span several TCP segments."""
    lines = [
        "Date: Mon, 01 Jan 2024 12:00:00 +0000",
        "From: Legacy Sender <sender@legacy.test>",
        f"To: <b@{domain}>",
        f"Subject: gate test {tag} via a real Postfix",
        f"Message-ID: <{tag}.{time.monotonic_ns()}@legacy.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"protected content for {domain}",
        ".a line starting with a dot",
        "..two dots",
        ".",
        " . not the end",
    ]
    lines += [f"{i:05d} " + "0123456789abcdef" * 4 for i in range(1500)]
    lines += ["last line"]
    return ("\r\n".join(lines) + "\r\n").encode()


def as_received(content):
    """The message below the Received field(s) Postfix prepended, and those fields."""
    received, rest = postfix_sender.strip_added_received(content)
    return rest, received


def test_postfix_defers_then_delivers_over_tls(policy_world, gw_proxy, legacy_mta):
    w = policy_world
    pf = legacy_mta
    for domain in (*PROTECTED, "nopolicy.test"):
        w.mx(domain).mode = "reset-during-handshake"  # TLS fails; cleartext would work
    w.topo.redirect(netns.PROXY_PORT)
    extra = w.proxy_extra()
    extra.setdefault("log", {})["level"] = "debug"
    proxy = gw_proxy(extra)

    sent = {d: message(d, d.split(".")[0]) for d in (*PROTECTED, "nopolicy.test")}
    qids = {d: pf.submit([f"b@{d}"], sent[d]) for d in sent}
    assert len(set(qids.values())) == 3, qids

    # --- 1, 2: protected domains: deferred with the proxy's reply, kept in the queue ---
    for domain in PROTECTED:
        dsn, text, policy = REFUSAL[domain]
        st = pf.wait_status(qids[domain], f"b@{domain}", "deferred")
        # Postfix looked up the MX itself and went to its address (intercepted).
        assert st["relay"] == f"mx.{domain}[{w.mx_addr(domain)}]:25", st
        assert st["dsn"] == dsn, st
        assert re.search(rf"said: {re.escape(text)}.*\(in reply to RCPT TO command\)$",
                         st["text"]), st
        refused = proxy.wait_event("gate-refused", domain=domain)
        assert refused["policy"] == policy, refused
        if policy == "mta-sts":
            assert (refused["mode"], refused["result"]) == \
                ("enforce", "starttls-not-supported"), refused
        w.mx(domain).assert_nothing_in_clear()

    # --- 3: no policy: delivered at once, in cleartext (the fallback where allowed) ------
    st = pf.wait_status(qids["nopolicy.test"], "b@nopolicy.test", "sent")
    assert st["relay"] == f"mx.nopolicy.test[{w.mx_addr('nopolicy.test')}]:25", st
    [clear] = w.mx("nopolicy.test").wait_messages(1)
    assert not clear.tls, clear
    body, received = as_received(clear.content)
    assert body == sent["nopolicy.test"] and len(received) == 1, (received, body[:400])

    queue = pf.wait_queued([qids[d] for d in PROTECTED], "deferred")
    for q in queue:
        [r] = q["recipients"]
        domain = r["address"].split("@")[1]
        assert REFUSAL[domain][1] in r["delay_reason"], q
    assert "status=bounced" not in pf.log(), pf.log()[-3000:]
    # Exactly one attempt each so far: nothing retried behind the test's back.
    for domain in PROTECTED:
        assert len(pf.statuses(qids[domain])) == 1, pf.statuses(qids[domain])

    # --- 4: the MXs' TLS works again: postqueue -f delivers over TLS, once -------------
    for domain in PROTECTED:
        w.mx(domain).mode = "tls-ok"
    pf.flush()
    for domain in PROTECTED:
        st = pf.wait_status(qids[domain], f"b@{domain}", "sent", count=2)
        assert st["relay"] == f"mx.{domain}[{w.mx_addr(domain)}]:25", st
        assert "250 2.0.0 Ok: queued as FAKE" in st["text"], st
    pf.wait_queued([])
    time.sleep(0.5)  # a duplicate delivery would show up by now
    for domain in PROTECTED:
        mx = w.mx(domain)
        [msg] = [m for m in mx.messages() if m.rcpts]
        assert msg.tls_version in ("TLSv1.2", "TLSv1.3"), msg
        assert [r.decode().lower() for r in msg.rcpts] == [f"<b@{domain}>"], msg
        assert msg.mail_from.decode().lower().startswith("<sender@legacy.test>"), msg
        body, received = as_received(msg.content)
        assert len(received) == 1 and b"legacy.test" in received[0], received
        assert body == sent[domain], "content changed on the way"
        mx.assert_nothing_in_clear(verbs=("RCPT", "DATA", "BDAT"))
        assert len(pf.statuses(qids[domain])) == 2, pf.statuses(qids[domain])
    assert len(w.mx("nopolicy.test").messages()) == 1
    log = pf.log()
    assert "status=bounced" not in log and "TLS connection established" not in log, \
        log[-3000:]  # and Postfix's own hop was cleartext: the proxy stripped STARTTLS


def test_data_after_every_rcpt_refused_is_not_sent_in_clear(policy_world, gw_proxy):
    """Regression (a bug the Postfix test above found): a client pipelines
    MAIL, RCPT and DATA (RFC 2920; Postfix does); the gate refuses the only RCPT (450
    4.7.10: MTA-STS enforce, leg 2 fell back to cleartext), yet the proxy relays DATA to
    the protected domain's MX over that cleartext leg (session_verb_data forwards DATA
    whether or not any RCPT went upstream). A compliant MX answers 503/554, but one that
    answers 354 (as this fake does) got the client's content in clear. Now the proxy
    answers DATA itself (RFC 5321 3.3 / RFC 2920 3.1: 554 5.5.1 no valid recipients, or
    503) and sends nothing of the transaction upstream."""
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.mode = "reset-during-handshake"
    w.topo.redirect(netns.PROXY_PORT)
    gw_proxy(w.proxy_extra())
    c = w.connect("sts-enforce.test")
    assert c.greeting().code == 220
    assert c.ehlo("legacy.test").code == 250
    c.send(b"MAIL FROM:<s@legacy.test>\r\nRCPT TO:<b@sts-enforce.test>\r\nDATA\r\n")
    mail, rcpt, data = c.replies(3)
    assert (mail.code, rcpt.code) == (250, 450), (mail, rcpt)
    if data.code == 354:   # what a client that ignores the RCPT reply then sends
        c.send(b"Subject: secret\r\n\r\nprotected content\r\n.\r\n")
        c.reply()
    c.cmd("QUIT")
    mx.assert_nothing_in_clear()
    assert data.code in (503, 554), data


def test_refusal_forgets_a_cleartext_step_learned_in_the_same_session(policy_world, gw_proxy):
    """Regression (a bug the Postfix test above found): the MX of an
    MTA-STS enforce domain fails TLS; in that session the proxy falls back to cleartext and
    remembers the cleartext step for the MX (back-tls-remembered); the gate then refuses
    the RCPT. The refusal forgets a remembered step only when the session *started* from
    one (session_gate.c: `s->remembered != 0`), not when the session itself just learned
    it. So the next session, after the MX's TLS works again, starts in cleartext from
    memory and is refused again; only the one after it probes TLS. A legacy MTA loses a
    whole retry interval (Postfix: minutes to over an hour). Expected (README: "a refusal
    forgets that step ... so the next session probes TLS again"): the next session is
    TLS and delivers."""
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.mode = "reset-during-handshake"
    w.topo.redirect(netns.PROXY_PORT)
    gw_proxy(w.proxy_extra())

    def rcpt():
        c = w.connect("sts-enforce.test")
        try:
            assert c.greeting().code == 220
            assert c.ehlo("legacy.test").code == 250
            assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
            return c.cmd("RCPT TO:<b@sts-enforce.test>")
        finally:
            c.cmd("QUIT")
            c.close()

    assert rcpt().code == 450
    mx.mode = "tls-ok"          # the MX's TLS works again
    second = rcpt()
    assert second.code == 250, second

