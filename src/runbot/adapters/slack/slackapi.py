"""Web API clients pointed at the configured base URL, and how to read Slack's failures.

Our own delivery loop owns retries (durably, through the outbox), so the SDK's retry handlers are off for
the delivery client: a 429 or 5xx comes back to us at once with its Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

TRANSIENT_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                              "request_timeout", "team_added_to_org"})  # fmt: skip


def base_url(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def web_client(token: str, api_url: str, timeout: int = 10) -> WebClient:
    return PooledWebClient(token=token, base_url=base_url(api_url), timeout=timeout, retry_handlers=[])


def async_web_client(token: str, api_url: str, timeout: int = 10) -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=base_url(api_url), timeout=timeout)


@dataclass
class Trouble:
    """A failed Slack call: may it succeed later, and when at the earliest."""

    transient: bool
    retry_after: float | None
    reason: str


def classify(exc: BaseException) -> Trouble:
    if isinstance(exc, SlackApiError):
        resp: Any = exc.response
        status = int(getattr(resp, "status_code", 0) or 0)
        error = ""
        try:
            error = str(resp.get("error") or "")
        except Exception:
            error = ""
        headers = {str(k).lower(): v for k, v in (getattr(resp, "headers", None) or {}).items()}
        if status == 429 or error == "ratelimited":
            return Trouble(True, _seconds(headers.get("retry-after")), f"rate limited (HTTP {status})")
        if status >= 500 or error in TRANSIENT_ERRORS:
            return Trouble(True, _seconds(headers.get("retry-after")), f"Slack error HTTP {status} {error}".strip())
        return Trouble(False, None, f"Slack refused: {error or f'HTTP {status}'}")
    return Trouble(True, None, f"{type(exc).__name__}: {str(exc)[:200]}")


def slack_error(exc: BaseException) -> str:
    """The Slack error code (`channel_not_found`) of a SlackApiError, else ''."""
    if isinstance(exc, SlackApiError):
        try:
            return str(exc.response.get("error") or "")
        except Exception:
            return ""
    return ""


def _seconds(value: Any) -> float | None:
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class PooledWebClient(WebClient):
    """A WebClient on a pool of keep-alive connections (httpx) instead of a new TCP (and TLS) connection
    per call, which is most of a call's cost at delivery rates. Proxies fall back to the SDK's urllib path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = httpx.Client(timeout=self.timeout, verify=self.ssl or True,
                                  limits=httpx.Limits(max_keepalive_connections=8, max_connections=16))  # fmt: skip

    def _perform_urllib_http_request_internal(self, url: str, req: Any) -> dict[str, Any]:
        if self.proxy is not None:
            return super()._perform_urllib_http_request_internal(url, req)
        if not url.lower().startswith("http"):
            raise SlackRequestError(f"Invalid URL detected: {url}")
        resp = self._http.post(url, content=req.data, headers=dict(req.header_items()))
        headers = dict(resp.headers.items())
        if "retry-after" in headers:
            headers["Retry-After"] = headers["retry-after"]
        return {"status": resp.status_code, "headers": headers, "body": resp.text}

    def close(self) -> None:
        self._http.close()
