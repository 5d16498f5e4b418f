"""Charts for the audit pages, as inline SVG: text kept as text, dense point clouds rasterised,
each with a text alternative. The simple charts (bars, lines, histograms, the projection) are
written directly by :mod:`reports.svg`; the overview's agreement map and its two-panel
confidence trend are drawn by matplotlib. Only numbers and fixed labels are drawn: no log
string reaches a chart, and every label is escaped."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from reports import svg
from reports.render import SVG_RC, svg_markup

ALL_COLOUR, SUSPECT_COLOUR, ACCENT = "#8a94a6", "#d1495b", "#1b6ca8"


def _figure(width: float = 6.4, height: float = 2.6) -> tuple[Figure, object]:
    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.add_subplot()
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _done(fig: Figure, alt: str) -> Markup:
    return svg_markup(fig, alt)


def score_distribution(
    scores: Sequence[float], flagged: Sequence[bool], threshold: float | None
) -> Markup:
    """Histogram of per-user suspicion, flagged users in red, the threshold as a line."""
    scores, flagged = np.asarray(scores, float), np.asarray(flagged, bool)
    edges = np.histogram_bin_edges(scores, bins=40) if len(scores) else np.linspace(0, 1, 11)
    counts = [np.histogram(scores[mask], bins=edges)[0] for mask in (~flagged, flagged)]
    chart = svg.plot(
        640, 260, (edges[0], edges[-1]), max(1, max(c.max() for c in counts)), y_title="users"
    )
    _histogram_bars(chart, edges, counts[0], ALL_COLOUR)
    chart.legend("not flagged", ALL_COLOUR)
    if flagged.any():
        _histogram_bars(chart, edges, counts[1], SUSPECT_COLOUR)
        chart.legend("flagged", SUSPECT_COLOUR)
    if threshold is not None:
        chart.vline(threshold, "#222222")
        chart.legend("threshold", "#222222", "dash")
    svg.numeric_x_axis(chart, "suspicion score")
    return chart.svg(
        f"Histogram of {len(scores)} users' suspicion scores; {int(flagged.sum())} flagged"
        + ("" if threshold is None else f" at or above the threshold {threshold:.3f}"),
    )


def _histogram_bars(chart, edges, counts, colour: str, opacity: float = 1.0) -> None:
    for left, right, count in zip(edges[:-1], edges[1:], counts, strict=True):
        if count > 0:
            chart.rect(left, right, 0, count, colour, opacity)


def activity_timeline(hours: Sequence, everyone: Sequence[int], suspects: Sequence[int]) -> Markup:
    """Queries per hour: everyone against the flagged users."""
    x = np.arange(len(hours), dtype=float)
    chart = svg.plot(
        640,
        260,
        (0, max(1, len(hours) - 1)),
        max(1, max(everyone, default=0)),
        y_title="queries per hour",
    )
    chart.line(x, np.asarray(everyone, float), ALL_COLOUR, width=1.2)
    chart.line(x, np.asarray(suspects, float), SUSPECT_COLOUR, width=1.2)
    chart.legend("all users", ALL_COLOUR, "line")
    chart.legend("flagged users", SUSPECT_COLOUR, "line")
    svg.category_x_axis(chart, [hour.strftime("%m-%d %H:00") for hour in hours], "UTC hour")
    return chart.svg(
        f"Queries per hour over {len(hours)} hours: all users peak at {max(everyone, default=0)}, "
        f"flagged users at {max(suspects, default=0)}",
    )


def detector_agreement(names: Sequence[str], matrix: np.ndarray) -> Markup:
    """Rank correlation between detectors' per-user scores: a light diverging map whose numbers
    stay readable (dark text on every cell); a detector whose score does not vary has no rank
    correlation and shows "n/a"."""
    from matplotlib.colors import LinearSegmentedColormap

    light = LinearSegmentedColormap.from_list(
        "agree", ["#9ec5e8", "#ffffff", "#f4a6a6"]
    ).with_extremes(bad="#e8ecf2")
    fig, ax = _figure(4.6, 3.8)
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=-1, vmax=1, cmap=light)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            value = matrix[i, j]
            text = "n/a" if np.isnan(value) else f"{value:.2f}".replace("-0.00", "0.00")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="#1d2433")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Spearman ρ")
    return _done(fig, f"Rank correlation between the scores of {len(names)} detectors")


def bars(labels: Sequence[str], values: Sequence[float], *, xlabel: str, ylabel: str) -> Markup:
    chart = svg.plot(
        640,
        240,
        (-0.5, len(values) - 0.5),
        max(1, max(values, default=0)),
        y_title=ylabel,
        legend=False,
    )
    for i, value in enumerate(values):
        chart.rect(i - 0.4, i + 0.4, 0, value, ACCENT)
    svg.category_x_axis(chart, [str(label) for label in labels], xlabel)
    peak = int(np.argmax(values)) if len(values) else 0
    summary = f", most ({values[peak]:,}) at {labels[peak]}" if len(values) else ""
    return chart.svg(f"Bar chart of {ylabel} by {xlabel}{summary}")


def projection(population: np.ndarray, subject: np.ndarray) -> Markup:
    """The subject's queries over the population's, on the population's first two principal
    components. The points are one raster image under vector axes and text: thousands of
    points as thousands of SVG elements would weigh most of a page."""
    both = np.vstack([population, subject]) if len(subject) else population
    (x_low, y_low), (x_high, y_high) = both.min(axis=0), both.max(axis=0)
    pad_x, pad_y = 0.04 * ((x_high - x_low) or 1), 0.04 * ((y_high - y_low) or 1)
    chart = svg.plot(
        480,
        400,
        (x_low - pad_x, x_high + pad_x),
        y_high + pad_y,
        y_low=y_low - pad_y,
        y_title="PC 2",
    )
    chart.raster([(population, 1.6, ALL_COLOUR, 0.35), (subject, 2.2, SUSPECT_COLOUR, 0.8)])
    chart.legend("population sample", ALL_COLOUR)
    chart.legend("this subject", SUSPECT_COLOUR)
    svg.numeric_x_axis(chart, "PC 1")
    return chart.svg(
        f"Scatter of {len(subject)} of the subject's queries over {len(population)} sampled "
        "queries of everyone, on the population's first two principal components",
    )


def histogram(
    values: Sequence[float],
    *,
    xlabel: str,
    bins: int = 30,
    reference: Sequence[float] | None = None,
) -> Markup:
    edges = np.linspace(0, 1, bins + 1)
    series = [(values, SUSPECT_COLOUR, 0.7, "this subject")]
    if reference is not None and len(reference):
        series.insert(0, (reference, ALL_COLOUR, 0.6, "all users"))
    densities = [np.histogram(v, bins=edges, density=True)[0] for v, *_ in series]
    peak = max((float(np.nanmax(h)) for h in densities if len(h)), default=1.0)
    chart = svg.plot(480, 260, (0, 1), peak if peak == peak and peak > 0 else 1, y_title="density")
    for density, (_, colour, opacity, label) in zip(densities, series, strict=True):
        _histogram_bars(chart, edges, np.nan_to_num(density), colour, opacity)
        chart.legend(label, colour)
    svg.numeric_x_axis(chart, xlabel)
    median = float(np.median(values)) if len(values) else float("nan")
    return chart.svg(
        f"Histogram of {xlabel} for {len(values)} answers (median {median:.2f}) against all users",
    )


def confidence_trend(
    days: Sequence[str],
    ks_train: Sequence[float | None],
    ks_holdout: Sequence[float | None],
    low_margin_share: Sequence[float | None],
    baseline_share: Sequence[float | None],
    alerted: Sequence[bool],
) -> Markup:
    """Per day, in two panels over the same days (one measure per axis): the KS distance of the
    served confidences to the model's on training and on holdout data; the low-margin share
    against its baseline. Alerted days are shaded in both."""

    def values(seq: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in seq], dtype=float)

    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ks_ax, share_ax = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(days))
    ks_ax.plot(x, values(ks_train), color=ACCENT, marker="o", ms=3, lw=1.4, label="vs training")
    ks_ax.plot(
        x, values(ks_holdout), color=ALL_COLOUR, marker="s", ms=3, lw=1.4, label="vs holdout"
    )
    share_ax.plot(
        x, values(low_margin_share), color=SUSPECT_COLOUR, marker="^", ms=3, lw=1.4, label="share"
    )
    share_ax.plot(x, values(baseline_share), color="#5b6577", ls=":", lw=1.0, label="baseline")
    flagged = np.flatnonzero(np.asarray(alerted, dtype=bool))
    for ax in (ks_ax, share_ax):
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for day in flagged:
            ax.axvspan(day - 0.4, day + 0.4, color="#fde2e0", zorder=0)
        ax.set_ylim(bottom=0)
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ks_ax.set_ylabel("KS statistic")
    share_ax.set_ylabel("low-margin share")
    step = max(1, len(days) // 10)
    share_ax.set_xticks(x[::step], [days[i] for i in range(0, len(days), step)], fontsize=7)
    share_ax.set_xlabel("UTC day" + (" (alerted days shaded)" if len(flagged) else ""))
    return _done(
        fig,
        f"Daily confidence statistics over {len(days)} days; {len(flagged)} alerted",
    )


def fidelity_curve(queries: Sequence[int], fidelity: Sequence[float]) -> Markup:
    """How faithful a copy trained on the subject's first n queries (in time order) would be."""
    chart = svg.plot(
        480,
        260,
        (min(queries) / 1.15, max(queries) * 1.15),
        1.0,
        y_title="surrogate fidelity",
        x_kind="log",
    )
    chart.hline(0.9, "#222222", width=0.8)
    chart.line(queries, fidelity, SUSPECT_COLOUR, marker="circle")
    chart.legend("fidelity", SUSPECT_COLOUR, "line")
    chart.legend("90% fidelity", "#222222", "dash")
    svg.numeric_x_axis(chart, "queries received (time order)")
    return chart.svg(
        f"Surrogate fidelity against queries received: {fidelity[-1]:.1%} after "
        f"{queries[-1]:,} queries",
    )
