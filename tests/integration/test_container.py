"""The container image: docker/Dockerfile built and run with this machine's container engine.

Engine: docker where a daemon answers (`docker info`), else podman as in
shared/notes/containers.md: the base image docker.io/library/debian:bookworm-slim is made
once per machine by docker/make-base-image (debootstrap) when it is missing, the image is
built with `podman build --isolation chroot --format docker` (podman's default OCI format
would drop the HEALTHCHECK), and containers run with runc, cgroupfs and explicit ulimits.
CONTAINER_ENGINE=docker or =podman restricts the choice to that engine. The file skips
(exit status 77 when run alone, as ctest runs it) only when no engine can run.

Cost: the first run on a machine makes the base image (~30 s) and builds (~1-2 min); the
image and its build stage stay cached, so an unchanged tree rebuilds in seconds. Each
build removes the image it replaces; every container started here is removed at the end,
even on failure.
"""

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import time

import pytest

import harness

IMAGE = "localhost/smtp-tls-proxy:test"
BUILD_IMAGE = "localhost/smtp-tls-proxy-build:test"  # the build stage, kept as the cache
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
CONF_PATH = "/etc/smtp-tls-proxy/smtp-tls-proxy.ini"
LABEL = "smtp-tls-proxy-test"
PROXY_UID = 10025
CAP_NET_BIND_SERVICE = 1 << 10
# The runtime image is Debian slim (75-85 MB) plus a few MB; much more means the build
# stage (compilers, -dev packages) leaked into it.
IMAGE_SIZE_MAX = 150 * 1000 * 1000
DRAIN_TIMEOUT_S = 3  # harness.base_sections sets drain_timeout = 3s

# Longer than any run should take (first build included), shorter than ctest's 600 s.
pytestmark = pytest.mark.timeout(540)

FROM = "sender@client.test"
TO = ["rcpt@upstream.test"]
# Dot-led lines, 8-bit bytes and a long line: only byte-for-byte relaying keeps them.
BODY = (b"From: sender@client.test\r\n"
        b"To: rcpt@upstream.test\r\n"
        b"Subject: through the container\r\n"
        b"\r\n"
        b".\r\n"
        b"..leading dots\r\n"
        b". \r\n"
        + "caf\u00e9 \u65e5\u672c\u8a9e".encode("utf-8") + b"\r\n"
        + bytes(range(0x80, 0x100)) + b"\r\n"
        + b"x" * 990 + b"\r\n"
        b"end\r\n")


def _run(cmd, timeout=60, check=True, input=None):
    """Runs |cmd|; returns the CompletedProcess (text, stderr merged into stdout)."""
    p = subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit status {p.returncode}\n{p.stdout[-6000:]}")
    return p


def _run_logged(cmd, log_path, timeout):
    """Runs a long command (a build) with its output in |log_path|. On timeout it gets
    SIGTERM first, so that the engine removes its build containers itself."""
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = f"timeout after {timeout} s"
    if rc != 0:
        with open(log_path, "rb") as f:
            tail = f.read().decode("utf-8", "replace")[-8000:]
        raise AssertionError(f"{' '.join(cmd)}: {rc}\n{tail}")


class Engine:
    """docker or podman, with the flags this machine needs."""

    def __init__(self, name, base, run_args=(), build_args=()):
        self.name = name
        self.base = list(base)
        self.run_args = list(run_args)
        self.build_args = list(build_args)

    def cmd(self, *args, timeout=60, check=True):
        return _run(self.base + list(args), timeout=timeout, check=check)

    def image_id(self, image):
        p = self.cmd("image", "inspect", "--format", "{{.Id}}", image, check=False)
        return p.stdout.strip() if p.returncode == 0 else None

    def inspect_image(self, image, fmt):
        return self.cmd("image", "inspect", "--format", fmt, image).stdout.strip()

    def inspect(self, name, fmt):
        return self.cmd("container", "inspect", "--format", fmt, name).stdout.strip()

    def logs(self, name):
        return self.cmd("logs", name, check=False).stdout

    def exec(self, name, *args, check=True):
        return self.cmd("exec", name, *args, check=check)


def _detect_engine():
    """Returns (Engine, None), or (None, why no engine can run here)."""
    wanted = os.environ.get("CONTAINER_ENGINE", "").strip()
    reasons = []
    if wanted in ("", "docker"):
        if shutil.which("docker") is None:
            reasons.append("docker: not installed")
        else:
            p = _run(["docker", "info"], timeout=30, check=False)
            if p.returncode == 0:
                return Engine("docker", ["docker"]), None
            last = (p.stdout.strip().splitlines() or ["?"])[-1]
            reasons.append(f"docker: `docker info` failed ({last})")
    if wanted in ("", "podman"):
        if shutil.which("podman") is None:
            reasons.append("podman: not installed (tests/install-deps installs it)")
        else:
            # containers.md: runc with cgroupfs, and explicit ulimits (the defaults are
            # refused on these machines).
            base = ["podman"]
            if shutil.which("runc"):
                base += ["--runtime", "runc"]
            base += ["--cgroup-manager", "cgroupfs"]
            p = _run(base + ["info"], timeout=60, check=False)
            if p.returncode == 0:
                return Engine("podman", base,
                              run_args=["--ulimit", "nofile=4096:4096",
                                        "--ulimit", "nproc=1024:1024"],
                              build_args=["--isolation", "chroot", "--format", "docker"]), None
            last = (p.stdout.strip().splitlines() or ["?"])[-1]
            reasons.append(f"podman: `podman info` failed ({last})")
    if wanted not in ("", "docker", "podman"):
        reasons.append(f"CONTAINER_ENGINE={wanted!r} is neither docker nor podman")
    return None, "; ".join(reasons)


def _skip_all(request, reason):
    """Skips every test here. pytest ends an all-skipped run with status 0, which ctest
    would count as passed, so when this file runs alone (as ctest runs it) the session
    ends with 77, ctest's SKIP_RETURN_CODE."""
    own = os.path.abspath(__file__)
    if all(os.path.abspath(str(item.fspath)) == own for item in request.session.items):
        pytest.exit(f"SKIPPED: container test: {reason}", returncode=77)
    pytest.skip(reason)


def _say(request, line):
    """A line on the terminal even under -q and output capture (ctest shows it)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(f"test_container: {line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"test_container: {line}")


@pytest.fixture(scope="module")
def engine(request):
    eng, why = _detect_engine()
    if eng is None:
        _skip_all(request, f"no container engine can run here: {why}")
    _say(request, f"container engine: {eng.name} ({' '.join(eng.base)})")
    # Containers a killed earlier run left behind (running ones may be someone else's).
    stale = eng.cmd("ps", "-a", "-q", "--filter", f"label={LABEL}", "--filter",
                    "status=exited", check=False).stdout.split()
    stale += eng.cmd("ps", "-a", "-q", "--filter", f"label={LABEL}", "--filter",
                     "status=created", check=False).stdout.split()
    if stale:
        eng.cmd("rm", "-f", *stale, check=False)
    return eng


@pytest.fixture(scope="module")
def image(request, engine, source_dir, tmp_path_factory):
    """Builds docker/Dockerfile from the source tree; returns the image name."""
    if engine.name == "podman" and engine.cmd("image", "exists", BASE_IMAGE,
                                              check=False).returncode != 0:
        if os.geteuid() != 0:
            _skip_all(request, f"podman has no {BASE_IMAGE} and debootstrap needs root to "
                               f"make it: run docker/make-base-image as root once")
        _say(request, f"making the base image {BASE_IMAGE} with debootstrap (once per machine)")
        started = time.monotonic()
        _run([os.path.join(source_dir, "docker", "make-base-image"), BASE_IMAGE], timeout=300)
        _say(request, f"base image made in {time.monotonic() - started:.0f} s")

    log = str(tmp_path_factory.mktemp("build") / "build.log")
    old = {tag: engine.image_id(tag) for tag in (IMAGE, BUILD_IMAGE)}
    build = engine.base + ["build", *engine.build_args, "--force-rm", "-f",
                           os.path.join(source_dir, "docker", "Dockerfile")]
    started = time.monotonic()
    # The build stage gets a name too, so that it is kept as the cache and the one it
    # replaces can be removed (an untagged stage would pile up as dangling images).
    _run_logged(build + ["--target", "build", "-t", BUILD_IMAGE, source_dir], log, 420)
    _run_logged(build + ["-t", IMAGE, source_dir], log, 420)
    elapsed = time.monotonic() - started
    for tag, old_id in old.items():
        if old_id is not None and old_id != engine.image_id(tag):
            engine.cmd("rmi", old_id, check=False)
    size = int(engine.inspect_image(IMAGE, "{{.Size}}"))
    _say(request, f"image {IMAGE}: {size / 1e6:.1f} MB, built in {elapsed:.0f} s")
    return IMAGE


@pytest.fixture
def containers(engine):
    """containers.run(*args) starts a detached container (args end with the image) and
    returns its name; every one is removed at teardown."""
    names = []

    class Containers:
        @staticmethod
        def run(*args):
            name = f"smtp-tls-proxy-test-{os.getpid()}-{len(names)}"
            names.append(name)
            engine.cmd("run", "-d", "--name", name, "--label", LABEL, *engine.run_args, *args,
                       timeout=120)
            return name

    yield Containers
    for name in names:
        engine.cmd("rm", "-f", name, check=False, timeout=120)


def _wait_started(engine, name, timeout=30.0):
    """Waits for the proxy's "started" log line; fails with the logs if it exits first."""
    def started():
        if re.search(r"^started ", engine.logs(name), re.M):
            return True
        status = engine.inspect(name, "{{.State.Status}}")
        if status not in ("running", "created", "configured"):
            raise AssertionError(f"container {name} is {status} (exit status "
                                 f"{engine.inspect(name, '{{.State.ExitCode}}')});"
                                 f" logs:\n{engine.logs(name)[-4000:]}")
        return False

    harness.wait_for(started, timeout, interval=0.2, what=f"{name} to start")


def _proc_status(engine, name):
    """The proxy's (PID 1's) /proc status lines as a dict."""
    text = engine.exec(name, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _assert_unprivileged(engine, name):
    """PID 1 is the proxy, runs as smtpproxy, and holds no capability but binding low
    ports (from its binary's file capability)."""
    status = _proc_status(engine, name)
    assert status["Name"].strip() == "smtp-tls-proxy", status
    uids = [int(u) for u in status["Uid"].split()]
    assert uids == [PROXY_UID] * 4, f"real, effective, saved, fs uid: {uids}"
    assert engine.exec(name, "id", "-u").stdout.strip() == str(PROXY_UID)
    cap_eff = int(status["CapEff"], 16)
    assert cap_eff & ~CAP_NET_BIND_SERVICE == 0, f"CapEff {status['CapEff']}"


def _healthcheck_of(engine, image):
    """The image's HEALTHCHECK ({"Test": [...], "Interval": ns, ...}), or None."""
    return json.loads(engine.inspect_image(image, "{{json .Config.Healthcheck}}"))


def _healthcheck(engine, name, image):
    """Runs the image's HEALTHCHECK command; returns its output (it must succeed)."""
    hc = _healthcheck_of(engine, image)
    assert hc and hc.get("Test"), f"the image has no HEALTHCHECK: {hc}"
    kind, *rest = hc["Test"]
    if kind == "CMD-SHELL":
        cmd = ["/bin/sh", "-c", rest[0]]
    else:
        assert kind == "CMD", hc
        cmd = rest
    p = engine.exec(name, *cmd, check=False)
    assert p.returncode == 0, f"HEALTHCHECK {cmd} exit status {p.returncode}: {p.stdout}"
    if engine.name == "podman":
        # The engine's own run of it, as its timer would do, and the state it records.
        run = engine.cmd("healthcheck", "run", name, check=False)
        assert run.returncode == 0, f"podman healthcheck run: {run.stdout}"
        assert engine.inspect(name, "{{.State.Health.Status}}") == "healthy"
    return p.stdout


def _stop(engine, name):
    """`stop` (SIGTERM, a generous grace period); returns (exit status, seconds taken)."""
    started = time.monotonic()
    engine.cmd("stop", "-t", "30", name, timeout=90)
    elapsed = time.monotonic() - started
    return int(engine.inspect(name, "{{.State.ExitCode}}")), elapsed


def test_image_metadata(engine, image):
    """Non-root user, port 25, a HEALTHCHECK running --health, SIGTERM, the proxy as the
    entry point with the config path, and no toolchain in the image."""
    config = json.loads(engine.inspect_image(image, "{{json .Config}}"))
    assert config["User"] in ("smtpproxy", str(PROXY_UID)), config["User"]
    assert "25/tcp" in (config.get("ExposedPorts") or {}), config.get("ExposedPorts")
    hc = _healthcheck_of(engine, image)
    assert hc and hc["Test"][-1] == "--health", f"HEALTHCHECK: {hc}"
    assert config.get("StopSignal") in ("SIGTERM", "15", None), config.get("StopSignal")
    assert config["Entrypoint"] == ["/usr/local/bin/smtp-tls-proxy"], config["Entrypoint"]
    assert config["Cmd"] == ["-c", CONF_PATH], config["Cmd"]
    size = int(engine.inspect_image(image, "{{.Size}}"))
    assert size < IMAGE_SIZE_MAX, f"image is {size / 1e6:.1f} MB"


def test_message_through_container(engine, image, containers, aio_upstream, tmp_path):
    """A message from smtplib through the container (host network) to aiosmtpd on the
    host arrives byte-identical; the proxy runs unprivileged; the HEALTHCHECK passes; and
    `stop` ends it with exit status 0 within the drain timeout, a session still open."""
    port = harness.free_port()
    sections = harness.base_sections([f"127.0.0.1:{port}"], aio_upstream.addr)
    ini = tmp_path / "proxy.ini"
    ini.write_text(harness.render_ini(sections))
    ini.chmod(0o644)  # read by uid 10025 in the container
    name = containers.run("--network", "host", "-v", f"{ini}:{CONF_PATH}:ro", image)
    _wait_started(engine, name)

    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
        assert s.ehlo()[0] == 250
        assert s.sendmail(FROM, TO, BODY) == {}
        assert s.quit()[0] == 221
    msg = aio_upstream.wait_messages(1)[0]
    assert msg.mail_from == FROM
    assert msg.rcpt_tos == TO
    assert msg.content == BODY, (len(msg.content), len(BODY))

    _assert_unprivileged(engine, name)

    out = _healthcheck(engine, name, image)
    assert re.match(rf"healthy: 127\.0\.0\.1:{port}: 220 ", out), out

    # A session left open: the drain waits for it up to drain_timeout, then ends it.
    idle = harness.SmtpConn("127.0.0.1", port)
    try:
        assert idle.greeting().code == 220
        idle.ehlo()
        rc, elapsed = _stop(engine, name)
    finally:
        idle.close()
    logs = engine.logs(name)
    assert rc == 0, f"exit status {rc}; logs:\n{logs[-4000:]}"
    assert elapsed < DRAIN_TIMEOUT_S + 7, f"stop took {elapsed:.1f} s"
    assert re.search(r"^draining signal=TERM", logs, re.M), logs[-4000:]
    assert re.search(r"^stopped ", logs, re.M), logs[-4000:]
    for marker in harness.SANITIZER_MARKERS:
        assert marker not in logs


def test_binds_port_25_as_non_root(engine, image, containers):
    """The image's own config (port 25, IPv4 and IPv6) in a network namespace of its own:
    the unprivileged proxy binds port 25 through its file capability, and --health
    finds it there (a 421: no upstream in an empty network)."""
    name = containers.run("--network", "none", image)
    _wait_started(engine, name)
    logs = engine.logs(name)
    assert re.search(r"^listening address=0\.0\.0\.0:25 ", logs, re.M), logs
    _assert_unprivileged(engine, name)
    out = _healthcheck(engine, name, image)
    assert re.match(r"healthy: 127\.0\.0\.1:25: 421 ", out), out
    rc, elapsed = _stop(engine, name)
    assert rc == 0, f"exit status {rc}; logs:\n{engine.logs(name)[-4000:]}"
