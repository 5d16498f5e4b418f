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

from audits.features import (
    COVERAGE_SAMPLE,
    DIST_SAMPLE,
    FEATURE_COLUMNS,
    PRADA_TARGETS,
    entropy,
)

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

    def __init__(
        self,
        seed: int = 0,
        detectors: tuple[str, ...] = tuple(PYOD_DETECTORS),
        reference: ReferenceNull | None = None,
    ) -> None:
        self.seed = seed
        self.detectors = detectors
        self.reference = reference

    def fit(self, features: pl.DataFrame) -> DetectorSuite:
        self.standardiser = Standardiser().fit(features)
        X = self.standardiser.transform(features)
        self.models = {}
        if len(X) >= 3:
            for name in self.detectors:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.models[name] = PYOD_DETECTORS[name](X, self.seed)
        self.direction = DirectionalScorer(self.reference).fit(features)
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


# the sample a feature is computed from: "distinct" (the user's distinct queries, up to a cap),
# "events" (every answer); the cap is the feature's own bound in audits.features
_SAMPLE_OF: dict[str, tuple[str, int | None]] = {
    "ref_nn_dist": ("distinct", DIST_SAMPLE),
    "manifold_residual": ("distinct", DIST_SAMPLE),
    "ref_mean_shift": ("distinct", DIST_SAMPLE),
    "out_of_range_share": ("events", None),
    "cell_entropy": ("distinct", COVERAGE_SAMPLE),
    "coverage": ("distinct", COVERAGE_SAMPLE),
    "q_std_ratio": ("distinct", DIST_SAMPLE),
    "class_entropy": ("events", None),
    "near_dup_rate": ("distinct", PRADA_TARGETS),
    "prada_w": ("distinct", PRADA_TARGETS),
    "step_ratio": ("distinct", PRADA_TARGETS),
    "low_margin_share": ("events", None),
    "conf_p10": ("events", None),
}
# features that are shares of the sample (in [0, 1]): their spread is at least binomial
_SHARES = frozenset(
    {
        "out_of_range_share",
        "cell_entropy",
        "coverage",
        "class_entropy",
        "near_dup_rate",
        "low_margin_share",
    }
)
VOLUME_BINS = 6  # at most this many volume bins for the sample-size-dependent spread
BIN_MIN_USERS = 12  # a volume bin needs at least this many users
BULK_VOLUME_QUANTILE = 0.8  # spreads are fitted on users up to this volume quantile
Z_CLIP = (-4.0, 20.0)
REFERENCE_TOLERANCE = 0.5  # reference units: how far a legitimate user's queries may sit from
# the reference data (its typical nearest-neighbour distance / residual) without it counting
REFERENCE_DRAWS = 300
BROAD_SHARE = 0.5  # queries covering at least half the reference's own cell entropy are broad
AGREEMENT = 3.0  # z: how far one signal may count above the one that agrees with it


def sample_sizes(features: pl.DataFrame) -> dict[str, np.ndarray]:
    """``events`` and ``distinct``: how many answers and distinct queries each user sent."""
    n = features["n_events"].fill_null(0.0).to_numpy().astype(np.float64)
    unique = features["unique_share"].fill_null(1.0).fill_nan(1.0).to_numpy()
    return {"events": n, "distinct": np.maximum(np.round(unique * n), 1.0)}


def effective_n(feature: str, sizes: dict[str, np.ndarray]) -> np.ndarray:
    """How many queries (or answers) ``feature`` was computed from, per user."""
    kind, cap = _SAMPLE_OF.get(feature, ("events", None))
    n = sizes[kind]
    return np.maximum(np.minimum(n, cap) if cap else n, 1.0)


class SampleSizeNull:
    """What one feature looks like for legitimate users whose statistic rests on n queries.

    Location: the median over the users. Spread: ``sqrt(a + b / n)``, the between-user spread
    ``a`` plus sampling noise ``b / n``, fitted (non-negative least squares) on the robust
    spread (1.4826 MAD) of volume bins of the bulk (users up to the 80th volume percentile, so
    the largest users, where attackers concentrate, do not set their own yardstick). A share
    is never given less than its binomial spread. A small user's noisy statistic is then
    weighed against the noise its size allows, and a steady deviation sustained over many
    queries grows in z as its noise shrinks."""

    def fit(self, x: np.ndarray, n: np.ndarray, share: bool = False) -> SampleSizeNull:
        ok = np.isfinite(x) & (n >= 2)
        if ok.sum() < 3:
            ok = np.isfinite(x)
        base, nb = x[ok], n[ok]
        self.share = share
        self.loc = float(np.median(base)) if len(base) else 0.0
        self.a, self.b = _spread_model(base, nb, self.loc)
        spread = float(np.std(base)) if len(base) else 0.0
        self.floor = max(1e-3 * spread, 1e-9)
        return self

    def scale(self, n: np.ndarray) -> np.ndarray:
        s = np.sqrt(self.a + self.b / np.maximum(n, 1.0))
        if self.share:
            p = min(max(self.loc, 0.01), 0.99)
            s = np.maximum(s, np.sqrt(p * (1.0 - p) / np.maximum(n, 1.0)))
        return np.maximum(s, self.floor)

    def z(self, x: np.ndarray, n: np.ndarray, direction: int) -> np.ndarray:
        """Signed z in the extraction direction (NaN -> 0), clipped to ``Z_CLIP``."""
        z = direction * (x - self.loc) / self.scale(n)
        return np.clip(np.nan_to_num(z, nan=0.0), *Z_CLIP)


def _mad(x: np.ndarray, center: float) -> float:
    return 1.4826 * float(np.median(np.abs(x - center))) if len(x) else 0.0


def _spread_model(x: np.ndarray, n: np.ndarray, loc: float) -> tuple[float, float]:
    """``(a, b)`` of spread^2 = a + b / n from volume bins of the bulk (see SampleSizeNull)."""
    from scipy.optimize import nnls

    if len(x) == 0:
        return 1.0, 0.0
    bulk = np.argsort(n, kind="stable")[: max(int(BULK_VOLUME_QUANTILE * len(n)), 1)]
    xb, nb = x[bulk], n[bulk]
    k = min(VOLUME_BINS, len(xb) // BIN_MIN_USERS)
    overall = _mad(x, loc) ** 2
    if k < 2 or np.ptp(np.log(nb)) == 0:
        return overall, 0.0
    edges = np.quantile(np.log(nb), np.linspace(0, 1, k + 1))
    which = np.clip(np.searchsorted(edges, np.log(nb), side="right") - 1, 0, k - 1)
    rows, target = [], []
    for j in range(k):
        member = which == j
        if member.sum() < BIN_MIN_USERS // 2:
            continue
        rows.append([1.0, 1.0 / float(np.median(nb[member]))])
        target.append(_mad(xb[member], loc) ** 2)
    if len(rows) < 2:
        return overall, 0.0
    (a, b), _ = nnls(np.asarray(rows), np.asarray(target))
    if a + b <= 0:
        return overall, 0.0
    return float(a), float(b)


class ReferenceNull:
    """What a feature of n queries drawn from the reference data itself looks like: the
    median of n of the reference rows' own leave-one-out values (nearest-neighbour distance,
    off-manifold residual), by resampling, at a grid of n. It depends on the model owner's data
    only, so neither the window's population nor an attacker flooding it can move it."""

    GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def __init__(
        self, samples: dict[str, np.ndarray], cells: np.ndarray | None = None, seed: int = 0
    ) -> None:
        rng = np.random.default_rng(seed)
        self.breadth_table = _cell_entropy_table(cells, rng) if cells is not None else None
        self.table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for feature, values in samples.items():
            values = values[np.isfinite(values)]
            if len(values) < 2:
                continue
            means, sds = [], []
            for n in self.GRID:
                medians = np.median(rng.choice(values, (REFERENCE_DRAWS, n)), axis=1)
                means.append(medians.mean())
                sds.append(medians.std())
            self.table[feature] = (np.asarray(means), np.asarray(sds))

    def z(self, feature: str, x: np.ndarray, n: np.ndarray) -> np.ndarray:
        """How far above the reference's own value at the same n (0 when not tabulated)."""
        if feature not in self.table:
            return np.zeros(len(x))
        means, sds = self.table[feature]
        at = np.log(np.maximum(n, 1.0))
        grid = np.log(np.asarray(self.GRID, dtype=np.float64))
        mu, sd = np.interp(at, grid, means), np.interp(at, grid, sds)
        z = (x - mu) / np.sqrt(sd**2 + (REFERENCE_TOLERANCE * max(means[-1], 1e-9)) ** 2)
        return np.clip(np.nan_to_num(z, nan=0.0), *Z_CLIP)

    def breadth(self, x: np.ndarray, n: np.ndarray) -> np.ndarray:
        """``cell_entropy`` as a share of what n reference rows show (NaN when not known)."""
        if self.breadth_table is None:
            return np.full(len(x), np.nan)
        at = np.log(np.clip(n, 1.0, COVERAGE_SAMPLE))
        grid = np.log(np.asarray(self.GRID, dtype=np.float64))
        expected = np.interp(at, grid, self.breadth_table)
        return x / np.maximum(expected, 1e-9)


def _cell_entropy_table(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean normalised entropy of the input-space cells of n reference rows, at each n."""
    k = int(cells.max()) + 1 if len(cells) else 1
    means = []
    for n in ReferenceNull.GRID:
        draws = rng.choice(cells, (REFERENCE_DRAWS // 3, min(n, COVERAGE_SAMPLE)))
        h = [entropy(np.bincount(row, minlength=k)) / math.log(max(k, 2)) for row in draws]
        means.append(float(np.mean(h)))
    return np.asarray(means)


def reference_null(reference, seed: int = 0) -> ReferenceNull:
    """The :class:`ReferenceNull` of an :class:`audits.features.Reference`."""
    samples = {"ref_nn_dist": reference.nn_loo, "manifold_residual": reference.residual_loo}
    cells = reference.cell_of(reference.Z[: len(reference.nn_loo)])
    return ReferenceNull(samples, cells, seed)


def agreement(strongest: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Stouffer's sum of two signals' z, the stronger counted at most ``AGREEMENT`` above the
    other: one benign oddity (a slice far from the reference, a user on a class boundary) is
    not enough on its own, two agreeing signals are."""
    return (np.minimum(strongest, second + AGREEMENT) + np.minimum(second, strongest)) / math.sqrt(
        2.0
    )


class DirectionalScorer:
    """The directional, sample-size-aware evidence of extraction, in z units.

    * Signal groups (``EXTRACTION_SIGNALS``): each feature becomes a signed z in the
      extraction direction against :class:`SampleSizeNull` (the population's users of similar
      volume); a group's z is the mean of its features'; the evidence ``E`` is the
      :func:`agreement` of the two strongest groups (one benign oddity alone is not enough).
    * Reference evidence ``R`` (with a :class:`ReferenceNull`): how far the user's queries sit
      from the reference data, against what n reference rows show: absolute, it cannot be
      diluted by many keys doing the same (in :func:`agreement` with the strongest other group
      or the volume).
    * Volume ``V``: a robust z of log(distinct queries) against the population: volume is
      evidence in itself.

    The score is ``(max(E, R) + V) / sqrt(2)``; when positive, benign explanations discount it:
    queries re-sent from earlier days, canned requests repeated within a day, one-feature
    sweeps.
    """

    def __init__(self, reference: ReferenceNull | None = None) -> None:
        self.reference = reference

    def fit(self, features: pl.DataFrame) -> DirectionalScorer:
        sizes = sample_sizes(features)
        self.nulls: dict[str, SampleSizeNull] = {}
        for signals in EXTRACTION_SIGNALS.values():
            for c, _ in signals:
                x = features[c].cast(pl.Float64).to_numpy()
                self.nulls[c] = SampleSizeNull().fit(x, effective_n(c, sizes), c in _SHARES)
        v = np.log(sizes["distinct"])
        self.volume_loc = float(np.median(v)) if len(v) else 0.0
        spread = _mad(v, self.volume_loc)
        self.volume_scale = spread if spread > 1e-9 else 1.0
        return self

    def components(self, features: pl.DataFrame) -> dict[str, np.ndarray]:
        """Each signal group's z, ``evidence``, ``reference``, ``volume`` and the discounts."""
        sizes = sample_sizes(features)
        out = {}
        for name, signals in EXTRACTION_SIGNALS.items():
            zs = [
                self.nulls[c].z(features[c].cast(pl.Float64).to_numpy(), effective_n(c, sizes), d)
                for c, d in signals
            ]
            out[name] = np.mean(zs, axis=0)
        groups = np.sort(np.vstack([out[g] for g in EXTRACTION_SIGNALS]), axis=0)
        out["evidence"] = agreement(groups[-1], groups[-2])
        v = (np.log(sizes["distinct"]) - self.volume_loc) / self.volume_scale
        out["volume"] = np.clip(v, *Z_CLIP)
        # far from the owner's data, and as broad as the data itself (absolute, for flooding),
        # or broad, stepping or on the boundary for the population, or many queries
        partner = [out[g] for g in EXTRACTION_SIGNALS if g != "off_distribution"]
        partner = np.max([*partner, out["volume"]], axis=0)
        broad = self._breadth(features, sizes) >= BROAD_SHARE
        out["reference"] = agreement(
            self._reference(features, sizes), np.where(broad, np.inf, partner)
        )
        repeat = features["cross_day_repeat_share"].fill_null(0.0).to_numpy()
        within = features["within_day_repeat_share"].fill_null(0.0).to_numpy()
        one_feature = features["one_feature_changed_rate"].fill_null(0.0).to_numpy()
        # cross-day repeats are a benign habit (re-scoring); within-day repeats only count when
        # they dominate (canned requests): an attack's few exact revisits are not excused
        # (squared: a share r re-sent from earlier days means both fewer new queries and a key
        # whose habit is re-sending)
        fresh = np.clip(1.0 - repeat, 0.0, 1.0) ** 2
        out["novelty"] = fresh * np.clip(2.0 * (1.0 - within), 0.0, 1.0)
        out["sweep_discount"] = np.clip(1.0 - one_feature, 0.0, 1.0)
        return out

    def _reference(self, features: pl.DataFrame, sizes: dict[str, np.ndarray]) -> np.ndarray:
        if self.reference is None:
            return np.full(features.height, -np.inf)
        zs = [
            self.reference.z(c, features[c].cast(pl.Float64).to_numpy(), effective_n(c, sizes))
            for c in ("ref_nn_dist", "manifold_residual")
        ]
        return np.max(zs, axis=0)

    def _breadth(self, features: pl.DataFrame, sizes: dict[str, np.ndarray]) -> np.ndarray:
        if self.reference is None:
            return np.full(features.height, np.nan)
        x = features["cell_entropy"].cast(pl.Float64).to_numpy()
        return self.reference.breadth(x, effective_n("cell_entropy", sizes))

    def score(self, features: pl.DataFrame) -> np.ndarray:
        c = self.components(features)
        s = (np.maximum(c["evidence"], c["reference"]) + c["volume"]) / math.sqrt(2.0)
        discount = c["novelty"] * c["sweep_discount"]
        return np.where(s > 0, s * discount, s)
