"""The client's identity (issue 6): PROXY protocol in from a load balancer, and telling the
upstream who the client is (`[proxy] upstream_identity`).

Contract checked here:

PROXY in (`[proxy] proxy_protocol = v1 | v2 | any`):
  - every connection must start with a valid header of an accepted version; the header's
    source address is the client address: in the session line (client=ADDR:PORT, IPv6 as
    [ADDR]:PORT), for learning (front-tls-learned client=ADDR), and for upstream_identity;
  - v2 LOCAL (a load balancer's health check): the real peer address is used;
  - a missing, malformed, wrong-version or oversized header: the connection is closed
    without a greeting (no byte is sent) and nothing is connected upstream; a header that
    stays incomplete is dropped the same way after `[timeouts] connect`; a header longer
    than the cap (107 bytes for v1, 16 + 2048 for v2) is dropped at once.

upstream_identity:
  - proxy-v1 / proxy-v2: the header is the first thing sent upstream, before the greeting
    is read, and nothing else is sent until the greeting arrives; source = the client
    (the PROXY-in address when there is one), destination = the address the client
    connected to (checked without PROXY in: the proxy's listener). A real Postfix with
    smtpd_upstream_proxy_protocol = haproxy logs the client's address.
  - xclient: when the upstream's EHLO reply advertises XCLIENT, the proxy sends
    `XCLIENT ADDR=<ip> PORT=<port> HELO=<the client's EHLO name>` (IPv6 as
    ADDR=IPV6:<ip>, as Postfix requires; NAME omitted or NAME=[UNAVAILABLE]; only
    attributes the upstream advertised), swallows the 220 that answers it and repeats
    the EHLO; the client sees one greeting and one EHLO reply, without XCLIENT in it, and
    an XCLIENT from the client is never relayed. Without XCLIENT advertised, none is
    sent. A real Postfix with smtpd_authorized_xclient_hosts logs the client's address.
  - spoof (transparent mode with TPROXY): the connection to the upstream comes from the
    client's own address (IP_TRANSPARENT bind): checked with real iptables rules in
    network namespaces (netns.py).

Needs root (Postfix's master, network namespaces); skips without it.
"""

import re
import smtplib
import struct
import time

import pytest

import harness
import netns
import postfix_local
from harness import client_tls_extra, starttls_lines
from netns import ADDRS

pytestmark = pytest.mark.skipif(not netns.is_root(),
                                reason="needs root (Postfix master, network namespaces)")

BODY = (b"From: legacy@client.test\r\nTo: b@mx.test\r\nSubject: identity\r\n\r\n"
        b"who am I?\r\n" + b"y" * 500 + b"\r\nend\r\n")
V2_SIG = harness.PROXY_V2_SIG
LB_CLIENT4 = "192.0.2.10"        # client addresses a load balancer announces (only bytes
LB_CLIENT6 = "2001:db8:1::10"    # in a header: nothing is ever sent to them)
LB_DEST4 = "198.51.100.25"
LB_DEST6 = "2001:db8:2::25"


# --------------------------------------------------------------------------------------
# PROXY protocol headers
# --------------------------------------------------------------------------------------

v1_header = harness.proxy_v1_header
v2_header = harness.proxy_v2_header
parse_proxy_header = harness.parse_proxy_header
xclient_attrs = harness.xclient_attrs


def v2_local():
    return V2_SIG + bytes([0x20, 0x00]) + b"\x00\x00"


def header(version, src, dst, sport, dport):
    return harness.proxy_header(version, src, dst, sport, dport)


def HeaderFirstUpstream(**options):
    """A fake upstream that first reads a PROXY v1/v2 header (harness.FakeUpstream with
    proxy_header=True)."""
    return harness.FakeUpstream(proxy_header=True, **options)


XCLIENT_CAPS = ("PIPELINING", "8BITMIME",
                "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT")


def XclientUpstream(xclient_reply=b"220 fake.test ESMTP after XCLIENT\r\n", **options):
    """A fake upstream that accepts XCLIENT with a new 220 greeting, as Postfix does."""
    return harness.FakeUpstream(xclient_reply=xclient_reply, **options)


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------

def identity_proxy(make_proxy, upstream_addr, identity=None, proxy_protocol=None, extra=None,
                   listen=None):
    keys = {}
    if identity:
        keys["upstream_identity"] = identity
    if proxy_protocol:
        keys["proxy_protocol"] = proxy_protocol
    return make_proxy(upstream_addr,
                      extra=harness.merge_sections({"proxy": keys}, extra), listen=listen)


def deliver_raw(c, body=BODY, helo="legacy.test", rcpt="b@mx.test"):
    """A whole session on an open harness.SmtpConn (greeting first)."""
    r = c.greeting()
    assert r.code == 220, r
    ehlo = c.ehlo(helo)
    assert c.cmd("MAIL FROM:<legacy@client.test>").code == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    r = c.reply()
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221
    c.close()
    return ehlo


def lf(data):
    return data.replace(b"\r\n", b"\n")


def addr_re(addr):
    return re.compile(re.escape(addr) + r"(:\d+)?")


# --------------------------------------------------------------------------------------
# PROXY protocol in
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,version,src,dst", [
    ("v1", "v1", LB_CLIENT4, LB_DEST4),
    ("v1", "v1", LB_CLIENT6, LB_DEST6),
    ("v2", "v2", LB_CLIENT4, LB_DEST4),
    ("v2", "v2", LB_CLIENT6, LB_DEST6),
    ("any", "v1", LB_CLIENT4, LB_DEST4),
    ("any", "v2", LB_CLIENT6, LB_DEST6),
])
def test_proxy_in_address_is_the_client(aio_upstream, make_proxy, connect, mode, version, src,
                                        dst):
    proxy = identity_proxy(make_proxy, aio_upstream.addr, proxy_protocol=mode)
    c = connect(proxy.port)
    c.send(header(version, src, dst, 40000, 25))
    deliver_raw(c)
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == BODY
    line = proxy.wait_session_line(client=harness.fmt_addr(src, 40000))
    assert line["messages"] == "1", line["_line"]


def test_proxy_in_v2_with_tlvs(aio_upstream, make_proxy, connect):
    """TLVs after the addresses (as AWS/HAProxy send them) are skipped."""
    proxy = identity_proxy(make_proxy, aio_upstream.addr, proxy_protocol="v2")
    tlvs = (bytes([0x05]) + struct.pack("!H", 8) + b"uniqueid"      # PP2_TYPE_UNIQUE_ID
            + bytes([0x04]) + struct.pack("!H", 3) + b"\x00\x00\x00")  # PP2_TYPE_NOOP
    c = connect(proxy.port)
    c.send(v2_header(LB_CLIENT4, LB_DEST4, 40001, 25, tlvs=tlvs))
    deliver_raw(c)
    proxy.wait_session_line(client=f"{LB_CLIENT4}:40001")


@pytest.mark.parametrize("mode", ["v2", "any"])
def test_proxy_in_v2_local_uses_real_address(aio_upstream, make_proxy, connect, mode):
    """v2 LOCAL (a load balancer's own health check): the real peer address is the client."""
    proxy = identity_proxy(make_proxy, aio_upstream.addr, proxy_protocol=mode)
    c = connect(proxy.port, source="127.0.0.2")
    c.send(v2_local())
    deliver_raw(c)
    proxy.wait_session_line(client=f"127.0.0.2:{c.local_port}")


BAD_HEADERS = {
    "none": ("v1", b"EHLO legacy.test\r\n"),
    "v2-when-v1": ("v1", v2_header(LB_CLIENT4, LB_DEST4, 40000, 25)),
    "v1-when-v2": ("v2", v1_header(LB_CLIENT4, LB_DEST4, 40000, 25)),
    "bad-address": ("v1", b"PROXY TCP4 192.0.2.300 198.51.100.25 40000 25\r\n"),
    "missing-port": ("v1", b"PROXY TCP4 192.0.2.10 198.51.100.25 40000\r\n"),
    "family-mismatch": ("v1", b"PROXY TCP6 192.0.2.10 198.51.100.25 40000 25\r\n"),
    "lower-case": ("any", b"proxy TCP4 192.0.2.10 198.51.100.25 40000 25\r\n"),
    "bare-lf": ("v1", b"PROXY TCP4 192.0.2.10 198.51.100.25 40000 25\n"),
    "v2-version-1": ("v2", V2_SIG + bytes([0x11, 0x11]) + struct.pack("!H", 12) + bytes(12)),
    "v2-short-block": ("v2", V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 4) + bytes(4)),
    "http": ("any", b"GET / HTTP/1.0\r\n\r\n"),
    "v1-too-long": ("v1", b"PROXY TCP4 " + b"1" * 120),
    "v2-too-long": ("v2", V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 0xFFFF)
                    + bytes(3000)),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_proxy_header_dropped(aio_upstream, make_proxy, connect, case):
    """Closed at once (well before `[timeouts] connect`), without a greeting, and nothing
    reaches the upstream; the next good connection is served."""
    mode, data = BAD_HEADERS[case]
    proxy = identity_proxy(make_proxy, aio_upstream.addr, proxy_protocol=mode,
                           extra={"timeouts": {"connect": "30s"}})
    c = connect(proxy.port)
    try:
        c.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the proxy may close before reading everything (an oversized header)
    c.wait_closed(timeout=5)
    good = connect(proxy.port)
    good.send(header(mode if mode != "any" else "v1", LB_CLIENT4, LB_DEST4, 40002, 25))
    deliver_raw(good)
    aio_upstream.wait_messages(1)
    assert len(aio_upstream.connections) == 1, aio_upstream.connections


@pytest.mark.parametrize("partial", [b"", b"PROXY TCP4 192.0.2.10", V2_SIG[:7]])
def test_incomplete_proxy_header_times_out(aio_upstream, make_proxy, connect, partial):
    """A header that never completes (or never starts) is dropped after `[timeouts]
    connect`, without a greeting."""
    proxy = identity_proxy(make_proxy, aio_upstream.addr, proxy_protocol="any",
                           extra={"timeouts": {"connect": "1s"}})
    c = connect(proxy.port)
    start = time.monotonic()
    if partial:
        c.send(partial)
    c.wait_closed(timeout=8)
    elapsed = time.monotonic() - start
    assert 0.8 <= elapsed <= 6, elapsed
    assert aio_upstream.connections == []


def test_learning_uses_proxy_in_address(aio_upstream, make_proxy, connect, front_certs):
    """A TLS failure from the address in the header is learned for that address: the next
    session announcing it is not offered STARTTLS, another announced address still is
    (all three come from the same real address, 127.0.0.1)."""
    proxy = make_proxy(aio_upstream.addr, extra=harness.merge_sections(
        client_tls_extra([front_certs["ec"]]), {"proxy": {"proxy_protocol": "v1"}}))

    def session(src, sport):
        c = connect(proxy.port)
        c.send(v1_header(src, LB_DEST4, sport, 25))
        assert c.greeting().code == 220
        return c, c.ehlo("legacy.test")

    c, r = session("192.0.2.77", 40077)
    assert len(starttls_lines(r)) == 1, r.raw
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.send(b"EHLO this is not a TLS ClientHello\r\n")
    c.wait_eof()
    proxy.wait_event("front-tls-learned", client=addr_re("192.0.2.77"))

    c, r = session("192.0.2.77", 40078)
    assert starttls_lines(r) == [], r.raw
    assert c.cmd("QUIT").code == 221
    c, r = session("192.0.2.78", 40079)
    assert len(starttls_lines(r)) == 1, r.raw
    assert c.cmd("QUIT").code == 221
    proxy.wait_session_line(client="192.0.2.77:40078")


# --------------------------------------------------------------------------------------
# upstream_identity = proxy-v1 | proxy-v2, against a python upstream (exact bytes)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("identity", ["proxy-v1", "proxy-v2"])
def test_proxy_out_header_first(make_upstream, make_proxy, connect, identity):
    up = make_upstream(HeaderFirstUpstream)
    proxy = identity_proxy(make_proxy, up.addr, identity=identity)
    c = connect(proxy.port, source="127.0.0.2")
    deliver_raw(c)
    conn = up.wait_closed(0)
    h = conn.header
    assert h is not None, conn.header_raw
    assert h["version"] == (1 if identity == "proxy-v1" else 2), h
    if identity == "proxy-v1":
        assert h["proto"] == "TCP4", h
        assert conn.header_raw == (f"PROXY TCP4 127.0.0.2 127.0.0.1 {c.local_port} "
                                   f"{proxy.port}\r\n").encode()
    else:
        assert (h["vbits"], h["command"], h["family"]) == (2, 1, 0x11), h
    assert (h["src"], h["sport"]) == ("127.0.0.2", c.local_port), h
    assert (h["dst"], h["dport"]) == ("127.0.0.1", proxy.port), h
    assert conn.after_header == b"", conn.after_header
    assert conn.commands[0].startswith(b"EHLO legacy.test"), conn.commands
    [msg] = conn.messages
    assert msg.content == BODY


@pytest.mark.parametrize("identity,inbound,src", [
    ("proxy-v1", "v2", LB_CLIENT6),
    ("proxy-v2", "v1", LB_CLIENT4),
    ("proxy-v2", "v2", LB_CLIENT6),
])
def test_proxy_out_carries_proxy_in_address(make_upstream, make_proxy, connect, identity,
                                            inbound, src):
    """Behind a load balancer, the header sent upstream names the client the load
    balancer announced, not the load balancer."""
    up = make_upstream(HeaderFirstUpstream)
    proxy = identity_proxy(make_proxy, up.addr, identity=identity, proxy_protocol=inbound)
    c = connect(proxy.port)
    c.send(header(inbound, src, LB_DEST6 if ":" in src else LB_DEST4, 40003, 25))
    deliver_raw(c)
    conn = up.wait_closed(0)
    assert conn.header is not None, conn.header_raw
    assert (conn.header["src"], conn.header["sport"]) == (src, 40003), conn.header


# --------------------------------------------------------------------------------------
# upstream_identity = xclient, against a python upstream (exact commands)
# --------------------------------------------------------------------------------------

def test_xclient_after_ehlo(make_upstream, make_proxy, connect):
    up = make_upstream(XclientUpstream, caps=XCLIENT_CAPS)
    proxy = identity_proxy(make_proxy, up.addr, identity="xclient")
    c = connect(proxy.port, source="127.0.0.2")
    ehlo = deliver_raw(c)
    # One greeting and one EHLO reply reached the client (deliver_raw's strict parsing),
    # and that reply does not offer XCLIENT to it.
    assert not any(line.upper().startswith("XCLIENT") for line in ehlo.lines), ehlo.raw
    conn = up.wait_closed(0)
    cmds = conn.commands
    assert cmds[0] == b"EHLO legacy.test", cmds
    assert cmds[1].upper().startswith(b"XCLIENT "), cmds
    assert cmds[2] == b"EHLO legacy.test", cmds
    assert cmds[3].upper().startswith(b"MAIL FROM:"), cmds
    assert sum(1 for x in cmds if x.upper().startswith(b"XCLIENT")) == 1, cmds
    attrs = xclient_attrs(cmds[1])
    assert attrs["ADDR"] == "127.0.0.2", attrs
    assert attrs["PORT"] == str(c.local_port), attrs
    assert attrs["HELO"] == "legacy.test", attrs
    assert attrs.get("NAME", "[UNAVAILABLE]") == "[UNAVAILABLE]", attrs
    [msg] = conn.messages
    assert msg.content == BODY
    proxy.wait_session_line(client=f"127.0.0.2:{c.local_port}")


def test_xclient_ipv6_address_prefixed(make_upstream, make_proxy, connect):
    """An IPv6 client (here announced by PROXY in) is sent as ADDR=IPV6:<address>."""
    up = make_upstream(XclientUpstream, caps=XCLIENT_CAPS)
    proxy = identity_proxy(make_proxy, up.addr, identity="xclient", proxy_protocol="v1")
    c = connect(proxy.port)
    c.send(v1_header(LB_CLIENT6, LB_DEST6, 40004, 25))
    deliver_raw(c)
    conn = up.wait_closed(0)
    [line] = [x for x in conn.commands if x.upper().startswith(b"XCLIENT")]
    attrs = xclient_attrs(line)
    assert attrs["ADDR"].upper() == f"IPV6:{LB_CLIENT6}".upper(), attrs
    assert attrs["PORT"] == "40004", attrs


def test_xclient_only_advertised_attributes(make_upstream, make_proxy, connect):
    """An upstream announcing only "XCLIENT ADDR NAME" gets no other attribute."""
    up = make_upstream(XclientUpstream, caps=("PIPELINING", "XCLIENT ADDR NAME"))
    proxy = identity_proxy(make_proxy, up.addr, identity="xclient")
    c = connect(proxy.port, source="127.0.0.3")
    deliver_raw(c)
    conn = up.wait_closed(0)
    [line] = [x for x in conn.commands if x.upper().startswith(b"XCLIENT")]
    attrs = xclient_attrs(line)
    assert attrs["ADDR"] == "127.0.0.3", attrs
    assert set(attrs) <= {"ADDR", "NAME"}, attrs
    assert proxy.running()


def test_xclient_not_advertised_fails_closed(make_upstream, make_proxy, connect):
    """The upstream does not offer XCLIENT to the proxy: the client's identity cannot be
    conveyed, so none of its commands may go up under the proxy's own identity (an upstream
    that trusts the proxy's address would extend that trust to the client). The client gets
    421 4.7.0 (temporary: it keeps the message) and the log says why."""
    up = make_upstream(XclientUpstream, caps=("PIPELINING", "8BITMIME"))
    proxy = identity_proxy(make_proxy, up.addr, identity="xclient")
    c = connect(proxy.port, source="127.0.0.2")
    assert c.greeting().code == 220
    r = c.cmd("EHLO legacy.test")
    assert r.startswith("421 4.7.0"), r
    c.wait_closed()
    conn = up.wait_closed(0)
    assert not any(x.upper().startswith(b"XCLIENT") for x in conn.commands), conn.commands
    assert [x.split()[0].upper() for x in conn.commands] in ([b"EHLO"], [b"EHLO", b"QUIT"])
    assert conn.messages == []
    ev = proxy.wait_event("identity-refused")
    assert ev["reason"] == "xclient-not-offered", ev["_line"]
    assert proxy.wait_session_line()["end"] == "upstream-identity-refused"
    assert proxy.running()


def test_client_xclient_not_relayed(make_upstream, make_proxy, connect):
    """The upstream trusts the proxy's address for XCLIENT; a client must not be able to
    use that trust: its own XCLIENT is refused by the proxy and never reaches the upstream."""
    up = make_upstream(XclientUpstream, caps=XCLIENT_CAPS)
    proxy = identity_proxy(make_proxy, up.addr, identity="xclient")
    c = connect(proxy.port, source="127.0.0.2")
    assert c.greeting().code == 220
    c.ehlo("legacy.test")
    r = c.cmd("XCLIENT ADDR=203.0.113.66")
    assert 500 <= r.code <= 559, r
    assert c.cmd("QUIT").code == 221
    c.close()
    conn = up.wait_closed(0)
    [line] = [x for x in conn.commands if x.upper().startswith(b"XCLIENT")]
    assert xclient_attrs(line)["ADDR"] == "127.0.0.2", conn.commands
    assert proxy.running()


# --------------------------------------------------------------------------------------
# A real Postfix upstream
# --------------------------------------------------------------------------------------

def check_postfix_delivery(pf, client_addr, helo="legacy.test"):
    [msg] = pf.wait_messages(1)
    added, original = postfix_local.split_delivered(msg)
    assert original == lf(BODY), msg
    # Postfix writes "from HELO (unknown [ADDR])", IPv6 as [IPv6:ADDR], maybe folded.
    unfolded = re.sub(rb"\n[ \t]+", b" ", added).decode("latin-1")
    shown = f"IPv6:{client_addr}" if ":" in client_addr else client_addr
    assert f"from {helo} (unknown [{shown}])" in unfolded, added
    kinds = pf.clients()
    assert ("queue", "unknown", client_addr) in kinds, pf.log()


@pytest.mark.parametrize("identity", ["proxy-v1", "proxy-v2"])
def test_postfix_logs_client_via_proxy_protocol(make_postfix, make_proxy, identity):
    pf = make_postfix(proxy_protocol=True)
    proxy = identity_proxy(make_proxy, pf.addr, identity=identity)
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="legacy.test", timeout=30,
                      source_address=("127.0.0.2", 0)) as s:
        s.sendmail("legacy@client.test", ["b@mx.test"], BODY)
        s.quit()
    pf.wait_log(r"connect from unknown\[127\.0\.0\.2\]")
    check_postfix_delivery(pf, "127.0.0.2")
    # Postfix never saw the proxy's own address as the client.
    assert all(addr != "127.0.0.1" for _, _, addr in pf.clients()), pf.log()


@pytest.mark.parametrize("inbound,identity,src", [
    ("v2", "proxy-v1", LB_CLIENT4),
    ("v2", "proxy-v1", LB_CLIENT6),
    ("v1", "proxy-v2", LB_CLIENT6),
])
def test_postfix_logs_load_balancer_client(make_postfix, make_proxy, connect, inbound,
                                           identity, src):
    """Load balancer -> proxy -> Postfix: Postfix logs the client the load balancer
    announced."""
    pf = make_postfix(proxy_protocol=True)
    proxy = identity_proxy(make_proxy, pf.addr, identity=identity, proxy_protocol=inbound)
    c = connect(proxy.port)
    c.send(header(inbound, src, LB_DEST6 if ":" in src else LB_DEST4, 40005, 25))
    deliver_raw(c)
    pf.wait_log(r"connect from unknown\[" + re.escape(src) + r"\]")
    check_postfix_delivery(pf, src)


@pytest.mark.parametrize("fam", [4, 6])
def test_postfix_logs_client_via_xclient(make_postfix, make_proxy, connect, fam):
    """XCLIENT towards a Postfix that authorizes the proxy (smtpd_authorized_xclient_hosts
    = 127.0.0.0/8): the message is logged and stamped with the client's address and HELO
    name (IPv4: a real client from 127.0.0.2; IPv6: announced by PROXY in)."""
    pf = make_postfix()
    if fam == 4:
        proxy = identity_proxy(make_proxy, pf.addr, identity="xclient")
        c = connect(proxy.port, source="127.0.0.2")
        client = "127.0.0.2"
    else:
        proxy = identity_proxy(make_proxy, pf.addr, identity="xclient", proxy_protocol="v2")
        c = connect(proxy.port)
        c.send(v2_header(LB_CLIENT6, LB_DEST6, 40006, 25))
        client = LB_CLIENT6
    ehlo = deliver_raw(c)
    assert not any(line.upper().startswith("XCLIENT") for line in ehlo.lines), ehlo.raw
    pf.wait_log(r"client=unknown\[" + re.escape(client) + r"\]")
    check_postfix_delivery(pf, client)


# --------------------------------------------------------------------------------------
# upstream_identity = spoof, transparent mode with TPROXY, in network namespaces
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
@pytest.mark.parametrize("fam", [4, 6])
def test_spoof_connects_from_client_address(topo, ns_servers, gw_proxy, fam, tls):
    a = ADDRS[fam]
    up = ns_servers(a["server"], tls=tls)
    topo.tproxy(netns.PROXY_PORT)
    topo.spoof_return_path()
    proxy = gw_proxy({"proxy": {"upstream_identity": "spoof"}})
    with topo.entered("client"):
        s = smtplib.SMTP(a["server"], 25, local_hostname="legacy.test", timeout=30)
    try:
        s.sendmail("legacy@client.test", ["b@mx.test"], BODY)
        port = s.sock.getsockname()[1]
        s.quit()
    finally:
        s.close()
    [msg] = up.wait_messages(1)
    assert msg.content == BODY
    assert msg.peer[0] == a["client"], (msg.peer, topo.describe())
    assert up.starttls_commands == (1 if tls else 0)
    line = proxy.wait_session_line(client=harness.fmt_addr(a["client"], port))
    assert line["upstream"] == harness.fmt_addr(a["server"], 25), line["_line"]
    assert line["back_tls"].startswith("TLS") if tls else line["back_tls"] == "cleartext"
