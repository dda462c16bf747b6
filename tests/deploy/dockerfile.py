"""What the image promises, read from the Dockerfile itself: the final stage's ENV, USER, VOLUME, EXPOSE,
ENTRYPOINT and CMD (no Docker engine runs here, so tests check the contract, not a built image)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class FinalStage:
    base: str
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    volumes: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    healthcheck: str = ""

    @property
    def argv(self) -> list[str]:
        return self.entrypoint + self.cmd


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _pairs(args: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in shlex.split(args))


def final_stage(path: Path = DOCKERFILE) -> FinalStage:
    stage: FinalStage | None = None
    for word, args in instructions(path.read_text()):
        if word == "FROM":
            stage = FinalStage(base=args.split()[0])
        elif stage is None:
            continue
        elif word == "ENV":
            stage.env.update(_pairs(args))
        elif word == "LABEL":
            stage.labels.update(_pairs(args))
        elif word == "USER":
            stage.user = args
        elif word == "VOLUME":
            stage.volumes = json.loads(args)
        elif word == "EXPOSE":
            stage.expose = args.split()
        elif word == "ENTRYPOINT":
            stage.entrypoint = json.loads(args)
        elif word == "CMD":
            stage.cmd = json.loads(args)
        elif word == "HEALTHCHECK":
            stage.healthcheck = args
    assert stage is not None, "no FROM in the Dockerfile"
    return stage
