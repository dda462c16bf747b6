"""The set of runbooks currently loaded; swapped atomically on reload so in-flight runs keep theirs."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from runbot.runbooks.loader import LoadedRunbook, Problem, load_dir
from runbot.runbooks.match import explain
from runbot.steps.registry import StepRegistry


class Catalog:
    def __init__(self, directory: Path, registry: StepRegistry) -> None:
        self.directory = directory
        self.registry = registry
        self._lock = threading.Lock()
        self._books: dict[str, LoadedRunbook] = {}
        self.problems: list[Problem] = []

    def reload(self) -> list[Problem]:
        """Load every runbook; broken files are reported and skipped, the good ones stay live."""
        books, problems = load_dir(self.directory, self.registry)
        with self._lock:
            self._books = {b.name: b for b in books}
            self.problems = problems
        return problems

    def all(self) -> list[LoadedRunbook]:
        with self._lock:
            return list(self._books.values())

    def get(self, name: str) -> LoadedRunbook | None:
        with self._lock:
            return self._books.get(name)

    def matching(self, labels: dict[str, Any]) -> list[LoadedRunbook]:
        labels = {k: str(v) for k, v in labels.items()}
        return [b for b in self.all() if b.spec.match and all(m.matches(labels) for m in b.spec.matchers())]

    def explain(self, labels: dict[str, Any]) -> list[tuple[LoadedRunbook, list[str]]]:
        labels = {k: str(v) for k, v in labels.items()}
        out = []
        for b in self.all():
            reasons = explain(b.spec.matchers(), labels) if b.spec.match else ["has no `match`: manual runs only"]
            out.append((b, reasons))
        return out
