"""One object holding the Slack side's parts, built once from the runtime (and rebuilt by tests at will)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from slack_sdk import WebClient
from slack_sdk.web.async_client import AsyncWebClient

from runbot.adapters.slack.approvals import ApprovalService
from runbot.adapters.slack.authz import Authorizer, Directory
from runbot.adapters.slack.commands import Commands
from runbot.adapters.slack.config import SlackCredentials, credentials
from runbot.adapters.slack.delivery import Delivery
from runbot.adapters.slack.slackapi import async_web_client, web_client
from runbot.adapters.slack.store import SlackStore

if TYPE_CHECKING:
    from runbot.app import Runtime


@dataclass
class SlackService:
    rt: Runtime
    creds: SlackCredentials
    client: WebClient  # sync: delivery worker and directory lookups (worker threads)
    async_client: AsyncWebClient  # Bolt listeners
    directory: Directory
    authorizer: Authorizer
    store: SlackStore
    delivery: Delivery
    approvals: ApprovalService
    commands: Commands

    @classmethod
    def build(cls, rt: Runtime, creds: SlackCredentials | None = None) -> SlackService:
        creds = creds or credentials(rt.settings, rt.secrets)
        s = rt.settings
        client = web_client(creds.bot_token, s.slack_api_url)
        directory = Directory(client, s)
        authorizer = Authorizer(s, directory)
        store = SlackStore(rt.db)
        delivery = Delivery(rt, client, directory, authorizer, store)
        approvals = ApprovalService(rt, authorizer, store, on_change=delivery.wake)
        commands = Commands(rt, authorizer, approvals, store, on_change=delivery.wake)
        return cls(rt, creds, client, async_web_client(creds.bot_token, s.slack_api_url), directory, authorizer,
                   store, delivery, approvals, commands)  # fmt: skip
