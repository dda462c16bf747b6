"""GET /api/v1/audit/export: behind the API token, streamed from a real server, same bytes as the CLI."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from runbot.app import create_app
from runbot.audit import log as audit
from runbot.audit.export import verify_export_lines
from tests.support.incident_story import SECRET, Story
from tests.support.ports import free_port

TOKEN = "api-token-for-tests-0123456789"


@pytest.fixture
def served(make_runtime, runbooks_dir, tmp_path) -> Iterator[tuple[str, Story]]:
    """The story's runtime behind a real uvicorn server on a free loopback port (the engine loop off)."""
    from tests.support.incident_story import tell_story

    story = tell_story(make_runtime, runbooks_dir, tmp_path, api_token=TOKEN)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(story.rt, run_engine=False), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", story
    finally:
        server.should_exit = True
        thread.join(10)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.integration
def test_the_export_needs_the_api_token(served):
    base, _ = served
    for headers in ({}, auth("wrong"), {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.get(f"{base}/api/v1/audit/export", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in r.text


@pytest.mark.integration
def test_the_streamed_jsonl_verifies_and_filters_like_the_cli(served):
    base, story = served
    with httpx.stream("GET", f"{base}/api/v1/audit/export", params={"incident": story.incident_id}, headers=auth()) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        assert "attachment" in r.headers["content-disposition"]
        body = r.read().decode()
    result = verify_export_lines(body.splitlines(keepends=True))
    assert result.ok and 0 < result.count < result.head_seq
    r = httpx.get(f"{base}/api/v1/audit/export", params={"format": "csv", "actor": "U024CAROL"}, headers=auth())
    rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
    assert [row["action"] for row in rows] == ["approval.denied"]
    assert SECRET not in httpx.get(f"{base}/api/v1/audit/export", params={"format": "html"}, headers=auth()).text


@pytest.mark.integration
def test_a_large_export_arrives_in_chunks(served):
    base, story = served
    with story.rt.db.tx() as conn:
        for i in range(0, 12_000, 2_000):
            audit.append(conn, [audit.Event("step.succeeded", run_id=f"r{j}", step_id="s", outcome="succeeded",
                                            details={"summary": "x" * 40}) for j in range(i, i + 2_000)])  # fmt: skip
    chunks = 0
    lines = []
    with httpx.stream("GET", f"{base}/api/v1/audit/export", headers=auth()) as r:
        buf = ""
        for chunk in r.iter_text():
            chunks += 1
            buf += chunk
        lines = buf.splitlines(keepends=True)
    assert chunks > 1
    assert verify_export_lines(lines).ok and len(lines) > 12_000


@pytest.mark.integration
def test_bad_parameters_are_refused_with_a_reason(served):
    base, _ = served
    r = httpx.get(f"{base}/api/v1/audit/export", params={"format": "xml"}, headers=auth())
    assert r.status_code == 400 and "jsonl" in r.text
    r = httpx.get(f"{base}/api/v1/audit/export", params={"since": "last tuesday"}, headers=auth())
    assert r.status_code == 400 and "ISO 8601" in r.text


@pytest.mark.integration
def test_head_summary_and_postmortem_endpoints(served):
    base, story = served
    head = httpx.get(f"{base}/api/v1/audit/head", headers=auth()).json()
    with story.rt.db.read() as conn:
        assert audit.verify_db(conn).head_hash == head["hash"]
    summary = httpx.get(f"{base}/api/v1/audit/summary", params={"incident": story.incident_id}, headers=auth()).text
    assert "decisions: 2" in summary and "carol" in summary
    pm = httpx.get(f"{base}/api/v1/incidents/{story.incident_id}/postmortem", headers=auth())
    assert pm.status_code == 200 and pm.text.startswith("# Postmortem: api: 5xx ratio above SLO")
    html = httpx.get(f"{base}/api/v1/incidents/{story.incident_id}/postmortem", params={"format": "html"}, headers=auth())
    assert html.headers["content-type"].startswith("text/html") and "<img src=\"data:image/png;base64," in html.text
    assert httpx.get(f"{base}/api/v1/incidents/nope/postmortem", headers=auth()).status_code == 404
    assert httpx.get(f"{base}/api/v1/incidents/{story.incident_id}/postmortem").status_code == 401
