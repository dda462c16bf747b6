"""`RUNBOT_<SETTING>_FILE`: a credential setting read from a file (Kubernetes Secret mounts, Docker secrets).

Why a settings source and not a field per credential: every credential gets the same rule without doubling
the settings model, and the file is read exactly once, when the settings are built; a changed file takes
effect at the next start (as a changed environment variable would).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

SUFFIX = "_FILE"
EXTRA_CREDENTIALS = ("database_url",)  # not a SecretStr (it is parsed as a URL), but it carries a password
MAX_BYTES = 1_048_576  # a credential, not a data file: a bigger file is a mistake


class SettingsFileError(ValueError):
    """A *_FILE setting that cannot be used; `message` is one line, `hint` says what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def credential_fields(model: type[BaseSettings]) -> list[str]:
    """Top-level settings that hold a credential and have no `<name>_file` setting of their own (Vault's token
    and AppRole secret ids have one, with re-read semantics; RUNBOT_VAULT_TOKEN_FILE means that setting)."""
    names = [n for n, f in model.model_fields.items() if _holds_secret(f)] + list(EXTRA_CREDENTIALS)
    return [n for n in names if f"{n}_file" not in model.model_fields]


def _holds_secret(field: FieldInfo) -> bool:
    ann = field.annotation
    return ann is SecretStr or SecretStr in getattr(ann, "__args__", ())


def read_credential_files(model: type[BaseSettings], prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    """{setting: file content} for every `<prefix><NAME>_FILE` set; one trailing newline is stripped."""
    out: dict[str, str] = {}
    for name in credential_fields(model):
        var = f"{prefix}{name.upper()}"
        path = environ.get(var + SUFFIX)
        if not path:
            continue
        if environ.get(var):
            raise SettingsFileError(f"both {var} and {var}{SUFFIX} are set",
                                    f"unset one of them: {var}{SUFFIX} reads the value from a file")
        out[name] = _read(var + SUFFIX, path)
    return out


def _read(var: str, path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SettingsFileError(f"{var}: cannot read {path}: {exc.strerror or type(exc).__name__}",
                                "check that the secret is mounted there and readable by runbot's user") from None
    if len(data) > MAX_BYTES:
        raise SettingsFileError(f"{var}: {path} is larger than {MAX_BYTES} bytes",
                                "the file must hold only the credential") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsFileError(f"{var}: {path} is not UTF-8 text", "the file must hold only the credential") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise SettingsFileError(f"{var}: {path} is empty", "write the credential into the file (or unset the variable)")
    return text


class CredentialFileSource(PydanticBaseSettingsSource):
    """Ranks like the environment (it is read from the environment); init kwargs still win."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for all fields at once

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.settings_cls.model_config.get("env_prefix") or "")
        return read_credential_files(self.settings_cls, prefix, os.environ if self._environ is None else self._environ)
