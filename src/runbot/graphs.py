"""PNG line charts for incident threads and postmortems (matplotlib, Agg, no pyplot).

We build `Figure` objects directly and draw them on an Agg canvas: no GUI backend is ever selected, no
global pyplot state is shared between concurrent runs, and nothing needs a display. matplotlib is not
documented as thread-safe, so renders are serialised with a lock; callers run `render_line_chart` in a
worker thread (asyncio.to_thread) so the event loop never waits on it. The output is sized in pixels
exactly (no bbox "tight"), which keeps Slack previews stable.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = ["Line", "format_value", "render_line_chart"]

DPI = 100
MAX_LABEL = 60
_LOCK = threading.Lock()
_SI = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")]
_IEC = [(2.0**50, "Pi"), (2.0**40, "Ti"), (2.0**30, "Gi"), (2.0**20, "Mi"), (2.0**10, "Ki"), (1.0, "")]


@dataclass
class Line:
    """One series: a legend label and samples (epoch seconds, value); NaN/inf values leave a gap."""

    label: str
    times: Sequence[float]
    values: Sequence[float]


def _g(v: float) -> str:
    text = f"{v:.3g}"
    return text if "e" in text else text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(v: float, table: list[tuple[float, str]]) -> tuple[float, str]:
    a = abs(v)
    if a == 0:
        return 0.0, ""
    for factor, prefix in table:
        if a >= factor * 0.9995:
            return v / factor, prefix
    factor, prefix = table[-1]
    return v / factor, prefix


def format_value(v: float, unit: str = "") -> str:
    """Human tick/label text: `%` (0-100), `ratio` (0-1 shown as %), bytes[/s] (IEC), s, else SI + unit."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    u = unit.strip()
    low = u.lower()
    if low in ("%", "percent"):
        return f"{_g(v)}%"
    if low in ("ratio", "percentunit", "0-1"):
        return f"{_g(v * 100)}%"
    if low in ("bytes", "b", "bytes/s", "b/s", "bps"):
        suffix = "B/s" if "/s" in low or low == "bps" else "B"
        if abs(v) < 1:
            return f"{_g(v)} {suffix}"
        n, prefix = _scaled(v, _IEC)
        return f"{_g(n)} {prefix}{suffix}"
    if low in ("s", "sec", "seconds"):
        a = abs(v)
        if a == 0:
            return "0 s"
        if a >= 3600:
            return f"{_g(v / 3600)} h"
        if a >= 60:
            return f"{_g(v / 60)} min"
        n, prefix = _scaled(v, [(1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")])
        return f"{_g(n)} {prefix}s"
    n, prefix = _scaled(v, _SI)
    text = f"{_g(n)}{prefix}"
    if u:
        return f"{text} {u}" if prefix or not u.startswith("/") else f"{text}{u}"
    return text


def _to_datetime64(times: Sequence[float]) -> np.ndarray:
    return (np.asarray(times, dtype="float64") * 1000.0).astype("int64").astype("datetime64[ms]")


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype="float64")
    arr[~np.isfinite(arr)] = np.nan  # gaps, not spikes to the edge of the chart
    return arr


def _human_gap(seconds: float) -> str:
    s = int(abs(seconds))
    parts = [f"{s // 86400}d" if s >= 86400 else "", f"{s % 86400 // 3600}h" if s >= 3600 else ""]
    parts.append(f"{s % 3600 // 60}m")
    return "".join(p for p in parts if p)


def _long_stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_line_chart(
    lines: Sequence[Line],
    *,
    title: str,
    unit: str = "",
    subtitle: str = "",
    start: float | None = None,
    end: float | None = None,
    marker: float | None = None,
    marker_label: str = "alert start",
    note: str = "",
    width: int = 1000,
    height: int = 500,
    y_min: float | None = None,
    y_max: float | None = None,
) -> bytes:
    """Render a time-series line chart to PNG bytes, exactly `width` x `height` pixels.

    `start`/`end` (epoch s) fix the x window; `marker` (epoch s) draws a dashed vertical line, or a note
    when it falls outside the window. Values >= 0 start the y axis at 0 so noise does not look like an
    outage; pass y_min to override.
    """
    with _LOCK:
        return _render(lines, title, unit, subtitle, start, end, marker, marker_label, note, width, height,
                       y_min, y_max)  # fmt: skip


def _render(
    lines: Sequence[Line],
    title: str,
    unit: str,
    subtitle: str,
    start: float | None,
    end: float | None,
    marker: float | None,
    marker_label: str,
    note: str,
    width: int,
    height: int,
    y_min: float | None,
    y_max: float | None,
) -> bytes:
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _palette(len(lines))
    finite_min = math.inf
    plotted = 0
    for i, line in enumerate(lines):
        if not len(line.times):
            continue
        ys = _clean(line.values)
        if np.isfinite(ys).any():
            finite_min = min(finite_min, float(np.nanmin(ys)))
        label = line.label if len(line.label) <= MAX_LABEL else line.label[: MAX_LABEL - 1] + "…"
        ax.plot(_to_datetime64(line.times), ys, color=colors[i], linewidth=1.3, label=label)
        plotted += 1

    if start is not None and end is not None and end > start:
        ax.set_xlim(_to_datetime64([start])[0], _to_datetime64([end])[0])
    notes = [note] if note else []
    if marker is not None:
        inside = (start is None or marker >= start) and (end is None or marker <= end)
        stamp = datetime.fromtimestamp(marker, UTC).strftime("%H:%M:%SZ")
        if inside:
            ax.axvline(_to_datetime64([marker])[0], color="crimson", linestyle="--", linewidth=1.6,
                       label=f"{marker_label} {stamp}", zorder=5)  # fmt: skip
        elif start is not None and marker < start:
            notes.append(
                f"{marker_label} {_long_stamp(marker)}, {_human_gap(start - marker)} before this window"
            )
        elif end is not None:
            notes.append(
                f"{marker_label} {_long_stamp(marker)}, {_human_gap(marker - end)} after this window"
            )
    if plotted == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=16,
                color="0.5")  # fmt: skip

    locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC, show_offset=True))
    ax.set_xlabel("time (UTC)", fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
    if unit:
        ax.set_ylabel(unit, fontsize=9)
    bottom = y_min if y_min is not None else (0.0 if math.isfinite(finite_min) and finite_min >= 0 else None)
    if bottom is not None or y_max is not None:
        ax.set_ylim(bottom=bottom, top=y_max)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    short = title if len(title) <= 110 else title[:109] + "…"
    fig.suptitle(short, x=0.01, ha="left", fontsize=11, fontweight="bold")
    if subtitle:
        ax.set_title(subtitle, loc="right", fontsize=8, color="0.35")
    if notes:  # above the plot, never over the data
        ax.set_title(" · ".join(notes), loc="left", fontsize=8, color="crimson")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        longest = max(len(lbl) for lbl in labels)
        entry_px = 50 + longest * 6.0  # handle, spacing and text at 7.5pt; generous so columns never clip
        ncol = max(1, min(len(handles), int(width * 0.96 // entry_px), 6))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=7.5, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": "runbot"})
    return buf.getvalue()


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    size = 10 if n <= 10 else 20
    return [cmap(i % size) for i in range(max(n, 1))]
