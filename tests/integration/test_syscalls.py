"""The shape of the proxy's writes, seen by strace on the real binary (issue 13).

A message's end and what the client pipelined after it (QUIT, the next MAIL) leave for the
upstream in one write, not two: one system call less per message, and no small segment of
its own for the end of data. Content that is not followed by anything still goes out
straight from the read buffer (tested by test_backpressure.py and the benchmark).
"""

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

import harness

pytestmark = pytest.mark.skipif(shutil.which("strace") is None or os.geteuid() != 0,
                                reason="needs strace and root (tests/install-deps)")

WRITE_RE = re.compile(r'^\d+\s+(?:write|sendmsg|writev)\((\d+), (.*)\) = (\d+)$')


def traced_writes(proxy, session):
    """Runs |session()| while strace records the proxy's writes; returns their data."""
    out = os.path.join(os.path.dirname(proxy.ini_path), "strace.txt")
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=write,writev,sendmsg",
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
    writes = []
    with open(out) as f:
        for line in f:
            m = WRITE_RE.match(line.strip())
            if m:
                hexes = re.findall(r"\\x([0-9a-f]{2})", m.group(2))
                writes.append(bytes(int(h, 16) for h in hexes))
    return writes


def pipelined_message(port, body, after):
    """EHLO, then MAIL, RCPT, DATA; the body with its end and |after| in one segment."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        f = c.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                assert line, "connection closed"
                if line[3:4] != b"-":
                    return line

        assert reply().startswith(b"220")
        c.sendall(b"EHLO client.test\r\n")
        assert reply().startswith(b"250")
        c.sendall(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@upstream.test>\r\nDATA\r\n")
        assert reply().startswith(b"250") and reply().startswith(b"250")
        assert reply().startswith(b"354")
        c.sendall(body + b".\r\n" + after)
        assert reply().startswith(b"250")
        if after.startswith(b"QUIT"):
            assert reply().startswith(b"221")


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
