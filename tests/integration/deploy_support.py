"""What the deployment tests (test_deploy_kubernetes.py, test_deploy_fleet_compose.py)
share: podman found and its images built the way test_container.py does it (its engine
detection, build commands and image names are imported from there, so that all three
share one build cache), skipping with exit status 77 when no engine can run, and reading
the proxy's log lines out of a container.

Both tests need podman itself, not docker: `podman kube play` and podman-compose drive it.
"""

import os
import re
import time

import pytest

import harness
import test_container as tc

PROXY_IMAGE = tc.IMAGE              # localhost/smtp-tls-proxy:test, as test_container
PROXY_BUILD_IMAGE = tc.BUILD_IMAGE  # its build stage, kept as the cache
FLEET_DOCKERFILE = os.path.join("docker", "fleet", "Dockerfile")
BUILD_TIMEOUT_S = 420


def say(request, name, line):
    """A line on the terminal even under -q and output capture (ctest shows it)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(f"{name}: {line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"{name}: {line}")


def skip_all(request, test_file, reason):
    """Skips every test of |test_file|. When that file runs alone (as ctest runs it), the
    session ends with 77, ctest's SKIP_RETURN_CODE: pytest would end an all-skipped run
    with 0, which ctest would count as passed."""
    own = os.path.abspath(test_file)
    if all(os.path.abspath(str(item.fspath)) == own for item in request.session.items):
        pytest.exit(f"SKIPPED: {os.path.basename(test_file)}: {reason}", returncode=77)
    pytest.skip(reason)


def detect_podman():
    """Returns (test_container.Engine for podman, None), or (None, why podman cannot run).
    CONTAINER_ENGINE=docker makes these tests skip: they need podman's kube play and
    podman-compose."""
    wanted = os.environ.get("CONTAINER_ENGINE", "").strip()
    if wanted not in ("", "podman"):
        return None, f"CONTAINER_ENGINE={wanted}, and this test needs podman"
    saved = os.environ.get("CONTAINER_ENGINE")
    os.environ["CONTAINER_ENGINE"] = "podman"
    try:
        return tc._detect_engine()
    finally:
        if saved is None:
            del os.environ["CONTAINER_ENGINE"]
        else:
            os.environ["CONTAINER_ENGINE"] = saved


def podman_engine(request, test_file, name):
    """The podman Engine, or the whole file skipped (77 when alone) with the reason."""
    engine, why = detect_podman()
    if engine is None:
        skip_all(request, test_file, f"podman cannot run here: {why}")
    say(request, name, f"container engine: {engine.name} ({' '.join(engine.base)})")
    return engine


def ensure_base_image(request, engine, source_dir, test_file, name):
    """docker.io/library/debian:bookworm-slim, made by docker/make-base-image when missing
    (as test_container's image fixture does)."""
    if engine.cmd("image", "exists", tc.BASE_IMAGE, check=False).returncode == 0:
        return
    if os.geteuid() != 0:
        skip_all(request, test_file, f"podman has no {tc.BASE_IMAGE} and debootstrap needs "
                                     f"root to make it: run docker/make-base-image as root once")
    say(request, name, f"making the base image {tc.BASE_IMAGE} with debootstrap (once per machine)")
    started = time.monotonic()
    tc._run([os.path.join(source_dir, "docker", "make-base-image"), tc.BASE_IMAGE], timeout=300)
    say(request, name, f"base image made in {time.monotonic() - started:.0f} s")


def build_image(engine, context, dockerfile, tag, log, target=None):
    """Builds |dockerfile| (with --target |target|) from |context| as |tag|, with the
    engine's build flags (test_container's: chroot isolation, docker format), and removes
    the image that |tag| named before, if the build replaced it."""
    old = engine.image_id(tag)
    cmd = engine.base + ["build", *engine.build_args, "--force-rm", "-f", dockerfile]
    if target is not None:
        cmd += ["--target", target]
    tc._run_logged(cmd + ["-t", tag, context], log, BUILD_TIMEOUT_S)
    new = engine.image_id(tag)
    if old is not None and old != new:
        engine.cmd("rmi", old, check=False)
    return tag


def build_proxy_image(request, engine, source_dir, log, test_file, name):
    """docker/Dockerfile as test_container builds it, under the same names (its build
    stage, then the image): an unchanged tree rebuilds from the cache in seconds."""
    ensure_base_image(request, engine, source_dir, test_file, name)
    dockerfile = os.path.join(source_dir, "docker", "Dockerfile")
    started = time.monotonic()
    build_image(engine, source_dir, dockerfile, PROXY_BUILD_IMAGE, log, target="build")
    build_image(engine, source_dir, dockerfile, PROXY_IMAGE, log)
    say(request, name, f"image {PROXY_IMAGE} built in {time.monotonic() - started:.0f} s")
    return PROXY_IMAGE


def build_fleet_image(engine, source_dir, target, tag, log):
    """One target of docker/fleet/Dockerfile (haproxy, redis, mailsink) as |tag|."""
    context = os.path.join(source_dir, "docker", "fleet")
    return build_image(engine, context, os.path.join(source_dir, FLEET_DOCKERFILE), tag, log,
                       target=target)


def ulimits(engine):
    """The ulimits the engine's `run` is given (test_container's run_args), as
    {"nofile": "4096:4096", ...}: where the engine's defaults are refused, kube play and
    compose need them too."""
    out = {}
    args = list(engine.run_args)
    for flag, value in zip(args, args[1:]):
        if flag == "--ulimit":
            kind, _, limits = value.partition("=")
            out[kind] = limits
    return out


def containers_conf(engine, path):
    """Writes a containers.conf for CONTAINERS_CONF that gives every container the engine's
    ulimits (`podman kube play` has no --ulimit), on top of the system's settings; returns
    the environment to run podman with."""
    text = ""
    for candidate in ("/etc/containers/containers.conf", "/usr/share/containers/containers.conf"):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                text = f.read()
            break
    limits = ulimits(engine)
    if limits:
        line = "default_ulimits = [" + ", ".join(
            f'"{kind}={value}"' for kind, value in limits.items()) + "]"
        # Ours replaces the system's own setting, if any.
        text = re.sub(r"(?m)^\s*default_ulimits\s*=\s*\[[^\]]*\]", "", text)
        if re.search(r"(?m)^\[containers\]\s*$", text):
            text = re.sub(r"(?m)^\[containers\]\s*$", "[containers]\n" + line, text, count=1)
        else:
            text = "[containers]\n" + line + "\n" + text
    with open(path, "w") as f:
        f.write(text)
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(path)
    return env


def events(log_text, event):
    """The fields ({"id": ..., key: value}) of every |event| line in a proxy's log."""
    out = []
    for line in log_text.splitlines():
        m = harness.EVENT_RE.match(line.strip())
        if m and m.group(2) == event:
            fields = harness.parse_kv(m.group(3) or "")
            fields["id"] = m.group(1)
            out.append(fields)
    return out


def sessions(log_text):
    """The fields of every session line in a proxy's log."""
    return events(log_text, "session")


def wait_log(engine, container, pattern, timeout=30.0, what=None):
    """Waits for a line matching |pattern| (a regex) in |container|'s log; returns the log.
    Fails with the log's tail when the container stops first."""
    rx = re.compile(pattern, re.M)

    def found():
        logs = engine.logs(container)
        if rx.search(logs):
            return logs
        status = engine.inspect(container, "{{.State.Status}}")
        if status not in ("running", "created", "configured"):
            raise AssertionError(f"container {container} is {status}; logs:\n{logs[-4000:]}")
        return None

    return harness.wait_for(found, timeout, interval=0.2,
                            what=what or f"/{pattern}/ in {container}'s log")
