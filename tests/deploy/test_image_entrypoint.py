"""The image's entrypoint contract without a Docker engine: the wheel the Dockerfile builds, installed into a
fresh virtualenv, started with exactly the image's command and environment, as the image's uid, with the
container's paths mapped into a scratch root where only the volumes (/data, /tmp) are writable: /readyz
answers 200 and SIGTERM stops it cleanly.

The virtualenv is cached under the system temp dir by the hash of the wheel's dependencies (installing them
is the slow part); the wheel itself is rebuilt and reinstalled every time."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import ROOT, final_stage
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the first run installs the dependencies

CONTEXT = ("pyproject.toml", "README.md", "src", "runbooks")  # what .dockerignore lets into the build


def build_wheel(out: Path) -> Path:
    """`pip wheel --no-deps` of the Docker build context (a copy: the work tree gets no build/ directory)."""
    ctx = out / "context"
    for name in CONTEXT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, ctx / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            ctx.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / name)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out / "dist"), str(ctx)],
                   check=True, env=env, timeout=300, capture_output=True)
    return next((out / "dist").glob("runbot-*.whl"))


def _requirements(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return "\n".join(sorted(line for line in lines if line.startswith("Requires-Dist:") and "extra ==" not in line))


def fresh_venv(wheel: Path) -> Path:
    key = hashlib.sha256(_requirements(wheel).encode() + sys.version.encode()).hexdigest()[:16]
    venv = Path(tempfile.gettempdir()) / f"runbot-image-venv-{key}"
    if not (venv / ".deps-installed").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", str(wheel)], check=True, timeout=900,
                       capture_output=True)
        (venv / ".deps-installed").touch()
    wheel_hash = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if (venv / ".wheel").exists() and (venv / ".wheel").read_text() == wheel_hash:
        return venv
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    (venv / ".wheel").write_text(wheel_hash)
    os.chmod(venv, 0o755)
    return venv


def _reachable_by_anyone(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents])


def test_the_images_command_and_environment_serve_readyz_from_the_built_wheel():
    stage = final_stage()
    uid, gid = (int(x) for x in stage.user.partition(":")[::2])
    scratch = Path(tempfile.mkdtemp(prefix="runbot-image-"))
    try:
        wheel = build_wheel(scratch / "build")
        venv = fresh_venv(wheel)
        root = scratch / "root"  # the container's filesystem; everything but the volumes read-only to the uid
        shutil.copytree(ROOT / "runbooks", root / "runbooks")
        mapped = {"/data": root / "data", "/tmp": root / "tmp", "/runbooks": root / "runbooks"}
        for vol in stage.volumes:
            mapped[vol].mkdir(parents=True)
        # as the image's uid when we may switch to it and it can reach the interpreter (not under /root)
        as_image_user = os.geteuid() == 0 and _reachable_by_anyone(Path(sys.base_prefix) / "lib")
        if as_image_user:
            for vol in stage.volumes:
                os.chown(mapped[vol], uid, gid)
            for d in (scratch, root):
                os.chmod(d, 0o755)

        def container_path(value: str) -> str:
            for inside, outside in mapped.items():
                if value == inside or value.startswith(inside + "/"):
                    return str(outside) + value[len(inside):]
            return value

        env = {k: container_path(v) for k, v in stage.env.items()}
        port = free_port()  # the image's 8080 may be taken on a shared machine; the port is the one change
        env.update(RUNBOT_PORT=str(port), PATH=f"{venv / 'bin'}:/usr/bin:/bin")
        argv = [str(venv / "bin" / stage.argv[0]), *stage.argv[1:]]
        log = scratch / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=container_path("/data"), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **({"user": uid, "group": gid} if as_image_user else {}))
            try:
                def ready() -> bool:
                    assert proc.poll() is None, log.read_text()
                    try:
                        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
                    except httpx.HTTPError:
                        return False

                wait_until(ready, timeout=90, what=f"/readyz 200 from the image's command\n{log}")
                body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
                # the shipped runbooks baked into /runbooks (those needing command/ssh allow-lists are skipped)
                assert body["ready"] is True and body["runbooks"] > 0, body
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text == "ok"
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert (mapped["/data"] / "runbot.db").exists()  # the default SQLite database lives in the volume
        text = log.read_text()
        assert "Traceback" not in text, text
        assert '"event": "runbot started"' in text  # RUNBOT_LOG_FORMAT=json from the image
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
