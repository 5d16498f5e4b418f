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
    """P(x) per row from reference models: ((1 + a) mean P_out + (1 - a)) / 2.

    A row with no OUT model (one reference model, which trained on it) takes P_out from its
    IN probability by inverting that relation (as the reference implementation does), clipped
    to [0, 1]: a tempered P_in below ``1 - a`` would otherwise give a negative P(x)."""
    count = out.sum(axis=0)
    mean_out = np.where(out, p_ref, 0).sum(axis=0) / np.maximum(count, 1)
    if (count == 0).any():
        mean_in = np.where(~out, p_ref, 0).sum(axis=0) / np.maximum((~out).sum(axis=0), 1)
        from_in = (mean_in + a - 1) / a if a > 0 else (mean_in - 0.7) / 0.3
        from_in = np.clip(from_in, 0.0, 1.0)  # a probability, also when P_in < 1 - a
        mean_out = np.where(count > 0, mean_out, from_in)
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


def tune_rmia(refs: References) -> tuple[float, float]:
    """``(a, temperature)`` that best attack reference model 0 with the others (its split are
    its members, the other population rows its non-members) by :func:`low_fpr_key`; the
    defaults (0.3, 1) with one reference model. The target's members are never used."""
    defaults = (RMIA_DEFAULT_A, 1.0)
    members = ~refs.population_out[0]
    if len(refs) < 2 or members.all() or not members.any():
        return defaults
    y, out = refs.population_y, refs.population_out[1:]
    best, best_key = defaults, (-1.0, -1.0)
    for temperature in RMIA_TEMPERATURES:
        p = tempered_true_prob(refs.population_logp, y, temperature)
        for a in RMIA_A_GRID:
            scores = rmia_scores(p[0], p[1:], out, p[0], p[1:], out, a)
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
    """RMIA scores of the sample rows against the population rows."""
    pop_y = refs.population_y
    return rmia_scores(
        tempered_true_prob(target_logp, y, temperature),
        tempered_true_prob(refs.sample_logp, y, temperature),
        refs.sample_out,
        tempered_true_prob(target_pop_logp, pop_y, temperature),
        tempered_true_prob(refs.population_logp, pop_y, temperature),
        refs.population_out,
        a,
    )
