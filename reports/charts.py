"""Charts for the audit pages, as inline SVG (text drawn as paths, so no log string can reach
the markup)."""

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


def _done(fig: Figure) -> Markup:
    return svg_markup(fig)


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
    ax.set_yscale("log")
    ax.set_xlabel("suspicion score")
    ax.set_ylabel("users")
    ax.legend(frameon=False, fontsize=8)
    return _done(fig)


def activity_timeline(hours: Sequence, everyone: Sequence[int], suspects: Sequence[int]) -> Markup:
    """Queries per hour: everyone against the flagged users."""
    fig, ax = _figure()
    x = np.arange(len(hours))
    ax.plot(x, everyone, color=ALL_COLOUR, lw=1.2, label="all users")
    ax.plot(x, suspects, color=SUSPECT_COLOUR, lw=1.2, label="flagged users")
    _hour_ticks(ax, hours)
    ax.set_ylabel("queries per hour")
    ax.legend(frameon=False, fontsize=8)
    return _done(fig)


def _hour_ticks(ax, hours: Sequence) -> None:
    step = max(1, len(hours) // 8)
    ticks = list(range(0, len(hours), step))
    ax.set_xticks(ticks, [hours[i].strftime("%m-%d %H:00") for i in ticks], fontsize=7)


def detector_agreement(names: Sequence[str], matrix: np.ndarray) -> Markup:
    """Rank correlation between detectors' per-user scores."""
    fig, ax = _figure(4.6, 3.8)
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Spearman ρ")
    return _done(fig)


def bars(labels: Sequence[str], values: Sequence[float], *, xlabel: str, ylabel: str) -> Markup:
    fig, ax = _figure(6.4, 2.4)
    ax.bar(range(len(values)), values, color=ACCENT)
    step = max(1, len(labels) // 12)
    ax.set_xticks(
        range(0, len(labels), step), [labels[i] for i in range(0, len(labels), step)], fontsize=7
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _done(fig)


def projection(population: np.ndarray, subject: np.ndarray) -> Markup:
    """The subject's queries over the population's, on the population's first two principal
    components."""
    fig, ax = _figure(4.8, 4.0)
    ax.scatter(
        population[:, 0],
        population[:, 1],
        s=4,
        color=ALL_COLOUR,
        alpha=0.35,
        label="population sample",
        rasterized=False,
    )
    ax.scatter(
        subject[:, 0], subject[:, 1], s=7, color=SUSPECT_COLOUR, alpha=0.8, label="this subject"
    )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(frameon=False, fontsize=8, loc="best")
    return _done(fig)


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
    return _done(fig)


def confidence_trend(
    days: Sequence[str],
    ks_train: Sequence[float | None],
    ks_holdout: Sequence[float | None],
    low_margin_share: Sequence[float | None],
    baseline_share: Sequence[float | None],
    alerted: Sequence[bool],
) -> Markup:
    """Per day: the KS distance of the served confidences to the model's on training and on
    holdout data, the low-margin share against its baseline, alerted days marked."""

    def values(seq: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in seq], dtype=float)

    fig, ax = _figure(6.4, 2.8)
    x = np.arange(len(days))
    share = values(low_margin_share)
    ax.plot(x, values(ks_train), color=ACCENT, marker="o", ms=3, lw=1.4, label="KS vs training")
    ax.plot(
        x, values(ks_holdout), color=ALL_COLOUR, marker="s", ms=3, lw=1.4, label="KS vs holdout"
    )
    ax.plot(x, share, color=SUSPECT_COLOUR, marker="^", ms=3, lw=1.4, label="low-margin share")
    ax.plot(x, values(baseline_share), color=SUSPECT_COLOUR, ls=":", lw=1.0, label="its baseline")
    flagged = np.asarray(alerted, dtype=bool)
    top = float(np.nanmax(np.concatenate([share, values(ks_train), values(ks_holdout), [0.0]])))
    if flagged.any():
        ax.scatter(
            x[flagged],
            np.full(flagged.sum(), top * 1.08 + 0.01),
            marker="v",
            s=36,
            color="#222222",
            label="alert",
            zorder=3,
        )
    step = max(1, len(days) // 10)
    ax.set_xticks(x[::step], [days[i] for i in range(0, len(days), step)], fontsize=7)
    ax.set_ylim(0, top * 1.45 + 0.02)  # headroom for the legend
    ax.set_xlabel("UTC day")
    ax.set_ylabel("KS statistic / share")
    ax.legend(frameon=False, fontsize=7, ncol=3, loc="upper left")
    return _done(fig)


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
    return _done(fig)
