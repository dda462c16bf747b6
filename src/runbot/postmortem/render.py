"""Render the postmortem skeleton for an incident through a Jinja2 template (Markdown or HTML).

Template choice, first match wins: an explicit file; `<templates_dir>/<team>.<fmt>.j2` for the owning team
(runbook `owner`, else the incident's `team` label); `<templates_dir>/postmortem.<fmt>.j2`; the built-in
one. A custom template may `{% extends "builtin/postmortem.md.j2" %}` and override single blocks.
Templates run sandboxed: they can format the data they are given and nothing else.

Every value is escaped for its format, whatever the template does: HTML by autoescaping, Markdown by a
`finalize` hook that escapes each printed value (`runbot.mdsafe.text`) unless a filter already made it safe
Markdown. Filters for both formats: `md` (text, also in table cells), `code` (inline code; `code(table=true)`
in a table), `fence` (a code block nothing inside can close), `link` (http(s) only) and `dt`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, PrefixLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape

from runbot import mdsafe
from runbot.postmortem.context import Facts, Graph, gather, span
from runbot.store.db import Database

BUILTIN = Path(__file__).parent / "templates"
FORMATS = ("md", "html")
Images = Literal["embed", "link", "omit"]
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _dt(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


# Images embedded in Markdown as data: URIs: raster types only (CommonMark renderers refuse other data: URIs,
# and an SVG is a document of its own). Others are linked (assets dir) or named.
MD_EMBEDDABLE = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def _md_finalize(value: Any) -> str:
    """Markdown output of every `{{ ... }}`: escaped unless a filter made it safe Markdown already."""
    return value if isinstance(value, mdsafe.Md) else mdsafe.text(value)


def _html_code(value: Any, table: bool = False) -> Markup:
    return Markup("<code>{}</code>").format("" if value is None else str(value))


def _html_fence(value: Any, info: str = "") -> Markup:
    return Markup("<pre>{}</pre>").format("" if value is None else str(value))


def _html_link(label: Any, url: Any) -> Markup:
    target = mdsafe.safe_url(url)
    if target is None:
        return escape(f"{label} ({url})" if url and url != label else str(label))
    return Markup('<a href="{}" rel="noopener noreferrer">{}</a>').format(target, label)


def _filters(fmt: str) -> dict[str, Callable[..., Any]]:
    if fmt == "html":
        return {"dt": _dt, "md": lambda v: "" if v is None else str(v), "code": _html_code, "fence": _html_fence,
                "link": _html_link}  # fmt: skip
    return {"dt": _dt, "md": mdsafe.cell, "code": mdsafe.code, "fence": mdsafe.fence, "link": mdsafe.link}


def _team(facts: Facts) -> str | None:
    if facts.owners:
        return facts.owners[0]
    team = (facts.incident.get("labels") or {}).get("team")
    return str(team) if team else None


def choose_template(fmt: str, template: Path | str | None, templates_dir: Path | None,
                    team: str | None) -> tuple[BaseLoader, str]:  # fmt: skip
    """The loader and template name to use; built-ins stay reachable as builtin/<name> for `extends`."""
    builtin = PrefixLoader({"builtin": FileSystemLoader(str(BUILTIN))})
    default = f"postmortem.{fmt}.j2"
    if template is not None:
        path = Path(template).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"postmortem template {path} does not exist")
        return ChoiceLoader([FileSystemLoader(str(path.parent)), builtin]), path.name
    if templates_dir is not None and templates_dir.is_dir():
        safe_team = _UNSAFE_NAME.sub("-", team) if team else None
        for name in ([f"{safe_team}.{fmt}.j2"] if safe_team else []) + [default]:
            if (templates_dir / name).is_file():
                return ChoiceLoader([FileSystemLoader(str(templates_dir)), builtin]), name
    return builtin, f"builtin/{default}"


def _image_fn(fmt: str, images: Images, assets_dir: Path | None, incident_id: str) -> Callable[[Graph], Any]:
    """How a graph appears: embedded as a data URI, linked to a file written next to the document, or named."""

    def link(g: Graph) -> str:
        assert assets_dir is not None
        assets_dir.mkdir(parents=True, exist_ok=True)
        ext = {"image/png": ".png", "image/svg+xml": ".svg", "image/jpeg": ".jpg"}.get(g.content_type, ".bin")
        fname = _UNSAFE_NAME.sub("-", f"{incident_id}-{g.id}-{Path(g.name).stem}") + ext
        (assets_dir / fname).write_bytes(g.data)
        return f"{assets_dir.name}/{fname}"

    def image(g: Graph) -> Any:
        if images == "omit":
            text = f"(graph {g.name}, artifact #{g.id})"
            return escape(text) if fmt == "html" else text
        src = link(g) if images == "link" and assets_dir is not None else g.data_uri
        if fmt == "html":
            return Markup('<img src="{}" alt="{}">').format(src, g.name)
        if src == g.data_uri and g.content_type not in MD_EMBEDDABLE:
            return mdsafe.text(f"(graph {g.name}, artifact #{g.id}, {g.content_type})")
        return mdsafe.image(g.name, src)

    return image


def render_facts(facts: Facts, fmt: str = "md", template: Path | str | None = None, *,
                 templates_dir: Path | None = None, images: Images = "embed", assets_dir: Path | None = None) -> str:  # fmt: skip
    if fmt not in FORMATS:
        raise ValueError(f"unknown postmortem format {fmt!r}: use md or html")
    loader, name = choose_template(fmt, template, templates_dir, _team(facts))
    env = SandboxedEnvironment(loader=loader, autoescape=fmt == "html", trim_blocks=True, lstrip_blocks=True,
                               undefined=StrictUndefined, keep_trailing_newline=True,
                               finalize=_md_finalize if fmt == "md" else None)  # fmt: skip
    env.filters.update(_filters(fmt))
    env.globals.update(span=span, image=_image_fn(fmt, images, assets_dir, str(facts.incident["id"])))
    return env.get_template(name).render(**facts.as_template_context())


def render_postmortem(db: Database, incident_id: str, fmt: str = "md", template: Path | str | None = None, *,
                      templates_dir: Path | None = None, images: Images = "embed",
                      assets_dir: Path | None = None) -> str:  # fmt: skip
    """The postmortem skeleton of one incident as Markdown or HTML (graphs embedded unless told otherwise).

    Raises UnknownIncident (a LookupError) for an unknown id and FileNotFoundError for a missing template.
    """
    return render_facts(gather(db, incident_id), fmt, template, templates_dir=templates_dir, images=images,
                        assets_dir=assets_dir)  # fmt: skip


def render_for_slack(db: Database, incident_id: str) -> str:
    """Markdown without embedded images, short enough to read in a thread (graphs are uploaded separately)."""
    return render_postmortem(db, incident_id, "md", images="omit")


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
