"""A real, scriptable HTTP server on 127.0.0.1 for tests: the far side of any step that calls HTTP.

External services are faked at the HTTP boundary (not by patching our code): a step under test talks
real HTTP to this server, which records every request and answers as scripted.

    from tests.support.http_target import HttpTarget, Reply

    with HttpTarget() as srv:                                  # threaded, on a free 127.0.0.1 port
        srv.route("/health", Reply(json={"status": "ok"}))     # same answer every time
        srv.route("/flaky", [Reply(503), Reply(503), Reply(200, body="ok")])  # in order, last repeats
        srv.route("/slow", Reply(200, delay=2.0))              # sleeps before answering
        srv.route("/old", Reply.redirect("/new", status=302))  # Location relative or absolute
        srv.route("/big", Reply(body=b"x" * 10_000_000))       # large body with Content-Length
        srv.route("/endless", Reply(stream=Reply.endless()))  # chunked body that never ends
        srv.route("/echo", lambda req: Reply(json=req.json())) # computed from the request
        srv.route("/only-post", Reply(201), method="POST")     # per method; other methods fall through
        srv.route("/drop", Reply(close=True))                  # close the connection without answering

        httpx.get(srv.url("/health"))
        srv.calls("/flaky")            # -> number of requests to that path (any method)
        srv.requests                   # -> [Recorded(method, path, query, headers, body, ...)]
        srv.last("/echo").header("Idempotency-Key")

Unscripted paths answer `default` (404 with a JSON error unless changed). Routes match the exact path
(query string ignored), or a prefix when the route ends with `*` ("/api/*"). Every request is recorded
before the reply is chosen, including ones whose client gave up during a delay. `stop()` (or leaving the
`with` block) shuts the server down and wakes any delayed or endless replies.

HTTPS: `HttpTarget(tls=True)` serves TLS with a throwaway self-signed certificate (made with the openssl
CLI) for `localhost` and `127.0.0.1` (or `tls_names`); pass `srv.ca_file` to the client as its CA bundle.
`srv.sni_names` lists the server name each TLS client asked for, so a test can check that a client
connecting to an IP address still verified the certificate against the host name.
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["HttpTarget", "Recorded", "Reply"]

_UNSET: Any = object()


@dataclass
class Reply:
    """One scripted answer.

    status: HTTP status. body: bytes or str (UTF-8). json: any JSON value (sets Content-Type).
    headers: extra response headers. delay: seconds to wait before answering (interrupted by stop()).
    stream: an iterable of byte chunks sent with chunked transfer encoding (for large or endless bodies);
    chunk_delay: pause between streamed chunks. close: drop the connection without answering.
    """

    status: int = 200
    body: bytes | str = b""
    json: Any = _UNSET
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stream: Iterable[bytes] | None = None
    chunk_delay: float = 0.0
    close: bool = False

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, headers={"Location": location})

    @staticmethod
    def endless(chunk: bytes = b"x" * 65536) -> Iterator[bytes]:
        """A body that never ends: the client must stop reading on its own."""
        while True:
            yield chunk

    def payload(self) -> tuple[bytes, str | None]:
        if self.json is not _UNSET:
            return jsonlib.dumps(self.json).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return self.body, ("application/octet-stream" if self.body else None)


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it. `headers` keep their original case; use `header()` to look up."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client: tuple[str, int]
    at: float

    def header(self, name: str, default: str | None = None) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def json(self) -> Any:
        return jsonlib.loads(self.body or b"null")

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


Responder = Reply | Sequence[Reply] | Callable[[Recorded], Reply]


def _self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A throwaway self-signed certificate (its own CA) for `names`, via the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    sans = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            sans.append(f"IP:{n}")
        except ValueError:
            sans.append(f"DNS:{n}")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
         "-out", str(cert), "-subj", f"/CN={names[0]}", "-addext", "subjectAltName=" + ",".join(sans)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class _Script:
    """A route's replies: a fixed Reply, a sequence consumed in order (last repeats), or a function."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.served = 0

    def next(self, req: Recorded) -> Reply:
        r = self.responder
        self.served += 1
        if isinstance(r, Reply):
            return r
        if callable(r):
            return r(req)
        seq = list(r)
        if not seq:
            raise ValueError("empty reply sequence")
        return seq[min(self.served - 1, len(seq) - 1)]


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up or fail the TLS handshake are part of many tests; no tracebacks for them."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class HttpTarget:
    """Threaded HTTP/1.1 server on a free port; scripted per path, records and counts every request."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Reply | None = None,
        *,
        tls: bool = False,
        tls_names: Sequence[str] = ("localhost", "127.0.0.1"),
    ) -> None:
        self.default = default or Reply(404, json={"error": "no route"})
        self._lock = threading.Lock()
        self._routes: dict[tuple[str | None, str], _Script] = {}
        self._requests: list[Recorded] = []
        self._stopping = threading.Event()
        self._server = _QuietServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.scheme = "https" if tls else "http"
        self.ca_file: Path | None = None
        self.sni_names: list[str | None] = []
        self._tmp: Path | None = None
        if tls:
            self._tmp = Path(tempfile.mkdtemp(prefix="http-target-"))
            cert, key = _self_signed(self._tmp, list(tls_names))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            ctx.sni_callback = self._record_sni
            # handshake lazily in the handler thread, so a stuck client cannot block the accept loop
            self._server.socket = ctx.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.ca_file = cert

    def _record_sni(self, sock: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        with self._lock:
            self.sni_names.append(name)

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> HttpTarget:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name="http-target",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> HttpTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # ---- scripting ----------------------------------------------------------------------------------

    def route(self, path: str, responder: Responder, *, method: str | None = None) -> HttpTarget:
        """Script `path` (exact, or prefix ending in `*`), optionally for one method only."""
        with self._lock:
            self._routes[(method.upper() if method else None, path)] = _Script(responder)
        return self

    def reset(self) -> None:
        """Forget routes and recorded requests."""
        with self._lock:
            self._routes.clear()
            self._requests.clear()

    # ---- inspection ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method.upper())]

    def calls(self, path: str | None = None, method: str | None = None) -> int:
        if path is None:
            return len(self.requests)
        return len(self.requests_for(path, method))

    def last(self, path: str | None = None) -> Recorded:
        reqs = self.requests if path is None else self.requests_for(path)
        if not reqs:
            raise AssertionError(f"no request recorded for {path or 'any path'}")
        return reqs[-1]

    def wait_for_calls(self, n: int, path: str | None = None, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.calls(path) >= n:
                return True
            time.sleep(0.01)
        return self.calls(path) >= n

    # ---- internals ----------------------------------------------------------------------------------

    def _choose(self, req: Recorded) -> Reply:
        with self._lock:
            self._requests.append(req)
            script = None
            for key in ((req.method, req.path), (None, req.path)):
                script = self._routes.get(key)
                if script is not None:
                    break
            if script is None:
                prefixes = [
                    (len(p), m, s)
                    for (m, p), s in self._routes.items()
                    if p.endswith("*") and req.path.startswith(p[:-1]) and m in (None, req.method)
                ]
                if prefixes:
                    script = max(prefixes, key=lambda t: (t[0], t[1] is not None))[2]
            if script is None:
                return self.default
            return script.next(req)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "http-target"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                else:
                    body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = Recorded(
                    method=self.command,
                    path=parts.path,
                    query=parts.query,
                    headers=tuple(self.headers.items()),
                    body=body,
                    client=(str(self.client_address[0]), int(self.client_address[1])),
                    at=time.time(),
                )
                reply = target._choose(req)
                if reply.delay and target._stopping.wait(reply.delay):
                    self.close_connection = True
                    return
                if reply.close:
                    self.close_connection = True
                    return
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _read_chunked(self) -> bytes:
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                data, ctype = reply.payload()
                names = {k.lower() for k in reply.headers}
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if ctype and "content-type" not in names:
                    self.send_header("Content-Type", ctype)
                if reply.stream is not None:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in reply.stream:
                        if target._stopping.is_set():
                            break
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        if reply.chunk_delay and target._stopping.wait(reply.chunk_delay):
                            break
                    else:
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    self.close_connection = True
                    return
                if "content-length" not in names:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            setattr(Handler, f"do_{m}", Handler._handle)
        return Handler
