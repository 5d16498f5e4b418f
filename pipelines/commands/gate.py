"""``stealwatch gate``: the pre-release privacy gate (exit 0 pass, 1 fail, 2 usage/input error)."""

from __future__ import annotations

import argparse
import sys

from audits.errors import InputError
from pipelines.commands.outputs import output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gate",
        help="privacy audit and release gate of a model before it is served",
        description="Measure membership leakage (five attacks) and extraction risk (surrogate "
        "fidelity vs query budget) of a model; fail when a threshold is exceeded. Writes "
        "privacy_audit.json, junit.xml and privacy_report.html into --out.",
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
        type=float,
        default=None,
        help="fail when a surrogate reaches this fidelity at --query-budget (default: not gated)",
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
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=run)


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
    from audits.models import load_served_model
    from audits.privacy import Thresholds, run_privacy_audit, write_gate_outputs

    output_folder(args.out)  # before the run: exit 1 must only mean "threshold exceeded"
    thresholds = Thresholds(args.max_membership_auc, args.max_fidelity)
    budgets = parse_budgets(args.budgets)
    model = load_served_model(args.model, trust_pickle=args.trust_pickle)
    result = run_privacy_audit(
        model,
        args.train,
        args.holdout,
        label_column=args.label_column,
        thresholds=thresholds,
        query_budget=args.query_budget,
        budgets=budgets,
        seed=args.seed,
        progress=None if args.quiet else _progress,
    )
    paths = write_gate_outputs(result, args.out)
    for check in result["checks"]:
        verdict = {True: "pass", False: "FAIL", None: "info"}[check["passed"]]
        print(f"stealwatch: {verdict}: {check['detail']}", file=sys.stderr)
    print(f"stealwatch: gate {'passed' if result['passed'] else 'FAILED'}", file=sys.stderr)
    print(paths["html"])
    return 0 if result["passed"] else 1


def _progress(message: str) -> None:
    print(f"stealwatch: {message}", file=sys.stderr, flush=True)
