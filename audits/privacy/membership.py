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
forest). RMIA's ``a`` and temperature are chosen by attacking one reference model with the
others (TPR at 1% FPR, then AUC), never on the target's members.

Metrics come from scikit-learn and SciPy: ROC AUC with a stratified bootstrap CI, TPR at 10%,
1% and 0.1% FPR with exact (Clopper-Pearson) 95% intervals, and the advantage max(TPR - FPR).
A TPR at FPR ``f`` needs at least ``ceil(1/f)`` non-members (10 for 10%, 100 for 1%, 1,000 for
0.1%); with fewer it is reported as null with a reason. Per class, the same metrics of every
attack on that class's members and non-members (subgroup leakage).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binomtest, rankdata
from sklearn.base import clone
from sklearn.metrics import roc_auc_score, roc_curve

EPS = 1e-6
ATTACKS = ("max_confidence", "loss", "modified_entropy", "lira_offline", "rmia", "label_only")
REFERENCE_ATTACKS = ("lira_offline", "rmia")
FPR_TARGETS = {"tpr_at_10pct_fpr": 0.1, "tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001}
REFERENCE_MODELS = 4
MIN_ROWS_PER_REFERENCE = 10
BOOTSTRAP_ROUNDS = 200
RMIA_A_GRID = tuple(np.round(np.arange(0.0, 1.01, 0.1), 2))
RMIA_DEFAULT_A = 0.3  # the reference implementation's default, used with one reference model
RMIA_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0)
POPULATION_ROWS = 5000
MIN_CLASS_ROWS = 10  # per side, for a class's own AUC

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


def logit_confidence(p_y: np.ndarray) -> np.ndarray:
    """LiRA's phi: log p_y - log(sum of the other classes' probabilities)."""
    p_y = np.clip(p_y, EPS, 1 - EPS)
    return np.log(p_y) - np.log1p(-p_y)


# ---------------------------------------------------------------- reference models


@dataclass(frozen=True)
class References:
    """Clipped log-probabilities of reference models on the sample and on population rows,
    with masks of the rows each model did not train on (OUT)."""

    sample_logp: np.ndarray  # (models, sample rows, classes)
    sample_out: np.ndarray  # bool, (models, sample rows)
    population_logp: np.ndarray  # (models, population rows, classes)
    population_out: np.ndarray
    population_rows: np.ndarray  # holdout rows used as the population z
    population_y: np.ndarray
    split_of: np.ndarray  # for each holdout row, the reference model trained on it
    family: str  # "clone" or the family of the stand-in model

    def __len__(self) -> int:
        return len(self.sample_logp)


def log_proba(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(proba, EPS, 1.0))


def tempered_true_prob(logp: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The true class's softmax probability with the log-probabilities as logits divided by
    ``temperature`` (1: the model's own probability, up to clipping); ``logp`` may have a
    leading models axis."""
    index = np.broadcast_to(y[:, None], (*logp.shape[:-1], 1))
    gaps = (logp - np.take_along_axis(logp, index, axis=-1)) / temperature
    return np.exp(-logsumexp(gaps, axis=-1))


def reference_estimator(served, seed: int):
    """What reference models are fitted from: a clone of the served estimator, or for a model
    that cannot be re-fitted a fresh model of the nearest family (and that family's name)."""
    if served.kind != "onnx" and hasattr(served.estimator, "get_params"):
        return served.estimator, "clone"
    from audits.ownership import architecture, make_model

    family = architecture(served) or "random_forest"
    return make_model(family, seed), family


def fit_references(
    served,
    sample: MembershipSample,
    X_holdout: np.ndarray,
    y_holdout: np.ndarray,
    *,
    n_models: int,
    seed: int,
    progress: Progress = None,
) -> References:
    """``n_models`` reference models on disjoint splits of the holdout (one model: on half)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_holdout))
    parts = max(n_models, 2)  # one model trains on one half and is OUT for the other
    splits = np.array_split(order, parts)
    split_of = np.empty(len(y_holdout), dtype=np.int64)
    for k, rows in enumerate(splits):
        split_of[rows] = k
    population = np.sort(rng.permutation(len(y_holdout))[:POPULATION_ROWS])
    estimator, family = reference_estimator(served, seed)
    n_classes = len(served.classes_)
    sample_logp = np.empty((n_models, len(sample.y), n_classes))
    population_logp = np.empty((n_models, len(population), n_classes))
    for k in range(n_models):
        rows = splits[k]
        if progress:
            progress(f"membership: fitting reference model {k + 1}/{n_models} on {len(rows)} rows")
        model = clone(estimator).fit(X_holdout[rows], y_holdout[rows])
        sample_logp[k] = log_proba(_full_proba(model, sample.X, n_classes))
        population_logp[k] = log_proba(_full_proba(model, X_holdout[population], n_classes))
    models = np.arange(n_models)[:, None]
    sample_out = np.ones((n_models, len(sample.y)), dtype=bool)
    nonmember = np.flatnonzero(~sample.is_member)
    sample_out[:, nonmember] = split_of[sample.holdout_rows][None, :] != models
    population_out = split_of[population][None, :] != models
    return References(
        sample_logp,
        sample_out,
        population_logp,
        population_out,
        population,
        y_holdout[population],
        split_of,
        family,
    )


def _full_proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all classes, even when a reference split lacked some of them."""
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(X)
    return proba


# ---------------------------------------------------------------- LiRA


def score_lira_offline(target_logp: np.ndarray, y: np.ndarray, refs: References) -> np.ndarray:
    """Offline LiRA z-scores: (phi_target - mean phi_out) / sd_out, per row."""
    phi = logit_confidence(tempered_true_prob(target_logp, y))
    phis = logit_confidence(tempered_true_prob(refs.sample_logp, y))
    return _gaussian_z(phi, phis, refs.sample_out)


def _gaussian_z(phi: np.ndarray, phis: np.ndarray, used: np.ndarray) -> np.ndarray:
    """z of ``phi`` under per-row Gaussians, the variance shrunk towards the pooled one; a row
    without an OUT model takes the mean over all OUT values and the pooled variance."""
    count = used.sum(axis=0)
    mean = np.where(used, phis, 0).sum(axis=0) / np.maximum(count, 1)
    if (count == 0).any():  # no OUT model (one reference, which trained on the row)
        mean = np.where(count > 0, mean, phis[used].mean() if used.any() else 0.0)
    sq = np.where(used, (phis - mean) ** 2, 0).sum(axis=0)
    pooled = sq.sum() / max(1, np.maximum(count - 1, 0).sum())
    if not pooled > 0:
        pooled = 1.0
    prior = 2.0  # pseudo-observations of the pooled variance
    var = (sq + prior * pooled) / (np.maximum(count - 1, 0) + prior)
    return (phi - mean) / np.sqrt(np.maximum(var, 1e-12))


# ---------------------------------------------------------------- RMIA


def rmia_marginal(p_ref: np.ndarray, out: np.ndarray, a: float) -> np.ndarray:
    """P(x) per row from reference models: ((1 + a) mean P_out + (1 - a)) / 2.

    A row with no OUT model (one reference model, which trained on it) takes P_out from its
    IN probability by inverting that relation (as the reference implementation does)."""
    count = out.sum(axis=0)
    mean_out = np.where(out, p_ref, 0).sum(axis=0) / np.maximum(count, 1)
    if (count == 0).any():
        mean_in = np.where(~out, p_ref, 0).sum(axis=0) / np.maximum((~out).sum(axis=0), 1)
        from_in = (mean_in + a - 1) / a if a > 0 else (mean_in - 0.7) / 0.3
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


def tune_rmia(refs: References) -> tuple[float, float]:
    """``(a, temperature)`` that best attack reference model 0 with the others (its split are
    its members, the other population rows its non-members), by TPR at 1% FPR then AUC; the
    defaults (0.3, 1) with one reference model."""
    defaults = (RMIA_DEFAULT_A, 1.0)
    if len(refs) < 2:
        return defaults
    members = refs.split_of[refs.population_rows] == 0
    if members.all() or not members.any():
        return defaults
    y, out = refs.population_y, refs.population_out[1:]
    best, best_key = defaults, (-1.0, -1.0)
    for temperature in RMIA_TEMPERATURES:
        p = tempered_true_prob(refs.population_logp, y, temperature)
        for a in RMIA_A_GRID:
            scores = rmia_scores(p[0], p[1:], out, p[0], p[1:], out, a)
            fpr, tpr, _ = roc_curve(members, scores)
            key = (tpr_at_fpr(fpr, tpr, 0.01), float(roc_auc_score(members, scores)))
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


# ---------------------------------------------------------------- metrics


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


# ---------------------------------------------------------------- the audit


def attack_scores(
    served,
    sample: MembershipSample,
    X_holdout: np.ndarray,
    y_holdout: np.ndarray,
    *,
    seed: int,
    reference_models: int = REFERENCE_MODELS,
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
            progress=progress,
        )
        target_logp = log_proba(proba)
        population = refs.population_rows
        target_pop = log_proba(served.predict_proba(X_holdout[population]))
        a, temperature = tune_rmia(refs)
        scores["lira_offline"] = score_lira_offline(target_logp, sample.y, refs)
        scores["rmia"] = score_rmia(target_logp, sample.y, target_pop, refs, a, temperature)
        info = {
            "reference_family": refs.family,
            "rmia_a": a,
            "rmia_temperature": temperature,
            "population_rows": len(population),
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
    progress: Progress = None,
) -> tuple[dict, dict]:
    """Run every applicable attack on a balanced sample; returns (per-attack metrics, info)."""
    if reference_models < 1:
        raise ValueError(f"reference_models must be >= 1, got {reference_models}")
    sample = balanced_sample(train.X, train.y, holdout.X, holdout.y, seed)
    if progress:
        progress(f"membership: {int(sample.is_member.sum())} members vs as many non-members")
    scores, skipped, ref_info = attack_scores(
        served,
        sample,
        holdout.X,
        holdout.y,
        seed=seed,
        reference_models=reference_models,
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
