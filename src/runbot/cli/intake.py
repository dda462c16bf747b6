"""`runbot alerts ...`, `runbot incidents ...` and `runbot fire`: look at what Alertmanager sent, and send a sample."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runbot.cli.output import OUTPUT

if TYPE_CHECKING:
    from sqlalchemy import Connection

alerts_app = typer.Typer(no_args_is_help=True, help="Alerts received from Alertmanager.")
incidents_app = typer.Typer(no_args_is_help=True, help="Incidents: one per firing Alertmanager group.")


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(incidents_app, name="incidents")
    app.command("fire")(fire)


@contextmanager
def _conn() -> Iterator[Connection]:
    """Read the bot's database; never creates or migrates it (that is `serve` / `db upgrade`)."""
    from runbot.cli.main import database

    db = database()
    try:
        with db.read() as conn:
            yield conn
    finally:
        db.dispose()


def _ts(v: str | None) -> str:
    if not v:
        return "-"
    return datetime.fromisoformat(v).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _labels(d: dict[str, Any] | None, skip: tuple[str, ...] = ("alertname",)) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((d or {}).items()) if k not in skip)


def _emit(data: Any, as_json: bool | str, render: Callable[[], None]) -> None:
    if as_json is True or as_json == "json":
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        render()


@alerts_app.command("list")
def alerts_list(
    status: str | None = typer.Option(None, help="firing | resolved"),
    incident: str | None = typer.Option(None, help="Only alerts of this incident."),
    unhandled: bool = typer.Option(False, "--unhandled", help="Only alerts no runbook matched."),
    pending: bool = typer.Option(False, "--pending", help="Only alerts still waiting to be matched."),
    limit: int = typer.Option(30, help="How many (newest first)."),
    as_json: str = OUTPUT,
) -> None:
    """Recent alerts: status, incident, and what intake did with each."""
    from runbot.adapters.alertmanager import queries
    from runbot.cli.main import _table

    with _conn() as conn:
        rows = queries.list_alerts(conn, status=status, incident=incident, unhandled=unhandled, pending=pending,
                                   limit=limit)  # fmt: skip
    _emit(rows, as_json, lambda: typer.echo(_table(
        ["ALERT", "NAME", "STATUS", "STARTS (UTC)", "RECEIVER", "INCIDENT", "LABELS", "INTAKE"],
        [[r["id"], r["alertname"], r["status"], _ts(r["starts_at"]), r["receiver"] or "-", r["incident_id"],
          _labels(r["labels"])[:50], "pending" if r["pending_since"] else (r["note"] or "")[:70]] for r in rows])))  # fmt: skip


@alerts_app.command("throttled")
def alerts_throttled(as_json: str = OUTPUT) -> None:
    """Alert storms: per runbook, how many alerts a rate limit kept from starting a run."""
    from runbot.adapters.alertmanager import queries
    from runbot.cli.main import _table

    with _conn() as conn:
        rows = queries.throttle_summary(conn)
    _emit(rows, as_json, lambda: typer.echo(_table(
        ["RUNBOOK", "THROTTLED ALERTS", "FIRST (UTC)", "LAST (UTC)"],
        [[r["runbook"], r["alerts"], _ts(r["first"]), _ts(r["last"])] for r in rows]) if rows
        else "no alert was throttled"))  # fmt: skip


@alerts_app.command("rejects")
def alerts_rejects(limit: int = typer.Option(10), as_json: str = OUTPUT) -> None:
    """Webhook bodies refused after authentication (malformed, wrong version, too large), newest first."""
    from runbot.adapters.alertmanager import queries

    with _conn() as conn:
        rows = queries.list_rejects(conn, limit)

    def render() -> None:
        for r in rows:
            typer.echo(f"#{r['id']} {_ts(r['received_at'])} HTTP {r['status_code']} {r['error']}")
            typer.echo(f"  {r['body_size']} bytes{' (kept truncated)' if r['truncated'] else ''}: {r['body'][:200]!r}")
        if not rows:
            typer.echo("no rejected webhook bodies")

    _emit(rows, as_json, render)


@incidents_app.command("list")
def incidents_list(
    status: str | None = typer.Option(None, help="open | resolved"),
    limit: int = typer.Option(30, help="How many (newest first)."),
    as_json: str = OUTPUT,
) -> None:
    """Incidents with their alert and run counts."""
    from runbot.adapters.alertmanager import queries
    from runbot.cli.main import _table

    with _conn() as conn:
        rows = queries.list_incidents(conn, status=status, limit=limit)
    _emit(rows, as_json, lambda: typer.echo(_table(
        ["INCIDENT", "STATUS", "OPENED (UTC)", "RESOLVED (UTC)", "FIRING", "RESOLVED", "RUNS", "TITLE"],
        [[r["id"], r["status"], _ts(r["opened_at"]), _ts(r["resolved_at"]), r["alerts_firing"], r["alerts_resolved"],
          r["runs"], r["title"][:60]] for r in rows])))  # fmt: skip


@incidents_app.command("show")
def incidents_show(
    incident_ref: str = typer.Argument(..., help="Incident id (a unique prefix is enough)."),
    as_json: str = OUTPUT,
) -> None:
    """One incident: its alerts, its runs and their state."""
    from runbot.adapters.alertmanager import queries
    from runbot.cli.main import _table, fail

    with _conn() as conn:
        try:
            inc_id = queries.resolve_incident_id(conn, incident_ref)
        except ValueError as exc:
            fail(str(exc))
        d = queries.incident_detail(conn, inc_id) if inc_id else None
    if d is None:
        fail(f"no incident {incident_ref!r}", "list incidents with: runbot incidents list")

    def render() -> None:
        reopened = f"  reopened {d['reopened']}x" if d.get("reopened") else ""
        typer.echo(f"incident {d['id']}  {d['status']}  {d['title']}")
        typer.echo(f"opened {_ts(d['opened_at'])}  resolved {_ts(d['resolved_at'])}  severity "
                   f"{d['severity'] or '-'}{reopened}")  # fmt: skip
        typer.echo(f"group {d['group_key']}  receiver {d.get('receiver') or '-'}")
        for a in d["alerts"]:
            links = {k: v for k, v in (a.get("links") or {}).items() if k != "source"}
            if links:
                typer.echo(f"links of {a['id']}: " + "  ".join(f"{k} {v}" for k, v in links.items()))
        typer.echo("")
        typer.echo(_table(["ALERT", "NAME", "STATUS", "STARTS (UTC)", "ENDS (UTC)", "LABELS", "INTAKE"],
                          [[a["id"], a["alertname"], a["status"], _ts(a["starts_at"]), _ts(a["ends_at"]),
                            _labels(a["labels"])[:50], (a["note"] or "")[:60]] for a in d["alerts"]]))  # fmt: skip
        typer.echo("")
        if d["runs"]:
            typer.echo(_table(["RUN", "RUNBOOK", "STATUS", "CREATED (UTC)", "REASON"],
                              [[r["id"], r["runbook_name"], r["status"] + (" (awaiting approval)" if r["awaiting_approval"] else ""),
                                _ts(r["created_at"]), (r["reason"] or "")[:60]] for r in d["runs"]]))  # fmt: skip
        else:
            typer.echo("no runs")

    _emit(d, as_json, render)


# ---- fire: the README demo --------------------------------------------------------------------------------


def fire(
    file: Path = typer.Argument(..., help="Alertmanager webhook payload (JSON) or a single alert with labels."),
    url: str | None = typer.Option(None, "--url", help="Webhook URL (default: this config's host and port)."),
    token: str | None = typer.Option(None, "--token", envvar="RUNBOT_FIRE_TOKEN",
                                     help="Bearer token (default: RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN)."),
    fresh: bool = typer.Option(False, "--fresh", help="Stamp startsAt with now even if the alert is firing: a new "
                               "occurrence, not a repeat."),
    resolve: bool = typer.Option(False, "--resolve", help="Send it as resolved (endsAt now)."),
    keep_times: bool = typer.Option(False, "--keep-times", help="Send the file's startsAt/endsAt unchanged."),
) -> None:
    """Post a sample Alertmanager notification to a running bot, timed as Alertmanager would: an alert still
    firing keeps its startsAt (sending it twice shows the dedupe), any other starts now."""
    import httpx

    from runbot.adapters.alertmanager.payload import fingerprint
    from runbot.cli.main import fail, read_alerts, settings

    s = settings()
    data = _payload(file, read_alerts)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    firing = {} if keep_times or fresh else _firing_starts(s.effective_database_url)
    for a in data["alerts"]:
        if not keep_times:
            fp = a.get("fingerprint") or fingerprint(a.get("labels") or {})
            a["fingerprint"], a["startsAt"] = fp, firing.get(fp, now)
            if a.get("status") == "resolved":
                a["endsAt"] = now
        if resolve:
            a["status"], a["endsAt"] = "resolved", now
    if resolve:
        data["status"] = "resolved"
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host  # noqa: S104 - mapping, not binding
    target = url or f"http://{host}:{s.port}/webhooks/alertmanager"
    headers = {"Content-Type": "application/json"}
    auth: tuple[str, str] | None = None
    bearer = token or (s.alertmanager_webhook_token.get_secret_value() if s.alertmanager_webhook_token else None)
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    elif s.alertmanager_webhook_username and s.alertmanager_webhook_password is not None:
        auth = (s.alertmanager_webhook_username, s.alertmanager_webhook_password.get_secret_value())
    try:
        resp = httpx.post(target, content=json.dumps(data).encode(), headers=headers, auth=auth, timeout=10.0)
    except httpx.HTTPError as exc:
        fail(f"could not reach {target}: {type(exc).__name__}", "is `runbot serve` running? or pass --url")
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text[:300]
    if resp.status_code == 401:
        fail(f"HTTP 401 from {target}: {body}", "use the server's webhook token: RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN "
             "in this shell too, or --token")  # fmt: skip
    if resp.status_code >= 300:
        fail(f"HTTP {resp.status_code} from {target}: {body}")
    if url is None and isinstance(body, dict) and isinstance(body.get("delivery"), int):
        outcome = _unpacked(body["delivery"])  # this config's own server: show what the dedupe made of it
        if outcome is not None:
            body |= {"new": outcome["new"], "duplicates": outcome["duplicates"]}
    typer.echo(f"sent {len(data['alerts'])} alert(s) to {target}: {json.dumps(body, sort_keys=True)}")


def _firing_starts(url: str) -> dict[str, str]:
    """fingerprint -> startsAt of the alerts firing in this shell's database (the oldest occurrence); empty
    when there is none to read (nothing is created or migrated here)."""
    from sqlalchemy import select

    from runbot.adapters.alertmanager.queries import ALERTS
    from runbot.store.db import Database, sqlite_file

    file = sqlite_file(url)
    if url.startswith("sqlite") and (file is None or not file.is_file()):
        return {}
    db = Database(url)
    out: dict[str, str] = {}
    try:
        with db.read() as conn:
            rows = conn.execute(select(ALERTS.c.fingerprint, ALERTS.c.starts_at).where(ALERTS.c.status == "firing")
                                .order_by(ALERTS.c.starts_at.desc())).all()  # fmt: skip
        for fp, starts in rows:  # oldest last, so it wins
            when = starts if starts.tzinfo else starts.replace(tzinfo=UTC)
            out[fp] = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except Exception:  # noqa: S110 - unreadable or older schema: the alerts start now
        pass
    finally:
        db.dispose()
    return out


def _unpacked(delivery_id: int, timeout: float = 10.0) -> dict[str, Any] | None:
    """The delivery's outcome once the server's intake worker unpacked it; None if that takes too long, or if
    this shell's database is not the server's (nothing is created or migrated here)."""
    import time

    from runbot.adapters.alertmanager.queries import delivery
    from runbot.cli.main import settings
    from runbot.store.db import Database, sqlite_file

    url = settings().effective_database_url
    file = sqlite_file(url)
    if url.startswith("sqlite") and (file is None or not file.is_file()):
        return None
    db = Database(url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            with db.read() as conn:
                found = delivery(conn, delivery_id)
            if found is None and time.monotonic() - started > 1.0:
                return None  # committed before the answer, so it would be here: another server's database
            if found is not None and found["state"] != "pending":
                return found
            time.sleep(0.05)
    except Exception:  # noqa: S110 - unreachable or older schema: the answer above is what counts
        pass
    finally:
        db.dispose()
    return None


def _payload(file: Path, read_alerts: Callable[[Path], list[dict[str, Any]]]) -> dict[str, Any]:
    """A version-4 payload: the file's own if it is one, else one built around its alert(s)."""
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError):
        raw = None
    if isinstance(raw, dict) and isinstance(raw.get("alerts"), list) and raw.get("version"):
        return raw
    alerts = read_alerts(file)  # reports unreadable files the same way `runbot match` does
    name = str((alerts[0].get("labels") or {}).get("alertname", "demo"))
    for a in alerts:
        a.setdefault("status", "firing")
        a.setdefault("startsAt", datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    return {"version": "4", "groupKey": f'{{}}:{{alertname="{name}"}}', "status": alerts[0]["status"],
            "receiver": "runbot", "groupLabels": {"alertname": name}, "commonLabels": alerts[0].get("labels", {}),
            "commonAnnotations": alerts[0].get("annotations", {}), "externalURL": "", "truncatedAlerts": 0,
            "alerts": alerts}  # fmt: skip
