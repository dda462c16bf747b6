"""Loading runbooks is bounded and confined: hostile files are named by lint and never hurt the others."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runbot.runbooks.catalog import Catalog
from runbot.runbooks.loader import MAX_RUNBOOK_BYTES, load_dir, load_file
from runbot.settings import Settings
from runbot.steps.registry import StepRegistry
from tests.conftest import write_runbook

GOOD = """
version: 1
name: {name}
match: ['alertname = "{name}"']
steps:
  - {{id: hello, type: log, with: {{message: "{message}"}}}}
"""

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.fixture
def registry(tmp_path: Path) -> StepRegistry:
    return StepRegistry(Settings(data_dir=tmp_path / "data", runbooks_dir=tmp_path / "runbooks"))


def problems_of(directory: Path, registry: StepRegistry) -> dict[str, list[str]]:
    _, problems = load_dir(directory, registry)
    out: dict[str, list[str]] = {}
    for p in problems:
        out.setdefault(Path(p.file).name, []).append(str(p))
    return out


def test_a_billion_laughs_file_is_refused_quickly_and_the_others_load(runbooks_dir: Path, registry: StepRegistry) -> None:
    assert len(BILLION_LAUGHS) < 500
    (runbooks_dir / "laughs.yaml").write_text(BILLION_LAUGHS)
    write_runbook(runbooks_dir, "good", GOOD.format(name="good", message="hi"))
    started = time.monotonic()
    books, problems = load_dir(runbooks_dir, registry)
    assert time.monotonic() - started < 2.0
    assert [b.name for b in books] == ["good"]
    assert len(problems) == 1 and "laughs.yaml" in problems[0].file
    assert "aliases" in problems[0].message or "expands" in problems[0].message


def test_a_few_ordinary_anchors_are_fine(runbooks_dir: Path, registry: StepRegistry) -> None:
    write_runbook(runbooks_dir, "anchored", """
        version: 1
        name: anchored
        match: ['alertname = "A"']
        steps:
          - {id: one, type: log, with: &msg {message: "same"}}
          - {id: two, type: log, with: *msg}
    """)
    books, problems = load_dir(runbooks_dir, registry)
    assert problems == [] and books[0].spec.steps[1].with_ == {"message": "same"}


def test_deep_nesting_and_oversized_files_are_refused(runbooks_dir: Path, registry: StepRegistry) -> None:
    (runbooks_dir / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (runbooks_dir / "huge.yaml").write_text("# padding\n" * (MAX_RUNBOOK_BYTES // 10 + 10))
    found = problems_of(runbooks_dir, registry)
    assert "nested too deeply" in found["deep.yaml"][0]
    assert "larger than 256 KiB" in found["huge.yaml"][0]


def test_a_symlink_out_of_the_runbooks_directory_is_not_read(tmp_path: Path, runbooks_dir: Path,
                                                             registry: StepRegistry) -> None:
    outside = tmp_path / "shadow"
    outside.write_text("root:$y$j9T$SECRETHASHLINE:19000:0:99999:7:::\nbin: *\n")
    (runbooks_dir / "sneaky.yaml").symlink_to(outside)
    write_runbook(runbooks_dir, "good", GOOD.format(name="good", message="hi"))
    books, problems = load_dir(runbooks_dir, registry)
    assert [b.name for b in books] == ["good"]
    assert len(problems) == 1
    assert "symbolic link that leads outside" in problems[0].message
    assert "SECRETHASHLINE" not in str(problems[0]) and "root" not in str(problems[0]).replace(str(tmp_path), "")


def test_a_symlink_inside_the_directory_is_followed(runbooks_dir: Path, registry: StepRegistry) -> None:
    shared = runbooks_dir / "shared"
    shared.mkdir()
    target = write_runbook(shared, "real", GOOD.format(name="real", message="hi"))
    (runbooks_dir / "alias.yml").symlink_to(target)
    books, problems = load_dir(runbooks_dir, registry)
    assert [b.name for b in books] == ["real"]
    assert [p.message for p in problems] == [f"runbook name 'real' is also used by {runbooks_dir / 'alias.yml'}"]


def test_a_fifo_is_refused_instead_of_hanging(runbooks_dir: Path, registry: StepRegistry) -> None:
    os.mkfifo(runbooks_dir / "pipe.yaml")
    found = problems_of(runbooks_dir, registry)
    assert "not a regular file" in found["pipe.yaml"][0]


def test_a_file_that_is_not_utf8_is_named(runbooks_dir: Path, registry: StepRegistry) -> None:
    (runbooks_dir / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    found = problems_of(runbooks_dir, registry)
    assert "not UTF-8" in found["latin1.yaml"][0]


def test_a_file_named_on_the_command_line_is_read_even_through_a_link(tmp_path: Path, registry: StepRegistry) -> None:
    real = write_runbook(tmp_path, "solo", GOOD.format(name="solo", message="hi"))
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    book, problems = load_file(link, registry)
    assert problems == [] and book is not None and book.name == "solo"


def test_a_template_bomb_is_loaded_but_fails_only_its_own_step_at_run_time(make_runtime, runbooks_dir: Path) -> None:
    from tests.engine.helpers import drive, start, steps

    # lint cannot see this one coming: it costs nothing until an alert brings a long label
    write_runbook(runbooks_dir, "bomb", """
        version: 1
        name: bomb
        steps:
          - id: boom
            type: log
            with: {message: "{% for a in alert.labels.long %}{% for b in alert.labels.long %}{% endfor %}{% endfor %}"}
    """)
    write_runbook(runbooks_dir, "good", GOOD.format(name="good", message="{{ run.id }}"))
    rt = make_runtime()
    assert rt.catalog.problems == []
    bomb = start(rt, "bomb", manual=True, alert={"labels": {"long": "x" * 10_000}})
    good = start(rt, "good", manual=True)
    assert drive(rt, bomb).value == "failed"
    assert "more than 100,000 iterations" in steps(rt, bomb)[0]["error"]
    assert drive(rt, good).value == "succeeded"


def test_reload_keeps_the_last_good_version_of_a_runbook_that_became_broken(runbooks_dir: Path,
                                                                          registry: StepRegistry) -> None:
    path = write_runbook(runbooks_dir, "steady", GOOD.format(name="steady", message="v1"))
    write_runbook(runbooks_dir, "other", GOOD.format(name="other", message="x"))
    catalog = Catalog(runbooks_dir, registry)
    assert catalog.reload() == []
    v1 = catalog.get("steady")
    assert v1 is not None

    path.write_text("version: 1\nname: steady\nsteps: [{id: x, type: no.such.type}]\n")
    problems = catalog.reload()
    assert problems and all("steady.yaml" in p.file for p in problems)
    assert catalog.get("steady") is v1  # still live, the last good version
    assert [(b.file, b.kept_version) for b in catalog.broken] == [(str(path), v1.short_version)]
    assert catalog.get("other") is not None

    path.write_text(GOOD.format(name="steady", message="v2"))
    assert catalog.reload() == []
    v2 = catalog.get("steady")
    assert v2 is not None and v2.version_hash != v1.version_hash and catalog.broken == []

    path.unlink()
    catalog.reload()
    assert catalog.get("steady") is None  # deleting a runbook does switch it off


def test_a_plugin_whose_lint_crashes_breaks_only_that_runbook(runbooks_dir: Path, registry: StepRegistry) -> None:
    from runbot.steps.builtin import Log

    class CrashingLint(Log):
        type = "crashing.lint"

        def lint(self, with_):  # type: ignore[no-untyped-def]
            raise RuntimeError("plugin bug")

    registry.register(CrashingLint)
    write_runbook(runbooks_dir, "crashy", """
        version: 1
        name: crashy
        steps: [{id: x, type: crashing.lint, with: {message: hi}}]
    """)
    write_runbook(runbooks_dir, "good", GOOD.format(name="good", message="hi"))
    books, problems = load_dir(runbooks_dir, registry)
    assert [b.name for b in books] == ["good"]
    assert "runbot bug" in problems[0].message and "crashy.yaml" in problems[0].file


def test_lint_names_a_template_bomb(runbooks_dir: Path, registry: StepRegistry) -> None:
    write_runbook(runbooks_dir, "bomb", """
        version: 1
        name: bomb
        steps:
          - id: loops
            type: log
            with: {message: "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"}
          - id: grows
            type: log
            with: {message: "{{ 'x' * 1000000000 }}"}
          - id: recurses
            type: log
            with: {message: "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}"}
          - id: fine
            type: log
            with: {message: "{% for k in alert.labels %}{{ k }}{% endfor %} {{ alert.labels.instance * 3 }}"}
    """)
    started = time.monotonic()
    found = problems_of(runbooks_dir, registry)["bomb.yaml"]
    assert time.monotonic() - started < 5.0
    assert len(found) == 3, found
    assert "steps[0].with.message" in found[0] and "100,000 iterations" in found[0]
    assert "steps[1].with.message" in found[1] and "1,000,000,000 characters" in found[1]
    assert "steps[2].with.message" in found[2] and "longer than" in found[2]
