"""`--output table|json` for every listing and show command (`--json` is kept as a short form).

JSON output is for scripts: the fields are the same names as the API's (`/api/v1/...`) and stay stable;
new fields may be added, none is renamed or removed without a major version.
"""

from __future__ import annotations

import json
from typing import Any

import typer


def _choice(value: str | None) -> str:
    if value not in ("table", "json"):
        raise typer.BadParameter("use table or json")
    return value


OUTPUT: Any = typer.Option("table", "--output", "-o", callback=_choice, help="table (default) or json.")


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
