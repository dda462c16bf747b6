"""Size budgets for everything runbot sends Slack, applied to the final (escaped) text.

Slack refuses a payload over its limits (`invalid_blocks`, `msg_blocks_too_long`, `invalid_arguments`) and
a refused message is a message nobody sees, so every field is fitted here, after escaping: a cut never
splits an escape sequence (`&amp;`), a control sequence (`<@U1>`, `<url|label>`, `<!date^...>`), a code
fence, or a character (lengths are counted in UTF-16 units, as Slack's clients count them, so a
4-byte emoji never pushes a field over). The limits are Slack's documented ones (docs.slack.dev, Block Kit
reference); the total block text of a message has no published limit, Slack reports `msg_blocks_too_long`
from about 12-13k characters, so messages are kept under MESSAGE_TEXT_BUDGET.
"""

from __future__ import annotations

import copy
import unicodedata
from typing import Any

ELLIPSIS = "…"
TEXT_MAX = 40_000  # chat.postMessage `text` (Slack truncates above, or answers msg_too_long)
TOP_TEXT_BUDGET = 3000  # our own: the notification fallback never needs more
BLOCKS_PER_MESSAGE = 50
BLOCKS_PER_VIEW = 100  # modals and App Home
MESSAGE_TEXT_BUDGET = 10_500  # total text in a message's blocks (Slack refuses around 12-13k)
SECTION_TEXT = 3000
SECTION_FIELD = 2000
SECTION_FIELDS = 10
HEADER_TEXT = 150
CONTEXT_ELEMENTS = 10
CONTEXT_TEXT = 3000
BUTTON_TEXT = 75
BUTTON_VALUE = 2000
ACTION_ELEMENTS = 25
ID_MAX = 255  # block_id, action_id, callback_id
CONFIRM_TITLE = 100
CONFIRM_TEXT = 300
CONFIRM_BUTTON = 30
OPTION_TEXT = 75
OPTION_VALUE = 150
OPTIONS = 100
INPUT_LABEL = 2000
INPUT_HINT = 2000
PLACEHOLDER = 150
VIEW_TITLE = 24  # modal title, submit and close
PRIVATE_METADATA = 3000
_ESCAPES_MAX = 6  # the longest escape we emit: "&amp;" is 5, "&#39;" 5; 6 leaves room


def length(text: str) -> int:
    """Characters as Slack counts them (UTF-16 code units: an astral emoji counts 2)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def fit(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """`text` (final, escaped mrkdwn or plain text) in at most `limit` units, cut at a safe place."""
    if length(text) <= limit:
        return text
    room = max(0, limit - length(marker))
    units = cut = 0
    for i, c in enumerate(text):  # the longest prefix within `room` units, in one pass
        units += 2 if ord(c) > 0xFFFF else 1
        if units > room:
            break
        cut = i + 1
    head = _safe_end(text[:cut])
    if head.count("```") % 2 == 1:  # a cut code block: close it (and make room for the fence)
        while head and length(head) + 3 > room:
            head = _safe_end(head[:-1])
        if head.count("```") % 2 == 1:
            return head + "```" + marker if length(head) + 3 + length(marker) <= limit else marker[:limit]
    return head + marker if room else marker[:limit]


def _safe_end(head: str) -> str:
    amp = head.rfind("&", max(0, len(head) - _ESCAPES_MAX))
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]  # never half an `&amp;`
    lt = head.rfind("<")
    if lt != -1 and ">" not in head[lt:]:
        head = head[:lt]  # never half a mention, link or date token
    while head and (unicodedata.combining(head[-1]) or head[-1] in "\u200d\ufe0f\ufe0e" or _high_surrogate(head[-1])):
        head = head[:-1]  # never a dangling joiner or variation selector
    if head.endswith("``") and not head.endswith("```"):
        head = head.rstrip("`")  # never two thirds of a fence
    return head


def _high_surrogate(c: str) -> bool:
    return 0xD800 <= ord(c) <= 0xDBFF


# ---- whole payloads -------------------------------------------------------------------------------------------


def fit_text_obj(obj: Any, limit: int) -> None:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        obj["text"] = fit(obj["text"], limit) or "-"


def _fit_ids(obj: dict[str, Any]) -> None:
    for key in ("block_id", "action_id"):
        if isinstance(obj.get(key), str) and len(obj[key]) > ID_MAX:
            obj[key] = obj[key][:ID_MAX]


def _fit_element(el: dict[str, Any]) -> None:
    _fit_ids(el)
    if el.get("type") == "button":
        fit_text_obj(el.get("text"), BUTTON_TEXT)
        if isinstance(el.get("value"), str):
            el["value"] = el["value"][:BUTTON_VALUE]
    conf = el.get("confirm")
    if isinstance(conf, dict):
        fit_text_obj(conf.get("title"), CONFIRM_TITLE)
        fit_text_obj(conf.get("text"), CONFIRM_TEXT)
        fit_text_obj(conf.get("confirm"), CONFIRM_BUTTON)
        fit_text_obj(conf.get("deny"), CONFIRM_BUTTON)
    if isinstance(el.get("options"), list):
        el["options"] = el["options"][:OPTIONS]
        for o in el["options"]:
            fit_text_obj(o.get("text"), OPTION_TEXT)
    fit_text_obj(el.get("placeholder"), PLACEHOLDER)


def fit_block(b: dict[str, Any]) -> dict[str, Any]:
    """One block within its per-field limits (in place; returns it)."""
    _fit_ids(b)
    kind = b.get("type")
    if kind == "section":
        fit_text_obj(b.get("text"), SECTION_TEXT)
        if isinstance(b.get("fields"), list):
            b["fields"] = b["fields"][:SECTION_FIELDS]
            for f in b["fields"]:
                fit_text_obj(f, SECTION_FIELD)
        if isinstance(b.get("accessory"), dict):
            _fit_element(b["accessory"])
    elif kind == "header":
        fit_text_obj(b.get("text"), HEADER_TEXT)
    elif kind == "context":
        b["elements"] = (b.get("elements") or [])[:CONTEXT_ELEMENTS]
        for e in b["elements"]:
            fit_text_obj(e, CONTEXT_TEXT)
    elif kind == "actions":
        b["elements"] = (b.get("elements") or [])[:ACTION_ELEMENTS]
        for e in b["elements"]:
            _fit_element(e)
    elif kind == "input":
        fit_text_obj(b.get("label"), INPUT_LABEL)
        fit_text_obj(b.get("hint"), INPUT_HINT)
        if isinstance(b.get("element"), dict):
            _fit_element(b["element"])
    return b


def _texts(obj: Any) -> list[dict[str, Any]]:
    """Every text object inside `obj` (what counts towards a message's total)."""
    if isinstance(obj, dict):
        own = [obj] if obj.get("type") in ("plain_text", "mrkdwn") and isinstance(obj.get("text"), str) else []
        return own + [t for k, v in obj.items() if k != "text" or not isinstance(v, str) for t in _texts(v)]
    if isinstance(obj, list):
        return [t for v in obj for t in _texts(v)]
    return []


def block_text_length(blocks: list[dict[str, Any]]) -> int:
    return sum(length(t["text"]) for t in _texts(blocks))


def fit_blocks(blocks: list[dict[str, Any]], *, max_blocks: int = BLOCKS_PER_MESSAGE,
               total: int | None = MESSAGE_TEXT_BUDGET) -> list[dict[str, Any]]:  # fmt: skip
    """A copy of `blocks` that Slack accepts: each block fitted, at most `max_blocks` (the last one says how
    many were left out), and at most `total` units of text (the longest texts shrink first)."""
    out = [fit_block(copy.deepcopy(b)) for b in blocks]
    if len(out) > max_blocks:
        dropped = len(out) - (max_blocks - 1)
        keep = out[: max_blocks - 1]
        actions = [b for b in out[max_blocks - 1 :] if b.get("type") == "actions"]
        if actions and keep:  # buttons matter more than the text before them: keep the last actions block
            keep = [*keep[:-1], actions[-1]]
        out = [*keep, {"type": "context", "elements": [{"type": "mrkdwn", "text": f"_… {dropped} more block(s) "
                                                          "not shown (Slack's limit)_"}]}]  # fmt: skip
    if total is not None:
        _shrink(out, total)
    return out


def _shrink(blocks: list[dict[str, Any]], total: int) -> None:
    """Cap the longest texts at one common length so the total fits (short texts are left whole)."""
    texts = _texts(blocks)
    sizes = [length(t["text"]) for t in texts]
    if sum(sizes) <= total:
        return
    lo, hi = 0, max(sizes)
    while lo < hi:  # the largest cap whose capped total fits
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in sizes) <= total:
            lo = mid
        else:
            hi = mid - 1
    cap = max(lo, 40)
    for t, n in zip(texts, sizes, strict=True):
        if n > cap:
            t["text"] = fit(t["text"], cap) or "-"


def fit_top_text(text: str, limit: int = TOP_TEXT_BUDGET) -> str:
    return fit(text, limit) or "-"


def fit_view(view: dict[str, Any]) -> dict[str, Any]:
    """A modal or Home view within Slack's view limits (a copy)."""
    out = dict(view)
    out["blocks"] = fit_blocks(view.get("blocks") or [], max_blocks=BLOCKS_PER_VIEW, total=None)
    for key in ("title", "submit", "close"):
        if isinstance(out.get(key), dict):
            out[key] = {**out[key], "text": fit(str(out[key].get("text") or "-"), VIEW_TITLE) or "-"}
    if isinstance(out.get("private_metadata"), str) and len(out["private_metadata"]) > PRIVATE_METADATA:
        raise ValueError("private_metadata over Slack's 3000 characters; carry less in it")
    return out
