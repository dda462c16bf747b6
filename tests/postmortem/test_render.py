"""The postmortem skeleton: recorded facts (times, timeline, diagnostics, decisions) and sections to fill."""

from __future__ import annotations

import base64
import re

import pytest
from jinja2.exceptions import SecurityError
from sqlalchemy import select

from runbot.durations import format_duration
from runbot.engine.state import INCIDENTS, STEPS
from runbot.postmortem import UnknownIncident, render_for_slack, render_postmortem
from runbot.store import tables
from tests.support.incident_story import ALICE, BOB, CAROL, PNG, SECRET

ALERTS = tables.Alert.__table__


def recorded_times(story):
    """The milestones as the rows recorded them, computed independently of the renderer."""
    rt = story.rt
    with rt.db.read() as conn:
        alerts = conn.execute(select(ALERTS).where(ALERTS.c.incident_id == story.incident_id)).mappings().all()
        inc = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == story.incident_id)).mappings().one()
        steps = {r["step_id"]: r for r in conn.execute(select(STEPS).where(STEPS.c.run_id == story.run_id)).mappings()}
    start = min(a["starts_at"] for a in alerts)
    detected = min([a["received_at"] for a in alerts] + [inc["opened_at"]])
    first_diag = min(steps["error_graph"]["finished_at"], steps["health"]["finished_at"])
    mitigated = steps["rollback__verify"]["finished_at"]
    return {"ttd": format_duration((detected - start).total_seconds()),
            "ttfd": format_duration((first_diag - detected).total_seconds()),
            "ttm": format_duration((mitigated - start).total_seconds()),
            "ttr": format_duration((inc["resolved_at"] - start).total_seconds())}


def positions(text, needles):
    found = [text.find(n) for n in needles]
    assert all(p >= 0 for p in found), [n for n, p in zip(needles, found, strict=True) if p < 0]
    return found


TIMELINE = [
    "alert HighErrorRate started firing", "alert HighErrorRate received by runbot", "incident opened",
    "alert HighLatency started firing", "alert HighLatency received by runbot",
    "of runbook api-high-error-rate created", "step error_graph succeeded", "step health succeeded",
    "approval requested for rollback", f"{ALICE[1]} voted approve on rollback (1/2)",
    f"rollback approved by {BOB[1]} (2/2)", "step rollback succeeded", "step rollback__verify succeeded",
    "approval requested for restart_all", f"restart_all denied by {CAROL[1]}", "step restart_all skipped",
    "succeeded: all steps done", "alert HighErrorRate resolved", "incident resolved",
]  # fmt: skip


def test_markdown_has_the_facts_in_order_with_durations_from_the_recorded_times(story):
    md = render_postmortem(story.rt.db, story.incident_id, "md")
    assert md.startswith("# Postmortem: api: 5xx ratio above SLO")
    assert "| Severity | critical |" in md and "| Services | api |" in md and "| Owning team | team-api |" in md
    assert "`env=prod`" in md and "`service=api`" in md
    t = recorded_times(story)
    assert f"time to detect: {t['ttd']} |" in md and t["ttd"] == "1m"
    assert f"time to first diagnostic (from detection): {t['ttfd']} |" in md
    assert f"time to mitigate: {t['ttm']} |" in md and f"time to resolve: {t['ttr']} |" in md
    timeline = md[md.index("## Timeline"):md.index("## Diagnostics")]
    pos = positions(timeline, TIMELINE)
    assert pos == sorted(pos), "timeline out of order"
    assert f"**restart_all denied by {CAROL[1]}: too broad for a 5xx spike**" in timeline  # refusals stand out


def test_diagnostics_show_results_and_the_graph(story):
    md = render_postmortem(story.rt.db, story.incident_id, "md")
    diag = md[md.index("## Diagnostics"):md.index("## Remediations")]
    assert "### error_graph — succeeded" in diag and "5xx ratio peaked at 12%" in diag
    assert f"![error_rate.png](data:image/png;base64,{base64.b64encode(PNG).decode()})" in diag
    assert "### health — succeeded" in diag and '"status": 200' in diag


def test_remediations_name_their_approvers_and_verification_and_refusals_are_listed(story):
    md = render_postmortem(story.rt.db, story.incident_id, "md")
    rem = md[md.index("## Remediations"):md.index("## Throttled")]
    rollback = rem[rem.index("### Roll back the last deploy"):rem.index("### Restart every api pod")]
    assert f"approved by {ALICE[1]} ({ALICE[0]}), {BOB[1]} ({BOB[0]}) (2 needed)" in rollback  # name and stable id
    assert "- Verification: **succeeded**" in rollback and "Bearer ****(kv/deployer#token)" in rollback
    restart = rem[rem.index("### Restart every api pod"):]
    assert f"denied by {CAROL[1]}" in restart and "too broad for a 5xx spike" in restart
    refused = md[md.index("## Throttled, held or refused"):md.index("## Impact")]
    assert f"restart_all (run {story.run_id}) denied by {CAROL[1]}: too broad" in refused


def test_the_sections_for_people_are_there_and_empty(story):
    md = render_postmortem(story.rt.db, story.incident_id, "md")
    for heading in ("## Impact", "## Root cause", "## What went well", "## What went badly", "## Action items"):
        assert heading in md
    assert "| Action | Owner | Due date | Ticket |" in md


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_no_secret_value_appears(story, fmt):
    doc = render_postmortem(story.rt.db, story.incident_id, fmt)
    assert SECRET not in doc and base64.b64encode(SECRET.encode()).decode() not in doc


def test_html_is_self_contained_escaped_and_has_the_same_facts(story):
    with story.rt.db.tx() as conn:
        conn.execute(ALERTS.update().where(ALERTS.c.id == story.alert_ids[1])
                     .values(annotations={"summary": "<script>alert(1)</script> latency"}))
    html = render_postmortem(story.rt.db, story.incident_id, "html")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; latency" in html
    assert f'<img src="data:image/png;base64,{base64.b64encode(PNG).decode()}" alt="error_rate.png">' in html
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    pos = positions(html, [t.replace(" (1/2)", "").replace(" (2/2)", "") for t in TIMELINE])
    assert pos == sorted(pos)
    assert f"approved by {ALICE[1]} ({ALICE[0]}), {BOB[1]} ({BOB[0]})" in html and "<h2>Action items</h2>" in html


def test_a_team_overrides_one_block_of_the_builtin_template(story, tmp_path):
    custom = tmp_path / "ours.md.j2"
    custom.write_text('{% extends "builtin/postmortem.md.j2" %}{% block impact %}## Impact\n\nCustomers: {{ services|join(", ") }}\n{% endblock %}')
    md = render_postmortem(story.rt.db, story.incident_id, "md", template=custom)
    assert "Customers: api" in md and "## Timeline" in md and "_Who and what was affected" not in md


def test_team_templates_are_found_by_the_owning_team(story, tmp_path):
    (tmp_path / "team-api.md.j2").write_text("team api draft for {{ incident.id }}: {{ durations.time_to_detect }}\n")
    (tmp_path / "postmortem.md.j2").write_text("site default\n")
    md = render_postmortem(story.rt.db, story.incident_id, "md", templates_dir=tmp_path)
    assert md == f"team api draft for {story.incident_id}: 1m\n"
    (tmp_path / "team-api.md.j2").unlink()
    assert render_postmortem(story.rt.db, story.incident_id, "md", templates_dir=tmp_path) == "site default\n"


def test_templates_are_sandboxed(story, tmp_path):
    evil = tmp_path / "evil.md.j2"
    evil.write_text("{{ incident.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(SecurityError):
        render_postmortem(story.rt.db, story.incident_id, "md", template=evil)


def test_graphs_can_be_linked_files_or_left_out(story, tmp_path):
    assets = tmp_path / "pm_files"
    md = render_postmortem(story.rt.db, story.incident_id, "md", images="link", assets_dir=assets)
    (png,) = assets.iterdir()
    assert png.read_bytes() == PNG and f"![error_rate.png](pm_files/{png.name})" in md
    slack = render_for_slack(story.rt.db, story.incident_id)
    assert "data:image" not in slack and "(graph error_rate.png, artifact #" in slack


def test_an_unknown_incident_is_a_lookup_error_with_a_clear_message(story):
    with pytest.raises(UnknownIncident, match="no incident 'inc-nope'"):
        render_postmortem(story.rt.db, "inc-nope", "md")
    assert issubclass(UnknownIncident, LookupError)
    with pytest.raises(ValueError, match="md or html"):
        render_postmortem(story.rt.db, story.incident_id, "pdf")
