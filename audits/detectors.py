"""User-level detectors over the feature table (higher score = more extraction-like), and the
registry that drives the suite, the ``score_<name>`` columns and the ``user_scores`` schema.

* ``extraction`` (role ``EVIDENCE``): the directional, sample-size-aware evidence of
  :class:`audits.detection.directional.DirectionalScorer`, in z units.
* ``entropy``: the original design's detector: the entropy of a user's predicted classes times
  the entropy of their queries over the input-space cells of the reference (coverage).
* ``iforest``, ``lof``, ``ocsvm``, ``autoencoder``: PyOD detectors on standardised user features.
  They flag whatever is rare, benign or not: role ``TIE_BREAK``, they enter the combined score
  only through the guarded combination in :mod:`audits.scoring`. LOF and OCSVM are O(n^2) in
  the number of users: above ``FIT_CAP`` users they are fitted on a seeded random subsample.

Every detector follows :class:`audits.detection.contract.Detector` (``fit``,
``decision_function``, fitted attributes ending in ``_``). Adding one is one
:class:`~audits.detection.contract.DetectorSpec` in ``REGISTRY``. No detector uses a
contamination rate: the threshold is chosen in scoring.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import polars as pl

from audits.detection.contract import (
    EVIDENCE,
    TIE_BREAK,
    Detector,
    DetectorContext,
    DetectorSpec,
)
from audits.detection.directional import (  # noqa: F401  (re-exported)
    EXTRACTION_SIGNALS,
    DirectionalScorer,
    agreement,
)
from audits.detection.nulls import (  # noqa: F401  (re-exported)
    ReferenceNull,
    SampleSizeNull,
    effective_n,
    reference_null,
    sample_sizes,
)
from audits.features import FEATURE_COLUMNS

FIT_CAP = 2000  # users: LOF / OCSVM fit on at most this many (seeded subsample)
AE_EPOCHS = 30
AE_BATCH = 32

# count-like, heavy-tailed columns: log1p before standardising
_LOG_COLUMNS = (
    "n_events",
    "n_days",
    "events_per_day",
    "max_day_events",
    "rate_per_hour",
    "gap_mean_s",
    "active_hours",
    "n_sessions",
    "session_len_mean",
    "session_len_max",
    "session_dur_mean_s",
)


class Standardiser:
    """log1p on counts, NaN -> median, robust z (median / IQR), clipped to +-10 so that one
    extreme user cannot dominate a distance; statistics fitted on one population."""

    def __init__(self, columns: tuple[str, ...] = FEATURE_COLUMNS) -> None:
        self.columns = columns

    def _raw(self, features: pl.DataFrame) -> np.ndarray:
        X = features.select([pl.col(c).cast(pl.Float64) for c in self.columns]).to_numpy().copy()
        for k, c in enumerate(self.columns):
            if c in _LOG_COLUMNS:
                X[:, k] = np.log1p(np.maximum(X[:, k], 0.0))
        X[~np.isfinite(X)] = np.nan
        return X

    def fit(self, features: pl.DataFrame) -> Standardiser:
        X = self._raw(features)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            med = np.nanmedian(X, axis=0)
        self.med = np.where(np.isfinite(med), med, 0.0)
        X = np.where(np.isnan(X), self.med, X)
        q75, q25 = np.percentile(X, [75, 25], axis=0)
        scale = (q75 - q25) / 1.349
        std = X.std(axis=0)
        self.scale = np.where(scale > 1e-9, scale, np.where(std > 1e-9, std, 1.0))
        return self

    def transform(self, features: pl.DataFrame) -> np.ndarray:
        X = self._raw(features)
        X = np.where(np.isnan(X), self.med, X)
        return np.clip((X - self.med) / self.scale, -10.0, 10.0)


class EntropyDetector:
    """The original design's detector: predicted-class entropy x input-space coverage entropy,
    both normalised to [0, 1] (nothing to fit)."""

    def fit(self, features: pl.DataFrame) -> EntropyDetector:
        self.fitted_ = True
        return self

    def decision_function(self, features: pl.DataFrame) -> np.ndarray:
        return entropy_score(features)


def entropy_score(features: pl.DataFrame) -> np.ndarray:
    """Predicted-class entropy x input-space coverage entropy, both normalised to [0, 1]."""
    h = features["class_entropy"].fill_null(0.0).fill_nan(0.0).to_numpy()
    c = features["cell_entropy"].fill_null(0.0).fill_nan(0.0).to_numpy()
    return h * c


def _subsample(n: int, seed: int) -> np.ndarray:
    if n <= FIT_CAP:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, FIT_CAP, replace=False))


def _iforest(X: np.ndarray, seed: int):
    from pyod.models.iforest import IForest

    return IForest(n_estimators=200, max_samples=min(256, len(X)), random_state=seed).fit(X)


def _lof(X: np.ndarray, seed: int):
    from pyod.models.lof import LOF

    fit = X[_subsample(len(X), seed)]
    return LOF(n_neighbors=min(20, max(len(fit) - 1, 1)), novelty=True).fit(fit)


def _ocsvm(X: np.ndarray, seed: int):
    from pyod.models.ocsvm import OCSVM

    return OCSVM(kernel="rbf", gamma="scale", nu=0.05).fit(X[_subsample(len(X), seed)])


@contextmanager
def _one_torch_thread():
    """torch on one thread while the block runs: the autoencoder's batches are a few dozen
    rows, and with two threads on a busy machine each tiny batch-norm waited for the other
    thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autoencoder(X: np.ndarray, seed: int):
    """A small torch autoencoder (PyOD ``AutoEncoder``); rows are repeated up to one batch when
    there are fewer (its loader drops the last partial batch)."""
    import torch
    from pyod.models.auto_encoder import AutoEncoder

    torch.manual_seed(seed)
    train = X if len(X) >= AE_BATCH else np.resize(X, (AE_BATCH, X.shape[1]))
    width = X.shape[1]
    model = AutoEncoder(
        epoch_num=AE_EPOCHS,
        batch_size=AE_BATCH,
        random_state=seed,
        verbose=0,
        hidden_neuron_list=[max(width // 2, 4), max(width // 4, 2)],
        dropout_rate=0.1,
        preprocessing=False,
        device="cpu",
    )
    with warnings.catch_warnings(), _one_torch_thread():
        warnings.simplefilter("ignore")
        return model.fit(train)


class PyODDetector:
    """A PyOD model on the standardised user features (``FEATURE_COLUMNS``); fewer than three
    users, or none to score, give zeros."""

    def __init__(self, build, seed: int = 0) -> None:
        self.build = build
        self.seed = seed

    def fit(self, features: pl.DataFrame) -> PyODDetector:
        self.standardiser_ = Standardiser().fit(features)
        X = self.standardiser_.transform(features)
        self.model_ = None
        if len(X) >= 3:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model_ = self.build(X, self.seed)
        return self

    def decision_function(self, features: pl.DataFrame) -> np.ndarray:
        X = self.standardiser_.transform(features)
        if self.model_ is None or len(X) == 0:
            return np.zeros(len(X))
        with warnings.catch_warnings(), _one_torch_thread():
            warnings.simplefilter("ignore")
            return np.asarray(self.model_.decision_function(X), dtype=np.float64)


def _pyod(build) -> Callable[[DetectorContext], Detector]:
    return lambda context: PyODDetector(build, context.seed)


# the suite, its ``score_<name>`` columns (in this order) and the user_scores schema
REGISTRY: tuple[DetectorSpec, ...] = (
    DetectorSpec("extraction", EVIDENCE, lambda context: DirectionalScorer(context.reference)),
    DetectorSpec("entropy", TIE_BREAK, lambda context: EntropyDetector()),
    DetectorSpec("iforest", TIE_BREAK, _pyod(_iforest)),
    DetectorSpec("lof", TIE_BREAK, _pyod(_lof)),
    DetectorSpec("ocsvm", TIE_BREAK, _pyod(_ocsvm)),
    DetectorSpec("autoencoder", TIE_BREAK, _pyod(_autoencoder)),
)
DETECTOR_NAMES: tuple[str, ...] = tuple(spec.name for spec in REGISTRY)
EVIDENCE_DETECTORS: frozenset[str] = frozenset(s.name for s in REGISTRY if s.role == EVIDENCE)


class DetectorSuite:
    """Every registered detector fitted on one window's users; ``score`` then scores any
    feature rows (the same users, or prefixes of their traffic for the detection delay)."""

    def __init__(
        self,
        seed: int = 0,
        registry: tuple[DetectorSpec, ...] = REGISTRY,
        reference: ReferenceNull | None = None,
    ) -> None:
        self.seed = seed
        self.registry = registry
        self.reference = reference

    def fit(self, features: pl.DataFrame) -> DetectorSuite:
        context = DetectorContext(self.seed, self.reference)
        self.detectors_ = {spec.name: spec.build(context).fit(features) for spec in self.registry}
        return self

    def score(self, features: pl.DataFrame) -> dict[str, np.ndarray]:
        """``{detector: scores}``, higher = more suspicious, for every row of ``features``."""
        return {
            name: np.asarray(detector.decision_function(features), dtype=np.float64)
            for name, detector in self.detectors_.items()
        }
