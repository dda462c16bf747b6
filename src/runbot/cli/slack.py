"""`runbot slack ...`: print the app manifest, check the bot token."""

from __future__ import annotations

import typer

slack_app = typer.Typer(no_args_is_help=True, help="Slack app set-up.")


def register(app: typer.Typer) -> None:
    app.add_typer(slack_app, name="slack")


@slack_app.command("manifest")
def manifest_cmd(
    url: str | None = typer.Option(None, "--url", help="Public URL of /slack/events (HTTP mode); omit for Socket Mode."),
    command: str | None = typer.Option(None, help="Slash command name (default: RUNBOT_SLACK_COMMAND)."),
) -> None:
    """Print the Slack app manifest (paste it at api.slack.com/apps -> From an app manifest)."""
    from runbot.adapters.slack.manifest import manifest
    from runbot.cli.main import settings

    cmd = command or settings().slack_command
    import yaml

    typer.echo(yaml.safe_dump(manifest(command=cmd, request_url=url), sort_keys=False, width=200), nl=False)


@slack_app.command("check")
def check_cmd() -> None:
    """Call auth.test with the bot token (and apps.connections.open with the app-level token, in Socket Mode);
    report the workspace and any missing scopes."""
    from runbot.adapters.slack.config import SlackConfigError, credentials, enabled
    from runbot.adapters.slack.manifest import BOT_SCOPES
    from runbot.adapters.slack.slackapi import classify, web_client
    from runbot.app import make_secret_provider
    from runbot.cli.main import fail, settings

    s = settings()
    if not enabled(s):
        fail("Slack is not configured", "set RUNBOT_SLACK_BOT_TOKEN (and a signing secret or an app token)")
    try:
        creds = credentials(s, make_secret_provider(s))
    except SlackConfigError as exc:
        fail(str(exc))
    try:
        resp = web_client(creds.bot_token, s.slack_api_url).auth_test()
    except Exception as exc:
        fail(f"auth.test failed: {classify(exc).reason}", "check RUNBOT_SLACK_BOT_TOKEN and RUNBOT_SLACK_API_URL")
    if creds.app_token:  # Socket Mode: the app-level token is a credential of its own; prove it works too
        try:
            web_client(creds.app_token, s.slack_api_url).apps_connections_open(app_token=creds.app_token)
        except Exception as exc:
            fail(f"the app-level token was refused (apps.connections.open: {classify(exc).reason})",
                 "check RUNBOT_SLACK_APP_TOKEN: an xapp- token with the connections:write scope")  # fmt: skip
    typer.echo(f"ok: bot {resp.get('user')} in team {resp.get('team')} ({resp.get('team_id')}), mode {creds.mode}"
               + (", app-level token accepted" if creds.app_token else ""))
    granted = {x.strip() for x in str(resp.headers.get("x-oauth-scopes") or "").split(",") if x.strip()}
    missing = [sc for sc in BOT_SCOPES if granted and sc not in granted]
    if missing:
        typer.echo(f"warning: the token lacks scopes {', '.join(missing)}; reinstall the app from the manifest")
