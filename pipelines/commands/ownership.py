"""``stealwatch fingerprint`` and ``stealwatch verify``: the model ownership check.

``fingerprint`` writes a JSON fingerprint of the served model; ``verify`` tests a suspect model
against it. ``verify`` exits 0 whenever the check completes, whatever the verdict (read the
verdict from its output or verify.json), and 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from audits.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    fp = subparsers.add_parser(
        "fingerprint",
        help="fingerprint the served model for later ownership checks",
        description="Derive inputs on which copies of the model agree with it and independently "
        "trained models do not, plus the agreement of independent models trained on --train "
        "(the null); write them as a JSON file for `stealwatch verify`.",
    )
    fp.add_argument("--model", required=True, help="served model: .skops, .onnx, or a pickle")
    fp.add_argument("--out", required=True, help="fingerprint file to write (JSON)")
    fp.add_argument(
        "--train",
        required=True,
        help="ground-truth training data of the task (Parquet/CSV, features + label column): "
        "the independent models of the null are trained on it",
    )
    fp.add_argument(
        "--reference",
        help="inputs of the population (Parquet/CSV, the model's features in order; default: "
        "the --train features)",
    )
    fp.add_argument("--label-column", default="label", help="label column (default: label)")
    fp.add_argument(
        "--n",
        type=int,
        default=12_000,
        help="fingerprint inputs, split evenly over 6 query strategies (default: 12000)",
    )
    fp.add_argument(
        "--candidates",
        type=int,
        default=6000,
        help="candidate inputs per region to select from (default: 6000)",
    )
    fp.add_argument(
        "--optimised",
        type=int,
        default=300,
        help="candidates per query strategy found by gradient ascent on the conferrability of "
        "small torch ensembles (default: 300; 0: sampled candidates only)",
    )
    fp.add_argument(
        "--null-seeds",
        type=int,
        default=6,
        help="independent models per family in each of the null's 2 groups, trained on "
        "disjoint rows (default: 6; 6 families)",
    )
    fp.add_argument(
        "--train-rows",
        type=int,
        default=8000,
        help="training rows per independent model (default: 8000), a random subsample of its "
        "half of --train (selection and null models use disjoint halves), at most 3/4 of it",
    )
    fp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    fp.add_argument(
        "--trust-pickle", action="store_true", help="allow loading a pickle/joblib model"
    )
    fp.add_argument("--quiet", action="store_true", help="no progress lines")
    fp.set_defaults(handler=run_fingerprint)

    vf = subparsers.add_parser(
        "verify",
        help="test whether a suspect model is a copy of the fingerprinted model",
        description="Predict the fingerprint's inputs with the suspect and compare its agreement "
        "with independently trained models. Exit 0 when the check completes (verdict 'copy' or "
        "'not shown'), 2 on bad input.",
    )
    vf.add_argument("--fingerprint", required=True, help="file written by `stealwatch fingerprint`")
    vf.add_argument("--suspect", required=True, help="suspect model: .skops, .onnx, or a pickle")
    vf.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="verdict 'copy' when the p-value is below this (default: 0.01)",
    )
    vf.add_argument(
        "--trust-pickle", action="store_true", help="allow loading a pickle/joblib suspect"
    )
    vf.add_argument("--out", help="folder for verify.json and verify.html (optional)")
    vf.set_defaults(handler=run_verify)


def _progress(message: str) -> None:
    print(f"stealwatch: {message}", file=sys.stderr, flush=True)


def read_reference(path: str, width: int, label_column: str) -> np.ndarray:
    """Reference inputs: every column but an optional label column, all numeric."""
    from audits.privacy.data import numeric_features, read_table

    frame = read_table(path, "reference data")
    if label_column in frame.columns:
        frame = frame.drop(label_column)
    if frame.width != width:
        raise InputError(
            f"reference data {path} has {frame.width} columns, the model takes {width}"
        )
    if frame.height == 0:
        raise InputError(f"reference data {path} is empty")
    return numeric_features(frame, f"reference data {path}")


def run_fingerprint(args: argparse.Namespace) -> int:
    from audits.models import load_served_model
    from audits.ownership import REGIONS, make_fingerprint
    from audits.privacy.data import read_table, to_labelled
    from reports.ownership import write_fingerprint

    if args.n < 10:
        raise InputError(f"--n must be at least 10, got {args.n}")
    if args.train_rows < 50:
        raise InputError(f"--train-rows must be at least 50, got {args.train_rows}")
    if args.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.candidates * len(REGIONS) < 2 * args.n:
        raise InputError(
            f"--candidates x {len(REGIONS)} regions must be at least twice --n ({args.n}), "
            f"got {args.candidates}"
        )
    if not 0 <= args.optimised <= 10_000:
        raise InputError(f"--optimised must be between 0 and 10000, got {args.optimised}")
    if not 2 <= args.null_seeds <= 50:
        raise InputError(f"--null-seeds must be between 2 and 50, got {args.null_seeds}")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as fingerprint.json")
    model = load_served_model(args.model, trust_pickle=args.trust_pickle)
    train = to_labelled(
        read_table(args.train, "training data"),
        name="training data",
        label_column=args.label_column,
        classes=model.classes_,
        width=model.n_features_in,
    )
    reference = (
        read_reference(args.reference, model.n_features_in, args.label_column)
        if args.reference
        else None
    )
    fingerprint = make_fingerprint(
        model,
        train.X,
        model.classes_[train.y],
        reference,
        n=args.n,
        seed=args.seed,
        per_region=args.candidates,
        null_seeds=args.null_seeds,
        optimised=args.optimised,
        independent_rows=args.train_rows,
        progress=None if args.quiet else _progress,
        sources={
            "train": Path(args.train).name,
            "reference": Path(args.reference).name if args.reference else "(train features)",
        },
    )
    write_fingerprint(fingerprint, out)
    null = [r["agreement"] for r in fingerprint["null"]]
    print(
        f"stealwatch: fingerprint of {len(fingerprint['points'])} inputs; independent models "
        f"agree on {min(null):.1%}-{max(null):.1%} of them",
        file=sys.stderr,
    )
    print(out)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from audits.models import load_served_model
    from audits.ownership import load_fingerprint, verify
    from reports.ownership import write_verify_outputs

    fingerprint = load_fingerprint(args.fingerprint)
    suspect = load_served_model(args.suspect, trust_pickle=args.trust_pickle)
    result = verify(fingerprint, suspect, alpha=args.alpha)
    print(f"suspect: {result['suspect']['name']} ({result['suspect']['kind']})")
    print(f"agreement: {result['agreement']:.4f} on {result['points']} fingerprint inputs")
    print(
        f"agreement on the probe inputs: {result['probe_agreement']:.4f} "
        "(independent models that agree more there are expected to agree more on the fingerprint)"
    )
    how = "its architecture" if result["matched_by"] == "architecture" else "most conservative"
    print(
        f"independent models: {result['matched_family']} ({how}) mean "
        f"{result['null_summary']['matched_mean']:.4f}; all {len(result['null'])} max "
        f"{result['null_summary']['max']:.4f}"
    )
    print(
        f"score: z {result['z']:.2f} above the independent models of that family "
        "(signed per-point log-likelihood ratio of copying, expected from the probe agreement)"
    )
    print(
        f"p-value: {result['p_value']:.3g} (agreement alone, all independent models: "
        f"{result['p_value_all_null']:.3g}, empirical {result['p_value_empirical']:.3g})"
    )
    strata = ", ".join(
        f"{name} {row['agreement']:.2f} (p {row['p_value']:.2g})"
        for name, row in result["agreement_by_stratum"].items()
    )
    print(f"agreement by query strategy (not the verdict's test): {strata}")
    print(f"verdict: {result['verdict']} (alpha {result['alpha']})")
    if args.out:
        paths = write_verify_outputs(result, args.out)
        print(paths["html"])
    return 0
