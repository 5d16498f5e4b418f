"""A small SVG plotting layer for the pages' simple charts: axes with readable ticks, bars,
lines, markers, shaded spans, a raster layer for dense point clouds and a legend, written as
inline SVG text. Every string that reaches the SVG is escaped; a chart carries ``role="img"``,
an ``aria-label`` and a ``<title>``, and holds no ids, so two charts on a page never clash."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from markupsafe import Markup, escape

FONT = 11  # px; tick labels are a size smaller
TICK_FONT = 10
CHAR_WIDTH = 0.58  # of the font size: an estimate of a sans-serif character's width
TEXT, AXIS, GRID = "#1d2433", "#5b6577", "#e6e9ef"


def _fmt(value: float) -> str:
    """A coordinate to one decimal, without a trailing ``.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def text_width(text: str, size: float = TICK_FONT) -> float:
    return len(text) * size * CHAR_WIDTH


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering
    ``low`` to ``high``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks, value = [], first
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as its step needs, thousands separated, never ``-0``."""
    digits = 0 if step >= 1 else min(6, max(0, -math.floor(math.log10(step) + 1e-9)))
    if digits and round(step * 10**digits) % 10 == 5 and step < 1:  # 0.25, 0.025
        digits += 1
    text = f"{value:,.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten within ``low`` to ``high``; with 2 and 5 times them where fewer than three."""
    low, high = max(low, 1e-12), max(high, low * 10)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for multiples in ((1,), (1, 2, 5)):
        ticks = [
            m * 10.0**k
            for k in range(first, last + 1)
            for m in multiples
            if low <= m * 10.0**k <= high
        ]
        if len(ticks) >= 3:
            return ticks
    return ticks or [low, high]


@dataclass
class Scale:
    """Data to pixels on one axis: ``linear`` or ``log``."""

    low: float
    high: float
    start: float
    end: float
    kind: str = "linear"

    def _t(self, value):
        return np.log10(np.maximum(value, 1e-12)) if self.kind == "log" else value

    def __call__(self, value: float) -> float:
        low, high = self._t(self.low), self._t(self.high)
        span = (high - low) or 1.0
        return self.start + (self._t(value) - low) / span * (self.end - self.start)


@dataclass
class Chart:
    """One plot area in an SVG of ``width`` by ``height`` px; marks are added in drawing order."""

    width: int
    height: int
    x: Scale
    y: Scale
    left: float
    top: float
    right: float
    bottom: float
    parts: list[str] = field(default_factory=list)
    legend_items: list[tuple[str, str, str]] = field(default_factory=list)

    @classmethod
    def frame(
        cls,
        width: int,
        height: int,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        *,
        y_labels: Sequence[str] = (),
        x_kind: str = "linear",
        legend: bool = True,
    ) -> Chart:
        """A plot area whose left margin fits the widest y tick label."""
        left = 22 + max((text_width(label) for label in y_labels), default=20) + 6
        top, right, bottom = (22 if legend else 10), width - 12, height - 38
        return cls(
            width,
            height,
            Scale(*x_range, left, right, x_kind),
            Scale(*y_range, bottom, top),
            left,
            top,
            right,
            bottom,
        )

    # ------------------------------------------------------------------ marks

    def rect(self, x0: float, x1: float, y0: float, y1: float, colour: str, opacity=1.0) -> None:
        """A rectangle in data units."""
        px0, px1 = sorted((self.x(x0), self.x(x1)))
        py0, py1 = sorted((self.y(y0), self.y(y1)))
        self.parts.append(
            f'<rect x="{_fmt(px0)}" y="{_fmt(py0)}" width="{_fmt(px1 - px0)}" '
            f'height="{_fmt(py1 - py0)}" fill="{colour}"{_opacity(opacity)}/>'
        )

    def span(self, x0: float, x1: float, colour: str) -> None:
        """A band over the whole height of the plot area."""
        px0, px1 = sorted((self.x(x0), self.x(x1)))
        self.parts.append(
            f'<rect x="{_fmt(px0)}" y="{_fmt(self.top)}" width="{_fmt(px1 - px0)}" '
            f'height="{_fmt(self.bottom - self.top)}" fill="{colour}"/>'
        )

    def line(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        colour: str,
        *,
        width: float = 1.4,
        dash: str | None = None,
        marker: str | None = None,
    ) -> None:
        """A polyline broken at missing values (NaN), with optional circle or square markers."""
        style = f' stroke-dasharray="{dash}"' if dash else ""
        for run in _runs(xs, ys):
            coords = " ".join(f"{_fmt(self.x(x))},{_fmt(self.y(y))}" for x, y in run)
            self.parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                f'stroke-width="{width}" stroke-linejoin="round"{style}/>'
            )
            if marker:
                self.parts.extend(_marker(marker, self.x(x), self.y(y), colour) for x, y in run)

    def hline(self, y: float, colour: str, *, dash: str = "4 3", width: float = 1.0) -> None:
        py = _fmt(self.y(y))
        self.parts.append(
            f'<line x1="{_fmt(self.left)}" x2="{_fmt(self.right)}" y1="{py}" y2="{py}" '
            f'stroke="{colour}" stroke-width="{width}" stroke-dasharray="{dash}"/>'
        )

    def vline(self, x: float, colour: str, *, dash: str = "4 3", width: float = 1.0) -> None:
        px = _fmt(self.x(x))
        self.parts.append(
            f'<line x1="{px}" x2="{px}" y1="{_fmt(self.top)}" y2="{_fmt(self.bottom)}" '
            f'stroke="{colour}" stroke-width="{width}" stroke-dasharray="{dash}"/>'
        )

    def raster(self, layers: Sequence[tuple[np.ndarray, float, str, float]]) -> None:
        """Point clouds drawn into one PNG image under the axes: ``(points, radius px, colour,
        alpha)`` per layer, later layers over earlier ones."""
        width, height = round(self.right - self.left), round(self.bottom - self.top)
        image = np.ones((height, width, 3))
        for points, radius, colour, alpha in layers:
            if len(points) == 0:
                continue
            cols = self.x(points[:, 0]) - self.left
            rows = self.y(points[:, 1]) - self.top
            hits = _stamp(rows, cols, radius, (height, width))
            cover = 1.0 - (1.0 - alpha) ** hits
            image = image * (1 - cover[..., None]) + _rgb(colour) * cover[..., None]
        self.parts.append(
            f'<image x="{_fmt(self.left)}" y="{_fmt(self.top)}" width="{width}" '
            f'height="{height}" href="data:image/png;base64,{_png(image)}"/>'
        )

    def legend(self, label: str, colour: str, kind: str = "box") -> None:
        """An entry of the legend drawn above the plot area: ``box``, ``line`` or ``dash``."""
        self.legend_items.append((label, colour, kind))

    # ------------------------------------------------------------------ axes

    def y_axis(self, ticks: Sequence[float], labels: Sequence[str], title: str) -> None:
        for value, label in zip(ticks, labels, strict=True):
            py = _fmt(self.y(value))
            self.parts.append(
                f'<line x1="{_fmt(self.left)}" x2="{_fmt(self.right)}" y1="{py}" y2="{py}" '
                f'stroke="{GRID}"/>'
            )
            self._text(self.left - 5, self.y(value) + 3.5, label, anchor="end")
        middle = (self.top + self.bottom) / 2
        self.parts.append(
            f'<text x="12" y="{_fmt(middle)}" transform="rotate(-90 12 {_fmt(middle)})" '
            f'text-anchor="middle" font-size="{FONT}" fill="{TEXT}">{escape(title)}</text>'
        )

    def x_axis(self, ticks: Sequence[float], labels: Sequence[str], title: str) -> None:
        bottom = _fmt(self.bottom)
        self.parts.append(
            f'<line x1="{_fmt(self.left)}" x2="{_fmt(self.right)}" y1="{bottom}" '
            f'y2="{bottom}" stroke="{AXIS}"/>'
        )
        for value, label in zip(ticks, labels, strict=True):
            px = _fmt(self.x(value))
            self.parts.append(
                f'<line x1="{px}" x2="{px}" y1="{bottom}" y2="{_fmt(self.bottom + 4)}" '
                f'stroke="{AXIS}"/>'
            )
            half = text_width(label) / 2 + 1  # a label stays inside the picture
            at = min(max(self.x(value), half), self.width - half)
            self._text(at, self.bottom + 15, label, anchor="middle")
        self._text((self.left + self.right) / 2, self.height - 6, title, anchor="middle", size=FONT)

    def _text(self, x: float, y: float, text: str, *, anchor: str, size: int = TICK_FONT) -> None:
        self.parts.append(
            f'<text x="{_fmt(x)}" y="{_fmt(y)}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{TEXT}">{escape(text)}</text>'
        )

    def _legend_parts(self) -> list[str]:
        parts, x = [], self.right
        for label, colour, kind in reversed(self.legend_items):
            x -= text_width(label) + 4
            parts.append(
                f'<text x="{_fmt(x)}" y="13" font-size="{TICK_FONT}" fill="{TEXT}">'
                f"{escape(label)}</text>"
            )
            x -= 18
            if kind == "box":
                parts.append(f'<rect x="{_fmt(x)}" y="4" width="14" height="10" fill="{colour}"/>')
            else:
                dash = ' stroke-dasharray="4 3"' if kind == "dash" else ""
                parts.append(
                    f'<line x1="{_fmt(x)}" x2="{_fmt(x + 14)}" y1="9" y2="9" stroke="{colour}" '
                    f'stroke-width="1.6"{dash}/>'
                )
            x -= 12
        return parts

    def svg(self, alt: str) -> Markup:
        """The chart as inline SVG with ``alt`` as its text alternative."""
        label = escape(alt)
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{label}" '
            f'width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif">'
            f"<title>{label}</title>"
        )
        body = "".join(self.parts + self._legend_parts())
        return Markup(head + body + "</svg>")


def _runs(xs: Sequence[float], ys: Sequence[float]) -> list[list[tuple[float, float]]]:
    """The points split where a value is missing (NaN)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if math.isnan(x) or math.isnan(y):
            runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def plot(
    width: int,
    height: int,
    x_range: tuple[float, float],
    y_high: float,
    *,
    y_title: str,
    y_low: float = 0.0,
    x_kind: str = "linear",
    legend: bool = True,
) -> Chart:
    """A chart whose y axis runs over round ticks from ``y_low`` to at least ``y_high``, its
    grid and y labels drawn first, under the marks."""
    ticks = nice_ticks(y_low, y_high)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    labels = [tick_label(value, step) for value in ticks]
    chart = Chart.frame(
        width,
        height,
        x_range,
        (ticks[0], ticks[-1]),
        y_labels=labels,
        x_kind=x_kind,
        legend=legend,
    )
    chart.y_axis(ticks, labels, y_title)
    return chart


def numeric_x_axis(chart: Chart, title: str) -> None:
    """Round ticks over the x range: powers of ten on a log axis."""
    low, high = chart.x.low, chart.x.high
    if chart.x.kind == "log":
        ticks = log_ticks(low, high)
        labels = [tick_label(value, min(value, 1.0)) for value in ticks]
    else:
        ticks = [value for value in nice_ticks(low, high, 6) if low - 1e-9 <= value <= high + 1e-9]
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        labels = [tick_label(value, step) for value in ticks]
    chart.x_axis(ticks, labels, title)


def category_x_axis(chart: Chart, labels: Sequence[str], title: str) -> None:
    """Category ``i`` at ``x = i``; every ``step``-th label, so that labels never overlap."""
    room = (chart.right - chart.left) / max(1, len(labels))
    widest = max((text_width(label) for label in labels), default=0.0) + 8
    step = max(1, math.ceil(widest / room))
    shown = range(0, len(labels), step)
    chart.x_axis(list(shown), [labels[i] for i in shown], title)


def _opacity(value: float) -> str:
    return "" if value >= 1 else f' fill-opacity="{value:g}"'


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return (
            f'<rect x="{_fmt(x - 2.5)}" y="{_fmt(y - 2.5)}" width="5" height="5" fill="{colour}"/>'
        )
    return f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="2.8" fill="{colour}"/>'


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])


def _stamp(rows: np.ndarray, cols: np.ndarray, radius: float, shape: tuple[int, int]):
    """How many discs of ``radius`` px centred on the points cover each pixel."""
    hits = np.zeros(shape)
    reach = math.ceil(radius)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            r, c = np.round(rows).astype(int) + dy, np.round(cols).astype(int) + dx
            inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
            np.add.at(hits, (r[inside], c[inside]), 1)
    return hits


def _png(image: np.ndarray) -> str:
    """An RGB image in 0..1 as a base64 64-colour palette PNG."""
    from PIL import Image

    pixels = Image.fromarray(np.round(image * 255).astype(np.uint8), "RGB")
    small = pixels.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()
