"""Network namespaces for the transparent-mode tests: a client, an interception gateway and
a server ("the MX"), joined by veth pairs, with real iptables/ip6tables rules in the gateway.

    client ns                         gw ns                              server ns
    c-gw 192.0.2.10/24     <veth>     gw-c 192.0.2.1/24
         2001:db8:1::10/64                 2001:db8:1::1/64
    default via 192.0.2.1 /           gw-s 198.51.100.1/24    <veth>    s-gw 198.51.100.25/24
                2001:db8:1::1              2001:db8:2::1/64                  198.51.100.26/24
                                      ip_forward = 1,                        2001:db8:2::25/64
                                      ipv6 forwarding = 1                    2001:db8:2::26/64
                                                                        default via 198.51.100.1 /
                                                                                    2001:db8:2::1

Only the documentation ranges (RFC 5737, RFC 3849) are used, and only inside the three
namespaces, which this module creates (named PREFIX-PID-N-client/gw/server) and deletes:
nothing is routed to or from the machine's own namespace. Rules live inside the gateway
namespace and die with it. Needs root (the tests skip without it).

Using it:

    with Topology() as topo:
        topo.redirect(10025)                  # or topo.tproxy(10025), topo.spoof_return_path()
        with topo.entered("server"):          # sockets made here belong to the server ns
            up = SomeServer("198.51.100.25", 25); up.start()   # threads started here too
        proxy = NsProxy(topo, "gw", binary, workdir, sections, [10025]).start()
        with topo.entered("client"):
            conn = harness.SmtpConn("198.51.100.25", 25)       # intercepted in gw

entered(NS) switches the calling thread's network namespace (setns(2)) for the duration of
the block and back: a socket keeps the namespace it was created in, and a thread started
inside the block stays in NS for its whole life. run()/popen() run commands there with
`ip netns exec`.

The rules (see redirect(), tproxy(), spoof_return_path()), all in the gateway:

  REDIRECT (original destination from SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST):
    iptables  -t nat -A PREROUTING -i gw-c -p tcp --dport 25 -j REDIRECT --to-ports P
    ip6tables -t nat -A PREROUTING -i gw-c -p tcp --dport 25 -j REDIRECT --to-ports P
  TPROXY (the listener has IP_TRANSPARENT; the accepted socket's local address is the
  original destination):
    iptables  -t mangle -A PREROUTING -i gw-c -p tcp --dport 25 -j TPROXY --on-port P \
              --tproxy-mark 1
    ip6tables -t mangle -A PREROUTING -i gw-c -p tcp --dport 25 -j TPROXY --on-port P \
              --tproxy-mark 1
    ip -4 rule add fwmark 1 lookup 100 ;  ip -4 route add local 0.0.0.0/0 dev lo table 100
    ip -6 rule add fwmark 1 lookup 100 ;  ip -6 route add local ::/0 dev lo table 100
  spoof return path (the proxy connects to the server FROM the client's address, with
  IP_TRANSPARENT; the server answers to the client's address, which the gateway would
  otherwise forward to the client namespace): mark the server's packets that belong to a
  transparent socket of the gateway and route marked packets locally (same rule/table):
    iptables  -t mangle -A PREROUTING -i gw-s -p tcp -m socket --transparent -j MARK --set-mark 1
    ip6tables -t mangle -A PREROUTING -i gw-s -p tcp -m socket --transparent -j MARK --set-mark 1
    ip -4 rule add fwmark 1 lookup 100 ;  ip -4 route add local 0.0.0.0/0 dev lo table 100
    ip -6 rule add fwmark 1 lookup 100 ;  ip -6 route add local ::/0 dev lo table 100
"""

import contextlib
import ctypes
import itertools
import os
import socket
import struct
import subprocess
import threading

import harness

CLIENT4, CLIENT6 = "192.0.2.10", "2001:db8:1::10"
GW_CLIENT4, GW_CLIENT6 = "192.0.2.1", "2001:db8:1::1"
GW_SERVER4, GW_SERVER6 = "198.51.100.1", "2001:db8:2::1"
SERVER4, SERVER6 = "198.51.100.25", "2001:db8:2::25"
SERVER4_B, SERVER6_B = "198.51.100.26", "2001:db8:2::26"

# Interface names, each inside its own namespace.
CLIENT_IF = "c-gw"
GW_CLIENT_IF = "gw-c"   # the gateway's client-side veth: where interception happens
GW_SERVER_IF = "gw-s"
SERVER_IF = "s-gw"

# Per family: the addresses of the topology.
ADDRS = {
    4: {"client": CLIENT4, "gw_client": GW_CLIENT4, "gw_server": GW_SERVER4,
        "server": SERVER4, "server_b": SERVER4_B},
    6: {"client": CLIENT6, "gw_client": GW_CLIENT6, "gw_server": GW_SERVER6,
        "server": SERVER6, "server_b": SERVER6_B},
}

# Socket options not all in python's socket module (Linux values).
IP_TRANSPARENT = 19           # SOL_IP
IPV6_TRANSPARENT = 75         # SOL_IPV6
SO_ORIGINAL_DST = 80          # SOL_IP, <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80     # SOL_IPV6, <linux/netfilter_ipv6/ip6_tables.h>
SOL_IP = 0
SOL_IPV6 = 41

TPROXY_MARK = 1
TPROXY_TABLE = 100

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

_seq = itertools.count(1)


def is_root():
    return os.geteuid() == 0


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def original_dst(sock):
    """The original destination (host, port) of an accepted socket whose connection was
    rewritten by REDIRECT/DNAT: SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6)."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack("!H", raw[2:4])[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


def set_transparent(sock):
    """IP_TRANSPARENT / IPV6_TRANSPARENT on |sock| (needs CAP_NET_ADMIN)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)


def listening_ports_of(pid):
    """TCP ports in LISTEN state in the network namespace of process |pid|."""
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            pass
    return ports


def netns_inode(name):
    return os.stat(f"/run/netns/{name}").st_ino


def pid_netns_inode(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError):
        return None


def _run(argv, check=True, timeout=30, input=None):
    p = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): "
                           f"{p.stderr.decode(errors='replace').strip()}")
    return p


def existing_namespaces():
    p = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in p.stdout.decode().splitlines() if line.strip()]


def cleanup_stale(prefix="stp"):
    """Deletes namespaces PREFIX-PID-... left by a test process PID that no longer exists
    (a run killed before its teardown). Only names of this module's pattern are touched."""
    for name in existing_namespaces():
        parts = name.split("-")
        if len(parts) == 4 and parts[0] == prefix and parts[1].isdigit():
            if not os.path.exists(f"/proc/{parts[1]}"):
                _run(["ip", "netns", "del", name], check=False)


class Topology:
    """client | gw | server namespaces (see the module docstring); a context manager that
    deletes everything it made on exit, also when building or the test fails."""

    ROLES = ("client", "gw", "server")

    def __init__(self, prefix="stp"):
        n = next(_seq)
        self.names = {role: f"{prefix}-{os.getpid()}-{n}-{role}" for role in self.ROLES}
        self.prefix = prefix
        self.procs = []
        self.rules = []            # every firewall/routing command applied, for reports
        self._fwmark_routing = False
        self._built = False

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self):
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()

    def build(self):
        cleanup_stale(self.prefix)
        for role in self.ROLES:
            _run(["ip", "netns", "add", self.names[role]])
        self._built = True
        for role in self.ROLES:
            self.ip(role, "link", "set", "lo", "up")
            # No duplicate address detection (link-local addresses included): usable at once.
            self.run(role, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                     "net.ipv6.conf.default.accept_dad=0")
        c, g, s = (self.names[r] for r in self.ROLES)
        # Each pair is created inside its namespaces: nothing ever appears in ours.
        _run(["ip", "-n", c, "link", "add", CLIENT_IF, "type", "veth",
              "peer", "name", GW_CLIENT_IF, "netns", g])
        _run(["ip", "-n", s, "link", "add", SERVER_IF, "type", "veth",
              "peer", "name", GW_SERVER_IF, "netns", g])
        self._addr("client", CLIENT_IF, f"{CLIENT4}/24", f"{CLIENT6}/64")
        self._addr("gw", GW_CLIENT_IF, f"{GW_CLIENT4}/24", f"{GW_CLIENT6}/64")
        self._addr("gw", GW_SERVER_IF, f"{GW_SERVER4}/24", f"{GW_SERVER6}/64")
        self._addr("server", SERVER_IF, f"{SERVER4}/24", f"{SERVER6}/64")
        self._addr("server", SERVER_IF, f"{SERVER4_B}/24", f"{SERVER6_B}/64")
        for role, ifname in (("client", CLIENT_IF), ("gw", GW_CLIENT_IF),
                             ("gw", GW_SERVER_IF), ("server", SERVER_IF)):
            self.ip(role, "link", "set", ifname, "up")
        self.ip("client", "-4", "route", "add", "default", "via", GW_CLIENT4)
        self.ip("client", "-6", "route", "add", "default", "via", GW_CLIENT6)
        self.ip("server", "-4", "route", "add", "default", "via", GW_SERVER4)
        self.ip("server", "-6", "route", "add", "default", "via", GW_SERVER6)
        self.run("gw", "sysctl", "-qw", "net.ipv4.ip_forward=1",
                 "net.ipv6.conf.all.forwarding=1")
        self._wait_ready()

    def _addr(self, role, ifname, v4, v6):
        self.ip(role, "addr", "add", v4, "dev", ifname)
        # nodad: usable at once, not after duplicate address detection.
        self.ip(role, "-6", "addr", "add", v6, "dev", ifname, "nodad")

    def _wait_ready(self, timeout=10.0):
        """Waits until every veth has its carrier (state UP) and no global address is
        tentative."""
        links = (("client", CLIENT_IF), ("gw", GW_CLIENT_IF), ("gw", GW_SERVER_IF),
                 ("server", SERVER_IF))

        def ready():
            for role, ifname in links:
                out = self.ip(role, "-o", "link", "show", "dev", ifname).stdout.decode()
                if "state UP" not in out:
                    return False
            for role in self.ROLES:
                out = self.ip(role, "-6", "addr", "show", "tentative", "scope", "global").stdout
                if out.strip():
                    return False
            return True
        harness.wait_for(ready, timeout, what="veth links up and IPv6 addresses usable")

    def teardown(self):
        """Stops the processes started with popen() and deletes the namespaces (the rules
        and interfaces inside die with them). Safe to call more than once."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []
        errors = []
        present = set(existing_namespaces())
        for role in self.ROLES:
            name = self.names[role]
            if name in present:
                p = _run(["ip", "netns", "del", name], check=False)
                if p.returncode != 0:
                    errors.append(p.stderr.decode(errors="replace"))
        self._built = False
        left = set(existing_namespaces()) & set(self.names.values())
        if left or errors:
            raise RuntimeError(f"namespaces not deleted: {sorted(left)} {errors}")

    # --- running things inside -----------------------------------------------------------

    def ip(self, role, *args, check=True):
        return _run(["ip", "-n", self.names[role], *args], check=check)

    def run(self, role, *argv, check=True, timeout=30, input=None):
        """Runs |argv| in namespace |role| (`ip netns exec`); returns the CompletedProcess
        (stdout/stderr captured). Raises RuntimeError on a non-zero status when |check|."""
        return _run(["ip", "netns", "exec", self.names[role], *argv], check=check,
                    timeout=timeout, input=input)

    def popen(self, role, argv, **kwargs):
        """Starts |argv| in namespace |role|; the process is stopped at teardown. Its pid is
        the command's own (`ip netns exec` execs it)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.names[role], *argv], **kwargs)
        self.procs.append(p)
        return p

    @contextlib.contextmanager
    def entered(self, role):
        """The calling thread runs in namespace |role| inside the block (setns(2))."""
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            there = os.open(f"/run/netns/{self.names[role]}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(there)
                try:
                    yield self
                finally:
                    _setns(here)
            finally:
                os.close(there)
        finally:
            os.close(here)

    def socket(self, role, family=socket.AF_INET, type=socket.SOCK_STREAM):
        """A new socket belonging to namespace |role|."""
        with self.entered(role):
            return socket.socket(family, type)

    # --- firewall rules in the gateway ---------------------------------------------------

    def _rule(self, *argv):
        self.rules.append(" ".join(argv))
        self.run("gw", *argv)

    def redirect(self, port, dport=25):
        """REDIRECT: the client side's TCP connections to port |dport| go to local |port|."""
        for ipt in ("iptables", "ip6tables"):
            self._rule(ipt, "-t", "nat", "-A", "PREROUTING", "-i", GW_CLIENT_IF, "-p", "tcp",
                       "--dport", str(dport), "-j", "REDIRECT", "--to-ports", str(port))

    def _fwmark_local_routing(self):
        if self._fwmark_routing:
            return
        for fam, anyaddr in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
            self._rule("ip", fam, "rule", "add", "fwmark", str(TPROXY_MARK), "lookup",
                       str(TPROXY_TABLE))
            self._rule("ip", fam, "route", "add", "local", anyaddr, "dev", "lo", "table",
                       str(TPROXY_TABLE))
        self._fwmark_routing = True

    def tproxy(self, port, dport=25):
        """TPROXY: the client side's TCP connections to port |dport| are delivered to the
        transparent listener on local |port|, keeping their destination address."""
        for ipt in ("iptables", "ip6tables"):
            self._rule(ipt, "-t", "mangle", "-A", "PREROUTING", "-i", GW_CLIENT_IF, "-p", "tcp",
                       "--dport", str(dport), "-j", "TPROXY", "--on-port", str(port),
                       "--tproxy-mark", str(TPROXY_MARK))
        self._fwmark_local_routing()

    def spoof_return_path(self):
        """For a proxy connecting to the server from the client's address (IP_TRANSPARENT
        bind): the server's replies to that address, arriving on the server side, are
        delivered to the gateway's own transparent socket instead of being forwarded."""
        for ipt in ("iptables", "ip6tables"):
            self._rule(ipt, "-t", "mangle", "-A", "PREROUTING", "-i", GW_SERVER_IF, "-p", "tcp",
                       "-m", "socket", "--transparent", "-j", "MARK", "--set-mark",
                       str(TPROXY_MARK))
        self._fwmark_local_routing()

    def describe(self):
        """The gateway's rules and routing, for failure messages."""
        out = []
        for argv in (["iptables-save"], ["ip6tables-save"], ["ip", "rule"], ["ip", "-6", "rule"],
                     ["ip", "route", "show", "table", "all"], ["ss", "-tanp"]):
            p = self.run("gw", *argv, check=False)
            out.append(f"# {' '.join(argv)}\n{p.stdout.decode(errors='replace')}"
                       f"{p.stderr.decode(errors='replace')}")
        return "\n".join(out)


class NsProxy(harness.Proxy):
    """harness.Proxy whose process runs inside a namespace of |topo| (`ip netns exec`)."""

    def __init__(self, topo, role, binary, workdir, sections, listen_ports, name="proxy"):
        super().__init__(binary, workdir, sections, listen_ports, name=name)
        self.topo = topo
        self.role = role

    def argv(self):
        return ["ip", "netns", "exec", self.topo.names[self.role], *super().argv()]

    def listening(self):
        # Until `ip` has entered the namespace and exec'd, /proc/PID/net is ours.
        if pid_netns_inode(self.proc.pid) != netns_inode(self.topo.names[self.role]):
            return False
        return set(self.listen_ports) <= listening_ports_of(self.proc.pid)


# ---------------------------------------------------------------------------------------
# A test double of the proxy (for validating the topology and the rules only)
# ---------------------------------------------------------------------------------------

class RelayDouble:
    """TEST DOUBLE standing in for the proxy, only to validate the topology and rules:
    a plain TCP relay in the gateway that connects each accepted connection to its
    original destination and copies bytes both ways.

    mode "redirect": the original destination from SO_ORIGINAL_DST/IP6T_SO_ORIGINAL_DST.
    mode "tproxy": the listener has IP_TRANSPARENT; the accepted socket's local address
    is the original destination. |spoof| (tproxy only): the upstream socket is bound to
    the client's address with IP_TRANSPARENT.

    Make it (its listeners and threads) inside topo.entered("gw").
    """

    def __init__(self, port, mode="redirect", spoof=False):
        self.port = port
        self.mode = mode
        self.spoof = spoof
        self.accepted = []   # (peer, local, original destination, upstream local address)
        self.errors = []
        self._stop = threading.Event()
        self._socks = []
        self.listeners = []
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if mode == "tproxy":
                set_transparent(s)
            s.bind((host, port))
            s.listen(16)
            s.settimeout(0.1)
            self.listeners.append(s)
        self._threads = []

    def start(self):
        for s in self.listeners:
            t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for s in self.listeners + self._socks:
            try:
                s.close()
            except OSError:
                pass

    def _accept_loop(self, listener):
        while not self._stop.is_set():
            try:
                conn, peer = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn, peer), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn, peer):
        self._socks.append(conn)
        try:
            local = conn.getsockname()[:2]
            dst = original_dst(conn) if self.mode == "redirect" else local
            up = socket.socket(conn.family, socket.SOCK_STREAM)
            self._socks.append(up)
            if self.spoof:
                set_transparent(up)
                up.bind((peer[0], 0))
            up.settimeout(10)
            up.connect(dst)
            self.accepted.append((peer[:2], local, dst, up.getsockname()[:2]))
        except OSError as e:
            self.errors.append(f"{peer}: {e!r}")
            conn.close()
            return
        a = threading.Thread(target=self._pump, args=(conn, up), daemon=True)
        b = threading.Thread(target=self._pump, args=(up, conn), daemon=True)
        a.start()
        b.start()
        self._threads += [a, b]

    def _pump(self, src, dst):
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return


def connect_from(topo, role, host, port, timeout=10.0, source=None):
    """A harness.SmtpConn created in namespace |role| (the connect happens there)."""
    with topo.entered(role):
        return harness.SmtpConn(host, port, timeout=timeout, source=source)


# ---------------------------------------------------------------------------------------
# Servers on a fixed port (25) for the server namespace
# ---------------------------------------------------------------------------------------

class FakeUpstream25(harness.FakeUpstream):
    """harness.FakeUpstream listening on |host|:|port| (default 25). Make it inside
    topo.entered("server") (start() may be called outside: its listener is made here)."""

    def __init__(self, host, port=25, **options):
        super().__init__(host=host, **options)
        self.listener.close()
        self.listener = socket.socket(family_of(host), socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.port = port


class AioUpstream25(harness.AioUpstream):
    """harness.AioUpstream (aiosmtpd) on |host|:|port| (default 25); with |tls_context| it
    offers STARTTLS (not required). Make and start() it inside topo.entered("server"):
    aiosmtpd's thread is started by start() and stays in that namespace."""

    def __init__(self, host, port=25, tls_context=None, hostname="mx.test"):
        self.host = host
        self.port = port
        self.messages = []
        self.connections = []
        self.starttls_commands = 0
        self._lock = threading.Lock()
        kwargs = dict(hostname=host, port=port, decode_data=False, server_hostname=hostname,
                      ready_timeout=10.0)
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=False)
        self.controller = harness.RecordingController(self, harness.RecordingHandler(self),
                                                      **kwargs)


# ---------------------------------------------------------------------------------------
# The real proxy in the gateway
# ---------------------------------------------------------------------------------------

PROXY_PORT = 10025
# Transparent mode ignores "upstream": an address where nothing listens (in the gateway's
# own loopback) proves it is not used.
IGNORED_UPSTREAM = "127.0.0.1:9"


class GwProxies:
    """Starts the real binary in the gateway namespace of |topo| (transparent mode by
    default) and stops every proxy it started with the same checks as conftest's
    make_proxy: SIGTERM, exit status 0 within 10 s, no sanitizer report."""

    def __init__(self, proxy_bin, workdir, topo):
        self.proxy_bin = proxy_bin
        self.workdir = workdir
        self.topo = topo
        self.started = harness.Started(stop=lambda p: p.finish())

    def start(self, extra=None, port=PROXY_PORT, listen=None, start=True):
        if listen is None:
            listen = [f"0.0.0.0:{port}", f"[::]:{port}"]
        base = {"proxy": {"mode": "transparent"},
                "client_tls": {"starttls": "strip"},
                "upstream_tls": {"starttls": "may"}}
        sections = harness.base_sections(listen, IGNORED_UPSTREAM,
                                         harness.merge_sections(base, extra))
        n = len(self.started) + 1
        p = self.started.add(NsProxy(self.topo, "gw", self.proxy_bin, self.workdir, sections,
                                     [port], name="proxy" if n == 1 else f"proxy{n}"))
        if start:
            p.start()
        return p

    def stop_all(self):
        self.started.stop_all()
