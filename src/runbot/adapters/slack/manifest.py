"""The Slack app manifest runbot needs, as data: `runbot slack manifest` prints it, deploy/slack/ keeps a copy.

The scopes are exactly those of the Web API methods the adapter calls; a test keeps the copy in sync.
"""

from __future__ import annotations

from typing import Any

BOT_SCOPES: dict[str, str] = {
    "chat:write": "incident threads, step results, approval requests, in-place updates, ephemeral answers",
    "commands": "the slash command",
    "files:write": "graph PNGs in incident threads (files.getUploadURLExternal, files.completeUploadExternal)",
    "usergroups:read": "approver groups: usergroups.list, usergroups.users.list",
    "channels:manage": "dedicated incident channels: conversations.create, conversations.invite",
}
BOT_EVENTS = ["app_home_opened"]
USAGE = "help | list | run RUNBOOK [k=v ...] | status [RUN] | runs | approve RUN | deny RUN [reason] | cancel RUN | freeze [reason] | unfreeze | audit [RUN] | postmortem INCIDENT"


def manifest(*, command: str = "/runbot", request_url: str | None = None, name: str = "runbot") -> dict[str, Any]:
    """Socket Mode when `request_url` is None (no public endpoint); else HTTP mode with that one URL."""
    slash: dict[str, Any] = {"command": command, "description": "Incident runbooks: run, status, approve, freeze",
                             "usage_hint": USAGE, "should_escape": False}  # fmt: skip
    settings: dict[str, Any] = {
        "event_subscriptions": {"bot_events": list(BOT_EVENTS)},
        "interactivity": {"is_enabled": True},
        "org_deploy_enabled": False,
        "socket_mode_enabled": request_url is None,
        "token_rotation_enabled": False,
    }
    if request_url is not None:
        slash["url"] = request_url
        settings["event_subscriptions"]["request_url"] = request_url
        settings["interactivity"]["request_url"] = request_url
    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": name,
            "description": "Incident runbooks with guarded remediations and approvals",
            "background_color": "#1d3557",
        },
        "features": {
            "app_home": {"home_tab_enabled": True, "messages_tab_enabled": False,
                         "messages_tab_read_only_enabled": False},
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": [slash],
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": settings,
    }
