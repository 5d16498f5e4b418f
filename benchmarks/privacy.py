"""Privacy gate figures: the gate's time on a 20k-row training set, and the attacks table.

    .venv/bin/python benchmarks/privacy.py timing   # gate time, 20k training rows, full curves
    .venv/bin/python benchmarks/privacy.py attacks  # membership table on bundled sklearn data
    .venv/bin/python benchmarks/privacy.py lowfpr   # AUC and TPR at 10/1/0.1% FPR with CIs,
                                                    # five served models, LiRA vs RMIA (1, 4 refs)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/privacy.py lowfpr --seed 0,1,2  # data seeds
    .venv/bin/python benchmarks/privacy.py lowfpr --ceiling  # + RMIA's best grid point (diagnostic)

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audits.models import load_served_model  # noqa: E402
from audits.privacy import Thresholds, membership, run_privacy_audit  # noqa: E402
from audits.privacy.data import LabelledSet  # noqa: E402
from reports.privacy import write_gate_outputs  # noqa: E402

ATTACKS = membership.ATTACKS


def models() -> dict:
    return {
        "random forest, no bootstrap": lambda: RandomForestClassifier(
            100, bootstrap=False, random_state=0, n_jobs=1
        ),
        "MLP, no regularisation": lambda: make_pipeline(
            StandardScaler(), MLPClassifier((128,), alpha=0.0, max_iter=500, random_state=0)
        ),
        "logistic regression, C=0.01": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(C=0.01, max_iter=2000)
        ),
    }


def served(path: Path, estimator):
    import skops.io as sio

    sio.dump(estimator, path)
    return load_served_model(path)


def halves(X, y, seed: int = 0):
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.5, random_state=seed, stratify=y)
    return LabelledSet("train", Xa, ya, ()), LabelledSet("holdout", Xb, yb, ())


def attacks_table() -> None:
    """Membership AUC and TPR at 1% FPR of every attack, per data set and model."""
    head = " | ".join(f"{a} AUC / TPR@1%" for a in ATTACKS)
    print(f"| data | model | test acc | {head} | gate @0.6 |")
    print("|" + "---|" * (len(ATTACKS) + 4))
    with tempfile.TemporaryDirectory() as tmp:
        for data_name, loader in (("digits", load_digits), ("breast cancer", load_breast_cancer)):
            train, holdout = halves(*loader(return_X_y=True))
            for model_name, make in models().items():
                model = served(Path(tmp) / "m.skops", make().fit(train.X, train.y))
                metrics, _ = membership.membership_audit(model, train, holdout, seed=0)
                acc = (model.predict(holdout.X) == holdout.y).mean()
                cells = " | ".join(
                    f"{metrics[a]['auc']:.3f} / {_cell(metrics[a]['tpr_at_1pct_fpr'])}"
                    for a in ATTACKS
                )
                top = max(m["auc"] for m in metrics.values())
                verdict = "fail" if top > 0.6 else "pass"
                print(f"| {data_name} | {model_name} | {acc:.3f} | {cells} | {verdict} |")


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _leaky_forest():
    return RandomForestClassifier(100, bootstrap=False, random_state=0, n_jobs=1)


def low_fpr_models() -> dict:
    """Served models of four kinds, leaky and tight, as (estimator factory, file format,
    whether the gate is given the training recipe for the reference models). An ONNX file
    cannot be re-fitted: the leaky forest is served as ONNX with its recipe and without (a
    stand-in family), and as skops (references are clones)."""
    return {
        "random forest, no bootstrap (leaky)": (_leaky_forest, "onnx", True),
        "random forest, no bootstrap, stand-in references (leaky)": (_leaky_forest, "onnx", False),
        "random forest, no bootstrap, re-fittable (leaky)": (_leaky_forest, "skops", False),
        "MLP, no regularisation (leaky)": (
            lambda: make_pipeline(
                StandardScaler(),
                MLPClassifier((256,), alpha=0.0, max_iter=300, random_state=0),
            ),
            "skops",
            False,
        ),
        "gradient boosting, deep trees (leaky)": (
            lambda: HistGradientBoostingClassifier(
                max_iter=300,
                max_leaf_nodes=63,
                min_samples_leaf=2,
                early_stopping=False,
                random_state=0,
            ),
            "skops",
            False,
        ),
        "logistic regression, C=0.01 (tight)": (
            lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000)),
            "onnx",
            False,
        ),
    }


def save_served(path: Path, estimator, fmt: str, width: int):
    """The fitted estimator as a .skops or .onnx file, loaded back as the gate loads models."""
    if fmt == "skops":
        return served(path.with_suffix(".skops"), estimator)
    from skl2onnx import to_onnx

    onx = to_onnx(estimator, np.zeros((1, width), dtype=np.float32), options={"zipmap": False})
    path = path.with_suffix(".onnx")
    path.write_bytes(onx.SerializeToString())
    return load_served_model(path)


def low_fpr_table(rows: int, references: tuple[int, ...], seed: int, ceiling: bool = False) -> dict:
    """Every attack's AUC and TPR at 10/1/0.1% FPR with 95% intervals (bootstrap for the AUC,
    Clopper-Pearson for TPRs) on ``rows`` training and as many holdout rows, per served model;
    LiRA and RMIA with each number of reference models. Returns the criterion cells; with
    ``ceiling``, each leaky cell also carries RMIA's best count over its (a, T) grid."""
    X, y = make_classification(
        n_samples=2 * rows,
        n_features=20,
        n_informative=10,
        n_classes=3,
        flip_y=0.05,
        class_sep=0.8,
        random_state=seed,
    )
    Xa, Xb, ya, yb = train_test_split(X, y, train_size=rows, random_state=seed, stratify=y)
    train, holdout = LabelledSet("train", Xa, ya, ()), LabelledSet("holdout", Xb, yb, ())
    print(f"make_classification(seed={seed}): {rows} members, {len(holdout)} non-members\n")
    print(
        "| model | file | references | attack | refs | AUC (95% CI) | TPR@10% FPR | TPR@1% FPR "
        "| TPR@0.1% FPR |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    at_tail = {}  # (model, refs) -> (members found by RMIA, by LiRA, members) at 0.1% FPR
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make, fmt, with_recipe) in low_fpr_models().items():
            model = save_served(Path(tmp) / "m", make().fit(train.X, train.y), fmt, X.shape[1])
            recipe = make() if with_recipe else None
            for k in references:
                metrics, info = membership.membership_audit(
                    model, train, holdout, seed=seed, reference_models=k, reference_recipe=recipe
                )
                at_tail[name, k] = tuple(
                    round(metrics[a]["tpr_at_0_1pct_fpr"] * info["members"])
                    for a in ("rmia", "lira_offline")
                ) + (info["members"], info["non_members"])
                if ceiling and "(leaky)" in name:
                    at_tail[name, k] += rmia_grid_ceiling(model, train, holdout, seed, k, recipe)
                shown = (
                    metrics
                    if k == max(references)
                    else {a: metrics[a] for a in membership.REFERENCE_ATTACKS if a in metrics}
                )
                for attack, m in shown.items():
                    uses_refs = attack in membership.REFERENCE_ATTACKS
                    refs, family = (k, info["reference_family"]) if uses_refs else ("-", "-")
                    if attack == "rmia":
                        attack = f"rmia (a {info['rmia_a']:.1f}, T {info['rmia_temperature']:g})"
                    cells = " | ".join(_with_ci(m[key], m[f"{key}_ci"]) for key in FPR_KEYS)
                    auc = f"{m['auc']:.3f} ({m['auc_ci'][0]:.3f}-{m['auc_ci'][1]:.3f})"
                    print(f"| {name} | {fmt} | {family} | {attack} | {refs} | {auc} | {cells} |")
                sys.stdout.flush()
    criterion_table(at_tail)
    return at_tail


def rmia_grid_ceiling(model, train, holdout, seed: int, k: int, recipe) -> tuple:
    """A diagnostic, not an attack: the most members RMIA finds at 0.1% FPR over its whole
    (a, T) grid when the target's own membership picks the point, and that point. The sample
    and references are those :func:`membership.membership_audit` builds with the same seed."""
    splits, _ = membership.plan_references(len(holdout.y), k, seed)
    split_of = membership.split_index(splits, len(holdout.y))
    candidates = membership.auditable_holdout(split_of, k)
    sample = membership.balanced_sample(train.X, train.y, holdout.X, holdout.y, seed, candidates)
    refs = membership.fit_references(
        model, sample, holdout.X, holdout.y, n_models=k, seed=seed, recipe=recipe
    )
    target_logp = membership.log_proba(model.predict_proba(sample.X))
    target_pop = membership.log_proba(model.predict_proba(holdout.X[refs.population_rows]))
    found = {}
    for t in membership.RMIA_TEMPERATURES:
        for a in membership.RMIA_A_GRID:
            s = membership.score_rmia(target_logp, sample.y, target_pop, refs, float(a), t)
            fpr, tpr, _ = roc_curve(sample.is_member, s)
            found[float(a), t] = round(membership.tpr_at_fpr(fpr, tpr, 0.001) * len(s) / 2)
    best = max(found, key=found.get)
    return found[best], best


def criterion_table(at_tail: dict) -> None:
    """The issue's bar per leaky model and reference count: RMIA's TPR at 0.1% FPR at least
    LiRA's, as counts of members found (a tie is a tie of counts), with exact 95% intervals
    and the false positives 0.1% FPR allows."""
    print(
        "\n| leaky model | refs | non-members (FPs at 0.1%) | RMIA TPR@0.1% (95% CI) "
        "| LiRA TPR@0.1% (95% CI) | RMIA >= LiRA |"
    )
    print("|---|---|---|---|---|---|")
    for (name, k), (rmia, lira, n, negatives, *ceiling) in at_tail.items():
        if "(leaky)" not in name:
            continue
        verdict = _verdict(rmia, lira)
        if ceiling:
            best, (a, t) = ceiling
            verdict += f"; grid ceiling {best} (a {a:.1f}, T {t:g}): {_verdict(best, lira)}"
        print(
            f"| {name} | {k} | {negatives} ({int(negatives * 0.001)}) | {_found(rmia, n)} "
            f"| {_found(lira, n)} | {verdict} |"
        )


def _verdict(rmia: int, lira: int) -> str:
    return "tie" if rmia == lira else f"yes, +{rmia - lira}" if rmia > lira else "NO"


def seeds_summary(cells: dict) -> None:
    """Per seed and over all seeds: the leaky cells where RMIA finds at least LiRA's members."""
    print("\n| seeds | leaky cells | RMIA >= LiRA | of them ties |")
    print("|---|---|---|---|")
    rows = {
        seed: [c for (name, _), c in at_tail.items() if "(leaky)" in name]
        for seed, at_tail in cells.items()
    }
    rows["all"] = [c for seed in cells for c in rows[seed]]
    for seed, leaky in rows.items():
        met = sum(c[0] >= c[1] for c in leaky)
        ties = sum(c[0] == c[1] for c in leaky)
        print(f"| {seed} | {len(leaky)} | {met} | {ties} |")


def _found(found: int, members: int) -> str:
    low, high = membership.clopper_pearson(found, members)
    return f"{found / members:.4f} ({found}/{members}; {low:.3f}-{high:.3f})"


FPR_KEYS = ("tpr_at_10pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr")


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def timing(rows: int) -> None:
    """Wall time of the full gate (all attacks, full extraction curves) on ``rows`` rows."""
    X, y = make_classification(
        n_samples=rows + rows // 4,
        n_features=20,
        n_informative=12,
        n_classes=4,
        random_state=0,
    )
    Xa, Xb, ya, yb = train_test_split(X, y, train_size=rows, random_state=0, stratify=y)
    train, holdout = LabelledSet("train", Xa, ya, ()), LabelledSet("holdout", Xb, yb, ())
    forest = RandomForestClassifier(100, bootstrap=False, random_state=0, n_jobs=1)
    with tempfile.TemporaryDirectory() as tmp:
        model = served(Path(tmp) / "m.skops", forest.fit(train.X, train.y))
        started = time.perf_counter()
        result = run_privacy_audit(model, train, holdout, thresholds=Thresholds(), progress=_say)
        write_gate_outputs(result, Path(tmp) / "out")
        elapsed = time.perf_counter() - started
    print(
        f"gate on {len(train)} training rows, {len(holdout)} holdout rows, "
        f"{len(result['extraction']['curves'])} surrogate fits: {elapsed:.1f} s"
    )
    print(
        f"membership AUC {result['membership_auc']:.3f} ({result['membership_auc_attack']}), "
        f"fidelity at {result['query_budget']} queries {result['surrogate_fidelity']:.3f}, "
        f"passed={result['passed']}"
    )


def _say(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what", choices=["timing", "attacks", "lowfpr"], nargs="?", default="timing"
    )
    parser.add_argument("--rows", type=int, help="training rows (timing 20000, lowfpr 2500)")
    parser.add_argument(
        "--refs", default="1,4", help="reference-model counts for lowfpr (default 1,4)"
    )
    parser.add_argument(
        "--seed", default="0", help="data seed(s) for lowfpr, comma-separated (default 0)"
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="lowfpr: also RMIA's best count over its (a, T) grid, picked with the target's "
        "membership (a diagnostic of the tuning, not an attack)",
    )
    args = parser.parse_args()
    np.seterr(all="ignore")
    warnings.filterwarnings("ignore")
    if args.what == "attacks":
        attacks_table()
    elif args.what == "lowfpr":
        refs = tuple(sorted(int(k) for k in args.refs.split(",")))
        seeds = [int(seed) for seed in args.seed.split(",")]
        cells = {seed: low_fpr_table(args.rows or 2500, refs, seed, args.ceiling) for seed in seeds}
        seeds_summary(cells)
    else:
        timing(args.rows or 20_000)


if __name__ == "__main__":
    main()
