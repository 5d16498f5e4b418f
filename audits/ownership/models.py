"""The model zoo of the ownership check: fresh models per family, the family a suspect's file
shows, and the copy an attacker could train from its logged traffic."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from audits.forensics import as_labels


def make_model(family: str, seed: int):
    """A fresh classifier of one family: the surrogates' and the independent models' zoo (the
    extraction study's surrogate families, plus a deeper MLP and a random forest)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from audits.privacy.extraction import FAMILIES, make_surrogate

    if family in FAMILIES:
        return make_surrogate(family, seed)
    if family == "mlp_deep":
        mlp = MLPClassifier((32, 32), solver="lbfgs", alpha=1e-3, max_iter=120, random_state=seed)
        return make_pipeline(StandardScaler(), mlp)
    if family == "random_forest":
        return RandomForestClassifier(60, min_samples_leaf=2, random_state=seed, n_jobs=1)
    if family == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(15))
    raise ValueError(f"unknown model family {family!r}")


def fit_quietly(model, X: np.ndarray, y: np.ndarray):
    """Fit without convergence warnings (L-BFGS stops at ``max_iter`` on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, y)


# ---------------------------------------------------------------- candidates


ARCHITECTURES = {
    "LogisticRegression": "logistic_regression",
    "SGDClassifier": "logistic_regression",
    "LinearSVC": "logistic_regression",
    "HistGradientBoostingClassifier": "gradient_boosting",
    "GradientBoostingClassifier": "gradient_boosting",
    "RandomForestClassifier": "random_forest",
    "ExtraTreesClassifier": "random_forest",
    "KNeighborsClassifier": "knn",
}


def architecture(suspect) -> str | None:
    """The null family of the suspect's own architecture, read from the file, or ``None``.

    A scikit-learn estimator (the last step of a pipeline) by class, an MLP by its number of
    hidden layers; an ONNX graph by its classifier operators (a ``LinearClassifier``, or dense
    layers: ``MatMul``/``Gemm`` nodes). Tree ensembles in ONNX, and anything else, are
    ``None``: verify then takes the most conservative family."""
    if suspect.kind == "onnx":
        return _onnx_architecture(Path(suspect.path))
    est = suspect.estimator
    while hasattr(est, "steps") and est.steps:
        est = est.steps[-1][1]
    name = type(est).__name__
    if name == "MLPClassifier":
        layers = np.atleast_1d(getattr(est, "hidden_layer_sizes", ()))
        return "mlp" if len(layers) <= 1 else "mlp_deep"
    return ARCHITECTURES.get(name)


def _onnx_architecture(path: Path) -> str | None:
    try:
        import onnx

        ops = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
    except Exception:  # onnxruntime already accepted the file; onnx may be missing
        return None
    if "LinearClassifier" in ops:
        return "logistic_regression"
    dense = sum(op in ("MatMul", "Gemm") for op in ops)
    if dense and not any(op.startswith("TreeEnsemble") for op in ops):
        return "mlp" if dense <= 2 else "mlp_deep"
    return None


def train_copy(events, family: str, *, width: int, seed: int = 0):
    """The copy an attacker could train from its logged traffic: a ``family`` model fitted on
    the (query, served label) pairs of ``events`` (one key or a group's union), or ``None``
    when the traffic shows fewer than two labels."""
    from threadpoolctl import threadpool_limits

    from audits.forensics import traffic

    t = traffic(events, width)
    if len(np.unique(t.y)) < 2:
        return None
    with threadpool_limits(limits=1):  # OpenMP threads only spin on small data
        return fit_quietly(make_model(family, seed), t.X, as_labels(t.y))
