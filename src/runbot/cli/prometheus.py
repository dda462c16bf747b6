"""`runbot prometheus check`: can runbot reach and query each configured Prometheus server?

A synchronous one-shot check belongs in a synchronous client, so this is where runbot uses
`prometheus-api-client` (the steps themselves use httpx, asynchronously, with internal bounded retries).
Credentials come from the same settings as the steps and are never printed.
"""

from __future__ import annotations

import typer

prometheus_app = typer.Typer(no_args_is_help=True, help="Prometheus: reach and query the configured servers.")


def register(app: typer.Typer) -> None:
    app.add_typer(prometheus_app, name="prometheus")


@prometheus_app.command("check")
def check(servers: list[str] = typer.Argument(None, help="Server names (default: every configured one).")) -> None:
    """Query `up` on each server; prints ok with the number of targets (and how many are down), or the reason."""
    import requests
    from prometheus_api_client import PrometheusApiClientException, PrometheusConnect

    from runbot.cli.main import fail, settings
    from runbot.redaction import Redactor
    from runbot.steps.base import StepError
    from runbot.steps.prometheus import configured_servers, resolve_server

    s = settings()
    names = servers or configured_servers(s)
    if not names:
        fail("no Prometheus server is configured", "set RUNBOT_PROMETHEUS_URL or RUNBOT_PROMETHEUS_SERVERS")
    bad = 0
    for name in names:
        try:
            cfg = resolve_server(s, name)
        except StepError as exc:
            typer.echo(f"FAILED  {name}: {exc}")
            bad += 1
            continue
        redactor = Redactor(cfg.secrets)
        session = requests.Session()
        session.verify = cfg.ca_file or cfg.verify_tls
        if cfg.client_cert:
            session.cert = (cfg.client_cert, cfg.client_key) if cfg.client_key else cfg.client_cert
        headers = dict(cfg.headers)
        if cfg.bearer_token:
            headers["Authorization"] = f"Bearer {cfg.bearer_token}"
        auth = (cfg.username, cfg.password or "") if cfg.username else None
        client = PrometheusConnect(url=cfg.url, headers=headers, auth=auth, session=session,
                                   timeout=int(max(cfg.timeout, 1)))  # fmt: skip
        try:
            up = client.custom_query("up")
            down = sum(1 for r in up if r.get("value", [0, "1"])[1] == "0")
            typer.echo(f"ok      {name} {cfg.display_url}: {len(up)} target(s) in `up`, {down} down")
        except (PrometheusApiClientException, requests.RequestException, ValueError) as exc:
            typer.echo(f"FAILED  {name} {cfg.display_url}: {redactor.redact(_reason(exc))}")
            bad += 1
        finally:
            session.close()
    if bad:
        fail(f"{bad} of {len(names)} Prometheus server(s) failed", "check the URL, credentials and TLS settings")


def _reason(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS verification failed (set a CA file for this server, or fix its certificate)"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or host unreachable"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "401" in text or "403" in text:
        return f"authentication refused ({text[:120]})"
    return text[:200]
