"""User-level detectors over the feature table (higher score = more extraction-like).

* ``entropy``: the original design's detector: the entropy of a user's predicted classes times
  the entropy of their queries over the input-space cells of the reference (coverage).
* ``iforest``, ``lof``, ``ocsvm``, ``autoencoder``: PyOD detectors on standardised user features.
  They flag whatever is rare, benign or not; their scores are kept, and enter the combined score
  only through the guarded combination in :mod:`audits.scoring`.
  LOF and OCSVM are O(n^2) in the number of users: above ``FIT_CAP`` users they are fitted on a
  seeded random subsample of ``FIT_CAP`` users and score everyone with ``decision_function``.
* ``extraction``: a directional evidence score. Each feature that can mean extraction is turned
  into a one-sided robust z-score against the population (only deviations in the extraction
  direction count), and benign explanations (cross-day repeats, exact repeats, narrow one-feature
  sweeps, small volumes) discount it. See ``extraction_score``.

No detector uses a contamination rate: PyOD's ``contamination`` is irrelevant here because only
``decision_scores_`` / ``decision_function`` are read; the threshold is chosen in scoring.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import polars as pl

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
    rows, and with two threads on a busy machine each tiny batch-norm waited tens of
    milliseconds for the other thread (300 users: 24-63 s instead of 0.4 s)."""
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


PYOD_DETECTORS = {"iforest": _iforest, "lof": _lof, "ocsvm": _ocsvm, "autoencoder": _autoencoder}


class DetectorSuite:
    """Every detector fitted on one window's users; ``score`` then scores any feature rows
    (the same users, or prefixes of their traffic for the detection delay)."""

    def __init__(self, seed: int = 0, detectors: tuple[str, ...] = tuple(PYOD_DETECTORS)) -> None:
        self.seed = seed
        self.detectors = detectors

    def fit(self, features: pl.DataFrame) -> DetectorSuite:
        self.standardiser = Standardiser().fit(features)
        X = self.standardiser.transform(features)
        self.models = {}
        if len(X) >= 3:
            for name in self.detectors:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.models[name] = PYOD_DETECTORS[name](X, self.seed)
        self.direction = DirectionalScorer().fit(features)
        return self

    def score(self, features: pl.DataFrame) -> dict[str, np.ndarray]:
        """``{detector: scores}``, higher = more suspicious, for every row of ``features``."""
        X = self.standardiser.transform(features)
        out = {"extraction": self.direction.score(features), "entropy": entropy_score(features)}
        for name in self.detectors:
            model = self.models.get(name)
            if model is None or len(X) == 0:
                out[name] = np.zeros(len(X))
                continue
            with warnings.catch_warnings(), _one_torch_thread():
                warnings.simplefilter("ignore")
                out[name] = np.asarray(model.decision_function(X), dtype=np.float64)
        return out


# ---------------------------------------------------------------- the directional detector

# (feature, direction): +1 = higher is more extraction-like, -1 = lower is
EXTRACTION_SIGNALS: dict[str, tuple[tuple[str, int], ...]] = {
    # far from the legitimate data: uniform probing, knockoff pools, Sybil / low-and-slow
    "off_distribution": (
        ("ref_nn_dist", +1),
        ("manifold_residual", +1),
        ("ref_mean_shift", +1),
        ("out_of_range_share", +1),
    ),
    # broad coverage of the input space and of the classes
    "coverage": (
        ("cell_entropy", +1),
        ("coverage", +1),
        ("q_std_ratio", +1),
        ("class_entropy", +1),
    ),
    # marching in small steps: JBDA, HopSkipJump (PRADA's signal)
    "small_steps": (("near_dup_rate", +1), ("prada_w", -1), ("step_ratio", -1)),
    # hugging the decision boundary: ActiveThief, HopSkipJump
    "boundary": (("low_margin_share", +1), ("conf_p10", -1)),
}


class DirectionalScorer:
    """The guarded, directional evidence of extraction.

    For every feature of ``EXTRACTION_SIGNALS`` a one-sided robust z-score against the fitted
    population (median / MAD of the users with at least ``MIN_DISTINCT`` distinct queries): only
    deviations in the extraction direction count. A signal group's evidence is the mean of its
    features' z; the user's evidence is the geometric mean of the two strongest groups plus a
    quarter of the strongest.
    Benign explanations then discount it multiplicatively: queries repeated (the same day or
    an earlier one), one-feature-at-a-time sweeps, and too few distinct queries to show a
    distribution at all.
    """

    MIN_DISTINCT = 30

    def fit(self, features: pl.DataFrame) -> DirectionalScorer:
        n = features["n_events"].to_numpy().astype(np.float64)
        unique = features["unique_share"].fill_null(1.0).to_numpy() * n
        mask = unique >= self.MIN_DISTINCT
        if mask.sum() < 10:
            mask = np.ones(len(n), dtype=bool)
        self.stats: dict[str, tuple[float, float]] = {}
        for signals in EXTRACTION_SIGNALS.values():
            for c, _ in signals:
                x = features[c].cast(pl.Float64).to_numpy()
                base = x[mask & np.isfinite(x)]
                if len(base) < 3:
                    self.stats[c] = (0.0, 1.0)
                    continue
                med = float(np.median(base))
                mad = 1.4826 * float(np.median(np.abs(base - med)))
                std = float(base.std())
                self.stats[c] = (med, mad if mad > 1e-9 else (std if std > 1e-9 else 1.0))
        return self

    def components(self, features: pl.DataFrame) -> dict[str, np.ndarray]:
        """Each signal group's one-sided evidence, and the benign discount factors."""
        out = {}
        for name, signals in EXTRACTION_SIGNALS.items():
            zs = []
            for c, d in signals:
                x = features[c].cast(pl.Float64).to_numpy()
                med, scale = self.stats[c]
                z = np.clip(d * (x - med) / scale, 0.0, 20.0)
                zs.append(np.nan_to_num(z))
            out[name] = np.mean(zs, axis=0)
        n = features["n_events"].to_numpy().astype(np.float64)
        unique = features["unique_share"].fill_null(1.0).to_numpy() * n
        repeat = features["cross_day_repeat_share"].fill_null(0.0).to_numpy()
        within = features["within_day_repeat_share"].fill_null(0.0).to_numpy()
        one_feature = features["one_feature_changed_rate"].fill_null(0.0).to_numpy()
        # cross-day repeats are a benign habit (re-scoring); within-day repeats only count when
        # they dominate (canned requests): an attack's few exact revisits are not excused
        out["novelty"] = np.clip(1.0 - repeat, 0.0, 1.0) * np.clip(2.0 * (1.0 - within), 0.0, 1.0)
        out["sweep_discount"] = np.clip(1.0 - one_feature, 0.0, 1.0)
        out["volume"] = np.clip(np.log1p(unique) / math.log1p(300.0), 0.0, 1.0)
        return out

    def score(self, features: pl.DataFrame) -> np.ndarray:
        c = self.components(features)
        groups = np.sort(np.vstack([c[g] for g in EXTRACTION_SIGNALS]), axis=0)
        # two signal groups must agree: the geometric mean of the two strongest, plus a little of
        # the strongest alone (one benign oddity, e.g. a slice that sits on a class boundary,
        # is not enough)
        top1, top2 = groups[-1], groups[-2]
        evidence = np.sqrt(top1 * top2) + 0.25 * top1
        return evidence * c["novelty"] * c["sweep_discount"] * c["volume"]
