"""TLS-RPT (RFC 8460) report checks, for any test that has a report in hand.

    import tlsrpt_check
    report = tlsrpt_check.load(text)           # json.loads, refusing duplicate member names
    tlsrpt_check.validate_rfc8460(report)      # the schema: RFC 8460 section 4's MUSTs
    tlsrpt_check.check_proxy_report(report)    # + what the proxy's own reports promise
    tlsrpt_check.check_file_name(name, report, sender="mx.example")

SCHEMA_PATH is tests/unit/data/tlsrpt.schema.json, written from RFC 8460 section 4 (the
RFC publishes no schema file; the schema's $comment says what it encodes). Validation uses
Debian's python3-jsonschema (tests/install-deps). Each function raises AssertionError (or
jsonschema.ValidationError) naming what is wrong.
"""

import datetime
import ipaddress
import json
import os
import re

import jsonschema

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit", "data",
                           "tlsrpt.schema.json")

_validator = None


def validator():
    """The Draft 2020-12 validator of SCHEMA_PATH, with format checking (ipv4/ipv6, and
    date-time where the optional checker is installed; the schema's patterns do not rely
    on it)."""
    global _validator
    if _validator is None:
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
        _validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return _validator


def _no_duplicates(pairs):
    names = [k for k, _ in pairs]
    dup = {k for k in names if names.count(k) > 1}
    assert not dup, f"duplicate member names {sorted(dup)} (RFC 7493 section 2.3)"
    return dict(pairs)


def load(text):
    """Parses a report as I-JSON (RFC 7493): UTF-8, no duplicate names, no NaN."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # raises on invalid UTF-8

    def no_constant(name):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=no_constant)


def validate_rfc8460(report):
    """Validates a parsed report against the schema; raises jsonschema.ValidationError."""
    validator().validate(report)


_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                   r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_KNOWN = {
    "report": {"organization-name", "date-range", "contact-info", "report-id", "policies"},
    "date-range": {"start-datetime", "end-datetime"},
    "policies": {"policy", "summary", "failure-details"},
    "policy": {"policy-type", "policy-string", "policy-domain", "mx-host"},
    "summary": {"total-successful-session-count", "total-failure-session-count"},
    "failure-details": {"result-type", "sending-mta-ip", "receiving-mx-hostname",
                        "receiving-mx-helo", "receiving-ip", "failed-session-count",
                        "additional-information", "failure-reason-code"},
}
_ORDER = {
    "report": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "policy": ["policy-type", "policy-string", "policy-domain", "mx-host"],
    "failure-details": ["result-type", "sending-mta-ip", "receiving-mx-hostname",
                        "receiving-mx-helo", "receiving-ip", "failed-session-count",
                        "additional-information", "failure-reason-code"],
}


def _members(obj, kind):
    unknown = set(obj) - _KNOWN[kind]
    assert not unknown, f"{kind}: members RFC 8460 does not define: {sorted(unknown)}"
    if kind in _ORDER:
        order = [k for k in _ORDER[kind] if k in obj]
        assert list(obj) == order, f"{kind}: members {list(obj)}, section 4.4 order {order}"


def _canonical_ip(text):
    ip = ipaddress.ip_address(text)
    assert ip.compressed == text, f"{text!r} is not in RFC 5952 form"
    assert ip.version == 4 or ip.ipv4_mapped is None, f"{text!r}: report IPv4 as IPv4"


def _utc(text):
    assert text.endswith("Z"), text
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)


def check_proxy_report(report, partial=False):
    """validate_rfc8460, then what proxy/tlsrpt.c promises beyond the RFC's MUSTs: only the
    RFC's members, in section 4.4's order; a whole UTC day (00:00:00Z to 23:59:59Z; with
    |partial|, from 00:00:00Z to a time that day); addresses in RFC 5952 form; domains and
    MX names lowercase without a trailing dot; IPv4-mapped addresses as IPv4; policy-string exactly for sts and tlsa,
    mx-host only for sts; at least one policy; no empty failure-details; row counts >= 1
    and not more than the summary's failures."""
    validate_rfc8460(report)
    _members(report, "report")
    _members(report["date-range"], "date-range")
    start = _utc(report["date-range"]["start-datetime"])
    end = _utc(report["date-range"]["end-datetime"])
    assert (start.hour, start.minute, start.second) == (0, 0, 0), start
    assert end.date() == start.date(), (start, end)
    if not partial:
        assert (end.hour, end.minute, end.second) == (23, 59, 59), end
    assert report["policies"], "a report without policies"
    for entry in report["policies"]:
        _members(entry, "policies")
        policy = entry["policy"]
        _members(policy, "policy")
        _members(entry["summary"], "summary")
        assert _HOST.match(policy["policy-domain"]), policy["policy-domain"]
        kind = policy["policy-type"]
        assert ("policy-string" in policy) == (kind != "no-policy-found"), policy
        assert "mx-host" not in policy or kind == "sts", policy
        for pattern in policy.get("mx-host", []):
            assert _HOST.match(pattern[2:] if pattern.startswith("*.") else pattern), pattern
        rows = entry.get("failure-details")
        assert rows is None or rows, "an empty failure-details"
        total = 0
        for row in rows or []:
            _members(row, "failure-details")
            _canonical_ip(row["sending-mta-ip"])
            assert "receiving-ip" in row, row
            _canonical_ip(row["receiving-ip"])
            if "receiving-mx-hostname" in row:
                assert _HOST.match(row["receiving-mx-hostname"]), row
            assert row["failed-session-count"] >= 1, row
            total += row["failed-session-count"]
        assert total <= entry["summary"]["total-failure-session-count"], entry


def check_file_name(name, report, sender):
    """The file name is RFC 8460 section 5.1's, for this report: sender!policy-domain!
    begin!end[!unique-id].json[.gz], the timestamps those of the report's date-range."""
    m = re.fullmatch(r"([a-z0-9.-]+)!([a-z0-9.-]+)!([0-9]+)!([0-9]+)(![A-Za-z0-9]+)?"
                     r"\.json(\.gz)?", name)
    assert m, name
    assert m.group(1) == sender, name
    domains = {p["policy"]["policy-domain"] for p in report["policies"]}
    assert domains == {m.group(2)}, (name, domains)
    begin = _utc(report["date-range"]["start-datetime"]).timestamp()
    end = _utc(report["date-range"]["end-datetime"]).timestamp()
    assert (int(m.group(3)), int(m.group(4))) == (begin, end), name
