"""`match:` entries are parsed with Alertmanager's grammar; lint points at the column; regexes run on RE2."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from runbot.runbooks.loader import parse_source
from runbot.runbooks.match import Matcher
from runbot.runbooks.matchers import (
    EntryError,
    go_unquote,
    lint_entry,
    parse_classic,
    parse_entry,
    parse_utf8,
)
from runbot.runbooks.regex import RegexError, compile_anchored, fullmatch


def m(name: str, op: str, value: str) -> Matcher:
    return Matcher(name, op, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry,expected", [
    ('alertname = "DiskFull"', [m("alertname", "=", "DiskFull")]),
    ("alertname=DiskFull,severity=critical", [m("alertname", "=", "DiskFull"), m("severity", "=", "critical")]),
    ('alertname=~"Disk.*", severity="critical"', [m("alertname", "=~", "Disk.*"), m("severity", "=", "critical")]),
    ('{alertname="A", severity="page",}', [m("alertname", "=", "A"), m("severity", "=", "page")]),
    ('path = "C:\\Users\\admin"', [m("path", "=", "C:\\Users\\admin")]),
    ('msg="a, \\"b\\"\\n"', [m("msg", "=", 'a, "b"\n')]),
    ("env != dev  ", [m("env", "!=", "dev")]),
    ("alertname == A", [m("alertname", "=", "= A")]),
    ("{}", []),
    ("", []),
])  # fmt: skip
def test_entries_read_as_alertmanagers_classic_parser_reads_them(entry, expected):
    assert parse_entry(entry) == expected


@pytest.mark.parametrize("entry,column,why", [
    ('alertname == "A"', 14, "unescaped double quote"),
    ("a=b,,c=d", 5, "bad matcher format"),
    ('service =~ "api|(checkout"', 13, "invalid regex"),
    ('"foo.bar" = "x"', 1, "Alertmanager 0.27+"),
    ('a ~= "x"', 3, "expected an operator"),
    ('x=~"(?=a)"', 5, "lookahead"),
    ('x=~"(a)\\\\1"', 5, "backreferences"),
])  # fmt: skip
def test_refused_entries_say_where_and_why(entry, column, why):
    with pytest.raises(EntryError) as exc:
        parse_entry(entry)
    assert exc.value.column == column
    assert why in str(exc.value)


# The UTF-8 parser: cases from Alertmanager's own matcher/parse/parse_test.go.
@pytest.mark.parametrize("entry,expected", [
    ("{foo=bar,}", [m("foo", "=", "bar")]),
    ("{foo=~[a-z]+}", [m("foo", "=~", "[a-z]+")]),
    ("{foo=🙂bar}", [m("foo", "=", "🙂bar")]),
    ('{"foo"="\\xf0\\x9f\\x99\\x82"}', [m("foo", "=", "🙂")]),
    ('{"foo"="\\U0001f642"}', [m("foo", "=", "🙂")]),
    ('{"foo"="bar\\t"}', [m("foo", "=", "bar\t")]),
    ('{"foo"="\\"bar\\""}', [m("foo", "=", '"bar"')]),
    ('"foo.bar"="baz",', [m("foo.bar", "=", "baz")]),
    ('foo="bar",bar!="baz"', [m("foo", "=", "bar"), m("bar", "!=", "baz")]),
])  # fmt: skip
def test_the_utf8_parser_reads_what_alertmanagers_does(entry, expected):
    assert parse_utf8(entry) == expected


@pytest.mark.parametrize("entry", [",", "{,}", "{", "}", "foo=bar}", "{foo=bar", '{foo=:"bar"}', '{foo="bar\\w"}',
                                   '{"foo"=~"\\d+"}', "{foo=bar\\n}", '{"foo"="\\xf0\\x9f"}'])  # fmt: skip
def test_the_utf8_parser_refuses_what_alertmanagers_refuses(entry):
    with pytest.raises(EntryError):
        parse_utf8(entry)


def test_go_string_rules_not_pythons_unicode_escape():
    assert go_unquote('"caf\\u00e9 \\x41\\101\\a"') == "café AA\a"
    assert go_unquote('"ünï \\\\ ok"') == "ünï \\ ok"  # non-ASCII text next to a backslash is not mangled
    for bad in ['"\\U"', '"\\q"', '"\\\'"', '"\\400"', '"\\ud800"', '"a\nb"', '"\\xff"']:
        with pytest.raises(ValueError):
            go_unquote(bad)


def test_lint_warns_where_alertmanagers_two_parsers_disagree():
    assert lint_entry('alertname = "DiskFull"').warnings == []
    [w] = lint_entry('path = "C:\\Users\\admin"').warnings
    assert "UTF-8 matcher parser" in w and "refuses" in w
    [w] = lint_entry('a="x\\ty"').warnings
    assert "read this entry differently" in w
    assert lint_entry("{}").warnings == ["this entry holds no matcher (Alertmanager accepts it and adds nothing)"]


def test_lint_reports_file_line_field_and_column_and_warnings_do_not_block_loading():
    source = 'version: 1\nname: x\nmatch:\n  - alertname = "A"\n  - severity == "page"\nsteps:\n  - type: log\n    with: {message: hi}\n'
    book, problems = parse_source(source, "x.yaml", None)
    assert book is None
    assert [str(p) for p in problems] == ['x.yaml:5: match[1]: column 13: matcher value contains unescaped double '
                                          'quote: = "page" (quote the whole value: name="...")']  # fmt: skip
    warned = source.replace('severity == "page"', 'path = "C:\\Users\\admin"')
    book, problems = parse_source(warned, "x.yaml", None)
    assert book is not None and problems == []
    assert [(w.line, w.field) for w in book.warnings] == [(5, "match[1]")]


def test_a_list_in_one_entry_and_one_matcher_per_entry_match_alike():
    one = "version: 1\nname: x\nmatch:\n  - alertname=DiskFull,severity=critical\nsteps:\n  - type: log\n    with: {message: hi}\n"
    two = one.replace("  - alertname=DiskFull,severity=critical\n", "  - alertname = DiskFull\n  - severity = critical\n")
    for source in (one, two):
        book, _ = parse_source(source, "x.yaml", None)
        assert book is not None
        ms = book.spec.matchers()
        assert all(x.matches({"alertname": "DiskFull", "severity": "critical"}) for x in ms)
        assert not all(x.matches({"alertname": "DiskFull", "severity": "warning"}) for x in ms)


def test_regexes_are_re2_anchored_as_alertmanager_does():
    assert fullmatch("(?i)critical", "CRITICAL")
    assert not fullmatch("check", "checkout")
    assert fullmatch("api|checkout", "checkout")
    assert not fullmatch("\\d", "٣") and fullmatch("\\p{L}+", "Ärger")
    assert not fullmatch("a$", "a\n") and not fullmatch("a.b", "a\nb")
    assert fullmatch("a{,2}", "a{,2}") and fullmatch("\\Q.*\\E", ".*")
    for refused in ["(?=a)", "(a)\\1", "\\C", "(?<n>a)", "\\p{Toto}"]:
        with pytest.raises(RegexError):
            compile_anchored(refused)


def test_a_pathological_regex_cannot_stall_matching():
    long = "a" * 100_000 + "b"
    start = time.perf_counter()
    assert not fullmatch("(a+)+$", long)
    assert not fullmatch("(a|aa)+$", long)
    assert time.perf_counter() - start < 1.0  # linear time; Python's re needs seconds for 24 characters


def test_runbot_lint_prints_the_warning_and_still_passes(tmp_path):
    (tmp_path / "x.yaml").write_text('version: 1\nname: x\nmatch:\n  - path = "C:\\Users\\admin"\nsteps:\n'
                                     "  - type: log\n    with: {message: hi}\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "runbot.cli.main", "lint", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"warning: {tmp_path / 'x.yaml'}:4: match[0]: Alertmanager's UTF-8 matcher parser" in out.stdout


def test_classic_tokenizer_keeps_commas_inside_quotes():
    assert parse_classic('{quote="She said: \\"Hi, ladies!\\"", b=c}') == [
        m("quote", "=", 'She said: "Hi, ladies!"'), m("b", "=", "c")]
