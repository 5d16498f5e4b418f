"""Ownership check on a simulated archive: true- and false-positive rates of `verify`.

.venv/bin/python benchmarks/ownership.py [--archive SIM] [--seed 7] [--days 2] [--users 60]

Fingerprints SIM/model.skops (ground truth SIM/train.parquet, inputs SIM/reference.parquet),
then verifies, each through the project's model loader from a file:
- copies: one model per attacker key and Sybil group in SIM/truth.json and per family
  (logistic regression, gradient boosting, MLP) trained on exactly the queries and served
  labels the logs show it received; saved as .skops, the logistic-regression copies as .onnx;
- independent models: trained on the task's ground truth, never on the served model's
  answers: on SIM/holdout.parquet (data the served model never saw) in eight families,
  two of them (extra trees, RBF SVM) outside the fingerprint's null families, and the served
  model's own architecture retrained on SIM/train.parquet with other seeds.
Each model's fidelity is its agreement with the served model on SIM/holdout.parquet rows.
Prints each verdict, then TPR (copies found) and FPR (independent models called copies)
overall, by copy family and by fidelity band, next to the fidelity independent models reach.
Without --archive, simulates one into a temporary folder first.

    .venv/bin/python benchmarks/ownership.py --pool R11.json R12.json ...

pools the --json results of several runs (seeds) into one TPR/FPR and ROC AUC. The fingerprint
and verify settings were tuned on simulation seeds 1-4; docs/privacy.md reports seeds 11-15.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

COPY_FAMILIES = ("logistic_regression", "gradient_boosting", "mlp")
FIDELITY_BANDS = ((0.8, 1.01, ">= 0.8"), (0.6, 0.8, "0.6-0.8"), (0.0, 0.6, "< 0.6"))
FIDELITY_ROWS = 4_000


def independent_zoo(seed: int) -> list[tuple[str, object]]:
    """Independent models of eight families (extra trees and an RBF SVM are not in the
    fingerprint's null)."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from audits.ownership import make_model

    zoo = [(f, make_model(f, seed)) for f in ("logistic_regression", "gradient_boosting", "mlp")]
    zoo += [(f, make_model(f, seed)) for f in ("mlp_deep", "random_forest")]
    zoo += [
        ("extra_trees", ExtraTreesClassifier(100, min_samples_leaf=2, random_state=seed)),
        ("knn", make_pipeline(StandardScaler(), KNeighborsClassifier(15))),
        ("svm_rbf", make_pipeline(StandardScaler(), SVC(C=3.0, random_state=seed))),
    ]
    return zoo


def table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pl.read_parquet(path)
    return frame.drop("label").to_numpy().astype(float), frame["label"].to_numpy().astype(str)


def save(model, path: Path, width: int, onnx: bool = False) -> Path:
    """The model as .skops (or .onnx via skl2onnx) so verify loads it like a user's file."""
    if onnx:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        proto = convert_sklearn(
            model,
            initial_types=[("input", FloatTensorType([None, width]))],
            options={id(model): {"zipmap": False}},
            target_opset=17,
        )
        path.write_bytes(proto.SerializeToString())
        return path
    import skops.io as sio

    sio.dump(model, path)
    return path


def run(sim: Path, work: Path, n: int, seed: int) -> dict:
    from threadpoolctl import threadpool_limits

    from audits.evaluation import events_from_archive
    from audits.models import load_served_model
    from audits.ownership import as_labels, fit_quietly, make_fingerprint, train_copy, verify
    from audits.simulation.population import train_served_model

    truth = json.loads((sim / "truth.json").read_text())
    served = load_served_model(sim / "model.skops")
    width = served.n_features_in
    train_X, train_y = table(sim / "train.parquet")
    hold_X, hold_y = table(sim / "holdout.parquet")
    reference = pl.read_parquet(sim / "reference.parquet").to_numpy().astype(float)
    t0 = time.perf_counter()
    fingerprint = make_fingerprint(served, train_X, train_y, reference, n=n, seed=seed)
    fp_seconds = time.perf_counter() - t0
    hold_served = as_labels(served.predict(hold_X[:FIDELITY_ROWS]))

    def fidelity_of(model) -> float:
        return float((as_labels(model.predict(hold_X[:FIDELITY_ROWS])) == hold_served).mean())

    events = events_from_archive(sim / "logs")
    subjects = [
        (u["user_id"], u["kind"], [u["user_id"]]) for u in truth["users"] if u["role"] == "attacker"
    ]
    subjects += [(g["group_id"], "sybil group", g["members"]) for g in truth["groups"]]
    rows = []
    with threadpool_limits(limits=1):
        for name, kind, members in subjects:
            subject_events = events.filter(pl.col("user_id").is_in(members))
            for family in COPY_FAMILIES:
                model = train_copy(subject_events, family, width=width, seed=seed)
                if model is None:
                    continue
                onnx = family == "logistic_regression"
                path = work / f"copy-{name}-{family}.{'onnx' if onnx else 'skops'}"
                save(model, path, width, onnx=onnx)
                rows.append(("copy", f"{kind} {name}", family, fidelity_of(model), path))
        for s in range(2):
            pick = np.random.default_rng(seed + s).choice(len(hold_X), 6000, replace=False)
            for family, model in independent_zoo(seed + 100 + s):
                fit_quietly(model, hold_X[pick], hold_y[pick])
                path = work / f"independent-{family}-{s}.skops"
                save(model, path, width)
                origin = f"holdout subsample {s}"
                rows.append(("independent", origin, family, fidelity_of(model), path))
        for s in (1, 2):  # the served architecture on the served model's own training data
            model = train_served_model(train_X, train_y.astype(np.int64), seed + 1000 + s)
            path = work / f"independent-served-architecture-{s}.skops"
            save(model, path, width)
            origin = "train.parquet, other seed"
            rows.append(("independent", origin, "served_mlp", fidelity_of(model), path))
        results = []
        for role, origin, family, fidelity, path in rows:
            r = verify(fingerprint, load_served_model(path))
            results.append(
                {
                    "role": role,
                    "origin": origin,
                    "family": family,
                    "format": path.suffix[1:],
                    "fidelity": fidelity,
                    "agreement": r["agreement"],
                    "matched_family": r["matched_family"],
                    "p_value": r["p_value"],
                    "verdict": r["verdict"],
                }
            )
    return {"fingerprint_seconds": fp_seconds, "fingerprint": fingerprint, "results": results}


def rate(rows: list[dict]) -> str:
    hits = sum(r["verdict"] == "copy" for r in rows)
    return f"{hits}/{len(rows)} = {hits / len(rows):.2f}" if rows else "n/a"


def report(out: dict) -> None:
    fp, results = out["fingerprint"], out["results"]
    null = [r["agreement"] for r in fp["null"]]
    print(
        f"fingerprint: {len(fp['points'])} inputs in {out['fingerprint_seconds']:.1f} s; "
        f"regions {fp['region_counts']}; {len(null)} null models agree "
        f"{min(null):.3f}-{max(null):.3f}"
    )
    head = ("role", "family", "fmt", "fid", "agree", "matched", "p", "verdict", "origin")
    print("{:12s} {:20s} {:5s} {:>6s} {:>6s} {:20s} {:>9s}  {:8s} {}".format(*head))
    for r in results:
        fid = f"{r['fidelity']:.3f}" if r["fidelity"] is not None else "-"
        print(
            f"{r['role']:12s} {r['family']:20s} {r['format']:5s} {fid:>6s} {r['agreement']:6.3f} "
            f"{r['matched_family']:20s} {r['p_value']:9.2g}  {r['verdict']:8s} {r['origin']}"
        )
    copies = [r for r in results if r["role"] == "copy"]
    independent = [r for r in results if r["role"] == "independent"]
    print(f"TPR (copies called copy): {rate(copies)}")
    print(f"FPR (independent models called copy): {rate(independent)}")
    faithful = [r for r in copies if r["fidelity"] >= 0.8]
    print(f"TPR among copies with fidelity >= 0.8: {rate(faithful)}")
    lowest = min(independent, key=lambda r: r["p_value"])
    print(
        f"lowest p-value of an independent model: {lowest['p_value']:.2g} "
        f"({lowest['family']}, {lowest['origin']})"
    )
    for family in COPY_FAMILIES:
        print(f"  TPR, {family} copies: {rate([r for r in copies if r['family'] == family])}")
    onnx = [r for r in copies if r["format"] == "onnx"]
    print(f"  TPR, ONNX copies: {rate(onnx)}")
    fids = [r["fidelity"] for r in independent]
    print(
        f"fidelity (agreement with the served model on holdout rows): independent models "
        f"{min(fids):.3f}-{max(fids):.3f}, copies "
        f"{min(r['fidelity'] for r in copies):.3f}-{max(r['fidelity'] for r in copies):.3f}"
    )
    for lo, hi, label in FIDELITY_BANDS:
        band = [r for r in copies if lo <= r["fidelity"] < hi]
        by_family = ", ".join(
            f"{f} {rate([r for r in band if r['family'] == f])}" for f in COPY_FAMILIES
        )
        print(f"  TPR, copy fidelity {label}: {rate(band)} ({by_family})")
    print(separation(results))
    below = [r for r in copies if r["fidelity"] < min(fids)]
    print(
        f"  copies less faithful than every independent model: {len(below)}/{len(copies)}, "
        f"of which called copy {sum(r['verdict'] == 'copy' for r in below)}"
    )


def separation(results: list[dict]) -> str:
    """ROC AUC of the verdict's score (-log10 p: higher says copy) separating copies from
    independent models, and the best TPR at an empirical FPR <= 1% over all thresholds."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.array([r["role"] == "copy" for r in results])
    if labels.all() or not labels.any():
        return "ROC AUC: n/a (needs copies and independent models)"
    score = np.array([-np.log10(max(r["p_value"], 1e-300)) for r in results])
    fpr, tpr, _ = roc_curve(labels, score)
    at_1pct = float(tpr[fpr <= 0.01].max())
    keep = np.array([r["role"] == "independent" or r["fidelity"] >= 0.8 for r in results])
    faithful_auc = roc_auc_score(labels[keep], score[keep]) if labels[keep].any() else np.nan
    return (
        f"ROC AUC (copies vs independent models, score -log10 p): "
        f"{roc_auc_score(labels, score):.3f}; copies with fidelity >= 0.8 vs independent: "
        f"{faithful_auc:.3f}; best TPR at FPR <= 1%: {at_1pct:.2f}"
    )


def pool(runs: list[list[dict]]) -> None:
    """TPR, FPR and the ROC AUC over the verdicts of several runs together."""
    results = [r for run in runs for r in run]
    copies = [r for r in results if r["role"] == "copy"]
    independent = [r for r in results if r["role"] == "independent"]
    print(f"{len(runs)} runs pooled")
    print(f"TPR (copies called copy): {rate(copies)}")
    print(f"FPR (independent models called copy): {rate(independent)}")
    faithful = [r for r in copies if r["fidelity"] >= 0.8]
    print(f"TPR among copies with fidelity >= 0.8: {rate(faithful)}")
    print(separation(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="a `stealwatch simulate` folder (default: simulate)")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed (default: 7)")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--n", type=int, default=12_000, help="fingerprint inputs (default: 12000)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--pool", nargs="+", help="pool the --json results of several runs")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.pool:
        pool([json.loads(Path(f).read_text()) for f in args.pool])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sim = Path(args.archive) if args.archive else work / "sim"
        if not args.archive:
            from audits.simulation import simulate

            print(
                f"simulating seed {args.seed}, {args.days} days, {args.users} users",
                file=sys.stderr,
            )
            simulate(sim, seed=args.seed, days=args.days, users=args.users)
        models = work / "models"
        models.mkdir()
        out = run(sim, models, args.n, seed=0)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out["results"], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
