"""How much of the model an attacker obtained: the fidelity of a surrogate trained on exactly
the (features, served label) pairs the attacker received, measured on the holdout set."""

from __future__ import annotations

import numpy as np

from audits.forensics.surrogates import agreement


def surrogate_fidelity(
    X: np.ndarray, y: np.ndarray, holdout: np.ndarray, served: np.ndarray, seed: int = 0
) -> float:
    """Agreement with the served labels ``served`` on ``holdout`` of the better of the
    forensics' label-trained surrogates (:data:`audits.forensics.surrogates.LABEL_FAMILIES`)
    fitted to ``(X, y)``: the same measure the damage estimate makes from the logs."""
    agree, _ = agreement(np.asarray(X), np.asarray(y), holdout, np.asarray(served), seed)
    return round(float(agree.mean()), 4) if len(agree) else 0.0
