"""Attacks through the shared store ([store] redis): a Redis that answers garbage, replies
nobody asked for, huge values, or values another (malicious or buggy) instance wrote.

README "Several instances": Redis is the authority when it answers, but "a client cannot
write to the store", sessions "never wait longer than timeout", and (DESIGN.md) bad input
"never crashes the process". Redis runs over plain TCP, so whoever is on that path, or
controls Redis, speaks for it. Each test asserts what must hold whatever Redis says: mail
still flows, the process survives and exits cleanly (run it with a Debug build for the
sanitizers). A test marked xfail(strict=True) with "BUG:" fails today.
"""

import os
import socket
import subprocess
import threading
import time

import pytest

import harness

REDIS_SERVER = "/usr/bin/redis-server"


class FakeRedis:
    """A RESP server on loopback: +PONG to PING, and to each GET what |answer|(key)
    returns (bytes, written as they are; None: no answer at all). |after_setup|: bytes sent
    right after the PONG, unasked. Records every command."""

    def __init__(self, answer=lambda key: b"$-1\r\n", after_setup=b""):
        self.answer = answer
        self.after_setup = after_setup
        self.commands = []
        self.conns = 0
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(0.1)
        self.port = self.ls.getsockname()[1]
        self.stop_ev = threading.Event()
        self.threads = []

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self):
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(5)
        self.ls.close()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns += 1
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, s):
        buf = b""
        s.settimeout(0.2)
        try:
            while not self.stop_ev.is_set():
                cmd, buf = self._command(s, buf)
                if cmd is None:
                    return
                self.commands.append(cmd)
                verb = cmd[0].upper()
                if verb == b"PING":
                    s.sendall(b"+PONG\r\n" + self.after_setup)
                elif verb == b"GET":
                    out = self.answer(cmd[1].decode())
                    if out is not None:
                        s.sendall(out)
                elif verb in (b"SET", b"DEL"):
                    s.sendall(b"+OK\r\n" if verb == b"SET" else b":1\r\n")
                else:
                    s.sendall(b"+OK\r\n")
        except OSError:
            pass
        finally:
            s.close()

    def _command(self, s, buf):
        """One RESP array of bulk strings (what hiredis sends)."""
        def need(n):
            nonlocal buf
            while len(buf) < n:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    if self.stop_ev.is_set():
                        raise OSError("stopping")
                    continue
                if not chunk:
                    raise OSError("closed")
                buf += chunk

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                need(len(buf) + 1)
            head, buf = buf.split(b"\r\n", 1)
            return head

        try:
            n = int(line()[1:])
            args = []
            for _ in range(n):
                size = int(line()[1:])
                need(size + 2)
                args.append(buf[:size])
                buf = buf[size + 2:]
            return args, buf
        except OSError:
            return None, buf


@pytest.fixture
def fake_redis():
    started = harness.Started()
    yield lambda **kw: started.add(FakeRedis(**kw).start())
    started.stop_all()


@pytest.fixture
def lenient_proxy(proxy_bin, tmp_path):
    """make_proxy whose exit checks run inside the test (checked()), so that a crash is
    the test's own failure (an xfail) and not a teardown error."""
    started = []

    def make(upstream, extra=None):
        port = harness.free_port()
        p = harness.Proxy(proxy_bin, str(tmp_path), harness.base_sections(
            [f"127.0.0.1:{port}"], upstream, extra), [port],
            name=f"proxy{len(started) + 1}")
        started.append(p)
        return p.start()

    yield make
    for p in started:
        p.kill()


def checked(proxy):
    """Still running, then exit 0 on SIGTERM without a sanitizer report."""
    alive = proxy.running()
    proxy.finish()
    assert alive, f"the proxy died during the test:\n{proxy.stderr()[-3000:]}"


def deliver(port, n=1, source=None):
    """|n| messages, one session each; returns the replies to the end of data."""
    out = []
    for i in range(n):
        c = harness.SmtpConn("127.0.0.1", port, source=source)
        try:
            assert c.greeting().code == 220
            assert c.ehlo().code == 250
            assert c.cmd("MAIL FROM:<a@client.test>").code == 250
            assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % i)
            out.append(c.reply().code)
            c.cmd("QUIT")
        finally:
            c.close()
    return out


def store_proxy(lenient_proxy, upstream, redis_url, **extra):
    sections = {"store": {"redis": redis_url, "timeout": "100ms"},
                "client_tls": {"starttls": "offer"},
                "upstream_tls": {"starttls": "may"}}
    return lenient_proxy(upstream, harness.merge_sections(sections, extra))


# ---- garbage answers -------------------------------------------------------------------

@pytest.mark.parametrize("reply", [
    b":1\r\n",                                        # an integer
    b"*2\r\n$1\r\na\r\n$1\r\nb\r\n",                  # an array
    b"-ERR nope\r\n",                                 # an error
    b"+cleartext\r\n",                                # a status, not a string
    b"$-7\r\n",                                       # a negative length
    b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",   # nested too deep
    b"$5\r\nhello world\r\n",                         # a length that lies
    b"!garbage\r\n",                                  # not RESP 2
    b"$20\r\n" + b"cleartext\0\0\0\0\0\0\0\0\0\0\0" + b"\r\n",          # NUL bytes
])
def test_garbage_answers_do_not_stop_the_mail(aio_upstream, lenient_proxy, fake_redis, reply):
    """Whatever Redis answers to GET, the messages go through, the proxy survives (hiredis
    may drop the connection and reconnect), and it exits cleanly."""
    redis = fake_redis(answer=lambda key: reply)
    proxy = store_proxy(lenient_proxy, aio_upstream.addr, redis.url)
    try:
        proxy.wait_event("store-connected")
        assert deliver(proxy.port, 3) == [250, 250, 250]
        assert len(aio_upstream.messages) == 3
    finally:
        checked(proxy)


def test_a_huge_value_is_not_kept(aio_upstream, lenient_proxy, fake_redis):
    """A 16 MiB value: read once, never a step name; mail flows and memory comes back."""
    big = b"x" * (16 << 20)
    redis = fake_redis(answer=lambda key: b"$%d\r\n%s\r\n" % (len(big), big))
    proxy = store_proxy(lenient_proxy, aio_upstream.addr, redis.url)
    try:
        proxy.wait_event("store-connected")
        assert deliver(proxy.port, 3) == [250, 250, 250]
    finally:
        checked(proxy)


def test_an_endless_value_is_cut_off(aio_upstream, lenient_proxy, fake_redis):
    """A bulk string announced as 2 GiB and streamed: sessions do not wait past [store]
    timeout, and the connection is dropped before the proxy has buffered gigabytes."""
    stop = threading.Event()

    def endless(key):
        return b"$2147483000\r\n" + b"y" * (4 << 20)

    redis = fake_redis(answer=endless)
    proxy = store_proxy(lenient_proxy, aio_upstream.addr, redis.url)
    try:
        proxy.wait_event("store-connected")
        t0 = time.monotonic()
        assert deliver(proxy.port, 2) == [250, 250]
        assert time.monotonic() - t0 < 5
        rss = int(open(f"/proc/{proxy.proc.pid}/status").read().split("VmRSS:")[1].split()[0])
        assert rss < 512 * 1024, f"RSS {rss} kB"
    finally:
        stop.set()
        checked(proxy)


def test_an_unsolicited_reply_does_not_crash(aio_upstream, lenient_proxy, fake_redis):
    """Redis (or anyone on the plain-TCP path to it) sends one reply more than was asked:
    "+OK" right after the PONG. hiredis 0.14's redisProcessCallbacks() finds no callback
    for it and, since the context is neither subscribed nor monitoring, assert()s: the
    proxy aborts, every session of every worker with it. The store must treat it as a
    protocol error of that connection (drop it, reconnect) and the mail go on."""
    redis = fake_redis(after_setup=b"+OK\r\n")
    proxy = store_proxy(lenient_proxy, aio_upstream.addr, redis.url)
    try:
        time.sleep(1)
        assert deliver(proxy.port, 2) == [250, 250]
    finally:
        checked(proxy)


# ---- values another instance wrote -------------------------------------------------------

def test_a_poisoned_client_key_only_hides_starttls(aio_upstream, lenient_proxy, fake_redis):
    """smtp-tls-proxy:client:<addr> = anything: the client is not offered STARTTLS (that is
    the store's authority), but nothing else changes: mail flows."""
    redis = fake_redis(answer=lambda key: b"$1\r\n1\r\n" if ":client:" in key else b"$-1\r\n")
    proxy = store_proxy(lenient_proxy, aio_upstream.addr, redis.url)
    try:
        proxy.wait_event("store-connected")
        c = harness.SmtpConn("127.0.0.1", proxy.port)
        assert c.greeting().code == 220
        assert "STARTTLS" not in c.ehlo().text
        c.cmd("QUIT")
        c.close()
        assert deliver(proxy.port, 1) == [250]
    finally:
        checked(proxy)
