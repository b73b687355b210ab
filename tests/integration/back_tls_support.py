"""Shared pieces of the leg-2 TLS tests (test_back_tls*.py, test_hostile.py,
test_metrics.py, test_combinations.py): the proxy's config for these tests, real clients
(smtplib, swaks), and checks on the fake upstream's records and on the session line. Their
fixtures (back_certs, make_tls_fake) are in conftest.py.
"""

import ipaddress
import re
import smtplib
import ssl
import time

import fake_tls_upstream as fake
import harness

FROM = "sender@client.test"
TO = "rcpt@upstream.test"
CLIENT_NAME = "client.test"

# CRLF line endings and a final CRLF, so smtplib sends it unchanged (dot-stuffed); lines
# starting with dots and 8-bit bytes check that the content arrives byte-identical.
BODY = (b"From: <sender@client.test>\r\n"
        b"To: <rcpt@upstream.test>\r\n"
        b"Subject: leg 2 TLS %s\r\n"
        b"\r\n"
        b"first line\r\n"
        b".a line starting with a dot\r\n"
        b"..two dots\r\n"
        b".\tdot and tab\r\n"
        b"8-bit: \xc3\xa9\xc3\xa8\r\n"
        b"last line\r\n")

REMEMBER_TTL = 2.0


def body(tag="1"):
    return BODY % tag.encode()


def back_extra(upstream_tls=None, policy=None, timeouts=None, client_tls=None):
    """The config these tests run with: leg 1 cleartext (strip), leg 2 STARTTLS may with
    cleartext fallback straight away, failures remembered for REMEMBER_TTL, short TLS
    handshake timeout."""
    extra = {
        "client_tls": {"starttls": "strip"},
        "upstream_tls": {"starttls": "may", "fallback": "on",
                         "fallback_steps": "cleartext",
                         "remember_failures": f"{int(REMEMBER_TTL)}s"},
        "timeouts": {"tls_handshake": "1s", "command": "10s", "connect": "2s"},
    }
    for section, keys in (("upstream_tls", upstream_tls), ("timeouts", timeouts),
                          ("client_tls", client_tls)):
        if keys:
            extra[section].update(keys)
    if policy is not None:
        # [upstream_policy] lets a policy key appear several times; the INI renderer takes
        # a dict, so |policy| is {"off": "a, b", "may": "...", "require": "..."}.
        extra["upstream_policy"] = dict(policy)
    return extra


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------

class SmtplibResult:
    def __init__(self):
        self.greeting = None
        self.ehlo = None
        self.features = {}
        self.mail = None
        self.rcpt = None
        self.data = None
        self.quit = None
        self.tls_version = None
        self.t_ehlo_sent = None
        self.t_ehlo_done = None

    def replies(self):
        return [self.greeting, self.ehlo, self.mail, self.rcpt, self.data, self.quit]

    def __repr__(self):
        return f"SmtplibResult({self.__dict__!r})"


def smtplib_send(port, msg_body, helo=False, client_starttls=False, timeout=20):
    """One whole session with python's smtplib: connect, EHLO (or HELO), optionally
    STARTTLS (leg 1), MAIL, RCPT, DATA, QUIT; every reply (code, text) is recorded."""
    r = SmtplibResult()
    s = smtplib.SMTP(local_hostname=CLIENT_NAME, timeout=timeout)
    s._host = "127.0.0.1"  # smtplib's starttls() passes it as server_hostname
    try:
        r.greeting = s.connect("127.0.0.1", port)
        r.t_ehlo_sent = time.monotonic()
        r.ehlo = s.helo() if helo else s.ehlo()
        r.t_ehlo_done = time.monotonic()
        r.features = dict(s.esmtp_features)
        if client_starttls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            code, text = s.starttls(context=ctx)
            assert code == 220, (code, text)
            r.tls_version = s.sock.version()
            r.ehlo = s.ehlo()
            r.features = dict(s.esmtp_features)
        r.mail = s.mail(FROM)
        r.rcpt = s.rcpt(TO)
        r.data = s.data(msg_body)
        r.quit = s.quit()
    finally:
        s.close()
    return r


def assert_normal_session(r, helo=False, caps=("pipelining", "8bitmime")):
    """The client saw only normal replies: 220, 250 (no STARTTLS on leg 1), 250, 250,
    250, 221; nothing the upstream said about TLS leaked to it."""
    assert r.greeting[0] == 220, r
    assert r.ehlo[0] == 250, r
    if not helo:
        assert "starttls" not in r.features, r
        for cap in caps:
            assert cap in r.features, r
    assert r.mail[0] == 250, r
    assert r.rcpt[0] == 250, r
    assert r.data[0] == 250, r
    assert r.quit[0] == 221, r
    for code, text in r.replies():
        assert b"injected" not in text and b"TLS handshake failed" not in text, r
        assert b"hello?" not in text, r


def run_swaks(port, data_path, extra=()):
    """harness.run_swaks with this module's envelope (FROM, TO, CLIENT_NAME)."""
    return harness.run_swaks(port, data_path, [TO], extra=extra, mail_from=FROM,
                             helo=CLIENT_NAME)


def assert_swaks_normal(rc, out):
    """swaks saw only normal replies: exit 0, no error marker, 220/250/354/250/221."""
    assert rc == 0, out[-3000:]
    assert "<** " not in out, out
    codes = [int(m) for m in re.findall(r"^<-  ([0-9]{3})[ -]", out, re.M)]
    assert codes and codes[0] == 220, out
    assert all(c in (220, 221, 250, 354) for c in codes), out
    assert "injected" not in out and "TLS handshake failed" not in out, out
    assert not re.search(r"^<-  250[ -]STARTTLS", out, re.M), out


# --------------------------------------------------------------------------------------
# Checks on the fake upstream's records and on the proxy's log
# --------------------------------------------------------------------------------------

def assert_delivered_once(up, msg_body, tls_version, since_conn=0, timeout=10.0):
    """Exactly one message reached the fake in the connections from |since_conn| on,
    byte-identical, with our envelope, over |tls_version| ("TLSv1.3", "TLSv1.2") or
    cleartext (None). Returns it."""
    def mine():
        return [m for c in up.conns()[since_conn:] for m in c.messages]

    fake._wait(lambda: len(mine()) >= 1, timeout, "the message at the fake", up)
    up.wait_all_closed(timeout)
    msgs = mine()
    assert len(msgs) == 1, f"{len(msgs)} deliveries:\n{up.describe()}"
    m = msgs[0]
    assert m.content == msg_body, (m.content, msg_body)
    assert m.mail_from.split(b" ")[0] == f"<{FROM}>".encode(), m.mail_from
    assert m.rcpts == [f"<{TO}>".encode()], m.rcpts
    assert m.tls_version == tls_version, f"over {m.tls_version}, expected {tls_version}:\n" \
                                         f"{up.describe()}"
    return m


def assert_proxy_commands_sane(up, since_conn=0):
    """On every leg-2 connection: EHLO/HELO carried the client's name; nothing was sent
    after STARTTLS before the handshake; STARTTLS at most once."""
    for c in up.conns()[since_conn:]:
        for line in c.commands:
            verb = line.split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                assert line[5:] == CLIENT_NAME.encode(), (line, c)
        assert c.after_starttls == b"", c
        assert c.starttls <= 1, c


def wait_session_lines(proxy, n, timeout=10.0):
    try:
        harness.wait_for(lambda: len(proxy.session_lines()) >= n, timeout,
                         what=f"{n} session line(s)")
    except AssertionError:
        raise AssertionError(f"fewer than {n} session lines; stderr:\n"
                             f"{proxy.stderr()[-5000:]}") from None
    return proxy.session_lines()


def assert_back_tls(fields, version):
    """The session line says leg 2 used TLS |version|, with a cipher."""
    assert fields.get("back_tls") == version, fields["_line"]
    assert fields.get("back_cipher"), fields["_line"]


def assert_back_cleartext(fields, reason_re):
    """The session line says leg 2 was cleartext, for a reason matching |reason_re|."""
    assert fields.get("back_tls") == "cleartext", fields["_line"]
    reason = fields.get("back_tls_reason", "")
    assert re.search(reason_re, reason, re.I), \
        f"back_tls_reason {reason!r} does not match {reason_re!r}: {fields['_line']}"


def failed_events(proxy):
    return proxy.events("back-tls-failed")



def identity_ok(conn, identity, client_addr):
    """True when the fake upstream's connection |conn| carried |identity| for the client
    |client_addr| before any client command.

    proxy-v1/proxy-v2: it began with a PROXY header of that version whose source is the
    client. xclient: the probe EHLO, then XCLIENT with ADDR= the client (IPV6:... for
    IPv6), before anything else; a connection that closed before the probe was answered
    carried nothing. none: neither a header nor XCLIENT.
    """
    header = getattr(conn, "header", None)
    cmds = conn.commands
    if identity == "none":
        return header is None and not any(c.upper().startswith(b"XCLIENT") for c in cmds)
    if identity in ("proxy-v1", "proxy-v2"):
        return (header is not None and header["version"] == int(identity[-1])
                and same_address(header["src"], client_addr))
    assert identity == "xclient", identity
    if not cmds:
        return True
    if len(cmds) < 2:
        return cmds[0].upper().startswith(b"EHLO")
    if not (cmds[0].upper().startswith(b"EHLO") and cmds[1].upper().startswith(b"XCLIENT")):
        return False
    addr = harness.xclient_attrs(cmds[1])["ADDR"]
    if addr.upper().startswith("IPV6:"):
        addr = addr[5:]
    return same_address(addr, client_addr)


def same_address(a, b):
    """True when the texts |a| and |b| name the same IP address (False when either is
    not an address)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False
