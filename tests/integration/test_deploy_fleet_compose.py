"""docker/compose.fleet.yaml run for real with podman-compose (Debian 12's 1.0.3).

First, without any engine: HAProxy accepts docker/fleet/haproxy.cfg (`haproxy -c`), the
proxies' INI (docker/fleet/proxy.ini) passes `smtp-tls-proxy -t`, and the files agree
with each other (the backends are the proxy services, with send-proxy-v2 where the INI
says proxy_protocol = v2; the store is the Redis service, with the compose secret).

Then the compose file itself is brought up with podman-compose: HAProxy
(docker/fleet/Dockerfile, Debian's haproxy) in front of two proxy instances (the image of
docker/Dockerfile, built as test_container.py builds it), Redis (Debian's redis-server)
and the stand-in legacy server (aiosmtpd printing what it receives). The test connects
to HAProxy from this host and checks that:
- messages go through HAProxy to both instances (each instance's log has a session),
  and arrive at the legacy server with their content;
- the client address each instance logs is this client's own address and port, as
  HAProxy saw it (PROXY v2), never HAProxy's; HAProxy's health checks (a PROXY v2 LOCAL
  header, then the greeting and QUIT) are the only sessions from HAProxy's address;
- the shared store works: a TLS failure learned by one instance is in Redis, and hides
  STARTTLS on the other instance; deleting the key offers it again;
- the image's HEALTHCHECK (--health, which sends its own LOCAL header) passes.

podman-compose works here once Debian's CNI dnsname plugin
(golang-github-containernetworking-plugin-dnsname, in tests/install-deps) gives the
compose network its service names. What the test adds to the compose file, with a second
file given to podman-compose (-f): each service's ulimits, since this machine refuses the
engine's defaults and the file's nofile 65536 (as test_container.py does with --ulimit).
Through the file's own variables: TAG=test (the images the test built), SMTP_PORT (a
free port) and REDIS_PASSWORD_FILE (a password made for the run). The project (name
smtp-tls-proxy-fleet-test) is taken down at the end, network included, even on failure.

Skips (exit status 77 when run alone) only when podman cannot run. Takes about 40 s with
the images cached (a first build of the images: 1-2 minutes more).
"""

import os
import re
import secrets
import shutil
import smtplib
import subprocess
import time

import pytest
import yaml

import deploy_support as ds
import harness

pytestmark = pytest.mark.timeout(540)

NAME = "test_deploy_fleet_compose"
PROJECT = "smtp-tls-proxy-fleet-test"
TAG = "test"
PROXY_SERVICES = ("proxy-a", "proxy-b")
FROM = "sender@client.test"
TO = ["rcpt@legacy.test"]


def compose_file(source_dir):
    return os.path.join(source_dir, "docker", "compose.fleet.yaml")


def load_compose(source_dir):
    with open(compose_file(source_dir)) as f:
        return yaml.safe_load(f)


def host_path(source_dir, path):
    """A compose file's relative path, from the top of the tree."""
    return os.path.normpath(os.path.join(source_dir, "docker", path))


def mounted(service, target):
    """The host path |service| mounts at |target|, or None."""
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[1] == target:
            return parts[0]
    return None


def parse_ini(text):
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section][key.strip()] = re.split(r"\s[;#]", value)[0].strip()
    return out


def test_files_hang_together(source_dir, proxy_bin, tmp_path):
    """haproxy.cfg, proxy.ini and the compose file agree, before any engine runs."""
    compose = load_compose(source_dir)
    services = compose["services"]
    assert set(services) == {"haproxy", *PROXY_SERVICES, "redis", "legacy"}, set(services)
    conf_path = "/etc/smtp-tls-proxy/smtp-tls-proxy.ini"
    inis = {mounted(services[s], conf_path) for s in PROXY_SERVICES}
    assert len(inis) == 1 and None not in inis, inis
    ini_path = host_path(source_dir, inis.pop())
    with open(ini_path) as f:
        ini_text = f.read()
    ini = parse_ini(ini_text)
    assert ini["proxy"]["proxy_protocol"] == "v2"
    upstream_host = ini["proxy"]["upstream"].rsplit(":", 1)[0]
    assert upstream_host in services, f"upstream {upstream_host} is no compose service"
    m = re.fullmatch(r"redis://([^:/@]+):(\d+)", ini["store"]["redis"])
    assert m and m.group(1) in services, ini["store"]["redis"]
    secret = ini["store"]["password_file"].removeprefix("/run/secrets/")
    assert secret in compose["secrets"]
    for s in (*PROXY_SERVICES, "redis"):
        assert secret in services[s]["secrets"], s
    assert "--requirepass" in " ".join(services["redis"]["command"])
    listen_port = ini["proxy"]["listen"].rsplit(":", 1)[1]

    cfg_path = host_path(source_dir, mounted(services["haproxy"], "/etc/haproxy/haproxy.cfg"))
    with open(cfg_path) as f:
        cfg = f.read()
    servers = re.findall(r"(?m)^\s*server\s+(\S+)\s+(\S+)", cfg)
    assert servers == [(s, f"{s}:{listen_port}") for s in PROXY_SERVICES], servers
    assert re.search(r"(?m)^\s*default-server\s.*\bsend-proxy-v2\b", cfg)
    bind = re.search(r"(?m)^\s*bind\s+:(\d+)", cfg).group(1)
    assert services["haproxy"]["ports"] == ["${SMTP_PORT:-25}:" + bind]

    if shutil.which("haproxy"):
        # The backends cannot be resolved here (init-addr none keeps that from failing).
        p = subprocess.run(["haproxy", "-c", "-f", cfg_path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        assert p.returncode == 0 and "Configuration file is valid" in p.stdout, p.stdout
    pw = tmp_path / "password"
    pw.write_text("secret\n")
    ini_copy = tmp_path / "proxy.ini"
    ini_copy.write_text(ini_text.replace(ini["store"]["password_file"], str(pw)))
    p = subprocess.run([proxy_bin, "-t", "-c", str(ini_copy)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    assert p.returncode == 0, p.stdout


# --------------------------------------------------------------------------------------
# Run with podman-compose
# --------------------------------------------------------------------------------------

class Fleet:
    """The compose project, as the tests see it."""

    def __init__(self, engine, compose_cmd, env):
        self.engine = engine
        self.compose_cmd = compose_cmd
        self.env = env
        self.ctr = {}

    def compose(self, *args, timeout=300, check=True):
        p = subprocess.run(self.compose_cmd + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout, env=self.env)
        if check and p.returncode != 0:
            raise AssertionError(f"podman-compose {' '.join(args)}: exit status "
                                 f"{p.returncode}\n{p.stdout[-6000:]}")
        return p

    def project_containers(self):
        out = self.engine.cmd("ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
                              "--format", "{{.Names}} {{.Labels}}").stdout
        found = {}
        for line in out.splitlines():
            name = line.split()[0]
            m = re.search(r"com\.docker\.compose\.service:(\S+?)[\s\]]", line)
            if m:
                found[m.group(1)] = name
        return found

    def down(self):
        self.compose("down", timeout=300, check=False)
        left = self.project_containers()
        if left:
            self.engine.cmd("rm", "-f", *left.values(), check=False, timeout=120)
        self.engine.cmd("network", "rm", "-f", f"{PROJECT}_default", check=False)
        return left

    def logs(self, service):
        return self.engine.logs(self.ctr[service])

    def redis_cli(self, *args):
        return self.engine.exec(self.ctr["redis"], "env", f"REDISCLI_AUTH={self.password}",
                                "redis-cli", "--no-auth-warning", *args).stdout.strip()

    def connect(self):
        """A new session through HAProxy (at its address on the compose network, so that
        this client's address and port are what HAProxy sees)."""
        return harness.SmtpConn(self.haproxy_ip, self.haproxy_port)

    def instance_of(self, port, timeout=10.0):
        """(service, session line) of the instance that logged this client's session."""
        client = f"{self.gateway}:{port}"

        def find():
            for service in PROXY_SERVICES:
                for line in ds.sessions(self.logs(service)):
                    if line.get("client") == client:
                        return service, line
            return None

        return harness.wait_for(find, timeout, interval=0.1,
                                what=f"a session line with client={client}")


@pytest.fixture(scope="module")
def fleet(request, source_dir, tmp_path_factory):
    engine = ds.podman_engine(request, __file__, NAME)
    if shutil.which("podman-compose") is None:
        pytest.fail("podman-compose is not installed: run tests/install-deps")
    tmp = tmp_path_factory.mktemp("fleet")
    log = str(tmp / "build.log")
    ds.build_proxy_image(request, engine, source_dir, log, __file__, NAME)

    # The images the compose file names, built from its own build sections.
    compose = load_compose(source_dir)
    started = time.monotonic()
    for name, service in compose["services"].items():
        image = "localhost/" + service["image"].replace("${TAG:-latest}", TAG)
        build = service["build"]
        if build["context"] == "..":
            assert image == ds.PROXY_IMAGE and build["dockerfile"] == "docker/Dockerfile"
            continue
        assert build["context"] == "fleet" and "dockerfile" not in build, (name, build)
        ds.build_fleet_image(engine, source_dir, build["target"], image, log)
    ds.say(request, NAME, f"HAProxy, Redis and legacy images built in "
                          f"{time.monotonic() - started:.0f} s")

    # As the compose file writes them (podman-compose merges only values of one type):
    # one number for soft and hard.
    limits = {}
    for kind, value in ds.ulimits(engine).items():
        soft, _, hard = value.partition(":")
        limits[kind] = int(soft) if hard in ("", soft) else {"soft": int(soft), "hard": int(hard)}
    override = tmp / "compose.override.yaml"
    override.write_text(yaml.safe_dump(
        {"services": {name: {"ulimits": limits} for name in compose["services"]}}))
    password_file = tmp / "redis-password"
    password = secrets.token_hex(32)
    password_file.write_text(password + "\n")
    password_file.chmod(0o644)  # read by uid 10025 and by Redis's user

    env = dict(os.environ, TAG=TAG, SMTP_PORT=str(harness.free_port()),
               REDIS_PASSWORD_FILE=str(password_file))
    cmd = ["podman-compose", "--podman-path", engine.base[0],
           "--podman-args", " ".join(engine.base[1:]), "-p", PROJECT,
           "-f", compose_file(source_dir)]
    if limits:
        cmd += ["-f", str(override)]
    f = Fleet(engine, cmd, env)
    f.password = password
    f.down()  # what a killed earlier run may have left
    try:
        started = time.monotonic()
        f.compose("up", "-d")
        f.ctr = f.project_containers()
        assert set(f.ctr) == set(compose["services"]), f.ctr
        for service in PROXY_SERVICES:
            ds.wait_log(engine, f.ctr[service], r"^started ")
        ds.wait_log(engine, f.ctr["redis"], r"Ready to accept connections")
        for service, name in f.ctr.items():
            status = engine.inspect(name, "{{.State.Status}}")
            assert status == "running", f"{service}: {status}\n{engine.logs(name)[-3000:]}"
        nets = engine.inspect(f.ctr["haproxy"], "{{range .NetworkSettings.Networks}}"
                                                "{{.IPAddress}} {{.Gateway}}{{end}}").split()
        f.haproxy_ip, f.gateway = nets
        with open(host_path(source_dir, "fleet/haproxy.cfg")) as cfg:
            f.haproxy_port = int(re.search(r"(?m)^\s*bind\s+:(\d+)", cfg.read()).group(1))
        f.published_port = int(env["SMTP_PORT"])

        def greets():
            try:
                with f.connect() as c:
                    return c.greeting().code == 220
            except (OSError, harness.Closed, TimeoutError):
                return False

        harness.wait_for(greets, 30, interval=0.5, what="a greeting through HAProxy")
        ds.say(request, NAME, f"podman-compose up: {len(f.ctr)} containers in "
                              f"{time.monotonic() - started:.1f} s")
        yield f
    finally:
        f.down()
        assert not f.project_containers(), "containers left after down"


def body(i):
    return (b"From: sender@client.test\r\n"
            b"To: rcpt@legacy.test\r\n"
            + f"Subject: fleet message {i}\r\n".encode() +
            b"\r\n"
            + f"body line of message {i}\r\n".encode() +
            b"end\r\n")


def test_mail_through_haproxy_to_both_instances(fleet):
    """Sessions through HAProxy reach both instances; each instance logs this client's
    own address and port (PROXY v2), as HAProxy logs them; the legacy server gets every
    message, from both instances."""
    f = fleet
    served = {}
    for i in range(4):
        with f.connect() as c:
            port = c.local_port
            assert c.greeting().code == 220
            assert harness.starttls_lines(c.ehlo()), "STARTTLS not offered"
            assert c.cmd(f"MAIL FROM:<{FROM}>").code == 250
            assert c.cmd(f"RCPT TO:<{TO[0]}>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(body(i) + b".\r\n")
            assert c.reply().code == 250
            assert c.cmd("QUIT").code == 221
        service, line = f.instance_of(port)
        assert line["messages"] == "1" and line["end"] == "quit", line
        assert line["starttls"] == "offered", line
        served[i] = service
    assert set(served.values()) == set(PROXY_SERVICES), served

    # One more through the published port, as a client outside would come.
    with smtplib.SMTP("127.0.0.1", f.published_port, local_hostname="client.test",
                      timeout=30) as s:
        assert s.sendmail(FROM, TO, body(4)) == {}

    # HAProxy logs each connection as "client:port [date] smtp proxies/<server> ...",
    # once both sides closed; the instance it names must have logged the same client.
    # Six: the fixture's first greeting, then the five here.
    def haproxy_lines():
        found = re.findall(r"(?m)^(\S+:\d+) \[[^]]+\] smtp proxies/(\S+) ", f.logs("haproxy"))
        return found if len(found) >= 6 else None

    haproxy = harness.wait_for(haproxy_lines, 10, what="HAProxy's log lines of 6 sessions")
    for client, server in haproxy:
        assert server in PROXY_SERVICES, server
        lines = harness.wait_for(
            lambda: [x for x in ds.sessions(f.logs(server)) if x.get("client") == client],
            10, what=f"{server}'s session line of {client}")
        assert len(lines) == 1, (client, server, lines)
    haproxy_ip = f.haproxy_ip
    for service in PROXY_SERVICES:
        for line in ds.sessions(f.logs(service)):
            if line["client"].startswith(haproxy_ip + ":"):
                # Only HAProxy's health checks: greeting, QUIT, nothing relayed.
                assert line["end"] == "quit" and line["messages"] == "0", line

    def delivered():
        text = f.logs("legacy")
        return all(f"Subject: fleet message {i}" in text for i in range(5)) and text

    sink = harness.wait_for(delivered, 10, what="5 messages at the legacy server")
    for i in range(5):
        assert f"body line of message {i}" in sink
    # The stand-in prints each sender as X-Peer: both instances delivered.
    peers = set(re.findall(r"X-Peer: \('([0-9.]+)'", sink))
    addresses = {f.engine.inspect(f.ctr[s], "{{range .NetworkSettings.Networks}}"
                                            "{{.IPAddress}}{{end}}") for s in PROXY_SERVICES}
    assert addresses <= peers, (addresses, peers)


def test_learned_failure_hides_starttls_on_the_other_instance(fleet):
    """A client whose TLS handshake fails on one instance is in Redis; the other instance
    then offers it no STARTTLS; deleting the key offers it again."""
    f = fleet
    key = f"smtp-tls-proxy:client:{f.gateway}"
    assert f.redis_cli("EXISTS", key) == "0"
    with f.connect() as c:
        port = c.local_port
        assert c.greeting().code == 220
        assert harness.starttls_lines(c.ehlo())
        assert c.cmd("STARTTLS").startswith("220 2.0.0")
        c.send(b"EHLO this is not a TLS ClientHello\r\n")
        c.wait_eof(10)
    learner, _ = f.instance_of(port)
    other = next(s for s in PROXY_SERVICES if s != learner)
    learned = ds.events(f.logs(learner), "front-tls-learned")
    assert learned and learned[-1]["client"] == f"{f.gateway}:{port}", learned
    harness.wait_for(lambda: f.redis_cli("GET", key) == "1", 10, what=f"{key} in Redis")

    def session_on(service):
        """EHLO in sessions through HAProxy until one lands on |service|; returns whether
        that one was offered STARTTLS."""
        for _ in range(8):
            with f.connect() as c:
                port = c.local_port
                assert c.greeting().code == 220
                offered = bool(harness.starttls_lines(c.ehlo()))
                assert c.cmd("QUIT").code == 221
            if f.instance_of(port)[0] == service:
                return offered
        raise AssertionError(f"no session through HAProxy landed on {service}")

    assert not session_on(other), f"{other} still offers STARTTLS"
    hidden = ds.events(f.logs(other), "front-tls-hidden")
    assert hidden and hidden[-1]["reason"] == "learned-failure", hidden
    assert f.redis_cli("DEL", key) == "1"
    assert session_on(other) and session_on(learner)


def test_healthchecks_behind_haproxy(fleet):
    """The image's HEALTHCHECK (--health: a PROXY v2 LOCAL header, since the instances
    require one) passes on both instances; Redis refuses clients without the password."""
    f = fleet
    for service in PROXY_SERVICES:
        p = f.engine.cmd("healthcheck", "run", f.ctr[service], check=False)
        assert p.returncode == 0, f"{service}: {p.stdout}"
        out = f.engine.exec(f.ctr[service], "smtp-tls-proxy", "--health").stdout
        assert re.match(r"healthy: 127\.0\.0\.1:25: 220 ", out), out
    assert "NOAUTH" in f.engine.exec(f.ctr["redis"], "redis-cli", "PING").stdout
    assert f.redis_cli("PING") == "PONG"
