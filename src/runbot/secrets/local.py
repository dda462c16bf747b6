"""Secret providers for local use before Vault is set up: environment variables or a YAML file.

They resolve the same `path#key` references as Vault, so a runbook does not change when a site moves to
Vault. Neither is meant for production credentials.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from runbot.engine.ports import SecretError


def split_ref(ref: str) -> tuple[str, str]:
    path, _, key = ref.partition("#")
    if not path:
        raise SecretError(ref, "empty path")
    return path, key or "value"


def env_var_for(ref: str) -> str:
    """kv/deployer#token -> RUNBOT_SECRET_KV_DEPLOYER__TOKEN"""
    path, key = split_ref(ref)
    norm = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_").upper()
    return f"RUNBOT_SECRET_{norm}__{re.sub(r'[^A-Za-z0-9]+', '_', key).upper()}"


class EnvSecretProvider:
    def fetch(self, ref: str) -> str:
        name = env_var_for(ref)
        value = os.environ.get(name)
        if value is None:
            raise SecretError(ref, f"not set (the env provider reads {name})")
        return value


class FileSecretProvider:
    """YAML: {"kv/deployer": {"token": "..."}}; re-read on every fetch so rotation needs no restart."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch(self, ref: str) -> str:
        path, key = split_ref(ref)
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except OSError as exc:
            raise SecretError(ref, f"cannot read secrets file {self.path}: {exc.strerror}") from None
        except yaml.YAMLError:
            raise SecretError(ref, f"secrets file {self.path} is not valid YAML") from None
        entry = data.get(path)
        if not isinstance(entry, dict):
            raise SecretError(ref, "no such path in the secrets file")
        if key not in entry:
            raise SecretError(ref, f"path has no key {key!r}")
        return str(entry[key])
