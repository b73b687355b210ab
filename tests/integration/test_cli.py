"""The command line: -h, -V, -t, and which TLS library the binary really runs with."""

import os
import re
import resource
import subprocess
import threading
import time

import pytest

import harness


def run(args, timeout=20):
    p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    for marker in harness.SANITIZER_MARKERS:
        assert marker not in err, f"sanitizer report:\n{err}"
    return p.returncode, out, err


def project_version(source_dir):
    with open(os.path.join(source_dir, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*smtp-tls-proxy\s+VERSION\s+([0-9][0-9.]*)", f.read())
    assert m, "no project(... VERSION x.y.z) in CMakeLists.txt"
    return m.group(1)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def good_ini(tmp_path):
    sections = harness.base_sections(["127.0.0.1:2525"], "127.0.0.1:10025")
    return write(tmp_path, "good.ini", harness.render_ini(sections))


def test_help_prints_usage_and_exits_0(proxy_bin):
    rc, out, err = run([proxy_bin, "-h"])
    assert rc == 0, (rc, out, err)
    text = out + err
    assert re.search(r"usage", text, re.I), text
    for option in ("-c", "-t", "-V", "-h"):
        assert option in text, f"{option} missing from the usage text:\n{text}"


def test_version_names_proxy_libuv_and_boringssl(proxy_bin, source_dir):
    rc, out, err = run([proxy_bin, "-V"])
    assert rc == 0, (rc, out, err)
    text = out + err
    assert project_version(source_dir) in text, text
    assert re.search(r"libuv\D*\d+\.\d+\.\d+", text), text
    assert "BoringSSL" in text, text
    assert "OpenSSL 3" not in text, text


def test_check_good_config_exits_0(proxy_bin, tmp_path):
    path = good_ini(tmp_path)
    rc, out, err = run([proxy_bin, "-t", "-c", path])
    assert rc == 0, (rc, out, err)


def test_check_shipped_default_config_exits_0(proxy_bin, source_dir):
    """config/smtp-tls-proxy.ini documents every key with its default: it must be valid."""
    path = os.path.join(source_dir, "config", "smtp-tls-proxy.ini")
    assert os.path.isfile(path), f"{path} missing"
    rc, out, err = run([proxy_bin, "-t", "-c", path])
    assert rc == 0, (rc, out, err)


def test_check_bad_config_prints_every_error_with_file_line_key(proxy_bin, tmp_path):
    path = write(tmp_path, "bad.ini", "\n".join([
        "[proxy]",                       # 1
        "listen = 127.0.0.1:2525",       # 2
        "upstream = 127.0.0.1:10025",    # 3
        "workers = many",                # 4: error
        "[timeouts]",                    # 5
        "command = forever",             # 6: error
        "",
    ]))
    rc, out, err = run([proxy_bin, "-t", "-c", path])
    assert rc == 1, (rc, out, err)
    text = out + err
    assert re.search(re.escape(path) + r":4: workers: \S.*", text), text
    assert re.search(re.escape(path) + r":6: command: \S.*", text), text
    # The bad values are named so the administrator sees what was refused.
    assert "many" in text and "forever" in text, text


def test_check_unknown_section_and_key_are_errors(proxy_bin, tmp_path):
    path = write(tmp_path, "unknown.ini", "\n".join([
        "[proxy]",                       # 1
        "listen = 127.0.0.1:2525",       # 2
        "upstream = 127.0.0.1:10025",    # 3
        "bogus_key = 1",                 # 4: unknown key
        "[no_such_section]",             # 5
        "x = 1",                         # 6: unknown section
        "",
    ]))
    rc, out, err = run([proxy_bin, "-t", "-c", path])
    assert rc == 1, (rc, out, err)
    text = out + err
    assert re.search(re.escape(path) + r":4: bogus_key: \S.*", text), text
    assert re.search(re.escape(path) + r":[56]: .*no_such_section", text), text


def test_missing_config_file_fails_clearly(proxy_bin, tmp_path):
    path = str(tmp_path / "does-not-exist.ini")
    rc, out, err = run([proxy_bin, "-t", "-c", path])
    assert rc != 0, (rc, out, err)
    assert path in out + err, (out, err)


def test_binary_runs_with_debian_boringssl_not_openssl(proxy_bin):
    p = subprocess.run(["ldd", proxy_bin], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       check=True)
    text = p.stdout.decode()
    libs = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if m:
            libs[m.group(1)] = m.group(2)
    ssl = [path for name, path in libs.items() if name.startswith("libssl.so")]
    crypto = [path for name, path in libs.items() if name.startswith("libcrypto.so")]
    # libcrypto is always needed (-V reads BoringSSL's version from it). libssl appears
    # once the binary calls into it: a linker with --as-needed drops it until TLS code is
    # linked in. Wherever they are, both must be Debian's BoringSSL (android-libboringssl).
    assert crypto and all("/android/" in path for path in crypto), text
    assert all("/android/" in path for path in ssl), text
    assert "libssl.so.3" not in text and "libcrypto.so.3" not in text, text
    for path in ssl + crypto:
        assert os.path.exists(path), f"{path} does not exist:\n{text}"


def test_systemd_unit_verifies(proxy_bin, source_dir, tmp_path):
    """config/smtp-tls-proxy.service passes systemd-analyze verify (with the binary path
    pointed at the build under test)."""
    import shutil
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    with open(os.path.join(source_dir, "config", "smtp-tls-proxy.service")) as f:
        unit = f.read()
    unit = unit.replace("/usr/local/bin/smtp-tls-proxy", os.path.abspath(proxy_bin))
    path = tmp_path / "smtp-tls-proxy.service"
    path.write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                       timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if "smtp-tls-proxy.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_example_configs_pass_the_check(proxy_bin, source_dir):
    """Every file in config/examples/ is a valid configuration."""
    directory = os.path.join(source_dir, "config", "examples")
    names = sorted(n for n in os.listdir(directory) if n.endswith(".ini"))
    assert len(names) >= 5, names
    for name in names:
        rc, out, err = run([proxy_bin, "-t", "-c", os.path.join(directory, name)])
        assert rc == 0, (name, out, err)


# Memory the proxy may use to check a configuration; the config reader holds one line of at
# most 64 KiB, so an endless file must fail long before this.
CHECK_MEMORY_LIMIT_MB = 256


def uses_asan(binary):
    p = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return b"libasan" in p.stdout


def run_bounded(args, stdin=subprocess.DEVNULL, feed=None, timeout=10):
    """run() under a memory limit: RLIMIT_AS, or ASan's hard_rss_limit_mb for a sanitizer
    build (ASan reserves terabytes of address space). |feed|, if given, is called on a
    thread with the writing end of a pipe that is the child's stdin; it must close it.
    Returns rc, out, err and the seconds it took."""
    env = dict(os.environ)
    asan = uses_asan(args[0])
    if asan:
        env["ASAN_OPTIONS"] = ":".join(
            o for o in (env.get("ASAN_OPTIONS"), f"hard_rss_limit_mb={CHECK_MEMORY_LIMIT_MB}")
            if o)

    def limit():
        if not asan:
            size = CHECK_MEMORY_LIMIT_MB << 20
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    feeder = None
    if feed:
        read_end, write_end = os.pipe()
        stdin = read_end
        writer = os.fdopen(write_end, "wb")
        feeder = threading.Thread(target=feed, args=(writer,), daemon=True)
    started = time.monotonic()
    try:
        p = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, preexec_fn=limit)
    finally:
        if feed:
            os.close(read_end)
    if feeder is not None:
        feeder.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"{args} still running after {timeout}s")
    finally:
        if feeder is not None:
            feeder.join(timeout)
    elapsed = time.monotonic() - started
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    for marker in harness.SANITIZER_MARKERS:
        assert marker not in err, f"sanitizer report:\n{err}"
    return p.returncode, out, err, elapsed


def test_check_under_the_memory_limit_still_works(proxy_bin, source_dir):
    """The control for the tests below: the limit leaves room for a normal check."""
    path = os.path.join(source_dir, "config", "smtp-tls-proxy.ini")
    rc, out, err, _ = run_bounded([proxy_bin, "-t", "-c", path])
    assert rc == 0, (rc, out, err)


def test_check_dev_zero_fails_at_line_1_quickly(proxy_bin):
    """An endless file of NUL bytes: an error at line 1, at once, in bounded memory (it
    used to read until memory ran out, then report "test is successful")."""
    rc, out, err, elapsed = run_bounded([proxy_bin, "-t", "-c", "/dev/zero"])
    assert rc == 1, (rc, out, err)
    assert re.search(r"^/dev/zero:1: syntax: .*NUL", err, re.M), err
    assert "successful" not in out + err, (out, err)
    assert elapsed < 5, elapsed


def test_check_endless_line_fails_at_the_cap(proxy_bin):
    """An endless line of text, no NUL and no line end: refused once it passes 64 KiB, and
    the proxy stops reading (it closes the pipe) instead of looking for the line end."""
    sent = [0]

    def feed(pipe):
        chunk = b"[proxy]\n" + b"x" * 65536
        try:
            while sent[0] < (1 << 30):
                pipe.write(chunk)
                pipe.flush()
                sent[0] += len(chunk)
                chunk = b"x" * 65536
        except (BrokenPipeError, ValueError):
            pass
        finally:
            try:
                pipe.close()
            except BrokenPipeError:
                pass

    rc, out, err, elapsed = run_bounded([proxy_bin, "-t", "-c", "/dev/stdin"], feed=feed)
    assert rc == 1, (rc, out, err)
    assert re.search(r"^/dev/stdin:2: syntax: line longer than 65536 bytes", err, re.M), err
    assert elapsed < 5, elapsed
    assert sent[0] < (16 << 20), sent[0]


def test_check_directory_is_a_read_error(proxy_bin, tmp_path):
    rc, out, err, _ = run_bounded([proxy_bin, "-t", "-c", str(tmp_path)])
    assert rc == 1, (rc, out, err)
    assert re.search(re.escape(str(tmp_path)) + r": cannot read: Is a directory", err), err
    assert "successful" not in out + err, (out, err)
