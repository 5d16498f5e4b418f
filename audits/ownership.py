"""Ownership check: fingerprint the served model, then test whether a suspect model copies it.

The fingerprint follows conferrable adversarial examples (Lukas et al., ICLR 2021) and IPGuard
(Cao et al., 2021): inputs on which copies of the served model agree with it while models
trained independently on the same task do not.

1. Candidates come from six regions: reference rows, interpolations between reference rows,
   points just beside the served model's decision boundary (bisection between rows of
   different predicted classes), uniform noise over the feature ranges, reference rows with
   Gaussian noise, and a widened Gaussian fitted to the reference rows.
2. Selection: surrogates trained on the served model's answers (what extraction attackers
   do: natural, uniform, perturbed and widened queries; logistic regression, gradient
   boosting, MLP) and independent models trained on the ground-truth labels of one half of
   the ``--train`` rows (the same families). A candidate's conferrability for one query
   strategy is, averaged over the families, the share of that strategy's surrogates that
   agree with the served label minus the share of independent models (``selection_seeds``
   per family) that do. The fingerprint has one stratum per strategy, its ``n / 4`` most
   conferrable candidates (none twice): averaged over all surrogates, off-distribution
   points won, where copies trained on natural queries behave like independent models.
3. Null: ``K`` further independent models per family (five families, other seeds) trained on
   the other half of the rows. Sharing no row with the selection models, they are not biased
   low by the selection: candidates are chosen where the selection models happen to disagree
   with the served model, and models trained on the same rows share those disagreements
   (independent models trained on other data agreed up to 0.15 more than such a null). Each
   model takes at most 3/4 of its half, so models of a family differ in data as well as
   seed. They give the agreement an independent model reaches on the fingerprint, and their
   labels on a probe set of unselected candidates. Held-out surrogates give the agreement a
   copy typically reaches (report only).

Verification predicts the fingerprint with the suspect and compares its agreement with the
null models of the suspect's family, since agreement on the fingerprint depends on the model
family as much as on copying: the family of its own architecture when the file shows one (a
scikit-learn estimator, an ONNX linear classifier or dense network), else the most
conservative family (the largest p-value: matching by behaviour on the probe set let
independent RBF SVMs pass as copies). The probe similarity is still reported. Per stratum
and on all points, the p-value is the upper tail of a Student-t prediction interval for one
more model of that family: its null models' mean, the spread pooled over all families
(about each family's own mean); the suspect's p-value is the smallest times the number of
tests (Bonferroni). The verdict is "copy" when
it is below ``alpha`` (or the suspect file is byte-identical to the fingerprinted model),
else "not shown": the check cannot prove independence. Everything is written as JSON: no
pickle.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audits.errors import InputError
from audits.forensics import as_labels

FORMAT = "stealwatch-fingerprint"
VERSION = 2
DEFAULT_POINTS = 400  # split evenly over the QUERY_SOURCES strata
DEFAULT_ALPHA = 0.01
PROBE_POINTS = 400
CANDIDATES_PER_REGION = 2_000
SURROGATE_QUERIES = 1_500
INDEPENDENT_ROWS = 8_000
NULL_SEEDS = 8
SELECTION_SEEDS = 3
SELECTION_FAMILIES = ("logistic_regression", "gradient_boosting", "mlp")
NULL_FAMILIES = ("logistic_regression", "gradient_boosting", "mlp", "mlp_deep", "random_forest")
QUERY_SOURCES = ("natural", "uniform", "perturbed", "widened")
ALL = "all"  # the whole fingerprint, tested beside each stratum
REGIONS = ("natural", "interpolated", "boundary", "uniform", "perturbed", "widened")
MIN_MARGIN = 1e-3  # served top-two probability gap: float32 (ONNX) copies must not flip

Progress = Callable[[str], None] | None


# ---------------------------------------------------------------- models


def make_model(family: str, seed: int):
    """A fresh classifier of one family: the surrogates' and the independent models' zoo (the
    extraction study's surrogate families, plus a deeper MLP and a random forest)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from audits.privacy.extraction import FAMILIES, make_surrogate

    if family in FAMILIES:
        return make_surrogate(family, seed)
    if family == "mlp_deep":
        mlp = MLPClassifier((32, 32), solver="lbfgs", alpha=1e-3, max_iter=120, random_state=seed)
        return make_pipeline(StandardScaler(), mlp)
    if family == "random_forest":
        return RandomForestClassifier(60, min_samples_leaf=2, random_state=seed, n_jobs=1)
    raise ValueError(f"unknown model family {family!r}")


def fit_quietly(model, X: np.ndarray, y: np.ndarray):
    """Fit without convergence warnings (L-BFGS stops at ``max_iter`` on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, y)


# ---------------------------------------------------------------- candidates


def candidate_pool(
    served, reference: np.ndarray, rng: np.random.Generator, per_region: int
) -> dict[str, np.ndarray]:
    """Candidate inputs per region (see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    width = ref.shape[1]
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    sd = np.maximum(ref.std(axis=0), 1e-12)
    a = ref[rng.integers(0, len(ref), per_region)]
    b = ref[rng.integers(0, len(ref), per_region)]
    return {
        "natural": ref[rng.choice(len(ref), min(per_region, len(ref)), replace=False)],
        "interpolated": a + rng.uniform(0.0, 1.0, (per_region, 1)) * (b - a),
        "boundary": boundary_points(served, ref, rng, per_region),
        "uniform": rng.uniform(lo, hi, (per_region, width)),
        "perturbed": a + sd * rng.standard_normal((per_region, width)),
        "widened": widened(ref, rng, per_region),
    }


def widened(ref: np.ndarray, rng: np.random.Generator, n: int, scale: float = 1.5) -> np.ndarray:
    """A Gaussian with the reference rows' mean and correlations, ``scale`` times wider: the
    region an attacker's "public" data set from a shifted distribution covers."""
    cov = np.atleast_2d(np.cov(ref, rowvar=False)) * scale**2
    return rng.multivariate_normal(ref.mean(axis=0), cov, n, method="eigh")


def boundary_points(
    served, ref: np.ndarray, rng: np.random.Generator, n: int, steps: int = 20
) -> np.ndarray:
    """Points beside the served decision boundary: bisection on segments between reference
    rows of different predicted classes, then a step back to the first row's side."""
    labels = as_labels(served.predict(ref))
    a = rng.integers(0, len(ref), 4 * n)
    b = rng.integers(0, len(ref), 4 * n)
    keep = labels[a] != labels[b]
    a, b = a[keep][:n], b[keep][:n]
    if len(a) == 0:
        return np.zeros((0, ref.shape[1]))
    xa, xb, la = ref[a], ref[b], labels[a]
    lo, hi = np.zeros(len(a)), np.ones(len(a))
    for _ in range(steps):
        mid = (lo + hi) / 2
        same = as_labels(served.predict(xa + mid[:, None] * (xb - xa))) == la
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    # stay on the first row's side by a random fraction of the distance to the boundary
    t = lo * (1.0 - rng.uniform(0.0, 0.05, len(a)))
    return xa + t[:, None] * (xb - xa)


def query_sets(ref: np.ndarray, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The query strategies of the simulated extraction attackers used for selection."""
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    sd = np.maximum(ref.std(axis=0), 1e-12)
    rows = ref[rng.integers(0, len(ref), n)]
    return {
        "natural": ref[rng.choice(len(ref), min(n, len(ref)), replace=False)],
        "uniform": rng.uniform(lo, hi, (n, ref.shape[1])),
        "perturbed": rows + sd * rng.standard_normal(rows.shape),
        "widened": widened(ref, rng, n),
    }


def served_margin(served, X: np.ndarray) -> np.ndarray | None:
    """The gap between the served model's two likeliest classes (``None`` if label-only)."""
    proba = served.predict_proba(X)
    if proba is None or proba.shape[1] < 2:
        return None
    top = np.sort(proba, axis=1)
    return top[:, -1] - top[:, -2]


# ---------------------------------------------------------------- fingerprint


@dataclass
class _Trained:
    name: str
    family: str
    model: object
    source: str = ""


def _surrogates(served, ref, rng, families, seed, queries) -> list[_Trained]:
    out = []
    for i, (source, X) in enumerate(query_sets(ref, rng, queries).items()):
        y = as_labels(served.predict(X))
        if len(np.unique(y)) < 2:
            continue
        for family in families:
            model = fit_quietly(make_model(family, seed * 1000 + i), X, y)
            out.append(_Trained(f"{family} on {source} queries", family, model, source))
    return out


def split_halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the training rows, each label split evenly: the selection models
    train on the first, the null models on the second, so that the null does not share the
    rows that made the selection models disagree with the served model (the selection's
    winner's curse would otherwise bias the null's agreement low)."""
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # shuffled within each label
    return np.sort(order[0::2]), np.sort(order[1::2])


def rows_per_model(requested: int, half: int) -> int:
    """Training rows per independent model: at most three quarters of its half, so that models
    of one family differ in their data as well as their seed (the null's spread needs both)."""
    return max(1, min(requested, (3 * half) // 4))


def _independents(train_X, train_y, rng, families, seeds, rows) -> list[_Trained]:
    out = []
    for family in families:
        for s in seeds:
            pick = rng.choice(len(train_X), min(rows, len(train_X)), replace=False)
            model = fit_quietly(make_model(family, int(s)), train_X[pick], train_y[pick])
            out.append(_Trained(f"{family} (seed {s})", family, model))
    return out


def _agreement(models: list[_Trained], X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(models, rows): whether each model gives the served label."""
    return np.array([as_labels(m.model.predict(X)) == y for m in models]).reshape(-1, len(X))


def conferrability(
    surrogate_agree: np.ndarray,
    surrogate_family: list[str],
    independent_agree: np.ndarray,
    independent_family: list[str],
) -> np.ndarray:
    """Per candidate, averaged over families: surrogates' agreement minus independents'."""
    families = sorted(set(surrogate_family) & set(independent_family))
    sf, inf = np.asarray(surrogate_family), np.asarray(independent_family)
    gaps = [
        surrogate_agree[sf == f].mean(axis=0) - independent_agree[inf == f].mean(axis=0)
        for f in families
    ]
    return np.mean(gaps, axis=0)


def select_strata(
    surrogate_agree: np.ndarray,
    surrogates: list[_Trained],
    independent_agree: np.ndarray,
    independent_family: list[str],
    usable: np.ndarray,
    per_stratum: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate indices and their stratum: per query strategy, the ``per_stratum`` unused
    candidates most conferrable for the surrogates trained on that strategy's queries."""
    family = [m.family for m in surrogates]
    source = np.array([m.source for m in surrogates])
    taken = ~usable
    chosen, strata = [], []
    for name in [q for q in QUERY_SOURCES if (source == q).any()]:
        keep = source == name
        fams = [f for f, k in zip(family, keep, strict=True) if k]
        score = conferrability(surrogate_agree[keep], fams, independent_agree, independent_family)
        score[taken] = -np.inf
        top = np.argsort(-score, kind="stable")[: min(per_stratum, int((~taken).sum()))]
        taken[top] = True
        chosen.append(top)
        strata += [name] * len(top)
    return np.concatenate(chosen), np.array(strata)


def _rates_by_stratum(agree: np.ndarray, strata: np.ndarray) -> dict[str, float]:
    return {s: _rate(agree[strata == s]) for s in dict.fromkeys(strata.tolist())}


def make_fingerprint(
    served,
    train_X: np.ndarray,
    train_y: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    n: int = DEFAULT_POINTS,
    seed: int = 0,
    per_region: int = CANDIDATES_PER_REGION,
    null_seeds: int = NULL_SEEDS,
    null_families: tuple[str, ...] = NULL_FAMILIES,
    surrogate_queries: int = SURROGATE_QUERIES,
    independent_rows: int = INDEPENDENT_ROWS,
    progress: Progress = None,
    sources: dict | None = None,
    selection_seeds: int = SELECTION_SEEDS,
) -> dict:
    """The fingerprint of ``served`` as a JSON-ready dict (see the module docstring).

    ``train_X``/``train_y`` are ground-truth training rows of the task (labels as given);
    ``reference`` are inputs of the population (default: ``train_X``).
    """
    from threadpoolctl import threadpool_limits

    say = progress or (lambda _msg: None)
    train_X = np.asarray(train_X, dtype=np.float64)
    train_y = as_labels(train_y)
    ref = train_X if reference is None else np.asarray(reference, dtype=np.float64)
    width = served.n_features_in
    _check_inputs(served, train_X, train_y, ref, n)
    rng = np.random.default_rng(seed)
    with threadpool_limits(limits=1):
        say(f"fingerprint: {len(REGIONS)} x {per_region} candidate inputs")
        pool = candidate_pool(served, ref, rng, per_region)
        regions = np.concatenate([np.full(len(v), k) for k, v in pool.items()])
        C = np.vstack([v for v in pool.values() if len(v)])
        labels = as_labels(served.predict(C))
        margin = served_margin(served, C)
        usable = np.isfinite(C).all(axis=1)
        if margin is not None:
            usable &= margin >= MIN_MARGIN
        say("fingerprint: training selection surrogates on the served model's answers")
        surrogates = _surrogates(served, ref, rng, SELECTION_FAMILIES, seed, surrogate_queries)
        say("fingerprint: training selection models on the ground-truth labels")
        select_rows, null_rows_idx = split_halves(train_y, rng)
        rows = rows_per_model(independent_rows, min(len(select_rows), len(null_rows_idx)))
        selectors = _independents(
            train_X[select_rows],
            train_y[select_rows],
            rng,
            SELECTION_FAMILIES,
            [seed * 100 + 1 + s for s in range(selection_seeds)],
            rows,
        )
        surrogate_agree = _agreement(surrogates, C, labels)
        selector_agree = _agreement(selectors, C, labels)
        selector_family = [m.family for m in selectors]
        score = conferrability(
            surrogate_agree, [m.family for m in surrogates], selector_agree, selector_family
        )
        per_stratum = max(1, n // len(QUERY_SOURCES))
        chosen, strata = select_strata(
            surrogate_agree, surrogates, selector_agree, selector_family, usable, per_stratum
        )
        rest = np.setdiff1d(np.flatnonzero(usable), chosen)
        probe = np.sort(rng.choice(rest, min(PROBE_POINTS, len(rest)), replace=False))
        points, point_labels = C[chosen], labels[chosen]
        say(f"fingerprint: {len(null_families) * null_seeds} null models (independent training)")
        null_seed_list = [seed * 100 + 10 + s for s in range(null_seeds)]
        nulls = _independents(
            train_X[null_rows_idx], train_y[null_rows_idx], rng, null_families, null_seed_list, rows
        )
        say("fingerprint: held-out surrogates (what a copy typically reaches)")
        copies = _surrogates(served, ref, rng, SELECTION_FAMILIES, seed + 7_919, surrogate_queries)
        null_rows = [
            {
                **_agreement_row(m, points, point_labels, strata),
                "probe_labels": as_labels(m.model.predict(C[probe])).tolist(),
            }
            for m in nulls
        ]
        copy_rows = [_agreement_row(m, points, point_labels, strata) for m in copies]
    region_counts = {r: int((regions[chosen] == r).sum()) for r in REGIONS}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "name": Path(served.path).name,
            "kind": served.kind,
            "sha256": served.sha256,
            "n_features_in": int(width),
            "classes": as_labels(served.classes_).tolist(),
        },
        "settings": {
            "seed": seed,
            "points": int(len(points)),
            "points_per_stratum": per_stratum,
            "candidates_per_region": per_region,
            "surrogate_queries": surrogate_queries,
            "independent_rows": independent_rows,
            "rows_per_independent_model": rows,
            "null_seeds": null_seeds,
            "selection_seeds": selection_seeds,
            "train_rows": int(len(train_X)),
            "reference_rows": int(len(ref)),
            **(sources or {}),
        },
        "points": points.tolist(),
        "labels": point_labels.tolist(),
        "regions": regions[chosen].tolist(),
        "strata": strata.tolist(),
        "region_counts": region_counts,
        "selection": {
            "mean_conferrability": round(float(score[chosen].mean()), 4) if len(chosen) else 0.0,
            "surrogates": [m.name for m in surrogates],
            "independent": [m.name for m in selectors],
        },
        "probe": {"points": C[probe].tolist(), "labels": labels[probe].tolist()},
        "null": null_rows,
        "copies": copy_rows,
    }


def _agreement_row(m: _Trained, points, labels, strata) -> dict:
    agree = _agreement([m], points, labels)[0]
    return {
        "name": m.name,
        "family": m.family,
        "agreement": _rate(agree),
        "agreement_by_stratum": _rates_by_stratum(agree, strata),
    }


def _rate(agree: np.ndarray) -> float:
    return round(float(agree.mean()), 4) if agree.size else 0.0


def _check_inputs(served, train_X, train_y, ref, n: int) -> None:
    width = served.n_features_in
    if train_X.ndim != 2 or train_X.shape[1] != width:
        raise InputError(
            f"training data has {train_X.shape[-1]} feature columns, the model takes {width}"
        )
    if ref.ndim != 2 or ref.shape[1] != width:
        raise InputError(f"reference data has {ref.shape[-1]} columns, the model takes {width}")
    if len(ref) < 10 or len(train_X) < 50:
        raise InputError("fingerprint needs at least 50 training rows and 10 reference rows")
    if len(np.unique(train_y)) < 2:
        raise InputError("training data has a single label: independent models cannot be trained")
    if n < 10:
        raise InputError(f"--n must be at least 10 fingerprint points, got {n}")


# ---------------------------------------------------------------- file


def write_fingerprint(fingerprint: dict, path: str | Path) -> Path:
    """The fingerprint as JSON (floats round-trip exactly), written atomically."""
    from reports.render import write_atomically

    return write_atomically(Path(path), json.dumps(fingerprint, indent=None) + "\n")


def load_fingerprint(path: str | Path) -> dict:
    """Read and check a fingerprint file; anything malformed is an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"fingerprint not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"corrupt fingerprint {path}: not JSON ({exc.__class__.__name__})"
        ) from None
    if isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") != VERSION:
        raise InputError(
            f"fingerprint {path} has format version {data.get('version')!r}, this stealwatch "
            f"reads version {VERSION}: make it again with `stealwatch fingerprint`"
        )
    try:
        _check_fingerprint(data)
    except (KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise InputError(f"corrupt fingerprint {path}: {detail}") from None
    return data


def _check_fingerprint(data) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, this stealwatch reads {VERSION}")
    width = int(data["model"]["n_features_in"])
    for key, labels in (("points", "labels"), ("probe", None)):
        block = data[key] if labels else data["probe"]["points"]
        X = np.asarray(block, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != width or not np.isfinite(X).all() or len(X) == 0:
            raise ValueError(f"{key} must be a non-empty finite {width}-column table")
        y = data[labels] if labels else data["probe"]["labels"]
        if len(y) != len(X):
            raise ValueError(f"{key}: {len(X)} inputs but {len(y)} labels")
    strata = data["strata"]
    if len(strata) != len(data["points"]):
        raise ValueError(f"{len(data['points'])} inputs but {len(strata)} strata")
    nulls = data["null"]
    if len(nulls) < 3:
        raise ValueError("fewer than 3 null models")
    for row in nulls:
        rates = [float(row["agreement"]), *map(float, row["agreement_by_stratum"].values())]
        if not all(0.0 <= r <= 1.0 for r in rates):
            raise ValueError("null agreement outside [0, 1]")
        if set(row["agreement_by_stratum"]) != set(strata):
            raise ValueError("null agreement by stratum does not match the strata")
        if len(row["probe_labels"]) != len(data["probe"]["points"]):
            raise ValueError("null probe labels do not match the probe inputs")


# ---------------------------------------------------------------- verify


def t_upper_p(value: float, sample: np.ndarray) -> float:
    """P(a new draw >= value) under a Student-t prediction interval from ``sample``."""
    m = len(sample)
    sd = float(np.std(sample, ddof=1)) if m > 1 else 0.0
    return _t_sf(value, float(np.mean(sample)), sd, m, max(m - 1, 1))


def pooled_t_upper_p(value: float, agreement: np.ndarray, families: np.ndarray, family: str):
    """As :func:`t_upper_p` for one more model of ``family``, its mean from that family's null
    models and its spread pooled over all families (each about its own mean): models of one
    family can be near-identical (a logistic regression on overlapping rows), far less varied
    than the same family trained on other data, and the pooled spread has more degrees of
    freedom."""
    names = sorted(set(families.tolist()))
    resid = np.concatenate(
        [agreement[families == f] - agreement[families == f].mean() for f in names]
    )
    df = len(agreement) - len(names)
    if df < 1:
        return t_upper_p(value, agreement[families == family])
    sd = float(np.sqrt((resid**2).sum() / df))
    same = agreement[families == family]
    return _t_sf(value, float(same.mean()), sd, len(same), df)


def stratified_p(
    suspect: dict[str, float], null: dict[str, np.ndarray], families: np.ndarray, family: str
) -> tuple[float, dict[str, float]]:
    """The p-value that one more independent model of ``family`` agrees with the served model
    at least as often as the suspect on some stratum (or on all points): per stratum
    :func:`pooled_t_upper_p`, then Bonferroni over the tests. Returns it and the per-stratum
    p-values."""
    by_stratum = {s: pooled_t_upper_p(v, null[s], families, family) for s, v in suspect.items()}
    return min(1.0, len(by_stratum) * min(by_stratum.values())), by_stratum


def _t_sf(value: float, mean: float, sd: float, m: int, df: int) -> float:
    from scipy.stats import t as student_t

    scale = max(sd, 0.02) * math.sqrt(1.0 + 1.0 / m)  # floor: no zero spread
    return float(student_t.sf((value - mean) / scale, df=df))


ARCHITECTURES = {
    "LogisticRegression": "logistic_regression",
    "SGDClassifier": "logistic_regression",
    "LinearSVC": "logistic_regression",
    "HistGradientBoostingClassifier": "gradient_boosting",
    "GradientBoostingClassifier": "gradient_boosting",
    "RandomForestClassifier": "random_forest",
    "ExtraTreesClassifier": "random_forest",
}


def architecture(suspect) -> str | None:
    """The null family of the suspect's own architecture, read from the file, or ``None``.

    A scikit-learn estimator (the last step of a pipeline) by class, an MLP by its number of
    hidden layers; an ONNX graph by its classifier operators (a ``LinearClassifier``, or dense
    layers: ``MatMul``/``Gemm`` nodes). Tree ensembles in ONNX, and anything else, are
    ``None``: verify then takes the most conservative family."""
    if suspect.kind == "onnx":
        return _onnx_architecture(Path(suspect.path))
    est = suspect.estimator
    while hasattr(est, "steps") and est.steps:
        est = est.steps[-1][1]
    name = type(est).__name__
    if name == "MLPClassifier":
        layers = np.atleast_1d(getattr(est, "hidden_layer_sizes", ()))
        return "mlp" if len(layers) <= 1 else "mlp_deep"
    return ARCHITECTURES.get(name)


def _onnx_architecture(path: Path) -> str | None:
    try:
        import onnx

        ops = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
    except Exception:  # onnxruntime already accepted the file; onnx may be missing
        return None
    if "LinearClassifier" in ops:
        return "logistic_regression"
    dense = sum(op in ("MatMul", "Gemm") for op in ops)
    if dense and not any(op.startswith("TreeEnsemble") for op in ops):
        return "mlp" if dense <= 2 else "mlp_deep"
    return None


def verify(fingerprint: dict, suspect, *, alpha: float = DEFAULT_ALPHA) -> dict:
    """Test ``suspect`` (a :class:`~audits.models.ServedModel`) against the fingerprint."""
    if not 0.0 < alpha < 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {alpha}")
    width = int(fingerprint["model"]["n_features_in"])
    if suspect.n_features_in != width:
        raise InputError(
            f"suspect {Path(suspect.path).name} takes {suspect.n_features_in} features, "
            f"the fingerprinted model takes {width}"
        )
    points = np.asarray(fingerprint["points"], dtype=np.float64)
    labels = np.asarray(fingerprint["labels"], dtype=str)
    probe = np.asarray(fingerprint["probe"]["points"], dtype=np.float64)
    try:
        said = as_labels(suspect.predict(points))
        said_probe = as_labels(suspect.predict(probe))
    except InputError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:160]
        raise InputError(f"suspect {suspect.path} failed to predict: {text}") from None
    agree = said == labels
    agreement = float(agree.mean())
    nulls = fingerprint["null"]
    null_agreement = np.array([float(r["agreement"]) for r in nulls])
    similarity = np.array(
        [float((np.asarray(r["probe_labels"], dtype=str) == said_probe).mean()) for r in nulls]
    )
    families = np.array([r["family"] for r in nulls])
    names = sorted(set(families.tolist()))
    family_similarity = {f: float(similarity[families == f].mean()) for f in names}
    strata = np.asarray(fingerprint["strata"], dtype=str)
    suspect_by_stratum = {**_rates_by_stratum(agree, strata), ALL: agreement}
    null_by_stratum = {
        s: np.array([float(r["agreement_by_stratum"][s]) for r in nulls])
        for s in suspect_by_stratum
        if s != ALL
    }
    null_by_stratum[ALL] = null_agreement
    tests = {f: stratified_p(suspect_by_stratum, null_by_stratum, families, f) for f in names}
    p_family = {f: p for f, (p, _) in tests.items()}
    family = architecture(suspect)
    matched_by = "architecture"
    if family not in names:  # unknown: the family least surprised by the agreement
        family = max(names, key=lambda f: (p_family[f], -names.index(f)))
        matched_by = "most conservative"
    matched = np.flatnonzero(families == family)
    p_matched = p_family[family]
    p_all = t_upper_p(agreement, null_agreement)
    empirical = (1 + int((null_agreement >= agreement).sum())) / (len(nulls) + 1)
    identical = suspect.sha256 == fingerprint["model"]["sha256"]
    copy = identical or p_matched < alpha
    by_region: dict[str, list[int]] = {}
    for region, hit in zip(fingerprint.get("regions", []), agree.tolist(), strict=False):
        by_region.setdefault(region, []).append(int(hit))
    return {
        "suspect": {
            "name": Path(suspect.path).name,
            "kind": suspect.kind,
            "sha256": suspect.sha256,
            "n_features_in": suspect.n_features_in,
            "label_only": suspect.label_only,
        },
        "model": fingerprint["model"],
        "identical_file": identical,
        "points": int(len(points)),
        "agreement": round(agreement, 4),
        "agreement_by_region": {
            r: {"points": len(v), "agreement": round(float(np.mean(v)), 4)}
            for r, v in sorted(by_region.items())
        },
        "p_value": p_matched,
        "p_value_all_null": p_all,
        "p_value_empirical": round(empirical, 4),
        "alpha": alpha,
        "verdict": "copy" if copy else "not shown",
        "matched_family": family,
        "matched_by": matched_by,
        "family_similarity": {f: round(v, 4) for f, v in family_similarity.items()},
        "p_value_by_family": {f: p_family[f] for f in names},
        "agreement_by_stratum": {
            s: {
                "points": int(len(strata) if s == ALL else (strata == s).sum()),
                "agreement": round(float(v), 4),
                "matched_mean": round(float(null_by_stratum[s][matched].mean()), 4),
                "p_value": tests[family][1][s],
            }
            for s, v in suspect_by_stratum.items()
        },
        "matched_null": [
            {**_null_row(nulls[i]), "probe_similarity": round(float(similarity[i]), 4)}
            for i in matched
        ],
        "null": [
            {**_null_row(r), "probe_similarity": round(float(s), 4), "matched": bool(i in matched)}
            for i, (r, s) in enumerate(zip(nulls, similarity, strict=True))
        ],
        "copies": fingerprint.get("copies", []),
        "settings": fingerprint.get("settings", {}),
        "region_counts": fingerprint.get("region_counts", {}),
        "null_summary": {
            "mean": round(float(null_agreement.mean()), 4),
            "max": round(float(null_agreement.max()), 4),
            "matched_mean": round(float(null_agreement[matched].mean()), 4),
            "matched_sd": round(float(np.std(null_agreement[matched], ddof=1)), 4)
            if len(matched) > 1
            else 0.0,
        },
    }


def _null_row(row: dict) -> dict:
    return {"name": row["name"], "family": row["family"], "agreement": row["agreement"]}


def write_verify_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """``verify.json`` and the self-contained ``verify.html`` in ``out_dir``."""
    from reports.ownership import write_ownership_report
    from reports.render import write_atomically

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    json_path = write_atomically(out / "verify.json", json.dumps(result, indent=1) + "\n")
    html_path = write_ownership_report(result, out / "verify.html")
    return {"json": json_path, "html": html_path}


# ---------------------------------------------------------------- copies from logged traffic


def train_copy(events, family: str, *, width: int, seed: int = 0):
    """The copy an attacker could train from its logged traffic: a ``family`` model fitted on
    the (query, served label) pairs of ``events`` (one key or a group's union), or ``None``
    when the traffic shows fewer than two labels."""
    from threadpoolctl import threadpool_limits

    from audits.forensics import traffic

    t = traffic(events, width)
    if len(np.unique(t.y)) < 2:
        return None
    with threadpool_limits(limits=1):  # OpenMP threads only spin on small data
        return fit_quietly(make_model(family, seed), t.X, as_labels(t.y))
