"""The damage of one subject (a key or a group's keys): the fidelity of the surrogates an
attacker could have trained on the (query, response) pairs the logs show it received
(:func:`audits.forensics.surrogates.agreement`), with a bootstrap interval, a curve of fidelity
against the number of queries in time order and the queries it took to reach 90%.

Bounded cost: every surrogate trains on at most ``TRAIN_BUDGET`` queries of its training set,
a fixed uniform sample (:func:`training_rows`), so its cost does not grow with a subject's
volume; below the budget every query is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from audits.forensics.surrogates import agreement, as_labels, winner
from audits.forensics.traffic import Traffic

CURVE_POINTS = 5  # curve sizes, geometric from MIN_CURVE_QUERIES to all (one refit each)
BOOTSTRAP = 200
TARGET = 0.9
MIN_CURVE_QUERIES = 20
MAX_BINS = 255  # scikit-learn HistGradientBoosting's default
TRAIN_BUDGET = 20_000
"""The most queries one surrogate trains on (0: no budget). A training set of m queries above it
trains on a uniform sample of exactly ``TRAIN_BUDGET`` of them (:func:`training_rows`); below it,
on all of them. The figure under-estimates the damage only as far as a surrogate's fidelity
still grows past ``TRAIN_BUDGET`` queries."""
_BUDGET_STREAM = 0x5EED  # keeps the budget's draws apart from other uses of the seed


@dataclass
class Damage:
    """A subject's estimated damage: ``fidelity`` of the better label-trained surrogate on the
    reference inputs (the simulator's measure of what an attacker achieved), its 95% bootstrap
    interval, ``curve`` = [(n_queries, fidelity)] over the first n queries in time order, the
    queries it took to reach 90% (``None`` if never), ``queries`` (all the subject's labelled
    queries), when the logs show probabilities ``fidelity_probabilities``: the same surrogates
    trained on the served probabilities, and ``trained_on``: the queries the full-traffic
    surrogates trained on (``queries``, or the training budget when that is smaller)."""

    fidelity: float
    ci: tuple[float, float]
    curve: list[tuple[int, float]] = field(default_factory=list)
    queries_to_90: int | None = None
    queries: int = 0
    surrogate: str = ""
    fidelity_probabilities: float | None = None
    trained_on: int = 0
    surrogate_probabilities: str = ""  # the better probability-trained surrogate ("": none)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("surrogate_probabilities")
        out["ci"] = list(self.ci)
        out["curve"] = [list(p) for p in self.curve]
        return out


def bootstrap_ci(
    agree: np.ndarray, *, resamples: int = BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the agreement rate over resamples of the reference rows."""
    n = len(agree)
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    a = agree.astype(np.float64)
    means = np.empty(resamples)
    for b in range(resamples):  # bounded: resamples x n indices at a time
        means[b] = a[rng.integers(0, n, n)].mean()
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (round(float(lo), 4), round(float(hi), 4))


def curve_sizes(n: int, points: int = CURVE_POINTS) -> list[int]:
    """Up to ``points`` query counts, geometrically spaced, ending at ``n``."""
    if n <= 0:
        return []
    first = min(n, MIN_CURVE_QUERIES)
    sizes = np.unique(np.round(np.geomspace(first, n, points)).astype(int))
    return [int(s) for s in sizes]


def budget_draws(n: int, seed: int = 0) -> np.ndarray:
    """One fixed uniform draw per query of a subject's time-ordered traffic: the i-th depends
    only on ``seed`` and i (more traffic extends the draws, it never changes them)."""
    return np.random.default_rng([seed, _BUDGET_STREAM]).random(n)


def training_rows(rows: np.ndarray, draws: np.ndarray, budget: int = TRAIN_BUDGET) -> np.ndarray:
    """The rows a surrogate trains on out of the training set ``rows`` (indices in time order,
    ``draws`` from :func:`budget_draws`): all of them when they fit the ``budget`` (0: no
    budget), else the ``budget`` rows with the smallest draws, in time order: a uniform sample
    of exactly ``budget`` rows spread over the whole set (the same rows on every run)."""
    rows = np.asarray(rows, dtype=np.int64)
    if budget <= 0 or len(rows) <= budget:
        return rows
    pick = np.argpartition(draws[rows], budget - 1)[:budget]
    return rows[np.sort(pick)]


def estimate_damage(
    features: np.ndarray,
    answers: Sequence | np.ndarray,
    reference_X: np.ndarray,
    reference_y: Sequence | np.ndarray,
    *,
    probabilities: np.ndarray | None = None,
    proba_classes: Sequence | np.ndarray | None = None,
    seed: int = 0,
    curve_points: int = CURVE_POINTS,
    resamples: int = BOOTSTRAP,
    target: float = TARGET,
    budget: int = TRAIN_BUDGET,
) -> Damage:
    """The damage of one subject from its queries ``features`` (rows in time order) and the
    served labels ``answers``; ``probabilities`` (columns = ``proba_classes``) when the logs
    show them. ``reference_y`` is the served model's answer on each ``reference_X`` row.

    Each surrogate (the full traffic, every curve point's first k queries) trains on at most
    ``budget`` queries of its training set (:func:`training_rows`; 0: no budget), so the cost
    stays bounded whatever the subject's volume; a subject within the budget is estimated from
    every query. ``Damage.trained_on`` says how many the full-traffic surrogates used. The
    full traffic is fitted by every label-trained family; the curve points and the search for
    90% refit only the family that was better on the full traffic. The boosting stops on a
    training-loss plateau (``stop_early``); the simulator's truth grows all its iterations."""
    X = np.asarray(features, dtype=np.float64)
    y = as_labels(answers)
    ref_X = np.asarray(reference_X, dtype=np.float64)
    ref_y = as_labels(reference_y)
    columns = as_labels(proba_classes) if proba_classes is not None else None
    proba = None
    if probabilities is not None and columns is not None:
        proba = np.asarray(probabilities, dtype=np.float64)
        if proba.ndim != 2 or proba.shape != (len(X), len(columns)) or not np.isfinite(proba).all():
            proba = None
    n = len(X)
    if n == 0:
        return Damage(0.0, (0.0, 0.0), [], None, 0, "none")
    draws = budget_draws(n, seed)

    full = training_rows(np.arange(n), draws, budget)
    agree, name = agreement(X[full], y[full], ref_X, ref_y, seed, stop_early=True)
    fid = round(float(agree.mean()), 4)
    soft, soft_name = None, ""
    if proba is not None:
        soft_agree, soft_name = agreement(
            X[full], y[full], ref_X, ref_y, seed, proba[full], columns, stop_early=True
        )
        soft = round(float(soft_agree.mean()), 4)
    families = winner(name)

    def fidelity_of(k: int) -> float:
        """The fidelity from the first ``k`` queries, of the family better on all of them."""
        rows = training_rows(np.arange(k), draws, budget)
        agree_k, _ = agreement(
            X[rows], y[rows], ref_X, ref_y, seed, families=families, stop_early=True
        )
        return float(agree_k.mean())

    curve: list[tuple[int, float]] = []
    for k in curve_sizes(n, curve_points):
        curve.append((k, fid if k == n else round(fidelity_of(k), 4)))
    reached = _queries_to(curve, target, fidelity_of)
    ci = bootstrap_ci(agree, resamples=resamples, seed=seed)
    return Damage(fid, ci, curve, reached, n, name, soft, len(full), soft_name)


def _queries_to(curve, target, fidelity_of, steps: int = 4) -> int | None:
    """The first curve size that reaches ``target``, narrowed by a few bisection refits
    between it and the size before it."""
    hit = next((i for i, (_, f) in enumerate(curve) if f >= target), None)
    if hit is None:
        return None
    hi = curve[hit][0]
    lo = curve[hit - 1][0] if hit > 0 else 0
    for _ in range(steps):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        if mid < 2:
            break
        if fidelity_of(mid) >= target:
            hi = mid
        else:
            lo = mid
    return int(hi)


def damage_of_traffic(
    t: Traffic,
    reference_X: np.ndarray,
    reference_y: np.ndarray,
    *,
    columns: np.ndarray | None = None,
    seed: int = 0,
    **kwargs,
) -> Damage:
    """:func:`estimate_damage` over a subject's :func:`traffic`."""
    use_proba = t.proba is not None and columns is not None and t.proba.shape[1] == len(columns)
    return estimate_damage(
        t.X,
        t.y,
        reference_X,
        reference_y,
        probabilities=t.proba if use_proba else None,
        proba_classes=columns if use_proba else None,
        seed=seed,
        **kwargs,
    )
