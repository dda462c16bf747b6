"""Size budgets: a cut after escaping never breaks an escape, a mention, a code block or a character."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from runbot.adapters.slack import budget as Z
from runbot.adapters.slack import escape as E
from runbot.adapters.slack.blocks import Message, section

PIECES = st.sampled_from(["&", "<", ">", "a", "é", "😀", "👩\u200d💻", "```", "`", "<@U0ALICE>", "\n", " "])
ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")


@settings(max_examples=150, deadline=None)
@given(st.lists(PIECES, max_size=200), st.integers(min_value=1, max_value=400))
def test_fit_after_escaping_stays_within_the_limit_and_never_cuts_an_escape(pieces: list[str], limit: int) -> None:
    escaped = E.esc("".join(pieces))
    out = Z.fit(escaped, limit)
    assert Z.length(out) <= limit
    assert not ENTITY.search(out)  # every & is a whole &amp; / &lt; / &gt;
    assert out.count("```") % 2 == escaped[: len(out)].count("```") % 2 or out.count("```") % 2 == 0
    assert not out.endswith("\u200d")
    if Z.length(escaped) <= limit:
        assert out == escaped


@settings(max_examples=100, deadline=None)
@given(st.lists(PIECES, max_size=100), st.integers(min_value=5, max_value=300))
def test_a_mention_or_link_is_kept_whole_or_left_out(pieces: list[str], limit: int) -> None:
    text = "see " + " ".join(f"<@U0ALICE> {E.link(f'https://x.example/{i}?q={p}', p)}" for i, p in enumerate(pieces))
    out = Z.fit(text, limit)
    assert out.count("<") == out.count(">") and Z.length(out) <= limit


def test_a_message_is_fitted_to_slacks_limits_whatever_the_builders_made() -> None:
    msg = Message("&" * 50_000, [section("x" * 2900) for _ in range(80)])
    assert Z.length(msg.text) <= Z.TOP_TEXT_BUDGET
    assert len(msg.blocks) <= Z.BLOCKS_PER_MESSAGE
    assert Z.block_text_length(msg.blocks) <= Z.MESSAGE_TEXT_BUDGET
    assert "more block(s)" in msg.blocks[-1]["elements"][0]["text"]


def test_confirm_dialogs_and_ids_are_fitted() -> None:
    button = {"type": "button", "action_id": "a" * 300, "text": {"type": "plain_text", "text": "b" * 100},
              "confirm": {"title": {"type": "plain_text", "text": "t" * 200},
                          "text": {"type": "mrkdwn", "text": E.esc("&" * 200)},
                          "confirm": {"type": "plain_text", "text": "c" * 50},
                          "deny": {"type": "plain_text", "text": "d" * 50}}}  # fmt: skip
    block = Z.fit_block({"type": "actions", "block_id": "x" * 300, "elements": [button]})
    el = block["elements"][0]
    assert len(block["block_id"]) == len(el["action_id"]) == 255
    assert len(el["text"]["text"]) <= 75 and len(el["confirm"]["title"]["text"]) <= 100
    assert len(el["confirm"]["text"]["text"]) <= 300 and not ENTITY.search(el["confirm"]["text"]["text"])
