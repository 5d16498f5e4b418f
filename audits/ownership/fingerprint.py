"""Making the fingerprint: conferrable inputs chosen against our own surrogates and
independently trained models, and the null models' agreement on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audits.errors import InputError
from audits.forensics import as_labels
from audits.ownership.candidates import (
    MIN_MARGIN,
    QUERY_SOURCES,
    REGIONS,
    candidate_pool,
    query_sets,
    served_margin,
)
from audits.ownership.file import FORMAT, VERSION
from audits.ownership.models import fit_quietly, make_model
from audits.ownership.statistic import weight_sets

DEFAULT_POINTS = 12_000  # split evenly over the QUERY_SOURCES strata
PROBE_POINTS = 400
CANDIDATES_PER_REGION = 6_000
SURROGATE_QUERIES = 1_500
INDEPENDENT_ROWS = 8_000
NULL_SEEDS = 6  # per family and null group
NULL_GROUPS = 2  # trained on disjoint rows of the null half
SELECTION_SEEDS = 3
OPTIMISED_PER_SOURCE = 300
SELECTION_FAMILIES = ("logistic_regression", "gradient_boosting", "mlp")
NULL_FAMILIES = (
    "logistic_regression",
    "gradient_boosting",
    "mlp",
    "mlp_deep",
    "random_forest",
    "knn",
)

Progress = Callable[[str], None] | None


@dataclass
class _Trained:
    name: str
    family: str
    model: object
    source: str = ""


def _surrogates(served, ref, rng, families, seed, queries) -> list[_Trained]:
    out = []
    for i, (source, X) in enumerate(query_sets(ref, rng, queries, served).items()):
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
    """Per candidate: the surrogates' agreement (averaged over their families) minus the highest
    agreement of any family of independent models, so that a point one independent family
    (the served model's own architecture, say) shares with the served model is not chosen."""
    sf, inf = np.asarray(surrogate_family), np.asarray(independent_family)
    copies = np.mean([surrogate_agree[sf == f].mean(axis=0) for f in dict.fromkeys(sf)], axis=0)
    independent = np.max(
        [independent_agree[inf == f].mean(axis=0) for f in dict.fromkeys(inf)], axis=0
    )
    return copies - independent


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


def rates_by_stratum(agree: np.ndarray, strata: np.ndarray) -> dict[str, float]:
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
    optimised: int = OPTIMISED_PER_SOURCE,
) -> dict:
    """The fingerprint of ``served`` as a JSON-ready dict (see the module docstring).

    ``train_X``/``train_y`` are ground-truth training rows of the task (labels as given);
    ``reference`` are inputs of the population (default: ``train_X``). ``optimised`` adds
    that many candidates per query strategy found by gradient ascent on the conferrability of
    torch ensembles (:mod:`audits.ownership.optimise`), trained on the selection half.
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
        select_rows, null_rows_idx = split_halves(train_y, rng)
        if optimised > 0:
            say(f"fingerprint: {optimised} optimised candidates per query strategy")
            pool["optimised"] = _optimised(
                served, train_X[select_rows], train_y[select_rows], ref, rng, optimised, seed
            )
        regions = np.concatenate([np.full(len(v), k) for k, v in pool.items()])
        C = np.vstack([v for v in pool.values() if len(v)])
        labels = as_labels(served.predict(C))
        margin = served_margin(served, C)
        usable = np.isfinite(C).all(axis=1)
        if margin is not None:
            usable &= margin >= MIN_MARGIN
        probe = _probe(usable, rng)
        usable[probe] = False
        say("fingerprint: training selection surrogates on the served model's answers")
        surrogates = _surrogates(served, ref, rng, SELECTION_FAMILIES, seed, surrogate_queries)
        say("fingerprint: training selection models on the ground-truth labels")
        rows = rows_per_model(independent_rows, min(len(select_rows), len(null_rows_idx)))
        selectors = _independents(
            train_X[select_rows],
            train_y[select_rows],
            rng,
            null_families,
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
        points, point_labels = C[chosen], labels[chosen]
        count = len(null_families) * null_seeds * NULL_GROUPS
        say(f"fingerprint: {count} null models (independent training, {NULL_GROUPS} groups)")
        nulls, groups = _null_groups(
            train_X[null_rows_idx],
            train_y[null_rows_idx],
            rng,
            null_families,
            null_seeds,
            seed,
            independent_rows,
        )
        say("fingerprint: held-out surrogates (what a copy typically reaches)")
        copies = _surrogates(served, ref, rng, SELECTION_FAMILIES, seed + 7_919, surrogate_queries)
        weights, null_scores = weight_sets(
            _agreement(copies, points, point_labels),
            _agreement(nulls, points, point_labels),
            groups,
        )
        null_rows = [
            {
                **_agreement_row(m, points, point_labels, strata),
                "group": int(g),
                "scores": [None if np.isnan(v) else float(v) for v in null_scores[:, j]],
                "probe_labels": as_labels(m.model.predict(C[probe])).tolist(),
            }
            for j, (m, g) in enumerate(zip(nulls, groups, strict=True))
        ]
        copy_rows = [_agreement_row(m, points, point_labels, strata) for m in copies]
    region_counts = {r: int((regions[chosen] == r).sum()) for r in pool}
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
            "null_groups": NULL_GROUPS,
            "selection_seeds": selection_seeds,
            "optimised_per_strategy": optimised,
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
        "weights": weights.tolist(),
        "null": null_rows,
        "copies": copy_rows,
    }


def _probe(usable: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The probe set, drawn from the usable candidates before any is selected."""
    pick = np.flatnonzero(usable)
    return np.sort(rng.choice(pick, min(PROBE_POINTS, len(pick) // 2), replace=False))


def _null_groups(train_X, train_y, rng, families, seeds: int, seed: int, requested: int):
    """The null: ``NULL_GROUPS`` groups of ``seeds`` models per family, each group trained on
    its own disjoint share of the rows (models within a group on 3/4 of that share)."""
    shares = [np.arange(len(train_y))]
    while len(shares) < NULL_GROUPS:
        first, second = split_halves(train_y[shares[0]], rng)
        shares = [*shares[1:], shares[0][first], shares[0][second]]
    models, groups = [], []
    for g, share in enumerate(shares):
        rows = rows_per_model(requested, len(share))
        seed_list = [seed * 100 + 10 + g * 50 + s for s in range(seeds)]
        group = _independents(train_X[share], train_y[share], rng, families, seed_list, rows)
        models += group
        groups += [g] * len(group)
    return models, np.array(groups)


def _optimised(served, train_X, train_y, ref, rng, per_source: int, seed: int) -> np.ndarray:
    from audits.ownership.optimise import optimised_candidates

    queries = query_sets(ref, rng, SURROGATE_QUERIES, served)
    rows = rng.choice(len(train_X), min(INDEPENDENT_ROWS, len(train_X)), replace=False)
    return optimised_candidates(
        served, queries, train_X[rows], train_y[rows], ref, rng, per_source, seed
    )


def _agreement_row(m: _Trained, points, labels, strata) -> dict:
    agree = _agreement([m], points, labels)[0]
    return {
        "name": m.name,
        "family": m.family,
        "agreement": _rate(agree),
        "agreement_by_stratum": rates_by_stratum(agree, strata),
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
