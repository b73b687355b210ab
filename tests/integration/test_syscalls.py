"""The shape of the proxy's system calls, seen by strace on the real binary (issue 13).

A message's end and what the client pipelined after it (QUIT, the next MAIL) leave for the
upstream in one write, not two: one system call less per message, and no small segment of
its own for the end of data. Content that is not followed by anything still goes out
straight from the read buffer (tested by test_backpressure.py and the benchmark). A TLS
session's last reply and its close_notify leave in one write. A session registers its two
sockets with epoll without a failed call: leg 2 is read from the moment it connects, so
libuv turns the connect's registration into the read's, and the half-close after the last
reply is a plain shutdown() with no epoll_ctl of its own.
"""

import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

import harness

pytestmark = pytest.mark.skipif(shutil.which("strace") is None or os.geteuid() != 0,
                                reason="needs strace and root (tests/install-deps)")

WRITE_RE = re.compile(r'^\d+\s+(?:write|sendmsg|writev)\((\d+), (.*)\) = (\d+)$')


def traced(proxy, session, calls):
    """Runs |session()| while strace records the proxy's |calls|; returns strace's lines."""
    out = os.path.join(os.path.dirname(proxy.ini_path), "strace.txt")
    if os.path.exists(out):
        os.unlink(out)
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=" + calls,
                               "-s", "65536", "-xx", "-o", out, "-p", str(proxy.proc.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.wait_for(lambda: os.path.exists(out), 10, what="strace to attach")
        time.sleep(0.5)
        session()
        time.sleep(0.5)
    finally:
        tracer.terminate()
        tracer.wait(10)
    with open(out) as f:
        return [line.strip() for line in f]


def write_data(line):
    """(fd, bytes) of a traced write, or None for another call."""
    m = WRITE_RE.match(line)
    if not m:
        return None
    hexes = re.findall(r"\\x([0-9a-f]{2})", m.group(2))
    return int(m.group(1)), bytes(int(h, 16) for h in hexes)


def traced_writes(proxy, session):
    """Runs |session()| while strace records the proxy's writes; returns their data."""
    lines = traced(proxy, session, "write,writev,sendmsg")
    return [w[1] for w in map(write_data, lines) if w is not None]


def pipelined_message(port, body, after):
    """EHLO, then MAIL, RCPT, DATA; the body with its end and |after| in one segment."""
    with harness.SmtpConn("127.0.0.1", port) as c:
        assert c.greeting().code == 220
        c.ehlo()
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@upstream.test>\r\nDATA\r\n")
        assert [r.code for r in c.replies(3)] == [250, 250, 354]
        c.send(body + b".\r\n" + after)
        assert c.reply().code == 250
        if after.startswith(b"QUIT"):
            assert c.reply().code == 221


def test_end_of_data_and_quit_leave_in_one_write(aio_upstream, make_proxy):
    proxy = make_proxy(aio_upstream.addr)
    body = b"Subject: one write\r\n\r\n" + b"line of text\r\n" * 200
    writes = traced_writes(proxy, lambda: pipelined_message(proxy.port, body, b"QUIT\r\n"))
    [m] = aio_upstream.wait_messages(1)
    assert m.content.endswith(b"line of text\r\n")
    ends = [w for w in writes if b"\r\n.\r\n" in w or w.startswith(b".\r\n")]
    assert len(ends) == 1, writes
    assert ends[0].endswith(b".\r\nQUIT\r\n"), ends
    # Nothing of the body went out in a write of its own before it.
    assert not [w for w in writes if w.startswith(b"line of text") and w is not ends[0]]


def test_end_of_data_and_next_mail_leave_in_one_write(aio_upstream, make_proxy):
    proxy = make_proxy(aio_upstream.addr)
    body = b"Subject: next\r\n\r\ntext\r\n"
    after = b"MAIL FROM:<a@client.test>\r\n"

    def session():
        pipelined_message(proxy.port, body, after)

    writes = traced_writes(proxy, session)
    ends = [w for w in writes if b"\r\n.\r\n" in w]
    assert len(ends) == 1 and ends[0].endswith(b".\r\n" + after), writes


def tls_records(data):
    """The (type, length) of each whole TLS record in |data|; asserts there is no rest."""
    records = []
    while data:
        assert len(data) >= 5, data
        length = int.from_bytes(data[3:5], "big")
        assert len(data) >= 5 + length, data
        records.append((data[0], length))
        data = data[5 + length:]
    return records


def test_last_tls_reply_and_close_notify_leave_in_one_write(aio_upstream, make_proxy,
                                                            front_certs):
    """The 221 and the close_notify behind it are one write, before the half-close; the
    client reads both (a clean end, not a truncation)."""
    cert, key = front_certs["ec"]
    proxy = make_proxy(aio_upstream.addr, extra={"client_tls": {
        "starttls": "offer", "certificate": cert, "key": key}})
    seen = {}
    quit_reply = []

    def session():
        with harness.SmtpConn("127.0.0.1", proxy.port) as c:
            assert c.greeting().code == 220
            c.ehlo()
            assert c.cmd("STARTTLS").code == 220
            c.start_tls(harness.tls_client_context(strict_eof=True), suppress_ragged_eofs=False)
            c.ehlo()
            r = c.cmd("QUIT")
            seen["quit"] = r.code
            quit_reply.append(r.raw)
            try:
                seen["rest"] = c.sock.recv(100)
            except ssl.SSLError as e:
                seen["rest"] = e

    lines = traced(proxy, session, "write,writev,sendmsg,shutdown")
    assert seen == {"quit": 221, "rest": b""}, seen
    [half_close] = [i for i, line in enumerate(lines) if "shutdown(" in line]
    fd = int(re.search(r"shutdown\((\d+),", lines[half_close]).group(1))
    assert "SHUT_WR" in lines[half_close], lines[half_close]
    client_writes = [write_data(line) for line in lines[:half_close]]
    client_writes = [w[1] for w in client_writes if w is not None and w[0] == fd]
    # The last write: two TLS 1.3 records (outer type application_data), the 221 and the
    # alert, each as long as its plaintext + the content type + AES-GCM's 16-byte tag.
    assert tls_records(client_writes[-1]) == [(0x17, len(quit_reply[0]) + 17), (0x17, 2 + 17)], \
        client_writes[-1]
    assert not [line for line in lines[half_close + 1:] if write_data(line) and
                write_data(line)[0] == fd], lines[half_close:]


EPOLL_RE = re.compile(r'^\d+\s+epoll_ctl\(\d+, (EPOLL_CTL_\w+), (\d+),.*\) = (.*)$')


def test_a_session_registers_its_sockets_without_a_failed_epoll_ctl(aio_upstream, make_proxy):
    """One cleartext session: each socket is added once and removed once; leg 2 changes
    once, from connecting to reading. No EEXIST round, no change for the half-close."""
    proxy = make_proxy(aio_upstream.addr)
    body = b"Subject: epoll\r\n\r\ntext\r\n"
    lines = traced(proxy, lambda: pipelined_message(proxy.port, body, b"QUIT\r\n"),
                   "epoll_ctl,shutdown,close,accept4,connect")
    [m] = aio_upstream.wait_messages(1)
    assert m.content.endswith(b"text\r\n")
    calls = [EPOLL_RE.match(line) for line in lines]
    calls = [(c.group(1), int(c.group(2)), c.group(3)) for c in calls if c]
    assert not [c for c in calls if c[2] != "0"], calls  # no EEXIST, no ENOENT
    accepted = [int(re.search(r"= (\d+)$", line).group(1)) for line in lines
                if line.split()[1].startswith("accept4(") and re.search(r"= \d+$", line)]
    connected = [int(re.search(r"connect\((\d+),", line).group(1)) for line in lines
                 if line.split()[1].startswith("connect(")]
    assert len(accepted) == 1 and len(connected) == 1, lines
    front, back = accepted[0], connected[0]
    assert [op for op, fd, _ in calls if fd == front] == ["EPOLL_CTL_ADD", "EPOLL_CTL_DEL"], calls
    assert [op for op, fd, _ in calls if fd == back] == \
        ["EPOLL_CTL_ADD", "EPOLL_CTL_MOD", "EPOLL_CTL_DEL"], calls
    assert len([line for line in lines if "shutdown(%d, SHUT_WR)" % front in line]) == 1, lines


def test_both_legs_have_nodelay_without_a_setsockopt_per_accept(aio_upstream, make_proxy):
    """TCP_NODELAY on both legs (a pipelined reply or command never waits for a delayed
    ACK); the client's leg has it from the listening socket, with no system call of its
    own."""
    proxy = make_proxy(aio_upstream.addr)
    found = {}

    def session():
        with harness.SmtpConn("127.0.0.1", proxy.port) as c:
            assert c.greeting().code == 220  # leg 2 is up: its greeting came through
            front = harness.proxy_socket(proxy.proc.pid, c.sock.getsockname())
            back = harness.proxy_socket(proxy.proc.pid, (aio_upstream.host, aio_upstream.port))
            for name, s in (("front", front), ("back", back)):
                assert s is not None, name
                found[name] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                s.close()
            assert c.cmd("QUIT").code == 221

    lines = traced(proxy, session, "setsockopt,accept4,connect")
    assert found == {"front": 1, "back": 1}, found
    accepted = [int(re.search(r"= (\d+)$", line).group(1)) for line in lines
                if line.split()[1].startswith("accept4(") and re.search(r"= \d+$", line)]
    assert len(accepted) == 1, lines
    assert not [line for line in lines if "setsockopt(%d," % accepted[0] in line], lines
