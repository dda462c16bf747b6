"""Step types by name: the built-ins below plus any `runbot.steps` entry point a site installs."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runbot.settings import Settings
    from runbot.steps.base import Step

# name -> "module:Class". Adding a step type is one module and one line here.
BUILTIN: dict[str, str] = {
    "noop": "runbot.steps.builtin:Noop",
    "log": "runbot.steps.builtin:Log",
    "wait": "runbot.steps.builtin:Wait",
    "fail": "runbot.steps.builtin:Fail",
    "slack.message": "runbot.steps.message:SlackMessage",
    "http.request": "runbot.steps.http:HttpRequest",
    "command": "runbot.steps.command:Command",
    "prometheus.query": "runbot.steps.prometheus:PrometheusQuery",
    "prometheus.range": "runbot.steps.prometheus:PrometheusRange",
    "prometheus.graph": "runbot.steps.prometheus:PrometheusGraph",
    "vault.credentials": "runbot.steps.vault:VaultCredentials",
}


class UnknownStepType(KeyError):
    pass


def _load(spec: str) -> type[Step[Any]]:
    module, _, attr = spec.partition(":")
    cls: type[Step[Any]] = getattr(importlib.import_module(module), attr)
    return cls


def available_types() -> dict[str, str]:
    types = dict(BUILTIN)
    for ep in entry_points(group="runbot.steps"):
        types.setdefault(ep.name, ep.value)
    return types


class StepRegistry:
    """Instantiates each step type once per process, with the settings it needs."""

    def __init__(self, settings: Settings, extra: dict[str, type[Step[Any]]] | None = None) -> None:
        self.settings = settings
        self._types = available_types()
        self._classes: dict[str, type[Step[Any]]] = dict(extra or {})
        self._instances: dict[str, Step[Any]] = {}

    def names(self) -> list[str]:
        return sorted(set(self._types) | set(self._classes))

    def has(self, name: str) -> bool:
        return name in self._types or name in self._classes

    def cls(self, name: str) -> type[Step[Any]]:
        if name not in self._classes:
            if name not in self._types:
                raise UnknownStepType(name)
            self._classes[name] = _load(self._types[name])
        return self._classes[name]

    def get(self, name: str) -> Step[Any]:
        inst = self._instances.get(name)
        if inst is None:
            inst = self._instances[name] = self.cls(name)(self.settings)
        return inst

    def register(self, cls: type[Step[Any]]) -> None:
        self._classes[cls.type] = cls
        self._instances.pop(cls.type, None)
