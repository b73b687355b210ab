"""Learning clients whose leg-1 TLS handshake fails (issue 3).

A client address whose handshake fails (alert, protocol or cipher mismatch, garbage after
the 220, a reset or a timeout during the handshake) is remembered for learn_ttl: while it
is, the EHLO reply to that address has no STARTTLS (so its retry goes through in cleartext)
and a STARTTLS from it gets "454 4.7.0". Other addresses still see STARTTLS. Clients come
from several loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux routes 127/8 to lo).
"""

import re
import smtplib
import ssl
import time

import pytest

import harness
from harness import client_tls_extra, starttls_lines

BODY = b"Subject: retry in cleartext\r\n\r\nlearned, so no STARTTLS this time\r\n"

# One config serves every kind of failure: TLS 1.2 at least, one TLS 1.2 cipher, a short
# handshake timeout. TLS 1.3 clients (the default) are unaffected by "ciphers".
FAILING_CONFIG = {
    "min_protocol": "TLSv1.2",
    "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384",
}
HANDSHAKE_TIMEOUT = {"timeouts": {"tls_handshake": "1s"}}


def addr_re(source):
    """client=... in a log line: the address, with or without a port."""
    return re.compile(re.escape(source) + r"(:\d+)?")


def learning_proxy(make_proxy, upstream, front_certs, **client_tls):
    keys = dict(FAILING_CONFIG)
    keys.update(client_tls)
    return make_proxy(upstream.addr,
                      extra=harness.merge_sections(client_tls_extra([front_certs["ec"]], **keys),
                                                   HANDSHAKE_TIMEOUT))


def ehlo_from(connect, port, source):
    """A new session from |source|: greeting and EHLO; returns (conn, EHLO reply)."""
    c = connect(port, source=source)
    assert c.greeting().code == 220
    return c, c.ehlo()


def offered_to(connect, port, source):
    """True when a new session from |source| is offered STARTTLS (then QUIT)."""
    c, r = ehlo_from(connect, port, source)
    n = len(starttls_lines(r))
    assert n in (0, 1), r.raw
    assert c.cmd("QUIT").code == 221
    c.close()
    return n == 1


def start_failing_tls(connect, port, source):
    """EHLO (STARTTLS must be offered) and STARTTLS answered 220; returns the connection."""
    c, r = ehlo_from(connect, port, source)
    assert len(starttls_lines(r)) == 1, (source, r.raw)
    r = c.cmd("STARTTLS")
    assert r.startswith("220 2.0.0"), r
    return c


def fail_handshake(kind, connect, sclient, port, source):
    """Makes the TLS handshake of a new session from |source| fail in the way |kind|."""
    if kind == "sclient-tls11":
        # A real client limited to a protocol the proxy refuses (min_protocol = TLSv1.2).
        s = sclient(port, source=source, args=["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        assert s.finish() != 0, s.stderr()
        assert "CONNECTION ESTABLISHED" not in s.stderr(), s.stderr()
        return
    c = start_failing_tls(connect, port, source)
    if kind == "garbage":
        c.send(b"EHLO this is not a TLS ClientHello\r\n")
        c.wait_eof(10)
    elif kind == "timeout":
        start = time.monotonic()
        c.wait_eof(10)  # the proxy gives up after [timeouts] tls_handshake = 1s
        elapsed = time.monotonic() - start
        assert 0.8 <= elapsed <= 5.0, f"closed after {elapsed:.2f}s, tls_handshake = 1s"
    elif kind == "reset":
        # The start of a ClientHello record, then a TCP reset.
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        c.reset()
    elif kind == "close":
        # The start of a ClientHello record, then a normal close (FIN).
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        c.close()
    elif kind == "close-after-220":
        c.close()
    elif kind in ("python-tls11", "cipher", "alert"):
        if kind == "python-tls11":
            ctx = harness.tls_client_context(minimum=ssl.TLSVersion.TLSv1_1,
                                             maximum=ssl.TLSVersion.TLSv1_1, seclevel0=True)
        elif kind == "cipher":
            ctx = harness.tls_client_context(maximum=ssl.TLSVersion.TLSv1_2,
                                             ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        else:
            # Verifying against the system CAs: the self-signed certificate is rejected and
            # the client sends an alert (the classic sendmail case).
            ctx = harness.tls_client_context(verify=True)
        with pytest.raises(ssl.SSLError):
            c.start_tls(ctx, server_hostname="ec.proxy.test")
        c.close()
    else:
        raise ValueError(kind)


def deliver_cleartext(c):
    assert c.cmd("MAIL FROM:<retry@client.test>").code == 250
    assert c.cmd("RCPT TO:<rcpt@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(BODY + b".\r\n")
    assert c.reply().code == 250


FAILURES = ["garbage", "sclient-tls11", "python-tls11", "cipher", "alert", "reset", "close",
            "close-after-220", "timeout"]


@pytest.mark.parametrize("kind", FAILURES)
def test_failed_handshake_is_learned_per_address(aio_upstream, make_proxy, front_certs, connect,
                                                 sclient, kind):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs)
    failing, other = "127.0.0.2", "127.0.0.3"
    assert offered_to(connect, proxy.port, failing)

    fail_handshake(kind, connect, sclient, proxy.port, failing)
    failed = proxy.wait_event("front-tls-failed", client=addr_re(failing))
    assert failed.get("reason"), failed["_line"]
    proxy.wait_event("front-tls-learned", client=addr_re(failing))

    # The retry from the same address: no STARTTLS, STARTTLS refused with 454, and the
    # message goes through in cleartext.
    c, r = ehlo_from(connect, proxy.port, failing)
    assert starttls_lines(r) == [], r.raw
    others = [line for line in r.lines[1:] if line.upper() != "STARTTLS"]
    assert len(others) >= 1, r.raw  # the upstream's capabilities are still there
    r = c.cmd("STARTTLS")
    assert r.startswith("454 4.7.0"), r
    deliver_cleartext(c)
    assert c.cmd("QUIT").code == 221
    c.wait_closed()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == BODY
    hidden = proxy.wait_session_line(client=f"{failing}:{c.local_port}")
    assert hidden["starttls"] == "hidden", hidden["_line"]
    assert hidden["front_tls"] == "none", hidden["_line"]

    # The failed session's own line.
    failed_line = harness.wait_for(
        lambda: [f for f in proxy.session_lines()
                 if f.get("client", "").startswith(failing + ":") and
                 f.get("starttls") == "failed"],
        10, what="the failed session's line")[0]
    assert failed_line["front_tls"] == "none" or failed_line["front_tls"].startswith("TLS"), \
        failed_line["_line"]
    # "failed (with BoringSSL's reason)": README names the field front_tls_error.
    assert failed_line.get("front_tls_error"), failed_line["_line"]

    # Another address is unaffected: offered, and its TLS works.
    c, r = ehlo_from(connect, proxy.port, other)
    assert len(starttls_lines(r)) == 1, r.raw
    c.starttls()
    assert c.tls_version() == "TLSv1.3"
    r = c.ehlo()
    assert starttls_lines(r) == [], r.raw
    assert c.cmd("QUIT").code == 221
    assert aio_upstream.starttls_commands == 0
    # Every upstream connection, the failed session's included, was closed.
    aio_upstream.wait_all_closed()


def test_learned_address_is_offered_again_after_the_ttl(aio_upstream, make_proxy, front_certs,
                                                        connect, sclient):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs, learn_ttl="3s")
    failing, other = "127.0.0.2", "127.0.0.3"
    start = time.monotonic()
    fail_handshake("garbage", connect, sclient, proxy.port, failing)
    proxy.wait_event("front-tls-learned", client=addr_re(failing))
    assert not offered_to(connect, proxy.port, failing)
    assert time.monotonic() - start < 2.5, "too slow to observe the learned state"
    assert offered_to(connect, proxy.port, other)

    # Offered again once the TTL has passed (and not before).
    harness.wait_for(lambda: offered_to(connect, proxy.port, failing), 10, interval=0.2,
                     what="STARTTLS offered again after learn_ttl")
    elapsed = time.monotonic() - start
    assert 2.9 <= elapsed <= 7.0, f"offered again after {elapsed:.2f}s, learn_ttl = 3s"
    # And a handshake from there works now.
    c = start_failing_tls(connect, proxy.port, failing)
    c.start_tls()
    assert c.ehlo().code == 250
    assert c.cmd("QUIT").code == 221


def test_sclient_retry_as_smtplib_goes_through_in_cleartext(aio_upstream, make_proxy,
                                                            front_certs, connect, sclient):
    """The story of the issue: a client fails the handshake; its retry from the same
    address sees no STARTTLS and delivers (smtplib does STARTTLS only when offered)."""
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs)
    fail_handshake("sclient-tls11", connect, sclient, proxy.port, "127.0.0.6")
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.6"))
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.test", timeout=30,
                      source_address=("127.0.0.6", 0)) as s:
        s.ehlo()
        assert not s.has_extn("starttls"), s.esmtp_features
        assert s.sendmail("retry@client.test", ["rcpt@upstream.test"], BODY) == {}
        s.quit()
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == BODY


def test_never_offer_to(aio_upstream, make_proxy, front_certs, connect):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs,
                           never_offer_to="127.0.0.4/31, 192.0.2.0/24")
    for source in ("127.0.0.4", "127.0.0.5"):
        c, r = ehlo_from(connect, proxy.port, source)
        assert starttls_lines(r) == [], (source, r.raw)
        r = c.cmd("STARTTLS")
        assert r.startswith("454 4.7.0"), (source, r)
        deliver_cleartext(c)
        assert c.cmd("QUIT").code == 221
        c.wait_closed()
        line = proxy.wait_session_line(client=f"{source}:{c.local_port}")
        # README: "hidden" for a learned or listed client (the "not offered" values
        # leave listed clients open; the README decides).
        assert line["starttls"] == "hidden", line["_line"]
    for source in ("127.0.0.1", "127.0.0.6"):
        assert offered_to(connect, proxy.port, source), source
    assert len(aio_upstream.wait_messages(2)) == 2
    assert "front-tls-learned" not in proxy.stderr()


def test_always_offer_to_is_never_learned(aio_upstream, make_proxy, front_certs, connect,
                                          sclient):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs,
                           always_offer_to="127.0.0.8/30")
    fail_handshake("garbage", connect, sclient, proxy.port, "127.0.0.9")
    proxy.wait_event("front-tls-failed", client=addr_re("127.0.0.9"))
    # Outside the list, the same failure is learned.
    fail_handshake("garbage", connect, sclient, proxy.port, "127.0.0.12")
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.12"))
    assert offered_to(connect, proxy.port, "127.0.0.9")
    assert not offered_to(connect, proxy.port, "127.0.0.12")
    assert not [f for f in proxy.events("front-tls-learned")
                if addr_re("127.0.0.9").fullmatch(f.get("client", ""))], proxy.stderr()
    # And TLS from the always-offered address still works.
    c = start_failing_tls(connect, proxy.port, "127.0.0.9")
    c.start_tls()
    assert c.ehlo().code == 250
    assert c.cmd("QUIT").code == 221


def test_learn_failures_off(aio_upstream, make_proxy, front_certs, connect, sclient):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs, learn_failures="off")
    fail_handshake("garbage", connect, sclient, proxy.port, "127.0.0.2")
    proxy.wait_event("front-tls-failed", client=addr_re("127.0.0.2"))
    assert offered_to(connect, proxy.port, "127.0.0.2")
    assert "front-tls-learned" not in proxy.stderr()


def test_learn_max_entries_evicts_the_oldest(aio_upstream, make_proxy, front_certs, connect,
                                             sclient):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs, learn_max_entries="1")
    fail_handshake("garbage", connect, sclient, proxy.port, "127.0.0.2")
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.2"))
    assert not offered_to(connect, proxy.port, "127.0.0.2")
    fail_handshake("garbage", connect, sclient, proxy.port, "127.0.0.3")
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.3"))
    assert not offered_to(connect, proxy.port, "127.0.0.3")
    assert offered_to(connect, proxy.port, "127.0.0.2"), "the oldest entry was not evicted"


def test_successful_handshake_is_not_learned(aio_upstream, make_proxy, front_certs, connect):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs)
    c = start_failing_tls(connect, proxy.port, "127.0.0.2")
    c.start_tls()
    assert c.ehlo().code == 250
    assert c.cmd("QUIT").code == 221
    c.wait_eof()
    assert offered_to(connect, proxy.port, "127.0.0.2")
    assert "front-tls-failed" not in proxy.stderr()
    assert "front-tls-learned" not in proxy.stderr()


def test_learned_failure_is_shared_by_all_workers(aio_upstream, make_proxy, front_certs,
                                                  connect, sclient):
    """Four event loops share the listening port (SO_REUSEPORT spreads connections by
    their source port): whichever loop saw the failure, every loop hides STARTTLS."""
    proxy = make_proxy(aio_upstream.addr,
                       extra=harness.merge_sections(
                           client_tls_extra([front_certs["ec"]], **FAILING_CONFIG),
                           {"proxy": {"workers": "4"}}))
    fail_handshake("garbage", connect, sclient, proxy.port, "127.0.0.2")
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.2"))
    offers = [offered_to(connect, proxy.port, "127.0.0.2") for _ in range(16)]
    assert offers == [False] * 16, offers
    assert all(offered_to(connect, proxy.port, "127.0.0.3") for _ in range(8))


@pytest.mark.skipif(not harness.ipv6_loopback_available(),
                    reason="::1 is not configured on this machine")
def test_learning_and_lists_over_ipv6(aio_upstream, make_proxy, front_certs, connect, sclient):
    v4, v6 = harness.free_port(), harness.free_port("::1")
    proxy = make_proxy(aio_upstream.addr,
                       listen=[f"127.0.0.1:{v4}", f"[::1]:{v6}"],
                       extra=client_tls_extra([front_certs["ec"]], never_offer_to="::1/128"))
    c = connect(v6, host="::1")
    c.greeting()
    r = c.ehlo()
    assert starttls_lines(r) == [], r.raw
    assert c.cmd("STARTTLS").startswith("454 4.7.0")
    assert c.cmd("QUIT").code == 221
    # IPv4 clients are still offered STARTTLS; a failure from one is learned for it only.
    assert offered_to(connect, v4, "127.0.0.2")
    fail_handshake("garbage", connect, sclient, v4, "127.0.0.2")
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.2"))
    assert not offered_to(connect, v4, "127.0.0.2")
    assert offered_to(connect, v4, "127.0.0.3")


def test_learning_an_ipv6_client(aio_upstream, make_proxy, front_certs, connect):
    if not harness.ipv6_loopback_available():
        pytest.skip("::1 is not configured on this machine")
    v6 = harness.free_port("::1")
    proxy = make_proxy(aio_upstream.addr, listen=[f"[::1]:{v6}"],
                       extra=client_tls_extra([front_certs["ec"]]))
    c = connect(v6, host="::1")
    c.greeting()
    assert len(starttls_lines(c.ehlo())) == 1
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.send(b"garbage, not TLS\r\n")
    c.wait_eof(10)
    proxy.wait_event("front-tls-learned", client=re.compile(r"\[?::1\]?(:\d+)?"))
    c = connect(v6, host="::1")
    c.greeting()
    assert starttls_lines(c.ehlo()) == []
    assert c.cmd("QUIT").code == 221


def test_learn_memory_keeps_the_newest_entries(aio_upstream, make_proxy, front_certs,
                                               connect, sclient):
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs, learn_max_entries="3")
    sources = [f"127.0.0.{i}" for i in range(2, 8)]
    for source in sources:
        fail_handshake("garbage", connect, sclient, proxy.port, source)
        proxy.wait_event("front-tls-learned", client=addr_re(source))
    offered = {source: offered_to(connect, proxy.port, source) for source in sources}
    assert offered == {"127.0.0.2": True, "127.0.0.3": True, "127.0.0.4": True,
                       "127.0.0.5": False, "127.0.0.6": False, "127.0.0.7": False}, offered


def test_learned_failures_survive_sighup(aio_upstream, make_proxy, front_certs, connect,
                                         sclient):
    """SIGHUP re-reads certificate files; what was learned stays learned."""
    proxy = learning_proxy(make_proxy, aio_upstream, front_certs)
    fail_handshake("garbage", connect, sclient, proxy.port, "127.0.0.2")
    proxy.wait_event("front-tls-learned", client=addr_re("127.0.0.2"))
    assert not offered_to(connect, proxy.port, "127.0.0.2")
    proxy.reload("front-tls-reloaded")
    assert proxy.running()
    assert not offered_to(connect, proxy.port, "127.0.0.2")
    assert offered_to(connect, proxy.port, "127.0.0.3")
