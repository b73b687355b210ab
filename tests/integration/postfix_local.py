"""A real Postfix (Debian's `postfix` package) as an upstream on loopback, with a test-local
configuration: its own config_directory, queue_directory, data_directory, log file and
mailbox under a fresh directory /tmp/stp-postfix-<test pid>-XXXXXXXX, nothing from
/etc/postfix but the shared meta files (postfix-files, dynamicmaps.cf). The system's own
Postfix is never touched (nor started).

    pf = LocalPostfix(proxy_protocol=True).start()   # smtpd on 127.0.0.1:<free port>
    ...                                                # pf.addr, pf.port
    pf.wait_log(r"connect from \\S+\\[192\\.0\\.2\\.10\\]")
    [msg] = pf.wait_messages(1)                        # bytes as delivered (LF line ends)
    pf.stop()                                          # always: also at exit, on failure

What the instance is:
  - master.cf has one smtpd service, on 127.0.0.1:PORT only (and nothing listening
    anywhere else), plus the internal services a delivery needs; no chroot.
  - proxy_protocol=True: smtpd_upstream_proxy_protocol = haproxy (Postfix then requires a
    PROXY v1 or v2 header on every connection and logs the header's client address).
  - smtpd_authorized_xclient_hosts = 127.0.0.0/8 (|xclient_hosts|): XCLIENT is advertised
    to and accepted from loopback clients.
  - No DNS at all: smtpd_peername_lookup = no (clients are "unknown[ADDR]"), smtp DNS
    disabled, every non-local transport is "discard".
  - Mail for @DOMAIN (default mx.test) is delivered by virtual(8) into the Maildir
    DIR/mail/mailbox/ as uid/gid nobody; every other domain is refused (no relaying).
    Postfix prepends Return-Path, X-Original-To, Delivered-To and Received (which names the client
    address it saw); the rest is the message as received, with LF line ends.
  - maillog_file = DIR/maillog (postlogd): lines such as
      "... postfix/smtpd[123]: connect from unknown[192.0.2.10]"
      "... postfix/smtpd[123]: 4Xyz: client=unknown[192.0.2.10]"
  - stop(): `postfix -c DIR stop`, then any process still running with MAIL_CONFIG=DIR in
    its environment (every Postfix daemon of this instance has it) is killed by pid, then
    the directory is removed. Instances still running at interpreter exit are stopped too,
    and start() first stops and removes those of test processes that died without it.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

POSTFIX = "/usr/sbin/postfix"
NOBODY = 65534
DIR_PREFIX = "stp-postfix-"   # /tmp/stp-postfix-<pid of the test process>-XXXXXXXX

_running = []


def available():
    """None when Postfix can be run here, else a one-line reason."""
    if os.geteuid() != 0:
        return "needs root (Postfix's master runs as root)"
    if not os.access(POSTFIX, os.X_OK):
        return "Debian's postfix package is not installed (tests/install-deps installs it)"
    return None


def _free_port(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listening(port):
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


CLIENT_RE = re.compile(r"\b(?:connect from |client=)(\S*?)\[([^\]]+)\](?::(\d+))?")


class LocalPostfix:
    def __init__(self, proxy_protocol=False, xclient_hosts="127.0.0.0/8",
                 domain="mx.test", host="127.0.0.1", port=None, main_extra=None,
                 smtpd_options=None):
        self.proxy_protocol = proxy_protocol
        self.xclient_hosts = xclient_hosts
        self.domain = domain
        self.host = host
        self.port = port
        self.main_extra = dict(main_extra or {})
        self.smtpd_options = dict(smtpd_options or {})
        self.dir = None
        self.started = False

    # --- paths ------------------------------------------------------------------------

    @property
    def config_dir(self):
        return os.path.join(self.dir, "etc")

    @property
    def queue_dir(self):
        return os.path.join(self.dir, "spool")

    @property
    def maillog_path(self):
        return os.path.join(self.dir, "maillog")

    @property
    def maildir(self):
        return os.path.join(self.dir, "mail", "mailbox")

    @property
    def addr(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # --- configuration -------------------------------------------------------------------

    def _main_cf(self):
        keys = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": os.path.join(self.dir, "data"),
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "loopback-only",
            # IPv6 too: PROXY headers and XCLIENT may carry IPv6 client addresses.
            "inet_protocols": "all",
            "smtpd_banner": "$myhostname ESMTP test-local Postfix",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtpd_authorized_xclient_hosts": self.xclient_hosts,
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "local_header_rewrite_clients": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "default_transport": "discard",
            "relay_transport": "discard",
            "local_transport": "discard",
            "virtual_transport": "virtual",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": os.path.join(self.dir, "mail"),
            "virtual_mailbox_maps": "static:mailbox/",
            "virtual_uid_maps": f"static:{NOBODY}",
            "virtual_gid_maps": f"static:{NOBODY}",
            "virtual_minimum_uid": "100",
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": self.dir,
            "biff": "no",
            "readme_directory": "no",
            "html_directory": "no",
            "smtputf8_enable": "no",
            "default_process_limit": "20",
            "smtpd_error_sleep_time": "0",
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "notify_classes": "",
        }
        if self.proxy_protocol:
            keys["smtpd_upstream_proxy_protocol"] = "haproxy"
            keys["smtpd_upstream_proxy_timeout"] = "10s"
        keys.update(self.main_extra)
        return "".join(f"{k} = {v}\n" for k, v in keys.items())

    def _master_cf(self):
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        opts = "".join(f"  -o {k}={v}\n" for k, v in self.smtpd_options.items())
        # service type private unpriv chroot wakeup maxproc command
        return (f"{listen} inet n - n - - smtpd\n{opts}"
                "cleanup   unix  n - n - 0 cleanup\n"
                "qmgr      unix  n - n 300 1 qmgr\n"
                "rewrite   unix  - - n - - trivial-rewrite\n"
                "bounce    unix  - - n - 0 bounce\n"
                "defer     unix  - - n - 0 bounce\n"
                "trace     unix  - - n - 0 bounce\n"
                "verify    unix  - - n - 1 verify\n"
                "flush     unix  n - n 1000? 0 flush\n"
                "proxymap  unix  - - n - - proxymap\n"
                "error     unix  - - n - - error\n"
                "retry     unix  - - n - - error\n"
                "discard   unix  - - n - - discard\n"
                "virtual   unix  - n n - - virtual\n"
                "anvil     unix  - - n - 1 anvil\n"
                "scache    unix  - - n - 1 scache\n"
                "postlog   unix-dgram n - n - 1 postlogd\n")

    # --- life cycle ------------------------------------------------------------------------

    def _postfix(self, *args, check=True, timeout=60):
        env = dict(os.environ, MAIL_CONFIG=self.config_dir)
        p = subprocess.run([POSTFIX, "-c", self.config_dir, *args], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed ({p.returncode}):\n"
                               f"{p.stdout.decode(errors='replace')}\n{self.log()[-3000:]}")
        return p

    def start(self, timeout=30.0):
        reason = available()
        if reason:
            raise RuntimeError(f"cannot run Postfix: {reason}")
        if self.port is None:
            self.port = _free_port(self.host)
        # Not under pytest's 0700 tmp dirs: Postfix's unprivileged daemons (and virtual as
        # nobody) need to reach their files.
        cleanup_stale()
        self.dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        _running.append(self)
        try:
            os.makedirs(self.config_dir)
            os.makedirs(os.path.join(self.dir, "data"))
            os.makedirs(self.queue_dir)
            os.chown(os.path.join(self.dir, "data"), *_ids("postfix"))
            mail = os.path.join(self.dir, "mail")
            os.makedirs(mail)
            os.chown(mail, NOBODY, NOBODY)
            with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
                f.write(self._main_cf())
            with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
                f.write(self._master_cf())
            # The queue's subdirectories, owned as Postfix wants them.
            self._postfix("set-permissions", "create-missing")
            self._postfix("start")
            self.started = True
            deadline = time.monotonic() + timeout
            while not _listening(self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Postfix not listening on {self.addr} after {timeout}s:"
                                       f"\n{self.log()[-3000:]}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def pids(self):
        """Pids of the processes of this instance (MAIL_CONFIG=<our config dir>)."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if marker in env:
                out.append(int(entry))
        master = self.master_pid()
        if master is not None and master not in out and os.path.exists(f"/proc/{master}"):
            try:
                with open(f"/proc/{master}/cmdline", "rb") as f:
                    if b"master" in f.read():
                        out.append(master)
            except OSError:
                pass
        return out

    def stop(self, timeout=15.0):
        """Stops every process of this instance and removes its directory. Idempotent."""
        if self.dir is None:
            return
        try:
            if self.started:
                try:
                    self._postfix("stop", check=False, timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            deadline = time.monotonic() + timeout
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                left = self.pids()
                for pid in left:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                end = time.monotonic() + 5
                while self.pids() and time.monotonic() < end:
                    time.sleep(0.05)
            left = self.pids()
            if left:
                raise RuntimeError(f"Postfix processes still running: {left}")
        finally:
            self.started = False
            if self in _running:
                _running.remove(self)
            if os.environ.get("KEEP_POSTFIX_DIR"):
                print(f"postfix_local: kept {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- what it saw -------------------------------------------------------------------------

    def log(self):
        if self.dir is None:
            return ""
        try:
            with open(self.maillog_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        """Waits for a maillog line matching |pattern| (a regex); returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError(f"no Postfix log line matching {pattern!r} within "
                                     f"{timeout}s; maillog:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def clients(self):
        """The client addresses smtpd logged, in order: [(kind, name, addr), ...] where kind
        is "connect" ("connect from NAME[ADDR]") or "queue" ("QUEUEID: client=NAME[ADDR]",
        one per accepted message)."""
        out = []
        for line in self.log().splitlines():
            if "postfix/smtpd" not in line and "/smtpd[" not in line:
                continue
            m = CLIENT_RE.search(line)
            if m:
                kind = "connect" if "connect from" in m.group(0) else "queue"
                out.append((kind, m.group(1), m.group(2)))
        return out

    def messages(self):
        """Delivered messages, oldest first, as bytes (Maildir files)."""
        new = os.path.join(self.maildir, "new")
        try:
            names = os.listdir(new)
        except FileNotFoundError:
            return []
        paths = [os.path.join(new, n) for n in names]
        paths.sort(key=lambda p: (os.stat(p).st_mtime_ns, p))
        out = []
        for p in paths:
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    def wait_messages(self, n, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= n:
                return msgs
            if time.monotonic() >= deadline:
                raise AssertionError(f"{len(msgs)} message(s) delivered by Postfix, expected "
                                     f"{n}; maillog:\n{self.log()[-4000:]}")
            time.sleep(0.05)


def split_delivered(msg):
    """(prepended, original) for a message Postfix delivered: the Return-Path,
    X-Original-To, Delivered-To and Received header fields Postfix added, then the message
    as it was received (LF line ends)."""
    lines = msg.split(b"\n")
    i = 0
    added = ("return-path:", "x-original-to:", "delivered-to:", "received:")
    while i < len(lines):
        lower = lines[i].lower()
        if any(lower.startswith(a.encode()) for a in added):
            i += 1
            while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
                i += 1
            if lower.startswith(b"received:"):
                break  # Postfix adds one Received; the message's own follow
            continue
        break
    return b"\n".join(lines[:i]) + b"\n", b"\n".join(lines[i:])


def cleanup_stale():
    """Stops and removes instances left by a test process that no longer exists (one killed
    before its teardown): /tmp/stp-postfix-<pid>-* whose pid is gone."""
    for name in os.listdir("/tmp"):
        if not name.startswith(DIR_PREFIX):
            continue
        owner = name[len(DIR_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
            continue
        stale = LocalPostfix()
        stale.dir = os.path.join("/tmp", name)
        stale.started = os.path.exists(os.path.join(stale.config_dir, "main.cf"))
        try:
            stale.stop()
        except Exception:
            pass


def _ids(user):
    import pwd
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


@atexit.register
def _stop_all():
    for pf in list(_running):
        try:
            pf.stop()
        except Exception:
            pass
