"""The configuration is described twice: config/smtp-tls-proxy.ini (every key with its
default) and the README's configuration reference tables. These tests keep the two in
step, key by key and default by default, and check both against the keys the binary
itself accepts (its "unknown key" error lists them).

A README default cell is either a code span (`30s`: the ini must say exactly that) or
prose ("empty (stay)", "system host name ..."): then the ini value must be empty.
Sections whose table has no default column ([upstream_policy]: the key is the policy)
appear in the ini only as commented examples.
"""

import os
import re
import subprocess

import harness


def source_path(*parts):
    root = os.environ.get("PROXY_SOURCE_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..")
    return os.path.join(root, *parts)


def parse_ini(path):
    """{section: {key: value}} for the key = value lines of |path|, in file order."""
    sections = {}
    current = None
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line[0] in ";#":
                continue
            m = re.fullmatch(r"\[\s*([^\]]+?)\s*\]", line)
            if m:
                current = sections.setdefault(m.group(1).lower(), {})
                continue
            m = re.fullmatch(r"([A-Za-z0-9_-]+)\s*=\s*(.*?)(?:\s+[;#].*)?", line)
            assert m and current is not None, f"{path}:{number}: unexpected line {raw!r}"
            key = m.group(1).lower()
            assert key not in current, f"{path}:{number}: {key} given twice"
            current[key] = m.group(2).strip()
    return sections


def split_row(line):
    """The cells of a markdown table row; '|' inside a code span does not split."""
    cells, cell, in_code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    cells.append(cell.strip())
    return cells


def parse_readme(path):
    """{section: {key: default or None}} from the '## Configuration reference' tables.

    The default is the cell's leading code span, "" for prose, None without a column."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.index("\n## Configuration reference")
    end = text.find("\n## ", start + 1)
    part = text[start:end if end != -1 else len(text)]
    sections = {}
    current = None
    columns = None
    for line in part.splitlines():
        m = re.match(r"### \[([a-z_]+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            columns = None
            continue
        if not line.startswith("|"):
            columns = None
            continue
        if current is None:
            continue
        cells = split_row(line)
        if columns is None:
            columns = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if columns[0] != "key":
            continue
        m = re.fullmatch(r"`([a-z][a-z0-9_]*)`", cells[0])
        assert m, f"README [{current}]: key cell {cells[0]!r} is not one `key`"
        key = m.group(1)
        assert key not in current, f"README [{current}]: {key} listed twice"
        default = None
        if "default" in columns:
            cell = cells[columns.index("default")]
            code = re.match(r"`([^`]*)`", cell)
            default = code.group(1) if code else ""
        current[key] = default
    return sections


def test_readme_tables_match_the_shipped_ini():
    ini = parse_ini(source_path("config", "smtp-tls-proxy.ini"))
    readme = parse_readme(source_path("README.md"))
    assert ini and readme
    problems = []
    for section in sorted(set(ini) | set(readme)):
        if section not in readme:
            problems.append(f"[{section}] is in the ini but has no README table")
            continue
        if section not in ini:
            problems.append(f"[{section}] has a README table but is not in the ini")
            continue
        documented_defaults = any(d is not None for d in readme[section].values())
        for key, default in readme[section].items():
            if key not in ini[section]:
                if documented_defaults:
                    problems.append(f"[{section}] {key}: in the README, not in the ini")
                continue
            if default is not None and default != ini[section][key]:
                problems.append(f"[{section}] {key}: README default {default!r}, "
                                f"ini {ini[section][key]!r}")
        for key in ini[section]:
            if key not in readme[section]:
                problems.append(f"[{section}] {key}: in the ini, not in the README")
    assert not problems, "\n".join(problems)


def test_the_parsers_see_every_table():
    """Guards the test above against parsing nothing: known keys and defaults are found."""
    readme = parse_readme(source_path("README.md"))
    assert readme["proxy"]["mode"] == "forward"
    assert readme["proxy"]["hostname"] == ""  # prose: "system host name ..."
    assert readme["timeouts"]["data_end"] == "10m"  # a table without an "accepted" column
    assert readme["upstream_policy"] == {"off": None, "may": None, "require": None}
    ini = parse_ini(source_path("config", "smtp-tls-proxy.ini"))
    assert ini["proxy"]["listen"] == "0.0.0.0:25, [::]:25"
    assert ini["metrics"]["listen"] == ""
    assert "upstream_policy" in ini and ini["upstream_policy"] == {}


def run_check(proxy_bin, tmp_path, text):
    path = tmp_path / "probe.ini"
    path.write_text(text)
    p = subprocess.run([proxy_bin, "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=20)
    for marker in harness.SANITIZER_MARKERS:
        assert marker not in p.stderr, p.stderr
    return p.returncode, p.stderr


def words(listing):
    """["a", "b", "c"] from "a, b or c"."""
    return [w.strip() for w in re.split(r",| or ", listing) if w.strip()]


def accepted_keys(proxy_bin, tmp_path):
    """{section: {keys}} the binary accepts, from its errors for a made-up section and
    made-up keys (each names what is expected instead)."""
    rc, err = run_check(proxy_bin, tmp_path, "[zz_no_such_section]\n")
    assert rc == 1, err
    m = re.search(r'"zz_no_such_section" is not a section; expected (.*)$', err, re.M)
    assert m, err
    keys = {}
    for section in words(m.group(1)):
        rc, err = run_check(proxy_bin, tmp_path, f"[{section}]\nzz_no_such_key = 1\n")
        assert rc == 1, err
        m = re.search(r'is not a key of \[' + re.escape(section) + r'\]; expected ([^;\n]*)',
                      err)
        assert m, err
        keys[section] = set(words(m.group(1)))
    return keys


def test_documented_keys_are_the_accepted_keys(proxy_bin, tmp_path):
    accepted = accepted_keys(proxy_bin, tmp_path)
    assert "bare_newline" in accepted["proxy"], accepted
    readme = parse_readme(source_path("README.md"))
    ini = parse_ini(source_path("config", "smtp-tls-proxy.ini"))
    assert set(readme) == set(accepted), (sorted(readme), sorted(accepted))
    assert set(ini) == set(accepted), (sorted(ini), sorted(accepted))
    for section, keys in accepted.items():
        assert set(readme[section]) == keys, (section, sorted(readme[section]), sorted(keys))
        if any(d is not None for d in readme[section].values()):
            assert set(ini[section]) == keys, (section, sorted(ini[section]), sorted(keys))


def test_documented_defaults_are_accepted(proxy_bin, tmp_path):
    """Every non-empty README default, written out, passes the check (the shipped ini
    itself is checked in test_cli)."""
    readme = parse_readme(source_path("README.md"))
    lines = []
    for section, keys in readme.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {default}" for key, default in keys.items() if default)
    rc, err = run_check(proxy_bin, tmp_path, "\n".join(lines) + "\n")
    assert rc == 0, err


def documented_words(readme_path):
    """{(section, key): [words]} for keys whose README "accepted" cell is a plain list of
    code spans ("`off`, `v1`, `v2`, `any`"; a trailing "(or ...)" of aliases is left out)
    or "boolean" (`on`, `off`)."""
    with open(readme_path, encoding="utf-8") as f:
        text = f.read()
    start = text.index("\n## Configuration reference")
    end = text.find("\n## ", start + 1)
    out = {}
    section = None
    columns = None
    for line in text[start:end].splitlines():
        m = re.match(r"### \[([a-z_]+)\]", line)
        if m:
            section, columns = m.group(1), None
            continue
        if not line.startswith("|"):
            columns = None
            continue
        cells = split_row(line)
        if columns is None:
            columns = [c.lower() for c in cells]
            continue
        if "accepted" not in columns or set("".join(cells)) <= set("-: "):
            continue
        key = cells[0].strip("`")
        cell = re.sub(r"\s*\(or [^)]*\)$", "", cells[columns.index("accepted")])
        if cell == "boolean":
            out[(section, key)] = ["on", "off"]
        elif re.fullmatch(r"`[^`]+`(, `[^`]+`)*", cell):
            out[(section, key)] = re.findall(r"`([^`]+)`", cell)
    return out


def test_documented_words_are_the_accepted_words(proxy_bin, tmp_path):
    """For keys taking one of a few words, the README lists exactly the words the binary
    names in its error for a bad value."""
    documented = documented_words(source_path("README.md"))
    assert documented[("proxy", "bare_newline")] == ["normalize", "reject"], documented
    assert documented[("client_tls", "ask_client_certificate")] == ["on", "off"], documented
    by_section = {}
    for (section, key), expected in documented.items():
        by_section.setdefault(section, []).append((key, expected))
    problems = []
    for section, keys in by_section.items():
        text = f"[{section}]\n" + "".join(f"{key} = zz_bad\n" for key, _ in keys)
        rc, err = run_check(proxy_bin, tmp_path, text)
        assert rc == 1, err
        for line_number, (key, expected) in enumerate(keys, 2):
            m = re.search(rf':{line_number}: {key}: "zz_bad" is not valid; expected (.*)$', err,
                          re.M)
            if not m:
                problems.append(f"[{section}] {key}: no word list in {err!r}")
            elif words(m.group(1)) != expected:
                problems.append(f"[{section}] {key}: README {expected}, "
                                f"binary {words(m.group(1))}")
    assert not problems, "\n".join(problems)
