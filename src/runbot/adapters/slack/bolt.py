"""The slack-bolt app: listeners for the slash command, approval buttons, modals and the App Home.

Every listener acknowledges first (Slack's 3-second deadline) and does the slow part afterwards, in a
worker thread (database, group lookups), answering through `respond` (response_url) or the Web API.
A delivery seen before (a Slack retry with the same event id, or a replayed request with the same
trigger id) is acknowledged and does nothing. Errors become a short ephemeral message, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp
from slack_sdk.webhook.async_client import AsyncWebhookClient

from runbot.adapters.slack.authz import Actor, DirectoryError
from runbot.adapters.slack.blocks import APPROVE_ACTION, DENY_ACTION
from runbot.adapters.slack.budget import fit
from runbot.adapters.slack.escape import esc
from runbot.adapters.slack.service import SlackService
from runbot.adapters.slack.views import (
    DENY_VIEW,
    HOME_PAGE_ACTION,
    PARAM_INDEX,
    PARAM_PREFIX,
    RUN_VIEW,
    deny_modal,
    home_view,
    submitted_params,
    submitted_reason,
)
from runbot.engine.control import CommandError
from runbot.engine.guards import freeze_state

log = structlog.get_logger("runbot.slack")
OOPS = ":warning: Something went wrong on runbot's side; the details are in its log. Nothing was changed twice."
REPLY_BUDGET = 12_000  # an ephemeral answer: far below Slack's 40,000, still a long read


def build_bolt_app(svc: SlackService) -> AsyncApp:
    s = svc.rt.settings
    app = AsyncApp(
        client=svc.async_client,
        signing_secret=svc.creds.signing_secret or "",
        name="runbot",
        logger=logging.getLogger("runbot.slack.bolt"),
        process_before_response=False,  # ack() answers Slack at once; the listener continues afterwards
        request_verification_enabled=svc.creds.mode == "http",  # Socket Mode needs no signature
        raise_error_for_unhandled_request=False,
    )

    async def first_time(key: str | None, kind: str) -> bool:
        """False for a delivery seen before; a delivery without an id cannot be told apart and counts as new."""
        if not key or key.endswith(":None"):
            return True
        return await asyncio.to_thread(svc.store.first_time, key, kind)

    async def tell(body: dict[str, Any], text: str, respond: Callable[..., Awaitable[Any]] | None = None) -> None:
        """An ephemeral answer to the person: via response_url when Slack gave one, else the App Home."""
        try:
            if body.get("response_url") and respond is not None:
                await respond(text=text, response_type="ephemeral", replace_original=False)
            elif (body.get("view") or {}).get("type") == "home":
                await publish_home(Actor.from_body(body), note=text)
        except Exception as exc:
            log.warning("could not answer in Slack", error=f"{type(exc).__name__}: {exc}")

    async def publish_home(actor: Actor, note: str | None = None, page: int = 0) -> None:
        def build() -> dict[str, Any]:
            pending = svc.commands.pending_for_actor(actor)
            return home_view(pending, svc.commands.recent_runs(), freeze_state(svc.rt.db), note, page=page,
                             cmd=s.slack_command)  # fmt: skip

        await svc.async_client.views_publish(user_id=actor.user_id, view=await asyncio.to_thread(build))

    async def notify(meta: dict[str, Any], actor: Actor, text: str) -> None:
        """Answer after a modal: response_url if the origin had one, else an ephemeral in its channel."""
        try:
            if meta.get("response_url"):
                await AsyncWebhookClient(meta["response_url"]).send(text=text, response_type="ephemeral",
                                                                    replace_original=False)  # fmt: skip
            elif meta.get("channel"):
                await svc.async_client.chat_postEphemeral(channel=meta["channel"], user=actor.user_id, text=text)
            else:
                await publish_home(actor, note=text)
        except Exception as exc:
            log.warning("could not answer in Slack", error=f"{type(exc).__name__}: {exc}")

    # ---- the slash command ---------------------------------------------------------------------------------

    @app.command(s.slack_command)
    async def on_command(ack: Any, body: dict[str, Any], respond: Any, client: Any) -> None:
        await ack()
        actor = Actor.from_body(body)
        if not await first_time(f"cmd:{body.get('trigger_id')}", "command"):
            await respond(text="This command was already handled.", response_type="ephemeral")
            return
        origin = {"channel": body.get("channel_id"), "response_url": body.get("response_url")}
        try:
            reply = await asyncio.to_thread(svc.commands.handle, actor, str(body.get("text") or ""), origin)
            if reply.modal is not None:
                await client.views_open(trigger_id=body["trigger_id"], view=reply.modal)
            await respond(text=fit(reply.text, REPLY_BUDGET), response_type="ephemeral")
        except Exception as exc:
            log.error("slash command failed", command=str(body.get("text"))[:100], error=f"{type(exc).__name__}: {exc}")
            await respond(text=OOPS, response_type="ephemeral")
        svc.delivery.wake()

    # ---- approval buttons ------------------------------------------------------------------------------------

    async def decide(ack: Any, body: dict[str, Any], respond: Any, approve: bool) -> None:
        await ack()
        actor = Actor.from_body(body)
        action = (body.get("actions") or [{}])[0]
        if not await first_time(f"act:{body.get('trigger_id') or action.get('action_ts')}", "action"):
            await tell(body, "This click was already handled; nothing was done twice.", respond)
            return
        try:
            d = await asyncio.to_thread(svc.approvals.decide, actor, str(action.get("value") or ""), approve)
            await tell(body, (":white_check_mark: " if d.ok else ":no_entry: ") + esc(d.message), respond)
        except Exception as exc:
            log.error("approval click failed", error=f"{type(exc).__name__}: {exc}")
            await tell(body, OOPS, respond)

    @app.action(re.compile(f"^{HOME_PAGE_ACTION}:"))
    async def on_home_page(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        value = str(((body.get("actions") or [{}])[0]).get("value") or "0")
        try:
            await publish_home(Actor.from_body(body), page=int(value) if value.isdigit() else 0)
        except Exception as exc:
            log.error("App Home page failed", error=f"{type(exc).__name__}: {exc}")

    @app.action(APPROVE_ACTION)
    async def on_approve(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await decide(ack, body, respond, True)

    @app.action(DENY_ACTION)
    async def on_deny(ack: Any, body: dict[str, Any], respond: Any, client: Any) -> None:
        await ack()
        actor = Actor.from_body(body)
        action = (body.get("actions") or [{}])[0]
        approval_id = str(action.get("value") or "")
        if not await first_time(f"act:{body.get('trigger_id') or action.get('action_ts')}", "action"):
            await tell(body, "This click was already handled.", respond)
            return
        try:
            problem = await asyncio.to_thread(svc.approvals.may_open_deny, actor, approval_id)
            if problem:
                await tell(body, f":no_entry: Refused: {esc(problem)}.", respond)
                return
            found = await asyncio.to_thread(svc.approvals.load, approval_id)
            step = found[0]["step_id"] if found else "?"
            origin = {"channel": (body.get("channel") or {}).get("id"), "response_url": body.get("response_url")}
            await client.views_open(trigger_id=body["trigger_id"], view=deny_modal(approval_id, step, origin))
        except Exception as exc:
            log.error("deny click failed", error=f"{type(exc).__name__}: {exc}")
            await tell(body, OOPS, respond)

    @app.view(DENY_VIEW)
    async def on_deny_submit(ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        await ack()
        actor = Actor.from_body(body)
        meta = _meta(view)
        if not await first_time(f"view:{view.get('id')}:{view.get('hash')}", "view"):
            return
        try:
            d = await asyncio.to_thread(svc.approvals.decide, actor, str(meta.get("approval_id") or ""), False,
                                        submitted_reason(view) or None)  # fmt: skip
            await notify(meta, actor, (":no_entry_sign: " if d.ok else ":no_entry: ") + esc(d.message))
        except Exception as exc:
            log.error("deny submission failed", error=f"{type(exc).__name__}: {exc}")
            await notify(meta, actor, OOPS)

    # ---- the run modal -------------------------------------------------------------------------------------------

    @app.view(RUN_VIEW)
    async def on_run_submit(ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        meta = _meta(view)
        book = svc.rt.catalog.get(str(meta.get("runbook") or ""))
        if book is None:
            await ack(response_action="errors", errors={_first_block(view): "this runbook is no longer loaded"})
            return
        try:
            params = submitted_params(view, book)
            book.spec.resolve_params(params)
        except ValueError as exc:
            await ack(response_action="errors", errors={_first_block(view): str(exc)[:150]})
            return
        await ack()
        actor = Actor.from_body(body)
        if not await first_time(f"view:{view.get('id')}:{view.get('hash')}", "view"):
            return
        try:
            text = await asyncio.to_thread(svc.commands.start, actor, book.name, params)
        except (CommandError, DirectoryError) as exc:
            text = f":no_entry: {esc(exc)}"
        except Exception as exc:
            log.error("run submission failed", error=f"{type(exc).__name__}: {exc}")
            text = OOPS
        await notify(meta, actor, text)

    # ---- App Home -----------------------------------------------------------------------------------------------

    @app.event("app_home_opened")
    async def on_home(body: dict[str, Any], event: dict[str, Any]) -> None:
        if event.get("tab") not in (None, "home"):
            return
        if not await first_time(f"evt:{body.get('event_id')}", "event"):
            return  # a retried delivery (X-Slack-Retry-Num): already published
        actor = Actor(str(event.get("user") or ""), None, body.get("team_id"),
                      ((body.get("authorizations") or [{}])[0] or {}).get("enterprise_id"))  # fmt: skip
        try:
            await publish_home(actor)
        except Exception as exc:
            log.error("App Home publish failed", error=f"{type(exc).__name__}: {exc}")

    @app.error
    async def on_error(error: Exception, body: dict[str, Any]) -> None:
        log.error("Slack request failed", error=f"{type(error).__name__}: {error}")

    return app


def _meta(view: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _first_block(view: dict[str, Any]) -> str:
    for b in view.get("blocks") or []:
        if str(b.get("block_id", "")).startswith((PARAM_PREFIX, PARAM_INDEX)):
            return str(b["block_id"])
    return "none"
