"""``stealwatch simulate``: write a simulated archive, its served model and the ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="generate a simulated archive of prediction-API logs with known attackers",
        description="Train a served model, simulate its users (benign personas, hard negatives "
        "and extraction attackers) and write logs/dt=…/part-….jsonl.gz, model.skops, "
        "train/holdout/reference.parquet and truth.json into --out. The same seed gives the "
        "same bytes.",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (new, empty, or a previous simulation's, which is replaced)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--days", type=int, default=3, help="days of traffic (default: 3)")
    parser.add_argument("--users", type=int, default=300, help="API users (default: 300)")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="inject malformed, non-finite, wrong-width, incomplete and "
        "duplicate records and one cut gzip file",
    )
    parser.add_argument(
        "--start", default=None, help="first day, YYYY-MM-DD (default: a fixed date, 2026-11-01)"
    )
    parser.add_argument(
        "--formats",
        default="",
        help="also write the same traffic as serving stacks log it, comma-separated: "
        "sagemaker (Data Capture in OUT/sagemaker, gateway access logs in OUT/gateway), "
        "kserve (CloudEvents in OUT/kserve)",
    )
    parser.add_argument(
        "--domain",
        default="default",
        help="the served task: default (the original 12-column simulator), or one of the "
        "extra domains wine, sensor, credit, cancer, digits, text (docs/simulation.md)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=run)


EXPORTS = ("sagemaker", "kserve")


def _formats(text: str) -> list[str]:
    from audits.errors import InputError

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(EXPORTS))
    if unknown:
        raise InputError(f"--formats: unknown {', '.join(unknown)} (choose from sagemaker, kserve)")
    return names


def run(args: argparse.Namespace) -> int:
    from audits import exporters
    from audits.simulation import simulate
    from audits.simulation.simulator import OUTPUTS

    formats = _formats(args.formats)
    began = time.monotonic()

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    options = {
        "seed": args.seed,
        "days": args.days,
        "users": args.users,
        "faults": args.faults,
        "start": args.start,
        "progress": say,
    }
    domain = getattr(args, "domain", "default")
    if domain == "default":
        truth = simulate(args.out, **options)
    else:
        from audits.simulation.domains import simulate_domain

        truth = simulate_domain(args.out, domain, **options)
    out = Path(args.out)
    for name in formats:
        say(f"writing the traffic as {name} logs")
        export = exporters.export_sagemaker if name == "sagemaker" else exporters.export_kserve
        export(out / "logs", out, seed=args.seed)
    attackers = sum(u["role"] == "attacker" for u in truth["users"])
    events = sum(u["n_events"] for u in truth["users"])
    say(f"{events:,} events from {len(truth['users'])} users ({attackers} attackers)")
    for name in OUTPUTS:
        if (out / name).exists():
            print(out / name)
    return 0
