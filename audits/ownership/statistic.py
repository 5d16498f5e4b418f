"""The verdict's statistic: a per-point signed log-likelihood ratio of copying, scored against
null models trained on data the weights never saw.

Per fingerprint point i, ``w_i = logit(q_i) - logit(p_i)``: q_i the held-out surrogates'
agreement with the served label, p_i that of one group of null models (Laplace prior 1).
Negative weights are kept: points where copies disagree with the served model and independent
models agree count against copying (the dataset-inference side). A model's score is the sum
of ``w_i`` over the points where it gives the served label.

The null models come in groups trained on disjoint rows. Each weight set is estimated from
one group and scores the null models of the other groups only, so that every null score,
like a suspect's, comes from a model that shares no training row with the models behind its
weights (scoring a null model with weights from models on overlapping rows made the null's
spread far narrower than that of independent models trained on other data). A suspect's
expected score comes from a regression of those null scores on the null models' agreement
with the served model on the probe set (a family intercept, one slope); its z-score is the
residual over the pooled residual spread, per weight set, averaged over the sets.
"""

from __future__ import annotations

import math

import numpy as np

PRIOR = 1.0
MIN_SD = 1e-6


def llr_weights(copy_agree: np.ndarray, null_agree: np.ndarray, prior: float = PRIOR):
    """Per point: logit of the copies' agreement minus logit of the null's (Laplace prior)."""
    q = (copy_agree.sum(axis=0) + prior) / (len(copy_agree) + 2 * prior)
    p = (null_agree.sum(axis=0) + prior) / (len(null_agree) + 2 * prior)
    return np.log(q / (1 - q)) - np.log(p / (1 - p))


def weight_sets(
    copy_agree: np.ndarray, null_agree: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sets, points) weights, one set per null group from that group's models, and the null
    scores (sets, models): each set scores the models outside its group (NaN inside it)."""
    names = sorted(set(groups.tolist()))
    weights = np.array([llr_weights(copy_agree, null_agree[groups == g]) for g in names])
    scores = null_agree.astype(float) @ weights.T
    scores[groups[:, None] == np.array(names)[None, :]] = np.nan
    return weights, scores.T


def z_scores(
    suspect_scores: np.ndarray,
    suspect_probe: float,
    null_scores: np.ndarray,
    null_probe: np.ndarray,
    families: np.ndarray,
) -> tuple[dict[str, float], int]:
    """Per family, the suspect's z-score averaged over the weight sets, and the residual
    degrees of freedom of the smallest regression."""
    names = sorted(set(families.tolist()))
    totals = dict.fromkeys(names, 0.0)
    dfs = []
    for score, null in zip(suspect_scores, null_scores, strict=True):
        out = np.isfinite(null)
        coef, sd, df = _regression(null[out], null_probe[out], families[out], names)
        dfs.append(df)
        for k, f in enumerate(names):
            totals[f] += (score - coef[0] * suspect_probe - coef[1 + k]) / sd
    return {f: v / len(null_scores) for f, v in totals.items()}, max(1, min(dfs))


def _regression(scores, probe, families, names):
    design = np.column_stack([probe, *[(families == f).astype(float) for f in names]])
    coef, *_ = np.linalg.lstsq(design, scores, rcond=None)
    df = max(1, len(scores) - design.shape[1])
    sd = float(np.sqrt(((scores - design @ coef) ** 2).sum() / df))
    return coef, max(sd, MIN_SD), df


def z_upper_p(z: float, df: int, m: int) -> float:
    """P(one more null model's z >= z): Student-t prediction interval from ``m`` models."""
    from scipy.stats import t as student_t

    return float(student_t.sf(z / math.sqrt(1.0 + 1.0 / max(m, 1)), df=df))
