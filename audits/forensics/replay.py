"""The defence replay: what each defence of a :class:`DefenceSettings` would have done to one
subject's damage, beside what it would have cost the legitimate users over the same window."""

from __future__ import annotations

import numpy as np
import polars as pl

from audits.event_source import EventSource
from audits.forensics.damage import TRAIN_BUDGET, budget_draws, training_rows
from audits.forensics.defences import (
    DefenceSettings,
    LegitCosts,
    apply_limits,
    duplicate_queries,
    legit_costs,
    randomise_probabilities,
    scenarios,
)
from audits.forensics.surrogates import agreement, winner
from audits.forensics.traffic import Traffic, traffic


def _legit_of(legit, settings: DefenceSettings, width: int | None) -> LegitCosts:
    """``legit`` (costs, a traffic, a frame or an event source) as costs under ``settings``."""
    if not isinstance(legit, LegitCosts):
        return legit_costs(legit, settings, width=width)
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
    settings: DefenceSettings | None = None,
    baseline: float | None = None,
    soft_baseline: float | None = None,
    budget: int = TRAIN_BUDGET,
    surrogates: tuple[str, str] = ("", ""),
) -> dict:
    """What each defence would have done to one subject (its events or :func:`traffic`; a key
    or a group's keys, each limited separately) and what it would have cost the legitimate
    users over the same window: ``legit_events`` as events, an event source, a traffic (which
    keeps its costs for the next replay) or :func:`legit_costs` computed once for the same
    ``settings`` (``None``: the defaults; a missing grid scale is the reference's sd). Per
    rate limit (and all together) the queries blocked and the fidelity the subject would have
    reached; for top-1 labels, rounded and randomised probabilities the fidelity and the
    legitimate responses changed; for deduplication the fidelity from the subject's
    non-duplicate queries and the legitimate queries answered from a neighbour. Every
    surrogate trains on at most ``budget`` queries of what the defence let through
    (:func:`training_rows`). ``baseline`` and ``soft_baseline``: the label- and
    probability-trained fidelities on all the traffic when already known (the subject's
    :class:`Damage` with the same seed and budget), which spares two refits; ``surrogates``:
    the names of the better label- and probability-trained surrogates on all the traffic (the
    Damage's ``surrogate`` and ``surrogate_probabilities``): each defence then refits only
    that family ("": every family)."""
    width = reference_X.shape[1] if reference_X.ndim == 2 else None
    t = subject_events if isinstance(subject_events, Traffic) else traffic(subject_events, width)
    settings = DefenceSettings.of() if settings is None else settings
    if settings.scale is None and reference_X.ndim == 2 and len(reference_X):
        settings = settings.with_scale(reference_X.std(axis=0))
    scale, seed, limits = settings.grid_scale(), settings.seed, settings.rate_limits
    round_decimals, noise_scale = settings.round_decimals, settings.noise_scale
    legit = _legit_of(legit_events, settings, width)
    use_proba = t.proba is not None and columns is not None and t.proba.shape[1] == len(columns)
    draws = budget_draws(len(t.y), seed)

    families = {False: winner(surrogates[0]), True: winner(surrogates[1])}

    label_fits: dict[bytes, float] = {}  # label fits by training rows: rate limits share some

    def fid(mask: np.ndarray, proba: np.ndarray | None = None) -> float:
        rows = training_rows(np.flatnonzero(mask), draws, budget)
        if len(rows) == 0:
            return 0.0
        if proba is None and rows.tobytes() in label_fits:
            return label_fits[rows.tobytes()]
        p = proba[rows] if proba is not None else None
        fams = families[proba is not None]
        agree, _ = agreement(
            t.X[rows],
            t.y[rows],
            reference_X,
            reference_y,
            seed,
            p,
            columns,
            families=fams,
            stop_early=True,
        )
        value = round(float(agree.mean()), 4)
        if proba is None:
            label_fits[rows.tobytes()] = value
        return value

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
    for chosen, name in scenarios(limits):
        keep = apply_limits(t, chosen)
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
    dup, _ = duplicate_queries(t.X, t.key, tolerance=settings.dedup_tolerance, scale=scale)
    out["dedup"] = {
        "tolerance": settings.dedup_tolerance,
        "duplicates": int(dup.sum()),
        "fidelity": base if not dup.any() else fid(~dup),
        **legit.dedup(),
    }
    return out
