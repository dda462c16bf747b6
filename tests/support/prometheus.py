"""Real servers for Prometheus step tests: a Prometheus process, and a scripted fake API for edge cases.

`PrometheusProcess` runs the real binary (Debian package: /usr/bin/prometheus; override with
$PROMETHEUS_BIN) on a free 127.0.0.1 port with a temporary config and TSDB, scraping itself every second
so `up`, `prometheus_http_requests_total` etc. exist, optionally with rule files and a web config (TLS,
basic auth). It waits until the server is ready *and* has samples, and is always stopped by `stop()` /
the context manager, so a failing test never leaves a process behind.

`FakePrometheusAPI` is a tiny HTTP server speaking just enough of /api/v1 to script what a real server
rarely does on demand (503s, 429s, slow answers, HTML login pages) and to record request headers.
Neither helper imports runbot code: they are the other side of the wire.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.process import ManagedProcess

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")


def prometheus_available() -> bool:
    return Path(PROMETHEUS_BIN).is_file() and os.access(PROMETHEUS_BIN, os.X_OK)


@dataclass
class BasicAuthUser:
    username: str
    password: str


class PrometheusProcess(ManagedProcess):
    """One real Prometheus on 127.0.0.1:<free port>; see the module docstring."""

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        *,
        rules: Sequence[str] = (),
        scrape_interval: str = "1s",
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        basic_auth: BasicAuthUser | None = None,
        binary: str = PROMETHEUS_BIN,
    ) -> None:
        self.workdir = Path(workdir)
        self.rules = list(rules)
        self.scrape_interval = scrape_interval
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.basic_auth = basic_auth
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / "prometheus.log"
        self._log: Any = None

    # -- addresses and probes -------------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.tls_cert:
            return None
        return ssl.create_default_context(cafile=str(self.tls_cert))

    def _get(
        self, path: str, params: dict[str, str] | None = None, timeout: float = 2.0
    ) -> tuple[int, bytes]:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url)
        if self.basic_auth:
            token = base64.b64encode(
                f"{self.basic_auth.username}:{self.basic_auth.password}".encode()
            ).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl()) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query straight over HTTP (the test's own view, independent of runbot)."""
        status, body = self._get("/api/v1/query", {"query": promql})
        if status != 200:
            raise RuntimeError(f"query {promql!r}: HTTP {status}: {body[:300]!r}")
        data = json.loads(body)["data"]
        return data["result"] if data["resultType"] == "vector" else [data]

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rule_files = []
        for i, text in enumerate(self.rules):
            p = self.workdir / f"rules-{i}.yml"
            p.write_text(text)
            rule_files.append(str(p))
        scrape: dict[str, Any] = {
            "job_name": "prometheus",
            "scheme": self.scheme,
            "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
        }
        if self.tls_cert:
            scrape["tls_config"] = {"ca_file": str(self.tls_cert)}
        if self.basic_auth:
            scrape["basic_auth"] = {
                "username": self.basic_auth.username,
                "password": self.basic_auth.password,
            }
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": rule_files,
            "scrape_configs": [scrape],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def _write_web_config(self) -> Path | None:
        if not (self.tls_cert or self.basic_auth):
            return None
        web: dict[str, Any] = {}
        if self.tls_cert:
            web["tls_server_config"] = {"cert_file": str(self.tls_cert), "key_file": str(self.tls_key)}
        if self.basic_auth:
            web["basic_auth_users"] = {self.basic_auth.username: bcrypt_hash(self.basic_auth.password)}
        path = self.workdir / "web.yml"
        path.write_text(json.dumps(web, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> PrometheusProcess:
        """Start, retrying on a new port if another process grabbed ours between pick and bind."""
        if not prometheus_available():
            raise RuntimeError(f"Prometheus binary not found at {self.binary} (apt-get install prometheus)")
        self.start_on_free_port(self._argv, timeout)
        return self

    def _argv(self) -> list[str]:
        config = self._write_config()
        web = self._write_web_config()
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        args = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        if web is not None:
            args.append(f"--web.config.file={web}")
        return args

    def probe_ready(self) -> bool:
        return self._get("/-/ready", timeout=1.0)[0] == 200

    def wait_for(
        self, promql: str, *, timeout: float = 30.0, check: Callable[[list[Any]], bool] = bool
    ) -> list[Any]:
        """Poll an instant query until `check(result)` holds (default: non-empty); return the result."""
        deadline = time.monotonic() + timeout
        result: list[Any] = []
        while time.monotonic() < deadline:
            try:
                result = self.query(promql)
                if check(result):
                    return result
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{promql!r} did not produce the expected result in {timeout}s (last: {result!r})")

    def wait_for_samples(self, samples: int = 3, timeout: float = 30.0) -> None:
        """Until self-scraping has produced `samples` points of `up` (so range queries have lines)."""
        self.wait_for(
            "count_over_time(up[5m])",
            timeout=timeout,
            check=lambda r: bool(r) and float(r[0]["value"][1]) >= samples,
        )

@contextmanager
def running_prometheus(workdir: Path, *, samples: int = 3, **kwargs: Any) -> Iterator[PrometheusProcess]:
    """Start a Prometheus, wait for `samples` scrapes, yield it, always stop it."""
    prom = PrometheusProcess(workdir, **kwargs)
    try:
        prom.start()
        if samples:
            prom.wait_for_samples(samples)
        yield prom
    finally:
        prom.stop()


# ---- TLS and basic auth material -----------------------------------------------------------------------


def self_signed_cert(directory: Path, cn: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway self-signed cert for 127.0.0.1 (also usable as its own CA file), via the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={cn}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def bcrypt_available() -> bool:
    try:
        return bcrypt_hash("probe").startswith("$2")
    except Exception:
        return False


def bcrypt_hash(password: str) -> str:
    """bcrypt for Prometheus' web config, via libxcrypt (the `crypt` module; Python < 3.13)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


# ---- scripted fake API ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON, str/bytes -> as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def vector_reply(*samples: tuple[dict[str, str], float]) -> Reply:
    now = time.time()
    result = [{"metric": labels, "value": [now, repr(v)]} for labels, v in samples]
    return Reply(body={"status": "success", "data": {"resultType": "vector", "result": result}})


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


class FakePrometheusAPI:
    """Answers each request with the next scripted Reply (the last one repeats); records what it saw."""

    def __init__(self, replies: Sequence[Reply] | None = None) -> None:
        self.replies = list(replies or [vector_reply(({}, 1.0))])
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _next(self) -> Reply:
        with self._lock:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def start(self) -> FakePrometheusAPI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                form = urllib.parse.parse_qs(parsed.query)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    form.update(urllib.parse.parse_qs(self.rfile.read(length).decode()))
                with fake._lock:
                    fake.seen.append(Seen(self.command, parsed.path, dict(self.headers.items()), form))
                reply = fake._next()
                if reply.delay:
                    fake._stop.wait(reply.delay)
                body = reply.body
                if isinstance(body, dict | list):
                    data = json.dumps(body).encode()
                    ctype = "application/json"
                else:
                    data = body.encode() if isinstance(body, str) else (body or b"")
                    ctype = "text/html"
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout tests)

            do_GET = _handle
            do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # the OS picks a free port
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-prometheus", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None

    def __enter__(self) -> FakePrometheusAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
