"""The set of runbooks currently loaded; swapped atomically on reload so in-flight runs keep theirs.

One broken file never takes the bot down: `reload` loads every file it can and reports the others. A file
that loaded before and is broken now keeps its last good version live (and is reported as stale), so a bad
commit to one runbook never silently switches that runbook off in the middle of the night.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from runbot.runbooks.loader import LoadedRunbook, Problem, load_dir
from runbot.runbooks.match import explain
from runbot.steps.registry import StepRegistry

log = structlog.get_logger("runbot.runbooks")


@dataclass(frozen=True)
class BrokenFile:
    """A runbook file that did not load, for /readyz, metrics and logs (the problems say why)."""

    file: str
    problems: int
    kept_version: str | None  # the last good version still live, if there was one


class Catalog:
    def __init__(self, directory: Path, registry: StepRegistry) -> None:
        self.directory = directory
        self.registry = registry
        self._lock = threading.Lock()
        self._books: dict[str, LoadedRunbook] = {}
        self.problems: list[Problem] = []
        self.broken: list[BrokenFile] = []

    def reload(self) -> list[Problem]:
        """Load every runbook; broken files are reported and skipped (or keep their last good version)."""
        books, problems = load_dir(self.directory, self.registry)
        with self._lock:
            previous = {b.path: b for b in self._books.values()}
            fresh = {b.name: b for b in books}
            kept: dict[str, LoadedRunbook] = {}
            for file in _files(problems):
                old = previous.get(file)
                if old is not None and old.name not in fresh and Path(file).exists():
                    kept[old.name] = old
            self._books = {**fresh, **kept}
            self.problems = problems
            by_file = _files(problems)
            self.broken = [BrokenFile(f, n, next((b.short_version for b in kept.values() if b.path == f), None))
                           for f, n in by_file.items()]  # fmt: skip
        return problems

    def log_broken(self) -> None:
        """One warning per file that did not load (the server calls this at start and after each reload)."""
        for broken in self.broken:
            log.warning("runbook not loaded", file=broken.file, problems=broken.problems,
                        kept_last_good_version=broken.kept_version)  # fmt: skip

    def all(self) -> list[LoadedRunbook]:
        with self._lock:
            return list(self._books.values())

    def get(self, name: str) -> LoadedRunbook | None:
        with self._lock:
            return self._books.get(name)

    def matching(self, labels: dict[str, Any]) -> list[LoadedRunbook]:
        labels = {k: str(v) for k, v in labels.items()}
        # a runbook whose `match` holds no matcher at all (`match: ["{}"]`) matches nothing, as in intake
        return [b for b in self.all() if (ms := b.spec.matchers()) and all(m.matches(labels) for m in ms)]

    def explain(self, labels: dict[str, Any]) -> list[tuple[LoadedRunbook, list[str]]]:
        labels = {k: str(v) for k, v in labels.items()}
        out = []
        for b in self.all():
            reasons = explain(b.spec.matchers(), labels) if b.spec.match else ["has no `match`: manual runs only"]
            out.append((b, reasons))
        return out


def _files(problems: Iterable[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.file] = counts.get(p.file, 0) + 1
    return counts
