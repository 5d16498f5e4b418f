"""``stealwatch evaluate``: score ``user_scores.parquet`` against a simulated archive's truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audits.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare user scores with ground truth (simulated archives)",
        description="Print ROC AUC, TPR at 1%% FPR and a table per attack family (users, "
        "flagged, recall, AUC against all benign users) and per benign kind (flagged share); "
        "--json prints every figure (precision@k, flagged TPR/FPR, detection delay) as JSON.",
    )
    parser.add_argument("--scores", required=True, help="user_scores.parquet from an audit")
    parser.add_argument("--truth", required=True, help="truth.json of a simulated archive")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    parser.set_defaults(handler=run)


def _load(args: argparse.Namespace):
    import polars as pl

    scores_path, truth_path = Path(args.scores), Path(args.truth)
    for path, what in ((scores_path, "scores"), (truth_path, "truth")):
        if not path.is_file():
            raise InputError(f"{what} file not found: {path}")
    try:
        scores = pl.read_parquet(scores_path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"cannot read scores {scores_path}: {exc}") from None
    try:
        truth = json.loads(truth_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read truth {truth_path}: {exc}") from None
    if not isinstance(truth, dict) or not isinstance(truth.get("users"), list):
        raise InputError(f"truth {truth_path} has no 'users' list")
    return scores, truth


def run(args: argparse.Namespace) -> int:
    from audits.evaluation import evaluate, family_table

    scores, truth = _load(args)
    try:
        result = evaluate(scores, truth)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot evaluate {args.scores} against {args.truth}: {exc}") from None
    print(json.dumps(result, indent=2) if getattr(args, "json", False) else family_table(result))
    return 0
