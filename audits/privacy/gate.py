"""The pre-release privacy gate: one audit, three outputs (JSON, JUnit XML, HTML report).

``run_privacy_audit`` measures membership leakage and extraction risk and judges both risks
against the thresholds (by default: membership AUC at most 0.6, and no surrogate reaching 0.9
fidelity within 1,000 queries); ``write_gate_files`` writes ``privacy_audit.json`` (with a
verdict per risk) and ``junit.xml`` (one testcase per risk, for CI systems); the caller writes
``privacy_report.html`` with ``reports.privacy.write_gate_outputs``.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from audits.errors import InputError
from audits.privacy import extraction, membership
from audits.privacy.data import LabelledSet, load_sets, read_table, to_labelled

JSON_NAME = "privacy_audit.json"
JUNIT_NAME = "junit.xml"
HTML_NAME = "privacy_report.html"
DEFAULT_QUERY_BUDGET = 1000
DEFAULT_MAX_MEMBERSHIP_AUC = 0.6
DEFAULT_MAX_FIDELITY = 0.9  # a copy agreeing on 9 in 10 answers is a working substitute
RISKS = {"membership_auc": "membership", "surrogate_fidelity": "extraction"}

Progress = Callable[[str], None] | None
DataArg = str | Path | pl.DataFrame | LabelledSet


@dataclass(frozen=True)
class Thresholds:
    """Gate limits: the highest membership AUC allowed and the highest surrogate fidelity
    allowed within the query budget (``None``: extraction not gated)."""

    max_membership_auc: float = DEFAULT_MAX_MEMBERSHIP_AUC
    max_fidelity: float | None = DEFAULT_MAX_FIDELITY

    def __post_init__(self):
        if not 0.0 <= self.max_membership_auc <= 1.0:
            raise InputError(
                f"--max-membership-auc must be in [0, 1], got {self.max_membership_auc}"
            )
        if self.max_fidelity is not None and not 0.0 <= self.max_fidelity <= 1.0:
            raise InputError(f"--max-fidelity must be in [0, 1], got {self.max_fidelity}")


def run_privacy_audit(
    model,
    train: DataArg,
    holdout: DataArg,
    *,
    label_column: str = "label",
    thresholds: Thresholds | None = None,
    query_budget: int = DEFAULT_QUERY_BUDGET,
    budgets=extraction.DEFAULT_BUDGETS,
    families=extraction.FAMILIES,
    seed: int = 0,
    reference_recipe=None,
    progress: Progress = None,
) -> dict:
    """Audit a served model against its training and holdout data; returns the JSON result.
    ``reference_recipe``: the estimator membership reference models are cloned from (for an
    ONNX model, whose file carries no recipe; default: a stand-in family)."""
    thresholds = thresholds or Thresholds()
    if query_budget < 1:
        raise InputError(f"--query-budget must be a positive number of queries, got {query_budget}")
    train_set, holdout_set = _labelled(model, train, holdout, label_column)
    for data in (train_set, holdout_set):
        _require_two_classes(data, model.classes_)
    started = time.perf_counter()
    result = {
        "model": _model_info(model),
        "model_sha256": model.sha256,
        "data": {
            "train_rows": len(train_set),
            "holdout_rows": len(holdout_set),
            "label_column": label_column,
            "features": list(train_set.columns),
        },
        "target_accuracy": _accuracy(model, holdout_set),
        "train_accuracy": _accuracy(model, train_set),
        "seed": seed,
    }
    result.update(
        _membership_section(model, train_set, holdout_set, seed, reference_recipe, progress)
    )
    result.update(
        _extraction_section(model, holdout_set, query_budget, budgets, families, seed, progress)
    )
    checks = gate_checks(result, thresholds)
    result.update(
        thresholds=asdict(thresholds),
        checks=checks,
        verdicts=risk_verdicts(checks),
        passed=all(c["passed"] is not False for c in checks),
    )
    if progress:
        progress(f"privacy audit done in {time.perf_counter() - started:.1f} s")
    return result


def _labelled(model, train: DataArg, holdout: DataArg, label_column: str):
    kwargs = {"label_column": label_column, "classes": model.classes_, "width": model.n_features_in}
    if isinstance(train, str | Path) and isinstance(holdout, str | Path):
        return load_sets(train, holdout, **kwargs)
    return _as_set(train, "training data", kwargs), _as_set(holdout, "holdout data", kwargs)


def _require_two_classes(data: LabelledSet, classes: np.ndarray) -> None:
    """Membership needs both sides to hold several classes: with one class in the training
    data, members differ from non-members by their label, not by being trained on."""
    present = np.unique(data.y)
    if len(present) < 2:
        label = classes[present[0]] if len(present) else "none"
        raise InputError(
            f"{data.name} holds a single label class ({label}): the privacy gate needs "
            "training and holdout rows of at least two classes"
        )


def _as_set(data: DataArg, name: str, kwargs: dict) -> LabelledSet:
    if isinstance(data, LabelledSet):
        return data
    frame = data if isinstance(data, pl.DataFrame) else read_table(data, name)
    return to_labelled(frame, name=name, **kwargs)


def _model_info(model) -> dict:
    return {
        "path": str(model.path),
        "kind": model.kind,
        "sha256": model.sha256,
        "n_features_in": model.n_features_in,
        "label_only": model.label_only,
        "classes": [c.item() if hasattr(c, "item") else c for c in model.classes_],
    }


def _accuracy(model, data: LabelledSet) -> float:
    lookup = {str(c): i for i, c in enumerate(model.classes_.tolist())}
    pred = np.array([lookup.get(str(v), -1) for v in model.predict(data.X).tolist()])
    return float((pred == data.y).mean())


def _membership_section(model, train, holdout, seed: int, recipe, progress: Progress) -> dict:
    metrics, info = membership.membership_audit(
        model, train, holdout, seed=seed, reference_recipe=recipe, progress=progress
    )
    roc = {name: m.pop("roc") for name, m in metrics.items()}
    top = max(metrics, key=lambda name: metrics[name]["auc"])
    return {
        "membership": metrics,
        "membership_auc": metrics[top]["auc"],
        "membership_auc_attack": top,
        "membership_by_class": info.pop("by_class"),
        "membership_rows": membership_rows(metrics),
        "membership_info": info,
        "roc_curves": roc,
    }


def membership_rows(metrics: dict) -> list[dict]:
    """One flat row per attack for tables: AUC and TPR at 10/1/0.1% FPR with intervals."""
    rows = []
    for name, m in metrics.items():
        row = {"attack": name, "auc": m["auc"], "auc_ci": m["auc_ci"]}
        for key in membership.FPR_TARGETS:
            row[key], row[f"{key}_ci"] = m[key], m[f"{key}_ci"]
        rows.append(row)
    return rows


def _extraction_section(model, holdout, budget, budgets, families, seed, progress) -> dict:
    budgets = sorted({*budgets, budget})
    curves = extraction.extraction_curves(
        model, holdout, budgets=budgets, families=families, seed=seed, progress=progress
    )
    served_as = extraction.granularities_for(model)[0]
    best = extraction.best_at(curves, budget, served_as)
    return {
        "extraction": {
            "budgets": budgets,
            "families": list(families),
            "served_as": served_as,
            "curves": curves,
            "output_minimisation": extraction.output_minimisation(
                model, holdout, curves, budget, seed
            ),
        },
        "query_budget": budget,
        "surrogate_fidelity": best["fidelity"],
        "surrogate_accuracy": best["accuracy"],
        "surrogate": {k: best[k] for k in ("family", "source", "granularity", "queries")},
    }


def gate_checks(result: dict, thresholds: Thresholds) -> list[dict]:
    """One check per risk (membership, extraction); an unset threshold gives ``passed: None``."""
    auc = result["membership_auc"]
    checks = [
        {
            "name": "membership_auc",
            "risk": "membership",
            "value": auc,
            "threshold": thresholds.max_membership_auc,
            "passed": auc <= thresholds.max_membership_auc,
            "detail": f"highest membership-inference AUC ({result['membership_auc_attack']}) "
            f"{auc:.3f} vs max {thresholds.max_membership_auc}",
        }
    ]
    fidelity = result["surrogate_fidelity"]
    limit = thresholds.max_fidelity
    checks.append(
        {
            "name": "surrogate_fidelity",
            "risk": "extraction",
            "value": fidelity,
            "threshold": limit,
            "passed": None if limit is None else fidelity < limit,
            "detail": f"best surrogate fidelity after {result['query_budget']} queries "
            f"{fidelity:.3f} ({result['surrogate']['family']}, {result['surrogate']['source']} "
            "queries)" + (" (not gated)" if limit is None else f" vs max {limit}"),
        }
    )
    return checks


def risk_verdicts(checks: list[dict]) -> dict[str, str]:
    """``{"membership": "pass"|"fail", "extraction": "pass"|"fail"|"not_gated"}``."""
    words = {True: "pass", False: "fail", None: "not_gated"}
    return {check["risk"]: words[check["passed"]] for check in checks}


def write_gate_files(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the JSON result and the JUnit XML; returns their paths and the path the HTML
    report goes to (``reports.privacy.write_gate_outputs`` writes it)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror}") from None
    paths = {"json": out / JSON_NAME, "junit": out / JUNIT_NAME, "html": out / HTML_NAME}
    paths["json"].write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    paths["junit"].write_bytes(junit_xml(result))
    return paths


def junit_xml(result: dict) -> bytes:
    """JUnit XML with one testcase per risk (skipped when its threshold is unset)."""
    checks = result["checks"]
    suite = ET.Element(
        "testsuite",
        {
            "name": "stealwatch.privacy_gate",
            "tests": str(len(checks)),
            "failures": str(sum(c["passed"] is False for c in checks)),
            "skipped": str(sum(c["passed"] is None for c in checks)),
            "errors": "0",
        },
    )
    for check in checks:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": "stealwatch.privacy_gate",
                "name": check.get("risk", check["name"]),
            },
        )
        if check["passed"] is False:
            ET.SubElement(case, "failure", {"message": check["detail"], "type": "threshold"})
        elif check["passed"] is None:
            ET.SubElement(case, "skipped", {"message": "no threshold set: " + check["detail"]})
        ET.SubElement(case, "system-out").text = check["detail"]
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
