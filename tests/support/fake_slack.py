"""A real local Slack: Web API over HTTP, response_url endpoints and a Socket Mode WebSocket, on 127.0.0.1.

Tests point runbot's WebClient at `fake.api_url` (http://127.0.0.1:PORT/api/) and talk to it over real
HTTP; nothing of ours is patched. Every call is recorded; any method can be told to fail (429 with
Retry-After, 5xx) a number of times. The helpers at the bottom build and sign requests exactly as Slack
does (v0 HMAC-SHA256 over `v0:{timestamp}:{raw body}`), for HTTP mode tests.

    with FakeSlack() as slack:
        slack.add_channel("C0OPS", "ops")
        slack.add_user("U0ALICE", "alice")
        slack.add_usergroup("S0SRE", "sre-oncall", ["U0ALICE"])
        slack.fail("chat.postMessage", status=429, retry_after=1, times=2)
        ...
        slack.calls_to("chat.update")            # -> [Call(method, args, headers, at, status)]
        slack.thread("C0OPS", root_ts)           # -> replies in order
        slack.socket_send("slash_commands", {...})  # Socket Mode: push an envelope, wait for the ack
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block as SdkBlock

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret-0123456789abcdef"


@dataclass
class Call:
    method: str  # Web API method, "response_url", "upload" or "socket_ack"
    args: dict[str, Any]
    headers: dict[str, str]
    at: float
    status: int = 200
    path: str = ""


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: float | None
    times: int
    html: bool = False
    when: Any = None  # a predicate over the call's args; None: every call


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    edits: int = 0

    def all_text(self) -> str:
        """The fallback text plus every text in the blocks (what a reader would see)."""
        return self.text + "\n" + "\n".join(_texts(self.blocks))


def _texts(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        out = [obj["text"]] if isinstance(obj.get("text"), str) else []
        for k, v in obj.items():
            if k != "text" or not isinstance(v, str):
                out += _texts(v)
        return out
    if isinstance(obj, list):
        return [t for v in obj for t in _texts(v)]
    return []


# ---- Slack's limits, enforced ------------------------------------------------------------------------------------
# From Slack's reference (docs.slack.dev: Block Kit blocks, composition objects, chat.postMessage, views, rate
# limits). The fake answers the way Slack answers: `invalid_blocks` for a block over a limit,
# `msg_blocks_too_long` when a message's blocks carry too much text in total (Slack's own threshold is not
# published; reports put it near 13k characters, so the fake refuses above 12,000), `msg_too_long` for
# top-level text over 40,000 characters, `invalid_arguments` for views.

MSG_TEXT_MAX = 40_000
MSG_BLOCKS_MAX = 50
VIEW_BLOCKS_MAX = 100
MSG_BLOCK_TEXT_TOTAL_MAX = 12_000
VIEW_TITLE_MAX = 24
PRIVATE_METADATA_MAX = 3000
ID_MAX = 255


class Refused(Exception):
    """A payload Slack would refuse; `error` is Slack's error code."""

    def __init__(self, error: str, why: str) -> None:
        super().__init__(f"{error}: {why}")
        self.error = error
        self.why = why


def _text_obj(obj: Any, where: str, limit: int, *, plain_only: bool = False) -> int:
    """A text composition object; returns its length."""
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        raise Refused("invalid_blocks", f"{where}: not a text object")
    if plain_only and obj["type"] != "plain_text":
        raise Refused("invalid_blocks", f"{where}: must be plain_text")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        raise Refused("invalid_blocks", f"{where}: text must be a non-empty string")
    if len(text) > limit:
        raise Refused("invalid_blocks", f"{where}: {len(text)} characters (max {limit})")
    return len(text)


def _ids(obj: dict[str, Any], where: str) -> None:
    for key in ("block_id", "action_id"):
        v = obj.get(key)
        if v is not None and (not isinstance(v, str) or len(v) > ID_MAX):
            raise Refused("invalid_blocks", f"{where}.{key}: {len(str(v))} characters (max {ID_MAX})")


def _confirm(c: dict[str, Any], where: str) -> int:
    n = _text_obj(c.get("title"), f"{where}.title", 100, plain_only=True)
    n += _text_obj(c.get("text"), f"{where}.text", 300)
    n += _text_obj(c.get("confirm"), f"{where}.confirm", 30, plain_only=True)
    return n + _text_obj(c.get("deny"), f"{where}.deny", 30, plain_only=True)


def _option(o: dict[str, Any], where: str) -> int:
    n = _text_obj(o.get("text"), f"{where}.text", 75)
    v = o.get("value")
    if not isinstance(v, str) or not v or len(v) > 150:
        raise Refused("invalid_blocks", f"{where}.value: {len(str(v or ''))} characters (max 150)")
    return n


def _element(el: dict[str, Any], where: str) -> int:
    if not isinstance(el, dict):
        raise Refused("invalid_blocks", f"{where}: not an object")
    _ids(el, where)
    kind = el.get("type")
    n = 0
    if kind == "button":
        n += _text_obj(el.get("text"), f"{where}.text", 75, plain_only=True)
        if len(str(el.get("value") or "")) > 2000:
            raise Refused("invalid_blocks", f"{where}.value over 2000 characters")
    if isinstance(el.get("confirm"), dict):
        n += _confirm(el["confirm"], f"{where}.confirm")
    if kind in ("static_select", "multi_static_select", "overflow", "radio_buttons", "checkboxes"):
        options = el.get("options") or []
        if not options or len(options) > (5 if kind == "overflow" else 10 if kind == "checkboxes" else 100):
            raise Refused("invalid_blocks", f"{where}.options: {len(options)} options")
        values = [o.get("value") for o in options]
        for i, o in enumerate(options):
            n += _option(o, f"{where}.options[{i}]")
        if len(set(values)) != len(values):
            raise Refused("invalid_blocks", f"{where}.options: duplicate values")
        init = el.get("initial_option")
        if init is not None and init not in options:
            raise Refused("invalid_blocks", f"{where}.initial_option is not one of the options")
    if el.get("placeholder") is not None:
        n += _text_obj(el["placeholder"], f"{where}.placeholder", 150, plain_only=True)
    if kind == "plain_text_input" and len(str(el.get("initial_value") or "")) > int(el.get("max_length") or 3000):
        raise Refused("invalid_blocks", f"{where}.initial_value over max_length")
    return n


def _block(b: Any, where: str) -> int:
    """One block; returns the characters of text it carries."""
    if not isinstance(b, dict):
        raise Refused("invalid_blocks", f"{where}: not an object")
    _ids(b, where)
    kind = b.get("type")
    n = 0
    if kind == "section":
        if b.get("text") is None and not b.get("fields"):
            raise Refused("invalid_blocks", f"{where}: a section needs text or fields")
        if b.get("text") is not None:
            n += _text_obj(b["text"], f"{where}.text", 3000)
        fields = b.get("fields") or []
        if len(fields) > 10:
            raise Refused("invalid_blocks", f"{where}.fields: {len(fields)} (max 10)")
        for i, f in enumerate(fields):
            n += _text_obj(f, f"{where}.fields[{i}]", 2000)
        if b.get("accessory") is not None:
            n += _element(b["accessory"], f"{where}.accessory")
    elif kind == "header":
        n += _text_obj(b.get("text"), f"{where}.text", 150, plain_only=True)
    elif kind == "context":
        els = b.get("elements") or []
        if not els or len(els) > 10:
            raise Refused("invalid_blocks", f"{where}.elements: {len(els)} (between 1 and 10)")
        for i, e in enumerate(els):
            n += _text_obj(e, f"{where}.elements[{i}]", 3000) if e.get("type") != "image" else 0
    elif kind == "actions":
        els = b.get("elements") or []
        if not els or len(els) > 25:
            raise Refused("invalid_blocks", f"{where}.elements: {len(els)} (between 1 and 25)")
        for i, e in enumerate(els):
            n += _element(e, f"{where}.elements[{i}]")
    elif kind == "input":
        n += _text_obj(b.get("label"), f"{where}.label", 2000, plain_only=True)
        if b.get("hint") is not None:
            n += _text_obj(b["hint"], f"{where}.hint", 2000, plain_only=True)
        n += _element(b.get("element") or {}, f"{where}.element")
    elif kind == "divider":
        pass
    elif kind not in ("image", "rich_text", "markdown", "file", "video"):
        raise Refused("invalid_blocks", f"{where}: unknown block type {kind!r}")
    try:  # slack_sdk's Block Kit models know a few more rules; a formation error there is Slack's refusal too
        model = SdkBlock.parse(b)
        if model is not None:
            model.to_dict()
    except SlackObjectFormationError as exc:
        raise Refused("invalid_blocks", f"{where}: {exc}") from None
    return n


def check_blocks(blocks: Any, *, limit: int, total_max: int | None, error: str = "invalid_blocks") -> None:
    if not isinstance(blocks, list):
        raise Refused(error, "blocks must be an array")
    if len(blocks) > limit:
        raise Refused(error, f"{len(blocks)} blocks (max {limit})")
    total = 0
    ids: set[str] = set()
    for i, b in enumerate(blocks):
        try:
            total += _block(b, f"blocks[{i}]")
        except Refused as exc:
            raise Refused(error, exc.why) from None
        bid = b.get("block_id")
        if bid is not None:
            if bid in ids:
                raise Refused(error, f"blocks[{i}]: duplicate block_id")
            ids.add(bid)
    if total_max is not None and total > total_max:
        raise Refused("msg_blocks_too_long", f"{total} characters of block text (max {total_max})")


def check_message(args: dict[str, Any]) -> None:
    """chat.postMessage / chat.update / chat.postEphemeral / response_url payloads."""
    text = args.get("text")
    if text is not None and len(str(text)) > MSG_TEXT_MAX:
        raise Refused("msg_too_long", f"text of {len(str(text))} characters (max {MSG_TEXT_MAX})")
    blocks = _decoded(args.get("blocks"))
    if blocks:
        check_blocks(blocks, limit=MSG_BLOCKS_MAX, total_max=MSG_BLOCK_TEXT_TOTAL_MAX)


def check_view(view: Any) -> None:
    """views.open / views.update / views.publish: Slack answers invalid_arguments for a bad view."""
    if not isinstance(view, dict) or view.get("type") not in ("modal", "home"):
        raise Refused("invalid_arguments", "view must be a modal or home view")
    meta = view.get("private_metadata")
    if meta is not None and len(str(meta)) > PRIVATE_METADATA_MAX:
        raise Refused("invalid_arguments", f"private_metadata of {len(str(meta))} characters (max 3000)")
    if len(str(view.get("callback_id") or "")) > ID_MAX:
        raise Refused("invalid_arguments", "callback_id over 255 characters")
    if view["type"] == "modal":
        for key in ("title", "submit", "close"):
            if view.get(key) is not None or key == "title":
                try:
                    _text_obj(view.get(key), key, VIEW_TITLE_MAX, plain_only=True)
                except Refused as exc:
                    raise Refused("invalid_arguments", exc.why) from None
    check_blocks(view.get("blocks") or [], limit=VIEW_BLOCKS_MAX, total_max=None, error="invalid_arguments")


def _decoded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise Refused("invalid_blocks_format", "blocks are not JSON") from None
    return value


# ---- Slack's rate limits ----------------------------------------------------------------------------------------

TIER_PER_MINUTE = {1: 1.0, 2: 20.0, 3: 50.0, 4: 100.0}
METHOD_TIER = {
    "auth.test": 4, "chat.update": 3, "chat.postEphemeral": 4, "chat.delete": 3, "views.open": 4,
    "views.publish": 4, "views.update": 4, "files.getUploadURLExternal": 4, "files.completeUploadExternal": 4,
    "conversations.create": 2, "conversations.invite": 3, "usergroups.list": 2, "usergroups.users.list": 2,
    "users.info": 4,
}  # fmt: skip


@dataclass
class RateLimits:
    """Token buckets as a model of Slack's limits: per method (its tier, per minute) and, for
    chat.postMessage, per channel (about one a second, short bursts allowed) plus a workspace-wide cap.

    `speed` multiplies every rate (tests use fast limits with Slack's shape); `burst_seconds` is how much
    quota a bucket holds (Slack tolerates bursts). Retry-After is the time until the next token."""

    speed: float = 1.0
    burst_seconds: float = 6.0
    post_per_channel_per_second: float = 1.0
    post_channel_burst: float = 4.0
    post_workspace_per_minute: float = 600.0

    @classmethod
    def slack(cls) -> RateLimits:
        return cls()

    @classmethod
    def fast(cls, speed: float = 20.0) -> RateLimits:
        return cls(speed=speed)


class _Bucket:
    def __init__(self, per_second: float, capacity: float) -> None:
        self.rate = per_second
        self.capacity = max(1.0, capacity)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _Limiter:
    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.buckets: dict[tuple[str, str], _Bucket] = {}
        self.lock = threading.Lock()

    def _bucket(self, key: tuple[str, str], per_second: float, capacity: float) -> _Bucket:
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = _Bucket(per_second, capacity)
        return b

    def check(self, method: str, channel: str | None) -> float:
        """0 when the call may go through, else Retry-After seconds."""
        lim = self.limits
        now = time.monotonic()
        with self.lock:
            if method == "chat.postMessage":
                per_s = lim.post_workspace_per_minute / 60 * lim.speed
                wait = self._bucket(("ws", method), per_s, per_s * lim.burst_seconds).take(now)
                if wait == 0.0 and channel:
                    per_c = lim.post_per_channel_per_second * lim.speed
                    wait = self._bucket(("ch", channel), per_c, lim.post_channel_burst).take(now)
                    if wait > 0:  # give the workspace token back: the call is refused
                        self.buckets[("ws", method)].tokens += 1.0
                return wait
            tier = METHOD_TIER.get(method)
            if tier is None:
                return 0.0
            per_s = TIER_PER_MINUTE[tier] / 60 * lim.speed
            return self._bucket(("m", method), per_s, per_s * lim.burst_seconds).take(now)


class FakeSlack:
    def __init__(self, *, bot_token: str = BOT_TOKEN, app_token: str = APP_TOKEN, team_id: str = "T0TEAM",
                 enterprise_id: str | None = None, bot_user_id: str = "U0BOT",
                 rate_limits: RateLimits | None = None, strict: bool = True) -> None:  # fmt: skip
        """`rate_limits`: None for fast limits of Slack's shape (RateLimits.fast()); RateLimits.slack() for
        Slack's published rates. `strict`: refuse payloads over Slack's limits (always, unless a test says)."""
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.enterprise_id = enterprise_id
        self.bot_user_id = bot_user_id
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.usergroups: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, str] = {}  # id -> name
        self.invited: dict[str, set[str]] = {}
        self._messages: dict[tuple[str, str], Message] = {}
        self.uploads: dict[str, bytes] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self.port = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.socket_connected = threading.Event()
        self.strict = strict
        self.limiter = _Limiter(rate_limits or RateLimits.fast())
        self.refusals: list[tuple[str, str, str]] = []  # (method, error, why): what Slack would have refused
        self.ratelimited = 0  # 429s answered by the rate limiter (not by fail())

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        self._thread = threading.Thread(target=self._main, name="fake-slack", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fake Slack did not start")
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/response/{name}", self._response_url)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # the OS picks a free port
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            async def close_sockets() -> None:
                for ws in list(self._sockets):
                    await ws.close()

            asyncio.run_coroutine_threadsafe(close_sockets(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def response_url(self, name: str | None = None) -> str:
        return f"{self.base_url}/response/{name or uuid.uuid4().hex}"

    # ---- directory --------------------------------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, team_id: str | None = None) -> FakeSlack:
        self.users[user_id] = {"id": user_id, "name": name, "real_name": name.title(),
                               "team_id": team_id or self.team_id, "is_bot": False}  # fmt: skip
        return self

    def add_usergroup(self, group_id: str, handle: str, users: list[str]) -> FakeSlack:
        self.usergroups[group_id] = {"id": group_id, "handle": handle, "name": handle.replace("-", " ").title(),
                                     "users": list(users)}  # fmt: skip
        return self

    def add_channel(self, channel_id: str, name: str) -> FakeSlack:
        self.channels[channel_id] = name
        return self

    # ---- trouble on demand ---------------------------------------------------------------------------------------

    def fail(self, method: str, *, status: int = 429, times: int = 1, retry_after: float | None = None,
             error: str | None = None, html: bool = False, when: Any = None) -> FakeSlack:  # fmt: skip
        """The next `times` calls of `method` (for which `when(args)` holds) answer `status` (429 with
        Retry-After, 5xx, or 200 with `error`, as Slack refuses a payload)."""
        err = error or ("ratelimited" if status == 429 else "internal_error" if status >= 500 else "invalid_request")
        with self._lock:
            self._failures.setdefault(method, []).append(_Failure(status, err, retry_after, times, html, when))
        return self

    # ---- inspection ---------------------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str, *, ok_only: bool = False) -> list[Call]:
        return [c for c in self.calls if c.method == method and (not ok_only or c.status == 200)]

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def wait_for(self, method: str, n: int = 1, timeout: float = 10.0, *, ok_only: bool = True) -> list[Call]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.calls_to(method, ok_only=ok_only)
            if len(found) >= n:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{method}: expected {n} call(s) within {timeout}s, saw "
                             f"{len(self.calls_to(method, ok_only=ok_only))}; all calls: {self.methods()}")  # fmt: skip

    def wait_until(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"{what} not reached within {timeout}s; calls: {self.methods()}")

    def messages(self, channel: str | None = None) -> list[Message]:
        with self._lock:
            msgs = list(self._messages.values())
        return [m for m in msgs if channel is None or m.channel == channel]

    def message(self, channel: str, ts: str) -> Message:
        with self._lock:
            return self._messages[(channel, ts)]

    def delete_message(self, channel: str, ts: str) -> None:
        """As if someone deleted the message in Slack: later chat.update calls get message_not_found."""
        with self._lock:
            self._messages.pop((channel, ts), None)

    def roots(self, channel: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts is None]

    def thread(self, channel: str, ts: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts == ts]

    def responses(self) -> list[dict[str, Any]]:
        """Bodies posted to response_url endpoints (ephemeral answers), in order."""
        return [c.args for c in self.calls_to("response_url")]

    # ---- HTTP handlers --------------------------------------------------------------------------------------------

    async def _args(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            ctype = request.content_type
            raw = await request.read()
            if ctype == "application/json":
                args.update(json.loads(raw or b"{}"))
            elif ctype in ("application/x-www-form-urlencoded", ""):
                args.update({k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode(), keep_blank_values=True).items()})
        return args

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _next_failure(self, method: str, args: dict[str, Any]) -> _Failure | None:
        with self._lock:
            queue = self._failures.get(method) or []
            f = next((f for f in queue if f.when is None or f.when(args)), None)
            if f is None:
                return None
            f.times -= 1
            if f.times <= 0:
                queue.remove(f)
            return f

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._seq):06d}"

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._args(request)
        headers = dict(request.headers)
        token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip() or str(args.get("token") or "")
        failure = self._next_failure(method, args)
        if failure is not None:
            self._record(Call(method, args, headers, time.time(), failure.status, request.path))
            hdrs = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
            if failure.html:
                return web.Response(status=failure.status, text="<html>Bad gateway</html>", content_type="text/html",
                                    headers=hdrs)  # fmt: skip
            return web.json_response({"ok": False, "error": failure.error}, status=failure.status, headers=hdrs)
        channel = str(args.get("channel") or args.get("channel_id") or "") or None
        wait = self.limiter.check(method, self._channel_id(channel) if channel else None)
        if wait > 0:
            self._record(Call(method, args, headers, time.time(), 429, request.path))
            with self._lock:
                self.ratelimited += 1
            retry = str(math.ceil(wait)) if self.limiter.limits.speed == 1.0 else f"{wait:.3f}"
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": retry})
        self._record(Call(method, args, headers, time.time(), 200, request.path))
        want = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != want:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        try:
            if self.strict and method in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
                check_message(args)
            if self.strict and method in ("views.open", "views.publish", "views.update"):
                check_view(_decoded(args.get("view")))
        except Refused as exc:
            with self._lock:
                self.refusals.append((method, exc.error, exc.why))
            return web.json_response({"ok": False, "error": exc.error, "response_metadata": {"messages": [exc.why]}})
        result = handler(args)
        if not result.get("ok", True):
            return web.json_response(result)
        return web.json_response({"ok": True, **result})

    async def _response_url(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"raw": raw.decode("utf-8", "replace")}
        try:
            if self.strict:
                check_message(body)
        except Refused as exc:
            with self._lock:
                self.refusals.append(("response_url", exc.error, exc.why))
            self._record(Call("response_url", body, dict(request.headers), time.time(), 400, request.path))
            return web.Response(status=400, text=exc.error)
        self._record(Call("response_url", body, dict(request.headers), time.time(), 200, request.path))
        return web.Response(text="ok")

    async def _upload(self, request: web.Request) -> web.Response:
        data = await request.read()
        fid = request.match_info["file_id"]
        with self._lock:
            self.uploads[fid] = data
        self._record(Call("upload", {"file_id": fid, "bytes": len(data)}, dict(request.headers), time.time(), 200,
                          request.path))  # fmt: skip
        return web.Response(text=f"OK - {len(data)}")

    # ---- Web API methods -------------------------------------------------------------------------------------------

    def _channel_id(self, ref: str) -> str | None:
        if ref in self.channels:
            return ref
        name = ref.lstrip("#")
        return next((cid for cid, n in self.channels.items() if n == name), None)

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        out = {"url": "https://fake.slack.com/", "team": "Fake", "user": "runbot", "team_id": self.team_id,
               "user_id": self.bot_user_id, "bot_id": "B0BOT", "is_enterprise_install": False}  # fmt: skip
        if self.enterprise_id:
            out["enterprise_id"] = self.enterprise_id
        return out

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(str(args.get("channel") or ""))
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        thread = args.get("thread_ts") or None
        if thread is not None and (cid, thread) not in self._messages:
            return {"ok": False, "error": "thread_not_found"}
        blocks = args.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not args.get("text") and not blocks:
            return {"ok": False, "error": "no_text"}
        if len(blocks) > 50:
            return {"ok": False, "error": "invalid_blocks"}
        msg = Message(cid, self._ts(), str(args.get("text") or ""), blocks, thread)
        with self._lock:
            self._messages[(cid, msg.ts)] = msg
        return {"channel": cid, "ts": msg.ts, "message": {"text": msg.text, "ts": msg.ts, "blocks": blocks}}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        cid, ts = str(args.get("channel") or ""), str(args.get("ts") or "")
        if cid not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        with self._lock:
            msg = self._messages.get((cid, ts))
            if msg is None:
                return {"ok": False, "error": "message_not_found"}
            blocks = args.get("blocks") or []
            msg.blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
            msg.text = str(args.get("text") or "")
            msg.edits += 1
        return {"channel": cid, "ts": ts, "text": msg.text}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._channel_id(str(args.get("channel") or "")) is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"message_ts": self._ts()}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("filename") or not str(args.get("length") or "").isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        fid = f"F{next(self._seq):08d}"
        return {"upload_url": f"{self.base_url}/upload/{fid}", "file_id": fid}

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        files = json.loads(files) if isinstance(files, str) else files or []
        out = []
        for f in files:
            if f["id"] not in self.uploads:
                return {"ok": False, "error": "file_not_found"}
            out.append({"id": f["id"], "title": f.get("title"), "size": len(self.uploads[f["id"]])})
        cid = self._channel_id(str(args.get("channel_id") or args.get("channels") or ""))
        if cid is not None:
            msg = Message(cid, self._ts(), "", [], args.get("thread_ts") or None, out)
            with self._lock:
                self._messages[(cid, msg.ts)] = msg
        return {"files": out}

    def _m_conversations_create(self, args: dict[str, Any]) -> dict[str, Any]:
        name = str(args.get("name") or "")
        if not name or len(name) > 80 or name != name.lower() or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-_" for c in name):
            return {"ok": False, "error": "invalid_name_specials"}
        if name in self.channels.values():
            return {"ok": False, "error": "name_taken"}
        cid = f"C{next(self._seq):08d}"
        self.channels[cid] = name
        return {"channel": {"id": cid, "name": name, "is_channel": True}}

    def _m_conversations_invite(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = str(args.get("channel") or "")
        if cid not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        users = [u for u in str(args.get("users") or "").split(",") if u]
        if not users:
            return {"ok": False, "error": "no_user"}
        self.invited.setdefault(cid, set()).update(users)
        return {"channel": {"id": cid}}

    def _m_usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"usergroups": [{k: v for k, v in g.items() if k != "users"} for g in self.usergroups.values()]}

    def _m_usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        g = self.usergroups.get(str(args.get("usergroup") or ""))
        if g is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"users": list(g["users"])}

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        u = self.users.get(str(args.get("user") or ""))
        return {"user": u} if u else {"ok": False, "error": "user_not_found"}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        view = args.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        return {"view": {**(view or {}), "id": f"V{next(self._seq):08d}", "hash": uuid.uuid4().hex[:12]}}

    def _m_views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("user_id"):
            return {"ok": False, "error": "invalid_arguments"}
        view = args.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        return {"view": {**(view or {}), "id": f"V{next(self._seq):08d}"}}

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket"}

    # ---- Socket Mode ---------------------------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets),
                            "connection_info": {"app_id": "A0APP"}, "debug_info": {"host": "fake"}})  # fmt: skip
        self.socket_connected.set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                self._record(Call("socket_ack", data, {}, time.time()))
                fut = self._acks.pop(str(data.get("envelope_id")), None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws

    def socket_send(self, kind: str, payload: dict[str, Any], *, timeout: float = 5.0, retry_attempt: int = 0,
                    envelope_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Push one Socket Mode envelope (slash_commands, interactive, events_api); return the app's ack."""
        loop = self._loop
        assert loop is not None
        eid = envelope_id or uuid.uuid4().hex

        async def send() -> dict[str, Any]:
            if not self._sockets:
                raise AssertionError("no Socket Mode client is connected")
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._acks[eid] = fut
            await self._sockets[-1].send_json({
                "envelope_id": eid, "type": kind, "payload": payload, "accepts_response_payload": kind != "events_api",
                "retry_attempt": retry_attempt, "retry_reason": "timeout" if retry_attempt else ""})  # fmt: skip
            return await asyncio.wait_for(fut, timeout)

        return asyncio.run_coroutine_threadsafe(send(), loop).result(timeout + 1)


# ---- requests as Slack sends them -------------------------------------------------------------------------------


def sign(body: bytes | str, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """X-Slack-Request-Timestamp and X-Slack-Signature exactly as Slack computes them."""
    raw = body.encode() if isinstance(body, str) else body
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def slash_command_fields(text: str, *, user_id: str, user_name: str, team_id: str = "T0TEAM",
                         channel_id: str = "C0OPS", command: str = "/runbot", response_url: str = "",
                         trigger_id: str | None = None, enterprise_id: str | None = None) -> dict[str, str]:  # fmt: skip
    fields = {"token": "deprecated-verification-token", "team_id": team_id, "team_domain": "fake",
              "channel_id": channel_id, "channel_name": "ops", "user_id": user_id, "user_name": user_name,
              "command": command, "text": text, "api_app_id": "A0APP", "is_enterprise_install": "false",
              "response_url": response_url, "trigger_id": trigger_id or f"trig.{uuid.uuid4().hex}"}  # fmt: skip
    if enterprise_id:
        fields["enterprise_id"] = enterprise_id
    return fields


def block_action_payload(action_id: str, value: str, *, user_id: str, user_name: str, team_id: str = "T0TEAM",
                         channel_id: str = "C0OPS", message_ts: str = "1.000001", response_url: str = "",
                         trigger_id: str | None = None, enterprise_id: str | None = None,
                         user_team_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    payload: dict[str, Any] = {
        "type": "block_actions", "api_app_id": "A0APP", "token": "deprecated-verification-token",
        "team": {"id": team_id, "domain": "fake"},
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": user_team_id or team_id},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id, "is_ephemeral": False},
        "trigger_id": trigger_id or f"trig.{uuid.uuid4().hex}", "channel": {"id": channel_id, "name": "ops"},
        "message": {"ts": message_ts, "type": "message"}, "response_url": response_url,
        "actions": [{"action_id": action_id, "block_id": "b", "value": value, "type": "button",
                     "action_ts": f"{time.time():.6f}"}],
    }  # fmt: skip
    if enterprise_id:
        payload["enterprise"] = {"id": enterprise_id}
        payload["is_enterprise_install"] = False
    return payload


def view_submission_payload(callback_id: str, values: dict[str, Any], private_metadata: str, *, user_id: str,
                            user_name: str, team_id: str = "T0TEAM", view_id: str | None = None,
                            blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "type": "view_submission", "api_app_id": "A0APP", "token": "deprecated-verification-token",
        "team": {"id": team_id, "domain": "fake"},
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "trigger_id": f"trig.{uuid.uuid4().hex}",
        "view": {"id": view_id or f"V{uuid.uuid4().hex[:8].upper()}", "type": "modal", "callback_id": callback_id,
                 "private_metadata": private_metadata, "hash": uuid.uuid4().hex[:12], "blocks": blocks or [],
                 "state": {"values": values}},
    }  # fmt: skip


def event_callback(event: dict[str, Any], *, event_id: str | None = None, team_id: str = "T0TEAM") -> dict[str, Any]:
    return {"token": "deprecated-verification-token", "team_id": team_id, "api_app_id": "A0APP",
            "event": event, "type": "event_callback", "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()), "authorizations": [{"team_id": team_id, "user_id": "U0BOT",
                                                                "is_bot": True, "enterprise_id": None}]}  # fmt: skip


def form_body(fields: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(fields).encode()


def interactive_body(payload: dict[str, Any]) -> bytes:
    """Interactivity requests are form-encoded with one field, `payload`, holding the JSON."""
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
