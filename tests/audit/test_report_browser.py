"""The HTML report in a real browser: it loads nothing from anywhere, filters on the page, prints, screenshots.

Set RUNBOT_UPDATE_DOCS_SCREENSHOT=1 to refresh docs/audit-report.png from this run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from runbot.audit.export import export_chunks
from runbot.audit.records import ExportFilter
from tests.support.chromium import Chromium, chromium_binary

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium_binary() is None and not os.environ.get("CI"),
                                 reason="needs Chromium (apt-get install chromium)")]  # fmt: skip
DOCS = Path(__file__).resolve().parents[2] / "docs"

VISIBLE = "[...document.querySelectorAll('#events tbody tr')].filter(r => r.offsetParent !== null)"


def set_filter(element_id: str, js_value: str, prop: str = "value") -> str:
    return (f"(() => {{ const el = document.getElementById('{element_id}'); el.{prop} = {js_value};"
            f" el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change'));"
            f" return {VISIBLE}.length; }})()")  # fmt: skip


def test_the_report_filters_in_the_browser_and_makes_a_screenshot(story, tmp_path):
    report = tmp_path / "audit-report.html"
    report.write_text("".join(export_chunks(story.rt.db, "html", ExportFilter())), encoding="utf-8")
    jsonl = [json.loads(x) for x in "".join(export_chunks(story.rt.db, "jsonl", ExportFilter())).splitlines()][:-1]
    incident_events = [e for e in jsonl if e["incident_id"] == story.incident_id]
    carol_events = [e for e in jsonl if "carol" in json.dumps(e).lower()]

    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with Chromium(tmp_path) as browser:
            await browser.call("Network.enable")
            await browser.call("Page.enable")
            await browser.call("Emulation.setDeviceMetricsOverride", width=1360, height=900, deviceScaleFactor=1,
                               mobile=False)  # fmt: skip
            await browser.call("Page.navigate", url=report.as_uri())
            await browser.wait_for("Page.loadEventFired")
            seen["requests"] = [e["params"]["request"]["url"] for e in browser.events
                                if e["method"] == "Network.requestWillBeSent"]  # fmt: skip
            seen["total"] = await browser.evaluate(f"{VISIBLE}.length")
            seen["counter"] = await browser.evaluate("document.getElementById('f-count').textContent")
            seen["carol"] = await browser.evaluate(set_filter("f-text", "'CAROL'"))
            seen["carol_rows_ok"] = await browser.evaluate(f"{VISIBLE}.every(r => r.textContent.toLowerCase().includes('carol'))")
            await browser.evaluate(set_filter("f-text", "''"))
            seen["failures"] = await browser.evaluate(set_filter("f-fail", "true", "checked"))
            seen["failures_ok"] = await browser.evaluate(f"{VISIBLE}.every(r => r.classList.contains('fail'))")
            seen["fail_rows"] = await browser.evaluate("document.querySelectorAll('#events tbody tr.fail').length")
            await browser.evaluate(set_filter("f-fail", "false", "checked"))
            seen["incident"] = await browser.evaluate(set_filter("f-incident", f"'{story.incident_id}'"))
            seen["approvals_only"] = await browser.evaluate(set_filter("f-group", "'approval'"))
            await browser.evaluate(set_filter("f-group", "''"))
            await browser.evaluate(set_filter("f-incident", "''"))
            seen["summary_first"] = await browser.evaluate(
                "document.getElementById('summary').getBoundingClientRect().top < "
                "document.getElementById('events').getBoundingClientRect().top")
            shot = await browser.call("Page.captureScreenshot", format="png")
            seen["png"] = base64.b64decode(shot["data"])
            pdf = await browser.call("Page.printToPDF", printBackground=True)
            seen["pdf"] = base64.b64decode(pdf["data"])
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 90))

    assert all(u.startswith("file://") for u in seen["requests"]), seen["requests"]  # nothing fetched from anywhere
    assert seen["total"] == len(jsonl) and seen["counter"] == f"{len(jsonl)} of {len(jsonl)} event(s) shown"
    assert seen["carol"] == len(carol_events) >= 2 and seen["carol_rows_ok"]
    assert 0 < seen["failures"] == seen["fail_rows"] < seen["total"] and seen["failures_ok"]
    assert seen["incident"] == len(incident_events) < seen["total"]
    assert seen["approvals_only"] == sum(1 for e in incident_events if e["action"].startswith("approval."))
    assert seen["summary_first"] is True
    png, pdf = seen["png"], seen["pdf"]
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF")
    (tmp_path / "audit-report.png").write_bytes(png)
    if os.environ.get("RUNBOT_UPDATE_DOCS_SCREENSHOT"):
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "audit-report.png", DOCS / "audit-report.png")
