"""Membership attack metrics: ROC AUC with a stratified bootstrap CI, TPR at 10%, 1% and 0.1%
FPR with exact (Clopper-Pearson) intervals, the advantage, a thinned ROC curve, and the same per
true class (subgroup leakage)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import binomtest, rankdata
from sklearn.metrics import roc_auc_score, roc_curve

if TYPE_CHECKING:
    from audits.privacy.membership import MembershipSample


FPR_TARGETS = {"tpr_at_10pct_fpr": 0.1, "tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001}
BOOTSTRAP_ROUNDS = 200
MIN_CLASS_ROWS = 10  # per side, for a class's own AUC


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest TPR reached at a false-positive rate no higher than ``target``."""
    return float(tpr[fpr <= target + 1e-12].max())


def clopper_pearson(successes: int, trials: int) -> list[float]:
    """Exact two-sided 95% interval of a binomial proportion."""
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=0.95, method="exact")
    return [float(ci.low), float(ci.high)]


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
    """AUC (+CI), TPR at 10/1/0.1% FPR with Clopper-Pearson CIs (null if unresolvable),
    advantage, and a thinned ROC curve."""
    fpr, tpr, _ = roc_curve(is_member, scores)
    n_members = int(is_member.sum())
    n_nonmembers = int((~is_member).sum())
    result: dict = {
        "auc": float(roc_auc_score(is_member, scores)),
        "auc_ci": bootstrap_auc_ci(scores, is_member, seed),
    }
    unresolvable = {}
    for key, target in FPR_TARGETS.items():
        needed = math.ceil(1 / target)
        if n_nonmembers < needed:
            result[key], result[f"{key}_ci"] = None, None
            unresolvable[key] = f"needs >= {needed} non-members, have {n_nonmembers}"
        else:
            result[key] = tpr_at_fpr(fpr, tpr, target)
            result[f"{key}_ci"] = clopper_pearson(round(result[key] * n_members), n_members)
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


def class_leakage(
    scores: dict[str, np.ndarray], sample: MembershipSample, classes: np.ndarray, seed: int
) -> list[dict]:
    """Per true class: members, non-members and every attack's metrics on that class alone;
    the class's top attack by AUC. A class with fewer than ``MIN_CLASS_ROWS`` on either side
    gets counts and a reason only."""
    rows = []
    for index, label in enumerate(classes.tolist()):
        mine = sample.y == index
        members = int((mine & sample.is_member).sum())
        others = int((mine & ~sample.is_member).sum())
        row: dict = {"class": _plain(label), "members": members, "non_members": others}
        if min(members, others) < MIN_CLASS_ROWS:
            row["reason"] = f"needs >= {MIN_CLASS_ROWS} members and non-members"
            rows.append(row)
            continue
        per_attack = {}
        for name, s in scores.items():
            metrics = attack_metrics(s[mine], sample.is_member[mine], seed)
            metrics.pop("roc")
            per_attack[name] = metrics
        top = max(per_attack, key=lambda name: per_attack[name]["auc"])
        row.update(top_attack=top, auc=per_attack[top]["auc"], attacks=per_attack)
        rows.append(row)
    return rows


def _plain(value):
    return value.item() if hasattr(value, "item") else value
