"""Time and peak memory of the detection stage (features + detectors + groups) on an archive.

    .venv/bin/python benchmarks/detect.py SIM_DIR [--no-delay]

Generate the archive first, e.g. ``stealwatch simulate --out SIM_DIR --users 5000 --days 4``
(>= 2M events, >= 5,000 users). Prints JSON: events, users, seconds per step, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import polars as pl

from audits.evaluation import evaluate, events_from_archive
from audits.features import user_features
from audits.scoring import audit_scores


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim_dir")
    parser.add_argument("--no-delay", action="store_true", help="skip the detection delay")
    args = parser.parse_args()
    sim = Path(args.sim_dir)
    out: dict = {}
    t = time.perf_counter()
    events = events_from_archive(sim / "logs")
    reference = pl.read_parquet(sim / "reference.parquet").to_numpy()
    out["load_s"] = round(time.perf_counter() - t, 1)
    out["events"], out["users"] = events.height, events["user_id"].n_unique()
    out["peak_rss_after_load_mib"] = round(_peak_mib())
    t = time.perf_counter()
    feats = user_features(events, reference)
    out["features_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    _, scores, summary = audit_scores(events, reference, features=feats, delay=not args.no_delay)
    out["detectors_groups_delay_s"] = round(time.perf_counter() - t, 1)
    out["threshold"] = summary["threshold"]
    out["flagged"] = int(scores["flagged"].sum())
    out["peak_rss_mib"] = round(_peak_mib())
    truth = sim / "truth.json"
    if truth.exists():
        out["evaluation"] = evaluate(scores, json.loads(truth.read_text()))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
