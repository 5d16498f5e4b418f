"""Extraction risk: how fast a surrogate trained on the API's answers copies the served model.

For every query budget x output granularity x surrogate family x query source, an attacker
queries the model, trains a surrogate on the answers and is scored on an evaluation split of
the holdout that it never queried: fidelity (agreement with the served model) and accuracy
(agreement with the true labels). Natural queries are drawn from the rest of the holdout
(budgets above its size use all of it and say so); noise queries are uniform over each
feature's observed range. Probability answers train the surrogate on soft labels (each query
repeated per class, weighted by that class's probability).

Granularities: the probabilities as served, rounded to 2 decimals, ``randomised`` (label-
preserving noise on the log-probabilities, :func:`audits.forensics.randomise_probabilities`,
the mechanism the incident replay uses, seeded by the study's seed) and the top-1 label only.
Query deduplication is not a granularity here: the study's query sets (holdout rows drawn
without replacement, continuous uniform noise) hold no repeated or near-repeated queries, so a
deduplicating cache would change nothing; the incident replay measures it on logged traffic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from audits.forensics.surrogates import FAMILIES
from audits.forensics.surrogates import make_surrogate as make_shared_surrogate

DEFAULT_BUDGETS = (100, 300, 1000, 3000, 10000)
GRANULARITIES = ("probabilities", "rounded_2dp", "randomised", "top1_label")
SOURCES = ("natural", "uniform_noise")
STUDY_C = 10.0  # the logistic regression surrogate's inverse regularisation in this study
MAX_EVAL_ROWS = 2000
MIN_WEIGHT = 1e-3
TOP_CLASSES = 3  # soft labels keep each answer's three likeliest classes (bounds training size)
ACCEPTABLE_COST = 0.005  # accuracy a recommendation may cost legitimate users

Progress = Callable[[str], None] | None


def make_surrogate(family: str, seed: int):
    """A fresh surrogate of one family (:func:`audits.forensics.surrogates.make_surrogate`), its
    logistic regression regularised less (``C`` = ``STUDY_C``), as this study always had it."""
    return make_shared_surrogate(family, seed, c=STUDY_C)


def served_output(
    proba: np.ndarray | None, labels: np.ndarray, granularity: str, k: int, seed: int = 0
):
    """What the API returns at one granularity: probabilities (maybe rounded or randomised with
    ``seed``) or one-hot labels."""
    if granularity == "top1_label" or proba is None:
        return np.eye(k)[labels]
    if granularity == "rounded_2dp":
        return np.round(proba, 2)
    if granularity == "randomised":
        from audits.forensics import randomise_probabilities

        return randomise_probabilities(proba, seed=seed)
    return proba


def soft_label_rows(X: np.ndarray, targets: np.ndarray):
    """Repeat each query for its likeliest classes, weighted by the (renormalised) answer."""
    kept = np.zeros_like(targets)
    top = np.argsort(-targets, axis=1, kind="stable")[:, :TOP_CLASSES]
    np.put_along_axis(kept, top, np.take_along_axis(targets, top, axis=1), axis=1)
    kept[kept < MIN_WEIGHT] = 0.0
    kept /= np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)
    rows, cls = np.nonzero(kept)
    return X[rows], cls, kept[rows, cls]


def fit_surrogate(family: str, X: np.ndarray, targets: np.ndarray, seed: int):
    """Train a surrogate on the answers; a single answered class gives a constant model."""
    Xs, ys, weights = soft_label_rows(X, targets)
    if len(np.unique(ys)) < 2:
        return _Constant(int(ys[0]) if len(ys) else 0)
    model = make_surrogate(family, seed)
    last = model.steps[-1][0] + "__" if hasattr(model, "steps") else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xs, ys, **{f"{last}sample_weight": weights})
    return model


class _Constant:
    def __init__(self, label: int):
        self.label = label

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.label)


def split_holdout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Holdout rows for the attacker's pool and for evaluation (half, at most 2,000)."""
    order = np.random.default_rng(seed).permutation(n)
    n_eval = min(n // 2, MAX_EVAL_ROWS)
    return order[n_eval:], order[:n_eval]


def uniform_queries(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Queries uniform over each feature's observed range (Tramer et al. 2016)."""
    low, high = X.min(axis=0), X.max(axis=0)
    return rng.uniform(low, high, size=(n, X.shape[1]))


class ExtractionStudy:
    """The attacker's view of one served model: query pools, answers and the evaluation split."""

    def __init__(self, served, holdout, *, seed: int):
        self.served, self.seed = served, seed
        self.k = len(served.classes_)
        pool, evaluation = split_holdout(len(holdout), seed)
        self.X_eval, self.y_eval = holdout.X[evaluation], holdout.y[evaluation]
        self.eval_labels = self._labels(self.X_eval)
        self.eval_proba = served.predict_proba(self.X_eval)
        self.pool = holdout.X[pool]
        self.ranges_from = holdout.X

    def _labels(self, X: np.ndarray) -> np.ndarray:
        lookup = {str(c): i for i, c in enumerate(self.served.classes_.tolist())}
        return np.array([lookup[str(v)] for v in self.served.predict(X).tolist()])

    def queries(self, source: str, budget: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, budget, SOURCES.index(source)])
        if source == "natural":
            n = min(budget, len(self.pool))
            return self.pool[rng.choice(len(self.pool), n, replace=False)]
        return uniform_queries(self.ranges_from, budget, rng)

    def answers(self, X: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        return self.served.predict_proba(X), self._labels(X)

    def score(self, surrogate) -> tuple[float, float]:
        pred = surrogate.predict(self.X_eval)
        fidelity = float((pred == self.eval_labels).mean())
        return fidelity, float((pred == self.y_eval).mean())


def granularities_for(served) -> tuple[str, ...]:
    """Granularities the model can serve; a label-only model serves top-1 labels only."""
    return ("top1_label",) if served.label_only else GRANULARITIES


def extraction_curves(
    served,
    holdout,
    *,
    budgets=DEFAULT_BUDGETS,
    families=FAMILIES,
    sources=SOURCES,
    seed: int = 0,
    progress: Progress = None,
) -> list[dict]:
    """One record per (source, budget, granularity, family): fidelity and accuracy.

    Surrogates train single-threaded: on a small shared machine OpenMP threads only contend.
    """
    study = ExtractionStudy(served, holdout, seed=seed)
    curves, done = [], {}
    with threadpool_limits(limits=1):
        for source in sources:
            for budget in sorted(set(budgets)):
                X = study.queries(source, budget)
                key = (source, len(X))
                if key not in done:
                    if progress:
                        progress(
                            f"extraction: {source} queries, budget {budget} ({len(X)} queries)"
                        )
                    done[key] = _surrogate_scores(study, X, families)
                base = {"source": source, "budget": int(budget), "queries": len(X)}
                curves.extend({**base, **row} for row in done[key])
    return curves


def _surrogate_scores(study: ExtractionStudy, X: np.ndarray, families) -> list[dict]:
    """Fidelity and accuracy of every family at every granularity, trained on one query set."""
    proba, labels = study.answers(X)
    rows = []
    for granularity in granularities_for(study.served):
        targets = served_output(proba, labels, granularity, study.k, seed=study.seed)
        for family in families:
            fidelity, accuracy = study.score(fit_surrogate(family, X, targets, study.seed))
            rows.append(
                {
                    "granularity": granularity,
                    "family": family,
                    "fidelity": fidelity,
                    "accuracy": accuracy,
                }
            )
    return rows


def best_at(curves: list[dict], budget: int, granularity: str) -> dict | None:
    """The attacker's best surrogate (highest fidelity) at one budget and granularity."""
    rows = [c for c in curves if c["budget"] == budget and c["granularity"] == granularity]
    return max(rows, key=lambda c: (c["fidelity"], c["accuracy"])) if rows else None


def user_cost(served, holdout, granularity: str, seed: int = 0) -> dict:
    """What one output option costs legitimate users: top-1 accuracy and Brier score."""
    proba = served.predict_proba(holdout.X)
    k = len(served.classes_)
    lookup = {str(c): i for i, c in enumerate(served.classes_.tolist())}
    labels = np.array([lookup[str(v)] for v in served.predict(holdout.X).tolist()])
    output = served_output(proba, labels, granularity, k, seed=seed)
    top1 = labels if granularity == "top1_label" or proba is None else output.argmax(axis=1)
    onehot = np.eye(k)[holdout.y]
    return {
        "accuracy": float((top1 == holdout.y).mean()),
        "brier": float(((output - onehot) ** 2).sum(axis=1).mean()),
    }


def output_minimisation(served, holdout, curves: list[dict], budget: int, seed: int = 0) -> dict:
    """Per output option: cost to users and best surrogate fidelity; plus a recommendation."""
    options = {}
    for granularity in granularities_for(served):
        cost = user_cost(served, holdout, granularity, seed)
        best = best_at(curves, budget, granularity)
        options[granularity] = {
            **cost,
            "fidelity_at_budget": best["fidelity"] if best else None,
            "surrogate_accuracy_at_budget": best["accuracy"] if best else None,
        }
    baseline = options[granularities_for(served)[0]]
    for option in options.values():
        option["accuracy_cost"] = baseline["accuracy"] - option["accuracy"]
        option["brier_increase"] = option["brier"] - baseline["brier"]
    return {
        "budget": budget,
        "options": options,
        "recommendation": recommend(options, granularities_for(served)[0]),
    }


def recommend(options: dict, served_as: str) -> dict:
    """The option with the lowest surrogate fidelity that costs users <= 0.5 points of accuracy."""
    usable = {g: o for g, o in options.items() if o["accuracy_cost"] <= ACCEPTABLE_COST}
    choice = min(usable, key=lambda g: (usable[g]["fidelity_at_budget"] or 0, -_rank(g)))
    gain = (options[served_as]["fidelity_at_budget"] or 0) - (
        usable[choice]["fidelity_at_budget"] or 0
    )
    if choice == served_as or gain < 0.01:
        return {
            "option": served_as,
            "fidelity_reduction": gain,
            "reason": "No output option slows learned surrogates by even one point of "
            "fidelity at this budget; limit query volume per client instead",
        }
    return {
        "option": choice,
        "fidelity_reduction": gain,
        "reason": f"Cuts the best surrogate's fidelity by {gain:.1%} at a top-1 accuracy cost "
        f"of {usable[choice]['accuracy_cost']:.2%} to legitimate users",
    }


def _rank(granularity: str) -> int:
    """Coarser outputs rank higher: at equal fidelity, prefer revealing less."""
    return GRANULARITIES.index(granularity)
