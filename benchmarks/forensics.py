"""Forensics cost and accuracy on a simulated archive.

.venv/bin/python benchmarks/forensics.py SIM [--suspects 30] [--budget N] [--store DB]
    time the damage estimate and the defence replay of N suspects (the archive's attackers
    first, then its busiest other users), with SIM/reference.parquet labelled by
    SIM/model.skops, the legitimate users' defence costs (once) and the group linking of the
    suspects; events from SIM/logs in memory, or read through an audit's store ``--store``;
.venv/bin/python benchmarks/forensics.py SIM --store OUT/stealwatch.duckdb --compare-budget 6
    the N heaviest subjects of the audit's ``damage`` table (flagged users and groups) estimated
    with the training budget (``--budget``, default ``TRAIN_BUDGET``) and without one: fidelity,
    queries to 90%, seconds of the damage estimate and of the defence replay for each, and the
    achieved fidelity from SIM/truth.json where it has one;
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


def open_events(sim: Path, store: Path | None):
    """The archive's events as a source: the audit store's whole span (read-only), or
    SIM/logs in memory. Returns ``(source, close)``."""
    import duckdb

    from audits.evaluation import events_from_archive
    from audits.event_source import DuckDBSource, FrameSource

    if store is None:
        return FrameSource(events_from_archive(sim / "logs")), lambda: None
    con = duckdb.connect(str(store), read_only=True)
    window = con.sql("SELECT min(day), max(day) FROM user_day").fetchall()[0]
    return DuckDBSource(con, window), con.close


def reference(sim: Path):
    from audits import forensics as fx
    from audits.models import load_served_model

    model = load_served_model(sim / "model.skops")
    ref = pl.read_parquet(sim / "reference.parquet").to_numpy()[: fx.REFERENCE_ROWS]
    return ref, fx.as_labels(model.predict(ref))


def timing(sim: Path, n: int, budget: int, store: Path | None = None, workers: int = 1) -> dict:
    """The window's forensics (:func:`audits.forensics.run_forensics`, as the asset runs it)
    with ``n`` suspects flagged, each an incident (so each is replayed), on ``workers``
    processes: the seconds of each phase."""
    from audits import forensics as fx

    truth = json.loads((sim / "truth.json").read_text())
    t0 = time.perf_counter()
    source, close = open_events(sim, store)
    ref, ref_y = reference(sim)
    load_s = time.perf_counter() - t0
    counts = source.user_counts()
    attackers = [u["user_id"] for u in truth["users"] if u["role"] == "attacker"]
    busiest = sorted(counts, key=lambda u: (-counts[u], u))
    suspects = (attackers + [u for u in busiest if u not in set(attackers)])[:n]
    scores = pl.DataFrame({"user_id": suspects, "group_id": [None] * len(suspects)})
    incidents = pl.DataFrame(
        {
            "incident_id": [f"inc-{u}" for u in suspects],
            "kind": ["user"] * len(suspects),
            "subject": suspects,
            "members": [[u] for u in suspects],
        }
    )
    settings = fx.ForensicsSettings(train_budget=budget, workers=workers)
    result = fx.run_forensics(
        source, scores, suspects, incidents, settings, (ref, ref_y, "reference")
    )
    close()
    rows = [r for r in result.rows if r["kind"] == "user"]
    return {
        "suspects": len(suspects),
        "suspect_queries": sum(r["queries"] for r in rows),
        "trained_on": sum(r["trained_on"] for r in rows),
        "budget": budget,
        "workers": workers,
        "events": sum(counts.values()),
        "load_s": round(load_s, 2),
        **{f"{phase}_s": round(s, 2) for phase, s in result.seconds.items()},
        "total_s": round(sum(result.seconds.values()), 2),
        "linked_groups": len(set(result.groups.values())),
    }


def achieved(truth: dict, kind: str, subject: str, members: list[str]) -> float | None:
    """The simulator's achieved fidelity of a user, or of a Sybil group with these members."""
    if kind == "user":
        return next((u.get("fidelity") for u in truth["users"] if u["user_id"] == subject), None)
    wanted = set(members)
    return next(
        (g.get("fidelity") for g in truth.get("groups", []) if set(g["members"]) == wanted), None
    )


def budget_effect(sim: Path, store: Path, n: int, budget: int) -> dict:
    """Damage and replay of the ``n`` heaviest subjects of the audit, with ``budget`` and
    without one."""
    import duckdb
    from threadpoolctl import threadpool_limits

    from audits import forensics as fx

    truth_path = sim / "truth.json"
    truth = json.loads(truth_path.read_text()) if truth_path.exists() else {"users": []}
    with duckdb.connect(str(store), read_only=True) as con:
        heaviest = con.sql(
            "SELECT DISTINCT kind, subject, members, queries FROM damage "
            "ORDER BY queries DESC, subject LIMIT ?",
            params=[n],
        ).pl()
    source, close = open_events(sim, store)
    ref, ref_y = reference(sim)
    columns = fx.proba_columns(source)
    # no legitimate users: only the subject's side of the replay is timed
    nobody = _no_legit_users(fx, source, ref)
    rows = []
    with threadpool_limits(1):
        for kind, subject, members, _ in heaviest.iter_rows():
            t = fx.traffic(source.fetch(members), ref.shape[1])
            row = {"subject": subject, "kind": kind, "queries": len(t.y)}
            row["achieved"] = achieved(truth, kind, subject, members)
            for label, b in (("budget", budget), ("all", 0)):
                t0 = time.perf_counter()
                d = fx.damage_of_traffic(t, ref, ref_y, columns=columns, budget=b)
                t1 = time.perf_counter()
                replay = fx.replay_defences(
                    t, nobody, ref, ref_y, columns=columns, baseline=d.fidelity, budget=b
                )
                t2 = time.perf_counter()
                row[label] = {
                    "trained_on": d.trained_on,
                    "fidelity": d.fidelity,
                    "fidelity_probabilities": d.fidelity_probabilities,
                    "queries_to_90": d.queries_to_90,
                    "per_day_fidelity": replay["rate_limit"].get("per_day", {}).get("fidelity"),
                    "damage_s": round(t1 - t0, 2),
                    "replay_s": round(t2 - t1, 2),
                }
            rows.append(row)
            print(_budget_line(row), flush=True)
    close()
    return {"budget": budget, "subjects": rows}


def against_truth(sim: Path) -> dict:
    """Every attacker and Sybil group of SIM/truth.json estimated from SIM/logs (damage, and a
    defence replay against no legitimate users, in this process on one thread): Spearman, MAE
    and largest error of the estimated fidelity against the achieved one, with the wall seconds
    of the damage estimates and the replays and the CPU seconds of both (steadier on a shared
    machine), and each subject's estimate (fidelity, curve, queries to 90%), to compare two
    versions subject by subject."""
    from scipy.stats import spearmanr
    from threadpoolctl import threadpool_limits

    from audits import forensics as fx

    truth = json.loads((sim / "truth.json").read_text())
    source, close = open_events(sim, None)
    ref, ref_y = reference(sim)
    columns = fx.proba_columns(source)
    nobody = _no_legit_users(fx, source, ref)
    subjects = [
        ([u["user_id"]], u["fidelity"])
        for u in truth["users"]
        if u["role"] == "attacker" and u.get("fidelity") is not None
    ]
    subjects += [(g["members"], g["fidelity"]) for g in truth.get("groups", [])]
    est, achieved, damage_s, replay_s, estimates = [], [], 0.0, 0.0, []
    cpu = time.process_time()
    with threadpool_limits(1):
        for members, fidelity in subjects:
            t = fx.traffic(source.fetch(members), ref.shape[1])
            t0 = time.perf_counter()
            d = fx.damage_of_traffic(t, ref, ref_y, columns=columns)
            t1 = time.perf_counter()
            _replay(fx, t, nobody, ref, ref_y, columns, d)
            damage_s += t1 - t0
            replay_s += time.perf_counter() - t1
            est.append(d.fidelity)
            achieved.append(fidelity)
            estimates.append(
                {
                    "members": members,
                    "fidelity": d.fidelity,
                    "curve": d.curve,
                    "q90": d.queries_to_90,
                }
            )
    cpu = time.process_time() - cpu
    close()
    e, a = np.array(est), np.array(achieved)
    return {
        "sim": str(sim),
        "subjects": len(subjects),
        "spearman": round(float(spearmanr(e, a)[0]), 4),
        "mae": round(float(np.abs(e - a).mean()), 4),
        "max_error": round(float(np.abs(e - a).max()), 4),
        "damage_s": round(damage_s, 2),
        "replay_s": round(replay_s, 2),
        "cpu_s": round(cpu, 2),
        "estimates": estimates,
    }


def _no_legit_users(fx, source, ref):
    """The default defences' costs over no legitimate users, with the reference's grid scale
    (also with the code from before the defences were one settings object, to compare)."""
    if not hasattr(fx, "ForensicsSettings"):
        return fx.legit_costs(source.fetch([]), scale=ref.std(axis=0))
    return fx.legit_costs(source.fetch([]), fx.DefenceSettings.of(scale=ref.std(axis=0)))


def _replay(fx, t, legit, ref, ref_y, columns, d):
    kwargs = {"columns": columns, "baseline": d.fidelity}
    kwargs["soft_baseline"] = d.fidelity_probabilities
    if hasattr(d, "surrogate_probabilities"):  # each defence refits the better family only
        kwargs["surrogates"] = (d.surrogate, d.surrogate_probabilities)
    return fx.replay_defences(t, legit, ref, ref_y, **kwargs)


def _truth_line(r: dict) -> str:
    return (
        f"{r['sim']}: {r['subjects']} attackers and groups: Spearman {r['spearman']:.4f}, "
        f"MAE {r['mae']:.4f}, max error {r['max_error']:.4f}; damage {r['damage_s']:.1f} s, "
        f"replay {r['replay_s']:.1f} s (wall); CPU {r['cpu_s']:.1f} s"
    )


def _budget_line(row: dict) -> str:
    b, a = row["budget"], row["all"]
    return (
        f"{row['kind']} {row['subject']}: {row['queries']:,} queries; fidelity "
        f"{b['fidelity']:.4f} from {b['trained_on']:,} ({b['damage_s']:.1f} s + replay "
        f"{b['replay_s']:.1f} s) vs {a['fidelity']:.4f} from all ({a['damage_s']:.1f} s + "
        f"replay {a['replay_s']:.1f} s); achieved {row['achieved']}"
    )


def main(argv: list[str] | None = None) -> int:
    from audits.forensics import TRAIN_BUDGET

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path, help="a simulated archive (stealwatch simulate --out)")
    parser.add_argument(
        "--truth",
        type=Path,
        nargs="*",
        metavar="SIM",
        help="estimate every attacker of SIM and these simulations against their truth.json",
    )
    parser.add_argument("--suspects", type=int, default=30)
    parser.add_argument("--scores", type=Path, help="OUT/user_scores.parquet of an audit")
    parser.add_argument("--store", type=Path, help="OUT/stealwatch.duckdb of an audit")
    parser.add_argument("--workers", type=int, default=1, help="processes (0: one per core)")
    parser.add_argument("--budget", type=int, default=TRAIN_BUDGET, help="queries per surrogate")
    parser.add_argument(
        "--compare-budget", type=int, metavar="N", help="the N heaviest subjects of --store"
    )
    args = parser.parse_args(argv)
    if args.truth is not None:
        rows = [against_truth(sim) for sim in [args.sim, *args.truth]]
        for row in rows:
            print(_truth_line(row), flush=True)
        result = {"simulations": rows}
    elif args.scores:
        truth = json.loads((args.sim / "truth.json").read_text())
        result = accuracy(pl.read_parquet(args.scores), truth)
    elif args.compare_budget:
        if args.store is None:
            parser.error("--compare-budget needs --store")
        result = budget_effect(args.sim, args.store, args.compare_budget, args.budget)
    else:
        result = timing(args.sim, args.suspects, args.budget, args.store, args.workers)
        print(
            f"forensics for {result['suspects']} suspects ({result['suspect_queries']:,} "
            f"queries, trained on {result['trained_on']:,}): {result['total_s']:.1f} s (damage "
            f"and replay {result['subjects_s']:.1f} s, legitimate costs "
            f"{result['legit_costs_s']:.1f} s, group linking {result['link_groups_s']:.2f} s, "
            f"reference {result['reference_s']:.2f} s)"
        )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
