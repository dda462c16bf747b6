"""Safe text for Slack mrkdwn: every untrusted string goes through here before it reaches a message.

Slack gives `<`, `>` and `&` control meaning (`<!channel>` pings a channel, `<https://x|y>` disguises a
link, `<@U1>` mentions a user). Escaping them as `&lt;`, `&gt;`, `&amp;` (Slack's own rules) makes a label
like `<!channel>` display literally and ping nobody. Secret values a live run knows are masked first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from runbot.adapters.slack.budget import fit
from runbot.redaction import REGISTRY

_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,20}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,20}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,20}$")
_ELLIPSIS = "…"
_redact: ContextVar[Callable[[str], str]] = ContextVar("runbot_slack_redact", default=REGISTRY.redact)


def redact(text: str) -> str:
    """Mask secret values: those of the run being rendered (see `for_run`), else every live run's."""
    return _redact.get()(text)


@contextmanager
def for_run(run_id: str, live: bool) -> Iterator[None]:
    """Render one run's messages masking only what that run (and the process) knows: the cost of masking
    then does not grow with the number of live runs. A finished run's redactor is gone (the engine drops
    it); its stored texts were masked when written, so the process-wide patterns are enough."""
    run_redactor = REGISTRY.for_run(run_id) if live else None
    glob = REGISTRY.global_redactor

    def masked(text: str) -> str:
        text = glob.redact(text)
        return run_redactor.redact(text) if run_redactor else text

    token = _redact.set(masked)
    try:
        yield
    finally:
        _redact.reset(token)


def esc(value: Any) -> str:
    """Untrusted text for mrkdwn: secrets masked, then `&`, `<`, `>` escaped."""
    text = redact("" if value is None else str(value))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters; a cut is marked with an ellipsis. For raw text *before* escaping, where
    the limit is only a length for the reader; Slack's limits are applied after escaping, by `fit`."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + _ELLIPSIS


def esc_fit(value: Any, limit: int) -> str:
    """Escaped, then fitted to `limit` (never cutting an escape): what a Slack limit applies to."""
    return fit(esc(value), limit)


def one_line(value: Any, limit: int = 200) -> str:
    """First line of an untrusted text, escaped and clipped (for step lists)."""
    text = redact("" if value is None else str(value)).strip()
    first = text.splitlines()[0] if text else ""
    if len(text.splitlines()) > 1:
        first += " " + _ELLIPSIS
    return fit(esc(first), limit)


def code(value: Any, limit: int = 200) -> str:
    """Inline code span of at most `limit` characters after escaping; a backtick inside would end the span
    early, so it becomes a quote."""
    return "`" + fit(esc(clip(redact(str(value)), limit)).replace("`", "'"), limit) + "`"


def code_block(value: Any, limit: int = 2500) -> str:
    """Preformatted block of at most `limit` characters after escaping; a ``` inside would close it, so
    it is broken up."""
    raw = clip(redact(str(value)), limit)  # masked before the cut: a cut secret would escape masking
    text = fit(esc(raw).replace("```", "`\u200b``"), max(1, limit - 6))
    return f"```{text}```"


def safe_url(url: Any) -> str | None:
    """An http(s) URL fit for `<url|label>`, or None (anything else is shown as text, never linked)."""
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")


def link(url: Any, label: Any) -> str:
    """A link whose label is escaped text; an unusable URL degrades to the escaped label plus URL text."""
    target = safe_url(url)
    if target is None:
        return esc(label) + (f" ({esc(url)})" if url else "")
    return f"<{target}|{fit(esc(clip(str(label), 200)).replace('|', '¦'), 200)}>"


def user(ref: str) -> str:
    """Mention a user by id; anything that is not a well-formed id is shown as escaped text."""
    ref = ref.removeprefix("slack:")
    uid = ref.rpartition("/")[2]  # `slack:T…/U…`: the user id after the team
    return f"<@{uid}>" if _USER_ID.match(uid) else esc(ref)


def usergroup(ref: str, handle: str | None = None) -> str:
    """Mention a user group by id (`<!subteam^S1>`); a handle alone is shown as escaped `@handle`."""
    if _GROUP_ID.match(ref):
        return f"<!subteam^{ref}>"
    return "@" + esc(handle or ref).lstrip("@")


def channel(ref: str) -> str:
    return f"<#{ref}>" if _CHANNEL_ID.match(ref) else esc(ref)


def is_user_id(ref: str) -> bool:
    return bool(_USER_ID.match(ref))


def is_group_id(ref: str) -> bool:
    return bool(_GROUP_ID.match(ref))


def is_channel_id(ref: str) -> bool:
    return bool(_CHANNEL_ID.match(ref))


def date(ts: datetime | None, fmt: str = "{date_short_pretty} {time}") -> str:
    """Slack date token: shown in each reader's time zone, with a UTC fallback."""
    if ts is None:
        return "-"
    ts = ts.astimezone(UTC)
    return f"<!date^{int(ts.timestamp())}^{fmt}|{ts:%Y-%m-%d %H:%M} UTC>"
