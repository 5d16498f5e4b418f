"""Charts for the audit pages, as inline SVG: text kept as text, dense point clouds rasterised,
each with a text alternative. Only numbers and fixed labels are drawn: no log string reaches a
chart."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

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
    fig, ax = _figure()
    bins = np.histogram_bin_edges(scores, bins=40) if len(scores) else 10
    ax.hist(scores[~flagged], bins=bins, color=ALL_COLOUR, label="not flagged")
    if flagged.any():
        ax.hist(scores[flagged], bins=bins, color=SUSPECT_COLOUR, label="flagged")
    if threshold is not None:
        ax.axvline(threshold, color="#222222", ls="--", lw=1, label="threshold")
    ax.set_xlabel("suspicion score")
    ax.set_ylabel("users")
    ax.legend(frameon=False, fontsize=8)
    return _done(
        fig,
        f"Histogram of {len(scores)} users' suspicion scores; {int(flagged.sum())} flagged"
        + ("" if threshold is None else f" at or above the threshold {threshold:.3f}"),
    )


def activity_timeline(hours: Sequence, everyone: Sequence[int], suspects: Sequence[int]) -> Markup:
    """Queries per hour: everyone against the flagged users."""
    fig, ax = _figure()
    x = np.arange(len(hours))
    ax.plot(x, everyone, color=ALL_COLOUR, lw=1.2, label="all users")
    ax.plot(x, suspects, color=SUSPECT_COLOUR, lw=1.2, label="flagged users")
    _hour_ticks(ax, hours)
    ax.set_ylabel("queries per hour")
    ax.legend(frameon=False, fontsize=8)
    return _done(
        fig,
        f"Queries per hour over {len(hours)} hours: all users peak at {max(everyone, default=0)}, "
        f"flagged users at {max(suspects, default=0)}",
    )


def _hour_ticks(ax, hours: Sequence) -> None:
    step = max(1, len(hours) // 8)
    ticks = list(range(0, len(hours), step))
    ax.set_xticks(ticks, [hours[i].strftime("%m-%d %H:00") for i in ticks], fontsize=7)


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
    fig, ax = _figure(6.4, 2.4)
    ax.bar(range(len(values)), values, color=ACCENT)
    step = max(1, len(labels) // 12)
    ax.set_xticks(
        range(0, len(labels), step), [labels[i] for i in range(0, len(labels), step)], fontsize=7
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    peak = int(np.argmax(values)) if len(values) else 0
    summary = f", most ({values[peak]:,}) at {labels[peak]}" if len(values) else ""
    return _done(fig, f"Bar chart of {ylabel} by {xlabel}{summary}")


def projection(population: np.ndarray, subject: np.ndarray) -> Markup:
    """The subject's queries over the population's, on the population's first two principal
    components. The points are one raster layer under vector axes and text: thousands of
    points as thousands of SVG paths weighed most of a page."""
    fig, ax = _figure(4.8, 4.0)
    ax.set_rasterization_zorder(3)  # everything below is drawn into one image
    layers = (
        (population, 4, ALL_COLOUR, 0.35, "population sample"),
        (subject, 7, SUSPECT_COLOUR, 0.8, "this subject"),
    )
    for zorder, (points, size, colour, alpha, label) in enumerate(layers, 1):
        ax.scatter(
            points[:, 0],
            points[:, 1],
            s=size,
            color=colour,
            alpha=alpha,
            label=label,
            zorder=zorder,
            linewidths=0,
        )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(frameon=False, fontsize=8, loc="best")
    return _done(
        fig,
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
    fig, ax = _figure(4.8, 2.6)
    edges = np.linspace(0, 1, bins + 1)
    if reference is not None and len(reference):
        ax.hist(reference, bins=edges, color=ALL_COLOUR, density=True, alpha=0.6, label="all users")
    ax.hist(values, bins=edges, color=SUSPECT_COLOUR, density=True, alpha=0.7, label="this subject")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    median = float(np.median(values)) if len(values) else float("nan")
    return _done(
        fig,
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
    fig, ax = _figure(4.8, 2.6)
    ax.plot(queries, fidelity, color=SUSPECT_COLOUR, marker="o", ms=3, lw=1.4)
    ax.axhline(0.9, color="#222222", ls="--", lw=0.8, label="90% fidelity")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("queries received (time order)")
    ax.set_ylabel("surrogate fidelity")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return _done(
        fig,
        f"Surrogate fidelity against queries received: {fidelity[-1]:.1%} after "
        f"{queries[-1]:,} queries",
    )
