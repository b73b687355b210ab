"""Transparent mode (issue 6): outbound interception with real iptables rules in network
namespaces (see netns.py for the topology and the exact rules).

A "legacy MTA" in the client namespace (192.0.2.10, 2001:db8:1::10) connects to "the MX"
(198.51.100.25 / .26, 2001:db8:2::25 / ::26, port 25) in the server namespace; the gateway
namespace between them intercepts the connection (REDIRECT or TPROXY) and hands it to the
real proxy, running there with `[proxy] mode = transparent`, listening on 0.0.0.0:10025 and
[::]:10025, leg 1 `starttls = strip`, leg 2 `starttls = may`, and `upstream` set to an
address where nothing listens (transparent mode must ignore it).

What the proxy must do here:
  - connect each session to the connection's original destination (REDIRECT:
    SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST; TPROXY: the accepted socket's local address),
    IPv4 and IPv6, and relay the message byte for byte;
  - the session line: client=<client ip:port>, upstream=<original destination ip:port>
    (IPv6 as [addr]:port), back_tls=TLS... when the MX offered STARTTLS, cleartext when not;
  - a connection whose original destination is one of its own listeners (a client
    connecting straight to the gateway's address on the proxy's port): "421" instead of a
    greeting, then close, and a log line "loop-refused"; nothing is connected upstream.

upstream_identity = spoof (TPROXY, the MX sees the client's own address) is tested in
test_identity.py with the same topology.

The test_topology_* tests check the namespaces and rules themselves with a plain python
relay (netns.RelayDouble, a test double standing in for the proxy); they do not need the
proxy and show whether a failure below is the environment's or the proxy's.

Needs root (network namespaces, iptables); skips without it.
"""

import smtplib

import pytest

import harness
import netns
from netns import ADDRS, RelayDouble

pytestmark = pytest.mark.skipif(not netns.is_root(),
                                reason="needs root for network namespaces and iptables")

PROXY_PORT = netns.PROXY_PORT
BODY = (b"From: legacy@client.test\r\nTo: someone@mx.test\r\nSubject: intercepted\r\n\r\n"
        b"first line\r\n.a line that starts with a dot\r\n..two dots\r\n"
        + b"x" * 900 + b"\r\n\r\nlast line\r\n")


@pytest.fixture
def relay_double(topo):
    """relay_double(mode, spoof=False) -> a started netns.RelayDouble in the gateway."""
    started = harness.Started()

    def make(mode, spoof=False):
        with topo.entered("gw"):
            return started.add(RelayDouble(PROXY_PORT, mode, spoof=spoof).start())

    yield make
    started.stop_all()


def intercept(topo, how):
    if how == "redirect":
        topo.redirect(PROXY_PORT)
    else:
        topo.tproxy(PROXY_PORT)


def smtp_from_client(topo, host, port=25, name="legacy.test"):
    """smtplib.SMTP connected from the client namespace."""
    with topo.entered("client"):
        return smtplib.SMTP(host, port, local_hostname=name, timeout=15)


def send_one(topo, host, body=BODY, mail_from="legacy@client.test", rcpt="someone@mx.test"):
    """One message from the client namespace to host:25; returns (client port, EHLO reply
    features)."""
    s = smtp_from_client(topo, host)
    try:
        code, _ = s.ehlo()
        assert code == 250
        features = dict(s.esmtp_features)
        s.sendmail(mail_from, [rcpt], body)
        port = s.sock.getsockname()[1]
        s.quit()
    finally:
        s.close()
    return port, features


def fmt(host, port):
    return harness.fmt_addr(host, port)


def fail_context(topo, proxy=None):
    text = topo.describe()
    if proxy is not None:
        text += "\n# proxy stderr\n" + proxy.stderr()[-4000:]
    return text


# --------------------------------------------------------------------------------------
# The environment itself, with a test double instead of the proxy
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fam", [4, 6])
def test_topology_direct(topo, ns_servers, fam):
    """Without rules, the client reaches the server directly and is seen with its own
    address."""
    a = ADDRS[fam]
    up = ns_servers(a["server"], kind="fake")
    c = netns.connect_from(topo, "client", a["server"], 25)
    assert c.greeting().code == 220
    c.ehlo("legacy.test")
    assert c.cmd("QUIT").code == 221
    c.close()
    [conn] = up.wait_connections(1)
    assert conn.peer[0] == a["client"]


@pytest.mark.parametrize("fam", [4, 6])
def test_topology_redirect_double(topo, ns_servers, relay_double, fam):
    """REDIRECT sends the client's port-25 connection to the relay double in the gateway,
    which finds the original destination with SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST)."""
    a = ADDRS[fam]
    up = ns_servers(a["server"], kind="fake")
    intercept(topo, "redirect")
    relay = relay_double("redirect")
    c = netns.connect_from(topo, "client", a["server"], 25)
    assert c.greeting().code == 220, fail_context(topo)
    assert c.cmd("QUIT").code == 221
    c.close()
    [conn] = up.wait_connections(1)
    assert conn.peer[0] == a["gw_server"]
    [(peer, local, dst, _)] = relay.accepted
    assert peer[0] == a["client"]
    assert local == (a["gw_client"], PROXY_PORT)  # REDIRECT: our own address and port
    assert dst == (a["server"], 25)
    assert not relay.errors


@pytest.mark.parametrize("fam", [4, 6])
def test_topology_tproxy_double(topo, ns_servers, relay_double, fam):
    """TPROXY hands the connection to the relay double's IP_TRANSPARENT listener; the
    accepted socket's local address is the original destination."""
    a = ADDRS[fam]
    up = ns_servers(a["server"], kind="fake")
    intercept(topo, "tproxy")
    relay = relay_double("tproxy")
    c = netns.connect_from(topo, "client", a["server"], 25)
    assert c.greeting().code == 220, fail_context(topo)
    assert c.cmd("QUIT").code == 221
    c.close()
    [conn] = up.wait_connections(1)
    assert conn.peer[0] == a["gw_server"]
    [(peer, local, dst, _)] = relay.accepted
    assert peer[0] == a["client"]
    assert local == dst == (a["server"], 25)
    assert not relay.errors


@pytest.mark.parametrize("fam", [4, 6])
def test_topology_spoof_double(topo, ns_servers, relay_double, fam):
    """TPROXY plus the spoof return path: the relay double connects from the client's own
    address (IP_TRANSPARENT bind) and the server's replies reach it."""
    a = ADDRS[fam]
    up = ns_servers(a["server"], kind="fake")
    intercept(topo, "tproxy")
    topo.spoof_return_path()
    relay = relay_double("tproxy", spoof=True)
    c = netns.connect_from(topo, "client", a["server"], 25)
    assert c.greeting().code == 220, fail_context(topo)
    c.ehlo("legacy.test")
    assert c.cmd("QUIT").code == 221
    c.close()
    [conn] = up.wait_connections(1)
    assert conn.peer[0] == a["client"]
    assert not relay.errors


# --------------------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fam", [4, 6])
def test_redirect_delivers_to_original_destination(topo, ns_servers, gw_proxy, fam):
    """REDIRECT: the message reaches the MX the client addressed, byte for byte; leg 2
    originates STARTTLS (the MX offers it); leg 1 strips it."""
    a = ADDRS[fam]
    up = ns_servers(a["server"], tls=True)
    intercept(topo, "redirect")
    proxy = gw_proxy()
    port, features = send_one(topo, a["server"])
    assert "starttls" not in features, features
    [msg] = up.wait_messages(1)
    assert msg.content == BODY
    assert (msg.mail_from, msg.rcpt_tos) == ("legacy@client.test", ["someone@mx.test"])
    assert msg.peer[0] == a["gw_server"]
    assert up.starttls_commands == 1
    line = proxy.wait_session_line(client=fmt(a["client"], port))
    assert line["upstream"] == fmt(a["server"], 25), line["_line"]
    assert line["back_tls"].startswith("TLS"), line["_line"]
    assert line["messages"] == "1", line["_line"]


@pytest.mark.parametrize("fam", [4, 6])
def test_tproxy_delivers_to_original_destination(topo, ns_servers, gw_proxy, fam):
    """TPROXY: the same, towards an MX without STARTTLS (leg 2 stays in cleartext)."""
    a = ADDRS[fam]
    up = ns_servers(a["server"], kind="fake")
    intercept(topo, "tproxy")
    proxy = gw_proxy()
    port, features = send_one(topo, a["server"])
    assert "starttls" not in features, features
    [msg] = up.wait_closed(0).messages
    assert msg.content == BODY
    conn = up.connections[0]
    assert conn.peer[0] == a["gw_server"]
    assert not any(c.upper().startswith(b"STARTTLS") for c in conn.commands)
    line = proxy.wait_session_line(client=fmt(a["client"], port))
    assert line["upstream"] == fmt(a["server"], 25), line["_line"]
    assert line["back_tls"] == "cleartext", line["_line"]


@pytest.mark.parametrize("how", ["redirect", "tproxy"])
def test_each_session_goes_to_its_own_destination(topo, ns_servers, gw_proxy, how):
    """Three MX addresses (two IPv4, one IPv6) behind one proxy: every message reaches the
    address its client connected to, and no other."""
    hosts = [ADDRS[4]["server"], ADDRS[4]["server_b"], ADDRS[6]["server_b"]]
    ups = {h: ns_servers(h, kind="fake") for h in hosts}
    intercept(topo, how)
    proxy = gw_proxy()
    for i, h in enumerate(hosts):
        body = BODY + b"for " + h.encode() + b"\r\n"
        port, _ = send_one(topo, h, body=body, rcpt=f"rcpt{i}@mx.test")
        proxy.wait_session_line(client=fmt(ADDRS[6 if ":" in h else 4]["client"], port),
                                upstream=fmt(h, 25))
    for i, h in enumerate(hosts):
        [conn] = ups[h].connections
        assert conn.closed.wait(10)
        [msg] = conn.messages
        assert msg.content == BODY + b"for " + h.encode() + b"\r\n"
        assert msg.rcpt_tos == [f"<rcpt{i}@mx.test>".encode()]


@pytest.mark.parametrize("how", ["redirect", "tproxy"])
@pytest.mark.parametrize("fam", [4, 6])
def test_loop_to_own_listener_refused(topo, ns_servers, gw_proxy, how, fam):
    """A connection whose original destination is the proxy's own listener (the client
    connects straight to the gateway's address on the proxy's port): 421, close, a
    "loop-refused" line, and no upstream connection."""
    a = ADDRS[fam]
    up = ns_servers(a["server"], kind="fake")
    intercept(topo, how)
    # Bounded, in case the proxy connects to itself instead of refusing.
    proxy = gw_proxy({"proxy": {"max_connections": "20"}})
    c = netns.connect_from(topo, "client", a["gw_client"], PROXY_PORT)
    r = c.greeting()
    assert r.code == 421, r
    c.wait_eof()
    proxy.wait_event("loop-refused")
    # A normal session still works afterwards, and was the only one to reach the MX.
    send_one(topo, a["server"])
    up.wait_closed(0)
    assert len(up.connections) == 1


def test_unreachable_destination_gets_421(topo, ns_servers, gw_proxy):
    """The original destination refuses the connection (nothing listens on port 25 of
    that address): the client gets a 421 instead of a greeting, never a hang."""
    ns_servers(ADDRS[4]["server"], kind="fake")  # on .25; .26 has nothing on port 25
    intercept(topo, "redirect")
    proxy = gw_proxy({"timeouts": {"connect": "5s"}})
    c = netns.connect_from(topo, "client", ADDRS[4]["server_b"], 25)
    r = c.greeting(timeout=15)
    assert r.code == 421, r
    c.wait_eof()
    proxy.wait_event("upstream-connect-failed",
                     upstream=fmt(ADDRS[4]["server_b"], 25))


def test_upstream_setting_is_ignored(topo, ns_servers, gw_proxy):
    """`upstream` (set here to an address where nothing listens) plays no part in
    transparent mode: a session is relayed to its original destination."""
    a = ADDRS[4]
    up = ns_servers(a["server"], kind="fake")
    intercept(topo, "redirect")
    proxy = gw_proxy()
    assert proxy.sections["proxy"]["upstream"] == netns.IGNORED_UPSTREAM
    port, _ = send_one(topo, a["server"])
    [msg] = up.wait_closed(0).messages
    assert msg.content == BODY
    line = proxy.wait_session_line(client=fmt(a["client"], port))
    assert line["upstream"] == fmt(a["server"], 25), line["_line"]
    assert not proxy.events("upstream-connect-failed"), proxy.stderr()[-3000:]


def test_client_sees_no_starttls_even_when_the_mx_offers_it(topo, ns_servers, gw_proxy):
    """The typical outbound policy: the legacy MTA never sees STARTTLS (leg 1 strip) and
    its STARTTLS, if it sends one anyway, is not relayed; leg 2 still uses TLS."""
    a = ADDRS[4]
    up = ns_servers(a["server"], tls=True)
    intercept(topo, "tproxy")
    proxy = gw_proxy()
    c = netns.connect_from(topo, "client", a["server"], 25)
    assert c.greeting().code == 220
    r = c.ehlo("legacy.test")
    assert not harness.starttls_lines(r), r.raw
    r = c.cmd("STARTTLS")
    assert r.code in (454, 502, 500), r
    assert c.cmd("QUIT").code == 221
    c.close()
    up.wait_connections(1)
    assert up.starttls_commands == 1  # the proxy's own, on leg 2
    line = proxy.wait_session_line(client=fmt(a["client"], c.local_port))
    assert line["back_tls"].startswith("TLS"), line["_line"]
