"""The monitoring files in deploy/ against the real binary.

- deploy/prometheus/alerts.yml passes `promtool check rules`, and its unit tests
  (alerts_test.yml) pass `promtool test rules`.
- Every series that alerts.yml, the input series of alerts_test.yml and every query of the
  Grafana dashboard (deploy/grafana/smtp-tls-proxy.json) name is one that a running proxy
  exports on /metrics, with label values it really uses: a renamed or misspelt series
  would otherwise give an alert that never fires and a panel that stays empty, silently.
- The dashboard's queries are valid PromQL (promtool checks them as recording rules), use
  the ${DS_PROMETHEUS} data source and filter on the $instance variable.
- reloads_total counts applied and refused reloads, and build_info carries the version
  that -V prints.

Needs promtool (Debian's prometheus package, installed by tests/install-deps).
"""

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import urllib.request

import pytest
import yaml

import harness

PREFIX = "smtp_tls_proxy_"
# Labels a scraper adds (standard practice: instance identity is the scraper's job).
SCRAPER_LABELS = {"job", "instance"}
# Series that are not the proxy's own but may be named: the scrape's health.
OTHER_SERIES = {"up"}

IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# PromQL words that are not series names (aggregations and functions are followed by "(",
# and are checked by promtool).
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "atan2"}
# Grafana's variables, as a valid PromQL stand-in for promtool's syntax check.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "$instance": ".*"}


# --- the proxy's real series ------------------------------------------------------------

LABEL_RE = re.compile(r'(' + IDENT + r')\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """The sample lines of Prometheus text: a list of (name, {label: value})."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(" + IDENT + r")(\{[^}]*\})?\s+\S+$", line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        out.append((m.group(1), labels))
    return out


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


# --- names in PromQL --------------------------------------------------------------------

MATCHER_RE = re.compile(r'(' + IDENT + r')\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def selectors(expr):
    """The series selectors of a PromQL expression: a list of (name, [(label, op, value)]).

    Raises AssertionError for what it cannot read, so that nothing escapes the check."""
    found = []
    rest = expr
    # name{matchers} or {matchers}: take each out, with its matchers.
    sel_re = re.compile(r"(" + IDENT + r")?\s*\{([^{}]*)\}")

    def take(m):
        matchers = MATCHER_RE.findall(m.group(2))
        left = MATCHER_RE.sub("", m.group(2)).replace(",", "").strip()
        assert left == "", f"cannot read the matchers {m.group(2)!r} in {expr!r}"
        name = m.group(1)
        if name is None:
            names = [v for (k, op, v) in matchers if k == "__name__" and op == "="]
            assert names, f"a selector without a series name in {expr!r}"
            name = names[0]
        found.append((name, matchers))
        return " "
    rest = sel_re.sub(take, rest)
    # Ranges and subqueries, label lists of by/without/on/ignoring/group_*, strings.
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", rest)
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', " ", rest)
    # Durations after offset, numbers (1e3, 0.5, 0x1f), Grafana variables.
    rest = re.sub(r"\$\{?" + IDENT + r"\}?", " ", rest)
    rest = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?[a-z]*\b", " ", rest)
    rest = re.sub(r"\b0x[0-9a-fA-F]+\b", " ", rest)
    for m in re.finditer(IDENT, rest):
        word = m.group(0)
        if word.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", rest[m.end():]):
            continue  # a function or an aggregation
        found.append((word, []))
    return found


def label_values_selectors(query):
    """Grafana's label_values(selector, label) or label_values(label): the selectors, and
    the label asked for."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(" + IDENT + r")\s*\)\s*", query)
    if m is None:
        m1 = re.fullmatch(r"\s*label_values\(\s*(" + IDENT + r")\s*\)\s*", query)
        assert m1, f"cannot read the variable query {query!r}"
        return [], m1.group(1)
    return selectors(m.group(1)), m.group(2)


class Exported:
    """What the proxy exports: series names and, per name, the label sets."""

    def __init__(self, samples):
        self.by_name = {}
        for name, labels in samples:
            self.by_name.setdefault(name, []).append(labels)

    def problems(self, name, matchers, where):
        """Why the selector |name|{matchers} names nothing the proxy exports ([] if fine)."""
        if name in OTHER_SERIES:
            return []
        if not name.startswith(PREFIX):
            return [f"{where}: {name} is not a series of the proxy (nor up)"]
        if name not in self.by_name:
            return [f"{where}: {name} is not exported by the proxy"]
        out = []
        for label, op, value in matchers:
            if label in SCRAPER_LABELS or label == "__name__" or op in ("!=", "!~"):
                continue
            values = {labels.get(label) for labels in self.by_name[name]}
            if values == {None}:
                out.append(f"{where}: {name} has no label {label}")
                continue
            if op == "=":
                ok = value in values
            else:
                pattern = re.compile(value)
                ok = any(v is not None and pattern.fullmatch(v) for v in values)
            if not ok:
                out.append(f"{where}: {name}{{{label}{op}\"{value}\"}} matches no exported "
                           f"series (values: {sorted(v for v in values if v is not None)})")
        return out


# --- the files --------------------------------------------------------------------------

def load_rules(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_targets(dashboard):
    """Every query target of the dashboard, panels in rows included: (where, target)."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((f"panel {panel.get('title')!r} {target.get('refId')}", target))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def dashboard_queries(dashboard):
    """Every PromQL query of the dashboard: (where, expr)."""
    targets = dashboard_targets(dashboard)
    for where, target in targets:
        assert "expr" in target, f"{where}: a target without a PromQL expr"
    return [(where, target["expr"]) for where, target in targets]


def dashboard_variable_queries(dashboard):
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        out.append((f"variable {var['name']}", query))
    return out


def input_series(test_doc):
    """alerts_test.yml's input series: (where, name, matchers)."""
    out = []
    for n, test in enumerate(test_doc["tests"]):
        for item in test.get("input_series", []):
            sels = selectors(item["series"])
            assert len(sels) == 1, item["series"]
            name, matchers = sels[0]
            out.append((f"alerts_test.yml test {n} series {item['series']}", name, matchers))
    return out


def all_problems(exported, alert_rules, test_doc, dashboard):
    """Every reference to a series that the proxy does not export, as readable lines."""
    problems = []
    for rule in alert_rules:
        where = f"alerts.yml {rule.get('alert') or rule.get('record')}"
        for name, matchers in selectors(rule["expr"]):
            problems += exported.problems(name, matchers, where)
    for where, name, matchers in input_series(test_doc):
        problems += exported.problems(name, matchers, where)
    for where, expr in dashboard_queries(dashboard):
        for name, matchers in selectors(expr):
            problems += exported.problems(name, matchers, f"dashboard {where}")
    for where, query in dashboard_variable_queries(dashboard):
        sels, _label = label_values_selectors(query)
        for name, matchers in sels:
            problems += exported.problems(name, matchers, f"dashboard {where}")
    return problems


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(tests/install-deps does)")
    return path


@pytest.fixture(scope="module")
def deploy(source_dir):
    prom = os.path.join(source_dir, "deploy", "prometheus")
    graf = os.path.join(source_dir, "deploy", "grafana", "smtp-tls-proxy.json")
    with open(os.path.join(prom, "alerts_test.yml")) as f:
        test_doc = yaml.safe_load(f)
    with open(graf) as f:
        dashboard = json.load(f)
    return {"dir": prom, "rules": load_rules(os.path.join(prom, "alerts.yml")),
            "test_doc": test_doc, "dashboard": dashboard}


@pytest.fixture(scope="module")
def exported_text(tmp_path_factory, proxy_bin):
    """The /metrics text of a real proxy after one relayed message and two reloads (one
    applied, one refused), and the version -V printed."""
    workdir = str(tmp_path_factory.mktemp("monitoring"))
    upstream = harness.AioUpstream()
    upstream.start()
    mport = harness.free_port()
    port = harness.free_port()
    sections = harness.base_sections([f"127.0.0.1:{port}"], upstream.addr,
                                     {"metrics": {"listen": f"127.0.0.1:{mport}"}})
    proxy = harness.Proxy(proxy_bin, workdir, sections, [port])
    try:
        proxy.start()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@client.test", ["b@upstream.test"],
                            b"Subject: monitoring\r\n\r\nhello\r\n")
        upstream.wait_messages(1)
        harness.wait_for(lambda: proxy.session_lines(), 10, what="the session line")
        proxy.signal(signal.SIGHUP)
        proxy.wait_event("reloaded")
        with open(proxy.ini_path, "a") as f:
            f.write("\n[no_such_section]\n")
        proxy.signal(signal.SIGHUP)
        proxy.wait_event("reload-failed")
        text = scrape(mport)
        proxy.stop()
    finally:
        proxy.kill()
        upstream.stop()
    version = subprocess.run([proxy_bin, "-V"], capture_output=True, text=True, check=True)
    return text, version.stdout


@pytest.fixture(scope="module")
def exported(exported_text):
    return Exported(parse_exposition(exported_text[0]))


# --- tests ------------------------------------------------------------------------------

def test_promtool_check_rules(promtool, deploy):
    r = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=deploy["dir"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(deploy['rules'])} rules found" in r.stdout, r.stdout


def test_promtool_test_rules(promtool, deploy):
    r = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=deploy["dir"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_every_alert_is_unit_tested_and_documented(deploy, source_dir):
    """Each alert fires in at least one promtool test, carries a severity and a summary,
    and its runbook_url points to a README paragraph that exists."""
    tested = {case["alertname"]
              for test in deploy["test_doc"]["tests"]
              for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    with open(os.path.join(source_dir, "README.md")) as f:
        readme = f.read()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", readme, re.M)}
    for rule in deploy["rules"]:
        name = rule["alert"]
        assert name in tested, f"{name} never fires in alerts_test.yml"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("README.md#") and url.split("#", 1)[1] in anchors, \
            f"{name}: runbook_url {url} names no README heading"


def test_build_info_and_reloads(exported_text):
    text, version_out = exported_text
    version = re.match(r"smtp-tls-proxy (\S+)\n", version_out).group(1)
    samples = parse_exposition(text)
    assert ("smtp_tls_proxy_build_info", {"version": version}) in samples, text
    assert f'smtp_tls_proxy_build_info{{version="{version}"}} 1\n' in text
    assert 'smtp_tls_proxy_reloads_total{result="ok"} 1\n' in text, text
    assert 'smtp_tls_proxy_reloads_total{result="failed"} 1\n' in text, text
    assert "smtp_tls_proxy_messages_total 1\n" in text, text


def test_names_are_exported(exported, deploy):
    """alerts.yml, alerts_test.yml's input series and the dashboard name only series (and
    label values) that the proxy exports."""
    problems = all_problems(exported, deploy["rules"], deploy["test_doc"], deploy["dashboard"])
    assert not problems, "\n".join(problems)
    # And they do name something: the check is not vacuous.
    names = {name for rule in deploy["rules"] for name, _ in selectors(rule["expr"])}
    names |= {name for _, expr in dashboard_queries(deploy["dashboard"])
              for name, _ in selectors(expr)}
    assert len(names & set(exported.by_name)) >= 15, names


def replaced(obj, old, new):
    """A copy of a decoded JSON or YAML document with |old| replaced in every string."""
    if isinstance(obj, dict):
        return {k: replaced(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [replaced(v, old, new) for v in obj]
    if isinstance(obj, str):
        return obj.replace(old, new)
    return obj


def test_a_wrong_name_fails_the_check(exported, deploy):
    """The check catches a misspelt series, a wrong prefix, a label value the proxy never
    uses, and the same in the real dashboard and test file."""
    bad = [
        'sum(rate(smtp_tls_proxy_sesions_total[5m]))',
        'rate(smtp_tsl_proxy_sessions_total[5m])',
        'rate(smtp_tls_proxy_sessions_total{end="upstream-unreachble"}[5m])',
        'rate(smtp_tls_proxy_front_starttls_total{result=~"use|fail"}[5m]) > 0',
        'histogram_quantile(0.9, sum by (le) (rate(smtp_tls_proxy_session_second_bucket[5m])))',
        'smtp_tls_proxy_messages_total / on (instance) group_left smtp_tls_proxy_mesages_total',
    ]
    for expr in bad:
        problems = [p for name, m in selectors(expr) for p in exported.problems(name, m, "x")]
        assert problems, f"the check let {expr!r} through"
    good = 'sum by (job, instance) (rate(smtp_tls_proxy_sessions_total{end="quit"}[5m])) > 0'
    assert not [p for name, m in selectors(good) for p in exported.problems(name, m, "x")]

    # One name changed in a copy of the real files: the check fails.
    for old, new in (("smtp_tls_proxy_sessions_total", "smtp_tls_proxy_session_total"),
                     ("smtp_tls_proxy_messages_total", "smtp_tls_messages_total"),
                     ('{end="upstream-unreachable"', '{end="upstream-unreachble"')):
        hits = 0
        for n in range(3):
            files = [deploy["rules"], deploy["test_doc"], deploy["dashboard"]]
            changed = replaced(files[n], old, new)
            if changed == files[n]:
                continue
            hits += 1
            files[n] = changed
            assert all_problems(exported, *files), (n, old, new)
        assert hits > 0, old
    dashboard = json.loads(json.dumps(deploy["dashboard"]))
    target = next(t for _, t in dashboard_targets(dashboard) if "sessions_total" in t["expr"])
    target["expr"] = target["expr"].replace("sessions_total", "sesions_total")
    assert all_problems(exported, deploy["rules"], deploy["test_doc"], dashboard)

    test_doc = json.loads(json.dumps(deploy["test_doc"]))
    item = test_doc["tests"][1]["input_series"][0]
    item["series"] = item["series"].replace("sessions_total", "session_total")
    assert all_problems(exported, deploy["rules"], test_doc, deploy["dashboard"])


def test_dashboard_queries_are_valid_promql(promtool, deploy, tmp_path):
    """promtool parses every dashboard query (as a recording rule, Grafana's variables
    replaced by values of the same kind)."""
    queries = dashboard_queries(deploy["dashboard"])
    assert len(queries) >= 20
    rules = []
    for n, (where, expr) in enumerate(queries):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_shape(deploy):
    """The data source is the ${DS_PROMETHEUS} variable everywhere, the instance variable
    comes from build_info, and every selector of a proxy series filters on it."""
    dashboard = deploy["dashboard"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"]["uid"] == "${DS_PROMETHEUS}"
    sels, label = label_values_selectors(instance["query"])
    assert label == "instance" and [s[0] for s in sels] == ["smtp_tls_proxy_build_info"]

    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            for name, matchers in selectors(target["expr"]):
                assert ("instance", "=~", "$instance") in matchers, \
                    f"{panel['title']}: {name} does not filter on $instance"
    # The families the issue asks for each have a panel.
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    for needed in ("sessions_total", "messages_total", "front_starttls_total",
                   "back_tls_total", "back_tls_fallback_total", "front_learned_entries",
                   "back_remembered_entries", "limit_refusals_total",
                   "session_seconds_bucket", "front_handshake_seconds_bucket",
                   "back_handshake_seconds_bucket"):
        assert PREFIX + needed in exprs, needed
    assert "histogram_quantile(" in exprs
