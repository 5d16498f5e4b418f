"""Membership inference: how well can an attacker tell training rows (members) from holdout rows.

Each attack turns a row into a score where higher means "more likely a member":

- ``max_confidence``: the top class probability (needs no label).
- ``loss`` (Yeom et al. 2018): the log probability of the true label (minus the loss).
- ``modified_entropy`` (Song & Mittal 2021): minus the modified prediction entropy.
- ``lira_offline`` (Carlini et al. 2022): the true-label logit against a Gaussian fitted to
  the same row's logit under reference models re-fitted (``sklearn.clone``) on disjoint splits
  of the non-member data, each used only for rows it was not trained on.
- ``label_only``: 1 when the row is classified correctly (the generalisation gap).

Metrics come from scikit-learn: ROC AUC with a stratified bootstrap CI, TPR at 1% and 0.1%
FPR and the advantage max(TPR - FPR). A TPR at FPR ``f`` needs at least ``ceil(1/f)``
non-members (100 for 1%, 1,000 for 0.1%); with fewer it is reported as null with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.metrics import roc_auc_score, roc_curve

EPS = 1e-6
ATTACKS = ("max_confidence", "loss", "modified_entropy", "lira_offline", "label_only")
FPR_TARGETS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001}
REFERENCE_MODELS = 4
BOOTSTRAP_ROUNDS = 200

Progress = Callable[[str], None] | None


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
) -> MembershipSample:
    """Subsample the larger side to the size of the smaller one with a fixed seed."""
    rng = np.random.default_rng(seed)
    n = min(len(y_train), len(y_holdout))
    members = np.sort(rng.choice(len(y_train), n, replace=False))
    others = np.sort(rng.choice(len(y_holdout), n, replace=False))
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


def logit_confidence(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's phi: log p_y - log(sum of the other classes' probabilities)."""
    p_y = np.clip(true_class_prob(proba, y), EPS, 1 - EPS)
    return np.log(p_y) - np.log1p(-p_y)


def score_lira_offline(
    estimator,
    target_proba: np.ndarray,
    sample: MembershipSample,
    X_holdout: np.ndarray,
    y_holdout: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    progress: Progress = None,
) -> np.ndarray:
    """Offline LiRA z-scores: (phi_target - mean phi_out) / sd_out, per row."""
    splits = np.array_split(
        np.random.default_rng(seed).permutation(len(y_holdout)), REFERENCE_MODELS
    )
    split_of = np.empty(len(y_holdout), dtype=np.int64)
    for k, rows in enumerate(splits):
        split_of[rows] = k
    phis = np.empty((REFERENCE_MODELS, len(sample.y)))
    for k, rows in enumerate(splits):
        if progress:
            progress(
                f"lira: fitting reference model {k + 1}/{REFERENCE_MODELS} on {len(rows)} rows"
            )
        model = clone(estimator).fit(X_holdout[rows], y_holdout[rows])
        proba = _full_proba(model, sample.X, n_classes)
        phis[k] = logit_confidence(proba, sample.y)
    used = np.ones_like(phis, dtype=bool)
    nonmember = ~sample.is_member
    used[split_of[sample.holdout_rows], np.flatnonzero(nonmember)] = False
    return _gaussian_z(logit_confidence(target_proba, sample.y), phis, used)


def _full_proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all classes, even when a reference split lacked some of them."""
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(X)
    return proba


def _gaussian_z(phi: np.ndarray, phis: np.ndarray, used: np.ndarray) -> np.ndarray:
    """z of ``phi`` under per-row Gaussians, the variance shrunk towards the pooled one."""
    count = used.sum(axis=0)
    mean = np.where(used, phis, 0).sum(axis=0) / count
    sq = np.where(used, (phis - mean) ** 2, 0).sum(axis=0)
    pooled = sq.sum() / max(1, (count - 1).sum())
    prior = 2.0  # pseudo-observations of the pooled variance
    var = (sq + prior * pooled) / (count - 1 + prior)
    return (phi - mean) / np.sqrt(np.maximum(var, 1e-12))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest TPR reached at a false-positive rate no higher than ``target``."""
    return float(tpr[fpr <= target + 1e-12].max())


def bootstrap_auc_ci(
    scores: np.ndarray, is_member: np.ndarray, seed: int, rounds: int = BOOTSTRAP_ROUNDS
) -> list[float]:
    """95% percentile CI of the AUC, resampling members and non-members separately."""
    rng = np.random.default_rng(seed)
    pos, neg = scores[is_member], scores[~is_member]
    aucs = np.empty(rounds)
    for i in range(rounds):
        p = pos[rng.integers(0, len(pos), len(pos))]
        q = neg[rng.integers(0, len(neg), len(neg))]
        aucs[i] = _rank_auc(p, q)
    low, high = np.percentile(aucs, [2.5, 97.5])
    return [float(low), float(high)]


def _rank_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half), equal to roc_auc_score."""
    ranks = rankdata(np.concatenate([pos, neg]))
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def attack_metrics(scores: np.ndarray, is_member: np.ndarray, seed: int) -> dict:
    """AUC (+CI), TPR at low FPR (null if unresolvable), advantage, and a thinned ROC curve."""
    fpr, tpr, _ = roc_curve(is_member, scores)
    n_nonmembers = int((~is_member).sum())
    result: dict = {
        "auc": float(roc_auc_score(is_member, scores)),
        "auc_ci": bootstrap_auc_ci(scores, is_member, seed),
    }
    unresolvable = {}
    for key, target in FPR_TARGETS.items():
        needed = math.ceil(1 / target)
        if n_nonmembers < needed:
            result[key] = None
            unresolvable[key] = f"needs >= {needed} non-members, have {n_nonmembers}"
        else:
            result[key] = tpr_at_fpr(fpr, tpr, target)
    result["advantage"] = float((tpr - fpr).max())
    result["unresolvable"] = unresolvable
    result["roc"] = thin_curve(fpr, tpr)
    return result


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, points: int = 200) -> dict:
    """At most ``points`` ROC points, spaced on a log FPR scale so low FPR stays visible."""
    if len(fpr) > points:
        grid = np.unique(np.concatenate([[0.0], np.geomspace(1e-4, 1, points - 1)]))
        idx = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(fpr) - 1))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}


def attack_scores(
    served,
    sample: MembershipSample,
    X_holdout: np.ndarray,
    y_holdout: np.ndarray,
    *,
    seed: int,
    progress: Progress = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every attack's scores on the sample, and why any attack was skipped."""
    labels = _label_indices(served, served.predict(sample.X))
    scores = {"label_only": score_label_only(labels, sample.y)}
    proba = served.predict_proba(sample.X)
    if proba is None:
        reason = "the model serves labels only"
        return scores, {name: reason for name in ATTACKS if name != "label_only"}
    scores["max_confidence"] = score_max_confidence(proba, sample.y)
    scores["loss"] = score_loss(proba, sample.y)
    scores["modified_entropy"] = score_modified_entropy(proba, sample.y)
    skipped = {}
    reason = _lira_unavailable(served, len(y_holdout))
    if reason:
        skipped["lira_offline"] = reason
    else:
        scores["lira_offline"] = score_lira_offline(
            served.estimator,
            proba,
            sample,
            X_holdout,
            y_holdout,
            n_classes=len(served.classes_),
            seed=seed,
            progress=progress,
        )
    return {name: scores[name] for name in ATTACKS if name in scores}, skipped


def _lira_unavailable(served, n_holdout: int) -> str | None:
    if served.kind == "onnx" or not hasattr(served.estimator, "get_params"):
        return "needs a scikit-learn estimator to re-fit reference models (not ONNX)"
    if n_holdout < 10 * REFERENCE_MODELS:
        return f"needs >= {10 * REFERENCE_MODELS} holdout rows for {REFERENCE_MODELS} references"
    return None


def _label_indices(served, labels: np.ndarray) -> np.ndarray:
    lookup = {str(c): i for i, c in enumerate(served.classes_.tolist())}
    return np.array([lookup.get(str(v), -1) for v in labels.tolist()], dtype=np.int64)


def membership_audit(
    served, train, holdout, *, seed: int = 0, progress: Progress = None
) -> tuple[dict, dict]:
    """Run every applicable attack on a balanced sample; returns (per-attack metrics, info)."""
    sample = balanced_sample(train.X, train.y, holdout.X, holdout.y, seed)
    if progress:
        progress(f"membership: {int(sample.is_member.sum())} members vs as many non-members")
    scores, skipped = attack_scores(
        served, sample, holdout.X, holdout.y, seed=seed, progress=progress
    )
    metrics = {name: attack_metrics(s, sample.is_member, seed) for name, s in scores.items()}
    info = {
        "members": int(sample.is_member.sum()),
        "non_members": int((~sample.is_member).sum()),
        "reference_models": 0 if "lira_offline" in skipped else REFERENCE_MODELS,
        "skipped": skipped,
    }
    return metrics, info
