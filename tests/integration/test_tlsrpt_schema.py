"""TLS-RPT reports rendered by proxy/tlsrpt.c, validated against the RFC 8460 schema.

tests/unit/tlsrpt_render (built with the tests; its path comes from TLSRPT_RENDER, set by
tests/CMakeLists.txt, or is found next to PROXY_BIN) drives the aggregator from a script
and prints each report as "<file name>\\t<json>". Every report must be I-JSON, valid under
tests/unit/data/tlsrpt.schema.json (written from RFC 8460 section 4), keep the proxy's own
stricter promises (tlsrpt_check.check_proxy_report) and carry a section 5.1 file name.
The schema itself is checked too: the RFC's example report passes, broken reports fail,
and its IPv6 pattern agrees with Python's ipaddress.
"""

import copy
import ipaddress
import os
import random
import re
import subprocess

import jsonschema
import pytest

import tlsrpt_check

DAY0 = 1796083200  # 2026-12-01T00:00:00Z
DAY = 86400
SENDER = "reporter.example"


def render_bin():
    path = os.environ.get("TLSRPT_RENDER")
    if not path and os.environ.get("PROXY_BIN"):
        path = os.path.join(os.path.dirname(os.environ["PROXY_BIN"]), "tests", "tlsrpt_render")
    assert path and os.access(path, os.X_OK), \
        f"tlsrpt_render not found (TLSRPT_RENDER={os.environ.get('TLSRPT_RENDER')!r})"
    return path


def render(script):
    """Runs the script; returns [(file name, parsed report, raw JSON)]."""
    proc = subprocess.run([render_bin()], input=script.encode(), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"ERROR: AddressSanitizer" not in proc.stderr, proc.stderr
    out = []
    for line in proc.stdout.decode("ascii").splitlines():  # the JSON is ASCII
        name, raw = line.split("\t", 1)
        out.append((name, tlsrpt_check.load(raw), raw))
    return out


def check_all(reports, partial=False):
    for name, report, raw in reports:
        assert all(0x20 <= ord(c) < 0x7f for c in raw), raw
        tlsrpt_check.check_proxy_report(report, partial=partial)
        tlsrpt_check.check_file_name(name, report, SENDER)


def lines(*rows):
    return "".join("\t".join(str(f) for f in row) + "\n" for row in rows)


def test_rfc_like_report():
    script = lines(
        ("policy", "sts", "company-y.example"),
        ("string", "version: STSv1"), ("string", "mode: testing"),
        ("string", "mx: *.mail.company-y.example"), ("string", "max_age: 86400"),
        ("mx", "*.mail.company-y.example"),
        ("success", DAY0 + 10, 5326),
        *[("failure", DAY0 + 20, "certificate-expired", "2001:db8:abcd:0012::1", "203.0.113.55",
           "mx=mx1.mail.company-y.example")] * 100,
        *[("failure", DAY0 + 30, "starttls-not-supported", "2001:db8:abcd:0013::1",
           "203.0.113.56", "mx=mx2.mail.company-y.example",
           "info=https://reports.company-x.example/report_info?id=5065427c-23d3"
           "#StarttlsNotSupported")] * 200,
        *[("failure", DAY0 + 40, "validation-failure", "198.51.100.62", "203.0.113.58",
           "mx=mx-backup.mail.company-y.example",
           "reason=X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED")] * 3,
        ("take", DAY0 + DAY),
    )
    reports = render(script)
    check_all(reports)
    assert len(reports) == 1
    name, report, _ = reports[0]
    assert name == f"{SENDER}!company-y.example!{DAY0}!{DAY0 + DAY - 1}.json"
    assert report["date-range"] == {"start-datetime": "2026-12-01T00:00:00Z",
                                    "end-datetime": "2026-12-01T23:59:59Z"}
    (entry,) = report["policies"]
    assert entry["policy"] == {
        "policy-type": "sts",
        "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.company-y.example",
                          "max_age: 86400"],
        "policy-domain": "company-y.example",
        "mx-host": ["*.mail.company-y.example"],
    }
    assert entry["summary"] == {"total-successful-session-count": 5326,
                                "total-failure-session-count": 303}
    rows = entry["failure-details"]
    assert [r["failed-session-count"] for r in rows] == [100, 200, 3]
    assert rows[0]["sending-mta-ip"] == "2001:db8:abcd:12::1"  # RFC 5952 form
    assert rows[2]["failure-reason-code"] == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"


# Every byte but NUL (which a C string cannot hold), then quotes, backslashes and a tag.
NASTY_RAW = bytes(range(1, 256)) + b"\\\"'</script>\t\n"
NASTY = "".join(chr(b) if 0x20 < b < 0x7f and b != 0x5c else f"\\x{b:02x}" for b in NASTY_RAW)


def test_tlsa_no_policy_change_and_nasty_bytes():
    script = lines(
        ("policy", "tlsa", "Example.NET."),
        ("string", "3 1 1 1F850A337E6DB9C609C522D136A475638CC43E1ED424F8EEC8513D747D1D085D"),
        ("string", "2 0 1 12350A337E6DB9C6123522D136A475638CC43E1ED424F8EEC8513D747D1D1234"),
        ("success", DAY0 + 1, 7),
        ("failure", DAY0 + 2, "tlsa-invalid", "192.0.2.1", "::ffff:198.51.100.9",
         "mx=MX.Example.NET.", "helo=" + NASTY, "reason=" + NASTY),
        ("failure", DAY0 + 3, "dnssec-invalid", "192.0.2.1", "2001:DB8::9"),
        ("failure", DAY0 + 3, "dane-required", "192.0.2.1", "2001:db8::9", "helo=\\xf0\\x9f\\x98\\x80"
         "\\xe2\\x80\\xa8\\xed\\xa0\\x80"),
        # The TLSA RRset changed during the day: a second "policies" entry.
        ("policy", "tlsa", "example.net"),
        ("string", "3 1 1 AB"),
        ("success", DAY0 + 100),
        ("policy", "no-policy-found", "example.net"),
        ("success", DAY0 + 200, 2),
        ("failure", DAY0 + 300, "starttls-not-supported", "192.0.2.1", "198.51.100.1"),
        ("policy", "sts", "example.net"),
        ("string", "version: STSv1"), ("string", "mode: enforce"),
        ("string", "mx: \\xc3\\xa9.example"), ("string", "x-ext: \\x01\\x7f\\xff"),
        ("mx", "MX.example.net."),
        ("failure", DAY0 + 400, "sts-webpki-invalid", "192.0.2.1", "198.51.100.1",
         "info=https://x.example/a?b=%22c%22"),
        ("failure", DAY0 + 401, "sts-policy-fetch-error", "192.0.2.1", "198.51.100.1"),
        ("failure", DAY0 + 402, "sts-policy-invalid", "192.0.2.1", "198.51.100.1"),
        ("take", DAY0 + DAY),
    )
    reports = render(script)
    check_all(reports)
    assert len(reports) == 1
    report = reports[0][1]
    policies = report["policies"]
    assert [p["policy"]["policy-type"] for p in policies] == ["tlsa", "tlsa", "no-policy-found",
                                                              "sts"]
    assert all(p["policy"]["policy-domain"] == "example.net" for p in policies)
    rows = policies[0]["failure-details"]
    assert rows[0]["receiving-ip"] == "198.51.100.9"  # IPv4-mapped: the IPv4 peer
    assert rows[0]["receiving-mx-hostname"] == "mx.example.net"
    # Bytes are escaped, ill-formed UTF-8 replaced (one U+FFFD per maximal subpart, as
    # Python's decoder does too), and the text cut at TLSRPT_TEXT_MAX (255) input bytes.
    assert rows[0]["failure-reason-code"] == NASTY_RAW[:255].decode("utf-8", errors="replace")
    assert rows[0]["receiving-mx-helo"] == rows[0]["failure-reason-code"]
    assert rows[1]["receiving-ip"] == "2001:db8::9"
    assert rows[2]["receiving-mx-helo"] == "\U0001f600\u2028\ufffd\ufffd\ufffd"
    assert policies[3]["policy"]["policy-string"][2] == "mx: \u00e9.example"
    assert policies[3]["policy"]["policy-string"][3] == "x-ext: \x01\x7f\ufffd"
    assert policies[3]["policy"]["mx-host"] == ["mx.example.net"]
    assert policies[3]["summary"] == {"total-successful-session-count": 0,
                                      "total-failure-session-count": 3}


def test_overflow_rows_and_domains_and_days():
    rows = [("failure", DAY0 + i, "validation-failure", "192.0.2.1", f"10.0.{i // 256}.{i % 256}")
            for i in range(130)]
    script = lines(
        ("policy", "sts", "big.example"), ("string", "version: STSv1"),
        ("string", "mode: testing"), ("string", "mx: mx.big.example"),
        ("string", "max_age: 604800"), ("mx", "mx.big.example"),
        *rows,
        ("policy", "no-policy-found", "a.example"),
        ("success", DAY0 - 5),
        ("success", DAY0 + 5),
        ("success", DAY0 + DAY + 5),
        ("take", DAY0 + DAY),
        ("snapshot", DAY0 + DAY + 3600),
        ("take", DAY0 + 3 * DAY),
    )
    reports = render(script)
    assert len(reports) == 5
    check_all(reports[:3])
    check_all(reports[3:4], partial=True)
    check_all(reports[4:])
    names = [r[0] for r in reports]
    assert names[0] == f"{SENDER}!a.example!{DAY0 - DAY}!{DAY0 - 1}.json"
    assert names[1] == f"{SENDER}!a.example!{DAY0}!{DAY0 + DAY - 1}.json"
    assert names[2] == f"{SENDER}!big.example!{DAY0}!{DAY0 + DAY - 1}.json"
    assert names[3] == f"{SENDER}!a.example!{DAY0 + DAY}!{DAY0 + DAY + 3600}.json"
    assert names[4] == f"{SENDER}!a.example!{DAY0 + DAY}!{DAY0 + 2 * DAY - 1}.json"
    big = reports[2][1]["policies"][0]
    assert len(big["failure-details"]) == 100
    assert big["summary"]["total-failure-session-count"] == 130
    assert reports[3][1]["date-range"]["end-datetime"] == "2026-12-02T01:00:00Z"


# RFC 8460 Appendix B's example report, its additional-information URI without the line
# breaks the RFC's text wrapping put into it.
RFC_EXAMPLE = {
    "organization-name": "Company-X",
    "date-range": {"start-datetime": "2016-04-01T00:00:00Z",
                   "end-datetime": "2016-04-01T23:59:59Z"},
    "contact-info": "sts-reporting@company-x.example",
    "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    "policies": [{
        "policy": {
            "policy-type": "sts",
            "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.company-y.example",
                              "max_age: 86400"],
            "policy-domain": "company-y.example",
            "mx-host": ["*.mail.company-y.example"],
        },
        "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
        "failure-details": [{
            "result-type": "certificate-expired",
            "sending-mta-ip": "2001:db8:abcd:0012::1",
            "receiving-mx-hostname": "mx1.mail.company-y.example",
            "failed-session-count": 100,
        }, {
            "result-type": "starttls-not-supported",
            "sending-mta-ip": "2001:db8:abcd:0013::1",
            "receiving-mx-hostname": "mx2.mail.company-y.example",
            "receiving-ip": "203.0.113.56",
            "failed-session-count": 200,
            "additional-information": "https://reports.company-x.example/report_info"
                                      "?id=5065427c-23d3#StarttlsNotSupported",
        }, {
            "result-type": "validation-failure",
            "sending-mta-ip": "198.51.100.62",
            "receiving-ip": "203.0.113.58",
            "receiving-mx-hostname": "mx-backup.mail.company-y.example",
            "failed-session-count": 3,
            "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED",
        }],
    }],
}


def test_schema_accepts_the_rfc_example():
    tlsrpt_check.validate_rfc8460(RFC_EXAMPLE)
    # Not the proxy's own form: "0012" is not RFC 5952, and a row has no receiving-ip.
    with pytest.raises(AssertionError):
        tlsrpt_check.check_proxy_report(RFC_EXAMPLE)


def _mutated(path, value):
    r = copy.deepcopy(RFC_EXAMPLE)
    node = r
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return r


POLICY = ("policies", 0, "policy")
ROW = ("policies", 0, "failure-details", 0)
SUMMARY = ("policies", 0, "summary")


@pytest.mark.parametrize("path,value", [
    (("organization-name",), KeyError),
    (("date-range",), KeyError),
    (("date-range", "end-datetime"), KeyError),
    (("date-range", "start-datetime"), "2016-04-01 00:00:00"),
    (("date-range", "start-datetime"), "2016-13-01T00:00:00Z"),
    (("date-range", "start-datetime"), 1459468800),
    (("contact-info",), KeyError),
    (("contact-info",), "Company X reporting"),
    (("contact-info",), "r\u00e9ports@company-x.example"),
    (("report-id",), KeyError),
    (("policies",), KeyError),
    (("policies",), RFC_EXAMPLE["policies"][0]),  # MUST be an array
    (("policies", 0, "summary"), KeyError),
    (("policies", 0, "policy"), KeyError),
    (POLICY + ("policy-type",), "dane"),
    (POLICY + ("policy-type",), KeyError),
    (POLICY + ("policy-domain",), "b\u00fccher.example"),  # a U-label
    (POLICY + ("policy-domain",), KeyError),
    (POLICY + ("policy-domain",), "-bad.example"),
    (POLICY + ("policy-string",), KeyError),
    (POLICY + ("policy-string",), []),
    (POLICY + ("policy-string",), "version: STSv1"),
    (POLICY + ("mx-host",), "*.mail.company-y.example"),
    (POLICY + ("mx-host",), ["*.m\u00e4il.example"]),
    (SUMMARY + ("total-failure-session-count",), KeyError),
    (SUMMARY + ("total-failure-session-count",), "303"),
    (SUMMARY + ("total-failure-session-count",), -1),
    (SUMMARY + ("total-failure-session-count",), 3.5),
    (SUMMARY + ("total-successful-session-count",), 2 ** 53),
    (("policies", 0, "failure-details"), {}),
    (ROW + ("result-type",), "tls-version-invalid"),
    (ROW + ("result-type",), KeyError),
    (ROW + ("sending-mta-ip",), KeyError),
    (ROW + ("sending-mta-ip",), "192.0.2.256"),
    (ROW + ("sending-mta-ip",), "192.0.2.01"),
    (ROW + ("sending-mta-ip",), "fe80::1%eth0"),
    (ROW + ("sending-mta-ip",), "mx.example"),
    (ROW + ("receiving-ip",), "1:2:3:4:5:6:7:8:9"),
    (ROW + ("failed-session-count",), KeyError),
    (ROW + ("failed-session-count",), True),
    (ROW + ("receiving-mx-helo",), 5),
])
def test_schema_rejects(path, value):
    with pytest.raises(jsonschema.ValidationError):
        tlsrpt_check.validate_rfc8460(_mutated(path, value))


def test_schema_no_policy_found_needs_no_strings():
    r = copy.deepcopy(RFC_EXAMPLE)
    r["policies"][0]["policy"] = {"policy-type": "no-policy-found",
                                  "policy-domain": "company-y.example"}
    tlsrpt_check.validate_rfc8460(r)


def test_schema_ip_patterns_agree_with_ipaddress():
    rng = random.Random(8460)
    schema = tlsrpt_check.validator().schema
    v4, v6 = (re.compile(b["pattern"]) for b in schema["$defs"]["ip-address"]["anyOf"])
    alphabet = "0123456789abcdefABCDEF:.:::"
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 45)))
        try:
            ip = ipaddress.ip_address(s)
            want4, want6 = ip.version == 4, ip.version == 6
        except ValueError:
            want4 = want6 = False
        assert bool(v4.match(s)) == want4, s
        assert bool(v6.match(s)) == want6, s
    for _ in range(5000):
        a = ipaddress.IPv6Address(rng.getrandbits(128) >> rng.choice([0, 32, 64, 96, 112]))
        for s in (a.compressed, a.exploded, str(a).upper()):
            assert v6.match(s), s
        mapped = ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(rng.getrandbits(32))}")
        assert v6.match(str(mapped)) and v6.match(f"::ffff:{mapped.ipv4_mapped}"), mapped
