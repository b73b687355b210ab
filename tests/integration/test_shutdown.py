"""SIGTERM/SIGINT: stop accepting, let open sessions finish up to drain_timeout, exit 0."""

import signal
import socket
import time

import harness


def listener_closed(port):
    """True when a new connection is refused or closed without a greeting."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection sat in the backlog of a listener that has just closed.
        s.close()
        return True
    try:
        data = s.recv(1024)
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False  # connected but nobody answers: clients would hang there
    finally:
        s.close()
    # b"": closed at once. A 220 means this connection was accepted before the signal
    # was handled: not closed yet, poll again.
    return data == b""


def test_sigterm_drains_open_session(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra={"proxy": {"drain_timeout": "10s"}})
    c = connect(proxy.port)
    assert c.greeting().code == 220
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: drain\r\n\r\nfirst half\r\n")

    proxy.signal(signal.SIGTERM)
    harness.wait_for(lambda: listener_closed(proxy.port), 5,
                     what="the listener to stop accepting after SIGTERM")
    assert proxy.running(), "the proxy exited with a session still open"

    c.send(b"second half\r\n.\r\n")
    r = c.reply()
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221
    c.wait_closed(5)
    assert proxy.wait_exit(10) == 0
    proxy.check_clean(0)
    [msg] = aio_upstream.wait_messages(1)
    assert msg.content == b"Subject: drain\r\n\r\nfirst half\r\nsecond half\r\n"
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}")
    assert line["end"] == "quit" and line["messages"] == "1", line["_line"]


def test_drain_timeout_ends_idle_session(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra={"proxy": {"drain_timeout": "1s"}})
    c = connect(proxy.port)
    assert c.greeting().code == 220
    c.ehlo()
    start = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait_exit(10) == 0
    elapsed = time.monotonic() - start
    proxy.check_clean(0)
    assert elapsed <= 2.5, f"exit {elapsed:.2f}s after SIGTERM with drain_timeout = 1s"
    # The client was told (421) or simply closed; never left hanging.
    try:
        r = c.reply(timeout=2)
        assert r.code == 421, r
    except harness.Closed:
        pass
    line = proxy.wait_session_line(client=f"127.0.0.1:{c.local_port}", timeout=2)
    assert line["end"] == "shutdown", line["_line"]
    aio_upstream.wait_all_closed()


def test_drain_timeout_with_client_that_leaves_on_421(aio_upstream, make_proxy, connect):
    """A well-behaved client closes when told 421: then nothing is left to wait for."""
    proxy = make_proxy(aio_upstream.addr, extra={"proxy": {"drain_timeout": "1s"}})
    c = connect(proxy.port)
    assert c.greeting().code == 220
    c.ehlo()
    start = time.monotonic()
    proxy.signal(signal.SIGTERM)
    r = c.reply(timeout=5)
    c.close()
    assert r.startswith("421 4."), r
    told = time.monotonic() - start
    assert 0.8 <= told <= 2.0, f"421 came {told:.2f}s after SIGTERM, drain_timeout = 1s"
    assert proxy.wait_exit(10) == 0
    elapsed = time.monotonic() - start
    proxy.check_clean(0)
    assert elapsed <= 2.0, f"exit {elapsed:.2f}s after SIGTERM with drain_timeout = 1s"


def test_sigterm_without_sessions_exits_promptly(aio_upstream, make_proxy):
    proxy = make_proxy(aio_upstream.addr)
    start = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait_exit(10) == 0
    assert time.monotonic() - start < 2.0
    proxy.check_clean(0)


def test_sigint_is_like_sigterm(aio_upstream, make_proxy, connect):
    proxy = make_proxy(aio_upstream.addr, extra={"proxy": {"drain_timeout": "10s"}})
    c = connect(proxy.port)
    assert c.greeting().code == 220
    proxy.signal(signal.SIGINT)
    harness.wait_for(lambda: listener_closed(proxy.port), 5, what="listener closed")
    assert c.cmd("NOOP").code == 250  # the open session still works
    assert c.cmd("QUIT").code == 221
    c.wait_closed(5)
    assert proxy.wait_exit(10) == 0
    proxy.check_clean(0)
