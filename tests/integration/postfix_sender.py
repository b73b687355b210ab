"""A real Postfix (Debian's `postfix` package) as the legacy SENDING MTA, inside a network
namespace of a netns.Topology: the outbound deployment's "legacy MTA whose port-25
connections the gateway intercepts".

    pf = SendingPostfix(topo, nameserver="198.51.100.53").start()  # in topo's client ns
    qid = pf.submit(["b@sts-enforce.test"], message_bytes)         # sendmail -C DIR
    pf.wait_status(qid, "b@sts-enforce.test", "deferred")          # its smtp(8) log line
    pf.queue()                                                     # postqueue -j
    pf.wait_queued([qid], "deferred")                              # moved there by qmgr
    pf.flush()                                                     # postqueue -f
    pf.stop()                                                      # always (also at exit)

It is a postfix_local.LocalPostfix (same directory layout under /tmp/stp-postfix-<pid>-*,
same main.cf base, same stop(), log(), wait_log(), stale-instance cleanup and atexit
stop), with these differences:

  - No smtpd at all: nothing listens. Mail is submitted with the sendmail(1) command
    (postdrop into the maildrop queue, pickup(8), cleanup(8)), and leaves through smtp(8):
    default_transport = relay_transport = smtp.
  - The master (and so every daemon) runs inside the namespace |role| of |topo|:
    `ip netns exec NS sh -c 'mount --bind DIR/resolv.conf /etc/resolv.conf && exec
    postfix -c DIR/etc start'`. `ip netns exec` gives the command a private mount
    namespace (slave of the host's), so the bind mount is seen by this Postfix only and
    disappears with its last process: nothing in /etc (not even /etc/netns) is touched.
  - DNS: smtp_dns_support_level = enabled, and the resolv.conf names |nameserver| (the
    policy world's nsd, authoritative for every test zone, so a stub resolver's
    recursive query is answered directly). Postfix looks up the recipient domain's MX and
    the MX host's address itself, as the legacy MTA of the deployment does; with
    |nameserver| None, DNS stays disabled and |transport| must route the mail.
  - |transport|: {domain: nexthop} as transport_maps = inline:{...} (e.g.
    {"x.test": "smtp:[198.51.100.101]:25"}), optional.
  - inet_protocols = ipv4 (|inet_protocols|): the address Postfix picks is deterministic.
  - smtp_tls_security_level = may (|tls_level|): opportunistic TLS, the usual setting of
    a legacy MTA (Debian's default); in the tests the proxy strips STARTTLS towards it.
    smtp_tls_loglevel = 1, so a TLS session would be logged ("TLS connection established").
  - No automatic retry during a test: minimal/maximal_backoff_time and queue_run_delay
    are an hour, so a deferred message stays in the deferred queue until flush()
    (postqueue -f, which makes the queue manager take every deferred message at once).
  - smtp_connection_cache_on_demand = no: every delivery attempt is a new SMTP session
    (a new intercepted connection), never a cached one.
  - myhostname = legacy.test (the EHLO name), myorigin = $myhostname.

Log lines this class parses (maillog_file = DIR/maillog):
    "... postfix/cleanup[12]: 4Abc: message-id=<ID>"
    "... postfix/smtp[34]: 4Abc: to=<b@x.test>, relay=mx.x.test[198.51.100.101]:25,
         delay=0.1, delays=..., dsn=4.7.10, status=deferred (host mx.x.test[...] said:
         450 4.7.10 ... (in reply to RCPT TO command))"
"""

import json
import os
import re
import subprocess
import tempfile
import time

import netns
import postfix_local

SENDMAIL = "/usr/sbin/sendmail"
POSTQUEUE = "/usr/sbin/postqueue"

STATUS_RE = re.compile(
    r"postfix/(?P<agent>smtp|error|discard|local|virtual|bounce)\[\d+\]: (?P<qid>[0-9A-Za-z]+): "
    r"to=<(?P<rcpt>[^>]*)>,(?: orig_to=<[^>]*>,)? relay=(?P<relay>[^,]*), "
    r".*?dsn=(?P<dsn>[0-9.]+), status=(?P<status>\w+) \((?P<text>.*)\)$", re.M)


def available():
    """None when a sending Postfix can run here, else a one-line reason."""
    reason = postfix_local.available()
    if reason:
        return reason
    for prog in (SENDMAIL, POSTQUEUE):
        if not os.access(prog, os.X_OK):
            return f"{prog} is missing (Debian's postfix package)"
    return None


class SendingPostfix(postfix_local.LocalPostfix):
    """See the module docstring."""

    def __init__(self, topo, role="client", nameserver=None, transport=None,
                 myhostname="legacy.test", inet_protocols="ipv4", tls_level="may",
                 main_extra=None):
        self.topo = topo
        self.role = role
        self.nameserver = nameserver
        self.transport = dict(transport or {})
        keys = {
            "myhostname": myhostname,
            "mydomain": myhostname,
            "inet_interfaces": "loopback-only",
            "inet_protocols": inet_protocols,
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP legacy test-local Postfix",
            "default_transport": "smtp",
            "relay_transport": "smtp",
            "smtp_dns_support_level": "enabled" if nameserver else "disabled",
            "smtp_tls_security_level": tls_level,
            "smtp_tls_loglevel": "1",
            "smtp_connection_cache_on_demand": "no",
            "smtp_connect_timeout": "10s",
            "queue_run_delay": "3600s",
            "minimal_backoff_time": "3600s",
            "maximal_backoff_time": "7200s",
            "virtual_mailbox_domains": "",
        }
        if self.transport:
            keys["transport_maps"] = "inline:{" + ", ".join(
                f"{{ {d} = {n} }}" for d, n in self.transport.items()) + "}"
        keys.update(main_extra or {})
        super().__init__(main_extra=keys)

    @property
    def resolv_conf(self):
        return os.path.join(self.dir, "resolv.conf")

    def _master_cf(self):
        # service type private unpriv chroot wakeup maxproc command; no inet service.
        return ("pickup    unix  n - n 60 1 pickup\n"
                "cleanup   unix  n - n - 0 cleanup\n"
                "qmgr      unix  n - n 300 1 qmgr\n"
                "tlsmgr    unix  - - n 1000? 1 tlsmgr\n"
                "rewrite   unix  - - n - - trivial-rewrite\n"
                "bounce    unix  - - n - 0 bounce\n"
                "defer     unix  - - n - 0 bounce\n"
                "trace     unix  - - n - 0 bounce\n"
                "verify    unix  - - n - 1 verify\n"
                "flush     unix  n - n 1000? 0 flush\n"
                "proxymap  unix  - - n - - proxymap\n"
                "smtp      unix  - - n - - smtp\n"
                "relay     unix  - - n - - smtp\n"
                "showq     unix  n - n - - showq\n"
                "error     unix  - - n - - error\n"
                "retry     unix  - - n - - error\n"
                "discard   unix  - - n - - discard\n"
                "anvil     unix  - - n - 1 anvil\n"
                "scache    unix  - - n - 1 scache\n"
                "postlog   unix-dgram n - n - 1 postlogd\n")

    def _env(self):
        return dict(os.environ, MAIL_CONFIG=self.config_dir)

    def start(self, timeout=30.0):
        reason = available()
        if reason:
            raise RuntimeError(f"cannot run Postfix: {reason}")
        postfix_local.cleanup_stale()
        self.dir = tempfile.mkdtemp(prefix=f"{postfix_local.DIR_PREFIX}{os.getpid()}-",
                                    dir="/tmp")
        os.chmod(self.dir, 0o755)
        postfix_local._running.append(self)
        try:
            os.makedirs(self.config_dir)
            os.makedirs(os.path.join(self.dir, "data"))
            os.makedirs(self.queue_dir)
            os.chown(os.path.join(self.dir, "data"), *postfix_local._ids("postfix"))
            with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
                f.write(self._main_cf())
            with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
                f.write(self._master_cf())
            with open(self.resolv_conf, "w") as f:
                if self.nameserver:
                    f.write(f"nameserver {self.nameserver}\noptions timeout:2 attempts:2\n")
            os.chmod(self.resolv_conf, 0o644)
            self._postfix("set-permissions", "create-missing")
            self.started = True
            script = ('mount --bind "$1" /etc/resolv.conf && '
                      'exec "$2" -c "$3" start')
            p = subprocess.run(["ip", "netns", "exec", self.topo.names[self.role], "sh", "-c",
                                script, "sh", self.resolv_conf, postfix_local.POSTFIX,
                                self.config_dir],
                               env=self._env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"postfix start in {self.role} failed ({p.returncode}):\n"
                                   f"{p.stdout.decode(errors='replace')}\n"
                                   f"{self.log()[-3000:]}")
            # `postfix start` returns once the master is up (master -w); check where it runs.
            deadline = time.monotonic() + timeout
            while self.master_pid() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no Postfix master after {timeout}s:\n"
                                       f"{self.log()[-3000:]}")
                time.sleep(0.05)
            want = netns.netns_inode(self.topo.names[self.role])
            got = netns.pid_netns_inode(self.master_pid())
            if got != want:
                raise RuntimeError(f"Postfix master in netns {got}, not {self.role} ({want})")
        except BaseException:
            self.stop()
            raise
        return self

    # --- using it ------------------------------------------------------------------------

    def submit(self, rcpts, message, sender="sender@legacy.test", timeout=20.0):
        """Submits |message| (bytes, LF or CRLF line ends) with sendmail(1) -i; returns its
        queue id, found by the message's Message-ID header in cleanup's log line."""
        m = re.search(rb"^Message-ID:\s*<([^>]+)>", message, re.M | re.I)
        assert m, "submit() needs a message with a Message-ID header"
        mid = m.group(1).decode()
        p = subprocess.run([SENDMAIL, "-C", self.config_dir, "-i", "-f", sender, "--",
                            *rcpts], input=message, env=self._env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"sendmail failed ({p.returncode}): "
                               f"{p.stdout.decode(errors='replace')}\n{self.log()[-3000:]}")
        found = self.wait_log(rf"postfix/cleanup\[\d+\]: (\w+): message-id=<{re.escape(mid)}>",
                              timeout)
        return found.group(1)

    def statuses(self, qid=None):
        """Every delivery status line, in order: dicts with agent, qid, rcpt, relay, dsn,
        status (sent, deferred, bounced, ...) and text (the parenthesised reason)."""
        out = [m.groupdict() for m in STATUS_RE.finditer(self.log())]
        return [s for s in out if qid is None or s["qid"] == qid]

    def wait_status(self, qid, rcpt, status=None, count=1, timeout=20.0):
        """Waits until |qid| has |count| status lines for |rcpt|; returns the last one. With
        |status|, the last one must have it (AssertionError otherwise, with the log)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [s for s in self.statuses(qid) if s["rcpt"].lower() == rcpt.lower()]
            if len(lines) >= count:
                last = lines[count - 1]
                if status is not None and last["status"] != status:
                    raise AssertionError(f"{qid} to {rcpt}: status={last['status']} "
                                         f"({last['text']}), expected {status}\n"
                                         f"maillog:\n{self.log()[-4000:]}")
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"no status line #{count} for {qid} to {rcpt} within "
                                     f"{timeout}s; maillog:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def _postqueue(self, *args, timeout=20.0):
        p = subprocess.run([POSTQUEUE, "-c", self.config_dir, *args], env=self._env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"postqueue {' '.join(args)} failed ({p.returncode}): "
                               f"{p.stderr.decode(errors='replace')}")
        return p.stdout.decode(errors="replace")

    def queue(self):
        """The queue as `postqueue -j` shows it: one dict per message (queue_name,
        queue_id, sender, recipients: [{address, delay_reason}], ...)."""
        return [json.loads(line) for line in self._postqueue("-j").splitlines() if line]

    def wait_queued(self, qids, queue_name="deferred", timeout=20.0):
        """Waits until the queue holds exactly the messages |qids|, all in |queue_name|
        (after a deferral the queue manager moves a message from the active queue to the
        deferred one a moment after smtp(8) logged it); returns the queue."""
        want = sorted(qids)
        deadline = time.monotonic() + timeout
        while True:
            queue = self.queue()
            if sorted(q["queue_id"] for q in queue) == want and \
                    all(q["queue_name"] == queue_name for q in queue):
                return queue
            if time.monotonic() >= deadline:
                raise AssertionError(f"queue is {queue}, expected {want} in {queue_name}; "
                                     f"maillog:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def flush(self):
        """`postqueue -f`: every queued message is tried again now."""
        self._postqueue("-f")


def strip_added_received(content):
    """(received_fields, rest) for a message as an MX received it from Postfix: the
    Received header fields Postfix prepended (each with its folded continuation lines),
    then the message as it was submitted."""
    lines = content.split(b"\r\n")
    fields = []
    i = 0
    while i < len(lines) and lines[i].lower().startswith(b"received:"):
        field = [lines[i]]
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            field.append(lines[i])
            i += 1
        fields.append(b"\r\n".join(field))
    return fields, b"\r\n".join(lines[i:])

