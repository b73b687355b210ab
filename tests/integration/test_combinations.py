"""Features in combination: each pair of features that touch the same session must work
together, not only alone.

The pairwise suite (test_pairwise): seven dimensions of a session,

  listener  plain, PROXY v1 or PROXY v2 in front ([proxy] proxy_protocol)
  upstream  ip, name (a host name, resolved per connection) or ipv6
  mode      fwd (forward) or redir (transparent, a REDIRECT rule in network namespaces)
  front     [client_tls]: tls-used (offered, and the client does STARTTLS), tls-unused
            (offered, not used), strip, hidden (offered, but the client's address, the PROXY
            header's source when there is one, was learned by a failed handshake first)
  back      [upstream_tls] starttls: off, may-ok, may + a failure (may-454: refused by a
            reply; may-alert: the upstream requires a client certificate; may-eof: EOF
            after the 220; may-403: the EHLO inside TLS answered 403), require (TLS works)
  identity  [proxy] upstream_identity: noid, xclient, idv1 (proxy-v1), idv2 (proxy-v2)
  client    smtplib, swaks, pipelined (a raw client sending the envelope in one write and
            QUIT behind the final dot), bdat (a raw client sending two pipelined chunks)

are combined by a greedy all-pairs generator (fixed seed, below) so that every pair of
values of two dimensions is in at least one case: 28 cases instead of the 6720 possible
combinations. Combinations that cannot exist are excluded by allowed(): transparent mode
has no configured upstream, so there "ip"/"ipv6" are the family of the destination the
client connected to and "name" is impossible. The module checks at import that every
allowed pair is covered and no case breaks a constraint.

The upstream is fake_tls_upstream.TlsFakeUpstream (real SMTP, real TLS, CHUNKING, XCLIENT
and PROXY headers on demand); in transparent mode it listens on port 25 in the server
namespace of one topology shared by all the cases. Every case asserts the same invariants:
the message is delivered once and byte-identical; each leg's TLS is as configured (what
the client saw, what the upstream saw, the session line); every upstream connection
carried the configured identity of the client; the session line and the metrics (deltas
over the case's session) agree with each other and with the upstream's records.

Also here: a PROXY listener with an upstream given by host name (step 0 of the session
redesign), and learning across reloads. "XCLIENT with every fallback step" is
test_hostile.py::test_identity_on_every_fallback_connection.
"""

import contextlib
import itertools
import random
import re
import smtplib
import ssl

import pytest

import harness
import netns
from back_tls_support import (CLIENT_NAME, FROM, TO, assert_delivered_once,
                              assert_proxy_commands_sane, body, identity_ok, same_address)
from harness import SmtpConn

# --------------------------------------------------------------------------------------
# The pairwise design
# --------------------------------------------------------------------------------------

DIMENSIONS = (
    ("listener", ("plain", "ppv1", "ppv2")),
    ("upstream", ("ip", "name", "ipv6")),
    ("mode", ("fwd", "redir")),
    ("front", ("tls-used", "tls-unused", "strip", "hidden")),
    ("back", ("off", "may-ok", "may-454", "may-alert", "may-eof", "may-403", "require")),
    ("identity", ("noid", "xclient", "idv1", "idv2")),
    ("client", ("smtplib", "swaks", "pipelined", "bdat")),
)
NAMES = tuple(name for name, _ in DIMENSIONS)
SEED = 10


def allowed(case):
    """False when the (partial) case {dimension: value} cannot exist."""
    # Transparent mode relays to the destination the client chose: no name to resolve.
    return not (case.get("mode") == "redir" and case.get("upstream") == "name")


def pair(x, y):
    """The pair of two (dimension, value) items, in NAMES order."""
    return (x, y) if NAMES.index(x[0]) < NAMES.index(y[0]) else (y, x)


def pairs_of(case):
    """The pairs a complete case {dimension: value} covers."""
    return {pair((a, case[a]), (b, case[b])) for a, b in itertools.combinations(NAMES, 2)}


def all_pairs():
    values = dict(DIMENSIONS)
    return {((a, va), (b, vb)) for a, b in itertools.combinations(NAMES, 2)
            for va in values[a] for vb in values[b]}


def allowed_pairs():
    return {p for p in all_pairs() if allowed(dict(p))}


def pairwise(seed=SEED, tries=30):
    """Greedy all-pairs (AETG-style): while a pair is uncovered, build |tries| candidate
    cases, each starting from an uncovered pair and filling the other dimensions in random
    order with the allowed value that covers most uncovered pairs, and keep the candidate
    that covers most."""
    rng = random.Random(seed)
    values = dict(DIMENSIONS)
    uncovered = allowed_pairs()
    cases = []
    while uncovered:
        pool = sorted(uncovered)  # a set of strings iterates in a per-process order
        best, best_gain = None, -1
        for _ in range(tries):
            case = dict(rng.choice(pool))
            rest = [n for n in NAMES if n not in case]
            rng.shuffle(rest)
            for name in rest:
                options = [v for v in values[name] if allowed({**case, name: v})]
                rng.shuffle(options)
                case[name] = max(options, key=lambda v: sum(
                    pair((name, v), item) in uncovered for item in case.items()))
            case = {n: case[n] for n in NAMES}
            gain = len(pairs_of(case) & uncovered)
            if allowed(case) and gain > best_gain:
                best, best_gain = case, gain
        cases.append(best)
        uncovered -= pairs_of(best)
    return cases


CASES = pairwise()
assert all(allowed(c) for c in CASES), "a generated case breaks a constraint"
assert allowed_pairs() <= set().union(*map(pairs_of, CASES)), "an allowed pair is uncovered"


def case_id(case):
    return "-".join(case[n] for n in NAMES)


def test_design_covers_every_allowed_pair():
    assert all_pairs() - allowed_pairs() == {(("upstream", "name"), ("mode", "redir"))}
    assert all(allowed(c) for c in CASES)
    assert allowed_pairs() <= set().union(*map(pairs_of, CASES))
    # Each of the 7 x 4 value pairs of two dimensions (back and front, say) needs a case of
    # its own, so 28 is the fewest possible.
    assert 28 <= len(CASES) <= 40, len(CASES)
    assert len({case_id(c) for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------
# What each value means
# --------------------------------------------------------------------------------------

class Back:
    def __init__(self, starttls, mode, tls, reason=None, fallback=None, conns=1):
        self.starttls = starttls    # [upstream_tls] starttls
        self.mode = mode            # TlsFakeUpstream mode
        self.tls = tls              # leg 2's TLS version, None: cleartext
        self.reason = reason        # back_tls_reason (a regular expression) when cleartext
        self.fallback = fallback    # the back_tls_fallback_total reason counted, if any
        self.conns = conns          # upstream connections the session opens


BACK = {
    "off": Back("off", "tls-ok", None, "policy-off"),
    "may-ok": Back("may", "tls-ok", "TLSv1.3"),
    "may-454": Back("may", "refuse-454", None, "starttls-refused-454", "starttls-refused"),
    "may-alert": Back("may", "cert-required", None, "tls-alert:.+", "tls-alert", 2),
    "may-eof": Back("may", "eof-after-220", None, "eof-after-220", "eof", 2),
    "may-403": Back("may", "post-tls-ehlo-403", None, "post-tls-ehlo-403", "post-tls-ehlo", 2),
    "require": Back("require", "tls-ok", "TLSv1.3"),
}
FALLBACK_REASONS = ("starttls-refused", "starttls-bad-reply", "tls-alert", "tls-error", "eof",
                    "handshake-timeout", "post-tls-ehlo", "post-tls-eof", "certificate",
                    "other")

# front value: ([client_tls] starttls, the session line's starttls=, STARTTLS offered)
FRONT = {
    "tls-used": ("offer", "used", True),
    "tls-unused": ("offer", "offered", True),
    "strip": ("strip", "not-offered", False),
    "hidden": ("offer", "hidden", False),
}

IDENTITY = {"noid": "none", "xclient": "xclient", "idv1": "proxy-v1", "idv2": "proxy-v2"}
LISTENER = {"plain": "off", "ppv1": "v1", "ppv2": "v2"}

PROXY_PORT = netns.PROXY_PORT


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------------------
# Where a case runs: forward mode on loopback, or the shared topology
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def intercepting(module_topo):
    """The shared topology with the gateway's REDIRECT of port 25 to the proxy's port."""
    module_topo.redirect(PROXY_PORT)
    return module_topo


@pytest.fixture
def start_gw_proxy(request, proxy_bin, tmp_path):
    """start_gw_proxy(extra) -> (topology, a transparent proxy started in its gateway),
    stopped at teardown."""
    proxies = []

    def start(extra):
        topo = request.getfixturevalue("intercepting")
        proxies.append(netns.GwProxies(proxy_bin, str(tmp_path), topo))
        return topo, proxies[-1].start(extra)

    yield start
    for p in proxies:
        p.stop_all()


class Site:
    """Where the client connects from and to, and how to reach the proxy's metrics."""

    def __init__(self, proxy, host, port, source, upstream_texts, mport, topo=None):
        self.proxy = proxy
        self.host = host              # what the client connects to
        self.port = port
        self.source = source          # the client's own address (forward: bound by us)
        self.upstream_texts = upstream_texts  # what upstream= may say in the session line
        self.mport = mport
        self.topo = topo

    def in_client(self):
        """Sockets made inside this block belong to the client (its namespace)."""
        return self.topo.entered("client") if self.topo else contextlib.nullcontext()

    def bind_source(self):
        return None if self.topo else self.source

    def raw(self):
        with self.in_client():
            return SmtpConn(self.host, self.port, timeout=15, source=self.bind_source())

    def metrics(self):
        with self.topo.entered("gw") if self.topo else contextlib.nullcontext():
            return harness.scrape_metrics(self.mport)

    def swaks_prefix(self):
        return ["ip", "netns", "exec", self.topo.names["client"]] if self.topo else []


def case_config(case, mport):
    back = BACK[case["back"]]
    return {
        "proxy": {"proxy_protocol": LISTENER[case["listener"]],
                  "upstream_identity": IDENTITY[case["identity"]]},
        "client_tls": {"starttls": FRONT[case["front"]][0], "learn_failures": "on",
                       "learn_ttl": "1h"},
        "upstream_tls": {"starttls": back.starttls, "fallback": "on",
                         "fallback_steps": "cleartext", "remember_failures": "1h"},
        "timeouts": {"tls_handshake": "2s", "connect": "2s", "command": "10s"},
        "metrics": {"listen": f"127.0.0.1:{mport}"},
    }


def start_site(case, index, make_tls_fake, make_proxy, start_gw_proxy):
    """The upstream and the proxy for |case|: (Site, fake upstream)."""
    back = BACK[case["back"]]
    options = dict(xclient=case["identity"] == "xclient",
                   proxy_header=case["identity"] in ("idv1", "idv2"), chunking=True)
    if case["mode"] == "fwd":
        host = {"ip": "127.0.0.1", "name": "127.0.0.1", "ipv6": "::1"}[case["upstream"]]
        if host == "::1" and not harness.ipv6_loopback_available():
            pytest.skip("::1 is not available")
        up = make_tls_fake(back.mode, host=host, dual_stack=case["upstream"] == "name",
                           **options)
        if case["upstream"] == "name":
            upstream = f"localhost:{up.port}"
            texts = {f"127.0.0.1:{up.port}", f"[::1]:{up.port}"}
        else:
            upstream = up.addr
            texts = {up.addr}
        mport = harness.free_port()
        proxy = make_proxy(upstream, case_config(case, mport))
        site = Site(proxy, "127.0.0.1", proxy.port, f"127.0.0.{10 + index}", texts, mport)
        return site, up
    fam = 6 if case["upstream"] == "ipv6" else 4
    addrs = netns.ADDRS[fam]
    mport = 9300 + index
    extra = case_config(case, mport)
    extra["proxy"]["mode"] = "transparent"
    topo, proxy = start_gw_proxy(extra)
    with topo.entered("server"):
        up = make_tls_fake(back.mode, host=addrs["server"], port=25, **options)
    site = Site(proxy, addrs["server"], 25, addrs["client"],
                {harness.fmt_addr(addrs["server"], 25)}, mport, topo)
    return site, up


# --------------------------------------------------------------------------------------
# The clients: each does one whole session and says what it saw
# --------------------------------------------------------------------------------------

class Seen:
    def __init__(self, offered, tls, port):
        self.offered = offered  # STARTTLS in the first EHLO reply
        self.tls = tls          # the leg-1 TLS version it negotiated, None: cleartext
        self.port = port        # its local port (None: not known)


class HeaderFirstSMTP(smtplib.SMTP):
    """smtplib.SMTP sending a PROXY header first, as a load balancer in front would."""

    proxy_header = b""

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        if self.proxy_header:
            sock.sendall(self.proxy_header)
        return sock


def header_bytes(proxy_in):
    return harness.proxy_header(*proxy_in) if proxy_in else b""


def caps(reply):
    return [line.split(" ")[0].upper() for line in reply.lines[1:]]


def send_smtplib(site, proxy_in, use_tls, msg, tmp_path):
    source = site.bind_source()
    s = HeaderFirstSMTP(local_hostname=CLIENT_NAME, timeout=20,
                        source_address=(source, 0) if source else None)
    s.proxy_header = header_bytes(proxy_in)
    s._host = site.host  # starttls() passes it as server_hostname (connect() does not set it)
    try:
        with site.in_client():
            code, _ = s.connect(site.host, site.port)
        assert code == 220
        assert s.ehlo()[0] == 250
        offered = s.has_extn("starttls")
        tls = None
        if use_tls:
            assert s.starttls(context=client_context())[0] == 220
            tls = s.sock.version()
            assert s.ehlo()[0] == 250
            assert not s.has_extn("starttls")
        port = s.sock.getsockname()[1]
        assert s.sendmail(FROM, [TO], msg) == {}
        assert s.quit()[0] == 221
    finally:
        s.close()
    return Seen(offered, tls, port), msg


def swaks_proxy_args(version, src, dst, sport, dport):
    if version == "v1":
        family = "TCP6" if ":" in src else "TCP4"
    else:
        family = "AF_INET6" if ":" in src else "AF_INET"
    return ["--proxy-version", version[1], "--proxy-family", family, "--proxy-source", src,
            "--proxy-source-port", str(sport), "--proxy-dest", dst,
            "--proxy-dest-port", str(dport)]


def send_swaks(site, proxy_in, use_tls, msg, tmp_path):
    path = tmp_path / "message.eml"
    path.write_bytes(msg)
    extra = swaks_proxy_args(*proxy_in) if proxy_in else []
    if not site.topo:
        extra += ["--local-interface", site.source]
    if use_tls:
        extra.append("--tls")
    rc, out = harness.run_swaks(site.port, path, [TO], host=site.host, extra=extra,
                                mail_from=FROM, helo=CLIENT_NAME,
                                argv_prefix=site.swaks_prefix())
    assert rc == 0 and "<** " not in out, out[-3000:]
    codes = [int(c) for c in re.findall(r"^<[-~]  ([0-9]{3})[ -]", out, re.M)]
    assert codes and codes[0] == 220 and set(codes) <= {220, 221, 250, 354}, out
    offered = bool(re.search(r"^<-  250[ -]STARTTLS\s*$", out, re.M))
    m = re.search(r"^=== TLS started with cipher (TLSv[0-9.]+):", out, re.M)
    assert not re.search(r"^<~  250[ -]STARTTLS", out, re.M), out
    # swaks ends the data with CRLF "." CRLF after the file's own final CRLF.
    return Seen(offered, m.group(1) if m else None, None), msg + b"\r\n"


def raw_session(site, proxy_in, use_tls):
    """A raw client up to its (last) EHLO: (conn, Seen, the EHLO reply's capabilities)."""
    c = site.raw()
    c.send(header_bytes(proxy_in))
    assert c.greeting().code == 220
    r = c.ehlo(CLIENT_NAME)
    seen = Seen("STARTTLS" in caps(r), None, c.local_port)
    if use_tls:
        c.starttls(client_context())
        seen.tls = c.tls_version()
        r = c.ehlo(CLIENT_NAME)
        assert "STARTTLS" not in caps(r), r.raw
    return c, seen, caps(r)


def send_pipelined(site, proxy_in, use_tls, msg, tmp_path):
    """The envelope in one write, then the content with QUIT behind the final dot."""
    c, seen, offered_caps = raw_session(site, proxy_in, use_tls)
    try:
        assert "PIPELINING" in offered_caps, offered_caps
        c.send(f"MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n".encode())
        assert [r.code for r in c.replies(3)] == [250, 250, 354]
        c.send(msg.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
        assert [r.code for r in c.replies(2)] == [250, 221]
    finally:
        c.close()
    return seen, msg


def send_bdat(site, proxy_in, use_tls, msg, tmp_path):
    """Two BDAT chunks in one write; the first holds a CRLF.CRLF, which is content here."""
    c, seen, offered_caps = raw_session(site, proxy_in, use_tls)
    msg += b"\r\n.\r\nnot an end of data inside a chunk\r\n"
    first, second = msg[:len(msg) - 20], msg[len(msg) - 20:]
    try:
        assert "CHUNKING" in offered_caps, offered_caps
        c.send(f"MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\n".encode())
        assert [r.code for r in c.replies(2)] == [250, 250]
        c.send(b"BDAT %d\r\n%sBDAT %d LAST\r\n%s" % (len(first), first, len(second), second))
        assert [r.code for r in c.replies(2)] == [250, 250]
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    return seen, msg


CLIENTS = {"smtplib": send_smtplib, "swaks": send_swaks, "pipelined": send_pipelined,
           "bdat": send_bdat}


def addr_re(addr):
    """client=... in a log line: |addr| (IPv6 in brackets), with or without a port."""
    return re.compile(r"\[?" + re.escape(addr) + r"\]?(:\d+)?")


def teach_failure(site, proxy_in, client_addr):
    """A session from |client_addr| whose handshake fails (STARTTLS before EHLO, so leg 2
    is never negotiated, then garbage): the proxy learns the address."""
    c = site.raw()
    try:
        c.send(header_bytes(proxy_in))
        assert c.greeting().code == 220
        assert c.cmd("STARTTLS").startswith("220 2.0.0")
        c.send(b"this is not a ClientHello\r\n")
        c.wait_eof()
    finally:
        c.close()
    site.proxy.wait_event("front-tls-learned", client=addr_re(client_addr))
    site.proxy.wait_session_line(end="client-tls-failed")


# --------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------

P = "smtp_tls_proxy_"


def metrics_delta(site, before, timeout=10.0):
    """The counters' growth since |before|, once the case's session has been counted."""
    def grown():
        after = site.metrics()
        done = after.get(f'{P}sessions_total{{end="quit"}}', 0) > \
            before.get(f'{P}sessions_total{{end="quit"}}', 0)
        return after if done else None

    after = harness.wait_for(grown, timeout, interval=0.05, what="the session in the metrics")
    return {k: after[k] - before.get(k, 0) for k in after}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pairwise(case, make_tls_fake, make_proxy, start_gw_proxy, tmp_path):
    index = CASES.index(case)
    back = BACK[case["back"]]
    _, starttls_field, offered = FRONT[case["front"]]
    identity = IDENTITY[case["identity"]]
    site, up = start_site(case, index, make_tls_fake, make_proxy, start_gw_proxy)
    fam = 6 if case["upstream"] == "ipv6" else 4

    # Who the client is: its own address, or the one its load balancer announces.
    proxy_in = None
    client_addr = site.source
    if case["listener"] != "plain":
        client_addr = f"203.0.113.{10 + index}" if fam == 4 else f"2001:db8:ff::{10 + index:x}"
        proxy_in = (LISTENER[case["listener"]], client_addr, netns.ADDRS[fam]["server"],
                    40000 + index, 25)
    if case["front"] == "hidden":
        teach = proxy_in and proxy_in[:3] + (41000 + index, 25)
        teach_failure(site, teach, client_addr)
    up.wait_all_closed()
    conns_before = len(up.conns())
    before = site.metrics()

    msg = body(case_id(case))
    seen, content = CLIENTS[case["client"]](site, proxy_in, case["front"] == "tls-used", msg,
                                            tmp_path)

    # Leg 1, as the client saw it.
    assert seen.offered == offered, "STARTTLS offered" if seen.offered else "not offered"
    if case["front"] == "tls-used":
        assert seen.tls in ("TLSv1.2", "TLSv1.3"), seen.tls
    else:
        assert seen.tls is None, seen.tls

    # Leg 2 and the identity, as the upstream saw them.
    m = assert_delivered_once(up, content, back.tls, since_conn=conns_before)
    assert m.kind == ("BDAT" if case["client"] == "bdat" else "DATA"), m
    conns = up.conns()
    assert len(conns) - conns_before == back.conns, up.describe()
    for conn in conns:
        assert identity_ok(conn, identity, client_addr), (identity, client_addr,
                                                          up.describe())
    assert_proxy_commands_sane(up)
    if back.starttls == "off":
        assert not any(conn.starttls for conn in conns), up.describe()

    # The session line.
    line = site.proxy.wait_session_line(end="quit")
    host, _, port = line["client"].rpartition(":")
    assert same_address(host.strip("[]"), client_addr), line["_line"]
    if proxy_in:
        assert port == str(proxy_in[3]), line["_line"]
    elif seen.port is not None:
        assert port == str(seen.port), line["_line"]
    assert line["upstream"] in site.upstream_texts, (line["_line"], site.upstream_texts)
    assert line["messages"] == "1", line["_line"]
    assert line["starttls"] == starttls_field, line["_line"]
    if seen.tls:
        assert line["front_tls"] == seen.tls and line.get("front_cipher"), line["_line"]
    else:
        assert line.get("front_tls", "none") == "none", line["_line"]
    failed = site.proxy.events("back-tls-failed")
    if back.tls:
        assert line["back_tls"] == back.tls and line.get("back_cipher"), line["_line"]
        assert not failed, failed
    else:
        assert line["back_tls"] == "cleartext", line["_line"]
        assert re.fullmatch(back.reason, line.get("back_tls_reason", "")), line["_line"]
        if back.fallback:
            [event] = failed
            assert event["reason"] == line["back_tls_reason"], (event["_line"], line["_line"])
        else:
            assert not failed, failed

    # The metrics: this one session, counted as the line says.
    d = metrics_delta(site, before)
    expected = {
        "connections_total": 1,
        'sessions_total{end="quit"}': 1,
        "messages_total": 1,
        'front_starttls_total{result="offered"}': int(starttls_field in ("used", "offered")),
        'front_starttls_total{result="used"}': int(starttls_field == "used"),
        'front_starttls_total{result="hidden"}': int(starttls_field == "hidden"),
        'front_starttls_total{result="failed"}': 0,
        'back_tls_total{result="used"}': int(line["back_tls"] != "cleartext"),
        "back_tls_remembered_skips_total": 0,
        "back_tls_require_failures_total": 0,
    }
    for reason in FALLBACK_REASONS:
        expected[f'back_tls_fallback_total{{reason="{reason}"}}'] = int(reason == back.fallback)
    got = {name: d.get(P + name) for name in expected}
    assert got == expected, {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    ended = sum(v for k, v in d.items() if k.startswith(P + "sessions_total{"))
    assert ended == 1, d


# --------------------------------------------------------------------------------------
# Named combinations
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_with_host_name_upstream(aio_upstream, make_proxy, version):
    """The PROXY header's client reaches an upstream named by host name, and delivers
    (exactly config/examples/inbound-behind-load-balancer.ini). The name is resolved while
    the session has just left the PROXY header state; the answer must still be taken."""
    proxy = make_proxy(f"localhost:{aio_upstream.port}",
                       {"proxy": {"proxy_protocol": version},
                        "timeouts": {"connect": "5s"}})
    header = harness.proxy_header(version, "192.0.2.10", "198.51.100.25", 40001, 25)
    with SmtpConn("127.0.0.1", proxy.port) as c:
        c.send(header)
        assert c.greeting().code == 220
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: combined\r\n\r\nhello\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    msgs = aio_upstream.wait_messages(1)
    assert msgs[0].content == b"Subject: combined\r\n\r\nhello\r\n"
    line = proxy.wait_session_line(client="192.0.2.10:40001")
    assert line["end"] == "quit"


def deliver_from(connect, port, source, tag):
    """A whole cleartext session from |source|; returns its local port."""
    c = connect(port, source=source)
    assert c.greeting().code == 220
    c.ehlo(CLIENT_NAME)
    assert c.cmd(f"MAIL FROM:<{FROM}>").code == 250
    assert c.cmd(f"RCPT TO:<{TO}>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(body(tag).replace(b"\r\n.", b"\r\n..") + b".\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    c.close()
    return c.local_port


def offered_to(connect, port, source):
    """True when a new session from |source| is offered STARTTLS (then QUIT)."""
    c = connect(port, source=source)
    assert c.greeting().code == 220
    offered = "STARTTLS" in caps(c.ehlo(CLIENT_NAME))
    assert c.cmd("QUIT").code == 221
    c.close()
    return offered


def test_learning_survives_reloads(make_tls_fake, make_proxy, connect):
    """What the proxy learned stays learned across SIGHUP reloads (README, "Reloading": the
    memories keep their entries and take the new TTL): a client whose handshake failed is
    not offered STARTTLS after a reload of the same file, nor after one that changes
    learn_ttl and remember_failures, and a shorter learn_ttl applies to it; an upstream's
    remembered fallback step (tls12, for a TLS 1.3-intolerant upstream) is used by the
    first connection of every later session, before and after each reload."""
    up = make_tls_fake("tls13-intolerant")
    mport = harness.free_port()
    proxy = make_proxy(up.addr, {
        "client_tls": {"starttls": "offer", "learn_failures": "on", "learn_ttl": "1h"},
        "upstream_tls": {"starttls": "may", "fallback": "on",
                         "fallback_steps": "tls12, cleartext", "remember_failures": "1h"},
        "timeouts": {"tls_handshake": "2s", "connect": "2s", "command": "10s"},
        "metrics": {"listen": f"127.0.0.1:{mport}"},
    })

    # 127.0.0.2 fails its handshake (STARTTLS before EHLO: leg 2 is not negotiated).
    c = connect(proxy.port, source="127.0.0.2")
    assert c.greeting().code == 220
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.send(b"this is not a ClientHello\r\n")
    c.wait_eof()
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.2"))

    # 127.0.0.3's session finds the upstream's step: TLS 1.3 refused, TLS 1.2 works.
    before = len(up.conns())
    deliver_from(connect, proxy.port, "127.0.0.3", "finds-the-step")
    assert_delivered_once(up, body("finds-the-step"), "TLSv1.2", since_conn=before)
    assert [c.hello_max for c in up.conns()[before:]] == ["TLSv1.3", "TLSv1.2"], \
        up.describe()
    proxy.wait_event("back-tls-remembered", step="tls12")

    def still_remembered(tag):
        """Hidden from 127.0.0.2, offered to 127.0.0.4; the next session starts at tls12."""
        assert not offered_to(connect, proxy.port, "127.0.0.2")
        assert offered_to(connect, proxy.port, "127.0.0.4")
        before = len(up.conns())
        port = deliver_from(connect, proxy.port, "127.0.0.5", tag)
        assert_delivered_once(up, body(tag), "TLSv1.2", since_conn=before)
        assert [c.hello_max for c in up.conns()[before:]] == ["TLSv1.2"], up.describe()
        line = proxy.wait_session_line(client=f"127.0.0.5:{port}")
        assert line.get("back_tls_note") == "step=tls12", line["_line"]
        m = harness.scrape_metrics(mport)
        assert m[f"{P}front_learned_entries"] == 1, m
        assert m[f"{P}back_remembered_entries"] == 1, m

    still_remembered("before-reload")
    sections = proxy.sections
    proxy.reload()
    still_remembered("same-file")
    sections = harness.merge_sections(sections, {"client_tls": {"learn_ttl": "2h"},
                                                 "upstream_tls": {"remember_failures": "2h"}})
    proxy.rewrite(sections)
    proxy.reload()
    still_remembered("longer-ttls")

    # A learn_ttl shorter than the entry's age: 127.0.0.2 is offered STARTTLS again.
    proxy.rewrite(harness.merge_sections(sections, {"client_tls": {"learn_ttl": "1s"}}))
    proxy.reload()
    harness.wait_for(lambda: offered_to(connect, proxy.port, "127.0.0.2"), 10, interval=0.2,
                     what="STARTTLS offered to 127.0.0.2 again under learn_ttl = 1s")
    assert proxy.running()
