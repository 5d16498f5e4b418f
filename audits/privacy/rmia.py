"""RMIA (Zarifzadeh, Liu & Shokri, ICML 2024), offline, after the authors' reference
implementation (privacytrustlab/ml_privacy_meter): the likelihood ratio of a row's true-label
probability under the target and under P(x) from OUT references, against population rows z."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from audits.privacy.metrics import tpr_at_fpr
from audits.privacy.references import EPS, References, tempered_true_prob

RMIA_A_GRID = tuple(np.round(np.arange(0.0, 1.01, 0.1), 2))
RMIA_DEFAULT_A = 0.3  # the reference implementation's default, when nothing can be tuned
RMIA_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0)


def rmia_marginal(p_ref: np.ndarray, out: np.ndarray, a: float) -> np.ndarray:
    """P(x) per row from reference models: ((1 + a) mean P_out + (1 - a)) / 2. Every scored row
    has at least one OUT model: rows without one are not audited (``auditable_holdout``), so
    the reference implementation's inversion of this relation from P_in is never needed."""
    mean_out = np.where(out, p_ref, 0).sum(axis=0) / np.maximum(out.sum(axis=0), 1)
    return (1 + a) / 2 * mean_out + (1 - a) / 2


def rmia_scores(
    target_x: np.ndarray,
    ref_x: np.ndarray,
    out_x: np.ndarray,
    target_z: np.ndarray,
    ref_z: np.ndarray,
    out_z: np.ndarray,
    a: float,
) -> np.ndarray:
    """RMIA's score: the share of population rows z with LR(x) / LR(z) > 1, where LR is the
    target's true-label probability over P(.) from the references. Ties between rows with the
    same share (the top of the scale) are broken by LR(x), which orders rows the same way."""
    ratio_x = np.clip(target_x, EPS, None) / np.maximum(rmia_marginal(ref_x, out_x, a), EPS)
    ratio_z = np.clip(target_z, EPS, None) / np.maximum(rmia_marginal(ref_z, out_z, a), EPS)
    share = np.searchsorted(np.sort(ratio_z), ratio_x, side="left") / len(ratio_z)
    tie_break = rankdata(ratio_x) / (len(ratio_x) + 1) / (len(ratio_z) + 1)
    return share + tie_break


LOW_FPR_GRID = (0.001, 0.002, 0.005, 0.01)  # what tuning maximises: TPR where the gate reports


def low_fpr_key(members: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Mean TPR at 0.1, 0.2, 0.5 and 1% FPR, then AUC: the tuning objective."""
    fpr, tpr, _ = roc_curve(members, scores)
    low = float(np.mean([tpr_at_fpr(fpr, tpr, f) for f in LOW_FPR_GRID]))
    return low, float(roc_auc_score(members, scores))


def tune_rmia(refs: References, target_pop_logp: np.ndarray) -> tuple[float, float]:
    """``(a, temperature)`` that best attack reference model 0 by :func:`low_fpr_key`; its
    split are its members, the other population rows its non-members. With three or more
    reference models the others are its OUT models (as the reference implementation tunes
    ``a``); with one or two, the target is: it trained on none of the holdout. The target's
    members are never used."""
    members = ~refs.population_out[0]
    if members.all() or not members.any():
        return RMIA_DEFAULT_A, 1.0
    y = refs.population_y
    if len(refs) >= 3:
        candidates, out = refs.population_logp[1:], refs.population_out[1:]
    else:
        candidates, out = target_pop_logp[None], np.ones((1, len(y)), dtype=bool)
    best, best_key = (RMIA_DEFAULT_A, 1.0), (-1.0, -1.0)
    for temperature in RMIA_TEMPERATURES:
        attacked = tempered_true_prob(refs.population_logp[0], y, temperature)
        p_out = tempered_true_prob(candidates, y, temperature)
        for a in RMIA_A_GRID:
            scores = rmia_scores(attacked, p_out, out, attacked, p_out, out, a)
            key = low_fpr_key(members, scores)
            if key > best_key:
                best, best_key = (float(a), float(temperature)), key
    return best


def score_rmia(
    target_logp: np.ndarray,
    y: np.ndarray,
    target_pop_logp: np.ndarray,
    refs: References,
    a: float,
    temperature: float,
) -> np.ndarray:
    """RMIA scores of the sample rows against the population rows some reference left out."""
    z = refs.population_out.any(axis=0)
    pop_y = refs.population_y[z]
    return rmia_scores(
        tempered_true_prob(target_logp, y, temperature),
        tempered_true_prob(refs.sample_logp, y, temperature),
        refs.sample_out,
        tempered_true_prob(target_pop_logp[z], pop_y, temperature),
        tempered_true_prob(refs.population_logp[:, z], pop_y, temperature),
        refs.population_out[:, z],
        a,
    )
