"""Features in combination: each pair of features that touch the same session must work
together, not only alone.

Step 0 of the session redesign: `proxy_protocol` with an upstream given by host name
(exactly config/examples/inbound-behind-load-balancer.ini). The name is resolved while
the session has just left the PROXY header state; the answer must still be taken.
"""

import pytest

import harness
from harness import SmtpConn


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_with_host_name_upstream(aio_upstream, make_proxy, version):
    """The PROXY header's client reaches an upstream named by host name, and delivers."""
    proxy = make_proxy(f"localhost:{aio_upstream.port}",
                       {"proxy": {"proxy_protocol": version},
                        "timeouts": {"connect": "5s"}})
    header = harness.proxy_header(version, "192.0.2.10", "198.51.100.25", 40001, 25)
    with SmtpConn("127.0.0.1", proxy.port) as c:
        c.send(header)
        assert c.greeting().code == 220
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd("RCPT TO:<b@upstream.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: combined\r\n\r\nhello\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    msgs = aio_upstream.wait_messages(1)
    assert msgs[0].content == b"Subject: combined\r\n\r\nhello\r\n"
    line = proxy.wait_session_line(client="192.0.2.10:40001")
    assert line["end"] == "quit"
