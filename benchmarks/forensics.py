"""Forensics cost and accuracy on a simulated archive.

.venv/bin/python benchmarks/forensics.py SIM [--suspects 30]
    time the damage estimate and the defence replay of N suspects (the archive's attackers
    first, then its busiest other users), with SIM/reference.parquet labelled by
    SIM/model.skops, and the group linking of the suspects;
.venv/bin/python benchmarks/forensics.py SIM --scores OUT/user_scores.parquet
    compare ``est_fidelity`` and ``group_id`` of an audit's output with SIM/truth.json:
    Spearman and mean absolute error against each attacker's achieved fidelity, and the
    purity of each Sybil group's ``group_id``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl


def accuracy(scores: pl.DataFrame, truth: dict) -> dict:
    """Spearman / MAE of ``est_fidelity`` vs the truth fidelity (attackers with both), and per
    Sybil group the share of its keys on its most common ``group_id`` and the benign keys
    sharing that id."""
    from scipy.stats import spearmanr

    est = dict(zip(scores["user_id"].to_list(), scores["est_fidelity"].to_list(), strict=True))
    gid = dict(zip(scores["user_id"].to_list(), scores["group_id"].to_list(), strict=True))
    pairs = [
        (est[u["user_id"]], u["fidelity"])
        for u in truth["users"]
        if u["role"] == "attacker" and u.get("fidelity") is not None and est.get(u["user_id"])
    ]
    attackers = sum(1 for u in truth["users"] if u["role"] == "attacker")
    e = np.array([p[0] for p in pairs])
    t = np.array([p[1] for p in pairs])
    role = {u["user_id"]: u for u in truth["users"]}
    groups = []
    for g in truth.get("groups", []):
        ids = Counter(gid.get(m) for m in g["members"] if gid.get(m))
        top, n = ids.most_common(1)[0] if ids else (None, 0)
        holders = [u for u, v in gid.items() if v == top and top is not None]
        groups.append(
            {
                "group": g["group_id"],
                "keys": len(g["members"]),
                "group_id": top,
                "share": round(n / len(g["members"]), 3),
                "benign_in_it": sum(
                    1 for u in holders if role.get(u, {}).get("role") != "attacker"
                ),
                "others_in_it": sum(1 for u in holders if u not in g["members"]),
            }
        )
    return {
        "attackers": attackers,
        "estimated": len(pairs),
        "spearman": round(float(spearmanr(e, t)[0]), 4) if len(pairs) > 2 else None,
        "mae": round(float(np.abs(e - t).mean()), 4) if pairs else None,
        "max_error": round(float(np.abs(e - t).max()), 4) if pairs else None,
        "groups": groups,
    }


def timing(sim: Path, n: int) -> dict:
    from threadpoolctl import threadpool_limits

    from audits import forensics as fx
    from audits.evaluation import events_from_archive
    from audits.models import load_served_model

    truth = json.loads((sim / "truth.json").read_text())
    t0 = time.perf_counter()
    events = events_from_archive(sim / "logs")
    model = load_served_model(sim / "model.skops")
    ref = pl.read_parquet(sim / "reference.parquet").to_numpy()[: fx.REFERENCE_ROWS]
    ref_y = fx.as_labels(model.predict(ref))
    load_s = time.perf_counter() - t0
    attackers = [u["user_id"] for u in truth["users"] if u["role"] == "attacker"]
    busiest = events.group_by("user_id").len().sort("len", descending=True)["user_id"].to_list()
    suspects = (attackers + [u for u in busiest if u not in set(attackers)])[:n]
    columns = fx.proba_columns(events)
    legit = events.filter(~pl.col("user_id").is_in(suspects))
    by_user = events.partition_by("user_id", as_dict=True)
    t1 = time.perf_counter()
    groups = fx.link_groups(events, suspects, scale=ref.std(axis=0))
    link_s = time.perf_counter() - t1
    damage_s = replay_s = 0.0
    queries = 0
    with threadpool_limits(1):
        for uid in suspects:
            ev = by_user[(uid,)]
            t2 = time.perf_counter()
            d = fx.damage_of_events(ev, ref, ref_y, columns=columns)
            t3 = time.perf_counter()
            fx.replay_defences(ev, legit, ref, ref_y, columns=columns, baseline=d.fidelity)
            t4 = time.perf_counter()
            damage_s += t3 - t2
            replay_s += t4 - t3
            queries += d.queries
    return {
        "suspects": len(suspects),
        "suspect_queries": queries,
        "events": events.height,
        "load_s": round(load_s, 2),
        "link_groups_s": round(link_s, 2),
        "damage_s": round(damage_s, 2),
        "replay_s": round(replay_s, 2),
        "total_s": round(link_s + damage_s + replay_s, 2),
        "linked_groups": len(set(groups.values())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path, help="a simulated archive (stealwatch simulate --out)")
    parser.add_argument("--suspects", type=int, default=30)
    parser.add_argument("--scores", type=Path, help="OUT/user_scores.parquet of an audit")
    args = parser.parse_args(argv)
    if args.scores:
        truth = json.loads((args.sim / "truth.json").read_text())
        result = accuracy(pl.read_parquet(args.scores), truth)
    else:
        result = timing(args.sim, args.suspects)
        print(
            f"forensics for {result['suspects']} suspects ({result['suspect_queries']:,} "
            f"queries): {result['total_s']:.1f} s (damage {result['damage_s']:.1f} s, replay "
            f"{result['replay_s']:.1f} s, group linking {result['link_groups_s']:.2f} s)"
        )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
