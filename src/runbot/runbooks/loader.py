"""Load runbook YAML into typed models and lint it, reporting every problem as `file:line: field: message`.

Lint runs before anything executes (as Orquesta inspects workflows): structure, matchers, step types and
their params, template variables, step references, and the approval rule for remediations. It reports
all problems in one pass rather than stopping at the first.
"""

from __future__ import annotations

import difflib
import hashlib
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from runbot.engine.approvals import SLACK_USER_ID
from runbot.runbooks.matchers import lint_entry
from runbot.runbooks.model import Runbook, StepSpec
from runbot.runbooks.templating import (
    ALERT_FIELDS,
    SCOPE_NAMES,
    TemplateFailure,
    analyze,
    iter_strings,
    trial_budget_problem,
)

if TYPE_CHECKING:
    from runbot.steps.registry import StepRegistry

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class LoadedRunbook:
    spec: Runbook
    path: str
    source: str
    version_hash: str
    lines: dict[Path_, int] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def short_version(self) -> str:
        return self.version_hash[:12]


class RunbookError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def fmt_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def version_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def _line_map(node: yaml.Node | None, path: Path_ = (), out: dict[Path_, int] | None = None) -> dict[Path_, int]:
    out = {} if out is None else out
    if node is None:
        return out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            if not isinstance(value_node, yaml.ScalarNode):
                _line_map(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)
    return out


class _Linter:
    def __init__(self, file: str, lines: dict[Path_, int], registry: StepRegistry | None) -> None:
        self.file = file
        self.lines = lines
        self.registry = registry
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []  # reported by `runbot lint`, never block loading

    def line_for(self, path: Path_) -> int | None:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def add(self, path: Path_, message: str) -> None:
        self.problems.append(Problem(self.file, self.line_for(path), fmt_path(path), message))

    def pydantic_errors(self, exc: ValidationError, base: Path_ = ()) -> None:
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see the runbook reference)"
            elif err["type"] == "missing":
                msg = "required field is missing"
            self.add((*base, *loc), msg)

    # ---- checks ------------------------------------------------------------------------------------------

    def check(self, raw: Any) -> Runbook | None:
        if not isinstance(raw, dict):
            self.add((), "a runbook must be a YAML mapping with name, match and steps")
            return None
        spec: Runbook | None = None
        try:
            spec = Runbook.model_validate(raw)
        except ValidationError as exc:
            self.pydantic_errors(exc)
        for i, m in enumerate(raw.get("match") or []):
            if isinstance(m, str):  # read as Alertmanager reads a route's `matchers:` entry (runbooks/matchers.py)
                linted = lint_entry(m)
                if linted.error is not None:
                    self.add(("match", i), str(linted.error))
                for w in linted.warnings:
                    self.warnings.append(Problem(self.file, self.line_for(("match", i)), f"match[{i}]", w))
        params = set((raw.get("params") or {}).keys()) if isinstance(raw.get("params"), dict) else set()
        steps = spec.steps if spec else self._partial_steps(raw.get("steps"))
        if isinstance(raw.get("concurrency"), dict):
            self.templates(("concurrency",), raw["concurrency"], params, set(), None)
        known: set[str] = set()
        seen: dict[str, Path_] = {}
        unattended = bool(spec and spec.unattended) or bool(raw.get("unattended"))
        for i, step in enumerate(steps):
            if step is None:
                continue
            self.step(("steps", i), step, params, known, seen, unattended)
            known.add(step.sid)
        return spec if not self.problems else None

    def _partial_steps(self, raw_steps: Any) -> list[StepSpec | None]:
        out: list[StepSpec | None] = []
        if not isinstance(raw_steps, list):
            return out
        for i, raw in enumerate(raw_steps):
            try:
                s = StepSpec.model_validate(raw)
                if s.id is None:
                    s.id = f"{s.type.replace('.', '_')}_{i + 1}"
                out.append(s)
            except ValidationError:
                out.append(None)  # already reported by the whole-runbook validation
        return out

    def step(self, path: Path_, step: StepSpec, params: set[str], known: set[str],
             seen: dict[str, Path_], unattended: bool) -> None:  # fmt: skip
        if step.sid in seen:
            self.add((*path, "id"), f"duplicate step id {step.sid!r} (first used at {fmt_path(seen[step.sid])})")
        seen[step.sid] = path
        plugin = self.plugin_check((*path,), step.type, step.with_)
        self.templates((*path, "with"), step.with_, params, known, step.sid)
        if step.when is not None and isinstance(step.when, str):
            self.templates((*path, "when"), step.when, params, known, step.sid)
        changes = step.risk == "high" or (plugin is not None and plugin.changes_things(step.with_))
        if step.risk == "low" and plugin is not None and plugin.changes_things(step.with_):
            changes = True  # risk: low cannot downgrade a step type that changes things
        if changes and step.approval is None and not unattended:
            self.add(path, f"step {step.sid!r} changes things (type {step.type}"
                     f"{', risk: high' if step.risk == 'high' else ''}) and needs an `approval:` block, "
                     "or a top-level `unattended: {reason: ...}` to opt in to unattended remediation")  # fmt: skip
        if step.approval and step.approval.on_timeout == "escalate" and not step.approval.escalate_to:
            pass  # escalation target defaults to the approvers; nothing to report
        if step.approval:  # the approval policy matches people by id only (engine/approvals.py)
            for j, u in enumerate(step.approval.approvers.slack_users):
                if not SLACK_USER_ID.match(u.removeprefix("slack:")):
                    self.add((*path, "approval", "approvers", "slack_users", j),
                             f"{u!r} is not a Slack user id (U… or W…): names and '*' never match anybody; "
                             "use the user's id, or a user group in slack_usergroups")  # fmt: skip
        if step.verify is not None:
            self.plugin_check((*path, "verify"), step.verify.type, step.verify.with_)
            self.templates((*path, "verify", "with"), step.verify.with_, params, known | {step.sid}, None)
        inner_known = known | {step.sid}
        for j, comp in enumerate(step.on_failure):
            self.step((*path, "on_failure", j), comp, params, inner_known, seen, unattended)
            inner_known = inner_known | {comp.sid}

    def plugin_check(self, path: Path_, type_name: str, with_: dict[str, Any]) -> Any:
        if self.registry is None:
            return None
        if not self.registry.has(type_name):
            self.add((*path, "type"), f"unknown step type {type_name!r}; known: {', '.join(self.registry.names())}")
            return None
        plugin = self.registry.get(type_name)
        self.params_check((*path, "with"), plugin.Params, with_)
        for fpath, msg in plugin.lint(with_):
            self.add((*path, "with", *[p for p in fpath.split(".") if p]), msg)
        return plugin

    def params_check(self, path: Path_, model: type[BaseModel], with_: dict[str, Any]) -> None:
        try:
            model.model_validate(with_)
        except ValidationError as exc:
            for err in exc.errors():
                value = err.get("input")
                if isinstance(value, str) and ("{{" in value or "{%" in value):
                    continue  # typed at run time, after rendering
                loc = tuple(err["loc"])
                msg = "unknown parameter for this step type" if err["type"] == "extra_forbidden" else err["msg"]
                if err["type"] == "missing":
                    msg = "required parameter is missing"
                self.add((*path, *loc), msg)

    def templates(self, path: Path_, value: Any, params: set[str], known: set[str], current: str | None) -> None:
        for sub, text in iter_strings(value):
            full = (*path, *sub)
            try:
                refs = analyze(text)
            except TemplateFailure as exc:
                self.add(full, str(exc))
                continue
            costly = trial_budget_problem(text)
            if costly:
                self.add(full, costly)
            for name in sorted(refs.names - SCOPE_NAMES):
                self.add(full, f"unknown template variable {name!r} (known: {', '.join(sorted(SCOPE_NAMES))})")
            for name in sorted(refs.alert_fields - ALERT_FIELDS):
                close = difflib.get_close_matches(name, sorted(ALERT_FIELDS), n=1, cutoff=0.5)
                self.add(full, f"alert has no field {name!r}" + (f" (did you mean alert.{close[0]}?)" if close else "")
                         + f"; it has {', '.join(sorted(ALERT_FIELDS))}")  # fmt: skip
            for p in sorted(refs.params - params):
                self.add(full, f"unknown parameter params.{p} (declared: {', '.join(sorted(params)) or 'none'})")
            for s in sorted(refs.steps - known):
                if current is not None and s == current:
                    self.add(full, f"step {s!r} refers to its own output before it exists")
                else:
                    self.add(full, f"steps.{s} is not an earlier step (unknown id or a forward reference)")


# A runbook is a small, hand-written file. These bounds keep a hostile or broken one ("billion laughs",
# thousands of nested brackets, a multi-megabyte file) from costing the loader memory or time.
MAX_RUNBOOK_BYTES = 256 * 1024
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 50_000


class _YamlTooBig(ValueError):
    pass


def _expanded_nodes(root: yaml.Node) -> int:
    """Nodes the document has once every alias is expanded; stops counting past MAX_YAML_NODES."""
    total = 0
    aliases = 0
    seen: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        total += 1
        if total > MAX_YAML_NODES:
            raise _YamlTooBig(f"the YAML expands to more than {MAX_YAML_NODES:,} nodes (aliases that multiply "
                              "a 'billion laughs'?); write the runbook out without anchors")  # fmt: skip
        if id(node) in seen and not isinstance(node, yaml.ScalarNode):
            aliases += 1
        seen.add(id(node))
        if aliases > MAX_YAML_ALIASES:
            raise _YamlTooBig(f"the YAML uses more than {MAX_YAML_ALIASES} aliases to collections; "
                              "write the runbook out without anchors")  # fmt: skip
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return total


def _load_yaml(source: str) -> tuple[yaml.Node | None, Any]:
    """Compose once, check the expanded size, then construct from the same node graph (one parse)."""
    loader = yaml.SafeLoader(source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _expanded_nodes(node)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


def parse_source(source: str, file: str, registry: StepRegistry | None) -> tuple[LoadedRunbook | None, list[Problem]]:
    if len(source) > MAX_RUNBOOK_BYTES:
        return None, [Problem(file, None, "", f"the file is larger than {MAX_RUNBOOK_BYTES // 1024} KiB; "
                              "split it into several runbooks")]  # fmt: skip
    try:
        node, raw = _load_yaml(source)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        return None, [Problem(file, line, "", f"YAML syntax error: {exc.problem}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, None, "", f"YAML error: {type(exc).__name__}")]
    except _YamlTooBig as exc:
        return None, [Problem(file, None, "", str(exc))]
    except RecursionError:
        return None, [Problem(file, None, "", "the YAML is nested too deeply; flatten it")]
    linter = _Linter(file, _line_map(node), registry)
    spec = linter.check(raw)
    if spec is None or linter.problems:
        return None, sorted(linter.problems, key=lambda p: (p.line or 0, p.field))
    return LoadedRunbook(spec, file, source, version_hash(source), linter.lines, linter.warnings), []


def _refuse_file(path: Path, root: Path | None) -> str | None:
    """Why `path` may not be read as a runbook: not a regular file, or (in a directory) a link leading out of it.

    A runbook directory is reviewed in git; a symlink inside it to /etc/shadow or a FIFO must not make runbot
    read (and print, in lint and /readyz) what lies elsewhere, or hang.
    """
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (runbooks must be plain files)"
    if st.st_size > MAX_RUNBOOK_BYTES:
        return f"the file is larger than {MAX_RUNBOOK_BYTES // 1024} KiB; split it into several runbooks"
    if root is not None:
        real, top = path.resolve(), root.resolve()
        if real != top and top not in real.parents:
            return "a symbolic link that leads outside the runbooks directory; copy the file in instead"
    return None


def load_file(path: Path, registry: StepRegistry | None, display: str | None = None,
              root: Path | None = None) -> tuple[LoadedRunbook | None, list[Problem]]:  # fmt: skip
    """Load one runbook. With `root`, the file must lie inside that directory (after resolving links)."""
    file = display or str(path)
    refused = _refuse_file(path, root)
    if refused:
        return None, [Problem(file, None, "", refused)]
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_RUNBOOK_BYTES + 1)
        source = data.decode("utf-8")
    except OSError as exc:
        return None, [Problem(file, None, "", f"cannot read: {exc.strerror}")]
    except UnicodeDecodeError as exc:
        return None, [Problem(file, None, "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")]
    try:
        return parse_source(source, file, registry)
    except Exception as exc:  # a bug in runbot must not take the other runbooks (or the bot) down
        return None, [Problem(file, None, "", f"could not be loaded ({type(exc).__name__}: {exc}); "
                              "this is a runbot bug, please report it")]  # fmt: skip


def runbook_files(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    if not target.exists():
        return []
    return sorted(p for p in target.rglob("*") if p.suffix in (".yaml", ".yml") and "examples" not in p.relative_to(target).parts
                  and not p.name.endswith((".responses.yaml", ".rehearsal.yaml")) and not p.is_dir())  # fmt: skip


def load_dir(target: Path, registry: StepRegistry | None) -> tuple[list[LoadedRunbook], list[Problem]]:
    books: list[LoadedRunbook] = []
    problems: list[Problem] = []
    if not target.exists():
        return [], [Problem(str(target), None, "", "no such file or directory")]
    names: dict[str, str] = {}
    root = target if target.is_dir() else None
    for path in runbook_files(target):
        display = str(path)
        book, probs = load_file(path, registry, display, root=root)
        problems.extend(probs)
        if book is not None:
            if book.name in names:
                problems.append(Problem(display, book.lines.get(("name",)), "name",
                                        f"runbook name {book.name!r} is also used by {names[book.name]}"))  # fmt: skip
                continue
            names[book.name] = display
            books.append(book)
    return books, problems
