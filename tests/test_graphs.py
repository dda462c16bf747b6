"""PNG line charts: exact pixel size, valid PNG, unit formatting, edge cases, and the 1 s budget."""

from __future__ import annotations

import math
import struct
import threading
import time
import zlib

import pytest

from runbot.graphs import Line, format_value, render_line_chart

END = 1_714_564_800.0  # 2024-05-01T12:00:00Z
START = END - 3600


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    chunks = png_chunks(data)
    kind, body = chunks[0]
    assert kind == b"IHDR" and len(body) == 13
    assert chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", body[:8])
    return width, height


def series(n: int, points: int, *, start: float = START, end: float = END) -> list[Line]:
    step = (end - start) / (points - 1)
    times = [start + i * step for i in range(points)]
    return [
        Line(f'{{code="{200 + i}"}}', times, [100 + 50 * math.sin(j / 20 + i) for j in range(points)])
        for i in range(n)
    ]


def test_png_exact_size_and_valid_chunks() -> None:
    png = render_line_chart(series(3, 120), title="requests", unit="req/s", start=START, end=END,
                            marker=START + 1800)  # fmt: skip
    assert png_size(png) == (1000, 500)
    assert 5_000 < len(png) < 1_000_000


@pytest.mark.parametrize(("w", "h"), [(300, 200), (640, 360), (1600, 900)])
def test_requested_sizes(w: int, h: int) -> None:
    assert png_size(render_line_chart(series(2, 60), title="t", width=w, height=h)) == (w, h)


def test_empty_no_data_and_gaps() -> None:
    assert png_size(render_line_chart([], title="nothing", start=START, end=END)) == (1000, 500)
    assert png_size(render_line_chart([Line("x", [], [])], title="empty line")) == (1000, 500)
    gappy = Line("gaps", [START, START + 60, START + 120, START + 180], [1.0, math.nan, math.inf, 2.0])
    assert png_size(render_line_chart([gappy], title="gaps", start=START, end=START + 180)) == (1000, 500)


def test_marker_outside_window_and_long_labels_and_many_series() -> None:
    lines = series(25, 50)
    lines[0].label = "x" * 500
    png = render_line_chart(lines, title="t" * 300, unit="bytes", start=START, end=END, marker=START - 7200,
                            note="top 25 of 80 series", y_min=-10, y_max=1000)  # fmt: skip
    assert png_size(png) == (1000, 500)
    png2 = render_line_chart(series(1, 10), title="after", start=START, end=END, marker=END + 60)
    assert png_size(png2) == (1000, 500)


def test_different_pictures_for_different_data() -> None:
    a = render_line_chart(series(1, 50), title="a", start=START, end=END)
    b = render_line_chart(series(2, 50), title="a", start=START, end=END)
    assert a != b


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0, "", "0"),
        (1500, "", "1.5k"),
        (2_500_000, "req/s", "2.5M req/s"),
        (12, "req/s", "12 req/s"),
        (0.005, "", "5m"),
        (1536, "bytes", "1.5 KiB"),
        (3 * 2**30, "bytes", "3 GiB"),
        (512, "bytes", "512 B"),
        (0.5, "bytes", "0.5 B"),
        (2**20, "bytes/s", "1 MiB/s"),
        (45.5, "%", "45.5%"),
        (0.123, "ratio", "12.3%"),
        (0.25, "s", "250 ms"),
        (0.000002, "s", "2 µs"),
        (90, "s", "1.5 min"),
        (7200, "s", "2 h"),
        (-2000, "", "-2k"),
        (math.nan, "", "NaN"),
        (math.inf, "req/s", "+Inf"),
        (3, "/s", "3/s"),
    ],
)
def test_format_value(value: float, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_concurrent_renders_are_safe() -> None:
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(png_size(render_line_chart(series(5, 100), title="t", start=START, end=END)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == [(1000, 500)] * 4


def test_budget_20_series_360_points_under_one_second() -> None:
    lines = series(20, 360)
    render_line_chart(lines, title="warm-up", unit="req/s", start=START, end=END)
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        png = render_line_chart(
            lines, title="budget", unit="req/s", start=START, end=END, marker=START + 2400
        )
        timings.append(time.perf_counter() - t0)
    assert png_size(png) == (1000, 500)
    assert min(timings) < 1.0, timings
