"""Back-pressure: a 100 MiB message towards an upstream that stops reading.

While the upstream reads nothing, the client must soon be unable to write (the proxy
stops reading the client) and the proxy's memory must not grow with the message. Once
the upstream reads again, the whole message arrives intact.
"""

import hashlib
import select
import threading

MIB = 1024 * 1024


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def body_chunk():
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-backpressure\r\n"
    return line * (MIB // len(line))


TOTAL = len(body_chunk()) * 100  # about 100 MiB of whole lines


def push_until_stuck(sock, chunk, limit, stuck_after=1.0):
    """Writes without blocking until |limit| bytes are sent or the socket stays unwritable
    for |stuck_after| seconds. Returns the bytes sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(chunk)
    pos = 0
    while sent < limit:
        try:
            n = sock.send(view[pos:])
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], stuck_after)
            if not writable:
                break  # the proxy stopped reading us
            continue
        sent += n
        pos = (pos + n) % len(chunk)
        if pos == 0:
            view = memoryview(chunk)
    sock.setblocking(True)
    return sent, pos


def test_memory_bounded_while_upstream_stalls(make_fake_upstream, make_proxy, connect):
    gate = threading.Event()
    up = make_fake_upstream(data_gate=gate, data_sink=True)
    proxy = make_proxy(up.addr)
    c = connect(proxy.port, timeout=60)
    assert c.greeting().code == 220
    c.ehlo()
    assert c.cmd("MAIL FROM:<big@client.test>").code == 250
    assert c.cmd("RCPT TO:<r@upstream.test>").code == 250
    assert c.cmd("DATA").code == 354
    rss_before = rss_bytes(proxy.proc.pid)

    chunk = body_chunk()
    sent, pos = push_until_stuck(c.sock, chunk, TOTAL)
    rss_stuck = rss_bytes(proxy.proc.pid)
    # Kernel socket buffers on the way hold some MiB; the proxy must not hold the rest.
    assert sent < 40 * MIB, f"the client wrote {sent / MIB:.1f} MiB into a stalled path"
    growth = rss_stuck - rss_before
    assert growth < 24 * MIB, f"proxy RSS grew by {growth / MIB:.1f} MiB while stalled"

    # The upstream reads again: the rest flows and the message arrives whole.
    gate.set()
    digest = hashlib.sha256()
    # Recompute what was sent so far, then send the rest.
    full, rest = divmod(sent, len(chunk))
    for _ in range(full):
        digest.update(chunk)
    digest.update(chunk[:rest])
    remaining = TOTAL - sent
    c.sock.settimeout(120)
    first = chunk[pos:pos + remaining] if remaining > 0 else b""
    c.sock.sendall(first)
    digest.update(first)
    remaining -= len(first)
    while remaining > 0:
        piece = chunk[:remaining]
        c.sock.sendall(piece)
        digest.update(piece)
        remaining -= len(piece)
    c.sock.sendall(b".\r\n")
    r = c.reply(timeout=120)
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221
    conn = up.wait_closed(timeout=30)
    [msg] = conn.messages
    assert msg.content == (TOTAL, digest.hexdigest())
