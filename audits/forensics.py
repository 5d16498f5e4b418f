"""Forensics: how much of the model a flagged user or group obtained, which keys act as one,
and what a defence would have changed.

- :func:`estimate_damage` trains the surrogates an attacker could have trained (a logistic
  regression and a gradient-boosting model, the better one kept) on exactly the (query,
  response) pairs the logs show the subject received, and measures their agreement with the
  served model on reference inputs (fidelity), with a bootstrap interval, a curve of fidelity
  against the number of queries in time order and the queries it took to reach 90%.
- :func:`link_groups` links keys that behave as one client: a shared source address or /24,
  activity in the same hours, similar query distributions and complementary coverage.
- :func:`replay_defences` re-runs the damage estimate on what a per-key rate limit, output
  minimisation (top-1 labels, rounded probabilities), response randomisation
  (:func:`randomise_probabilities`) or query deduplication (:func:`duplicate_queries`) would
  have let through, and counts what the same defence would have cost legitimate users over the
  same window.

The surrogates mirror :mod:`audits.simulation.fidelity` (the simulator's measure of what each
attacker actually achieved), so estimates and ground truth are comparable.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

REFERENCE_ROWS = 4_000
CURVE_POINTS = 8
BOOTSTRAP = 200
TARGET = 0.9
MIN_CURVE_QUERIES = 20
DEFAULT_RATE_LIMITS: dict[str, int] = {"minute": 30, "hour": 600, "day": 5_000}
DEFAULT_ROUND_DECIMALS = 1
DEFAULT_NOISE_SCALE = 1.0  # sd of the Gaussian noise on each log-probability
DEFAULT_DEDUP_TOLERANCE = 0.01  # dedup grid side, in reference standard deviations
_PERIOD_SECONDS = {"minute": 60, "hour": 3_600, "day": 86_400}


# ---------------------------------------------------------------- damage


@dataclass
class Damage:
    """A subject's estimated damage: ``fidelity`` of the better label-trained surrogate on the
    reference inputs (the simulator's measure of what an attacker achieved), its 95% bootstrap
    interval, ``curve`` = [(n_queries, fidelity)] over the first n queries in time order, the
    queries it took to reach 90% (``None`` if never), and, when the logs show probabilities,
    ``fidelity_probabilities``: the same surrogates trained on the served probabilities."""

    fidelity: float
    ci: tuple[float, float]
    curve: list[tuple[int, float]] = field(default_factory=list)
    queries_to_90: int | None = None
    queries: int = 0
    surrogate: str = ""
    fidelity_probabilities: float | None = None

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


def _soft_rows(
    X: np.ndarray, proba: np.ndarray, columns: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query repeated once per class it was given probability for, weighted by it: the
    probability-trained surrogate's training set (soft-label cross-entropy)."""
    keep = proba > 1e-9
    rows, cls = np.nonzero(keep)
    return X[rows], columns[cls], proba[rows, cls]


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
    ``columns``) is given, the served probabilities as soft labels."""
    if proba is not None and columns is not None:
        X, y, w = _soft_rows(X, proba, columns)
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
            try:
                if w is None:
                    model.fit(X, y)
                elif name == "logistic_regression":
                    model.fit(X, y, logisticregression__sample_weight=w)
                else:
                    model.fit(X, y, sample_weight=w)
            except ValueError:
                continue
            agree = model.predict(ref_X) == ref_y
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
) -> Damage:
    """The damage of one subject from its queries ``features`` (rows in time order) and the
    served labels ``answers``; ``probabilities`` (columns = ``proba_classes``) when the logs
    show them. ``reference_y`` is the served model's answer on each ``reference_X`` row."""
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

    def fidelity_of(k: int) -> tuple[np.ndarray, str]:
        return _agreement(X[:k], y[:k], ref_X, ref_y, seed)

    agree, name = fidelity_of(n)
    fid = round(float(agree.mean()), 4)
    soft = None
    if proba is not None:
        soft = round(float(_agreement(X, y, ref_X, ref_y, seed, proba, columns)[0].mean()), 4)
    curve: list[tuple[int, float]] = []
    for k in curve_sizes(n, curve_points):
        value = fid if k == n else round(float(fidelity_of(k)[0].mean()), 4)
        curve.append((k, value))
    reached = _queries_to(curve, target, fidelity_of)
    ci = bootstrap_ci(agree, resamples=resamples, seed=seed)
    return Damage(fid, ci, curve, reached, n, name, soft)


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


def proba_columns(events: pl.DataFrame) -> np.ndarray | None:
    """The label each probability column stands for: for column k, the logged prediction
    most often seen where column k is the largest (``None`` when no probabilities)."""
    if "probabilities" not in events.columns:
        return None
    rows = events.filter(
        pl.col("probabilities").is_not_null() & pl.col("prediction").is_not_null()
    ).select(
        pl.col("probabilities").list.arg_max().alias("k"),
        pl.col("probabilities").list.len().alias("width"),
        "prediction",
    )
    if rows.height == 0:
        return None
    width = int(rows["width"].max())
    top = (
        rows.group_by("k", "prediction")
        .len()
        .sort("len", descending=True)
        .unique("k", keep="first")
    )
    mapping = dict(zip(top["k"].to_list(), top["prediction"].to_list(), strict=True))
    # columns never the largest: the classes in sorted order that no column took yet
    rest = iter(sorted(set(rows["prediction"].unique().to_list()) - set(mapping.values())))
    labels = [mapping.get(k) or next(rest, f"class_{k}") for k in range(width)]
    return np.asarray(labels, dtype=str)


@dataclass
class Traffic:
    """One subject's logged traffic as arrays, in time order."""

    X: np.ndarray
    y: np.ndarray
    proba: np.ndarray | None
    ts_s: np.ndarray  # seconds since the epoch
    user: np.ndarray
    costs: dict = field(default_factory=dict, repr=False)  # defence costs, computed once


def traffic(events: pl.DataFrame, width: int | None = None) -> Traffic:
    """``events`` (any users) in time order as arrays; rows without a logged prediction (and
    probabilities of the wrong width) are left out, since the subject learnt nothing from them."""
    ev = events.filter(pl.col("prediction").is_not_null()).sort("ts", "event_id")
    if width is not None and ev.height:
        ev = ev.filter(pl.col("features").list.len() == width)
    X = (
        np.asarray(ev["features"].to_list(), dtype=np.float64)
        if ev.height
        else np.zeros((0, width or 0))
    )
    proba = None
    if "probabilities" in ev.columns and ev.height and ev["probabilities"].null_count() == 0:
        lengths = ev["probabilities"].list.len()
        if lengths.n_unique() == 1:
            proba = np.asarray(ev["probabilities"].to_list(), dtype=np.float64)
    ts = (
        ev["ts"].dt.epoch("ms").to_numpy().astype(np.float64) / 1000.0 if ev.height else np.zeros(0)
    )
    return Traffic(X, ev["prediction"].to_numpy().astype(str), proba, ts, ev["user_id"].to_numpy())


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
    t = traffic(events, reference_X.shape[1] if reference_X.ndim == 2 else None)
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


def logged_reference(
    events: pl.DataFrame, exclude: Iterable[str], *, rows: int = REFERENCE_ROWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Reference inputs when no ``--reference`` and model are given: a sample of the logged
    traffic of users not in ``exclude`` (the logged responses are the served model's answers),
    one row per distinct query."""
    ev = events.filter(
        ~pl.col("user_id").is_in(list(exclude)) & pl.col("prediction").is_not_null()
    ).unique("features", keep="first", maintain_order=True)
    if ev.height > rows:
        ev = ev.sample(rows, seed=seed)
    if ev.height == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype=str)
    return (
        np.asarray(ev["features"].to_list(), dtype=np.float64),
        ev["prediction"].to_numpy().astype(str),
    )


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


def _profiles(events: pl.DataFrame, users: Iterable[str], scale: np.ndarray) -> dict[str, _Profile]:
    wanted = list(users)
    ev = events.filter(pl.col("user_id").is_in(wanted))
    out: dict[str, _Profile] = {}
    for (uid,), part in ev.group_by("user_id"):
        X = np.asarray(part["features"].to_list(), dtype=np.float64) / scale
        ips = {ip for ip in part["source_ip"].drop_nulls().unique().to_list()}
        hours = set(part["ts"].dt.truncate("1h").unique().to_list())
        out[uid] = _Profile(
            ips=ips,
            subnets={s for s in (_subnet(ip) for ip in ips) if s},
            hours=hours,
            days=set(part["day"].unique().to_list()),
            mean=np.median(X, axis=0),
            q_lo=np.quantile(X, 0.1, axis=0),
            q_hi=np.quantile(X, 0.9, axis=0),
            n=len(X),
        )
    return out


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
    events: pl.DataFrame,
    suspects: Iterable[str],
    *,
    existing: Mapping[str, str | None] | None = None,
    scale: np.ndarray | None = None,
) -> dict[str, str]:
    """``{user_id: group_id}`` for the ``suspects`` that belong to a group of two or more
    linked keys (connected components of :func:`linked` pairs). A component that is exactly
    one of the ``existing`` groups (``{user_id: group_id}`` of every user, e.g. the /24 rule's)
    keeps that id; any other gets ``link:<hash of its members>``."""
    users = sorted(set(suspects))
    if len(users) < 2:
        return {}
    if scale is None:
        X = np.asarray(
            events.select("features").head(20_000)["features"].to_list(), dtype=np.float64
        )
        scale = X.std(axis=0) if len(X) else np.ones(1)
    scale = np.where(np.asarray(scale) > 0, scale, 1.0)
    prof = _profiles(events, users, scale)
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


def rate_limit_mask(ts_s: np.ndarray, keys: np.ndarray, limit: int, period_s: float) -> np.ndarray:
    """Which queries a per-key limit of ``limit`` per fixed ``period_s`` window would let
    through (rejected queries do not count against the limit)."""
    n = len(ts_s)
    if n == 0 or limit <= 0:
        return np.zeros(n, dtype=bool) if limit <= 0 else np.ones(n, dtype=bool)
    bucket = np.floor(ts_s / period_s).astype(np.int64)
    frame = pl.DataFrame({"i": np.arange(n), "k": keys.astype(str), "b": bucket, "t": ts_s})
    rank = frame.sort("t", "i").with_columns(pl.int_range(pl.len()).over("k", "b").alias("r"))
    keep = np.zeros(n, dtype=bool)
    keep[rank["i"].to_numpy()] = rank["r"].to_numpy() < limit
    return keep


def _apply_limits(t: Traffic, limits: Mapping[str, int]) -> np.ndarray:
    keep = np.ones(len(t.ts_s), dtype=bool)
    for period, limit in limits.items():
        idx = np.nonzero(keep)[0]
        sub = rate_limit_mask(t.ts_s[idx], t.user[idx], int(limit), _PERIOD_SECONDS[period])
        keep[idx[~sub]] = False
    return keep


def randomise_probabilities(
    proba: np.ndarray, *, scale: float = DEFAULT_NOISE_SCALE, seed: int = 0
) -> np.ndarray:
    """Randomised responses that keep every answer's top-1 class: Gaussian noise of standard
    deviation ``scale`` added to each log-probability, renormalised (a softmax), and where the
    noise made another class the largest, that value and the original top class's swapped back.
    Labels never change; the probabilities an attacker could train on are blurred, by a factor
    of about ``exp(+-scale)`` each. The same ``seed`` gives the same answers. (Chosen over
    reverse-sigmoid poisoning because its cost to users is easy to state and to bound.)"""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.size == 0 or scale <= 0:
        return p.copy()
    rng = np.random.default_rng(seed)
    logits = np.log(np.clip(p, 1e-12, None)) + scale * rng.standard_normal(p.shape)
    out = np.exp(logits - logits.max(axis=1, keepdims=True))
    out /= out.sum(axis=1, keepdims=True)
    top, now = p.argmax(axis=1), out.argmax(axis=1)
    rows = np.nonzero(top != now)[0]
    kept = out[rows, top[rows]].copy()
    out[rows, top[rows]] = out[rows, now[rows]]
    out[rows, now[rows]] = kept
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
    _, key_codes = np.unique(np.asarray(keys).astype(str), return_inverse=True)
    rows = np.column_stack([key_codes.astype(np.int64), cells])
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    source = first[inverse.reshape(-1)].astype(np.int64)
    return source != np.arange(n), source


def defence_costs(
    legit: Traffic,
    *,
    round_decimals: int = DEFAULT_ROUND_DECIMALS,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE,
    scale: np.ndarray | None = None,
    seed: int = 0,
) -> dict:
    """What output minimisation, randomisation and deduplication cost the legitimate traffic
    ``legit`` (kept on it: every incident's replay shares one computation)."""
    key = (
        round_decimals,
        noise_scale,
        dedup_tolerance,
        seed,
        None if scale is None else scale.tobytes(),
    )
    if key in legit.costs:
        return legit.costs[key]
    users = len(set(legit.user.tolist()))
    has_proba = legit.proba is not None
    rounded = randomised = 0
    labels_changed, mean_change = 0, 0.0
    if has_proba:
        moved = np.abs(np.round(legit.proba, round_decimals) - legit.proba) > 0
        rounded = int(moved.any(axis=1).sum())
        noisy = randomise_probabilities(legit.proba, scale=noise_scale, seed=seed + 1)
        labels_changed = int((noisy.argmax(axis=1) != legit.proba.argmax(axis=1)).sum())
        mean_change = round(float(np.abs(noisy - legit.proba).mean()), 6) if noisy.size else 0.0
        randomised = int((np.abs(noisy - legit.proba) > 1e-9).any(axis=1).sum())
    dup, source = duplicate_queries(legit.X, legit.user, tolerance=dedup_tolerance, scale=scale)
    # an exact repeat gets the answer it would have got; a near one gets its neighbour's
    near = dup & np.any(legit.X[source] != legit.X, axis=1) if len(dup) else dup
    flipped = near & (legit.y[source] != legit.y) if len(dup) else near
    costs = {
        "users": users,
        "top1_changed": int(len(legit.y)) if has_proba else 0,
        "top1_users": users if has_proba else 0,
        "rounding_changed": rounded,
        "randomisation": {
            "legit_responses_changed": randomised,
            "legit_labels_changed": labels_changed,
            "legit_mean_abs_change": mean_change,
        },
        "dedup": {
            "legit_duplicates": int(dup.sum()),
            "legit_queries_affected": int(near.sum()),
            "legit_labels_changed": int(flipped.sum()),
            "legit_users_affected": len(set(legit.user[near].tolist())),
        },
    }
    legit.costs[key] = costs
    return costs


def replay_defences(
    subject_events: pl.DataFrame,
    legit_events: pl.DataFrame | Traffic,
    reference_X: np.ndarray,
    reference_y: np.ndarray,
    *,
    columns: np.ndarray | None = None,
    rate_limits: Mapping[str, int] | None = None,
    round_decimals: int = DEFAULT_ROUND_DECIMALS,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE,
    baseline: float | None = None,
    seed: int = 0,
) -> dict:
    """What each defence would have done to one subject (a key or a group's keys, each
    limited separately) and what it would have cost the legitimate users ``legit_events``
    (events, or their :func:`traffic`, which keeps the costs for the next replay) over the
    same window: per rate limit (and all together) the queries blocked and the fidelity the
    subject would have reached; for top-1 labels, rounded and randomised probabilities the
    fidelity and the legitimate responses changed; for deduplication the fidelity from the
    subject's non-duplicate queries and the legitimate queries answered from a neighbour."""
    limits = dict(DEFAULT_RATE_LIMITS if rate_limits is None else rate_limits)
    unknown = set(limits) - set(_PERIOD_SECONDS)
    if unknown:
        raise ValueError(f"unknown rate-limit periods {sorted(unknown)}: use minute/hour/day")
    width = reference_X.shape[1] if reference_X.ndim == 2 else None
    t = traffic(subject_events, width)
    legit = legit_events if isinstance(legit_events, Traffic) else traffic(legit_events, width)
    use_proba = t.proba is not None and columns is not None and t.proba.shape[1] == len(columns)

    def fid(mask: np.ndarray, proba: np.ndarray | None = None) -> float:
        if not mask.any():
            return 0.0
        p = proba[mask] if proba is not None else None
        agree, _ = _agreement(t.X[mask], t.y[mask], reference_X, reference_y, seed, p, columns)
        return round(float(agree.mean()), 4)

    everything = np.ones(len(t.y), dtype=bool)
    base = baseline if baseline is not None else fid(everything)
    soft_base = fid(everything, t.proba) if use_proba else None
    scale = reference_X.std(axis=0) if reference_X.ndim == 2 and len(reference_X) else None
    costs = defence_costs(
        legit,
        round_decimals=round_decimals,
        noise_scale=noise_scale,
        dedup_tolerance=dedup_tolerance,
        scale=scale,
        seed=seed,
    )
    legit_users = costs["users"]
    out: dict = {
        "queries": int(len(t.y)),
        "fidelity": base,
        "fidelity_probabilities": soft_base,
        "rate_limit": {},
    }
    scenarios = [({p: limit}, f"per_{p}") for p, limit in limits.items()]
    if len(limits) > 1:
        scenarios.append((limits, "combined"))
    for chosen, name in scenarios:
        keep = _apply_limits(t, chosen)
        legit_keep = _apply_limits(legit, chosen)
        blocked = int((~keep).sum())
        out["rate_limit"][name] = {
            "limits": {f"per_{p}": int(v) for p, v in chosen.items()},
            "blocked": blocked,
            "fidelity": base if blocked == 0 else fid(keep),
            "legit_blocked": int((~legit_keep).sum()),
            "legit_users_affected": len(set(legit.user[~legit_keep].tolist())),
            "legit_users": legit_users,
        }
    # top-1: the attacker keeps only labels: the label-trained surrogate is what is left
    out["top1"] = {
        "fidelity": base,
        "fidelity_without": soft_base if soft_base is not None else base,
        "legit_responses_changed": costs["top1_changed"],
        "legit_users_affected": costs["top1_users"],
    }
    out["rounding"] = {
        "decimals": int(round_decimals),
        "fidelity": fid(everything, np.round(t.proba, round_decimals)) if use_proba else base,
        "fidelity_without": soft_base if soft_base is not None else base,
        "legit_responses_changed": costs["rounding_changed"],
    }
    # randomisation keeps labels: the label-trained surrogate is unchanged (``fidelity_labels``)
    noisy = randomise_probabilities(t.proba, scale=noise_scale, seed=seed) if use_proba else None
    out["randomisation"] = {
        "scale": float(noise_scale),
        "seed": int(seed),
        "fidelity": fid(everything, noisy) if use_proba else base,
        "fidelity_without": soft_base if soft_base is not None else base,
        "fidelity_labels": base,
        **costs["randomisation"],
    }
    dup, _ = duplicate_queries(t.X, t.user, tolerance=dedup_tolerance, scale=scale)
    out["dedup"] = {
        "tolerance": float(dedup_tolerance),
        "duplicates": int(dup.sum()),
        "fidelity": base if not dup.any() else fid(~dup),
        **costs["dedup"],
    }
    return out
