"""How much of the model an attacker obtained: the fidelity of a surrogate trained on exactly
the (features, served label) pairs the attacker received, measured on the holdout set."""

from __future__ import annotations

import warnings

import numpy as np


def surrogate_fidelity(
    X: np.ndarray, y: np.ndarray, holdout: np.ndarray, served: np.ndarray, seed: int = 0
) -> float:
    """Agreement with the served labels ``served`` on ``holdout`` of the better of a logistic
    regression and a gradient-boosting surrogate fitted to ``(X, y)``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y)
    if len(classes) < 2:
        return round(float(np.mean(served == classes[0])) if len(classes) else 0.0, 4)
    surrogates = (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
        HistGradientBoostingClassifier(
            max_iter=40,
            learning_rate=0.2,
            max_leaf_nodes=15,
            early_stopping=False,
            random_state=seed,
        ),
    )
    best = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for surrogate in surrogates:
            agreement = float(np.mean(surrogate.fit(X, y).predict(holdout) == served))
            best = max(best, agreement)
    return round(best, 4)
