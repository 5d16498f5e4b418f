"""Baselines on the same archive: a volume detector (query count) and PRADA (Juuti et al. 2019).

    .venv/bin/python benchmarks/baselines.py SIM_DIR [--out DIR]

Prints one JSON object with ``evaluate`` figures for ``volume``, ``prada`` and ``stealwatch``
(the detection stage), all on SIM_DIR/logs against SIM_DIR/truth.json.

* volume: score = the user's query count; flagged above pythresh IQR on log1p(count).
* PRADA: per user, exact repeats removed, the minimum L2 distance (standardised features) of each
  query to the user's earlier queries with the same predicted class (the growing set per class);
  score = 1 - Shapiro-Wilk W of those distances; flagged when W < 0.9 after more than 100
  distances (the authors' delta and warm-up). Capped at the first 3,000 distinct queries per user.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from audits.evaluation import evaluate, events_from_archive
from audits.features import feature_matrix
from audits.scoring import audit_scores

PRADA_DELTA = 0.9
PRADA_WARMUP = 100
PRADA_CAP = 3000


def volume_scores(events: pl.DataFrame) -> pl.DataFrame:
    from pythresh.thresholds.iqr import IQR

    counts = events.group_by("user_id").agg(pl.len().alias("n_events")).sort("user_id")
    s = counts["n_events"].to_numpy().astype(float)
    labels = IQR().eval(np.log1p(s))
    return counts.with_columns(pl.Series("score", s), pl.Series("flagged", labels == 1))


def prada_scores(events: pl.DataFrame) -> pl.DataFrame:
    ev = events.sort("user_id", "ts", "event_id")
    X = feature_matrix(ev["features"])
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    pred = ev["prediction"].fill_null("?").to_numpy()
    users = ev["user_id"].rle()
    ids = users.struct.field("value").to_list()
    bounds = np.concatenate([[0], np.cumsum(users.struct.field("len").to_numpy())]).astype(int)
    rows = []
    for i, uid in enumerate(ids):
        Xu, pu = X[bounds[i] : bounds[i + 1]], pred[bounds[i] : bounds[i + 1]]
        _, first = np.unique(Xu, axis=0, return_index=True)
        keep = np.sort(first)[:PRADA_CAP]
        Xu, pu = Xu[keep], pu[keep]
        dists = []
        for c in np.unique(pu):
            Xc = Xu[pu == c]
            if len(Xc) < 2:
                continue
            sq = (Xc**2).sum(axis=1)  # |a-b|^2 without an (n, n, width) array
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * Xc @ Xc.T, 0.0)
            d2[np.triu_indices(len(Xc))] = np.inf
            dists.append(np.sqrt(d2[1:].min(axis=1)))
        d = np.concatenate(dists) if dists else np.zeros(0)
        w = float(stats.shapiro(d).statistic) if len(d) > PRADA_WARMUP and np.ptp(d) > 0 else 1.0
        rows.append(
            {
                "user_id": uid,
                "score": 1.0 - w,
                "flagged": len(d) > PRADA_WARMUP and w < PRADA_DELTA,
                "n_events": int(bounds[i + 1] - bounds[i]),
            }
        )
    return pl.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim_dir")
    parser.add_argument("--out", help="also write <name>_scores.parquet here")
    args = parser.parse_args()
    sim = Path(args.sim_dir)
    truth = json.loads((sim / "truth.json").read_text())
    events = events_from_archive(sim / "logs")
    reference = pl.read_parquet(sim / "reference.parquet").to_numpy()
    report = {"archive": str(sim), "events": events.height, "users": events["user_id"].n_unique()}
    for name, fn in (
        ("volume", volume_scores),
        ("prada", prada_scores),
        ("stealwatch", lambda ev: audit_scores(ev, reference)[1]),
    ):
        t = time.perf_counter()
        scores = fn(events)
        report[name] = evaluate(scores, truth)
        report[name]["seconds"] = round(time.perf_counter() - t, 1)
        if args.out:
            scores.write_parquet(Path(args.out) / f"{name}_scores.parquet")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
