"""Differential tests: runbot reads `match:` entries as Alertmanager reads a route's `matchers:`, and RE2 regexes
decide as Alertmanager's do. The oracle is the installed amtool (Debian prometheus-alertmanager):
`amtool check-config` for accept/refuse, `amtool config routes test` for match/no-match.

Generated inputs are batched (one amtool call per batch of entries, one per label set) so that several
hundred cases run in seconds; a failure lists every disagreement of the batch, not only the first.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from runbot.runbooks.match import Matcher
from runbot.runbooks.matchers import EntryError, parse_entry
from tests.support.amtool import amtool_available, check_entries, route_hits

pytestmark = pytest.mark.skipif(not amtool_available(), reason="amtool (prometheus-alertmanager) is not installed")


def runbot_accepts(entry: str) -> bool:
    try:
        parse_entry(entry)
    except EntryError:
        return False
    return True


def runbot_hits(routes: list[list[str]], labels: dict[str, str]) -> set[int]:
    hits = set()
    for i, entries in enumerate(routes):
        ms: list[Matcher] = [m for e in entries for m in parse_entry(e)]
        if all(m.matches(labels) for m in ms):
            hits.add(i)
    return hits


# ---- the hand-written table: the forms users copy from real configs and silences -------------------------------

ACCEPT = [  # (entry, Alertmanager loads it)
    ('alertname = "DiskFull"', True),
    ("alertname=DiskFull,severity=critical", True),
    ('alertname=~"Disk.*", severity="critical"', True),
    ('{alertname="A", severity="page"}', True),
    ('{alertname="A", severity="page",}', True),
    ("{}", True),
    ("", True),
    ('alertname == "A"', False),
    ("alertname == A", True),  # the classic parser reads the value "= A"; lint warns
    ('path = "C:\\Users\\admin"', True),
    ('severity =~ "(?i)critical"', True),
    ('msg = "She said: \\"Hi, all\\""', True),
    ('msg = "a, b", team = ops', True),
    ('"foo.bar" = "x"', False),  # quoted label names: Alertmanager 0.27+ only
    ("foo.bar = x", False),
    ("é = x", False),
    ("a=b,,c=d", False),
    ('a="x', False),
    ('a=x"y', False),
    ('a ~= "x"', False),
    ("a=~(?=x)", False),  # lookahead: RE2 refuses
    ('a=~"(x)\\\\1"', False),  # backreference
    ('a=~"\\\\C"', False),  # C++ RE2 accepts \C, Go does not
    ('a=~"(?<n>x)"', False),  # Go 1.19 refuses (?<name>
    ('a=~"(?P<n>x)"', True),
    ('a=~"\\\\p{Toto}"', False),  # a script newer than Go 1.19's Unicode tables
    ('a =~ "x{1001}"', False),
    ("a=\\", True),
    ('a="\\"', False),
    ("{a=b", True),
    ("a=b}", True),
    ("{{a=b}}", False),
    ("  a  =  b  ", True),
    ("a=b\u00a0,c=d", True),
    ("__name__=up", True),
    (":a=b", True),
    ("a=~\"[[:alpha:]]+\"", True),
    ("a=~\"\\\\Q.*\\\\E\"", True),
]


def test_accept_and_refuse_as_amtool_check_config_does(tmp_path):
    entries = [e for e, _ in ACCEPT]
    verdicts = check_entries(tmp_path, entries)
    table = [(e, expected, v is None, runbot_accepts(e), v) for (e, expected), v in zip(ACCEPT, verdicts, strict=True)]
    wrong_table = [(e, expected, am) for e, expected, am, _, _ in table if am is not expected]
    assert not wrong_table, f"this table's expectations are not what amtool says: {wrong_table}"
    disagree = [(e, am, rb, why) for e, _, am, rb, why in table if am is not rb]
    assert not disagree, f"runbot disagrees with amtool on: {disagree}"


MATCH = [  # (entry, labels, Alertmanager routes it)
    ('severity =~ "(?i)critical"', {"severity": "CRITICAL"}, True),
    ("a=~\\d", {"a": "٣"}, False),  # RE2: \d is ASCII only
    ("a=~\\d", {"a": "3"}, True),
    ("a=~\\w+", {"a": "é"}, False),
    ('a=~"a.b"', {"a": "a\nb"}, False),  # `.` does not match a newline
    ('a=~"(?s)a.b"', {"a": "a\nb"}, True),
    ('a=~"a$"', {"a": "a\n"}, False),  # `$` is the end of the text, not before a final newline
    ('a=~"[[:alpha:]]+"', {"a": "abc"}, True),
    ('a=~"[[:alpha:]]+"', {"a": ":ab"}, False),
    ('a=~"\\\\p{L}+"', {"a": "Ärger"}, True),
    ('a=~"\\\\Q.*\\\\E"', {"a": ".*"}, True),
    ('a=~"\\\\Q.*\\\\E"', {"a": "xx"}, False),
    ('a=~"a\\\\z"', {"a": "a"}, True),
    ('a=~"a{,2}"', {"a": "a{,2}"}, True),  # not a repetition in RE2: literal text
    ('a=~"a{,2}"', {"a": "aa"}, False),
    ('a=~"check"', {"a": "checkout"}, False),  # anchored
    ('a=~"api|checkout"', {"a": "checkout"}, True),  # the alternation sits inside the anchors
    ('a!~"prod|staging"', {"a": "prod"}, False),
    ('a=~""', {}, True),  # a missing label is ""
    ('a=~""', {"a": "x"}, False),
    ('a!=""', {}, False),
    ('path = "C:\\Users\\admin"', {"path": "C:\\Users\\admin"}, True),
    ('msg = "line\\nbreak"', {"msg": "line\nbreak"}, True),
    ("alertname=DiskFull,severity=critical", {"alertname": "DiskFull", "severity": "warning"}, False),
    ("alertname=DiskFull,severity=critical", {"alertname": "DiskFull", "severity": "critical"}, True),
    ('{alertname="A", severity="page"}', {"alertname": "A", "severity": "page"}, True),
    ("alertname == A", {"alertname": "= A"}, True),
    ('a=~"(?i)straße"', {"a": "STRASSE"}, False),  # simple case folding only
    ('a=~"(?i)k"', {"a": "\u212a"}, True),  # the Kelvin sign folds to k
    ('a=~"(a+)+$"', {"a": "a" * 40 + "b"}, False),
]


def test_match_and_no_match_as_amtool_config_routes_test_does(tmp_path):
    routes = [[e] for e, _, _ in MATCH]
    assert all(v is None for v in check_entries(tmp_path / "check", [e for e, _, _ in MATCH]))
    disagree, wrong_table = [], []
    # one config with every route; one amtool call per label set
    label_sets = [labels for _, labels, _ in MATCH]
    am_hits = route_hits(tmp_path, routes, label_sets)
    for i, ((entry, labels, expected), am) in enumerate(zip(MATCH, am_hits, strict=True)):
        am_says, runbot_says = i in am, i in runbot_hits(routes, labels)
        if am_says is not expected:
            wrong_table.append((entry, labels, am_says))
        if am_says is not runbot_says:
            disagree.append((entry, labels, am_says, runbot_says))
    assert not wrong_table, f"this table's expectations are not what amtool says: {wrong_table}"
    assert not disagree, f"runbot disagrees with amtool on: {disagree}"


# ---- generated inputs --------------------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "alertname", "severity", "_x", ":c", "a1", "1a", "a.b", "é", '"a"', '"a.b"', ""])
OPS = st.sampled_from(["=", "!=", "=~", "!~", "==", "~=", "=!", "!", ""])
PIECES = st.sampled_from([
    "a", "b", "A", "x", "é", "٣", "3", " ", ",", "{", "}", '"', "\\", "\\n", '\\"', "\\\\", "\\t", "\\U", "\\x41",
    "\\u00e9", "\n", "\t", "\u00a0", "'", "`", "~", "!", "=", ".", "*", "+", "?", "|", "(", ")", "(?i)", "[", "]",
    "[[:alpha:]]", "\\d", "\\w", "\\p{L}", "\\Q", "\\E", "\\z", "$", "^", "{2}", "{,2}", "(?=", "\\1", "\\C", "(?s)",
])  # fmt: skip
VALUES = st.lists(PIECES, max_size=6).map("".join)
SPACE = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def entries(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        quoted = draw(st.booleans())
        value = draw(VALUES)
        if quoted:
            value = '"' + value + '"'
        parts.append(draw(SPACE) + draw(NAMES) + draw(SPACE) + draw(OPS) + draw(SPACE) + value + draw(SPACE))
    sep = draw(st.sampled_from([",", ", ", " ,", ",,"]))
    body = sep.join(parts) + draw(st.sampled_from(["", ",", ", "]))
    return draw(st.sampled_from(["{", ""])) + body + draw(st.sampled_from(["}", ""]))


def collect(strategy: st.SearchStrategy[object], n: int) -> list:
    """n inputs generated by hypothesis, gathered first so that amtool can judge them in one batch."""
    out: list = []

    @settings(max_examples=n, deadline=None, phases=[Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def gather(x: object) -> None:
        out.append(x)

    gather()
    return out


def test_generated_entries_are_accepted_or_refused_as_amtool_does(tmp_path):
    batch = list(dict.fromkeys(collect(entries(), 700)))  # distinct entries; hypothesis repeats a few
    assert len(batch) >= 500
    verdicts = check_entries(tmp_path, batch)
    disagree = [(e, v) for e, v in zip(batch, verdicts, strict=True) if (v is None) is not runbot_accepts(e)]
    assert not disagree, f"{len(disagree)} of {len(batch)} disagree (entry, amtool's error): {disagree[:20]}"
    assert 0 < sum(v is None for v in verdicts) < len(batch)  # both verdicts are exercised


REGEX_PIECES = st.sampled_from([
    "a", "b", "A", "é", "3", "٣", ".", ".*", "+", "?", "|", "(a|b)", "(?i)", "[ab]", "[^a]", "[[:alpha:]]",
    "[[:digit:]]", "\\d", "\\w", "\\s", "\\p{L}", "\\PL", "\\Qa.\\E", "\\z", "$", "^", "{2}", "a{,2}", "(?s).",
    "\\n", "\\b", "\\x{e9}",
])  # fmt: skip
LABEL_VALUES = st.lists(st.sampled_from(["a", "b", "A", "B", "é", "É", "3", "٣", "\n", " ", ".", "a.", "{,2}", ""]),
                        max_size=5).map("".join)  # fmt: skip


def _escape_classic(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@st.composite
def route(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(["a", "b"]))
        op = draw(st.sampled_from(["=~", "!~", "=~", "=", "!="]))
        value = "".join(draw(st.lists(REGEX_PIECES, max_size=4))) if "~" in op else draw(LABEL_VALUES)
        out.append(f'{name}{op}"{_escape_classic(value)}"')
    return out


def test_generated_label_sets_match_as_amtool_routes_test_says(tmp_path):
    routes = collect(route(), 70)
    label_sets = collect(st.fixed_dictionaries({}, optional={"a": LABEL_VALUES, "b": LABEL_VALUES}), 10)
    flat = list(dict.fromkeys(e for r in routes for e in r))
    loads = check_entries(tmp_path / "check", flat)
    bad = {e for e, v in zip(flat, loads, strict=True) if v is not None}
    assert all(not runbot_accepts(e) for e in bad), [e for e in bad if runbot_accepts(e)]
    routes = [r for r in routes if not set(r) & bad]
    assert len(routes) * len(label_sets) >= 500
    am = route_hits(tmp_path, routes, label_sets)
    disagree = [(labels, sorted(a ^ runbot_hits(routes, labels)))
                for labels, a in zip(label_sets, am, strict=True) if a != runbot_hits(routes, labels)]  # fmt: skip
    detail = [(labels, [routes[i] for i in idx]) for labels, idx in disagree]
    assert not disagree, f"runbot and amtool route differently (labels, routes): {detail[:10]}"
