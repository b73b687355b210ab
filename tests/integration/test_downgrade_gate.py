"""The downgrade gate (issue 11): MTA-STS (RFC 8461), DANE (RFC 7672) and REQUIRETLS
(RFC 8689) judged per RCPT against the leg 2 that was actually negotiated.

Real components (policy_world.py): nsd serving a DNSSEC-signed test tree, the proxy's
libunbound validating it with the test trust anchor, an HTTPS server with MTA-STS policies
under a test CA, and an MX per domain with real TLS and failure modes. The proxy runs in
the gateway namespace in transparent mode (the deployment the gate is for), intercepting the
client namespace's port-25 connections. Every test asserts the exact replies and what each
MX received over which transport: nothing may reach a protected domain's MX in clear.
"""

import pytest

import netns
from policy_world import policy_material, policy_world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not netns.is_root(), reason="needs root for network namespaces")


def start(world, gw_proxy, **sections):
    world.topo.redirect(netns.PROXY_PORT)
    extra = world.proxy_extra(**sections)
    extra.setdefault("log", {})["level"] = "debug"
    return gw_proxy(extra)


def transaction(world, domain, rcpts, message=True, ehlo="legacy.test"):
    """One transaction from the client namespace to |domain|'s MX (intercepted): the
    replies to MAIL, each RCPT, and DATA/the message (when any RCPT was accepted)."""
    c = world.connect(domain)
    assert c.greeting().code == 220
    assert c.ehlo(ehlo).code == 250
    replies = [c.cmd("MAIL FROM:<sender@legacy.test>")]
    replies += [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
    if message and any(r.code == 250 for r in replies[1:]):
        data = c.cmd("DATA")
        replies.append(data)
        if data.code == 354:
            c.send(b"Subject: gate\r\n\r\nprotected content\r\n.\r\n")
            replies.append(c.reply())
    c.cmd("QUIT")
    return replies


def line(reply):
    return reply.raw.decode().rstrip("\r\n")


# ---- MTA-STS ----------------------------------------------------------------------------------

def test_sts_enforce_refuses_a_downgraded_leg(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.mode = "reset-during-handshake"  # TLS fails; the cleartext retry would work
    proxy = start(w, gw_proxy)
    replies = transaction(w, "sts-enforce.test", ["b@sts-enforce.test"])
    assert [r.code for r in replies] == [250, 450], replies
    assert line(replies[1]).startswith("450 4.7.10 The recipient domain's MTA-STS policy"), \
        replies[1]
    mx.assert_nothing_in_clear()
    assert w.https.requests_for("sts-enforce.test"), "the policy was never fetched"
    refused = proxy.wait_event("gate-refused", domain="sts-enforce.test")
    assert (refused["policy"], refused["mode"], refused["result"]) == \
        ("mta-sts", "enforce", "starttls-not-supported"), refused


def test_sts_enforce_delivers_over_verified_tls(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("sts-enforce.test")
    start(w, gw_proxy)
    replies = transaction(w, "sts-enforce.test", ["b@sts-enforce.test"])
    assert [r.code for r in replies] == [250, 250, 354, 250], replies
    [msg] = mx.messages()
    assert msg.tls, msg
    mx.assert_nothing_in_clear()


@pytest.mark.parametrize("kind,result", [("untrusted", "certificate-not-trusted"),
                                         ("wrong-name", "certificate-host-mismatch"),
                                         ("self", "certificate-not-trusted")])
def test_sts_enforce_refuses_an_unauthenticated_server(policy_world, gw_proxy, kind, result):
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.use_cert(kind)  # TLS works, but with a certificate the policy does not accept
    proxy = start(w, gw_proxy)
    replies = transaction(w, "sts-enforce.test", ["b@sts-enforce.test"])
    assert [r.code for r in replies] == [250, 450], replies
    assert line(replies[1]).startswith("450 4.7.5 The recipient domain's MTA-STS policy"), \
        replies[1]
    assert mx.messages() == []
    assert not [c for c in mx.conns() if b"RCPT" in b" ".join(c.commands)], mx.describe()
    refused = proxy.wait_event("gate-refused", domain="sts-enforce.test")
    assert refused["result"] == result, refused


def test_sts_testing_reports_but_delivers(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("sts-testing.test")
    mx.mode = "reset-during-handshake"
    proxy = start(w, gw_proxy)
    replies = transaction(w, "sts-testing.test", ["b@sts-testing.test"])
    assert [r.code for r in replies] == [250, 250, 354, 250], replies
    [msg] = mx.messages()
    assert not msg.tls  # testing: the cleartext retry is allowed
    failure = proxy.wait_event("gate-testing-failure", domain="sts-testing.test")
    assert failure["result"] == "starttls-not-supported", failure


@pytest.mark.parametrize("domain", ["sts-none.test", "nopolicy.test", "insecure.test"])
def test_no_enforced_policy_keeps_the_cleartext_retry(policy_world, gw_proxy, domain):
    w = policy_world
    mx = w.mx(domain)
    mx.mode = "reset-during-handshake"
    start(w, gw_proxy)
    replies = transaction(w, domain, [f"b@{domain}"])
    assert [r.code for r in replies] == [250, 250, 354, 250], replies
    [msg] = mx.messages()
    assert not msg.tls


def test_other_recipients_are_unaffected_in_pipelined_order(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.mode = "reset-during-handshake"
    start(w, gw_proxy)
    c = w.connect("sts-enforce.test")
    assert c.greeting().code == 220
    c.ehlo("legacy.test")
    c.send(b"MAIL FROM:<s@legacy.test>\r\nRCPT TO:<a@sts-enforce.test>\r\n"
           b"RCPT TO:<b@nopolicy.test>\r\nRCPT TO:<c@STS-Enforce.Test.>\r\nDATA\r\n")
    replies = c.replies(5)
    assert [r.code for r in replies] == [250, 450, 250, 450, 354], replies
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert c.reply().code == 250
    [msg] = mx.messages()
    assert [r.decode().strip("<>").lower() for r in msg.rcpts] == ["b@nopolicy.test"], msg
    assert not any(b"sts-enforce" in l.lower() for conn in mx.conns() for l in conn.commands)


def test_a_policy_changed_between_sessions(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("sts-testing.test")
    mx.mode = "reset-during-handshake"
    proxy = start(w, gw_proxy)
    assert transaction(w, "sts-testing.test", ["b@sts-testing.test"])[1].code == 250
    w.set_sts("sts-testing.test", mode="enforce", id="2")  # new id: fetched again
    import time
    time.sleep(w.ttl + 1)  # the TXT record's TTL
    replies = transaction(w, "sts-testing.test", ["b@sts-testing.test"])
    # The first session after the change may still use the cached testing policy while
    # the new one is fetched in the background; the next one enforces it.
    if replies[1].code == 250:
        proxy.wait_event("mta-sts-policy", domain="sts-testing.test", id="2")
        replies = transaction(w, "sts-testing.test", ["b@sts-testing.test"])
    assert replies[1].code == 450, replies
    assert len(w.https.requests_for("sts-testing.test")) == 2


# ---- DANE -------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain", ["dane-ok.test", "dane-ta.test"])
def test_dane_matching_certificate_delivers(policy_world, gw_proxy, domain):
    w = policy_world
    mx = w.mx(domain)
    start(w, gw_proxy)
    replies = transaction(w, domain, [f"b@{domain}"])
    assert [r.code for r in replies] == [250, 250, 354, 250], replies
    assert all(m.tls for m in mx.messages())


def test_dane_refuses_a_downgraded_leg(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("dane-ok.test")
    mx.mode = "reset-during-handshake"
    proxy = start(w, gw_proxy)
    replies = transaction(w, "dane-ok.test", ["b@dane-ok.test"])
    assert [r.code for r in replies] == [250, 450], replies
    assert line(replies[1]).startswith("450 4.7.10 The recipient domain's DANE policy"), replies
    mx.assert_nothing_in_clear()
    refused = proxy.wait_event("gate-refused", domain="dane-ok.test")
    assert refused["policy"] == "dane", refused


def test_dane_mismatch_refused_even_over_tls(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("dane-mismatch.test")
    proxy = start(w, gw_proxy)
    replies = transaction(w, "dane-mismatch.test", ["b@dane-mismatch.test"])
    assert [r.code for r in replies] == [250, 450], replies
    assert line(replies[1]).startswith("450 4.7.5 The recipient domain's DANE policy (TLSA)")
    assert mx.messages() == []
    refused = proxy.wait_event("gate-refused", domain="dane-mismatch.test")
    assert refused["result"] == "validation-failure", refused


def test_dane_unusable_records_still_require_tls(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("dane-unusable.test")
    start(w, gw_proxy)
    replies = transaction(w, "dane-unusable.test", ["b@dane-unusable.test"])
    assert [r.code for r in replies] == [250, 250, 354, 250], replies  # TLS, any certificate
    mx.mode = "reset-during-handshake"
    replies = transaction(w, "dane-unusable.test", ["b@dane-unusable.test"])
    assert [r.code for r in replies] == [250, 450], replies
    mx.assert_nothing_in_clear()


@pytest.mark.parametrize("domain", ["dane-bogus.test", "dane-bogus-tlsa.test",
                                    "dane-dsbad.test", "dane-expired.test"])
def test_dnssec_failures_defer(policy_world, gw_proxy, domain):
    w = policy_world
    mx = w.mx(domain)
    proxy = start(w, gw_proxy)
    replies = transaction(w, domain, [f"b@{domain}"])
    assert [r.code for r in replies] == [250, 450], replies
    assert line(replies[1]).startswith("450 4.7.5 DNSSEC validation"), replies
    assert mx.messages() == []
    refused = proxy.wait_event("gate-refused", domain=domain)
    assert refused["result"] == "dnssec-invalid", refused


def test_dnssec_without_tlsa_keeps_the_cleartext_retry(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("dnssec-notlsa.test")
    mx.mode = "reset-during-handshake"
    start(w, gw_proxy)
    replies = transaction(w, "dnssec-notlsa.test", ["b@dnssec-notlsa.test"])
    assert [r.code for r in replies] == [250, 250, 354, 250], replies


def test_remembered_cleartext_is_reprobed_for_a_protected_domain(policy_world, gw_proxy):
    """A cleartext step remembered for an upstream must not keep a TLS-requiring domain's
    mail waiting for remember_failures: the refusal makes the next session probe TLS."""
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.mode = "reset-during-handshake"
    proxy = start(w, gw_proxy)
    # A domain without policy makes the proxy learn cleartext for this MX's address.
    assert transaction(w, "sts-enforce.test", ["x@nopolicy.test"])[1].code == 250
    proxy.wait_event("back-tls-remembered")
    assert transaction(w, "sts-enforce.test", ["b@sts-enforce.test"])[1].code == 450
    proxy.wait_event("back-tls-reprobe")
    mx.mode = "tls-ok"  # the MX's TLS works again
    replies = transaction(w, "sts-enforce.test", ["b@sts-enforce.test"])
    assert [r.code for r in replies] == [250, 250, 354, 250], replies
    # Probed from the top: straight to TLS, not the remembered cleartext step.
    last = mx.conns()[-1]
    assert last.tls_version is not None and last.starttls == 1, last
    assert not [l for c, l in mx.cleartext() if b"sts-enforce" in l.lower()], mx.describe()


# ---- REQUIRETLS -------------------------------------------------------------------------------

def test_requiretls_is_refused_when_not_offered(policy_world, gw_proxy):
    w = policy_world
    start(w, gw_proxy)
    c = w.connect("sts-enforce.test")
    assert c.greeting().code == 220
    ehlo = c.ehlo("legacy.test")
    assert "REQUIRETLS" not in ehlo.text  # leg 1 is not TLS
    r = c.cmd("MAIL FROM:<s@legacy.test> REQUIRETLS")
    assert line(r) == "555 5.5.4 REQUIRETLS is not available on this connection", r


def test_requiretls_offered_and_judged_per_recipient(policy_world, gw_proxy):
    """Both legs TLS, the MX offering REQUIRETLS and presenting a WebPKI certificate: the
    proxy offers REQUIRETLS; then each recipient needs its server authenticated for it."""
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.caps.append("REQUIRETLS")
    start(w, gw_proxy, client_tls={"starttls": "offer"})
    c = w.connect("sts-enforce.test")
    assert c.greeting().code == 220
    c.ehlo("legacy.test")
    c.starttls()
    ehlo = c.ehlo("legacy.test")
    assert "REQUIRETLS" in ehlo.text, ehlo
    assert c.cmd("MAIL FROM:<s@legacy.test> REQUIRETLS").code == 250
    r_enforce = c.cmd("RCPT TO:<a@sts-enforce.test>")
    r_none = c.cmd("RCPT TO:<b@nopolicy.test>")
    assert r_enforce.code == 250, r_enforce
    assert line(r_none).startswith("550 5.7.30 REQUIRETLS support required"), r_none
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: r\r\n\r\nsecret\r\n.\r\n")
    assert c.reply().code == 250
    [msg] = mx.messages()
    assert msg.tls and b"REQUIRETLS" in msg.mail_from.upper(), msg
    assert [r.decode().lower() for r in msg.rcpts] == ["<a@sts-enforce.test>"], msg


def test_requiretls_not_offered_over_a_fallback_leg(policy_world, gw_proxy):
    w = policy_world
    mx = w.mx("sts-enforce.test")
    mx.caps.append("REQUIRETLS")
    mx.mode = "reset-during-handshake"
    start(w, gw_proxy, client_tls={"starttls": "offer"})
    c = w.connect("sts-enforce.test")
    assert c.greeting().code == 220
    c.ehlo("legacy.test")
    c.starttls()
    assert "REQUIRETLS" not in c.ehlo("legacy.test").text  # leg 2 fell back to cleartext
    r = c.cmd("MAIL FROM:<s@legacy.test> requiretls")
    assert line(r) == "555 5.5.4 REQUIRETLS is not available on this connection", r
    mx.assert_nothing_in_clear(verbs=("MAIL", "RCPT", "DATA", "BDAT"))


def test_forward_mode_relay_must_be_encrypted_and_authenticated(policy_world, gw_proxy):
    """recipient_policies = on in forward mode: the upstream is a relay, not the domain's
    MX; a protected domain's mail takes this hop only over TLS to an authenticated relay."""
    w = policy_world
    mx = w.mx("sts-enforce.test")
    w.topo.redirect(netns.PROXY_PORT)
    extra = w.proxy_extra(forward_to="sts-enforce.test",
                          upstream_tls={"recipient_policies": "on"})
    gw_proxy(extra, listen=["192.0.2.1:10025"])

    def send(rcpt):
        c = netns.connect_from(w.topo, "client", "192.0.2.1", 10025)
        try:
            assert c.greeting().code == 220
            c.ehlo("legacy.test")
            assert c.cmd("MAIL FROM:<s@legacy.test>").code == 250
            return c.cmd(f"RCPT TO:<{rcpt}>")
        finally:
            c.close()

    # TLS works, but the relay (an address, no verify = ca) is not authenticated.
    assert line(send("a@sts-enforce.test")).startswith("450 4.7.5"), "unauthenticated relay"
    assert send("b@nopolicy.test").code == 250
    mx.mode = "reset-during-handshake"
    assert line(send("a@sts-enforce.test")).startswith("450 4.7.10")
    assert not [l for c, l in mx.cleartext() if b"sts-enforce" in l.lower()], mx.describe()


# ---- TLS-RPT ----------------------------------------------------------------------------------

def test_tlsrpt_reports_written_and_submitted(policy_world, gw_proxy, tmp_path):
    """Each policy domain's sessions are counted (RFC 8460): SIGUSR1 writes the day so far
    as report files and submits them to the domains' rua (here https://reports.test)."""
    import json
    import signal
    import harness
    w = policy_world
    directory = tmp_path / "tlsrpt"
    directory.mkdir()
    mx = w.mx("sts-enforce.test")
    mx.mode = "reset-during-handshake"
    proxy = start(w, gw_proxy, recipient_policy={
        "tlsrpt_directory": str(directory), "tlsrpt_submit": "on",
        "tlsrpt_organization": "Proxy Test", "tlsrpt_contact": "tlsrpt@proxy.test"})
    assert transaction(w, "sts-enforce.test", ["b@sts-enforce.test"])[1].code == 450
    assert transaction(w, "dane-ok.test", ["b@dane-ok.test"])[-1].code == 250
    assert transaction(w, "dane-ok.test", ["c@dane-ok.test"])[-1].code == 250
    proxy.signal(signal.SIGUSR1)
    harness.wait_for(lambda: len(list(directory.glob("*.json"))) == 2, 10,
                     what="two report files")
    reports = {}
    for path in directory.glob("*.json"):
        sender, domain, begin, end, rest = path.name.split("!")
        assert sender == "proxy.test" and rest.endswith(".json"), path.name
        assert int(begin) % 86400 == 0 and int(begin) <= int(end), path.name
        reports[domain] = json.loads(path.read_text())
    sts = reports["sts-enforce.test"]
    assert sts["organization-name"] == "Proxy Test"
    assert sts["contact-info"] == "tlsrpt@proxy.test"
    [entry] = sts["policies"]
    assert entry["policy"]["policy-type"] == "sts"
    assert entry["policy"]["policy-domain"] == "sts-enforce.test"
    assert "mode: enforce" in entry["policy"]["policy-string"]
    assert entry["policy"]["mx-host"] == ["mx.sts-enforce.test"]
    assert entry["summary"] == {"total-successful-session-count": 0,
                                "total-failure-session-count": 1}
    [row] = entry["failure-details"]
    assert row["result-type"] == "starttls-not-supported"
    assert row["receiving-ip"] == mx.addr4 and row["failed-session-count"] == 1
    dane = reports["dane-ok.test"]
    [entry] = dane["policies"]
    assert entry["policy"]["policy-type"] == "tlsa"
    assert entry["policy"]["policy-string"][0].startswith("3 1 1 ")
    assert entry["summary"] == {"total-successful-session-count": 2,
                                "total-failure-session-count": 0}
    # Submitted by POST to the rua the two domains publish, with the same JSON.
    harness.wait_for(lambda: len(w.https.reports) >= 2, 30, what="two TLS-RPT POSTs")
    posted = {json.loads(r.body)["policies"][0]["policy"]["policy-domain"]: r
              for r in w.https.reports}
    assert set(posted) == {"sts-enforce.test", "dane-ok.test"}
    for domain, req in posted.items():
        assert req.method == "POST" and req.path == "/tlsrpt" and req.sni == "reports.test"
        assert req.headers.get("Content-Type") == "application/tlsrpt+json"
        assert json.loads(req.body) == reports[domain]
    validate_tlsrpt(list(reports.values()))


def validate_tlsrpt(reports):
    """Validates reports against the RFC 8460 JSON Schema kept with the unit tests."""
    import json
    import os
    import jsonschema
    root = os.environ.get("PROXY_SOURCE_DIR") or os.path.join(os.path.dirname(__file__),
                                                               "..", "..")
    matches = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "tests"))
               for f in files if f.startswith("tlsrpt") and f.endswith("schema.json")]
    assert matches, "the RFC 8460 schema file is missing"
    with open(matches[0]) as f:
        schema = json.load(f)
    for r in reports:
        jsonschema.validate(r, schema)


def test_tlsrpt_mailto_goes_through_the_upstream(policy_world, gw_proxy, tmp_path):
    """A mailto: rua: the report is a multipart/report message (RFC 8460 section 5.3)
    sent through [proxy] upstream (in transparent mode, the legacy server's port)."""
    import base64
    import email
    import json
    import signal
    import harness
    from policy_world import txt
    w = policy_world
    zone = w.zone("dane-ok.test")
    zone.set("_smtp._tls", "TXT", txt("v=TLSRPTv1; rua=mailto:tls-reports@dane-ok.test"))
    w.publish()
    with w.topo.entered("gw"):
        relay = harness.AioUpstream(host="192.0.2.1").start()
    try:
        proxy = start(w, gw_proxy, proxy={"upstream": relay.addr}, recipient_policy={
            "tlsrpt_submit": "on", "tlsrpt_contact": "tlsrpt@proxy.test"})
        assert transaction(w, "dane-ok.test", ["b@dane-ok.test"])[-1].code == 250
        proxy.signal(signal.SIGUSR1)
        [msg] = relay.wait_messages(1, timeout=30)
        assert msg.mail_from == "tlsrpt@proxy.test" and msg.rcpt_tos == ["tls-reports@dane-ok.test"]
        m = email.message_from_bytes(msg.content)
        assert m.get_content_type() == "multipart/report"
        assert m.get_param("report-type") == "tlsrpt"
        assert m["TLS-Report-Domain"] == "dane-ok.test"
        assert m["Subject"].startswith("Report Domain: dane-ok.test Submitter: ")
        [part] = [p for p in m.walk() if p.get_content_type() == "application/tlsrpt+json"]
        assert part.get_filename().startswith("proxy.test!dane-ok.test!")
        report = json.loads(base64.b64decode(part.get_payload()))
        assert report["policies"][0]["policy"]["policy-type"] == "tlsa"
        assert report["policies"][0]["summary"]["total-successful-session-count"] == 1
        validate_tlsrpt([report])
        proxy.wait_event("tlsrpt-submitted", domain="dane-ok.test")
    finally:
        relay.stop()
