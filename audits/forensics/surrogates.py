"""The surrogate models an extraction attacker trains on the API's answers: one set, shared by
the damage estimate (:mod:`audits.forensics.damage`), the simulator's measure of what each
attacker achieved (:mod:`audits.simulation.fidelity`) and the privacy extraction study
(:mod:`audits.privacy.extraction`), so estimates, ground truth and study are comparable.

:func:`agreement` is the measure they share: per reference row, whether the better of the
label-trained surrogates (:data:`LABEL_FAMILIES`) agrees with the served answer.
"""

from __future__ import annotations

import warnings

import numpy as np

FAMILIES = ("logistic_regression", "gradient_boosting", "mlp")
LABEL_FAMILIES = ("logistic_regression", "gradient_boosting")
"""The families whose better one measures fidelity (the MLP is the privacy study's extra)."""
MAX_BINS = 255  # scikit-learn HistGradientBoosting's default
EARLY_STOP = {"n_iter_no_change": 3, "tol": 3e-2}
"""With ``stop_early``: the boosting stops once 3 iterations in a row improve its training loss
by less than 0.03 (no rows held out: it trains on every row it is given)."""


def make_surrogate(family: str, seed: int, *, c: float = 1.0, stop_early: bool = False):
    """A fresh, unfitted surrogate of one family, sized to train in seconds; ``c`` is the
    logistic regression's inverse regularisation. ``stop_early``: the gradient boosting stops
    on a training-loss plateau (:data:`EARLY_STOP`) instead of always growing 40 iterations;
    the damage estimate uses it, the simulator's truth and the privacy study do not."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if family == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300))
    if family == "gradient_boosting":
        stopping = {"early_stopping": False}
        if stop_early:
            stopping = {"early_stopping": True, "scoring": "loss", "validation_fraction": None}
            stopping.update(EARLY_STOP)
        return HistGradientBoostingClassifier(
            max_iter=40, learning_rate=0.2, max_leaf_nodes=7, random_state=seed, **stopping
        )
    if family == "mlp":
        mlp = MLPClassifier((64,), solver="lbfgs", max_iter=120, random_state=seed)
        return make_pipeline(StandardScaler(), mlp)
    raise ValueError(f"unknown surrogate family {family!r}")


def as_labels(values) -> np.ndarray:
    """Labels as text, so logged (``"1"``) and model (``1``) answers compare equal."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    return arr.astype(str)


def soft_rows(proba: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probability-trained surrogate's training set (soft-label cross-entropy): each query
    (``rows``, an index) once per class it was given probability for, weighted by it."""
    keep = proba > 1e-9
    rows, cls = np.nonzero(keep)
    return rows, columns[cls], proba[rows, cls]


def quantile_edges(X: np.ndarray, max_bins: int = MAX_BINS) -> list[np.ndarray]:
    """Per column of ``X``, the bin thresholds scikit-learn's ``HistGradientBoosting`` finds on
    its rows unweighted: midpoints of the distinct values when there are at most ``max_bins``,
    else quantiles ("averaged_inverted_cdf", as it computes them)."""
    inner = np.linspace(0, 100, max_bins + 1)[1:-1]
    edges = []
    for column in np.asarray(X, dtype=np.float64).T:
        distinct = np.unique(column)
        if len(distinct) <= max_bins:
            edges.append((distinct[:-1] + distinct[1:]) / 2)
        else:
            edges.append(np.unique(np.percentile(column, inner, method="averaged_inverted_cdf")))
    return edges


def to_bins(X: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """``X`` as bin numbers (bin i holds ``edges[i-1] < x <= edges[i]``, as scikit-learn maps
    them), so a ``HistGradientBoosting`` fit finds at most ``MAX_BINS`` distinct values per
    column and keeps them as its bins: the binning is decided here, once, from unweighted rows
    rather than by weighted quantiles in every fit."""
    columns = [np.searchsorted(e, X[:, j], side="left") for j, e in enumerate(edges)]
    return np.column_stack(columns).astype(np.float64) if columns else np.asarray(X, float)


def _fit(name: str, model, X: np.ndarray, y: np.ndarray, w: np.ndarray | None):
    if w is None:
        return model.fit(X, y)
    if name == "logistic_regression":
        return model.fit(X, y, logisticregression__sample_weight=w)
    return model.fit(X, y, sample_weight=w)


def agreement(
    X: np.ndarray,
    y: np.ndarray,
    ref_X: np.ndarray,
    ref_y: np.ndarray,
    seed: int,
    proba: np.ndarray | None = None,
    columns: np.ndarray | None = None,
    families: tuple[str, ...] = LABEL_FAMILIES,
    stop_early: bool = False,
) -> tuple[np.ndarray, str]:
    """Per reference row, whether the better surrogate of ``families`` agrees with the served
    answer, and that surrogate's name. The surrogates fit the labels ``y``, or, when ``proba``
    (columns = ``columns``) is given, the served probabilities as soft labels; the
    gradient-boosting one then trains on bins of the queries (:func:`to_bins`). ``stop_early``:
    the boosting stops on a training-loss plateau (:func:`make_surrogate`)."""
    inputs = {"logistic_regression": (X, ref_X), "gradient_boosting": (X, ref_X)}
    if proba is not None and columns is not None:
        rows, y, w = soft_rows(proba, columns)
        inputs = {"logistic_regression": (X[rows], ref_X)}
        if "gradient_boosting" in families:
            edges = quantile_edges(X)
            inputs["gradient_boosting"] = (to_bins(X, edges)[rows], to_bins(ref_X, edges))
        target = "probabilities"
    else:
        w, target = None, "labels"
    classes = np.unique(y)
    if len(classes) == 0:
        return np.zeros(len(ref_y), dtype=bool), "none"
    if len(classes) < 2:
        return ref_y == classes[0], "constant"
    best, best_name = None, ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in families:
            train_X, test_X = inputs[name]
            try:
                surrogate = make_surrogate(name, seed, stop_early=stop_early)
                model = _fit(name, surrogate, train_X, y, w)
            except ValueError:
                continue
            agree = model.predict(test_X) == ref_y
            if best is None or agree.mean() > best.mean():
                best, best_name = agree, f"{name} ({target})"
    if best is None:
        return np.zeros(len(ref_y), dtype=bool), "none"
    return best, best_name


def winner(name: str) -> tuple[str, ...]:
    """The family of a surrogate name :func:`agreement` returned (all of
    :data:`LABEL_FAMILIES` for a constant or no surrogate)."""
    family = name.split(" ", 1)[0]
    return (family,) if family in LABEL_FAMILIES else LABEL_FAMILIES
