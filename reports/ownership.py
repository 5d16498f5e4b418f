"""The ownership check's HTML page: the suspect's agreement on the fingerprint against
independent models and reference copies. Self-contained, inline SVG, deterministic bytes."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure

from audits.errors import InputError
from reports.render import SVG_RC, environment, svg_markup, write_atomically

FAMILY_LABELS = {
    "logistic_regression": "logistic regression",
    "gradient_boosting": "gradient boosting",
    "mlp": "MLP (64)",
    "mlp_deep": "MLP (32, 32)",
    "random_forest": "random forest",
    "knn": "k nearest neighbours (15)",
}
REGION_LABELS = {
    "natural": "reference rows",
    "interpolated": "between reference rows",
    "boundary": "beside the decision boundary",
    "uniform": "uniform over feature ranges",
    "perturbed": "reference rows + noise",
    "widened": "widened population",
    "optimised": "optimised (gradient ascent on conferrability)",
}


def agreement_chart(result: dict) -> Markup:
    """One row per null family (a dot per model, the matched family highlighted), one row of
    reference copies, and the suspect's agreement as a vertical line."""
    families = sorted({r["family"] for r in result["null"]}, key=_family_order)
    rows = [
        (FAMILY_LABELS.get(f, f), [r["agreement"] for r in result["null"] if r["family"] == f], f)
        for f in families
    ]
    if result["copies"]:
        rows.append(("reference copies", [r["agreement"] for r in result["copies"]], "copies"))
    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(7.6, 0.42 * len(rows) + 1.2))
        ax = fig.add_subplot()
        for i, (_label, values, key) in enumerate(rows):
            if key == "copies":
                colour = "#e59500"
            elif key == result["matched_family"]:
                colour = "#1b6ca8"
            else:
                colour = "#9aa4b2"
            ax.scatter(values, [i] * len(values), s=26, color=colour, zorder=3)
        ax.axvline(result["agreement"], color="#c0392b", lw=1.6, zorder=4)
        ax.text(result["agreement"], len(rows) - 0.4, " suspect", color="#c0392b", fontsize=8)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.set(
            xlim=(0, 1.02),
            ylim=(-0.6, len(rows) - 0.1),
            xlabel="agreement with the served model on the fingerprint",
        )
        ax.grid(True, axis="x", color="#e5e5e5", lw=0.6)
        fig.tight_layout()
        return svg_markup(
            fig,
            f"Agreement on the fingerprint: the suspect at {result['agreement']:.1%} against "
            f"{len(result['null'])} independent models, {len(result['copies'])} reference copies",
        )


def _family_order(family: str) -> tuple[int, str]:
    order = list(FAMILY_LABELS)
    return (order.index(family) if family in order else len(order), family)


def render_ownership_report(result: dict) -> str:
    """The verify result as one self-contained HTML page."""
    template = environment().get_template("ownership.html")
    return template.render(
        r=result,
        family_labels=FAMILY_LABELS,
        region_labels=REGION_LABELS,
        chart_svg=agreement_chart(result),
        title="Ownership check",
        window=("n/a", "n/a"),
    )


def write_ownership_report(result: dict, path: str | Path) -> Path:
    path = Path(path)
    write_atomically(path, render_ownership_report(result))
    return path


def write_fingerprint(fingerprint: dict, path: str | Path) -> Path:
    """The fingerprint file (its JSON text from :mod:`audits.ownership`), written atomically."""
    from audits.ownership import fingerprint_text

    return write_atomically(Path(path), fingerprint_text(fingerprint))


def write_verify_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """``verify.json`` and the self-contained ``verify.html`` in ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    json_path = write_atomically(out / "verify.json", json.dumps(result, indent=1) + "\n")
    html_path = write_ownership_report(result, out / "verify.html")
    return {"json": json_path, "html": html_path}
