"""Where the configuration comes from, and refusing mistakes in it before anything runs.

A checkout (or a host) has one project file, `runbot.yaml`, found from the working directory upwards (as
git finds `.git`), or named by `--config` / `RUNBOT_CONFIG`. Relative paths in it, and the default data and
runbooks directories, are read relative to the file, so every shell anywhere in the checkout sees the same
bot. A file that is named but missing, a key or a `RUNBOT_*` variable that no setting has, is an error that
names the closest valid one: a misspelt `runbooks_dri` must not silently mean "use the defaults".
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_FILES = ("runbot.yaml", "runbot.yml", "runbot.toml")
# Variables with the RUNBOT_ prefix that are not settings: secrets of the env provider, the config file
# itself, `runbot fire --token`, and the test and set-up scripts' own switches.
OTHER_PREFIXES = ("RUNBOT_SECRET_", "RUNBOT_TEST_")
OTHER_VARIABLES = frozenset({
    "RUNBOT_CONFIG", "RUNBOT_CONFIG_FILE", "RUNBOT_FIRE_TOKEN", "RUNBOT_SKIP_BROWSER",
    "RUNBOT_UPDATE_DOCS_SCREENSHOT",
})  # fmt: skip


class ConfigError(ValueError):
    """A configuration mistake: one line, and a hint that says how to fix it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    values: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent


def discover(start: Path) -> Path | None:
    """The nearest project file in `start` or a directory above it."""
    here = start.resolve()
    for directory in (here, *here.parents):
        for name in PROJECT_FILES:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def choose(explicit: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """--config, then RUNBOT_CONFIG (or RUNBOT_CONFIG_FILE), then the project file found upwards.

    `RUNBOT_CONFIG=none` turns the search upwards off (a file named explicitly is still read)."""
    config = environ.get("RUNBOT_CONFIG") or ""
    no_search = config.lower() == "none"
    named = explicit or (Path(config) if config and not no_search else None) or (
        Path(environ["RUNBOT_CONFIG_FILE"]) if environ.get("RUNBOT_CONFIG_FILE") else None)  # fmt: skip
    if named is not None:
        if not named.is_file():
            raise ConfigError(f"config file {named} does not exist",
                              "check the path given with --config or RUNBOT_CONFIG")  # fmt: skip
        return named
    return None if no_search else discover(cwd)


def read(path: Path, known: set[str]) -> ConfigFile:
    """Parse the file and refuse keys that are not settings."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", "check its permissions") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                          f"{getattr(exc, 'problem', None) or exc}", "fix the syntax") from None  # fmt: skip
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config file must be a mapping of setting names to values",
                          "see the configuration reference in the README")  # fmt: skip
    for key in data:
        if str(key) not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}{suggest(str(key), known)}",
                              "see `runbot config show` for every setting")  # fmt: skip
    return ConfigFile(path, {str(k): v for k, v in data.items()})


def check_environment(environ: Mapping[str, str], known: set[str]) -> None:
    """Refuse RUNBOT_* variables that no setting reads (a typo would otherwise be ignored)."""
    for name in sorted(environ):
        if not name.startswith("RUNBOT_") or name in OTHER_VARIABLES or name.startswith(OTHER_PREFIXES):
            continue
        field = name[len("RUNBOT_"):].lower()
        base = field.split("__", 1)[0]
        if base in known or (base.endswith("_file") and base[: -len("_file")] in known):
            continue
        names = {f"RUNBOT_{k.upper()}" for k in known}
        raise ConfigError(f"unknown environment variable {name}{suggest(name, names)}",
                          "unset it, or see `runbot config show` for every setting")  # fmt: skip


def suggest(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def relative_paths(cfg: ConfigFile, path_fields: set[str], environ: Mapping[str, str]) -> dict[str, Path]:
    """Path settings read relative to the config file: relative values in it, and the directory defaults."""
    out: dict[str, Path] = {}
    for name in path_fields:
        if f"RUNBOT_{name.upper()}" in environ:
            continue
        value = cfg.values.get(name)
        if value is None:
            continue
        p = Path(str(value)).expanduser()
        out[name] = p if p.is_absolute() else cfg.directory / p
    for name, default in (("data_dir", "data"), ("runbooks_dir", "runbooks")):
        if name not in out and name not in cfg.values and f"RUNBOT_{name.upper()}" not in environ:
            out[name] = cfg.directory / default
    return out


def environ() -> Mapping[str, str]:
    return os.environ
