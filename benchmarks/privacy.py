"""Privacy gate figures: the gate's time on a 20k-row training set, and the attacks table.

    .venv/bin/python benchmarks/privacy.py timing   # gate time, 20k training rows, full curves
    .venv/bin/python benchmarks/privacy.py attacks  # membership table on bundled sklearn data

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audits.models import load_served_model  # noqa: E402
from audits.privacy import Thresholds, membership, run_privacy_audit, write_gate_outputs  # noqa: E402
from audits.privacy.data import LabelledSet  # noqa: E402

ATTACKS = ("max_confidence", "loss", "modified_entropy", "lira_offline", "label_only")


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
                    f"{metrics[a]['auc']:.3f} / {metrics[a]['tpr_at_1pct_fpr']:.3f}"
                    for a in ATTACKS
                )
                top = max(m["auc"] for m in metrics.values())
                verdict = "fail" if top > 0.6 else "pass"
                print(f"| {data_name} | {model_name} | {acc:.3f} | {cells} | {verdict} |")


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
    parser.add_argument("what", choices=["timing", "attacks"], nargs="?", default="timing")
    parser.add_argument("--rows", type=int, default=20_000, help="training rows for timing")
    args = parser.parse_args()
    np.seterr(all="ignore")
    attacks_table() if args.what == "attacks" else timing(args.rows)


if __name__ == "__main__":
    main()
