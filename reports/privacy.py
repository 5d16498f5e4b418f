"""The privacy gate's HTML report: self-contained, inline SVG charts, deterministic bytes, in
the audit pages' visual system (``base.html``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from audits.forensics import DEFAULT_NOISE_SCALE
from audits.privacy.gate import write_gate_files
from reports.data import privacy_verdicts
from reports.render import SVG_RC, environment, svg_markup, write_atomically

ATTACK_LABELS = {
    "max_confidence": "max confidence",
    "loss": "loss (Yeom)",
    "modified_entropy": "modified entropy",
    "lira_offline": "LiRA offline",
    "rmia": "RMIA (offline)",
    "label_only": "label only (gap)",
}
GRANULARITY_LABELS = {
    "probabilities": "full probabilities",
    "rounded_2dp": "rounded to 2 decimals",
    "randomised": "randomised (label-preserving noise)",
    "top1_label": "top-1 label only",
}
COLOURS = ("#1b6ca8", "#d1495b", "#e59500", "#3a9d23", "#8c564b", "#6a4c93")
FAMILY_STYLES = {"logistic_regression": "-", "gradient_boosting": "--", "mlp": ":"}


def roc_chart(roc_curves: dict) -> Markup:
    """Membership ROC curves on log-log axes, so the low-FPR region is visible; the legend
    beside the axes, never over a curve."""
    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(7.0, 4.2))
        ax = fig.add_subplot()
        grid = np.geomspace(1e-4, 1, 50)
        ax.plot(grid, grid, color="#999999", lw=0.8, ls="--", label="chance")
        names = [n for n in ATTACK_LABELS if n in roc_curves]
        names += sorted(n for n in roc_curves if n not in ATTACK_LABELS)  # attacks added later
        for colour, name in zip(COLOURS, names, strict=False):
            curve = roc_curves[name]
            fpr = np.maximum(curve["fpr"], 1e-4)
            tpr = np.maximum(curve["tpr"], 1e-4)
            ax.step(
                fpr, tpr, where="post", color=colour, lw=1.4, label=ATTACK_LABELS.get(name, name)
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlim=(1e-4, 1),
            ylim=(1e-4, 1.05),
            xlabel="false-positive rate (non-members flagged)",
            ylabel="true-positive rate (members found)",
        )
        ax.grid(True, which="major", color="#e5e5e5", lw=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
        fig.tight_layout()
        return svg_markup(
            fig,
            "Membership-inference ROC curves on log-log axes for "
            + ", ".join(ATTACK_LABELS.get(n, n) for n in names),
        )


def extraction_chart(curves: list[dict], metric: str = "fidelity") -> Markup:
    """Surrogate fidelity vs query budget: one panel per query source."""
    sources = sorted({c["source"] for c in curves}, key=["natural", "uniform_noise"].index)
    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(8.8, 4.4))
        axes = fig.subplots(1, len(sources), sharey=True, sharex=True, squeeze=False)[0]
        budgets = sorted({c["budget"] for c in curves})
        for ax, source in zip(axes, sources, strict=True):
            _extraction_panel(ax, [c for c in curves if c["source"] == source], metric)
            ax.set_title(source.replace("_", " ") + " queries", fontsize=9)
            ax.set_xticks(budgets, [f"{b:,}" for b in budgets], minor=False)
            ax.minorticks_off()
        axes[0].set_ylabel(f"surrogate {metric}")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=7)
        legend_rows = -(-len(handles) // 3)  # room for the legend: 3 rows took 0.16
        fig.tight_layout(rect=(0, 0.02 + 0.047 * legend_rows, 1, 1))
        return svg_markup(
            fig,
            f"Surrogate {metric} against query budget, one panel per query source "
            f"({', '.join(s.replace('_', ' ') for s in sources)})",
        )


def _extraction_panel(ax, curves: list[dict], metric: str) -> None:
    granularities = [g for g in GRANULARITY_LABELS if any(c["granularity"] == g for c in curves)]
    families = [f for f in FAMILY_STYLES if any(c["family"] == f for c in curves)]
    for colour, granularity in zip(COLOURS, granularities, strict=False):
        for family in families:
            rows = sorted(
                (c["queries"], c[metric])
                for c in curves
                if c["granularity"] == granularity and c["family"] == family
            )
            xs, ys = zip(*rows, strict=True)
            ax.plot(
                xs,
                ys,
                color=colour,
                ls=FAMILY_STYLES[family],
                marker="o",
                ms=2.5,
                lw=1.2,
                label=f"{GRANULARITY_LABELS[granularity]}, {family.replace('_', ' ')}",
            )
    ax.set(xscale="log", xlabel="queries", ylim=(0, 1.02))
    ax.grid(True, color="#e5e5e5", lw=0.6)


def report_context(result: dict) -> dict:
    """Everything the template shows, with the charts rendered."""
    return {
        "r": result,
        "attack_labels": ATTACK_LABELS,
        "verdicts": privacy_verdicts(result),
        "granularity_labels": GRANULARITY_LABELS,
        "noise_scale": DEFAULT_NOISE_SCALE,
        "roc_svg": roc_chart(result["roc_curves"]),
        "fidelity_svg": extraction_chart(result["extraction"]["curves"], "fidelity"),
        "accuracy_svg": extraction_chart(result["extraction"]["curves"], "accuracy"),
    }


def render_privacy_report(result: dict, overview_href: str | None = None) -> str:
    """The report as one self-contained HTML page; ``overview_href``: the audit overview it
    links back to, when it is part of an audit."""
    template = environment().get_template("privacy_report.html")
    return template.render(**report_context(result), overview_href=overview_href)


def write_privacy_report(result: dict, path: str | Path, overview_href: str | None = None) -> Path:
    path = Path(path)
    write_atomically(path, render_privacy_report(result, overview_href))
    return path


def write_gate_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the gate's JSON result, JUnit XML and HTML report; returns their paths."""
    paths = write_gate_files(result, out_dir)
    write_privacy_report(result, paths["html"])
    return paths
