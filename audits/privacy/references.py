"""Reference models shared by LiRA and RMIA: fitted on disjoint splits of the holdout, each used
as an OUT model only for rows it did not train on; non-members no reference model left out
(one reference model: the half it trained on) are not audited by either attack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logsumexp
from sklearn.base import clone

from audits.errors import InputError
from audits.models import load_skops_estimator

if TYPE_CHECKING:
    from audits.privacy.membership import MembershipSample


EPS = 1e-6
POPULATION_ROWS = 5000

Progress = Callable[[str], None] | None


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
    family: str  # "clone", "recipe" (given by the caller) or the family of the stand-in model
    estimator: str = ""  # the class name of what the reference models are fitted from

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


def reference_estimator(served, seed: int, recipe=None):
    """What reference models are fitted from, and its origin: the training ``recipe`` when the
    caller gives one (an ONNX file carries none), else a clone of the served estimator, else for
    a model that cannot be re-fitted a fresh model of the nearest family (that family's name)."""
    if recipe is not None:
        return recipe, "recipe"
    if served.kind != "onnx" and hasattr(served.estimator, "get_params"):
        return served.estimator, "clone"
    from audits.ownership import architecture, make_model

    family = architecture(served) or "random_forest"
    return make_model(family, seed), family


def plan_references(n_holdout: int, n_models: int, seed: int) -> tuple[list, np.ndarray]:
    """The holdout rows each reference model trains on (disjoint, in a seeded random order;
    with one model, the second half is never trained on) and the rows used as population z."""
    rng = np.random.default_rng(seed)
    parts = max(n_models, 2)  # one model trains on one half and is OUT for the other
    splits = np.array_split(rng.permutation(n_holdout), parts)
    population = np.sort(rng.permutation(n_holdout)[:POPULATION_ROWS])
    return splits, population


def split_index(splits: list, n_holdout: int) -> np.ndarray:
    """For each holdout row, the index of the split it belongs to."""
    split_of = np.empty(n_holdout, dtype=np.int64)
    for k, rows in enumerate(splits):
        split_of[rows] = k
    return split_of


def out_models(split_of: np.ndarray, n_models: int) -> np.ndarray:
    """bool (models, rows): the reference models that did not train on each holdout row."""
    return split_of[None, :] != np.arange(n_models)[:, None]


def auditable_holdout(split_of: np.ndarray, n_models: int) -> np.ndarray:
    """Holdout rows at least one reference model did not train on: the only non-members the
    reference attacks are scored on, so members and non-members meet the same formula."""
    return np.flatnonzero(out_models(split_of, n_models).any(axis=0))


def fit_references(
    served,
    sample: MembershipSample,
    X_holdout: np.ndarray,
    y_holdout: np.ndarray,
    *,
    n_models: int,
    seed: int,
    recipe=None,
    progress: Progress = None,
) -> References:
    """``n_models`` reference models on disjoint splits of the holdout (one model: on half),
    laid out by :func:`plan_references` with the same seed, fitted from
    :func:`reference_estimator`."""
    splits, population = plan_references(len(y_holdout), n_models, seed)
    split_of = split_index(splits, len(y_holdout))
    estimator, family = reference_estimator(served, seed, recipe)
    n_classes = len(served.classes_)
    sample_logp = np.empty((n_models, len(sample.y), n_classes))
    population_logp = np.empty((n_models, len(population), n_classes))
    for k in range(n_models):
        rows = splits[k]
        if progress:
            progress(f"membership: fitting reference model {k + 1}/{n_models} on {len(rows)} rows")
        model = _fit(estimator, family, X_holdout[rows], y_holdout[rows])
        sample_logp[k] = log_proba(_full_proba(model, sample.X, n_classes))
        population_logp[k] = log_proba(_full_proba(model, X_holdout[population], n_classes))
    sample_out = np.ones((n_models, len(sample.y)), dtype=bool)
    nonmember = np.flatnonzero(~sample.is_member)
    sample_out[:, nonmember] = out_models(split_of[sample.holdout_rows], n_models)
    return References(
        sample_logp,
        sample_out,
        population_logp,
        out_models(split_of[population], n_models),
        population,
        y_holdout[population],
        split_of,
        family,
        _estimator_name(estimator),
    )


def _fit(estimator, family: str, X: np.ndarray, y: np.ndarray):
    """A fresh clone fitted on one split; a caller's recipe that cannot be fitted on the
    holdout is an input error, not a traceback."""
    if family != "recipe":
        return clone(estimator).fit(X, y)
    try:
        return clone(estimator).fit(X, y)
    except Exception as exc:
        raise InputError(
            f"the reference recipe {_estimator_name(estimator)} cannot be fitted on the "
            f"holdout rows: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _estimator_name(estimator) -> str:
    """The estimator's class, with a pipeline's final step: ``Pipeline(MLPClassifier)``."""
    name = type(estimator).__name__
    steps = getattr(estimator, "steps", None)
    return f"{name}({type(steps[-1][1]).__name__})" if steps else name


def load_reference_recipe(path: str | Path):
    """A training recipe for reference models from a ``.skops`` file: a scikit-learn
    estimator, fitted or not (only its parameters are used: it is cloned). Loaded with the
    served-model loader's type checks; anything else is an :class:`InputError`."""
    path = Path(path)
    if path.suffix.lower() != ".skops":
        raise InputError(f"--reference-recipe must be a .skops file, got {path.name}")
    if not path.is_file():
        raise InputError(f"reference recipe not found: {path}")
    recipe = load_skops_estimator(path)
    if not (hasattr(recipe, "get_params") and hasattr(recipe, "fit")):
        raise InputError(f"{path} holds a {type(recipe).__name__}, not a scikit-learn estimator")
    if not hasattr(recipe, "predict_proba"):
        raise InputError(f"{path}: a {_estimator_name(recipe)} serves no probabilities")
    return recipe


def _full_proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all classes, even when a reference split lacked some of them."""
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(X)
    return proba
