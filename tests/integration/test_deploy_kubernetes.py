"""deploy/kubernetes/ played for real with `podman kube play` (Debian 12's podman 4.3).

First, without any engine, the manifests are checked against each other and against the
proxy: the ConfigMap's INI passes `smtp-tls-proxy -t`, its paths lie under the mounts of
the right volumes, workers match the CPU limit, the probes run --health on the same file,
the grace period covers the preStop pause and the drain, the Service, the
PodDisruptionBudget and the NetworkPolicy select the right pods.

Then the same files are played: the Redis Deployment, then the ConfigMap and the proxy
Deployment (two replicas, two pods), with the image built from docker/Dockerfile (as
test_container.py builds it) and Redis from docker/fleet/Dockerfile (Debian's
redis-server). Mail goes from this host to each pod's address, through the proxy, to an
aiosmtpd the test runs on the host's side of the pods' bridge; a client TLS failure
learned by one pod is in Redis (smtp-tls-proxy:client:<address>) and hides STARTTLS on
the other pod; deleting the key offers it again. Everything played is torn down at the
end (`podman kube down`, then the volumes and secrets kube play made), even on failure.

What the test substitutes, and why (the rest is played as written):
- images: localhost/smtp-tls-proxy:test and localhost/smtp-tls-proxy-redis:test;
- the ConfigMap's `upstream`: the test's aiosmtpd;
- hostAliases naming the Redis pod's address as the Redis Service: podman has no
  Services and no cluster DNS;
- no `ports`: podman 4.3 publishes every containerPort on the host (hostPort defaults to
  containerPort), which two replicas cannot share; the test reaches the pods' own
  addresses, as a Service would;
- secrets: podman < 4.4 writes a Secret volume's files still base64-encoded (and crashes
  on a secret volume without an explicit `optional`, which the manifests therefore
  give). There the Redis password is one that reads the same either way, and the
  certificate Secret becomes a ConfigMap with the same keys, mounted at the same path.
- kube play applies the security context, resources, volumes, hostAliases and the
  liveness probe (as a healthcheck, which the test runs with `podman healthcheck run`);
  it ignores Services, the PodDisruptionBudget, the NetworkPolicy, readiness probes, the
  preStop hook and terminationGracePeriodSeconds. The test runs the preStop command
  itself and stops the pod with the manifest's grace period, as the kubelet would.

Skips (exit status 77 when run alone) only when podman cannot run. Takes about 30 s with
the images cached (a first build of the images: 1-2 minutes more).
"""

import base64
import copy
import json
import os
import re
import secrets
import smtplib
import subprocess
import time

import pytest
import yaml

import deploy_support as ds
import harness

pytestmark = pytest.mark.timeout(540)

NAME = "test_deploy_kubernetes"
REDIS_IMAGE = "localhost/smtp-tls-proxy-redis:test"
TEST_LABEL = "io.smtp-tls-proxy.test"
PROXY_UID = 10025
CAP_NET_BIND_SERVICE = 1 << 10

FROM = "sender@client.test"
TO = ["rcpt@upstream.test"]


def body(pod):
    return (b"From: sender@client.test\r\n"
            b"To: rcpt@upstream.test\r\n"
            + f"Subject: through pod {pod}\r\n".encode() +
            b"\r\n"
            b".leading dot\r\n"
            + "caf\u00e9\r\n".encode("utf-8")
            + b"x" * 990 + b"\r\n"
            b"end\r\n")


# --------------------------------------------------------------------------------------
# The manifests
# --------------------------------------------------------------------------------------

def manifest_dir(source_dir):
    return os.path.join(source_dir, "deploy", "kubernetes")


def load_manifests(source_dir):
    """Every object of the files kustomization.yaml lists, in its order."""
    d = manifest_dir(source_dir)
    with open(os.path.join(d, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    docs = []
    for name in kustomization["resources"]:
        with open(os.path.join(d, name)) as f:
            docs += [doc for doc in yaml.safe_load_all(f) if doc]
    return kustomization, docs


def find(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(deployment, name):
    found = [c for c in deployment["spec"]["template"]["spec"]["containers"]
             if c["name"] == name]
    assert len(found) == 1, f"container {name} in {deployment['metadata']['name']}"
    return found[0]


def parse_ini(text):
    """{section: {key: value}} of the proxy's INI syntax (comments after " ;" dropped)."""
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
        value = re.split(r"\s[;#]", value)[0]
        out[section][key.strip()] = value.strip()
    return out


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", duration)
    assert m, duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600,
                              "d": 86400}[m.group(2)]


def cpus(quantity):
    quantity = str(quantity)
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mounted_file(spec, ctr, path):
    """(volume, key) of the Secret or ConfigMap file that |path| is in |ctr|, or None."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in ctr.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = volumes[mount["name"]]
            rest = path[len(prefix):]
            source = volume.get("secret") or volume.get("configMap")
            items = source.get("items")
            if items:
                keys = [i["key"] for i in items if i["path"] == rest]
                return volume, (keys[0] if keys else None)
            return volume, rest
    return None


class Manifests:
    """The objects, and what the tests need from them."""

    def __init__(self, source_dir):
        self.kustomization, self.docs = load_manifests(source_dir)
        self.config_map = next(d for d in self.docs if d["kind"] == "ConfigMap")
        deployments = [d for d in self.docs if d["kind"] == "Deployment"]
        self.proxy = next(d for d in deployments if any(
            c["name"] == "proxy" for c in d["spec"]["template"]["spec"]["containers"]))
        self.redis = next(d for d in deployments if d is not self.proxy)
        self.proxy_ctr = container(self.proxy, "proxy")
        self.redis_ctr = self.redis["spec"]["template"]["spec"]["containers"][0]
        args = self.proxy_ctr["args"]
        self.config_path = args[args.index("-c") + 1]
        spec = self.proxy["spec"]["template"]["spec"]
        volume, key = mounted_file(spec, self.proxy_ctr, self.config_path)
        assert volume["configMap"]["name"] == self.config_map["metadata"]["name"]
        self.ini_key = key
        self.ini = self.config_map["data"][key]
        self.conf = parse_ini(self.ini)
        m = re.fullmatch(r"redis://(?:[^@/]*@)?([^:/]+)(?::(\d+))?(/\d+)?",
                         self.conf["store"]["redis"])
        assert m, self.conf["store"]["redis"]
        self.redis_host, self.redis_port = m.group(1), int(m.group(2) or 6379)

    def secret_volume(self, deployment, ctr, path):
        spec = deployment["spec"]["template"]["spec"]
        found = mounted_file(spec, ctr, path)
        assert found, f"{path} is under no volume mount of {ctr['name']}"
        volume, key = found
        assert "secret" in volume, f"{path}: volume {volume['name']} is not a Secret"
        return volume["secret"]["secretName"], key


def test_manifests_hang_together(source_dir, proxy_bin, tmp_path):
    """The manifests agree with each other and with the proxy, before any engine runs."""
    m = Manifests(source_dir)
    d = manifest_dir(source_dir)
    listed = set(m.kustomization["resources"])
    on_disk = {f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml lists {sorted(listed)}, the directory has {sorted(on_disk)}"
    assert m.proxy_ctr["image"].split(":")[0] in [i["name"] for i in m.kustomization["images"]]
    kinds = sorted(doc["kind"] for doc in m.docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "Deployment", "NetworkPolicy",
                            "PodDisruptionBudget", "Service", "Service"]), kinds

    # The proxy's pods: two or more, unprivileged, read-only, no privilege escalation.
    spec = m.proxy["spec"]["template"]["spec"]
    assert m.proxy["spec"]["replicas"] >= 2
    pod_sc, sc = spec["securityContext"], m.proxy_ctr["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == PROXY_UID
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    res = m.proxy_ctr["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert int(m.conf["proxy"]["workers"]) == cpus(res["limits"]["cpu"]), \
        "[proxy] workers must match the CPU limit (auto counts the node's CPUs)"

    # --health on the very file the proxy reads, in both probes.
    health = ["/usr/local/bin/smtp-tls-proxy", "--health", "-c", m.config_path]
    for probe in ("readinessProbe", "livenessProbe"):
        assert m.proxy_ctr[probe]["exec"]["command"] == health, probe
        assert m.proxy_ctr[probe]["timeoutSeconds"] > 5, f"{probe}: --health takes up to 5 s"

    # The grace period covers the preStop pause and the whole drain.
    pre_stop = m.proxy_ctr["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep", pre_stop
    drain = seconds(m.conf["proxy"].get("drain_timeout", "30s"))
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + drain + 5, (grace, pre_stop, drain)

    # Files named in the INI come from the right Secrets.
    tls = {m.secret_volume(m.proxy, m.proxy_ctr, m.conf["client_tls"][k]) for k in ("certificate", "key")}
    assert tls == {("smtp-tls-proxy-tls", "tls.crt"), ("smtp-tls-proxy-tls", "tls.key")}, tls
    password = m.secret_volume(m.proxy, m.proxy_ctr, m.conf["store"]["password_file"])
    redis_spec = m.redis["spec"]["template"]["spec"]
    redis_secret = [v["secret"]["secretName"] for v in redis_spec["volumes"] if "secret" in v]
    assert password == ("smtp-tls-proxy-redis", "password") and redis_secret == [password[0]]
    assert "--requirepass" in " ".join(m.redis_ctr["args"])
    for deployment in (m.proxy, m.redis):
        for v in deployment["spec"]["template"]["spec"]["volumes"]:
            if "secret" in v:
                # podman 4.3's kube play crashes on a secret volume without it.
                assert v["secret"]["optional"] is False, v

    # Ports: the INI's listener is the container port named smtp, which the Service
    # publishes as 25, keeping the client's address; Redis is the Service [store] names.
    listen_port = int(m.conf["proxy"]["listen"].split(",")[0].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in m.proxy_ctr["ports"]}
    assert ports["smtp"] == listen_port
    assert ports["metrics"] == int(m.conf["metrics"]["listen"].rsplit(":", 1)[1])
    service = find(m.docs, "Service", m.proxy["metadata"]["name"])
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(25, "smtp")]
    redis_service = find(m.docs, "Service", m.redis_host)
    assert redis_service["spec"]["ports"][0]["port"] == m.redis_port
    assert container(m.redis, m.redis_ctr["name"])["ports"][0]["containerPort"] == m.redis_port

    # Selectors: the Service, the PDB and the NetworkPolicy pick the right pods.
    proxy_labels = m.proxy["spec"]["template"]["metadata"]["labels"]
    redis_labels = m.redis["spec"]["template"]["metadata"]["labels"]

    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(m.proxy["spec"]["selector"]["matchLabels"], proxy_labels)
    assert selects(service["spec"]["selector"], proxy_labels)
    assert not selects(service["spec"]["selector"], redis_labels)
    pdb = next(doc for doc in m.docs if doc["kind"] == "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], proxy_labels)
    assert not selects(pdb["spec"]["selector"]["matchLabels"], redis_labels)
    assert selects(redis_service["spec"]["selector"], redis_labels)
    assert not selects(redis_service["spec"]["selector"], proxy_labels)
    policy = next(doc for doc in m.docs if doc["kind"] == "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], redis_labels)
    peers = policy["spec"]["ingress"][0]["from"]
    assert [selects(p["podSelector"]["matchLabels"], proxy_labels) for p in peers] == [True]

    # The INI itself, with its files replaced by real ones here.
    cert, key = harness.make_cert(str(tmp_path), "mx.example.org")
    pw = tmp_path / "password"
    pw.write_text("secret\n")
    ini = (m.ini.replace(m.conf["client_tls"]["certificate"], cert)
           .replace(m.conf["client_tls"]["key"], key)
           .replace(m.conf["store"]["password_file"], str(pw)))
    path = tmp_path / "smtp-tls-proxy.ini"
    path.write_text(ini)
    p = subprocess.run([proxy_bin, "-t", "-c", str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    assert p.returncode == 0, p.stdout


# --------------------------------------------------------------------------------------
# Played with podman
# --------------------------------------------------------------------------------------

def podman_version(engine):
    out = engine.cmd("version", "--format", "{{.Client.Version}}").stdout.strip()
    return tuple(int(x) for x in re.findall(r"\d+", out)[:2])


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class Kube:
    """`podman kube play` of generated files; down() undoes all of it."""

    def __init__(self, engine, env, tmp):
        self.engine = engine
        self.env = env
        self.tmp = tmp
        self.played = []
        self.volumes = set()
        self.secrets = set()

    def podman(self, *args, timeout=120, check=True):
        p = subprocess.run(self.engine.base + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout, env=self.env)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: exit status {p.returncode}\n"
                                 f"{p.stdout[-6000:]}")
        return p

    def play(self, name, docs):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
        for doc in docs:
            if doc["kind"] == "ConfigMap":
                self.volumes.add(doc["metadata"]["name"])
            elif doc["kind"] == "Secret":
                self.volumes.add(doc["metadata"]["name"])
                self.secrets.add(doc["metadata"]["name"])
        self.down_one(path)  # what a killed earlier run may have left
        self.played.append(path)
        return self.podman("kube", "play", path, timeout=180).stdout

    def down_one(self, path):
        self.podman("kube", "down", path, timeout=120, check=False)

    def down(self):
        for path in reversed(self.played):
            self.down_one(path)
        # kube play makes a volume for each ConfigMap and Secret it mounts, and a podman
        # secret for each Secret; kube down leaves them.
        for volume in sorted(self.volumes):
            self.podman("volume", "rm", "-f", volume, check=False)
        for secret in sorted(self.secrets):
            self.podman("secret", "rm", secret, check=False)
        left = self.podman("ps", "-a", "--filter", f"label={TEST_LABEL}=kube", "-q",
                           check=False).stdout.split()
        assert not left, f"containers left after kube down: {left}"


def pods_of(kube, component):
    """[(pod name, container name)] of the played pods with that component label."""
    out = kube.podman("pod", "ps", "--filter", f"label=app.kubernetes.io/component={component}",
                      "--filter", f"label={TEST_LABEL}=kube", "--format", "json").stdout
    pods = []
    for pod in json.loads(out or "[]"):
        names = [c["Names"] for c in pod["Containers"] if c["Id"] != pod.get("InfraId")]
        assert len(names) == 1, pod
        pods.append((pod["Name"], names[0]))
    return sorted(pods)


def address_of(engine, ctr):
    """(pod address, gateway) of a container on a bridge network."""
    nets = json.loads(engine.inspect(ctr, "{{json .NetworkSettings.Networks}}"))
    net = next(iter(nets.values()))
    return net["IPAddress"], net["Gateway"]


def overlay(m, *, redis_ip, upstream, tls_as_config_map):
    """The test's changes to the manifests (see the module's docstring); returns
    (Redis objects, proxy objects)."""
    redis_docs, proxy_docs = [], []
    for doc in copy.deepcopy(m.docs):
        labels = doc["metadata"].get("labels", {})
        is_redis = labels.get("app.kubernetes.io/component") == "redis"
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            doc["spec"]["template"]["metadata"]["labels"][TEST_LABEL] = "kube"
            for ctr in spec["containers"]:
                ctr.pop("ports", None)
                ctr["image"] = REDIS_IMAGE if is_redis else ds.PROXY_IMAGE
            if not is_redis:
                spec["hostAliases"] = [{"ip": redis_ip, "hostnames": [m.redis_host]}]
                if tls_as_config_map:
                    for v in spec["volumes"]:
                        if v["name"] == "tls":
                            v["configMap"] = {"name": v.pop("secret")["secretName"]}
        elif doc["kind"] == "ConfigMap":
            ini, n = re.subn(r"(?m)^upstream = .*$", f"upstream = {upstream}",
                             doc["data"][m.ini_key])
            assert n == 1, "no upstream line in the ConfigMap"
            doc["data"][m.ini_key] = ini
        (redis_docs if is_redis else proxy_docs).append(doc)
    return redis_docs, proxy_docs


def secret_docs(version, password, cert_pem, key_pem):
    """The two Secrets an operator creates with kubectl (README, "Kubernetes"); on podman
    < 4.4 as described in the module's docstring."""
    old = version < (4, 4)
    # A password of base64 letters whose length is a multiple of 4 reads the same on old
    # podman (which writes the data field as it is) and elsewhere (which decodes it).
    redis = {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "smtp-tls-proxy-redis"}, "type": "Opaque",
             "data": {"password": password if old else b64(password)}}
    tls_data = {"tls.crt": cert_pem, "tls.key": key_pem}
    if old:
        tls = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "smtp-tls-proxy-tls"}, "data": tls_data}
    else:
        tls = {"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "smtp-tls-proxy-tls"}, "type": "kubernetes.io/tls",
               "data": {k: b64(v) for k, v in tls_data.items()}}
    return redis, tls


class Cluster:
    """The played deployment, as the tests see it."""

    def redis_cli(self, *args):
        return self.engine.exec(self.redis_ctr, "env", f"REDISCLI_AUTH={self.password}",
                                "redis-cli", "--no-auth-warning", *args).stdout.strip()

    def logs(self, ctr):
        return self.engine.logs(ctr)


@pytest.fixture(scope="module")
def cluster(request, source_dir, tmp_path_factory):
    engine = ds.podman_engine(request, __file__, NAME)
    tmp = tmp_path_factory.mktemp("kube")
    log = str(tmp / "build.log")
    ds.build_proxy_image(request, engine, source_dir, log, __file__, NAME)
    ds.build_fleet_image(engine, source_dir, "redis", REDIS_IMAGE, log)

    m = Manifests(source_dir)
    version = podman_version(engine)
    env = ds.containers_conf(engine, tmp / "containers.conf")
    kube = Kube(engine, env, str(tmp))
    upstream = None
    c = Cluster()
    c.engine, c.manifests, c.kube = engine, m, kube
    c.password = secrets.token_hex(16)  # 32 hex digits: see secret_docs
    c.cert, c.key = harness.make_cert(str(tmp), "mx.example.org")
    with open(c.cert) as f:
        cert_pem = f.read()
    with open(c.key) as f:
        key_pem = f.read()
    redis_secret, tls_doc = secret_docs(version, c.password, cert_pem, key_pem)
    try:
        started = time.monotonic()
        redis_docs, _ = overlay(m, redis_ip="0.0.0.0", upstream="0.0.0.0:1",
                                tls_as_config_map=version < (4, 4))
        kube.play("redis.yaml", [redis_secret] + redis_docs)
        redis_pods = pods_of(kube, "redis")
        assert len(redis_pods) == 1, redis_pods
        c.redis_ctr = redis_pods[0][1]
        ds.wait_log(engine, c.redis_ctr, r"Ready to accept connections")
        redis_ip, gateway = address_of(engine, c.redis_ctr)

        # The upstream, on this host's side of the pods' bridge (which exists now).
        upstream = harness.AioUpstream(host=gateway)
        upstream.start()
        c.upstream, c.gateway = upstream, gateway

        _, proxy_docs = overlay(m, redis_ip=redis_ip, upstream=upstream.addr,
                                tls_as_config_map=version < (4, 4))
        kube.play("proxy.yaml", [tls_doc] + proxy_docs)
        c.proxies = pods_of(kube, "proxy")
        assert len(c.proxies) == m.proxy["spec"]["replicas"], \
            f"{m.proxy['spec']['replicas']} replicas, pods: {c.proxies}"
        c.addresses = {}
        for _, ctr in c.proxies:
            ds.wait_log(engine, ctr, r"^started ")
            c.addresses[ctr] = address_of(engine, ctr)[0]
        ds.say(request, NAME, f"podman {'.'.join(map(str, version))}: Redis and "
                              f"{len(c.proxies)} proxy pods up in "
                              f"{time.monotonic() - started:.1f} s")
        yield c
    finally:
        try:
            kube.down()
        finally:
            if upstream is not None:
                upstream.stop()


def test_pods_run_as_the_manifests_say(cluster):
    """Each proxy pod: uid 10025, no capability in effect, no new privileges, a read-only
    root, the CPU and memory limits, one worker per CPU of the limit, the ConfigMap's
    INI, and a liveness probe (--health) that passes. Redis runs with its password."""
    c, m = cluster, cluster.manifests
    limits = m.proxy_ctr["resources"]["limits"]
    for _, ctr in c.proxies:
        logs = c.logs(ctr)
        workers = m.conf["proxy"]["workers"]
        assert re.search(rf"^listening address=0\.0\.0\.0:2525 workers={workers}$", logs, re.M), logs
        status = dict(line.split(":\t", 1) for line in
                      c.engine.exec(ctr, "cat", "/proc/1/status").stdout.splitlines()
                      if ":\t" in line)
        assert status["Name"].strip() == "smtp-tls-proxy"
        assert [int(u) for u in status["Uid"].split()] == [PROXY_UID] * 4
        assert status["NoNewPrivs"].strip() == "1"
        # Nothing but NET_BIND_SERVICE, even in the bounding set (the runtime may grant
        # it through the binary's file capability; the port needs none anyway).
        assert int(status["CapEff"], 16) & ~CAP_NET_BIND_SERVICE == 0, status["CapEff"]
        assert int(status["CapBnd"], 16) & ~CAP_NET_BIND_SERVICE == 0, status["CapBnd"]
        host = json.loads(c.engine.inspect(ctr, "{{json .HostConfig}}"))
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == 512 * 1024 * 1024 == int(limits["memory"].rstrip("Mi")) * 1024 * 1024
        assert host["CpuQuota"] / host["CpuPeriod"] == cpus(limits["cpu"])
        mountinfo = c.engine.exec(ctr, "cat", "/proc/1/mountinfo").stdout.splitlines()
        root = [line.split() for line in mountinfo if line.split()[4] == "/"]
        assert root and "ro" in root[-1][5].split(","), mountinfo
        ini = c.engine.exec(ctr, "cat", m.config_path).stdout
        assert ini == re.sub(r"(?m)^upstream = .*$", f"upstream = {c.upstream.addr}", m.ini)
        # The liveness probe, as podman made it a healthcheck (kube play runs it only
        # with systemd timers, so here the test runs it).
        hc = c.engine.cmd("healthcheck", "run", ctr, check=False)
        assert hc.returncode == 0, f"healthcheck of {ctr}: {hc.stdout}"
        out = c.engine.exec(ctr, *m.proxy_ctr["livenessProbe"]["exec"]["command"]).stdout
        assert re.match(r"healthy: 127\.0\.0\.1:2525: 220 ", out), out
    assert c.redis_cli("PING") == "PONG"
    noauth = c.engine.exec(c.redis_ctr, "redis-cli", "PING").stdout
    assert "NOAUTH" in noauth, noauth
    assert c.engine.inspect(c.redis_ctr, "{{.State.Status}}") == "running"
    redis_status = c.engine.exec(c.redis_ctr, "cat", "/proc/1/status").stdout
    assert re.search(r"^Uid:\t999\t", redis_status, re.M), redis_status


def test_mail_through_each_pod(cluster):
    """A message through each pod arrives byte-identical; over STARTTLS each pod shows
    the certificate from the Secret."""
    c = cluster
    before = len(c.upstream.messages)
    for i, (_, ctr) in enumerate(c.proxies):
        addr = c.addresses[ctr]
        with smtplib.SMTP(addr, 2525, local_hostname="client.test", timeout=30) as s:
            client = f"{c.gateway}:{s.sock.getsockname()[1]}"
            assert s.ehlo()[0] == 250
            assert s.has_extn("starttls")
            assert s.starttls(context=harness.tls_client_context())[0] == 220
            assert s.sock.getpeercert(binary_form=True) == harness.cert_der(c.cert)
            assert s.sendmail(FROM, TO, body(i)) == {}
            assert s.quit()[0] == 221
        msg = c.upstream.wait_messages(before + i + 1)[-1]
        assert msg.mail_from == FROM and msg.rcpt_tos == TO
        assert msg.content == body(i)
        # The pod relayed it, from its own address.
        assert msg.peer[0] == addr, (msg.peer, addr)
        # Its session line, from this client's address as it reached the pod.
        line = harness.wait_for(lambda: [x for x in ds.sessions(c.logs(ctr))
                                         if x.get("client") == client], 10,
                                what=f"the session line of {client}")[0]
        assert line["front_tls"].startswith("TLSv1."), line
        assert line["messages"] == "1" and line["end"] == "quit", line


def test_learned_failure_is_shared_through_redis(cluster):
    """A client whose TLS handshake fails on one pod is in Redis, and the other pod does
    not offer it STARTTLS; deleting the key offers it again, on the next session."""
    c = cluster
    (_, first), (_, second) = c.proxies[:2]
    key = f"smtp-tls-proxy:client:{c.gateway}"
    assert c.redis_cli("EXISTS", key) == "0"
    conn = harness.SmtpConn(c.addresses[first], 2525)
    try:
        assert conn.greeting().code == 220
        assert harness.starttls_lines(conn.ehlo())
        assert conn.cmd("STARTTLS").startswith("220 2.0.0")
        conn.send(b"EHLO this is not a TLS ClientHello\r\n")
        conn.wait_eof(10)
    finally:
        conn.close()
    learned = ds.wait_log(c.engine, first, rf"front-tls-learned client={re.escape(c.gateway)}:")
    ttl_ms = int(ds.events(learned, "front-tls-learned")[-1]["ttl_ms"])
    harness.wait_for(lambda: c.redis_cli("GET", key) == "1", 10, what=f"{key} in Redis")
    assert 0 < int(c.redis_cli("PTTL", key)) <= ttl_ms

    def offered(ctr):
        conn = harness.SmtpConn(c.addresses[ctr], 2525)
        try:
            assert conn.greeting().code == 220
            n = len(harness.starttls_lines(conn.ehlo()))
            assert conn.cmd("QUIT").code == 221
            return n == 1
        finally:
            conn.close()

    assert not offered(second), "the other pod still offers STARTTLS"
    hidden = ds.events(c.logs(second), "front-tls-hidden")
    assert hidden and hidden[-1]["reason"] == "learned-failure", hidden
    assert c.redis_cli("DEL", key) == "1"
    assert offered(second) and offered(first)


def test_pod_stops_cleanly(cluster):
    """As the kubelet would: the preStop command, then SIGTERM with the rest of the grace
    period: the proxy drains and exits 0 well within it."""
    c, m = cluster, cluster.manifests
    pod, ctr = c.proxies[-1]
    grace = m.proxy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    c.engine.exec(ctr, *m.proxy_ctr["lifecycle"]["preStop"]["exec"]["command"])
    left = grace - (time.monotonic() - started)
    c.kube.podman("pod", "stop", "-t", str(int(left)), pod, timeout=grace + 30)
    elapsed = time.monotonic() - started
    logs = c.logs(ctr)
    assert c.engine.inspect(ctr, "{{.State.ExitCode}}") == "0", logs[-3000:]
    assert re.search(r"^draining signal=TERM", logs, re.M), logs[-3000:]
    assert re.search(r"^stopped ", logs, re.M), logs[-3000:]
    assert elapsed < grace, f"stopped after {elapsed:.1f} s, grace period {grace} s"
    for marker in harness.SANITIZER_MARKERS:
        assert marker not in logs
