"""Membership inference: how well can an attacker tell training rows (members) from holdout rows.

Each attack turns a row into a score where higher means "more likely a member":

- ``max_confidence``: the top class probability (needs no label).
- ``loss`` (Yeom et al. 2018): the log probability of the true label (minus the loss).
- ``modified_entropy`` (Song & Mittal 2021): minus the modified prediction entropy.
- ``lira_offline`` (Carlini et al. 2022): the true-label logit against a Gaussian fitted to
  the same row's logit under reference models, each used only for rows it was not trained on.
- ``rmia`` (Zarifzadeh, Liu & Shokri, ICML 2024): the likelihood ratio of the row's true-label
  probability under the target and under the reference models (offline, P(x) approximated
  from the OUT references with the coefficient ``a``), compared with the same ratio of
  population rows ``z``: the share of ``z`` the row dominates (gamma = 1). The probability is
  the true class's softmax over the log-probabilities divided by a temperature (1: as served):
  a forest's members sit at probability 1, where a ratio of raw probabilities calls easy
  members non-members; a higher temperature keeps their margin.
- ``label_only``: 1 when the row is classified correctly (the generalisation gap).

Reference models (LiRA and RMIA share them) are fitted on disjoint splits of the holdout:
``sklearn.clone`` of the served estimator, or, for a model that cannot be re-fitted (ONNX), a
scikit-learn model of the nearest family (its graph's linear or dense layers, else a random
forest). Only non-members that some reference model did not train on are audited (with one
reference model: the half of the holdout it left out), so every audited row, member or not,
is scored against OUT models by the same formula. RMIA's ``a`` and temperature are chosen by
attacking reference model 0 by the mean TPR at 0.1, 0.2, 0.5 and 1% FPR, then AUC, with the
other references as its OUT models (three or more) or the target (one or two: it trained on
no holdout row); the target's members are never used.

Metrics come from scikit-learn and SciPy: ROC AUC with a stratified bootstrap CI, TPR at 10%,
1% and 0.1% FPR with exact (Clopper-Pearson) 95% intervals, and the advantage max(TPR - FPR).
A TPR at FPR ``f`` needs at least ``ceil(1/f)`` non-members (10 for 10%, 100 for 1%, 1,000 for
0.1%); with fewer it is reported as null with a reason. Per class, the same metrics of every
attack on that class's members and non-members (subgroup leakage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audits.privacy.metrics import (  # noqa: F401 (re-exported)
    FPR_TARGETS,
    attack_metrics,
    class_leakage,
    clopper_pearson,
    tpr_at_fpr,
)
from audits.privacy.references import (  # noqa: F401 (re-exported)
    EPS,
    POPULATION_ROWS,
    Progress,
    References,
    auditable_holdout,
    fit_references,
    load_reference_recipe,
    log_proba,
    plan_references,
    split_index,
    tempered_true_prob,
)
from audits.privacy.rmia import (  # noqa: F401 (re-exported)
    RMIA_A_GRID,
    RMIA_DEFAULT_A,
    RMIA_TEMPERATURES,
    rmia_marginal,
    rmia_scores,
    score_rmia,
    tune_rmia,
)

ATTACKS = ("max_confidence", "loss", "modified_entropy", "lira_offline", "rmia", "label_only")
REFERENCE_ATTACKS = ("lira_offline", "rmia")
REFERENCE_MODELS = 4
MIN_ROWS_PER_REFERENCE = 10


@dataclass(frozen=True)
class MembershipSample:
    """A balanced evaluation sample: members first, then as many non-members."""

    X: np.ndarray
    y: np.ndarray
    is_member: np.ndarray
    holdout_rows: np.ndarray  # for each non-member, its row in the holdout set


def balanced_sample(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_holdout: np.ndarray,
    y_holdout: np.ndarray,
    seed: int,
    candidates: np.ndarray | None = None,
) -> MembershipSample:
    """Subsample the larger side to the size of the smaller one with a fixed seed; non-members
    come from the holdout rows ``candidates`` (default: all)."""
    rng = np.random.default_rng(seed)
    if candidates is None:
        candidates = np.arange(len(y_holdout))
    n = min(len(y_train), len(candidates))
    members = np.sort(rng.choice(len(y_train), n, replace=False))
    others = np.sort(candidates[rng.choice(len(candidates), n, replace=False)])
    return MembershipSample(
        X=np.vstack([X_train[members], X_holdout[others]]),
        y=np.concatenate([y_train[members], y_holdout[others]]),
        is_member=np.concatenate([np.ones(n, bool), np.zeros(n, bool)]),
        holdout_rows=others,
    )


def true_class_prob(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return proba[np.arange(len(y)), y]


def score_max_confidence(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return proba.max(axis=1)


def score_loss(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.log(np.clip(true_class_prob(proba, y), EPS, 1.0))


def score_modified_entropy(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(proba, EPS, 1 - EPS)
    p_y = true_class_prob(p, y)
    others = -(p * np.log(1 - p)).sum(axis=1) + p_y * np.log(1 - p_y)
    return (1 - p_y) * np.log(p_y) - others


def score_label_only(labels: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (labels == y).astype(float)


def logit_confidence(p_y: np.ndarray) -> np.ndarray:
    """LiRA's phi: log p_y - log(sum of the other classes' probabilities)."""
    p_y = np.clip(p_y, EPS, 1 - EPS)
    return np.log(p_y) - np.log1p(-p_y)


# ---------------------------------------------------------------- LiRA


def score_lira_offline(target_logp: np.ndarray, y: np.ndarray, refs: References) -> np.ndarray:
    """Offline LiRA z-scores: (phi_target - mean phi_out) / sd_out, per row."""
    phi = logit_confidence(tempered_true_prob(target_logp, y))
    phis = logit_confidence(tempered_true_prob(refs.sample_logp, y))
    return _gaussian_z(phi, phis, refs.sample_out)


def _gaussian_z(phi: np.ndarray, phis: np.ndarray, used: np.ndarray) -> np.ndarray:
    """z of ``phi`` under per-row Gaussians, the variance shrunk towards the pooled one; every
    audited row has at least one OUT model (:func:`auditable_holdout`)."""
    count = used.sum(axis=0)
    mean = np.where(used, phis, 0).sum(axis=0) / np.maximum(count, 1)
    sq = np.where(used, (phis - mean) ** 2, 0).sum(axis=0)
    pooled = sq.sum() / max(1, np.maximum(count - 1, 0).sum())
    if not pooled > 0:
        pooled = 1.0
    prior = 2.0  # pseudo-observations of the pooled variance
    var = (sq + prior * pooled) / (np.maximum(count - 1, 0) + prior)
    return (phi - mean) / np.sqrt(np.maximum(var, 1e-12))


# ---------------------------------------------------------------- the audit


def attack_scores(
    served,
    sample: MembershipSample,
    X_holdout: np.ndarray,
    y_holdout: np.ndarray,
    *,
    seed: int,
    reference_models: int = REFERENCE_MODELS,
    reference_recipe=None,
    progress: Progress = None,
) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """Every attack's scores on the sample, why any attack was skipped, and reference info."""
    labels = _label_indices(served, served.predict(sample.X))
    scores = {"label_only": score_label_only(labels, sample.y)}
    proba = served.predict_proba(sample.X)
    if proba is None:
        reason = "the model serves labels only"
        return scores, {name: reason for name in ATTACKS if name != "label_only"}, {}
    scores["max_confidence"] = score_max_confidence(proba, sample.y)
    scores["loss"] = score_loss(proba, sample.y)
    scores["modified_entropy"] = score_modified_entropy(proba, sample.y)
    skipped, info = {}, {}
    reason = _references_unavailable(len(y_holdout), reference_models)
    if reason:
        skipped = {name: reason for name in REFERENCE_ATTACKS}
    else:
        refs = fit_references(
            served,
            sample,
            X_holdout,
            y_holdout,
            n_models=reference_models,
            seed=seed,
            recipe=reference_recipe,
            progress=progress,
        )
        target_logp = log_proba(proba)
        population = refs.population_rows
        target_pop = log_proba(served.predict_proba(X_holdout[population]))
        a, temperature = tune_rmia(refs, target_pop)
        scores["lira_offline"] = score_lira_offline(target_logp, sample.y, refs)
        scores["rmia"] = score_rmia(target_logp, sample.y, target_pop, refs, a, temperature)
        info = {
            "reference_family": refs.family,
            "reference_estimator": refs.estimator,
            "rmia_a": a,
            "rmia_temperature": temperature,
            "population_rows": int(refs.population_out.any(axis=0).sum()),  # z scored against
        }
    return {name: scores[name] for name in ATTACKS if name in scores}, skipped, info


def _references_unavailable(n_holdout: int, n_models: int) -> str | None:
    needed = MIN_ROWS_PER_REFERENCE * max(n_models, 2)
    if n_holdout < needed:
        return f"needs >= {needed} holdout rows for {n_models} reference model(s)"
    return None


def _label_indices(served, labels: np.ndarray) -> np.ndarray:
    lookup = {str(c): i for i, c in enumerate(served.classes_.tolist())}
    return np.array([lookup.get(str(v), -1) for v in labels.tolist()], dtype=np.int64)


def membership_audit(
    served,
    train,
    holdout,
    *,
    seed: int = 0,
    reference_models: int = REFERENCE_MODELS,
    reference_recipe=None,
    progress: Progress = None,
) -> tuple[dict, dict]:
    """Run every applicable attack on a balanced sample; returns (per-attack metrics, info).
    ``reference_recipe``: an estimator whose clones are the reference models (default: the
    served estimator's clones, or a stand-in family for a model that cannot be re-fitted)."""
    if reference_models < 1:
        raise ValueError(f"reference_models must be >= 1, got {reference_models}")
    candidates = None
    if not _references_unavailable(len(holdout.y), reference_models):
        splits, _ = plan_references(len(holdout.y), reference_models, seed)
        candidates = auditable_holdout(split_index(splits, len(holdout.y)), reference_models)
    sample = balanced_sample(train.X, train.y, holdout.X, holdout.y, seed, candidates)
    if progress:
        progress(f"membership: {int(sample.is_member.sum())} members vs as many non-members")
    scores, skipped, ref_info = attack_scores(
        served,
        sample,
        holdout.X,
        holdout.y,
        seed=seed,
        reference_models=reference_models,
        reference_recipe=reference_recipe,
        progress=progress,
    )
    metrics = {name: attack_metrics(s, sample.is_member, seed) for name, s in scores.items()}
    info = {
        "members": int(sample.is_member.sum()),
        "non_members": int((~sample.is_member).sum()),
        "reference_models": 0 if "rmia" in skipped else reference_models,
        **ref_info,
        "skipped": skipped,
        "by_class": class_leakage(scores, sample, np.asarray(served.classes_), seed),
    }
    return metrics, info
