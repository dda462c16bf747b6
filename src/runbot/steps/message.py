"""`slack.message`: a message for the incident thread, recorded with the run and the audit trail.

The step itself only records the (redacted) text; the Slack adapter's outbox delivery posts it, so a
message survives Slack being down and is never sent twice. Without Slack configured it is still kept in
the run, the audit trail and the postmortem.
"""

from __future__ import annotations

from pydantic import Field

from runbot.domain import StepKind
from runbot.steps.base import Params, Step, StepContext, StepResult


class SlackMessageParams(Params):
    text: str = Field(min_length=1, description="message text (Slack mrkdwn is escaped: it pings nobody)")
    channel: str | None = Field(default=None, description="also post to this channel id, besides the incident thread")
    broadcast: bool = Field(default=False, description="also show the thread reply in the channel")


class SlackMessage(Step[SlackMessageParams]):
    type = "slack.message"
    kind = StepKind.CONTROL
    Params = SlackMessageParams
    default_timeout = 10.0
    doc = "Posts a message to the incident thread (and optionally a channel); recorded in the run and audit."

    async def run(self, params: SlackMessageParams, ctx: StepContext) -> StepResult:
        text = ctx.redactor.redact(params.text)
        ctx.log.info(f"slack message: {text}")
        return StepResult(output={"text": text, "channel": params.channel, "broadcast": params.broadcast},
                          summary=text[:200])  # fmt: skip
