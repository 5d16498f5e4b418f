"""Detection across domains, beside the volume and PRADA baselines; or the time and memory of the
detection stage on one archive.

    .venv/bin/python benchmarks/detect.py --domains all --seeds 1,2,3 [--users 150] [--days 2]
    .venv/bin/python benchmarks/detect.py --domains all --seeds 1,2 --holdout-domain all
    .venv/bin/python benchmarks/detect.py SIM_DIR [--no-delay]      # timing of one archive

Across domains: simulates each (domain, seed) archive once into ``--work`` (reused when it is
there), scores it with ``audits.scoring.audit_scores`` (whatever the detection code is now), the
volume baseline (score = the key's query count) and PRADA, and prints a table per domain (ROC
AUC, TPR at 1% FPR, attackers and benign keys flagged), a table per attack family (recall of the
flagged keys, AUC against the benign keys) and the benign kinds flagged.

Leave one domain out (``--holdout-domain NAME`` or ``all``): a tuner sees only the other
domains' scored runs and returns the knobs used on the held-out domain (``--tuner
module:function``, default :func:`threshold_at_budget`). See docs/simulation.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from audits.evaluation import evaluate, events_from_archive, tpr_at_fpr
from audits.simulation.domains import DOMAINS
from benchmarks.baselines import prada_scores, volume_scores

ALL_DOMAINS = ("default", *DOMAINS)
DETECTORS = ("stealwatch", "volume", "prada")
FP_BUDGET = 0.01


@dataclass
class Run:
    """One scored (domain, seed) archive: per detector, one row per key with its truth."""

    domain: str
    seed: int
    sim: Path
    scores: dict[str, pl.DataFrame]  # detector -> user_id, role, kind, score, flagged, n_events


# ---------------------------------------------------------------- archives and scoring


def archive(work: Path, domain: str, seed: int, users: int, days: int, say) -> Path:
    """The simulated archive of (domain, seed), made once and reused."""
    sim = work / f"{domain}-seed{seed}-u{users}-d{days}"
    if (sim / "truth.json").is_file():
        return sim
    say(f"simulating {sim.name}")
    if domain == "default":
        from audits.simulation import simulate

        simulate(sim, seed=seed, days=days, users=users)
    else:
        from audits.simulation.domains import simulate_domain

        simulate_domain(sim, domain, seed=seed, days=days, users=users, fidelity=False)
    return sim


def stealwatch_scores(events: pl.DataFrame, reference: np.ndarray, **knobs) -> pl.DataFrame:
    """The current detection stage's user scores."""
    from audits.scoring import audit_scores

    return audit_scores(events, reference, delay=False, **knobs)[1]


def with_truth(scores: pl.DataFrame, truth: dict) -> pl.DataFrame:
    roles = pl.DataFrame(
        [{"user_id": u["user_id"], "role": u["role"], "kind": u["kind"]} for u in truth["users"]]
    )
    keep = scores.select("user_id", "score", "flagged", "n_events")
    return roles.join(keep, on="user_id", how="inner").with_columns(
        pl.col("score").cast(pl.Float64).fill_null(-np.inf),
        pl.col("flagged").fill_null(False),
    )


def score_archive(sim: Path, detectors=DETECTORS, **knobs) -> dict[str, pl.DataFrame]:
    """Each detector's scores of the archive in ``sim``, joined with its truth; ``knobs`` go to
    the stealwatch scorer."""
    truth = json.loads((sim / "truth.json").read_text())
    events = events_from_archive(sim / "logs")
    reference = pl.read_parquet(sim / "reference.parquet").to_numpy()
    make: dict[str, Callable[[], pl.DataFrame]] = {
        "stealwatch": lambda: stealwatch_scores(events, reference, **knobs),
        "volume": lambda: volume_scores(events),
        "prada": lambda: prada_scores(events),
    }
    return {name: with_truth(make[name](), truth) for name in detectors}


# ---------------------------------------------------------------- figures


def figures(frame: pl.DataFrame) -> dict:
    """AUC, TPR at 1% FPR, flagged shares, and per kind (users, flagged, AUC vs benign)."""
    y = (frame["role"] == "attacker").to_numpy()
    s = frame["score"].to_numpy()
    s = np.where(np.isfinite(s), s, np.min(s[np.isfinite(s)], initial=0.0) - 1.0)
    flagged = frame["flagged"].to_numpy()
    kinds = frame["kind"].to_numpy()
    both = 0 < y.sum() < len(y)
    from sklearn.metrics import roc_auc_score

    out = {
        "auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "tpr1": tpr_at_fpr(y, s, FP_BUDGET) if both else float("nan"),
        "attackers": int(y.sum()),
        "attackers_flagged": int(flagged[y].sum()),
        "benign": int((~y).sum()),
        "benign_flagged": int(flagged[~y].sum()),
        "kinds": {},
    }
    for kind in sorted(set(kinds)):
        m = kinds == kind
        attack = bool(y[m].any())
        auc = (
            float(roc_auc_score(np.r_[np.ones(m.sum()), np.zeros((~y).sum())], np.r_[s[m], s[~y]]))
            if attack and (~y).any()
            else None
        )
        out["kinds"][kind] = {
            "attack": attack,
            "users": int(m.sum()),
            "flagged": int(flagged[m].sum()),
            "auc": auc,
        }
    return out


def _pool(items: list[dict]) -> dict:
    """Figures of several seeds: AUC and TPR averaged, counts summed."""
    out = {
        "auc": float(np.nanmean([f["auc"] for f in items])),
        "tpr1": float(np.nanmean([f["tpr1"] for f in items])),
        "auc_min": float(np.nanmin([f["auc"] for f in items])),
        "seeds": len(items),
    }
    for key in ("attackers", "attackers_flagged", "benign", "benign_flagged"):
        out[key] = sum(f[key] for f in items)
    kinds: dict[str, dict] = {}
    for f in items:
        for kind, k in f["kinds"].items():
            into = kinds.setdefault(
                kind, {"attack": k["attack"], "users": 0, "flagged": 0, "aucs": []}
            )
            into["users"] += k["users"]
            into["flagged"] += k["flagged"]
            if k["auc"] is not None:
                into["aucs"].append(k["auc"])
    out["kinds"] = kinds
    return out


def table(runs: list[Run]) -> dict:
    """domain -> detector -> pooled figures, plus an ``all`` domain over every run."""
    by: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        for name, frame in run.scores.items():
            f = figures(frame)
            by.setdefault(run.domain, {}).setdefault(name, []).append(f)
            by.setdefault("all", {}).setdefault(name, []).append(f)
    return {domain: {name: _pool(items) for name, items in d.items()} for domain, d in by.items()}


def render(result: dict, detectors=DETECTORS) -> str:
    lines = [
        "per domain (AUC and TPR at 1% FPR: mean over seeds; min AUC over seeds; counts summed)"
    ]
    head = (
        f"{'domain':<9} {'detector':<11} {'AUC':>6} {'minAUC':>7} {'TPR@1%':>7} "
        f"{'attackers flagged':>18} {'benign flagged':>15}"
    )
    lines.append(head)
    for domain, d in result.items():
        for name in detectors:
            if name not in d:
                continue
            f = d[name]
            lines.append(
                f"{domain:<9} {name:<11} {f['auc']:>6.3f} {f['auc_min']:>7.3f} {f['tpr1']:>7.2f} "
                f"{f['attackers_flagged']:>8}/{f['attackers']:<9} "
                f"{f['benign_flagged'] / max(f['benign'], 1):>14.1%}"
            )
    domains = list(result)
    for name in detectors:
        lines.append("")
        lines.append(
            f"{name}: recall of the flagged keys per attack family (AUC vs benign), "
            "and benign kinds flagged"
        )
        lines.append(f"{'kind':<18}" + "".join(f"{d:>16}" for d in domains))
        kinds = sorted(
            {k for d in domains for k in result[d].get(name, {}).get("kinds", {})},
            key=lambda k: (not _is_attack(result, name, k), k),
        )
        for kind in kinds:
            cells = [_cell(result[d].get(name, {}).get("kinds", {}).get(kind)) for d in domains]
            lines.append(f"{kind:<18}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def _is_attack(result: dict, name: str, kind: str) -> bool:
    return any(
        d.get(name, {}).get("kinds", {}).get(kind, {}).get("attack") for d in result.values()
    )


def _cell(k: dict | None) -> str:
    if not k:
        return "-"
    if k["attack"]:
        auc = f" ({np.mean(k['aucs']):.2f})" if k["aucs"] else ""
        return f"{k['flagged'] / k['users']:.2f}{auc}"
    return f"{k['flagged']}/{k['users']}"


# ---------------------------------------------------------------- leave one domain out

Tuner = Callable[[list[Run]], dict]


def threshold_at_budget(train: list[Run]) -> dict:
    """The default tuner: the stealwatch score threshold (flag above it) that keeps the benign
    keys flagged within the budget on every training run (the largest per-run benign quantile)."""
    tops = []
    for run in train:
        frame = run.scores["stealwatch"]
        benign = frame.filter(pl.col("role") == "benign")["score"].to_numpy()
        benign = benign[np.isfinite(benign)]
        if len(benign):
            tops.append(float(np.quantile(benign, 1.0 - FP_BUDGET, method="higher")))
    return {"threshold": max(tops) if tops else None}


def load_tuner(spec: str) -> Tuner:
    """``module:function`` -> the function (e.g. ``benchmarks.detect:threshold_at_budget``)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"--tuner must be module:function, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def held_out(runs: list[Run], domain: str, tuner: Tuner, say) -> tuple[dict, list[Run]]:
    """Tune on every run but ``domain``'s, apply the knobs to ``domain``'s runs."""
    knobs = tuner([r for r in runs if r.domain != domain])
    say(f"held out {domain}: knobs {knobs}")
    threshold = knobs.get("threshold")
    score_kwargs = knobs.get("score_kwargs") or {}
    tuned = []
    for run in (r for r in runs if r.domain == domain):
        frame = (
            score_archive(run.sim, ("stealwatch",), **score_kwargs)["stealwatch"]
            if score_kwargs
            else run.scores["stealwatch"]
        )
        if threshold is not None:
            frame = frame.with_columns((pl.col("score") > threshold).alias("flagged"))
        tuned.append(Run(run.domain, run.seed, run.sim, {"stealwatch": frame}))
    return knobs, tuned


# ---------------------------------------------------------------- command line


def _domains(text: str) -> list[str]:
    names = list(ALL_DOMAINS) if text == "all" else [d.strip() for d in text.split(",") if d]
    unknown = sorted(set(names) - set(ALL_DOMAINS))
    if unknown:
        raise SystemExit(
            f"--domains: unknown {', '.join(unknown)} (choose from {', '.join(ALL_DOMAINS)} or all)"
        )
    return names


def cross_domain(args: argparse.Namespace) -> dict:
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    detectors = [d for d in DETECTORS if d != "prada" or not args.no_prada]
    runs = []
    for domain in _domains(args.domains):
        for seed in seeds:
            sim = archive(work, domain, seed, args.users, args.days, say)
            began = time.perf_counter()
            runs.append(Run(domain, seed, sim, score_archive(sim, detectors)))
            aucs = ", ".join(
                f"{name} AUC {figures(frame)['auc']:.3f}" for name, frame in runs[-1].scores.items()
            )
            say(f"scored {sim.name} in {time.perf_counter() - began:.0f} s: {aucs}")
    result = {"table": table(runs)}
    print(render(result["table"], detectors))
    if args.holdout_domain:
        tuner = load_tuner(args.tuner)
        names = (
            sorted({r.domain for r in runs})
            if args.holdout_domain == "all"
            else [args.holdout_domain]
        )
        lodo, knobs = [], {}
        for domain in names:
            knobs[domain], tuned = held_out(runs, domain, tuner, say)
            lodo += tuned
        result["lodo"] = {"knobs": knobs, "table": table(lodo)}
        print(
            "\nleave one domain out: stealwatch with knobs tuned on the other domains "
            f"({args.tuner})"
        )
        print(render(result["lodo"]["table"], ("stealwatch",)))
    return result


def one_archive(sim: Path, no_delay: bool) -> dict:
    from audits.features import user_features
    from audits.scoring import audit_scores

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
    _, scores, summary = audit_scores(events, reference, features=feats, delay=not no_delay)
    out["detectors_groups_delay_s"] = round(time.perf_counter() - t, 1)
    out["threshold"] = summary["threshold"]
    out["flagged"] = int(scores["flagged"].sum())
    out["peak_rss_mib"] = round(_peak_mib())
    truth = sim / "truth.json"
    if truth.exists():
        out["evaluation"] = evaluate(scores, json.loads(truth.read_text()))
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim_dir", nargs="?", help="time the detection stage on this archive")
    parser.add_argument("--no-delay", action="store_true", help="skip the detection delay")
    parser.add_argument(
        "--domains", help="comma-separated domains, or all: " + ", ".join(ALL_DOMAINS)
    )
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--users", type=int, default=150, help="keys per archive (default 150)")
    parser.add_argument("--days", type=int, default=2, help="days per archive (default 2)")
    parser.add_argument(
        "--work",
        default="/tmp/stealwatch-detect",
        help="folder of the simulated archives, reused between runs",
    )
    parser.add_argument("--holdout-domain", help="leave this domain (or all, in turn) out")
    parser.add_argument(
        "--tuner",
        default="benchmarks.detect:threshold_at_budget",
        help="module:function tuning knobs on the other domains' runs",
    )
    parser.add_argument("--no-prada", action="store_true", help="skip the PRADA baseline")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.sim_dir:
        print(json.dumps(one_archive(Path(args.sim_dir), args.no_delay), indent=1))
        return
    if not args.domains:
        parser.error("give SIM_DIR or --domains")
    result = cross_domain(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
