"""Print the configuration reference (markdown) from the Settings model; README embeds its output.

Usage: .venv/bin/python scripts/config_reference.py [--update README.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr

from runbot.settings import Settings

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def table() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "****"
        shown = "" if default in (None, "", [], {}) else f"`{default}`"
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `RUNBOT_{name.upper()}` | {shown} | {desc} |")
    return "\n".join(rows)


def main() -> None:
    text = table()
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        path = Path(sys.argv[2])
        doc = path.read_text()
        start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        path.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
    else:
        print(text)


if __name__ == "__main__":
    main()
