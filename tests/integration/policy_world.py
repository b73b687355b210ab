"""A test world for the downgrade gate (issue 11): DNSSEC-signed DNS, MTA-STS over HTTPS and
recipient MXs with chosen certificates, all inside the network namespaces of netns.Topology.

    client ns                gw ns (the proxy)                server ns
    192.0.2.10          192.0.2.1 | 198.51.100.1          198.51.100.53 / 2001:db8:2::53
    2001:db8:1::10   2001:db8:1::1 | 2001:db8:2::1            nsd: the zones below (port 53)
                                                          198.51.100.43 / 2001:db8:2::443
                                                              HTTPS (443): mta-sts.<domain>
                                                              for every domain, reports.test
                                                          198.51.100.101... / 2001:db8:2::101...
                                                              one MX per address, port 25
                                                              (fake_tls_upstream, real TLS)

The gateway (where netns.GwProxies / the conftest fixture gw_proxy start the proxy, in
transparent or forward mode) is directly connected to 198.51.100.0/24 and 2001:db8:2::/64,
so the proxy reaches the DNS server, the HTTPS server and every MX without any rule; the
client namespace reaches them through the gateway (routing, or the REDIRECT/TPROXY rules for
port 25 when a test adds them). The self-tests (test_policy_world.py) check both.
Only documentation addresses are used, only inside the namespaces: nothing leaves the
machine, and the namespaces (with every address, process and socket) die at teardown.

DNS. nsd serves the signed zone "test." (the world's root of trust) and one child zone per
domain, delegated from it (NS ns.test.; a DS record when the child is signed). Zones are
generated from Python (Zone: records; signed or not; broken on purpose), signed with
ldns-signzone (ECDSA P-256 KSK+ZSK from ldns-keygen, NSEC) and can be changed during a test:
edit, then publish(): changed zones are re-signed, nsd reloads exactly those
(nsd-control reload ZONE) and publish() returns once nsd serves their new SOA serial.
Record TTLs are the world's ttl (2 s): a running resolver sees a change within ttl seconds.
The proxy's resolver (libunbound) is configured by the generated file world.unbound_config:

    server:
        module-config: "validator iterator"
        trust-anchor-file: "<world.trust_anchor_file>"   # DS of test.
        local-zone: "test." nodefault                    # else unbound answers NXDOMAIN
        qname-minimisation: no
    stub-zone:
        name: "test."
        stub-addr: 198.51.100.53
        stub-addr: 2001:db8:2::53

No root hints are used (there is no route out of the namespaces anyway).

The standard domains (STANDARD_DOMAINS; each MX is mx.<domain>, preference 10):

  domain                DNSSEC                MX certificate           TLSA _25._tcp.mx  STS
  dane-ok.test          secure                self-signed              3 1 1             -
  dane-ta.test          secure                leaf of a private TA,    2 0 1 (the TA)    -
                                              chain leaf+TA sent
  dane-mismatch.test    secure                self-signed              3 1 1 of another  -
  dane-unusable.test    secure                test web CA              0 0 1, 1 1 1      -
  dane-bogus.test       bogus (every RRSIG    self-signed              3 1 1             -
                        corrupted: MX too)
  dane-bogus-tlsa.test  secure, but the TLSA  self-signed              3 1 1             -
                        RRSIG is corrupted
  dane-dsbad.test       bogus (the parent's   self-signed              3 1 1             -
                        DS matches no key)
  dane-expired.test     bogus (signatures     self-signed              3 1 1             -
                        expired yesterday)
  dnssec-notlsa.test    secure, no TLSA       test web CA              -                 -
  insecure.test         insecure (unsigned    self-signed              3 1 1 (insecure)  -
                        delegation)
  sts-enforce.test      insecure              test web CA              -                 enforce
  sts-testing.test      insecure              test web CA              -                 testing
  sts-none.test         insecure              test web CA              -                 none
  nopolicy.test         insecure              test web CA              -                 -

An STS domain has `_mta-sts TXT "v=STSv1; id=1;"`, `mta-sts A/AAAA` (the HTTPS server) and
the policy "version: STSv1 / mode: M / mx: mx.<domain> / max_age: 86400";
sts-enforce.test and dane-ok.test also publish `_smtp._tls TXT "v=TLSRPTv1;
rua=https://reports.test/tlsrpt"` (the HTTPS server records every POST: world.https.reports).

Certificates (Material, made once per session directory, valid 2 days): world.ca_file is the
test web CA (the proxy trusts it for MTA-STS, and for `verify = ca`); MX certificate kinds:
"pkix" (test web CA, for the MX name), "self" (self-signed), "dane-ta" (a private TA per
domain, chain sent), "untrusted" (another CA), "wrong-name" (test web CA, wrong-name.test).
mx.use_cert(kind) switches an MX's certificate for its next handshake; tlsa_rdata(cert,
"3 1 1") computes TLSA data (openssl for the DER and public key, hashlib for the digest).

HTTPS (HttpsServer, world.https; world.site(domain) -> StsSite): per domain, the policy text,
status, redirect, Content-Type, delay, hang ("tls", "headers", "body"), trickle, pad_to
(oversize), chunked, raw bytes, and the certificate chosen by SNI ("ok", "wrong-name",
"untrusted", "self"); every request is recorded (method, path, Host, SNI, peer, time).

MX (PolicyMx, a fake_tls_upstream.TlsFakeUpstream on port 25 of its own IPv4 and IPv6
address; its .mode chooses how STARTTLS goes): every connection's commands inside and
outside TLS and every message with its transport. mx.cleartext() lists RCPT/DATA/BDAT
commands that arrived outside TLS; mx.assert_nothing_in_clear() fails on any of them or on a
message delivered in cleartext.

A gate test (request policy_world before gw_proxy, so the proxy stops first):

    from policy_world import policy_world, policy_material  # noqa: F401 (fixtures)

    def test_enforce_never_falls_back(policy_world, gw_proxy):
        w = policy_world
        w.topo.redirect(netns.PROXY_PORT)                 # intercept port 25 in the gateway
        mx = w.mx("sts-enforce.test")
        mx.mode = "reset-during-handshake"                # TLS fails, cleartext would work
        gw_proxy(w.proxy_extra())                         # transparent mode, in the gateway
        with w.connect("sts-enforce.test") as c:          # from the client ns to the MX's IP
            c.greeting(); c.cmd("EHLO legacy.test")
            assert c.cmd("MAIL FROM:<a@legacy.test>").code == 250
            assert c.cmd("RCPT TO:<b@sts-enforce.test>").startswith("450 4.7.")
        mx.assert_nothing_in_clear()
        assert w.https.requests_for("sts-enforce.test")   # the policy was fetched

Forward mode: gw_proxy(w.proxy_extra(forward_to="sts-enforce.test"), listen=["192.0.2.1:10025"])
and connect with netns.connect_from(w.topo, "client", "192.0.2.1", 10025); the gateway
namespace serves both modes. proxy_extra() sets [recipient_policy] unbound_config and
ca_file (PROXY_KEYS); merge further keys as keyword arguments, e.g.
w.proxy_extra(upstream_tls={"recipient_policies": "on"}).

Checks a test can make without the proxy: world.lookup(name, type, role) (unbound-host with
the proxy's file, in namespace role: .status secure/insecure/bogus, .records),
world.openssl_smtp(domain, tlsa=[...]) (openssl s_client -starttls smtp with DANE, or
WebPKI against the test CA), world.https_get(host, path) (an HTTPS request by name).

Changing the world: world.set_tlsa(domain, *rdatas), world.set_sts(domain, mode=, mx=,
max_age=, id=), world.site(domain).<attribute> = ..., world.mx(domain).mode = ... /
.use_cert(kind), world.zone(name).set/add/remove(...) then world.publish(), zone.bogus /
zone.signed then publish(), world.add_domain(DomainSpec(...)).

Timings: a world starts in about 1 s and stops in about 0.5 s; the keys and certificates
(Material, the session fixture policy_material) take 3-5 s once per session.

Standalone: `with PolicyWorld() as w:` makes its own Topology. Needs root and the Debian
packages nsd, ldnsutils, unbound-host, openssl (missing_tools()).
"""

import base64
import contextlib
import copy
import ctypes
import dataclasses
import hashlib
import http.server
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import tempfile
import threading
import time

import pytest

import fake_tls_upstream
import harness
import netns

ROOT = "test"                                  # the signed top zone: the trust anchor
DNS4, DNS6 = "198.51.100.53", "2001:db8:2::53"
HTTPS4, HTTPS6 = "198.51.100.43", "2001:db8:2::443"
MX_FIRST = 101                                 # MX n: 198.51.100.(101+n), 2001:db8:2::(101+n)
REPORTS_HOST = "reports.test"                  # TLS-RPT https rua, on the HTTPS server
REPORTS_URL = f"https://{REPORTS_HOST}/tlsrpt"
STS_PATH = "/.well-known/mta-sts.txt"
HANG_LIMIT = 60.0                              # the longest any "hang" lasts (stop ends it)
TOOLS = ("nsd", "nsd-control", "ldns-keygen", "ldns-signzone", "ldns-key2ds",
         "unbound-host", "openssl", "ip")

# The proxy's configuration keys for the files the world makes: (section, key), as in
# proxy/conf.c ([recipient_policy]); change them here if they are renamed.
PROXY_KEYS = {"unbound_config": ("recipient_policy", "unbound_config"),
              "ca_file": ("recipient_policy", "ca_file")}


def missing_tools():
    """The programs the world needs that are not installed (empty: all there)."""
    return [t for t in TOOLS if shutil.which(t) is None
            and not os.path.exists(f"/usr/sbin/{t}")]


def _run(argv, cwd=None, input=None, timeout=30, check=True):
    p = subprocess.run(argv, cwd=cwd, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): "
                           f"{p.stderr.decode(errors='replace').strip()}")
    return p


# --------------------------------------------------------------------------------------
# Certificates, TLSA data, DNSSEC keys
# --------------------------------------------------------------------------------------

def tlsa_rdata(cert, usage=3, selector=1, mtype=1):
    """TLSA record data for the first certificate in PEM file |cert| (DER and public key
    from openssl, hashed with hashlib): "3 1 1 <sha-256 of the SubjectPublicKeyInfo>",
    "2 0 1 <sha-256 of the whole certificate>", ... |usage| may also be the whole "U S M"
    string. Cached per file (path, mtime, size)."""
    if isinstance(usage, str):
        usage, selector, mtype = (int(x) for x in usage.split())
    st = os.stat(cert)
    key = (os.path.realpath(cert), st.st_mtime_ns, st.st_size, usage, selector, mtype)
    if key not in _tlsa_cache:
        _tlsa_cache[key] = _tlsa_rdata(cert, usage, selector, mtype)
    return _tlsa_cache[key]


_tlsa_cache = {}


def _tlsa_rdata(cert, usage, selector, mtype):
    if selector == 0:      # the whole certificate, DER
        data = _run(["openssl", "x509", "-in", cert, "-outform", "DER"]).stdout
    elif selector == 1:    # the SubjectPublicKeyInfo: the DER inside openssl's PUBLIC KEY PEM
        pem = _run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"]).stdout.decode()
        data = base64.b64decode("".join(line for line in pem.splitlines()
                                        if line and not line.startswith("-----")))
    else:
        raise ValueError(f"TLSA selector {selector}")
    if mtype == 0:
        digest = data.hex()
    elif mtype in (1, 2):
        digest = (hashlib.sha256 if mtype == 1 else hashlib.sha512)(data).hexdigest()
    else:
        raise ValueError(f"TLSA matching type {mtype}")
    return f"{usage} {selector} {mtype} {digest}"


class Material:
    """Keys and certificates in |directory|, each made on first use and reused after (by
    every world of a session that shares the directory). Thread-safe."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.RLock()
        self.ca = self._ca("policy-world-ca", "Policy World Test CA")
        self.other_ca = self._ca("policy-world-other-ca", "Policy World Untrusted CA")

    @property
    def ca_file(self):
        return self.ca[0]

    def _path(self, *parts):
        return os.path.join(self.dir, *parts)

    def _ca(self, stem, cn):
        with self._lock:
            cert, key = self._path(f"{stem}.crt.pem"), self._path(f"{stem}.key.pem")
            if not os.path.exists(cert):
                _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                      "-keyout", key + ".tmp", "-out", cert + ".tmp"])
                os.replace(key + ".tmp", key)
                os.replace(cert + ".tmp", cert)
            return cert, key

    def leaf(self, stem, names, issuer=None):
        """(cert, key) for DNS |names| (CN the first): self-signed without |issuer|, else
        signed by |issuer| (a (cert, key) CA pair). EC P-256, CA:FALSE, serverAuth."""
        with self._lock:
            cert, key = self._path(f"{stem}.crt.pem"), self._path(f"{stem}.key.pem")
            if os.path.exists(cert):
                return cert, key
            san = ",".join(f"DNS:{n}" for n in names)
            tmp_key, tmp_cert = key + ".tmp", cert + ".tmp"
            if issuer is None:
                _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                      "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
                      "-addext", "basicConstraints=critical,CA:FALSE",
                      "-addext", "extendedKeyUsage=serverAuth",
                      "-keyout", tmp_key, "-out", tmp_cert])
            else:
                csr, ext = self._path(f"{stem}.csr.pem"), self._path(f"{stem}.ext")
                _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={names[0]}",
                      "-keyout", tmp_key, "-out", csr])
                with open(ext, "w") as f:
                    f.write(f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
                            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
                _run(["openssl", "x509", "-req", "-in", csr, "-CA", issuer[0], "-CAkey",
                      issuer[1], "-set_serial", str(secrets.randbits(63)), "-days", "2",
                      "-extfile", ext, "-out", tmp_cert])
            os.replace(tmp_key, key)
            os.replace(tmp_cert, cert)
            return cert, key

    def dane_ta(self, domain):
        """The private trust anchor (a CA) of |domain|'s DANE-TA MX certificates."""
        return self._ca(f"dane-ta-{domain}", f"DANE TA of {domain}")

    MX_KINDS = ("pkix", "self", "dane-ta", "untrusted", "wrong-name")

    def mx_cert(self, name, kind):
        """(cert file, key file) for an MX called |name|: kind "pkix" (test web CA), "self"
        (self-signed), "dane-ta" (leaf of the domain's private TA; the file holds leaf+TA,
        the chain the server sends), "untrusted" (another CA), "wrong-name" (test web CA,
        but for wrong-name.test)."""
        with self._lock:
            if kind == "pkix":
                return self.leaf(f"mx-{name}-pkix", [name], self.ca)
            if kind == "self":
                return self.leaf(f"mx-{name}-self", [name])
            if kind == "untrusted":
                return self.leaf(f"mx-{name}-untrusted", [name], self.other_ca)
            if kind == "wrong-name":
                return self.leaf(f"mx-{name}-wrong-name", ["wrong-name.test"], self.ca)
            if kind == "dane-ta":
                ta = self.dane_ta(name.split(".", 1)[1])
                leaf, key = self.leaf(f"mx-{name}-dane-ta", [name], ta)
                chain = self._path(f"mx-{name}-dane-ta.chain.pem")
                if not os.path.exists(chain):
                    with open(chain + ".tmp", "wb") as out:
                        for part in (leaf, ta[0]):
                            with open(part, "rb") as f:
                                out.write(f.read())
                    os.replace(chain + ".tmp", chain)
                return chain, key
            raise ValueError(f"MX certificate kind {kind!r}; one of {self.MX_KINDS}")

    def issuer_of(self, name, kind):
        """The CA certificate file that issued the MX certificate of |kind| (the TA for
        TLSA usages 0 and 2); a self-signed certificate is its own issuer."""
        if kind in ("pkix", "wrong-name"):
            return self.ca[0]
        if kind == "untrusted":
            return self.other_ca[0]
        if kind == "dane-ta":
            return self.dane_ta(name.split(".", 1)[1])[0]
        return self.mx_cert(name, kind)[0]

    def unrelated(self, name):
        """A self-signed certificate for |name| that no server presents (mismatching TLSA)."""
        return self.leaf(f"unrelated-{name}", [name])[0]

    def zone_keys(self, zone):
        """{"ksk": base, "zsk": base, "decoy": base} of |zone|'s ldns key files (paths
        without .key/.private); decoy is a KSK that is never published (for a parent DS
        that matches nothing)."""
        with self._lock:
            d = self._path("dnssec", zone)
            os.makedirs(d, exist_ok=True)
            manifest = os.path.join(d, "keys")
            if os.path.exists(manifest):
                with open(manifest) as f:
                    return dict(line.split() for line in f if line.strip())
            keys = {}
            for role, args in (("ksk", ["-k"]), ("zsk", []), ("decoy", ["-k"])):
                p = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", *args, f"{zone}."], cwd=d)
                keys[role] = os.path.join(d, p.stdout.decode().strip())
            with open(manifest + ".tmp", "w") as f:
                f.writelines(f"{k} {v}\n" for k, v in keys.items())
            os.replace(manifest + ".tmp", manifest)
            return keys

    def ds_rdata(self, zone, which="ksk"):
        """The SHA-256 DS record data of |zone|'s KSK (or decoy key)."""
        base = self.zone_keys(zone)[which]
        out = _run(["ldns-key2ds", "-n", "-2", base + ".key"]).stdout.decode().split()
        return " ".join(out[out.index("DS") + 1:])

    def dnskey_rr(self, zone):
        with open(self.zone_keys(zone)["ksk"] + ".key") as f:
            return f.read().split(";")[0].strip()


# --------------------------------------------------------------------------------------
# The description of the world: domains, MXs, policies
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class MxSpec:
    """One MX host of a domain. |host|: relative to the domain ("mx" -> mx.<domain>).
    |cert|: Material.mx_cert kind. |tlsa|: TLSA "usage selector mtype" triples computed
    for the certificate (usages 1/3: the leaf; 0/2: its issuer, the TA); with
    |tlsa_from| "other" they are computed from a certificate nobody presents (mismatch).
    |mode|: fake_tls_upstream mode (changeable at run time: world.mx(d).mode)."""
    host: str = "mx"
    cert: str = "pkix"
    tlsa: tuple = ()
    tlsa_from: str = "own"
    mode: str = "tls-ok"
    preference: int = 10


@dataclasses.dataclass
class StsSpec:
    mode: str = "enforce"
    mx: tuple = None          # the policy's mx patterns; None: the domain's MX host names
    max_age: int = 86400
    id: str = "1"


@dataclasses.dataclass
class DomainSpec:
    """A recipient domain, delegated from test. in its own zone. |signed|: DNSSEC (a DS in
    the parent). |bogus|: None, "bad-sig" (RRSIGs corrupted: of the types in |bogus_types|,
    or all), "ds-mismatch" (the parent's DS matches no key), "expired" (signatures expired
    yesterday). |tlsrpt|: the rua of a _smtp._tls TXT record. |records|: extra (owner,
    type, rdata) tuples, owners relative to the domain ("@" the apex)."""
    name: str
    signed: bool = False
    bogus: str = None
    bogus_types: tuple = None
    mx: tuple = (MxSpec(),)
    sts: StsSpec = None
    tlsrpt: str = None
    records: tuple = ()


STANDARD_DOMAINS = (
    DomainSpec("dane-ok.test", signed=True, mx=(MxSpec(cert="self", tlsa=("3 1 1",)),),
               tlsrpt=REPORTS_URL),
    DomainSpec("dane-ta.test", signed=True, mx=(MxSpec(cert="dane-ta", tlsa=("2 0 1",)),)),
    DomainSpec("dane-mismatch.test", signed=True,
               mx=(MxSpec(cert="self", tlsa=("3 1 1",), tlsa_from="other"),)),
    DomainSpec("dane-unusable.test", signed=True,
               mx=(MxSpec(cert="pkix", tlsa=("0 0 1", "1 1 1")),)),
    DomainSpec("dane-bogus.test", signed=True, bogus="bad-sig",
               mx=(MxSpec(cert="self", tlsa=("3 1 1",)),)),
    DomainSpec("dane-bogus-tlsa.test", signed=True, bogus="bad-sig", bogus_types=("TLSA",),
               mx=(MxSpec(cert="self", tlsa=("3 1 1",)),)),
    DomainSpec("dane-dsbad.test", signed=True, bogus="ds-mismatch",
               mx=(MxSpec(cert="self", tlsa=("3 1 1",)),)),
    DomainSpec("dane-expired.test", signed=True, bogus="expired",
               mx=(MxSpec(cert="self", tlsa=("3 1 1",)),)),
    DomainSpec("dnssec-notlsa.test", signed=True),
    DomainSpec("insecure.test", mx=(MxSpec(cert="self", tlsa=("3 1 1",)),)),
    DomainSpec("sts-enforce.test", sts=StsSpec("enforce"), tlsrpt=REPORTS_URL),
    DomainSpec("sts-testing.test", sts=StsSpec("testing")),
    DomainSpec("sts-none.test", sts=StsSpec("none")),
    DomainSpec("nopolicy.test"),
)


def sts_policy(mode, mx, max_age=86400, version="STSv1"):
    """The text of an MTA-STS policy file (RFC 8461 section 3.2), CRLF line ends."""
    lines = [f"version: {version}", f"mode: {mode}"] + [f"mx: {m}" for m in mx] + \
        [f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


def txt(text):
    """|text| as TXT record data (one quoted string)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------
# Zones and the authoritative server
# --------------------------------------------------------------------------------------

class Zone:
    """One zone's records, without SOA, apex NS, delegations and DNSSEC records (the world
    adds those). Owners: "@" the apex, "name" relative, "name." absolute. Changes are
    served after world.publish()."""

    def __init__(self, name, signed=False, bogus=None, bogus_types=None):
        self.name = name.rstrip(".").lower()
        self.signed = signed
        self.bogus = bogus
        self.bogus_types = tuple(bogus_types) if bogus_types else None
        self.records = []          # (owner fqdn without dot, type, rdata, ttl or None)
        self.serial = 0
        self.published = None      # what was last published (change detection)

    def fqdn(self, owner):
        if owner in ("@", ""):
            return self.name
        if owner.endswith("."):
            return owner.rstrip(".").lower()
        return f"{owner}.{self.name}".lower()

    def add(self, owner, rtype, rdata, ttl=None):
        self.records.append((self.fqdn(owner), rtype.upper(), rdata, ttl))
        return self

    def set(self, owner, rtype, *rdatas, ttl=None):
        """Replaces the RRset owner/rtype by |rdatas| (none: removes it)."""
        self.remove(owner, rtype)
        for r in rdatas:
            self.add(owner, rtype, r, ttl)
        return self

    def remove(self, owner, rtype=None):
        name = self.fqdn(owner)
        self.records = [r for r in self.records
                        if not (r[0] == name and (rtype is None or r[1] == rtype.upper()))]
        return self

    def get(self, owner, rtype):
        name = self.fqdn(owner)
        return [r[2] for r in self.records if r[0] == name and r[1] == rtype.upper()]

    def __repr__(self):
        return f"Zone({self.name}, signed={self.signed}, bogus={self.bogus}, " \
               f"{len(self.records)} records, serial {self.serial})"


class Lookup:
    """One unbound-host answer: status "secure" | "insecure" | "bogus" (None when
    unbound-host printed none), records (the data strings), nxdomain, text (all output)."""

    LINE_RE = re.compile(r"^(\S+) (?:has (?:address|IPv6 address|\S+ record)|"
                         r"mail is handled by) (.*) \((secure|insecure|BOGUS.*)\)$")

    def __init__(self, name, rtype, proc):
        self.name = name
        self.rtype = rtype
        self.returncode = proc.returncode
        self.text = (proc.stdout + proc.stderr).decode(errors="replace")
        self.records = []
        self.status = None
        self.nxdomain = "NXDOMAIN" in self.text
        for line in self.text.splitlines():
            m = self.LINE_RE.match(line)
            if m:
                self.records.append(m.group(2))
            if line.endswith("(secure)"):
                self.status = self.status or "secure"
            elif line.endswith("(insecure)"):
                self.status = self.status or "insecure"
            elif "(BOGUS" in line:
                self.status = "bogus"

    def __repr__(self):
        return f"Lookup({self.rtype} {self.name}: {self.status}, {self.records}, " \
               f"nxdomain={self.nxdomain})"


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGTERM when the thread that started it ends, so that a
    test run killed before its teardown leaves no nsd behind (ip netns exec keeps the pid)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _dns_name(msg, pos):
    """(name, position after it) of the (possibly compressed) name at |pos| of |msg|."""
    labels, end = [], None
    for _ in range(128):
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            end = end or pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            continue
        if n == 0:
            return ".".join(labels), end or pos + 1
        labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    raise ValueError("name compression loop")


def soa_serial(sock, server, zone, timeout=0.2):
    """One UDP query for |zone|'s SOA to |server|:53 over |sock|: the serial in the answer,
    or None (no answer within |timeout|, refused, not authoritative)."""
    qid = secrets.randbits(16)
    qname = b"".join(bytes([len(x)]) + x.encode() for x in zone.strip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 6, 1)
    sock.settimeout(timeout)
    try:
        sock.connect((server, 53))
        sock.send(query)
        msg = sock.recv(4096)
    except OSError:             # timeout, ICMP port unreachable (nsd not up yet)
        return None
    try:
        rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
        if rid != qid or flags & 0x000F or an == 0:
            return None
        pos = 12
        for _ in range(qd):
            pos = _dns_name(msg, pos)[1] + 4
        for _ in range(an):
            pos = _dns_name(msg, pos)[1]
            rtype, _, _, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
            pos += 10
            if rtype == 6:
                p = _dns_name(msg, pos)[1]
                p = _dns_name(msg, p)[1]
                return struct.unpack("!I", msg[p:p + 4])[0]
            pos += rdlen
    except (struct.error, IndexError, ValueError):
        return None
    return None


class Nsd:
    """nsd in the server namespace, controlled through a unix socket (nsd-control)."""

    def __init__(self, topo, directory, addrs):
        self.topo = topo
        self.dir = directory
        self.addrs = addrs
        self.conf = os.path.join(directory, "nsd.conf")
        self.log = os.path.join(directory, "nsd.log")
        self.proc = None

    def write_conf(self, zones):
        d = self.dir
        lines = ["server:"]
        lines += [f"    ip-address: {a}" for a in self.addrs]
        lines += ["    port: 53", '    username: ""', '    chroot: ""', f'    zonesdir: "{d}"',
                  '    database: ""', f'    pidfile: "{d}/nsd.pid"',
                  f'    xfrdfile: "{d}/xfrd.state"', f'    xfrdir: "{d}"',
                  f'    zonelistfile: "{d}/zone.list"', f'    logfile: "{self.log}"',
                  "    verbosity: 1", "    server-count: 1", "    tcp-count: 64",
                  "    hide-version: yes", "    zonefiles-write: 0",
                  "remote-control:", "    control-enable: yes",
                  f'    control-interface: "{d}/nsd.sock"']
        for z in zones:
            lines += ["zone:", f'    name: "{z.name}."', f'    zonefile: "{d}/{z.name}.zone"']
        with open(self.conf + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.conf + ".tmp", self.conf)

    def start(self):
        self._out = open(os.path.join(self.dir, "nsd.stderr"), "wb")
        self.proc = self.topo.popen("server", ["nsd", "-d", "-c", self.conf],
                                    stdin=subprocess.DEVNULL, stdout=self._out,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def control(self, *args):
        return _run(["nsd-control", "-c", self.conf, *args], timeout=10)

    def serial(self, zone):
        """The SOA serial nsd serves for |zone| now (None: no answer yet)."""
        with self.topo.entered("server"):
            sock = socket.socket(netns.family_of(self.addrs[0]), socket.SOCK_DGRAM)
        with sock:
            return soa_serial(sock, self.addrs[0], zone)

    def wait_serials(self, zones, timeout=10.0):
        pending = {z.name: z.serial for z in zones}

        def done():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"nsd exited ({self.proc.returncode}):\n{self.logs()}")
            for name, serial in list(pending.items()):
                if self.serial(name) == serial:
                    del pending[name]
            return not pending
        try:
            harness.wait_for(done, timeout, interval=0.02, what="nsd serving the new serials")
        except AssertionError as e:
            raise AssertionError(f"{e}: still old: {pending}\n{self.logs()}") from None

    def logs(self):
        out = []
        for path in (self.log, os.path.join(self.dir, "nsd.stderr")):
            try:
                with open(path, errors="replace") as f:
                    out.append(f.read()[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_out", None):
            self._out.close()
            self._out = None


# --------------------------------------------------------------------------------------
# The MTA-STS / TLS-RPT HTTPS server
# --------------------------------------------------------------------------------------

class StsSite:
    """What https://mta-sts.<domain>/ does; change any attribute at any time (each request
    reads them when it arrives).

      policy        text served at /.well-known/mta-sts.txt (None: 404)
      status        HTTP status of that answer (200)
      content_type  "text/plain"
      redirect      a URL: answer 301 with this Location instead
      delay         seconds before the response (slow server)
      hang          None | "tls" (never complete the handshake) | "headers" (read the
                    request, never answer) | "body" (headers, then nothing): until stop,
                    at most HANG_LIMIT seconds
      trickle       seconds between 64-byte pieces of the body (slow body)
      pad_to        pad the body with "x-padding: aaa..." lines to this many bytes
      chunked       Transfer-Encoding: chunked (100-byte chunks)
      raw           bytes sent instead of any HTTP response
      cert          "ok" (test web CA, mta-sts.<domain>) | "wrong-name" | "untrusted" |
                    "self": the certificate chosen by SNI
    """

    def __init__(self, domain, policy=None):
        self.domain = domain
        self.reset(policy)

    def reset(self, policy=None):
        """Back to a plain site serving |policy|."""
        self.policy = policy
        self.status = 200
        self.content_type = "text/plain"
        self.redirect = None
        self.delay = 0.0
        self.hang = None
        self.trickle = None
        self.pad_to = None
        self.chunked = False
        self.raw = None
        self.cert = "ok"

    @property
    def host(self):
        return f"mta-sts.{self.domain}"

    def body(self):
        data = (self.policy or "").encode()
        if self.pad_to and len(data) < self.pad_to:
            pad = bytearray(data)
            while len(pad) < self.pad_to:
                pad += b"x-padding: " + b"a" * 64 + b"\r\n"
            data = bytes(pad)
        return data


@dataclasses.dataclass
class HttpsRequest:
    time: float            # time.time() when the request line was read
    method: str
    path: str
    host: str              # the Host header (without port), lower case
    sni: str               # the TLS server name (None: no SNI)
    peer: tuple
    headers: dict
    body: bytes = b""

    @property
    def domain(self):
        h = self.host or self.sni or ""
        return h[len("mta-sts."):] if h.startswith("mta-sts.") else h


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, family, owner):
        self.address_family = family
        self.owner = owner
        super().__init__(addr, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind asks for the address's name (getfqdn): a resolver timeout
        # in a namespace. The name is not used.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        # The TLS handshake happens here, in the connection's own thread, bounded.
        tls = self.owner._handshake(request)
        if tls is not None:
            try:
                self.RequestHandlerClass(tls, client_address, self)
            finally:
                with contextlib.suppress(OSError):
                    tls.close()

    def handle_error(self, request, client_address):
        pass   # a client that goes away is no error of the world's


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "policy-world"
    sys_version = ""

    def log_message(self, format, *args):
        pass

    def _record(self, body=b""):
        owner = self.server.owner
        host = self.headers.get("Host") or ""
        host = host.split("]")[0] + "]" if host.startswith("[") else host.split(":")[0]
        req = HttpsRequest(time.time(), self.command, self.path, host.lower(),
                           getattr(self.request, "pw_sni", None), self.client_address[:2],
                           dict(self.headers.items()), body)
        with owner.lock:
            owner.requests.append(req)
        return req

    def _simple(self, status, text=b"", ctype="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(text)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(text)
        self.close_connection = True

    def do_GET(self):
        owner = self.server.owner
        req = self._record()
        site = owner.sites.get(req.domain)
        self.close_connection = True
        if site is None or self.path.split("?")[0] != STS_PATH:
            return self._simple(404, b"not found\n")
        if site.delay:
            owner.stopping.wait(site.delay)
        if site.hang == "headers":
            owner.stopping.wait(HANG_LIMIT)
            return
        if site.raw is not None:
            self.wfile.write(site.raw)
            return
        if site.redirect:
            self.send_response(301)
            self.send_header("Location", site.redirect)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        if site.policy is None:
            return self._simple(404, b"no policy\n")
        body = site.body()
        self.send_response(site.status)
        if site.content_type is not None:
            self.send_header("Content-Type", site.content_type)
        if site.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        if site.hang == "body":
            owner.stopping.wait(HANG_LIMIT)
            return
        if site.chunked:
            pieces = [body[i:i + 100] for i in range(0, len(body), 100)]
            out = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
        else:
            out = [body]
        if site.trickle:
            data = b"".join(out)
            for i in range(0, len(data), 64):
                if owner.stopping.wait(site.trickle):
                    return
                self.wfile.write(data[i:i + 64])
                self.wfile.flush()
        else:
            self.wfile.write(b"".join(out))

    def do_POST(self):
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(n, 16 << 20))
        req = self._record(body)
        owner = self.server.owner
        with owner.lock:
            owner.reports.append(req)
        self._simple(201 if req.host == REPORTS_HOST else 404, b"")


class HttpsServer:
    """HTTPS on port 443 of |addrs| (make it inside topo.entered("server")): the MTA-STS
    policy of every site (sites: domain -> StsSite, chosen by the Host header), and TLS-RPT
    reports POSTed to reports.test (recorded in reports). requests: every request, in
    order (HttpsRequest: time, method, path, host, sni, peer, headers, body)."""

    def __init__(self, material, addrs, port=443):
        self.material = material
        self.port = port
        self.sites = {}
        self.requests = []
        self.reports = []
        self.handshakes = []     # (time, sni, peer, error or None)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._contexts = {}
        self._threads = []
        self._servers = [_HttpServer((a, port), netns.family_of(a), self) for a in addrs]
        self._default = self._context(material.leaf("https-no-sni", ["no-sni.test"],
                                                    material.ca))

    def site(self, domain, **attrs):
        """The StsSite of |domain| (made on first use), with |attrs| set."""
        with self.lock:
            site = self.sites.get(domain)
            if site is None:
                site = self.sites[domain] = StsSite(domain)
        for k, v in attrs.items():
            if not hasattr(site, k):
                raise AttributeError(f"StsSite has no {k!r}")
            setattr(site, k, v)
        return site

    def requests_for(self, domain, path=STS_PATH):
        with self.lock:
            return [r for r in self.requests if r.domain == domain
                    and (path is None or r.path == path)]

    def wait_requests(self, domain, n=1, timeout=10.0):
        return harness.wait_for(lambda: len(self.requests_for(domain)) >= n and
                                self.requests_for(domain), timeout,
                                what=f"{n} policy request(s) for {domain}")

    def start(self):
        for s in self._servers:
            t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self.stopping.set()
        for s in self._servers:
            if self._threads:          # shutdown() waits for serve_forever() to return
                s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(5)

    def _context(self, pair):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*pair)
        ctx.sni_callback = self._sni
        return ctx

    def _context_for(self, name, kind):
        key = (name, kind)
        with self.lock:
            ctx = self._contexts.get(key)
        if ctx is None:
            m = self.material
            pair = {"ok": lambda: m.leaf(f"https-{name}", [name], m.ca),
                    "wrong-name": lambda: m.leaf("https-wrong-name", ["wrong-name.test"],
                                                 m.ca),
                    "untrusted": lambda: m.leaf(f"https-{name}-untrusted", [name],
                                                m.other_ca),
                    "self": lambda: m.leaf(f"https-{name}-self", [name])}[kind]()
            ctx = self._context(pair)
            with self.lock:
                self._contexts[key] = ctx
        return ctx

    def _sni(self, sslsock, name, ctx):
        try:
            sslsock.pw_sni = name
            if name is None:
                return None
            name = name.lower()
            if name == REPORTS_HOST:
                sslsock.context = self._context_for(name, "ok")
                return None
            site = self.sites.get(name[len("mta-sts."):]) if name.startswith("mta-sts.") \
                else None
            if site is None:
                return None
            if site.hang == "tls":
                self.stopping.wait(HANG_LIMIT)
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            sslsock.context = self._context_for(name, site.cert)
        except Exception:  # noqa: BLE001 - a failed callback must not kill the thread
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def _handshake(self, sock):
        sock.settimeout(HANG_LIMIT + 5)
        try:
            peer = sock.getpeername()[:2]
        except OSError:
            peer = None
        tls = self._default.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.handshakes.append((time.time(), getattr(tls, "pw_sni", None), peer,
                                        str(e)))
            with contextlib.suppress(OSError):
                tls.close()
            return None
        with self.lock:
            self.handshakes.append((time.time(), getattr(tls, "pw_sni", None), peer, None))
        tls.settimeout(30)
        return tls


# --------------------------------------------------------------------------------------
# The MX servers
# --------------------------------------------------------------------------------------

PROTECTED_VERBS = ("RCPT", "DATA", "BDAT")


class PolicyMx(fake_tls_upstream.TlsFakeUpstream):
    """A domain's MX: fake_tls_upstream.TlsFakeUpstream on port 25 of addr4 and addr6
    (make it inside topo.entered("server")). .mode, .cert/.key can change at run time
    (use_cert). Records every connection (conns(): commands in and outside TLS, TLS
    version, peer) and message (messages(): .tls_version None means cleartext)."""

    def __init__(self, material, name, domain, spec, addr4, addr6, port=25):
        self.material = material
        self.name = name
        self.domain = domain
        self.spec = spec
        self.addr4, self.addr6 = addr4, addr6
        self.cert_kind = spec.cert
        cert, key = material.mx_cert(name, spec.cert)
        super().__init__(cert, key, mode=spec.mode, host=addr4,
                         greeting=f"{name} ESMTP policy-world",
                         other_ca=material.other_ca[0])
        for ls in self.listeners:
            ls.close()
        self.listeners = []
        for host in (addr4, addr6):
            ls = socket.socket(netns.family_of(host), socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((host, port))
            self.listeners.append(ls)
        self.port = port

    def use_cert(self, kind):
        """Presents a certificate of Material.mx_cert |kind| from the next handshake on."""
        self.cert, self.key = self.material.mx_cert(self.name, kind)
        self.cert_kind = kind
        return self

    def transports(self):
        """[(connection index, "TLSv1.3" | ... | "cleartext", verbs)] in order."""
        return [(c.index, c.tls_version or "cleartext", c.verbs()) for c in self.conns()]

    def cleartext(self, verbs=PROTECTED_VERBS):
        """[(connection, command line)] for each command with one of |verbs| that arrived
        outside TLS."""
        out = []
        for c in self.conns():
            for line in c.cleartext_commands:
                if line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode("latin-1") in verbs:
                    out.append((c, line))
        return out

    def assert_nothing_in_clear(self, verbs=PROTECTED_VERBS):
        """Fails when a command with one of |verbs| (default RCPT, DATA, BDAT; add "MAIL"
        to include the envelope sender) or a message arrived outside TLS."""
        bad = self.cleartext(verbs)
        clear = [m for m in self.messages() if not m.tls]
        assert not bad and not clear, (
            f"{self.name} received in cleartext: {[(c.index, l) for c, l in bad]} "
            f"{clear}\nconnections:\n{self.describe()}")

    def __repr__(self):
        return f"PolicyMx({self.name} {self.addr4}/{self.addr6}, cert={self.cert_kind}, " \
               f"mode={self.mode})"


# --------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Domain:
    name: str
    spec: DomainSpec
    zone: Zone
    mxs: list
    site: StsSite = None

    @property
    def mx(self):
        return self.mxs[0]


class PolicyWorld:
    """See the module docstring. |topo|: a netns.Topology (None: the world makes and
    deletes its own). |workdir|: where zones and configs go (None: a temporary directory,
    deleted at stop). |material|: a Material shared by worlds (None: in workdir).
    |domains|: DomainSpecs (default STANDARD_DOMAINS). |ttl|: every record's TTL."""

    def __init__(self, topo=None, workdir=None, domains=STANDARD_DOMAINS, material=None,
                 ttl=2):
        self.topo = topo
        self._own_topo = topo is None
        self._own_workdir = workdir is None
        self.workdir = workdir
        self.material = material
        self.ttl = ttl
        self.specs = copy.deepcopy(list(domains))   # set_sts() changes them
        self.zones = {}
        self.domains = {}
        self.https = None
        self.nsd = None
        self._addrs = []        # (addr, prefix) added to the server namespace
        self._next_mx = 0
        self._conns = []
        self._started = False
        self.timings = {}

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        t0 = time.monotonic()
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="policy-world-")
        os.makedirs(self.workdir, exist_ok=True)
        self.zonedir = os.path.join(self.workdir, "zones")
        os.makedirs(self.zonedir, exist_ok=True)
        if self.material is None:
            self.material = Material(os.path.join(self.workdir, "material"))
        if self.topo is None:
            self.topo = netns.Topology(prefix="stp")
            self.topo.__enter__()
        n_mx = sum(len(spec.mx) for spec in self.specs)
        self._add_addrs([(DNS4, DNS6), (HTTPS4, HTTPS6)] +
                        [self._mx_addrs(self._next_mx + i) for i in range(n_mx)])
        root = self.zones[ROOT] = Zone(ROOT, signed=True)
        root.add("ns", "A", DNS4).add("ns", "AAAA", DNS6)
        root.add(REPORTS_HOST + ".", "A", HTTPS4).add(REPORTS_HOST + ".", "AAAA", HTTPS6)
        with self.topo.entered("server"):
            self.https = HttpsServer(self.material, [HTTPS4, HTTPS6])
        for spec in self.specs:
            self._add_domain(spec)
        t1 = time.monotonic()
        self._write_zones()
        self.nsd = Nsd(self.topo, self.workdir, [DNS4, DNS6])
        self.nsd.write_conf(self.zones.values())
        self.nsd.start()
        self.nsd.wait_serials(self.zones.values())
        self._write_trust_anchor()
        self.unbound_config = self.write_unbound_config(
            os.path.join(self.workdir, "unbound.conf"))
        self.https.start()
        for d in self.domains.values():
            for mx in d.mxs:
                mx.start()
        self._started = True
        self.timings["start"] = time.monotonic() - t0
        self.timings["prepare"] = t1 - t0
        return self

    def stop(self):
        """Stops and deletes everything the world started (safe to call twice)."""
        errors = []
        for c in self._conns:
            with contextlib.suppress(Exception):
                c.close()
        self._conns = []
        mxs = [mx for d in self.domains.values() for mx in d.mxs]
        for mx in mxs:
            mx._stop.set()          # all at once: each stop() waits for its threads
        for mx in mxs:
            with contextlib.suppress(Exception):
                mx.stop()
        if self.https is not None:
            with contextlib.suppress(Exception):
                self.https.stop()
            self.https = None
        if self.nsd is not None:
            self.nsd.stop()
            self.nsd = None
        if self.topo is not None and self._own_topo:
            self.topo.teardown()
            self.topo = None
        elif self.topo is not None:
            if self._addrs and self.topo.names["server"] in netns.existing_namespaces():
                cmds = "".join(f"addr del {a}/{n} dev {netns.SERVER_IF}\n"
                               for a, n in self._addrs)
                p = _run(["ip", "-n", self.topo.names["server"], "-force", "-batch", "-"],
                         input=cmds.encode(), check=False)
                if p.returncode != 0:
                    errors.append(p.stderr.decode(errors="replace"))
        self._addrs = []
        if self._own_workdir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False
        if errors:
            raise RuntimeError(f"policy world teardown: {errors}")

    def _add_addrs(self, pairs):
        """Adds IPv4/IPv6 address pairs to the server's veth, in one `ip -batch`."""
        cmds = []
        for a4, a6 in pairs:
            cmds.append(f"addr add {a4}/24 dev {netns.SERVER_IF}")
            cmds.append(f"addr add {a6}/64 dev {netns.SERVER_IF} nodad")
        _run(["ip", "-n", self.topo.names["server"], "-batch", "-"],
             input="\n".join(cmds).encode() + b"\n")
        for a4, a6 in pairs:
            self._addrs += [(a4, 24), (a6, 64)]

    def _mx_addrs(self, n):
        return f"198.51.100.{MX_FIRST + n}", f"2001:db8:2::{MX_FIRST + n}"

    # --- domains ----------------------------------------------------------------------

    def _add_domain(self, spec):
        name = spec.name.rstrip(".").lower()
        if not name.endswith("." + ROOT) or name in self.domains:
            raise ValueError(f"domain {name!r}: must be new and under {ROOT}.")
        zone = self.zones[name] = Zone(name, spec.signed, spec.bogus, spec.bogus_types)
        mxs = []
        for ms in spec.mx:
            host = zone.fqdn(ms.host)
            a4, a6 = self._mx_addrs(self._next_mx)
            self._next_mx += 1
            if (a4, 24) not in self._addrs:
                self._add_addrs([(a4, a6)])
            zone.add("@", "MX", f"{ms.preference} {host}.")
            owner_zone = self._zone_for(host)
            owner_zone.add(host + ".", "A", a4).add(host + ".", "AAAA", a6)
            for triple in ms.tlsa:
                owner_zone.add(f"_25._tcp.{host}.", "TLSA",
                               self._tlsa_for(host, ms.cert, triple, ms.tlsa_from))
            with self.topo.entered("server"):
                mxs.append(PolicyMx(self.material, host, name, ms, a4, a6))
        d = self.domains[name] = Domain(name, spec, zone, mxs)
        if spec.sts is not None:
            patterns = spec.sts.mx or [m.name for m in mxs]
            d.site = self.https.site(name, policy=sts_policy(spec.sts.mode, patterns,
                                                             spec.sts.max_age))
            zone.set("_mta-sts", "TXT", txt(f"v=STSv1; id={spec.sts.id};"))
            zone.add("mta-sts", "A", HTTPS4).add("mta-sts", "AAAA", HTTPS6)
        if spec.tlsrpt:
            zone.set("_smtp._tls", "TXT", txt(f"v=TLSRPTv1; rua={spec.tlsrpt}"))
        for owner, rtype, rdata in spec.records:
            zone.add(owner, rtype, rdata)
        return d

    def add_domain(self, spec, publish=True):
        """Adds a domain (zone, MXs, policy) to a running world; with |publish| it is served
        when this returns."""
        d = self._add_domain(spec)
        if self._started:
            for mx in d.mxs:
                mx.start()
            if publish:
                self.publish()
        return d

    def _tlsa_for(self, host, kind, triple, source):
        usage = int(triple.split()[0])
        if source == "other":
            cert = self.material.unrelated(host)
        elif usage in (0, 2):
            cert = self.material.issuer_of(host, kind)
        else:
            cert = self.material.mx_cert(host, kind)[0]
        return tlsa_rdata(cert, triple)

    def _zone_for(self, name):
        best = None
        for z in self.zones.values():
            if name == z.name or name.endswith("." + z.name):
                if best is None or len(z.name) > len(best.name):
                    best = z
        if best is None:
            raise ValueError(f"no zone for {name}")
        return best

    def domain(self, name):
        return self.domains[name]

    def zone(self, name):
        return self.zones[name]

    def mx(self, domain, index=0):
        return self.domains[domain].mxs[index]

    def site(self, domain):
        """The StsSite of |domain| (made on first use)."""
        return self.https.site(domain)

    def mx_addr(self, domain, family=4, index=0):
        mx = self.mx(domain, index)
        return mx.addr4 if family == 4 else mx.addr6

    # --- changes ----------------------------------------------------------------------

    def set_tlsa(self, domain, *rdatas, index=0, publish=True):
        """Replaces the TLSA RRset of |domain|'s MX |index| by |rdatas| (none: removes it)."""
        host = self.mx(domain, index).name
        self._zone_for(host).set(f"_25._tcp.{host}.", "TLSA", *rdatas)
        if publish:
            self.publish()

    def set_sts(self, domain, mode=None, mx=None, max_age=None, id=None, publish=True):
        """Changes |domain|'s MTA-STS policy text (the given fields) and, with |id|, the
        id in its _mta-sts TXT record (RFC 8461: fetchers notice a change by the id)."""
        d = self.domains[domain]
        spec = d.spec.sts = dataclasses.replace(
            d.spec.sts or StsSpec(), **{k: v for k, v in (("mode", mode), ("mx", mx),
                                                         ("max_age", max_age), ("id", id))
                                        if v is not None})
        if d.site is None:
            d.site = self.https.site(domain)
            d.zone.set("mta-sts", "A", HTTPS4).set("mta-sts", "AAAA", HTTPS6)
        d.site.policy = sts_policy(spec.mode, spec.mx or [m.name for m in d.mxs],
                                   spec.max_age)
        d.zone.set("_mta-sts", "TXT", txt(f"v=STSv1; id={spec.id};"))
        if publish:
            self.publish()

    def _render(self, zone):
        t = self.ttl
        out = [f"$ORIGIN {zone.name}.", f"$TTL {t}",
               f"{zone.name}. {t} IN SOA ns.{ROOT}. hostmaster.{ROOT}. SERIAL 3600 600 86400 {t}",
               f"{zone.name}. {t} IN NS ns.{ROOT}."]
        for owner, rtype, rdata, ttl in zone.records:
            out.append(f"{owner}. {ttl or t} IN {rtype} {rdata}")
        for child in self._children(zone):
            out.append(f"{child.name}. {t} IN NS ns.{ROOT}.")
            if child.signed:
                which = "decoy" if child.bogus == "ds-mismatch" else "ksk"
                out.append(f"{child.name}. {t} IN DS {self.material.ds_rdata(child.name, which)}")
        return "\n".join(out) + "\n"

    def _children(self, zone):
        kids = [z for z in self.zones.values() if z.name.endswith("." + zone.name)]
        return [k for k in kids if self._parent(k) is zone]

    def _parent(self, zone):
        best = None
        for z in self.zones.values():
            if zone.name.endswith("." + z.name) and (best is None or len(z.name) > len(best.name)):
                best = z
        return best

    def _write_zones(self):
        """Writes (and signs) every zone whose content changed; returns those zones."""
        changed = []
        for zone in self.zones.values():
            text = self._render(zone)
            state = (text, zone.signed, zone.bogus, zone.bogus_types)
            if state == zone.published:
                continue
            zone.serial += 1
            src = os.path.join(self.zonedir, f"{zone.name}.zone.in")
            dst = os.path.join(self.workdir, f"{zone.name}.zone")
            with open(src, "w") as f:
                f.write(text.replace("SERIAL", str(zone.serial)))
            if zone.signed:
                self._sign(zone, src, dst + ".tmp")
            else:
                shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
            zone.published = state
            changed.append(zone)
        return changed

    def _sign(self, zone, src, dst):
        keys = self.material.zone_keys(zone.name)
        now = int(time.time())
        if zone.bogus == "expired":
            inception, expiration = now - 10 * 86400, now - 86400
        else:
            inception, expiration = now - 86400, now + 3 * 86400
        _run(["ldns-signzone", "-i", str(inception), "-e", str(expiration), "-o",
              f"{zone.name}.", "-f", dst, src, keys["ksk"], keys["zsk"]])
        if zone.bogus == "bad-sig":
            with open(dst) as f:
                lines = f.read().splitlines()
            for i, line in enumerate(lines):
                fields = line.split()
                if len(fields) > 5 and fields[3] == "RRSIG" and (
                        zone.bogus_types is None or fields[4] in zone.bogus_types):
                    head, sig = line.rsplit(None, 1)
                    raw = bytearray(base64.b64decode(sig))
                    raw[len(raw) // 2] ^= 0x55
                    lines[i] = f"{head} {base64.b64encode(bytes(raw)).decode()}"
            with open(dst, "w") as f:
                f.write("\n".join(lines) + "\n")

    def publish(self, timeout=10.0):
        """Re-signs the zones changed since the last publish, makes nsd load them (new
        zones: nsd-control reconfig) and returns when nsd serves their new serials.
        Returns the names of the zones that changed. A resolver that cached the old data
        sees the change within world.ttl seconds."""
        t0 = time.monotonic()
        changed = self._write_zones()
        if not changed or self.nsd is None:
            return [z.name for z in changed]
        self.nsd.write_conf(self.zones.values())
        self.nsd.control("reconfig")
        for z in changed:
            self.nsd.control("reload", f"{z.name}.")
        self.nsd.wait_serials(changed, timeout)
        self.timings["publish"] = time.monotonic() - t0
        return [z.name for z in changed]

    # --- the resolver's configuration ---------------------------------------------------

    def _write_trust_anchor(self):
        self.trust_anchor_file = os.path.join(self.workdir, f"{ROOT}.ds")
        with open(self.trust_anchor_file, "w") as f:
            f.write(f"{ROOT}. {self.ttl} IN DS {self.material.ds_rdata(ROOT)}\n")
        self.trust_anchor_dnskey_file = os.path.join(self.workdir, f"{ROOT}.dnskey")
        with open(self.trust_anchor_dnskey_file, "w") as f:
            f.write(self.material.dnskey_rr(ROOT) + "\n")

    def unbound_config_text(self, trust_anchor=True, nodefault=True, stub_addrs=(DNS4, DNS6),
                            extra=()):
        """unbound.conf text for a resolver inside the namespaces. |trust_anchor| False:
        no anchor (everything insecure); |nodefault| False: unbound's own answer for the
        reserved name test. (NXDOMAIN) stays; |extra|: more "server:" lines."""
        lines = ["# Made by tests/integration/policy_world.py for the test world's names.",
                 "server:",
                 '    module-config: "validator iterator"',
                 '    username: ""', '    chroot: ""',
                 "    qname-minimisation: no",
                 "    use-syslog: no"]
        if trust_anchor:
            lines.append(f'    trust-anchor-file: "{self.trust_anchor_file}"')
        if nodefault:
            lines.append(f'    local-zone: "{ROOT}." nodefault')
        lines += [f"    {x}" for x in extra]
        lines += ["stub-zone:", f'    name: "{ROOT}."']
        lines += [f"    stub-addr: {a}" for a in stub_addrs]
        return "\n".join(lines) + "\n"

    def write_unbound_config(self, path, **options):
        with open(path, "w") as f:
            f.write(self.unbound_config_text(**options))
        return path

    @property
    def ca_file(self):
        """The test web CA (PEM) that signs the MTA-STS servers' and "pkix" MXs'
        certificates: the proxy's CA file for MTA-STS (and upstream verify = ca)."""
        return self.material.ca_file

    def proxy_extra(self, forward_to=None, port=25, family=4, files=True, **sections):
        """Proxy configuration sections pointing at the world's files (PROXY_KEYS; not with
        |files| False), merged with |sections|; |forward_to| a domain: forward mode to its
        first MX (IPv4, or IPv6 with |family| 6)."""
        extra = {}
        for what, path in (("unbound_config", self.unbound_config), ("ca_file", self.ca_file)):
            section, key = PROXY_KEYS[what]
            if files:
                extra.setdefault(section, {})[key] = path
        if forward_to is not None:
            extra["proxy"] = {"mode": "forward",
                              "upstream": harness.fmt_addr(self.mx_addr(forward_to, family),
                                                           port)}
        return harness.merge_sections(extra, sections)

    # --- looking and connecting ------------------------------------------------------

    def lookup(self, name, rtype="A", role="gw", config=None, timeout=20):
        """unbound-host -C |config| (default: the proxy's file) -v -t |rtype| |name| run in
        namespace |role|: a Lookup (status secure/insecure/bogus, records)."""
        p = self.topo.run(role, "unbound-host", "-C", config or self.unbound_config, "-v",
                          "-t", rtype, name, check=False, timeout=timeout)
        return Lookup(name, rtype, p)

    def connect(self, domain, role="client", family=4, index=0, port=25, timeout=10.0):
        """A harness.SmtpConn from namespace |role| to |domain|'s MX address (port 25:
        intercepted in the gateway when the test set up a redirect); closed at stop."""
        c = netns.connect_from(self.topo, role, self.mx_addr(domain, family, index), port,
                               timeout=timeout)
        self._conns.append(c)
        return c

    def openssl_smtp(self, domain, role="gw", index=0, tlsa=None, verify_name=None,
                     ca_file=None, family=4, timeout=20):
        """An independent check of an MX's certificate: `openssl s_client -starttls smtp`
        from namespace |role| to |domain|'s MX, with DANE (|tlsa|: TLSA rdata strings,
        base domain the MX name) or WebPKI (|verify_name| against |ca_file|, default the
        test CA). Returns (verified, output)."""
        mx = self.mx(domain, index)
        addr = mx.addr4 if family == 4 else f"[{mx.addr6}]"
        argv = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{addr}:25",
                "-verify_return_error", "-servername", mx.name]
        if tlsa:
            argv += ["-dane_tlsa_domain", mx.name]
            for t in tlsa:
                argv += ["-dane_tlsa_rrdata", t]
        else:
            argv += ["-CAfile", ca_file or self.ca_file, "-verify_hostname",
                     verify_name or mx.name]
        p = self.topo.run(role, *argv, check=False, timeout=timeout, input=b"")
        out = (p.stdout + p.stderr).decode(errors="replace")
        return p.returncode == 0 and "Verify return code: 0 (ok)" in out, out

    def https_get(self, host, path=STS_PATH, role="gw", addr=HTTPS4, ca_file=None,
                  sni=True, timeout=10.0, method="GET", body=None, headers=None):
        """A plain HTTPS request from namespace |role| (verifying |host| against the test
        CA, or |ca_file|): (status, headers dict (lower-case names), body bytes; chunked
        decoded). Raises ssl.SSLError / OSError / TimeoutError like any client."""
        ctx = ssl.create_default_context(cafile=ca_file or self.ca_file)
        if not sni:
            ctx.check_hostname = False
        with self.topo.entered(role):
            raw = socket.create_connection((addr, 443), timeout=timeout)
        with ctx.wrap_socket(raw, server_hostname=host if sni else None) as s:
            s.settimeout(timeout)
            head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            if body is not None:
                head.append(f"Content-Length: {len(body)}")
            s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in
                (line.partition(":") for line in lines[1:])}
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            rest = _dechunk(rest)
        return status, hdrs, rest


def _dechunk(data):
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


# --------------------------------------------------------------------------------------
# pytest fixtures: `from policy_world import policy_world, policy_material  # noqa: F401`
# --------------------------------------------------------------------------------------

def skip_reason():
    if not netns.is_root():
        return "the policy world needs root (network namespaces, nsd on port 53)"
    missing = missing_tools()
    if missing:
        return f"missing programs (tests/install-deps): {', '.join(missing)}"
    return None


@pytest.fixture(scope="session")
def policy_material(tmp_path_factory):
    """Keys and certificates shared by every world of the session (made on first use)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return Material(str(tmp_path_factory.mktemp("policy-material")))


@pytest.fixture
def policy_world(topo, tmp_path, policy_material):
    """A started PolicyWorld (STANDARD_DOMAINS) in conftest's topo, stopped at teardown.
    Request it before gw_proxy so the proxy stops first."""
    with PolicyWorld(topo, str(tmp_path / "policy-world"), material=policy_material) as w:
        yield w
