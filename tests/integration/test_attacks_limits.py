"""Attacks on the per-client abuse limits ([limits], README "Abuse limits"): a client that
changes how its address is written (IPv4 as IPv4-mapped IPv6 in a PROXY header, IPv6
addresses in one /64, a mixed-case or zero-compressed IPv6 spelling) must stay one client;
one client's flood must not refuse another. Rules that hold, kept as regression tests.
"""

import re

import harness

LIMIT_421 = re.compile(r"421 4\.7\.0 proxy\.test Too many connections from your address "
                       r"\(limit sessions: (\d+) at once\), try again later")


def via_balancer(connect, port, src, family=None):
    c = connect(port)
    fam = family or ("TCP6" if ":" in src else "TCP4")
    dst = "2001:db8::25" if fam == "TCP6" else "192.0.2.25"
    c.send(f"PROXY {fam} {src} {dst} 40000 25\r\n".encode())
    return c


def test_one_client_in_every_spelling_of_its_address(aio_upstream, make_proxy, connect):
    """client_sessions = 2 behind a PROXY v1 balancer: 192.0.2.8 holds two sessions; the same
    address written as ::ffff:192.0.2.8 (TCP6) is over the limit, and so are other
    spellings of one IPv6 /64 (upper case, zero-compressed, full form); another address is
    not affected."""
    extra = {"limits": {"client_sessions": "2", "exempt": ""},
             "proxy": {"proxy_protocol": "v1"}}
    proxy = make_proxy(aio_upstream.addr, extra=extra)
    held = []
    for src in ("192.0.2.8", "192.0.2.8"):
        c = via_balancer(connect, proxy.port, src)
        assert c.greeting().code == 220
        held.append(c)
    c = via_balancer(connect, proxy.port, "::ffff:192.0.2.8", family="TCP6")
    r = c.greeting(timeout=5)
    assert LIMIT_421.fullmatch(r.raw.decode().rstrip("\r\n")), r
    for src in ("2001:DB8:5::1", "2001:db8:5:0:0:0:0:2"):
        c = via_balancer(connect, proxy.port, src)
        assert c.greeting().code == 220
        held.append(c)
    for src in ("2001:0db8:0005:0000:ffff::9", "2001:db8:5::a"):
        c = via_balancer(connect, proxy.port, src)
        r = c.greeting(timeout=5)
        assert LIMIT_421.fullmatch(r.raw.decode().rstrip("\r\n")), (src, r)
    c = via_balancer(connect, proxy.port, "192.0.2.9")
    assert c.greeting().code == 220
    held.append(c)
    for c in held:
        assert c.cmd("QUIT").code == 221
