"""One settings object, built once at start and passed down; nothing reads the environment at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

MASK = "****"


class Settings(BaseSettings):
    """Effective configuration: init kwargs > RUNBOT_* environment > config file > defaults."""

    model_config = SettingsConfigDict(env_prefix="RUNBOT_", extra="ignore", env_nested_delimiter="__")

    config_file: Path | None = Field(default=None, description="YAML or TOML file with any of these settings")
    data_dir: Path = Field(default=Path("data"), description="Where the SQLite database and artifacts live")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/runbot.db (WAL mode)"
    )
    runbooks_dir: Path = Field(default=Path("runbooks"), description="Directory of runbook YAML files")
    host: str = Field(default="127.0.0.1", description="HTTP listen address")
    port: int = Field(default=8080, description="HTTP listen port")
    log_level: str = Field(default="INFO")
    log_format: Literal["console", "json"] = Field(default="console")
    api_token: SecretStr | None = Field(default=None, description="Bearer token for /api and /admin endpoints")
    engine_workers: int = Field(default=16, ge=1, description="Runs advanced concurrently by one process")
    lease_seconds: float = Field(default=30.0, gt=1, description="Run lease; a crashed owner's runs are taken over after this")
    poll_interval: float = Field(default=1.0, gt=0, description="How often the engine looks for due work")
    instance_id: str | None = Field(default=None, description="Lease owner name; default host:pid")
    secrets_provider: Literal["env", "file", "vault"] = Field(
        default="env", description="Where secret('path#key') is resolved for local use before Vault is set up"
    )
    secrets_file: Path | None = Field(default=None, description="YAML mapping path -> {key: value} for the file provider")

    @field_validator("data_dir", "runbooks_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        cfg = _config_file_from(init_settings)
        if cfg is not None:
            if cfg.suffix in (".toml",):
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cfg))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cfg))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'runbot.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def owner_id(self) -> str:
        return self.instance_id or f"{os.uname().nodename}:{os.getpid()}"

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret replaced by ****."""
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = MASK if value.get_secret_value() else ""
            elif name.endswith(("token", "password", "secret")) and value:
                out[name] = MASK
            elif isinstance(value, Path):
                out[name] = str(value)
            elif isinstance(value, list | tuple):
                out[name] = [_mask_obj(v) for v in value]
            elif isinstance(value, dict):
                out[name] = {k: _mask_obj(v) for k, v in value.items()}
            else:
                out[name] = _mask_obj(value)
            if field.description is None:
                pass
        out["effective_database_url"] = mask_url(self.effective_database_url)
        if self.database_url:
            out["database_url"] = mask_url(self.database_url)
        return out


def _mask_obj(v: Any) -> Any:
    if isinstance(v, SecretStr):
        return MASK if v.get_secret_value() else ""
    if hasattr(v, "model_dump"):
        dumped = v.model_dump()
        return {k: (MASK if isinstance(getattr(v, k, None), SecretStr) else val) for k, val in dumped.items()}
    return v


def mask_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return MASK


def _config_file_from(init_settings: PydanticBaseSettingsSource) -> Path | None:
    init = init_settings()
    raw = init.get("config_file") or os.environ.get("RUNBOT_CONFIG_FILE")
    return Path(raw) if raw else None


def load_settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
