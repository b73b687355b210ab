"""Self-tests of policy_world.py, the test world of the downgrade gate (issue 11): before the
proxy relies on it, the world is shown to be what its docstring says.

- DNS, through the proxy's own resolver configuration (unbound-host -C world.unbound_config,
  run in the gateway namespace where the proxy runs): every standard domain comes out
  secure, insecure or bogus as designed, with the designed records; without the trust
  anchor everything is insecure, and without `local-zone: "test." nodefault` unbound answers
  NXDOMAIN itself. Also from the client namespace and over IPv6 only.
- The MX certificates match their TLSA records by an independent implementation (openssl
  s_client -starttls smtp -dane_tlsa_rrdata, fed the validated answer): DANE-EE and DANE-TA
  verify, the mismatching one does not; the MTA-STS MXs verify against the test CA, and
  each other certificate kind fails.
- MTA-STS: the policy is fetched from the gateway by name (resolved, SNI, Host, test CA),
  and every control of a site does what it says (status, redirect, Content-Type, chunked,
  oversize, delay, trickle, hangs, wrong certificates, raw bytes, no SNI); TLS-RPT POSTs
  are recorded.
- The MXs record the transport: a cleartext transaction is reported by cleartext() and
  fails assert_nothing_in_clear(), a TLS one passes.
- Changes: a TLSA change, a policy id change, breaking and fixing signatures, signing a
  zone (DS in the parent) and adding a domain are served once publish() returns.
- Teardown leaves no process, namespace, address or file behind.
- With PROXY_BIN: today's proxy (no gate yet) in the gateway, transparent and forward,
  relays to world MXs; when an MX's TLS fails it falls back to cleartext, and the MX's
  recorder catches exactly that downgrade.
"""

import gzip
import hashlib
import json
import os
import socket
import ssl
import subprocess
import time

import pytest

import harness
import netns
import policy_world as pw
from policy_world import policy_material, policy_world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(pw.skip_reason() is not None,
                                reason=pw.skip_reason() or "")


@pytest.fixture(scope="module")
def world(tmp_path_factory, policy_material):  # noqa: F811
    """One world for the read-mostly tests of this file (tests that change it restore it)."""
    with netns.Topology() as topo:
        with pw.PolicyWorld(topo, str(tmp_path_factory.mktemp("world")),
                            material=policy_material) as w:
            print(f"world start: {w.timings}")
            yield w


def own_tlsa(w, domain, triple="3 1 1"):
    mx = w.mx(domain)
    return pw.tlsa_rdata(w.material.mx_cert(mx.name, mx.cert_kind)[0], triple)


def norm(records):
    return sorted(r.lower() for r in records)


# --------------------------------------------------------------------------------------
# DNS: secure, insecure, bogus as designed, seen by the proxy's resolver configuration
# --------------------------------------------------------------------------------------

M = pw.MX_FIRST
DNS_TABLE = [
    # name, type, status, records (a function of the world, a list, or None: not checked)
    ("_25._tcp.mx.dane-ok.test", "TLSA", "secure", lambda w: [own_tlsa(w, "dane-ok.test")]),
    ("dane-ok.test", "MX", "secure", ["10 mx.dane-ok.test."]),
    ("mx.dane-ok.test", "A", "secure", [f"198.51.100.{M}"]),
    ("mx.dane-ok.test", "AAAA", "secure", [f"2001:db8:2::{M}"]),
    ("_smtp._tls.dane-ok.test", "TXT", "secure", [f'"v=TLSRPTv1; rua={pw.REPORTS_URL}"']),
    ("_25._tcp.mx.dane-ta.test", "TLSA", "secure",
     lambda w: [pw.tlsa_rdata(w.material.dane_ta("dane-ta.test")[0], "2 0 1")]),
    ("_25._tcp.mx.dane-mismatch.test", "TLSA", "secure",
     lambda w: [pw.tlsa_rdata(w.material.unrelated("mx.dane-mismatch.test"), "3 1 1")]),
    ("_25._tcp.mx.dane-unusable.test", "TLSA", "secure",
     lambda w: [pw.tlsa_rdata(w.ca_file, "0 0 1"), own_tlsa(w, "dane-unusable.test", "1 1 1")]),
    ("dane-bogus.test", "MX", "bogus", ["10 mx.dane-bogus.test."]),
    ("_25._tcp.mx.dane-bogus.test", "TLSA", "bogus", None),
    ("dane-bogus-tlsa.test", "MX", "secure", ["10 mx.dane-bogus-tlsa.test."]),
    ("mx.dane-bogus-tlsa.test", "A", "secure", None),
    ("_25._tcp.mx.dane-bogus-tlsa.test", "TLSA", "bogus", None),
    ("dane-dsbad.test", "MX", "bogus", None),
    ("dane-expired.test", "MX", "bogus", None),
    ("dnssec-notlsa.test", "MX", "secure", ["10 mx.dnssec-notlsa.test."]),
    ("_25._tcp.mx.dnssec-notlsa.test", "TLSA", "secure", []),
    ("insecure.test", "MX", "insecure", ["10 mx.insecure.test."]),
    ("_25._tcp.mx.insecure.test", "TLSA", "insecure", lambda w: [own_tlsa(w, "insecure.test")]),
    ("_mta-sts.sts-enforce.test", "TXT", "insecure", ['"v=STSv1; id=1;"']),
    ("mta-sts.sts-enforce.test", "A", "insecure", [pw.HTTPS4]),
    ("mta-sts.sts-enforce.test", "AAAA", "insecure", [pw.HTTPS6]),
    ("_smtp._tls.sts-enforce.test", "TXT", "insecure", [f'"v=TLSRPTv1; rua={pw.REPORTS_URL}"']),
    ("_mta-sts.sts-testing.test", "TXT", "insecure", ['"v=STSv1; id=1;"']),
    ("_mta-sts.sts-none.test", "TXT", "insecure", ['"v=STSv1; id=1;"']),
    ("sts-enforce.test", "MX", "insecure", ["10 mx.sts-enforce.test."]),
    ("_mta-sts.nopolicy.test", "TXT", "insecure", []),
    ("nopolicy.test", "MX", "insecure", ["10 mx.nopolicy.test."]),
    ("reports.test", "A", "secure", [pw.HTTPS4]),
    ("ns.test", "AAAA", "secure", [pw.DNS6]),
    ("no-such-name.test", "A", "secure", []),
    ("no-such-name.dane-ok.test", "A", "secure", []),
]


@pytest.mark.parametrize("name,rtype,status,records", DNS_TABLE,
                         ids=[f"{r[1]}-{r[0]}" for r in DNS_TABLE])
def test_dns_from_gateway(world, name, rtype, status, records):
    got = world.lookup(name, rtype, role="gw")
    assert got.status == status, got.text
    if callable(records):
        records = records(world)
    if records is not None:
        assert norm(got.records) == norm(records), got.text
    if records == [] and status == "secure":
        # An authenticated denial (NSEC): NXDOMAIN or NODATA, validated.
        assert "(secure)" in got.text


def test_dns_from_client_namespace_and_over_ipv6(world, tmp_path):
    # A proxy in the client namespace (forward-mode tests may put it there) reaches the
    # DNS server through the gateway.
    got = world.lookup("_25._tcp.mx.dane-ok.test", "TLSA", role="client")
    assert got.status == "secure" and got.records, got.text
    # IPv6 only: the stub's IPv6 address, the resolver not allowed to use IPv4.
    v6 = world.write_unbound_config(str(tmp_path / "v6.conf"), stub_addrs=(pw.DNS6,),
                                    extra=("do-ip4: no",))
    for name, rtype, status in (("_25._tcp.mx.dane-ok.test", "TLSA", "secure"),
                                ("dane-bogus.test", "MX", "bogus"),
                                ("_mta-sts.sts-enforce.test", "TXT", "insecure")):
        got = world.lookup(name, rtype, config=v6)
        assert got.status == status, got.text


def test_trust_anchor_and_nodefault_are_what_the_proxy_needs(world, tmp_path):
    # Without the trust anchor nothing is validated: DANE would be impossible.
    no_anchor = world.write_unbound_config(str(tmp_path / "no-anchor.conf"),
                                           trust_anchor=False)
    for name, rtype in (("_25._tcp.mx.dane-ok.test", "TLSA"), ("dane-bogus.test", "MX")):
        got = world.lookup(name, rtype, config=no_anchor)
        assert got.status == "insecure", got.text
    # Without `local-zone: "test." nodefault`, unbound answers for the reserved name itself.
    default = world.write_unbound_config(str(tmp_path / "default.conf"), nodefault=False)
    got = world.lookup("dane-ok.test", "MX", config=default)
    assert got.nxdomain and not got.records, got.text
    # The files the proxy is given.
    with open(world.unbound_config) as f:
        text = f.read()
    for line in (f'trust-anchor-file: "{world.trust_anchor_file}"', 'local-zone: "test." nodefault',
                 f"stub-addr: {pw.DNS4}", 'module-config: "validator iterator"'):
        assert line in text, text
    with open(world.trust_anchor_file) as f:
        assert f.read().startswith("test. 2 IN DS "), world.trust_anchor_file
    with open(world.trust_anchor_dnskey_file) as f:
        assert " DNSKEY 257 3 13 " in f.read().replace("\t", " ")


# --------------------------------------------------------------------------------------
# MX certificates, checked by an independent implementation (openssl)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,verified", [("dane-ok.test", True), ("dane-ta.test", True),
                                             ("insecure.test", True),
                                             ("dane-mismatch.test", False)])
def test_dane_certificates_match_validated_tlsa(world, domain, verified):
    tlsa = world.lookup(f"_25._tcp.{world.mx(domain).name}", "TLSA", role="gw")
    assert tlsa.records, tlsa.text
    ok, out = world.openssl_smtp(domain, tlsa=tlsa.records)
    assert ok is verified, out
    if verified:
        assert "DANE TLSA" in out, out
    conns = world.mx(domain).conns()
    assert conns and conns[-1].starttls == 1, world.mx(domain).describe()


def test_sts_mx_certificates_against_the_test_ca(world):
    mx = world.mx("sts-enforce.test")
    ok, out = world.openssl_smtp("sts-enforce.test", family=6)
    assert ok, out
    try:
        for kind in ("self", "untrusted", "wrong-name"):
            mx.use_cert(kind)
            ok, out = world.openssl_smtp("sts-enforce.test")
            assert not ok, f"{kind}: {out}"
    finally:
        mx.use_cert("pkix")
    # The TLSA helper agrees with python's own view of the certificate.
    cert = world.material.mx_cert(mx.name, "self")[0]
    der = harness.cert_der(cert)
    assert pw.tlsa_rdata(cert, "3 0 1") == f"3 0 1 {hashlib.sha256(der).hexdigest()}"
    assert pw.tlsa_rdata(cert, "3 0 0").endswith(der.hex())


# --------------------------------------------------------------------------------------
# MTA-STS over HTTPS, TLS-RPT reports
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["enforce", "testing", "none"])
def test_policy_fetched_from_gateway(world, mode):
    domain = f"sts-{mode}.test"
    host = f"mta-sts.{domain}"
    addr = world.lookup(host, "A", role="gw").records[0]
    before = time.time()
    status, headers, body = world.https_get(host, addr=addr, role="gw")
    assert status == 200 and headers["content-type"] == "text/plain"
    assert body.decode() == pw.sts_policy(mode, [f"mx.{domain}"], 86400)
    req = world.https.requests_for(domain)[-1]
    assert (req.method, req.path, req.host, req.sni) == ("GET", pw.STS_PATH, host, host)
    assert req.peer[0] == netns.GW_SERVER4 and req.time >= before
    # IPv6 as well.
    status, _, _ = world.https_get(host, addr=pw.HTTPS6, role="gw")
    assert status == 200


@pytest.fixture
def site(world):
    """A scratch site (not in DNS: requests go to the HTTPS address directly)."""
    s = world.https.site("controls.test")
    s.reset(pw.sts_policy("enforce", ["mx.controls.test"]))
    yield s
    s.reset()


HOST = "mta-sts.controls.test"


def test_site_status_redirect_type_chunked_pad_raw(world, site):
    site.status = 500
    assert world.https_get(HOST)[0] == 500
    site.status = 200
    site.redirect = "https://elsewhere.test/.well-known/mta-sts.txt"
    status, headers, _ = world.https_get(HOST)
    assert status == 301 and headers["location"] == site.redirect
    site.redirect = None
    site.content_type = "text/html"
    assert world.https_get(HOST)[1]["content-type"] == "text/html"
    site.content_type = "text/plain"
    site.chunked = True
    status, headers, body = world.https_get(HOST)
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert body == site.policy.encode()
    site.chunked = False
    site.pad_to = 100_000
    body = world.https_get(HOST)[2]
    assert len(body) >= 100_000 and body.startswith(site.policy.encode())
    site.pad_to = None
    site.raw = b"HTTP/1.0 200 OK\r\n\r\nversion: STSv1\r\n"
    status, headers, body = world.https_get(HOST)
    assert status == 200 and "content-type" not in headers and body == b"version: STSv1\r\n"
    site.raw = None
    site.policy = None
    assert world.https_get(HOST)[0] == 404
    assert world.https_get("mta-sts.unknown.test", sni=False)[0] == 404
    assert world.https_get(HOST, path="/other")[0] == 404


def test_site_slow_and_hanging(world, site):
    site.delay = 0.4
    t = time.monotonic()
    assert world.https_get(HOST)[0] == 200
    assert time.monotonic() - t >= 0.4
    site.delay = 0
    site.trickle = 0.1                      # 72 bytes: two pieces, 0.2 s
    t = time.monotonic()
    assert world.https_get(HOST)[2] == site.policy.encode()
    assert time.monotonic() - t >= 0.2
    site.trickle = None
    for hang in ("tls", "headers", "body"):
        site.hang = hang
        n = len(world.https.requests_for("controls.test"))
        t = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, ssl.SSLError)):
            world.https_get(HOST, timeout=0.5)
        assert time.monotonic() - t < 3
        # A request is recorded unless the handshake never ended.
        assert len(world.https.requests_for("controls.test")) == n + (hang != "tls"), hang
    # Completed handshakes are recorded with SNI and peer (the hung one only once it ends).
    assert any(h[1] == HOST and h[2][0] == netns.GW_SERVER4 for h in world.https.handshakes)
    site.hang = None


@pytest.mark.parametrize("cert", ["wrong-name", "untrusted", "self"])
def test_site_certificates_chosen_by_sni(world, site, cert):
    site.cert = cert
    with pytest.raises(ssl.SSLCertVerificationError):
        world.https_get(HOST)
    site.cert = "ok"
    assert world.https_get(HOST)[0] == 200


def test_no_sni_gets_the_default_certificate(world, site):
    status, _, _ = world.https_get(HOST, sni=False)     # chain verified, name not checked
    assert status == 200
    assert world.https.requests_for("controls.test")[-1].sni is None
    # A name the server has no site for gets the same default certificate: no match.
    with pytest.raises(ssl.SSLCertVerificationError):
        world.https_get("mta-sts.no-such.test")


def test_tlsrpt_report_posted(world):
    report = gzip.compress(json.dumps({"organization-name": "test"}).encode())
    status, _, _ = world.https_get(pw.REPORTS_HOST, path="/tlsrpt", method="POST", body=report,
                                   headers={"Content-Type": "application/tlsrpt+gzip"})
    assert status == 201
    got = world.https.reports[-1]
    assert (got.host, got.sni, got.path) == (pw.REPORTS_HOST, pw.REPORTS_HOST, "/tlsrpt")
    assert json.loads(gzip.decompress(got.body)) == {"organization-name": "test"}
    assert got.headers["Content-Type"] == "application/tlsrpt+gzip"


# --------------------------------------------------------------------------------------
# MXs record the transport
# --------------------------------------------------------------------------------------

def send(conn, rcpt, tls=False, server_hostname=None):
    assert conn.greeting().code == 220
    conn.ehlo("legacy.test")
    if tls:
        assert conn.cmd("STARTTLS").code == 220
        conn.start_tls(server_hostname=server_hostname)
        conn.ehlo("legacy.test")
    assert conn.cmd("MAIL FROM:<a@legacy.test>").code == 250
    assert conn.cmd(f"RCPT TO:<{rcpt}>").code == 250
    assert conn.cmd("DATA").code == 354
    assert conn.cmd("Subject: t\r\n\r\nbody\r\n.").code == 250
    conn.cmd("QUIT")
    conn.close()


def test_mx_records_cleartext_and_tls(world):
    mx = world.mx("sts-testing.test")
    n = len(mx.conns())
    send(world.connect("sts-testing.test"), "b@sts-testing.test")
    assert [line for _, line in mx.cleartext()[-2:]] == [b"RCPT TO:<b@sts-testing.test>", b"DATA"]
    assert not mx.messages()[-1].tls
    with pytest.raises(AssertionError, match="cleartext"):
        mx.assert_nothing_in_clear()
    other = world.mx("sts-none.test")
    send(world.connect("sts-none.test", family=6), "b@sts-none.test", tls=True)
    other.assert_nothing_in_clear()
    assert other.transports()[-1][1] == "TLSv1.3" and other.messages()[-1].tls_version == "TLSv1.3"
    assert mx.conns()[n].peer[0] == netns.CLIENT4      # routed through the gateway, no proxy
    assert other.conns()[-1].peer[0] == netns.CLIENT6


# --------------------------------------------------------------------------------------
# Changes during a test
# --------------------------------------------------------------------------------------

def test_changes_are_served_when_publish_returns(world):
    w = world
    name = "_25._tcp.mx.dane-ok.test"
    original = w.zone("dane-ok.test").get(f"{name}.", "TLSA")
    new = "3 1 1 " + "ab" * 32
    t = time.monotonic()
    w.set_tlsa("dane-ok.test", new, *original)
    publish = time.monotonic() - t
    got = w.lookup(name, "TLSA")
    assert got.status == "secure" and norm(got.records) == norm([new, *original]), got.text
    w.set_tlsa("dane-ok.test", *original)
    assert norm(w.lookup(name, "TLSA").records) == norm(original)

    # A policy change with a new id: the TXT record and the served policy together.
    w.set_sts("sts-enforce.test", mode="testing", id="20270101")
    try:
        got = w.lookup("_mta-sts.sts-enforce.test", "TXT")
        assert got.records == ['"v=STSv1; id=20270101;"'], got.text
        assert b"mode: testing" in w.https_get("mta-sts.sts-enforce.test")[2]
        # The world changed its own copy of the description, not the shared one.
        spec = next(d for d in pw.STANDARD_DOMAINS if d.name == "sts-enforce.test")
        assert (spec.sts.mode, spec.sts.id) == ("enforce", "1")
    finally:
        w.set_sts("sts-enforce.test", mode="enforce", id="1")
    assert b"mode: enforce" in w.https_get("mta-sts.sts-enforce.test")[2]

    # Break the signatures, then repair them.
    zone = w.zone("dane-ok.test")
    zone.bogus = "bad-sig"
    assert w.publish() == ["dane-ok.test"]
    assert w.lookup(name, "TLSA").status == "bogus"
    zone.bogus = None
    w.publish()
    assert w.lookup(name, "TLSA").status == "secure"

    # Sign an unsigned zone: the parent gets its DS, both are reloaded.
    zone = w.zone("insecure.test")
    zone.signed = True
    try:
        assert sorted(w.publish()) == ["insecure.test", "test"]
        assert w.lookup("_25._tcp.mx.insecure.test", "TLSA").status == "secure"
    finally:
        zone.signed = False
        w.publish()
    assert w.lookup("_25._tcp.mx.insecure.test", "TLSA").status == "insecure"
    print(f"publish of one zone: {publish:.3f}s")
    assert publish < 2.0


def test_add_domain_while_running(world):
    d = world.add_domain(pw.DomainSpec("late.test", signed=True,
                                       mx=(pw.MxSpec(cert="self", tlsa=("3 1 1",)),),
                                       sts=pw.StsSpec("enforce")))
    got = world.lookup("_25._tcp.mx.late.test", "TLSA")
    assert got.status == "secure", got.text
    assert norm(got.records) == norm([own_tlsa(world, "late.test")]), got.text
    ok, out = world.openssl_smtp("late.test", tlsa=got.records)
    assert ok, out
    assert world.https_get("mta-sts.late.test")[0] == 200
    assert d.mx.addr4 == f"198.51.100.{pw.MX_FIRST + len(pw.STANDARD_DOMAINS)}"


# --------------------------------------------------------------------------------------
# Teardown
# --------------------------------------------------------------------------------------

def test_standalone_world_leaves_nothing(policy_material):  # noqa: F811
    with pw.PolicyWorld(material=policy_material) as w:
        names = dict(w.topo.names)
        nsd_pid = w.nsd.proc.pid
        workdir = w.workdir
        mx_thread_count = sum(len(mx._threads) for d in w.domains.values() for mx in d.mxs)
        assert w.lookup("dane-ok.test", "MX").status == "secure"
        assert mx_thread_count >= 2 * len(pw.STANDARD_DOMAINS)
    assert not set(names.values()) & set(netns.existing_namespaces())
    assert not os.path.exists(workdir)
    with pytest.raises(ProcessLookupError):
        os.kill(nsd_pid, 0)
    assert w.https is None and w.nsd is None


def test_fixture_world_removes_its_addresses(topo, tmp_path, policy_material):  # noqa: F811
    with pw.PolicyWorld(topo, str(tmp_path / "w"), material=policy_material,
                        domains=[pw.DomainSpec("one.test", signed=True)]) as w:
        assert w.lookup("one.test", "MX").status == "secure"
        out = topo.ip("server", "addr", "show").stdout.decode()
        assert pw.DNS4 in out and w.mx("one.test").addr6 in out
    out = topo.ip("server", "addr", "show").stdout.decode()
    assert pw.DNS4 not in out and pw.HTTPS6 not in out and "198.51.100.101" not in out, out
    assert netns.SERVER4 in out                      # the topology's own are untouched
    p = subprocess.run(["pgrep", "-f", f"nsd -d -c {tmp_path}"], stdout=subprocess.PIPE)
    assert p.returncode == 1, p.stdout


# --------------------------------------------------------------------------------------
# Today's proxy (no gate yet) in the world: the recorder catches the downgrade
# --------------------------------------------------------------------------------------

@pytest.fixture
def proxies(request):
    if not os.environ.get("PROXY_BIN"):
        pytest.skip("PROXY_BIN not set: the world's own checks ran without the proxy")
    return request.getfixturevalue("gw_proxy")


def test_proxy_in_gateway_reaches_world_and_downgrade_is_seen(policy_world, proxies):  # noqa: F811
    w = policy_world
    w.topo.redirect(netns.PROXY_PORT)
    proxies()                                                  # transparent, leg 2 "may"
    mx = w.mx("sts-enforce.test")
    send(w.connect("sts-enforce.test"), "b@sts-enforce.test")
    mx.wait_messages(1)
    mx.assert_nothing_in_clear()                               # TLS to the MX
    assert mx.conns()[0].peer[0] == netns.GW_SERVER4
    mx.mode = "reset-during-handshake"                         # now TLS fails...
    send(w.connect("sts-enforce.test"), "c@sts-enforce.test")
    mx.wait_messages(2)
    with pytest.raises(AssertionError, match="RCPT TO:<c@sts-enforce.test>"):
        mx.assert_nothing_in_clear()                           # ...and today's proxy falls back

    # Forward mode from the same namespace: the gateway's client-side address.
    extra = w.proxy_extra(forward_to="nopolicy.test", files=False)
    proxies(extra, port=10026, listen=[f"{netns.GW_CLIENT4}:10026"])
    send(netns.connect_from(w.topo, "client", netns.GW_CLIENT4, 10026), "d@nopolicy.test")
    fwd = w.mx("nopolicy.test")
    fwd.wait_messages(1)
    fwd.assert_nothing_in_clear()
