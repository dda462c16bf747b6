"""Alertmanager's own `amtool` as an oracle: does a route's `matchers:` entry load, and which routes match.

Calls are batched because each one costs a process start:

    verdicts = check_entries(tmp, ['a=b', 'a == "b"'])        # one `amtool check-config` for all entries
    hits = route_hits(tmp, [['a=~"x.*"'], ['b!=""']], [{"a": "xy"}, {"b": "1"}])
    # one config with one route per entry list (all `continue: true`), one `amtool config routes test`
    # per label set; hits[j] is the set of route indexes label set j reaches

Like the other support helpers it imports no runbot code: it is the other side of the wire.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

AMTOOL_BIN = os.environ.get("AMTOOL_BIN", "/usr/bin/amtool")
NOWHERE = "none"  # the root route's receiver: what amtool prints when no child route matches


def amtool_available() -> bool:
    return Path(AMTOOL_BIN).is_file() and os.access(AMTOOL_BIN, os.X_OK)


def amtool_version() -> str:
    out = subprocess.run([AMTOOL_BIN, "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout + out.stderr).split("\n", 1)[0]


def yaml_quote(text: str) -> str:
    """A YAML double-quoted scalar that Go's yaml.v2 and PyYAML both read back as exactly `text`."""
    out = []
    for c in text:
        o = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif 0x20 <= o < 0x7F:
            out.append(c)
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return '"' + "".join(out) + '"'


def _config(routes: list[list[str]]) -> str:
    lines = ["route:", f"  receiver: {NOWHERE}", "  routes:"]
    names = []
    for i, entries in enumerate(routes):
        names.append(f"r{i}")
        lines += [f"    - receiver: r{i}", "      continue: true", "      matchers:"]
        lines += [f"        - {yaml_quote(e)}" for e in entries]
    if not routes:
        lines[-1] = "  routes: []"
    lines.append("receivers:")
    lines += [f"  - name: {n}" for n in [NOWHERE, *names]]
    return "\n".join(lines) + "\n"


def check_entries(workdir: Path, entries: list[str]) -> list[str | None]:
    """For each entry: None when Alertmanager loads it in a route's `matchers:`, else amtool's error text."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, entry in enumerate(entries):
        f = workdir / f"check{i:05d}.yml"
        f.write_text(_config([[entry]]))
        files.append(f)
    if not files:
        return []
    out = subprocess.run([AMTOOL_BIN, "check-config", *map(str, files)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    text = out.stdout
    verdicts: list[str | None] = []
    for i, f in enumerate(files):
        start = text.find(f"Checking '{f}'")
        if start < 0:
            raise RuntimeError(f"amtool did not report {f}: {text[-2000:]}{out.stderr[-2000:]}")
        nxt = text.find(f"Checking '{files[i + 1]}'") if i + 1 < len(files) else len(text)
        chunk = text[start:nxt]
        if "  SUCCESS" in chunk.split("\n", 1)[0]:
            verdicts.append(None)
        elif "  FAILED: " in chunk:
            verdicts.append(chunk.split("  FAILED: ", 1)[1].strip())
        else:
            raise RuntimeError(f"cannot read amtool's verdict on {f}: {chunk!r}")
    return verdicts


def _label_arg(name: str, value: str) -> str:
    # amtool reads each argument with the classic matcher parser: quote, and escape as OpenMetrics does.
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'{name}="{escaped}"'


def route_hits(workdir: Path, routes: list[list[str]], label_sets: list[dict[str, str]]) -> list[set[int]]:
    """For each label set, the indexes of the routes (each a list of `matchers:` entries) it matches."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "routes.yml"
    config.write_text(_config(routes))
    hits: list[set[int]] = []
    for labels in label_sets:
        argv = [AMTOOL_BIN, "config", "routes", "test", f"--config.file={config}",
                *(_label_arg(k, v) for k, v in labels.items())]  # fmt: skip
        if not labels:
            argv.append('__none__=""')  # amtool needs at least one label; a missing one reads as ""
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"amtool config routes test failed: {out.stdout}{out.stderr}")
        got = out.stdout.strip().splitlines()[-1].split(",")
        hits.append(set() if got == [NOWHERE] else {int(r[1:]) for r in got})
    return hits
