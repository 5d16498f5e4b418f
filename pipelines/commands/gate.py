"""``stealwatch gate``: the pre-release privacy gate (exit 0 pass, 1 fail, 2 usage/input error).

Library warnings raised during the audit (scikit-learn convergence warnings and the like) go to
``gate.log`` in the output folder, never to the console: a CI log shows the verdicts only.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from audits.errors import InputError
from pipelines.commands.outputs import output_folder

LOG_NAME = "gate.log"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gate",
        help="privacy audit and release gate of a model before it is served",
        description="Measure membership leakage (six attacks, RMIA and LiRA among them) and "
        "extraction risk (surrogate fidelity vs query budget) of a model; judge both risks and "
        "fail when either threshold is reached. Writes privacy_audit.json, junit.xml (one case "
        "per risk), privacy_report.html and gate.log (library warnings) into --out.",
    )
    parser.add_argument("--model", required=True, help="model file: .skops, .onnx, or a pickle")
    parser.add_argument("--train", required=True, help="training data (Parquet/CSV)")
    parser.add_argument("--holdout", required=True, help="held-out data (Parquet/CSV)")
    parser.add_argument("--label-column", default="label", help="label column (default: label)")
    parser.add_argument(
        "--max-membership-auc",
        type=float,
        default=0.6,
        help="fail when any membership attack's AUC exceeds this (default: 0.6)",
    )
    parser.add_argument(
        "--max-fidelity",
        type=parse_max_fidelity,
        default="0.9",  # audits.privacy.gate.DEFAULT_MAX_FIDELITY (not imported: CLI start-up)
        help="fail when a surrogate reaches this fidelity within --query-budget queries "
        "(default: 0.9); 'none' leaves extraction not gated",
    )
    parser.add_argument(
        "--query-budget",
        type=int,
        default=1000,
        help="queries an attacker gets for the fidelity figure (default: 1000)",
    )
    parser.add_argument(
        "--budgets",
        default="100,300,1000,3000,10000",
        help="query budgets of the extraction curves, comma-separated",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickle/joblib model (runs code from the file)",
    )
    parser.add_argument(
        "--reference-recipe",
        help="a .skops file of the scikit-learn estimator the model was trained with (fitted "
        "or not; only its parameters are used): membership reference models are trained from "
        "it. Default: clones of a scikit-learn model, a stand-in family for an ONNX model",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=run)


def parse_max_fidelity(text: str) -> float | None:
    """A fidelity bar in [0, 1], or ``none`` for no extraction gate."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 1] or 'none', got {text!r}"
        ) from None


def parse_budgets(text: str) -> tuple[int, ...]:
    """``"100,300,1000"`` as positive integers."""
    try:
        budgets = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--budgets must be comma-separated integers, got {text!r}") from None
    if not budgets or min(budgets) < 1:
        raise InputError(f"--budgets must be positive integers, got {text!r}")
    return budgets


def run(args: argparse.Namespace) -> int:
    """Audit, write the outputs, print one verdict line per risk; the exit code."""
    from audits.models import load_served_model
    from audits.privacy import Thresholds, run_privacy_audit
    from audits.privacy.references import load_reference_recipe
    from reports.privacy import write_gate_outputs

    output_folder(args.out)  # before the run: exit 1 must only mean "threshold exceeded"
    thresholds = Thresholds(args.max_membership_auc, args.max_fidelity)
    budgets = parse_budgets(args.budgets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        model = load_served_model(args.model, trust_pickle=args.trust_pickle)
        recipe = load_reference_recipe(args.reference_recipe) if args.reference_recipe else None
        result = run_privacy_audit(
            model,
            args.train,
            args.holdout,
            label_column=args.label_column,
            thresholds=thresholds,
            query_budget=args.query_budget,
            budgets=budgets,
            seed=args.seed,
            reference_recipe=recipe,
            progress=None if args.quiet else _progress,
        )
        paths = write_gate_outputs(result, args.out)
    log = write_warning_log(caught, Path(args.out))
    for check in result["checks"]:
        verdict = {True: "pass", False: "FAIL", None: "not gated"}[check["passed"]]
        print(f"stealwatch: {check['risk']}: {verdict}: {check['detail']}", file=sys.stderr)
    if caught:
        print(f"stealwatch: {len(caught)} library warning(s) in {log}", file=sys.stderr)
    print(f"stealwatch: gate {summary(result['verdicts'])}", file=sys.stderr)
    print(paths["html"])
    return 0 if result["passed"] else 1


def summary(verdicts: dict[str, str]) -> str:
    """``passed`` or ``FAILED``, then each risk's verdict: ``FAILED (membership pass, ...)``."""
    failed = any(v == "fail" for v in verdicts.values())
    each = ", ".join(f"{risk} {verdict.replace('_', ' ')}" for risk, verdict in verdicts.items())
    return f"{'FAILED' if failed else 'passed'} ({each})"


def write_warning_log(caught: list[warnings.WarningMessage], out: Path) -> Path:
    """Every warning the audit raised, one block per warning, in ``out/gate.log``."""
    path = out / LOG_NAME
    lines = [
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno).rstrip("\n")
        for w in caught
    ]
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


def _progress(message: str) -> None:
    print(f"stealwatch: {message}", file=sys.stderr, flush=True)
