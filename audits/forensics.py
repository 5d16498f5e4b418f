"""Forensics: how much of the model a flagged user or group obtained, which keys act as one,
and what a defence would have changed.

- :func:`estimate_damage` trains the surrogates an attacker could have trained (a logistic
  regression and a gradient-boosting model, the better one kept) on the (query, response)
  pairs the logs show the subject received, and measures their agreement with the served model
  on reference inputs (fidelity), with a bootstrap interval, a curve of fidelity against the
  number of queries in time order and the queries it took to reach 90%.
- :func:`link_groups` links keys that behave as one client: a shared source address or /24,
  activity in the same hours, similar query distributions and complementary coverage.
- :func:`replay_defences` re-runs the damage estimate on what a per-key rate limit, output
  minimisation (top-1 labels, rounded probabilities), response randomisation
  (:func:`randomise_probabilities`) or query deduplication (:func:`duplicate_queries`) would
  have let through, with what the same defence would have cost legitimate users over the same
  window (:func:`legit_costs`, computed once per window).

Bounded cost: the functions that read events take a Polars frame or an
:class:`audits.event_source.EventSource` and read one subject's events at a time, the
legitimate users a batch of whole users at a time, and samples for the reference and the
probability columns. Every surrogate trains on at most ``TRAIN_BUDGET`` queries of its training
set, a fixed uniform sample (:func:`training_rows`), so its cost does not grow with a subject's
volume; below the budget every query is used.

The surrogates mirror :mod:`audits.simulation.fidelity` (the simulator's measure of what each
attacker actually achieved), so estimates and ground truth are comparable.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from audits.event_source import BATCH_EVENTS, EventSource, as_source
from audits.features import feature_matrix

REFERENCE_ROWS = 4_000
REFERENCE_OVERSAMPLE = 2  # logged reference: sample this many times the rows, then dedupe
PROBA_SAMPLE_ROWS = 50_000  # labelled events read to map probability columns to labels
SCALE_SAMPLE_ROWS = 20_000  # events read for the feature scale when none is given
CURVE_POINTS = 8
BOOTSTRAP = 200
TARGET = 0.9
MIN_CURVE_QUERIES = 20
MAX_BINS = 255  # scikit-learn HistGradientBoosting's default
TRAIN_BUDGET = 20_000
"""The most queries one surrogate trains on (0: no budget). A training set of m queries above it
trains on a uniform sample of exactly ``TRAIN_BUDGET`` of them (:func:`training_rows`); below it,
on all of them. The figure under-estimates the damage only as far as a surrogate's fidelity
still grows past ``TRAIN_BUDGET`` queries."""
DEFAULT_RATE_LIMITS: dict[str, int] = {"minute": 30, "hour": 600, "day": 5_000}
DEFAULT_ROUND_DECIMALS = 1
DEFAULT_NOISE_SCALE = 1.0  # sd of the Gaussian noise on each log-probability
DEFAULT_DEDUP_TOLERANCE = 0.01  # dedup grid side, in reference standard deviations
_PERIOD_SECONDS = {"minute": 60, "hour": 3_600, "day": 86_400}
_BUDGET_STREAM = 0x5EED  # keeps the budget's draws apart from other uses of the seed
_TRAFFIC_COLUMNS = ("event_id", "ts", "user_id", "features", "prediction", "probabilities")


# ---------------------------------------------------------------- damage


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

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci"] = list(self.ci)
        out["curve"] = [list(p) for p in self.curve]
        return out


def _surrogates(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return (
        ("logistic_regression", make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))),
        (
            "gradient_boosting",
            HistGradientBoostingClassifier(
                max_iter=40,
                learning_rate=0.2,
                max_leaf_nodes=15,
                early_stopping=False,
                random_state=seed,
            ),
        ),
    )


def as_labels(values) -> np.ndarray:
    """Labels as text, so logged (``"1"``) and model (``1``) answers compare equal."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    return arr.astype(str)


def _soft_rows(proba: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probability-trained surrogate's training set (soft-label cross-entropy): each query
    (``rows``, an index) once per class it was given probability for, weighted by it."""
    keep = proba > 1e-9
    rows, cls = np.nonzero(keep)
    return rows, columns[cls], proba[rows, cls]


def quantile_edges(X: np.ndarray, max_bins: int = MAX_BINS) -> list[np.ndarray]:
    """Per column of ``X``, the bin thresholds scikit-learn's ``HistGradientBoosting`` finds on
    its rows unweighted: midpoints of the distinct values when there are at most ``max_bins``,
    else quantiles ("averaged_inverted_cdf", as it computes them)."""
    inner = np.linspace(0, 100, max_bins + 1)[1:-1]
    edges = []
    for column in np.asarray(X, dtype=np.float64).T:
        distinct = np.unique(column)
        if len(distinct) <= max_bins:
            edges.append((distinct[:-1] + distinct[1:]) / 2)
        else:
            edges.append(np.unique(np.percentile(column, inner, method="averaged_inverted_cdf")))
    return edges


def to_bins(X: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """``X`` as bin numbers (bin i holds ``edges[i-1] < x <= edges[i]``, as scikit-learn maps
    them), so a ``HistGradientBoosting`` fit finds at most ``MAX_BINS`` distinct values per
    column and keeps them as its bins: the binning is decided here, once, from unweighted rows
    (its weighted quantiles took 0.36 s a fit on 4x the simulated archive's subjects)."""
    columns = [np.searchsorted(e, X[:, j], side="left") for j, e in enumerate(edges)]
    return np.column_stack(columns).astype(np.float64) if columns else np.asarray(X, float)


def _agreement(
    X: np.ndarray,
    y: np.ndarray,
    ref_X: np.ndarray,
    ref_y: np.ndarray,
    seed: int,
    proba: np.ndarray | None = None,
    columns: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """Per reference row, whether the better surrogate agrees with the served answer, and
    that surrogate's name. The surrogates fit the labels ``y``, or, when ``proba`` (columns =
    ``columns``) is given, the served probabilities as soft labels; the gradient-boosting one
    then trains on bins of the queries (:func:`to_bins`)."""
    inputs = {"logistic_regression": (X, ref_X), "gradient_boosting": (X, ref_X)}
    if proba is not None and columns is not None:
        rows, y, w = _soft_rows(proba, columns)
        edges = quantile_edges(X)
        inputs = {
            "logistic_regression": (X[rows], ref_X),
            "gradient_boosting": (to_bins(X, edges)[rows], to_bins(ref_X, edges)),
        }
        target = "probabilities"
    else:
        w, target = None, "labels"
    classes = np.unique(y)
    if len(classes) == 0:
        return np.zeros(len(ref_y), dtype=bool), "none"
    if len(classes) < 2:
        return ref_y == classes[0], "constant"
    best, best_name = None, ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in _surrogates(seed):
            train_X, test_X = inputs[name]
            try:
                if w is None:
                    model.fit(train_X, y)
                elif name == "logistic_regression":
                    model.fit(train_X, y, logisticregression__sample_weight=w)
                else:
                    model.fit(train_X, y, sample_weight=w)
            except ValueError:
                continue
            agree = model.predict(test_X) == ref_y
            if best is None or agree.mean() > best.mean():
                best, best_name = agree, f"{name} ({target})"
    if best is None:
        return np.zeros(len(ref_y), dtype=bool), "none"
    return best, best_name


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
    every query. ``Damage.trained_on`` says how many the full-traffic surrogates used."""
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

    def fidelity_of(k: int) -> tuple[np.ndarray, str]:
        rows = training_rows(np.arange(k), draws, budget)
        return _agreement(X[rows], y[rows], ref_X, ref_y, seed)

    full = training_rows(np.arange(n), draws, budget)
    agree, name = fidelity_of(n)
    fid = round(float(agree.mean()), 4)
    soft = None
    if proba is not None:
        soft_agree = _agreement(X[full], y[full], ref_X, ref_y, seed, proba[full], columns)[0]
        soft = round(float(soft_agree.mean()), 4)
    curve: list[tuple[int, float]] = []
    for k in curve_sizes(n, curve_points):
        value = fid if k == n else round(float(fidelity_of(k)[0].mean()), 4)
        curve.append((k, value))
    reached = _queries_to(curve, target, fidelity_of)
    ci = bootstrap_ci(agree, resamples=resamples, seed=seed)
    return Damage(fid, ci, curve, reached, n, name, soft, len(full))


@dataclass(frozen=True)
class SubjectTask:
    """What every subject's estimate shares: the reference, the probability columns, the
    training budget and, for the replays, the defences and the legitimate users' costs."""

    reference_X: np.ndarray
    reference_y: np.ndarray
    columns: np.ndarray | None
    seed: int
    budget: int
    defences: Mapping
    legit: LegitCosts | None

    def estimate(self, t: Traffic, replay: bool) -> tuple[Damage, dict | None]:
        """One subject's damage and, when ``replay``, its defence replay."""
        damage = damage_of_traffic(
            t,
            self.reference_X,
            self.reference_y,
            columns=self.columns,
            seed=self.seed,
            budget=self.budget,
        )
        if not replay:
            return damage, None
        result = replay_defences(
            t,
            self.legit,
            self.reference_X,
            self.reference_y,
            columns=self.columns,
            baseline=damage.fidelity,
            soft_baseline=damage.fidelity_probabilities,
            budget=self.budget,
            **self.defences,
        )
        return damage, result


def estimate_subjects(
    task: SubjectTask, subjects: Iterable[tuple[object, Traffic, bool]], workers: int = 1
) -> Iterator[tuple[object, Damage, dict | None]]:
    """``(key, damage, replay)`` for each ``(key, traffic, replay?)`` in order, on one BLAS
    thread per process. With ``workers`` > 1 the subjects are estimated in that many
    processes, at most ``workers`` subjects' traffic in flight at a time (so memory stays a
    few subjects'); the results are the same, since every subject's draws are its own."""
    if workers <= 1:
        with threadpool_limits(1):
            for key, t, replay in subjects:
                yield key, *task.estimate(t, replay)
        return
    context = multiprocessing.get_context("spawn")  # no fork of DuckDB's and Polars' threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        pending: deque = deque()
        for key, t, replay in subjects:
            pending.append((key, pool.submit(task.estimate, t, replay)))
            if len(pending) >= workers:
                done_key, future = pending.popleft()
                yield done_key, *future.result()
        while pending:
            done_key, future = pending.popleft()
            yield done_key, *future.result()


def _one_thread() -> None:
    """One thread per worker for its lifetime: the processes are the parallelism (OpenMP
    threads spinning beside another process's on the same cores slow both many times over).
    The limit holds for libraries already loaded, so scikit-learn's OpenMP is loaded first."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: F401

    threadpool_limits(1)


def default_workers() -> int:
    """One process per core this process may use, at most 4."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(4, len(usable) if usable else os.cpu_count() or 1))


def _queries_to(curve, target, fidelity_of, steps: int = 3) -> int | None:
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
        if fidelity_of(mid)[0].mean() >= target:
            hi = mid
        else:
            lo = mid
    return int(hi)


# ---------------------------------------------------------------- events -> arrays


def proba_columns(
    events: pl.DataFrame | EventSource, *, rows: int = PROBA_SAMPLE_ROWS, seed: int = 0
) -> np.ndarray | None:
    """The label each probability column stands for: for column k, the logged prediction
    most often seen where column k is the largest (``None`` when no probabilities), read from
    a sample of ``rows`` labelled events (a frame or an event source)."""
    sample = as_source(events).sample(rows, seed=seed, labelled=True)
    if "probabilities" not in sample.columns:
        return None
    found = sample.filter(
        pl.col("probabilities").is_not_null() & pl.col("prediction").is_not_null()
    ).select(
        pl.col("probabilities").list.arg_max().alias("k"),
        pl.col("probabilities").list.len().alias("width"),
        "prediction",
    )
    if found.height == 0:
        return None
    width = int(found["width"].max())
    top = (
        found.group_by("k", "prediction")
        .len()
        .sort("len", descending=True)
        .unique("k", keep="first")
    )
    mapping = dict(zip(top["k"].to_list(), top["prediction"].to_list(), strict=True))
    # columns never the largest: the classes in sorted order that no column took yet
    rest = iter(sorted(set(found["prediction"].unique().to_list()) - set(mapping.values())))
    labels = [mapping.get(k) or next(rest, f"class_{k}") for k in range(width)]
    return np.asarray(labels, dtype=str)


@dataclass
class Traffic:
    """One subject's (or one batch of users') logged traffic as arrays, in time order."""

    X: np.ndarray
    y: np.ndarray
    proba: np.ndarray | None
    ts_s: np.ndarray  # seconds since the epoch
    user: np.ndarray
    key: np.ndarray  # the user as a dense integer code (hashing ints is cheap, strings not)
    costs: dict = field(default_factory=dict, repr=False)  # LegitCosts per DefenceSettings


def traffic(events: pl.DataFrame, width: int | None = None) -> Traffic:
    """``events`` (any users) in time order as arrays; rows without a logged prediction (and
    features of another width than ``width``) are left out, since the subject learnt nothing
    from them. Probabilities are kept when every row has them, all of one width."""
    wanted = [c for c in _TRAFFIC_COLUMNS if c in events.columns]
    ev = events.select(wanted).filter(pl.col("prediction").is_not_null()).sort("ts", "event_id")
    if width is not None and ev.height:
        ev = ev.filter(pl.col("features").list.len() == width)
    X = feature_matrix(ev["features"]) if ev.height else np.zeros((0, width or 0))
    ts = ev["ts"].dt.epoch("ms").to_numpy().astype(np.float64) / 1000.0
    y = ev["prediction"].to_numpy().astype(str)
    key = ev["user_id"].rank("dense").to_numpy().astype(np.int64)
    return Traffic(X, y, _probabilities(ev), ts, ev["user_id"].to_numpy(), key)


def _probabilities(ev: pl.DataFrame) -> np.ndarray | None:
    """The probabilities as an (n, k) array when every row has them, all of one width."""
    if "probabilities" not in ev.columns or ev.height == 0:
        return None
    column = ev["probabilities"]
    if column.null_count() or column.list.len().n_unique() != 1:
        return None
    return feature_matrix(column)


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


def damage_of_events(
    events: pl.DataFrame,
    reference_X: np.ndarray,
    reference_y: np.ndarray,
    *,
    columns: np.ndarray | None = None,
    seed: int = 0,
    **kwargs,
) -> Damage:
    """:func:`estimate_damage` over a subject's logged events (one key or a group's union)."""
    width = reference_X.shape[1] if reference_X.ndim == 2 else None
    return damage_of_traffic(
        traffic(events, width), reference_X, reference_y, columns=columns, seed=seed, **kwargs
    )


def logged_reference(
    events: pl.DataFrame | EventSource,
    exclude: Iterable[str],
    *,
    rows: int = REFERENCE_ROWS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference inputs when no ``--reference`` and model are given: up to ``rows`` distinct
    queries (with their logged answers, the served model's) from a seeded sample of
    ``REFERENCE_OVERSAMPLE`` x ``rows`` labelled events of users not in ``exclude``."""
    sample = as_source(events).sample(
        REFERENCE_OVERSAMPLE * rows, seed=seed, exclude=sorted(set(exclude)), labelled=True
    )
    ev = sample.unique("features", keep="first", maintain_order=True).head(rows)
    if ev.height == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype=str)
    return feature_matrix(ev["features"]), ev["prediction"].to_numpy().astype(str)


# ---------------------------------------------------------------- groups


def _subnet(ip: str | None) -> str | None:
    if not ip:
        return None
    parts = ip.split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    return ".".join(parts[:3]) + ".0/24"


@dataclass
class _Profile:
    ips: set
    subnets: set
    hours: set
    days: set
    mean: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    n: int


def _profile(events: pl.DataFrame, scale: np.ndarray) -> _Profile:
    """One key's profile from its own events."""
    X = feature_matrix(events["features"]) / scale
    ips = set(events["source_ip"].drop_nulls().unique().to_list())
    return _Profile(
        ips=ips,
        subnets={s for s in (_subnet(ip) for ip in ips) if s},
        hours=set(events["ts"].dt.truncate("1h").unique().to_list()),
        days=set(events["day"].unique().to_list()),
        mean=np.median(X, axis=0),
        q_lo=np.quantile(X, 0.1, axis=0),
        q_hi=np.quantile(X, 0.9, axis=0),
        n=len(X),
    )


def _profiles(
    source: EventSource, users: Iterable[str], scale: np.ndarray, max_events: int
) -> dict[str, _Profile]:
    """The profile of each of ``users`` with events, reading a batch of whole users at a time."""
    out: dict[str, _Profile] = {}
    for batch in source.batches(users, max_events=max_events):
        for (uid,), part in batch.group_by("user_id"):
            out[uid] = _profile(part, scale)
    return out


def feature_scale(events: pl.DataFrame | EventSource, rows: int = SCALE_SAMPLE_ROWS) -> np.ndarray:
    """Each feature's standard deviation over a seeded sample of ``rows`` events."""
    sample = as_source(events).sample(rows, seed=0)
    if sample.height == 0:
        return np.ones(1)
    return feature_matrix(sample["features"]).std(axis=0)


def pair_evidence(a: _Profile, b: _Profile) -> dict[str, float]:
    """How strongly two keys look like one client, each in [0, 1]: network (shared address 1,
    shared /24 0.5), co-activity (Jaccard of active hours), distribution similarity (median
    over features of the location gap in reference units), complementary coverage (the
    strongest one-feature split of otherwise overlapping ranges)."""
    network = 1.0 if a.ips & b.ips else 0.5 if a.subnets & b.subnets else 0.0
    union = len(a.hours | b.hours)
    coactive = len(a.hours & b.hours) / union if union else 0.0
    gap = np.abs(a.mean - b.mean)
    similar = float(math.exp(-2.0 * float(np.median(gap))))
    lo, hi = np.maximum(a.q_lo, b.q_lo), np.minimum(a.q_hi, b.q_hi)
    width = np.maximum(np.minimum(a.q_hi - a.q_lo, b.q_hi - b.q_lo), 1e-9)
    overlap = np.clip((hi - lo) / width, 0.0, 1.0)
    complementary = float(1.0 - overlap.min()) * float(np.median(overlap))
    return {
        "network": network,
        "coactive": coactive,
        "similar": similar,
        "complementary": complementary,
    }


def linked(e: Mapping[str, float], *, same_day: bool) -> bool:
    """The linking rule: a shared address; or a shared /24, a common day and a behavioural
    match (co-activity or similar distribution); or, without any network link, all three
    behavioural signals together (co-active, similar, complementary)."""
    behaviour = (e["coactive"] + e["similar"] + e["complementary"]) / 3.0
    if e["network"] >= 1.0:
        return True
    if e["network"] >= 0.5:
        return same_day and (e["coactive"] >= 0.3 or e["similar"] >= 0.6)
    return (
        e["coactive"] >= 0.5
        and e["similar"] >= 0.6
        and e["complementary"] >= 0.6
        and behaviour >= 0.6
    )


def link_groups(
    events: pl.DataFrame | EventSource,
    suspects: Iterable[str],
    *,
    existing: Mapping[str, str | None] | None = None,
    scale: np.ndarray | None = None,
    max_events: int = BATCH_EVENTS,
) -> dict[str, str]:
    """``{user_id: group_id}`` for the ``suspects`` that belong to a group of two or more
    linked keys (connected components of :func:`linked` pairs). A component that is exactly
    one of the ``existing`` groups (``{user_id: group_id}`` of every user, e.g. the /24 rule's)
    keeps that id; any other gets ``link:<hash of its members>``. ``events`` is a frame or an
    event source: each suspect's profile comes from its own events, read a batch of whole
    suspects (about ``max_events`` events) at a time; ``scale`` (per-feature sd) defaults to a
    sample's (:func:`feature_scale`)."""
    users = sorted(set(suspects))
    if len(users) < 2:
        return {}
    source = as_source(events)
    scale = feature_scale(source) if scale is None else np.asarray(scale, dtype=np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    prof = _profiles(source, users, scale, max_events)
    users = [u for u in users if u in prof]
    parent = {u: u for u in users}

    def find(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for i, a in enumerate(users):
        for b in users[i + 1 :]:
            pa, pb = prof[a], prof[b]
            e = pair_evidence(pa, pb)
            if linked(e, same_day=bool(pa.days & pb.days)):
                parent[find(a)] = find(b)
    components: dict[str, list[str]] = {}
    for u in users:
        components.setdefault(find(u), []).append(u)
    existing = existing or {}
    members_of: dict[str, set[str]] = {}
    for uid, gid in existing.items():
        if gid:
            members_of.setdefault(gid, set()).add(uid)
    out: dict[str, str] = {}
    for members in components.values():
        if len(members) < 2:
            continue
        ids = {existing.get(m) for m in members}
        gid = next(iter(ids)) if len(ids) == 1 else None
        if gid is None or members_of.get(gid) != set(members):
            digest = hashlib.sha256(",".join(sorted(members)).encode()).hexdigest()[:12]
            gid = f"link:{digest}"
        for m in members:
            out[m] = gid
    return out


# ---------------------------------------------------------------- defence replay


def _hashable(keys) -> np.ndarray:
    """Keys as integers when they are (cheap to hash), else as text."""
    keys = np.asarray(keys)
    return keys if keys.dtype.kind in "iu" else keys.astype(str)


def rate_limit_mask(ts_s: np.ndarray, keys: np.ndarray, limit: int, period_s: float) -> np.ndarray:
    """Which queries a per-key limit of ``limit`` per fixed ``period_s`` window would let
    through (rejected queries do not count against the limit)."""
    n = len(ts_s)
    if n == 0 or limit <= 0:
        return np.zeros(n, dtype=bool) if limit <= 0 else np.ones(n, dtype=bool)
    bucket = np.floor(ts_s / period_s).astype(np.int64)
    frame = pl.DataFrame({"i": np.arange(n), "k": _hashable(keys), "b": bucket, "t": ts_s})
    rank = frame.sort("t", "i").with_columns(pl.int_range(pl.len()).over("k", "b").alias("r"))
    keep = np.zeros(n, dtype=bool)
    keep[rank["i"].to_numpy()] = rank["r"].to_numpy() < limit
    return keep


def _apply_limits(t: Traffic, limits: Mapping[str, int]) -> np.ndarray:
    keep = np.ones(len(t.ts_s), dtype=bool)
    for period, limit in limits.items():
        idx = np.nonzero(keep)[0]
        sub = rate_limit_mask(t.ts_s[idx], t.key[idx], int(limit), _PERIOD_SECONDS[period])
        keep[idx[~sub]] = False
    return keep


def randomise_probabilities(
    proba: np.ndarray,
    *,
    scale: float = DEFAULT_NOISE_SCALE,
    seed: int = 0,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """Randomised responses that keep every answer's top-1 class: Gaussian noise of standard
    deviation ``scale`` added to each log-probability, renormalised (a softmax), and where the
    noise made another class the largest, that value and the original top class's swapped back.
    Labels never change; the probabilities an attacker could train on are blurred, by a factor
    of about ``exp(+-scale)`` each. The same ``seed`` gives the same answers. With ``keys`` (one
    per row, rows in time order) each key's rows get the noise of their own generator, seeded
    by ``seed`` and the key, so a key's answers do not depend on the other keys randomised with
    it (batches of whole keys give the answers of one pass). (Chosen over reverse-sigmoid
    poisoning because its cost to users is easy to state and to bound.)"""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.size == 0 or scale <= 0:
        return p.copy()
    if keys is None:
        noise = np.random.default_rng(seed).standard_normal(p.shape)
    else:
        noise = _per_key_normals(np.asarray(keys), p.shape[1], seed)
    logits = np.log(np.clip(p, 1e-12, None)) + scale * noise
    out = np.exp(logits - logits.max(axis=1, keepdims=True))
    out /= out.sum(axis=1, keepdims=True)
    top, now = p.argmax(axis=1), out.argmax(axis=1)
    rows = np.nonzero(top != now)[0]
    kept = out[rows, top[rows]].copy()
    out[rows, top[rows]] = out[rows, now[rows]]
    out[rows, now[rows]] = kept
    return out


def _per_key_normals(keys: np.ndarray, width: int, seed: int) -> np.ndarray:
    """Standard normals, ``width`` per row; each key's rows, in order, from a generator seeded
    by ``seed`` and the key's CRC-32."""
    names, codes = np.unique(keys.astype(str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    out = np.empty((len(keys), width))
    for i, name in enumerate(names):
        rows = order[bounds[i] : bounds[i + 1]]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[rows] = rng.standard_normal((len(rows), width))
    return out


def duplicate_queries(
    X: np.ndarray,
    keys: np.ndarray,
    *,
    tolerance: float = DEFAULT_DEDUP_TOLERANCE,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What a per-key deduplicating cache would have answered from the cache (rows in time
    order): a query is a duplicate when an earlier query of the same key fell in the same cell
    of a grid of side ``tolerance`` x the feature's standard deviation ``scale`` on every
    feature (``tolerance`` 0: identical features). The cache answers it with the answer of the
    first query of that cell, so it brings the key nothing new. Returns ``(is_duplicate,
    source)``: ``source[i]`` is the index of the query whose answer query ``i`` gets (``i``
    itself when it is not a duplicate)."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    if tolerance > 0:
        s = np.ones(X.shape[1]) if scale is None else np.asarray(scale, dtype=np.float64)
        s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
        cells = np.floor(X / (tolerance * s)).astype(np.int64)
    else:
        cells = (X + 0.0).view(np.int64)  # + 0.0 makes -0.0 and 0.0 one value
    cell_columns = [f"c{j}" for j in range(cells.shape[1])]
    frame = pl.DataFrame(
        {"key": _hashable(keys), **dict(zip(cell_columns, cells.T, strict=True))}
    ).with_row_index("row")
    # the first (lowest) row of each (key, cell): a hash group-by, not a sort of whole rows
    first = frame.select(pl.col("row").min().over("key", *cell_columns))["row"]
    source = first.to_numpy().astype(np.int64)
    return source != np.arange(n), source


def rate_limits_of(rate_limits: Mapping[str, int] | None) -> dict[str, int]:
    """The per-key limits to replay (``None``: the defaults); unknown periods are an error."""
    limits = dict(DEFAULT_RATE_LIMITS if rate_limits is None else rate_limits)
    unknown = set(limits) - set(_PERIOD_SECONDS)
    if unknown:
        raise ValueError(f"unknown rate-limit periods {sorted(unknown)}: use minute/hour/day")
    return {period: int(limit) for period, limit in limits.items()}


def _scenarios(limits: Mapping[str, int]) -> list[tuple[dict[str, int], str]]:
    """Each limit alone (``per_<period>``) and, with more than one, all together."""
    out = [({p: limit}, f"per_{p}") for p, limit in limits.items()]
    if len(limits) > 1:
        out.append((dict(limits), "combined"))
    return out


@dataclass(frozen=True)
class DefenceSettings:
    """The defences a replay applies: per-key rate limits (``(period, limit)`` pairs), the
    rounding decimals, the randomisation noise, the dedup tolerance and grid ``scale`` (per-
    feature sd, ``None``: 1) and the seed."""

    limits: tuple[tuple[str, int], ...]
    round_decimals: int = DEFAULT_ROUND_DECIMALS
    noise_scale: float = DEFAULT_NOISE_SCALE
    dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE
    scale: tuple[float, ...] | None = None
    seed: int = 0

    @classmethod
    def of(
        cls,
        rate_limits: Mapping[str, int] | None = None,
        round_decimals: int = DEFAULT_ROUND_DECIMALS,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE,
        scale: np.ndarray | None = None,
        seed: int = 0,
    ) -> DefenceSettings:
        return cls(
            tuple(rate_limits_of(rate_limits).items()),
            int(round_decimals),
            float(noise_scale),
            float(dedup_tolerance),
            None if scale is None else tuple(float(v) for v in np.asarray(scale).ravel()),
            int(seed),
        )

    def grid_scale(self) -> np.ndarray | None:
        return None if self.scale is None else np.asarray(self.scale, dtype=np.float64)


@dataclass
class LegitCosts:
    """What each defence would have cost the legitimate users of a window under ``settings``:
    counts and sums over their labelled traffic. Rate limits and deduplication act per key,
    rounding and randomisation per response (randomised per key, :func:`randomise_probabilities`
    with ``keys``), so the figures of batches of whole users add up (:meth:`add`) to those of
    one pass over all of them."""

    settings: DefenceSettings
    users: int = 0
    responses: int = 0
    proba_widths: set[int] = field(default_factory=set)  # per batch; 0: one without
    rounded: int = 0
    randomised: int = 0
    labels_changed: int = 0
    abs_change: float = 0.0  # sum of |randomised - served| over every probability
    entries: int = 0  # probabilities summed in abs_change
    duplicates: int = 0
    near_duplicates: int = 0
    near_flipped: int = 0
    near_users: int = 0
    blocked: dict[str, int] = field(default_factory=dict)  # per rate-limit scenario
    blocked_users: dict[str, int] = field(default_factory=dict)

    @property
    def has_probabilities(self) -> bool:
        """Whether every response showed probabilities of one width (as one pass sees it)."""
        return self.responses > 0 and len(self.proba_widths) == 1 and 0 not in self.proba_widths

    def add(self, t: Traffic) -> None:
        """Add the costs on ``t``, the traffic of whole users not added before."""
        if len(t.y) == 0:
            return
        self.users += len(np.unique(t.key))
        self.responses += len(t.y)
        self.proba_widths.add(0 if t.proba is None else t.proba.shape[1])
        if t.proba is not None:
            self._add_output_costs(t.proba, t.user)
        self._add_dedup_costs(t)
        for chosen, name in _scenarios(dict(self.settings.limits)):
            out = ~_apply_limits(t, chosen)
            self.blocked[name] = self.blocked.get(name, 0) + int(out.sum())
            self.blocked_users[name] = self.blocked_users.get(name, 0) + len(np.unique(t.key[out]))

    def _add_output_costs(self, proba: np.ndarray, users: np.ndarray) -> None:
        s = self.settings
        self.rounded += int(
            (np.abs(np.round(proba, s.round_decimals) - proba) > 0).any(axis=1).sum()
        )
        noisy = randomise_probabilities(proba, scale=s.noise_scale, seed=s.seed + 1, keys=users)
        change = np.abs(noisy - proba)
        self.labels_changed += int((noisy.argmax(axis=1) != proba.argmax(axis=1)).sum())
        self.randomised += int((change > 1e-9).any(axis=1).sum())
        self.abs_change += float(change.sum())
        self.entries += change.size

    def _add_dedup_costs(self, t: Traffic) -> None:
        s = self.settings
        dup, source = duplicate_queries(
            t.X, t.key, tolerance=s.dedup_tolerance, scale=s.grid_scale()
        )
        # an exact repeat gets the answer it would have got; a near one gets its neighbour's
        near = dup & np.any(t.X[source] != t.X, axis=1)
        self.duplicates += int(dup.sum())
        self.near_duplicates += int(near.sum())
        self.near_flipped += int((near & (t.y[source] != t.y)).sum())
        self.near_users += len(np.unique(t.key[near]))

    def rate_limit(self, name: str) -> dict:
        """The legitimate cost of one rate-limit scenario (``per_minute``, ``combined``, ...)."""
        return {
            "legit_blocked": self.blocked.get(name, 0),
            "legit_users_affected": self.blocked_users.get(name, 0),
            "legit_users": self.users,
        }

    def outputs(self) -> dict:
        """The legitimate cost of top-1 labels, rounding and randomisation."""
        p = self.has_probabilities
        mean_change = round(self.abs_change / self.entries, 6) if p and self.entries else 0.0
        return {
            "top1_changed": self.responses if p else 0,
            "top1_users": self.users if p else 0,
            "rounding_changed": self.rounded if p else 0,
            "randomisation": {
                "legit_responses_changed": self.randomised if p else 0,
                "legit_labels_changed": self.labels_changed if p else 0,
                "legit_mean_abs_change": mean_change,
            },
        }

    def dedup(self) -> dict:
        return {
            "legit_duplicates": self.duplicates,
            "legit_queries_affected": self.near_duplicates,
            "legit_labels_changed": self.near_flipped,
            "legit_users_affected": self.near_users,
        }


def legit_costs(
    events: pl.DataFrame | EventSource | Traffic,
    *,
    rate_limits: Mapping[str, int] | None = None,
    round_decimals: int = DEFAULT_ROUND_DECIMALS,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE,
    scale: np.ndarray | None = None,
    seed: int = 0,
    width: int | None = None,
    exclude: Iterable[str] = (),
    max_events: int = BATCH_EVENTS,
) -> LegitCosts:
    """What each defence would have cost the legitimate users: the users of ``events`` (a
    frame or an event source) not in ``exclude``, read a batch of whole users (about
    ``max_events`` events) at a time, so memory follows the batch; the sums equal one pass's.
    A :func:`traffic` is costed as it is and keeps the result for the next call."""
    settings = DefenceSettings.of(
        rate_limits, round_decimals, noise_scale, dedup_tolerance, scale, seed
    )
    return _costs_of(events, settings, width, exclude, max_events)


def _costs_of(
    events: pl.DataFrame | EventSource | Traffic,
    settings: DefenceSettings,
    width: int | None,
    exclude: Iterable[str] = (),
    max_events: int = BATCH_EVENTS,
) -> LegitCosts:
    if isinstance(events, Traffic):
        return _traffic_costs(events, settings)
    source = as_source(events)
    skip = set(exclude)
    costs = LegitCosts(settings)
    users = [u for u in source.user_counts() if u not in skip]
    for batch in source.batches(users, max_events=max_events):
        legit = traffic(batch, width)
        del batch  # the frame goes before the costs take their own memory
        costs.add(legit)
    return costs


def _traffic_costs(legit: Traffic, settings: DefenceSettings) -> LegitCosts:
    if settings not in legit.costs:
        costs = LegitCosts(settings)
        costs.add(legit)
        legit.costs[settings] = costs
    return legit.costs[settings]


def _legit_of(legit, settings: DefenceSettings, width: int | None) -> LegitCosts:
    """``legit`` (costs, a traffic, a frame or an event source) as costs under ``settings``."""
    if not isinstance(legit, LegitCosts):
        return _costs_of(legit, settings, width)
    if legit.settings != settings:
        raise ValueError("the legitimate costs were computed for other defence settings")
    return legit


def replay_defences(
    subject_events: pl.DataFrame | Traffic,
    legit_events: pl.DataFrame | EventSource | Traffic | LegitCosts,
    reference_X: np.ndarray,
    reference_y: np.ndarray,
    *,
    columns: np.ndarray | None = None,
    rate_limits: Mapping[str, int] | None = None,
    round_decimals: int = DEFAULT_ROUND_DECIMALS,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE,
    baseline: float | None = None,
    soft_baseline: float | None = None,
    seed: int = 0,
    budget: int = TRAIN_BUDGET,
) -> dict:
    """What each defence would have done to one subject (its events or :func:`traffic`; a key
    or a group's keys, each limited separately) and what it would have cost the legitimate
    users over the same window: ``legit_events`` as events, an event source, a traffic (which
    keeps its costs for the next replay) or :func:`legit_costs` computed once for the same
    settings (``scale``: the reference's sd). Per rate limit (and all together) the queries
    blocked and the fidelity the subject would have reached; for top-1 labels, rounded and
    randomised probabilities the fidelity and the legitimate responses changed; for
    deduplication the fidelity from the subject's non-duplicate queries and the legitimate
    queries answered from a neighbour. Every surrogate trains on at most ``budget`` queries of
    what the defence let through (:func:`training_rows`). ``baseline`` and ``soft_baseline``:
    the label- and probability-trained fidelities on all the traffic when already known (the
    subject's :class:`Damage` with the same seed and budget), which spares two refits."""
    limits = rate_limits_of(rate_limits)
    width = reference_X.shape[1] if reference_X.ndim == 2 else None
    t = subject_events if isinstance(subject_events, Traffic) else traffic(subject_events, width)
    scale = reference_X.std(axis=0) if reference_X.ndim == 2 and len(reference_X) else None
    settings = DefenceSettings.of(limits, round_decimals, noise_scale, dedup_tolerance, scale, seed)
    legit = _legit_of(legit_events, settings, width)
    use_proba = t.proba is not None and columns is not None and t.proba.shape[1] == len(columns)
    draws = budget_draws(len(t.y), seed)

    def fid(mask: np.ndarray, proba: np.ndarray | None = None) -> float:
        rows = training_rows(np.flatnonzero(mask), draws, budget)
        if len(rows) == 0:
            return 0.0
        p = proba[rows] if proba is not None else None
        agree, _ = _agreement(t.X[rows], t.y[rows], reference_X, reference_y, seed, p, columns)
        return round(float(agree.mean()), 4)

    everything = np.ones(len(t.y), dtype=bool)
    base = baseline if baseline is not None else fid(everything)
    soft_base = None
    if use_proba:
        soft_base = soft_baseline if soft_baseline is not None else fid(everything, t.proba)
    outputs = legit.outputs()
    out: dict = {
        "queries": int(len(t.y)),
        "trained_on": int(len(training_rows(np.arange(len(t.y)), draws, budget))),
        "fidelity": base,
        "fidelity_probabilities": soft_base,
        "rate_limit": {},
    }
    for chosen, name in _scenarios(limits):
        keep = _apply_limits(t, chosen)
        blocked = int((~keep).sum())
        out["rate_limit"][name] = {
            "limits": {f"per_{p}": int(v) for p, v in chosen.items()},
            "blocked": blocked,
            "fidelity": base if blocked == 0 else fid(keep),
            **legit.rate_limit(name),
        }
    # top-1: the attacker keeps only labels: the label-trained surrogate is what is left
    out["top1"] = {
        "fidelity": base,
        "fidelity_without": soft_base if soft_base is not None else base,
        "legit_responses_changed": outputs["top1_changed"],
        "legit_users_affected": outputs["top1_users"],
    }
    out["rounding"] = {
        "decimals": int(round_decimals),
        "fidelity": fid(everything, np.round(t.proba, round_decimals)) if use_proba else base,
        "fidelity_without": soft_base if soft_base is not None else base,
        "legit_responses_changed": outputs["rounding_changed"],
    }
    # randomisation keeps labels: the label-trained surrogate is unchanged (``fidelity_labels``)
    noisy = randomise_probabilities(t.proba, scale=noise_scale, seed=seed) if use_proba else None
    out["randomisation"] = {
        "scale": float(noise_scale),
        "seed": int(seed),
        "fidelity": fid(everything, noisy) if use_proba else base,
        "fidelity_without": soft_base if soft_base is not None else base,
        "fidelity_labels": base,
        **outputs["randomisation"],
    }
    dup, _ = duplicate_queries(t.X, t.key, tolerance=dedup_tolerance, scale=scale)
    out["dedup"] = {
        "tolerance": float(dedup_tolerance),
        "duplicates": int(dup.sum()),
        "fidelity": base if not dup.any() else fid(~dup),
        **legit.dedup(),
    }
    return out
