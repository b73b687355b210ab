"""Per-client abuse limits ([limits]): sessions at once, new sessions and messages per
window, per client address (the PROXY header's when one is used; IPv6 grouped by prefix),
exempt networks with a reserve over max_connections, quiet logs under a flood, reload.

Clients are real sockets from distinct loopback addresses (127.0.0.x: Linux routes all of
127/8 to lo), real PROXY headers, and real IPv6 sources in network namespaces. Every test
lists `exempt` itself, since loopback is exempt by default.
"""

import asyncio
import os
import re
import signal
import smtplib
import subprocess
import threading
import time

import pytest

import harness
import netns

LIMIT_421 = re.compile(r"421 4\.7\.0 proxy\.test Too many connections from your address "
                       r"\(limit sessions: (\d+) at once\), try again later")
RATE_421 = re.compile(r"421 4\.7\.0 proxy\.test Too many new connections from your address "
                      r"\(limit session-rate: (\d+) per (\d+) s\), try again later")


def line_of(reply):
    """The reply as one line of text, code included."""
    return reply.raw.decode().rstrip("\r\n")


def limits(**keys):
    """An [limits] section: no exempt network unless given."""
    keys.setdefault("exempt", "")
    return {"limits": {k: str(v) for k, v in keys.items()}}


def with_metrics(extra):
    port = harness.free_port()
    return harness.merge_sections(extra, {"metrics": {"listen": f"127.0.0.1:{port}"}}), port


def deliver(port, source, tag, host="127.0.0.1"):
    """One message with smtplib from |source|; returns the seconds it took."""
    start = time.monotonic()
    with smtplib.SMTP(host, port, timeout=20, source_address=(source, 0)) as s:
        s.ehlo("client.test")
        s.sendmail(f"{tag}@client.test", [f"{tag}@upstream.test"],
                   f"Subject: {tag}\r\n\r\n{tag}\r\n")
    return time.monotonic() - start


def open_session(connect, port, source):
    """A connection from |source| that got its 220 (a session holding a place)."""
    c = connect(port, source=source)
    r = c.greeting()
    assert r.code == 220, r
    return c


def expect_refused(proxy, connect, source, pattern=LIMIT_421, end="client-limit"):
    """A connection from |source| refused at once with |pattern|'s 421, then closed; waits
    until the proxy has let the connection go (its session line)."""
    start = time.monotonic()
    c = connect(proxy.port, source=source)
    r = c.greeting(timeout=5)
    assert pattern.fullmatch(line_of(r)), r
    c.wait_closed(5)
    assert time.monotonic() - start < 3, "a refusal must be prompt"
    port = c.local_port
    c.close()
    line = proxy.wait_session_line(client=f"{source}:{port}")
    assert line["end"] == end, line["_line"]
    return r


def rcpts_of(upstream):
    return sorted(r for m in upstream.messages for r in m.rcpt_tos)


def test_sessions_at_once_per_address(aio_upstream, make_proxy, connect):
    extra, mport = with_metrics(limits(client_sessions=3))
    proxy = make_proxy(aio_upstream.addr, extra=extra)
    held = [open_session(connect, proxy.port, "127.0.0.2") for _ in range(3)]
    aio_upstream.wait_connections(3)

    # The fourth gets the 421 naming the limit, even if it pipelines commands at once,
    # and never costs an upstream connection.
    c = connect(proxy.port, source="127.0.0.2")
    c.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    r = c.greeting(timeout=5)
    assert LIMIT_421.fullmatch(line_of(r)) and line_of(r).endswith("limit sessions: 3 at once), "
                                                             "try again later"), r
    c.wait_closed(5)
    c.close()
    for _ in range(4):
        expect_refused(proxy, connect, "127.0.0.2")

    # Another address delivers meanwhile, promptly.
    took = deliver(proxy.port, "127.0.0.3", "other")
    assert took < 5, f"the other address waited {took:.1f}s"
    aio_upstream.wait_messages(1)
    assert rcpts_of(aio_upstream) == ["other@upstream.test"]
    # 3 held + the other address: the refused ones never reached the upstream.
    assert len(aio_upstream.connections) == 4

    # The held sessions still work; once one ends, the address is served again (the
    # refused attempts were not counted).
    c0 = held.pop()
    assert c0.ehlo().code == 250
    assert c0.cmd("QUIT").code == 221
    c0.wait_closed(5)
    harness.wait_for(lambda: len([x for x in proxy.session_lines()
                                  if x.get("end") == "quit"]) >= 2, 5, what="the QUIT")
    back = open_session(connect, proxy.port, "127.0.0.2")
    expect_refused(proxy, connect, "127.0.0.2")

    # One log line for the address in this window, whatever the number of refusals.
    warns = proxy.events("limit-reached")
    assert len(warns) == 1, warns
    assert warns[0]["client"].startswith("127.0.0.2:"), warns
    assert (warns[0]["limit"], warns[0]["max"]) == ("sessions", "3"), warns
    refused = [x for x in proxy.session_lines() if x.get("end") == "client-limit"]
    assert len(refused) == 6, refused
    assert all(x["back_tls_reason"] == "none" for x in refused)

    m = harness.scrape_metrics(mport)
    assert m['smtp_tls_proxy_limit_refusals_total{limit="sessions"}'] == 6
    assert m['smtp_tls_proxy_limit_refusals_total{limit="session-rate"}'] == 0
    assert m['smtp_tls_proxy_sessions_total{end="client-limit"}'] == 6
    assert m["smtp_tls_proxy_connections_refused_total"] == 0
    # No address in any metric.
    text = "\n".join(m)
    assert "127.0.0" not in text
    for c in held + [back]:
        assert c.cmd("QUIT").code == 221


def test_default_is_fifty_at_once(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra=limits())
    held = [connect(proxy.port, source="127.0.0.4") for _ in range(50)]
    for c in held:
        assert c.greeting().code == 220
    expect_refused(proxy, connect, "127.0.0.4")
    # "off": no per-client limit at all after a reload; the open sessions are kept.
    sections = harness.merge_sections(proxy.sections, limits(client_sessions="off"))
    rewrite_and_reload(proxy, sections)
    more = [open_session(connect, proxy.port, "127.0.0.4") for _ in range(10)]
    for c in held[:2] + more[:2]:
        assert c.cmd("QUIT").code == 221


def test_session_rate_recovers_after_the_window(aio_upstream, make_proxy, connect):
    extra, mport = with_metrics(limits(client_sessions="off", client_session_rate=3,
                                       window="2s"))
    proxy = make_proxy(aio_upstream.addr, extra=extra)
    start = time.monotonic()
    for i in range(3):
        c = open_session(connect, proxy.port, "127.0.0.5")
        assert c.cmd("QUIT").code == 221  # ended sessions still count towards the rate
    r = expect_refused(proxy, connect, "127.0.0.5", RATE_421)
    assert RATE_421.fullmatch(line_of(r)).groups() == ("3", "2"), r
    expect_refused(proxy, connect, "127.0.0.5", RATE_421)
    assert time.monotonic() - start < 2, "too slow for a 2 s window: the test proves nothing"
    # Another address has its own window.
    open_session(connect, proxy.port, "127.0.0.6").cmd("QUIT")

    # After the window the address is served again, for 3 more.
    harness.wait_for(lambda: time.monotonic() - start > 2.2, 5, what="the window to pass")
    for i in range(3):
        open_session(connect, proxy.port, "127.0.0.5").cmd("QUIT")
    expect_refused(proxy, connect, "127.0.0.5", RATE_421)

    warns = proxy.events("limit-reached")
    assert [(w["limit"], w["max"], w["window_ms"]) for w in warns] == \
        [("session-rate", "3", "2000")] * 2, warns  # one per window
    m = harness.scrape_metrics(mport)
    assert m['smtp_tls_proxy_limit_refusals_total{limit="session-rate"}'] == 3
    assert m['smtp_tls_proxy_limit_refusals_total{limit="sessions"}'] == 0


def test_message_rate_refuses_the_mail_not_the_session(aio_upstream, make_proxy, connect):
    extra, mport = with_metrics(limits(client_message_rate=2, window="2s"))
    proxy = make_proxy(aio_upstream.addr, extra=extra)
    start = time.monotonic()
    c = connect(proxy.port, source="127.0.0.7")
    assert c.greeting().code == 220
    c.ehlo()
    for i in range(2):
        assert c.cmd(f"MAIL FROM:<m{i}@client.test>").code == 250
        assert c.cmd(f"RCPT TO:<r{i}@upstream.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert c.reply().code == 250
    # The third MAIL, pipelined with its RCPT and DATA: the proxy refuses the MAIL and
    # never forwards it, so the upstream (aiosmtpd) has no transaction and answers the
    # RCPT and the DATA with 503, in order.
    c.send(b"MAIL FROM:<m2@client.test>\r\nRCPT TO:<r2@upstream.test>\r\nDATA\r\n")
    replies = c.replies(3)
    assert line_of(replies[0]) == "450 4.7.1 Too much mail from your address, try again later"
    assert [r.code for r in replies[1:]] == [503, 503], replies
    # Another spelling changes nothing.
    r = c.cmd("mail from: <m3@client.test>")
    assert r.code == 450, r
    # The session goes on.
    assert c.cmd("RSET").code == 250
    assert c.cmd("NOOP").code == 250
    assert time.monotonic() - start < 2, "too slow for a 2 s window: the test proves nothing"

    # A second session from the same address shares the count.
    c2 = connect(proxy.port, source="127.0.0.7")
    assert c2.greeting().code == 220
    c2.ehlo()
    assert c2.cmd("MAIL FROM:<n@client.test>").code == 450
    # Another address does not.
    c3 = connect(proxy.port, source="127.0.0.8")
    assert c3.greeting().code == 220
    c3.ehlo()
    assert c3.cmd("MAIL FROM:<o@client.test>").code == 250

    # After the window, mail is accepted again in the same session.
    harness.wait_for(lambda: time.monotonic() - start > 2.2, 5, what="the window to pass")
    assert c.cmd("MAIL FROM:<m4@client.test>").code == 250
    assert c.cmd("RCPT TO:<r4@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: y\r\n\r\nbody\r\n.\r\n")
    assert c.reply().code == 250
    got = aio_upstream.wait_messages(3)
    assert [m.mail_from for m in got] == ["m0@client.test", "m1@client.test", "m4@client.test"]
    assert len(proxy.events("limit-reached")) == 1
    m = harness.scrape_metrics(mport)
    assert m['smtp_tls_proxy_limit_refusals_total{limit="message-rate"}'] == 3
    assert m['smtp_tls_proxy_sessions_total{end="client-limit"}'] == 0
    for x in (c, c2, c3):
        assert x.cmd("QUIT").code == 221


GLOBAL_421 = re.compile(r"421 4\.7\.0 proxy\.test Too many connections, try again later")


def test_exempt_networks_and_the_reserve_at_the_global_cap(aio_upstream, make_proxy,
                                                           connect, proxy_bin):
    extra = limits(client_sessions=1, client_message_rate=1, exempt="127.0.0.0/30, ::1",
                   reserve=2)
    extra["proxy"] = {"max_connections": "4"}
    proxy = make_proxy(aio_upstream.addr, extra=extra)
    # 127.0.0.1 is exempt: two sessions and two messages each despite limits of one.
    exempt = [open_session(connect, proxy.port, "127.0.0.1") for _ in range(2)]
    for i, c in enumerate(exempt):
        c.ehlo()
        for j in range(2):
            assert c.cmd(f"MAIL FROM:<e{i}{j}@client.test>").code == 250
            assert c.cmd("RSET").code == 250
    # 127.0.0.9 is not: one session.
    held = [open_session(connect, proxy.port, "127.0.0.9")]
    expect_refused(proxy, connect, "127.0.0.9")
    # The fourth connection reaches max_connections; the fifth is over it.
    held.append(open_session(connect, proxy.port, "127.0.0.10"))
    first_refusal = time.monotonic()
    expect_refused(proxy, connect, "127.0.0.14", GLOBAL_421, end="too-many-connections")
    # At the cap, an exempt relay and the health check still get in (the reserve: 2).
    held.append(open_session(connect, proxy.port, "127.0.0.2"))
    health = subprocess.run([proxy_bin, "--health", "-c", proxy.ini_path],
                            capture_output=True, text=True, timeout=30)
    assert health.returncode == 0, health
    assert re.search(r"healthy: 127\.0\.0\.1:\d+: 220 ", health.stdout), health.stdout
    harness.wait_for(lambda: len(proxy.session_lines()) == 3, 5, what="the check's session")
    # With the reserve taken as well, exempt clients are refused too.
    held.append(open_session(connect, proxy.port, "127.0.0.3"))
    expect_refused(proxy, connect, "127.0.0.1", GLOBAL_421, end="too-many-connections")
    elapsed = time.monotonic() - first_refusal
    # At most one too-many-connections line a second, with the count since the last one.
    warns = proxy.events("too-many-connections")
    assert 1 <= len(warns) <= 1 + int(elapsed), warns
    assert warns[0]["refused"] == "1", warns
    for x in exempt + held:
        assert x.cmd("QUIT").code == 221


def test_proxy_protocol_clients_and_ipv6_prefix(aio_upstream, make_proxy, connect):
    """Behind a load balancer the header's address is the client, not the balancer, and
    IPv6 clients in one /64 are one client."""
    extra, mport = with_metrics(limits(client_sessions=2))
    extra["proxy"] = {"proxy_protocol": "v1"}
    proxy = make_proxy(aio_upstream.addr, extra=extra)

    def via_balancer(src):
        c = connect(proxy.port)  # every connection comes from the balancer, 127.0.0.1
        fam = "TCP6" if ":" in src else "TCP4"
        dst = "2001:db8::25" if ":" in src else "192.0.2.25"
        c.send(f"PROXY {fam} {src} {dst} 40000 25\r\n".encode())
        return c

    held = []
    for src in ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe"):
        c = via_balancer(src)
        assert c.greeting().code == 220
        held.append(c)
    # A third address in the same /64 is over the limit...
    c = via_balancer("2001:db8:1:2:abcd::7")
    r = c.greeting(timeout=5)
    assert LIMIT_421.fullmatch(line_of(r)), r
    c.wait_closed(5)
    # ...one in the next /64 is not, nor IPv4 clients behind the same balancer.
    for src in ("2001:db8:1:3::1", "192.0.2.7", "192.0.2.8", "192.0.2.8"):
        c = via_balancer(src)
        assert c.greeting().code == 220, src
        held.append(c)
    c = via_balancer("192.0.2.8")
    assert LIMIT_421.fullmatch(line_of(c.greeting(timeout=5)))
    warns = proxy.events("limit-reached")
    assert sorted(w["client"] for w in warns) == ["192.0.2.8:40000",
                                                  "[2001:db8:1:2:abcd::7]:40000"], warns
    assert harness.scrape_metrics(mport)[
        'smtp_tls_proxy_limit_refusals_total{limit="sessions"}'] == 2
    for c in held:
        assert c.cmd("QUIT").code == 221


@pytest.mark.skipif(not netns.is_root(), reason="needs root for network namespaces")
def test_ipv6_sources_in_one_prefix_count_together(topo, ns_servers, gw_proxy):
    """Real IPv6 sources (transparent interception in a gateway namespace): addresses in
    one /64 share the limit; another /64 and IPv4 clients do not."""
    topo.ip("client", "addr", "add", "2001:db8:1::11/64", "dev", "c-gw", "nodad")
    topo.ip("client", "addr", "add", "2001:db8:9::10/64", "dev", "c-gw", "nodad")
    topo.ip("gw", "addr", "add", "2001:db8:9::1/64", "dev", "gw-c", "nodad")
    topo.redirect(netns.PROXY_PORT)
    mx = ns_servers("2001:db8:2::25")
    mx4 = ns_servers("198.51.100.25")
    proxy = gw_proxy(extra=limits(client_sessions=2))

    def session(source):
        return netns.connect_from(topo, "client", "2001:db8:2::25", 25, source=source)

    held = [session("2001:db8:1::10"), session("2001:db8:1::11")]
    for c in held:
        assert c.greeting().code == 220
    mx.wait_connections(2)
    c = session("2001:db8:1::11")
    r = c.greeting(timeout=5)
    assert LIMIT_421.fullmatch(line_of(r)), r
    c.wait_closed(5)
    c = session("2001:db8:9::10")
    assert c.greeting().code == 220
    held.append(c)
    c = netns.connect_from(topo, "client", "198.51.100.25", 25, source="192.0.2.10")
    assert c.greeting().code == 220
    held.append(c)
    mx4.wait_connections(1)
    warns = proxy.events("limit-reached")
    assert [w["client"].rsplit(":", 1)[0] for w in warns] == ["[2001:db8:1::11]"], warns
    assert len(mx.connections) == 3  # the refused one never reached the MX
    for c in held:
        assert c.cmd("QUIT").code == 221
        c.close()


def proxy_rss_kib(proxy):
    with open(f"/proc/{proxy.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def flood(port, source, n, concurrency=100):
    """|n| connections from |source|; returns the first reply line of each."""
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(source, 0))
            try:
                return await asyncio.wait_for(reader.readline(), 20)
            finally:
                writer.close()

    return await asyncio.gather(*(one() for _ in range(n)))


def test_flood_from_one_address(aio_upstream, make_proxy, connect, monkeypatch):
    # ASan keeps freed memory in quarantine: without one, its RSS is comparable.
    monkeypatch.setenv("ASAN_OPTIONS",
                       os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0")
    extra, mport = with_metrics(limits(client_sessions=20))
    extra["log"] = {"level": "info"}
    proxy = make_proxy(aio_upstream.addr, extra=extra)
    held = [open_session(connect, proxy.port, "127.0.0.11") for _ in range(20)]
    deliver(proxy.port, "127.0.0.12", "before")
    rss_before = proxy_rss_kib(proxy)
    lines_before = len(proxy.stderr().splitlines())

    timings = []
    delivering = threading.Thread(
        target=lambda: timings.extend(deliver(proxy.port, "127.0.0.12", f"during{i}")
                                      for i in range(5)))
    delivering.start()
    replies = asyncio.run(flood(proxy.port, "127.0.0.11", 5000))
    delivering.join(60)
    assert not delivering.is_alive()

    assert len(replies) == 5000
    assert all(LIMIT_421.fullmatch(r.decode().rstrip("\r\n")) for r in replies), \
        {r for r in replies if not LIMIT_421.fullmatch(r.decode().rstrip("\r\n"))}
    # Other clients were served all along.
    assert len(timings) == 5 and max(timings) < 5, timings
    aio_upstream.wait_messages(6)
    # The log stays quiet: one limit-reached line, and the other client's sessions.
    new = proxy.stderr().splitlines()[lines_before:]
    assert len([x for x in new if " limit-reached " in x]) == 1, new[:20]
    assert len(new) <= 5 + 5, new[:20]
    # Memory is bounded: the refused connections are gone, nothing accumulates.
    m = harness.scrape_metrics(mport)
    assert m['smtp_tls_proxy_limit_refusals_total{limit="sessions"}'] == 5000
    harness.wait_for(lambda: harness.scrape_metrics(mport)[
        "smtp_tls_proxy_connections_current"] == 20, 10, what="the flood's connections to end")
    growth = proxy_rss_kib(proxy) - rss_before
    assert growth < 32 * 1024, f"RSS grew by {growth} KiB over 5000 refused connections"
    # The address is served again once under its limit.
    assert held[0].cmd("QUIT").code == 221
    held[0].wait_closed(5)
    harness.wait_for(lambda: harness.scrape_metrics(mport)[
        "smtp_tls_proxy_connections_current"] == 19, 10, what="a held session to end")
    open_session(connect, proxy.port, "127.0.0.11")


def rewrite_and_reload(proxy, sections):
    proxy.sections = sections
    with open(proxy.ini_path, "w") as f:
        f.write(harness.render_ini(sections))
    before = len(proxy.events("reloaded"))
    proxy.signal(signal.SIGHUP)
    harness.wait_for(lambda: len(proxy.events("reloaded")) > before, 10, what="reloaded")


def test_reload_applies_new_limits(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra=limits(client_sessions=2))
    held = [open_session(connect, proxy.port, "127.0.0.13") for _ in range(2)]
    expect_refused(proxy, connect, "127.0.0.13")

    # Raised: the counts are kept (2 open), so two more get in and the fifth is refused.
    rewrite_and_reload(proxy, harness.merge_sections(proxy.sections,
                                                     limits(client_sessions=4)))
    held += [open_session(connect, proxy.port, "127.0.0.13") for _ in range(2)]
    r = expect_refused(proxy, connect, "127.0.0.13")
    assert LIMIT_421.fullmatch(line_of(r)).group(1) == "4", r

    # Lowered below what is open: the open sessions go on and deliver; new ones wait
    # until the address is under the new limit.
    rewrite_and_reload(proxy, harness.merge_sections(proxy.sections,
                                                     limits(client_sessions=1)))
    expect_refused(proxy, connect, "127.0.0.13")
    for i, c in enumerate(held):
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<h{i}@client.test>").code == 250
        assert c.cmd(f"RCPT TO:<h{i}@upstream.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"held\r\n.\r\n")
        assert c.reply().code == 250
    aio_upstream.wait_messages(4)
    for c in held:
        assert c.cmd("QUIT").code == 221
        c.wait_closed(5)
    harness.wait_for(lambda: len([x for x in proxy.session_lines()
                                  if x.get("end") == "quit"]) == 4, 5, what="the QUITs")
    open_session(connect, proxy.port, "127.0.0.13")
    expect_refused(proxy, connect, "127.0.0.13")

    # Exempt after a reload: never limited.
    rewrite_and_reload(proxy, harness.merge_sections(proxy.sections,
                                                     limits(client_sessions=1,
                                                            exempt="127.0.0.13")))
    open_session(connect, proxy.port, "127.0.0.13")
