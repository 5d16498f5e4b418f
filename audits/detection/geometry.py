"""The reference data and the per-user geometry of queries (NumPy): query statistics in units
of the reference, PRADA-style steps between a user's distinct queries, and the distance of the
queries from the reference data (nearest neighbour, off-manifold residual, coverage cells).

Cost bounds: at most ``PRADA_TARGETS`` distinct queries per user against at most
``PRADA_HISTORY`` earlier ones; distribution features on at most ``DIST_SAMPLE`` queries against a
reference sample of at most ``REFERENCE_ROWS`` rows.
"""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import polars as pl
from scipy import stats
from scipy.spatial import cKDTree

PRADA_TARGETS = 400
PRADA_HISTORY = 3000
DIST_SAMPLE = 400
REFERENCE_ROWS = 5000
COVERAGE_CELLS = 64
COVERAGE_SAMPLE = 64
NEAR_DUP_RATIO = 0.1  # near-duplicate: nearer to an earlier query than 10% of the user's
# typical distance between two of their own queries (relative, so a dense slice is not "steps")
MANIFOLD_VARIANCE = 0.95  # principal components of the reference kept as "the data manifold"
LOCAL_FLOOR = 0.1  # a reference row's spacing is at least this share of the typical one (repeats)

GEOMETRY_COLUMNS: tuple[str, ...] = (
    # query statistics (standardised by the reference)
    "q_mean_abs",
    "q_std_ratio",
    "q_min",
    "q_max",
    "q_iqr_ratio",
    "q_skew_abs",
    "q_kurt",
    "q_normality",
    # geometry
    "prada_min_dist_median",
    "step_ratio",
    "prada_w",
    "near_dup_rate",
    "one_feature_changed_rate",
    # distribution
    "ref_nn_dist",
    "ref_mean_shift",
    "manifold_residual",
    "out_of_range_share",
    "coverage",
    "cell_entropy",
)


class Reference:
    """The reference distribution of legitimate inputs, prepared once per audit."""

    def __init__(self, X: np.ndarray, seed: int = 0) -> None:
        X = np.asarray(X, dtype=np.float64)
        X = X[np.isfinite(X).all(axis=1)]
        if len(X) < 2:
            raise ValueError("the reference needs at least two finite rows")
        rng = np.random.default_rng(seed)
        if len(X) > REFERENCE_ROWS:
            X = X[rng.choice(len(X), REFERENCE_ROWS, replace=False)]
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        self.lo = X.min(axis=0)
        self.hi = X.max(axis=0)
        Z = self.standardise(X)
        self.Z = Z
        self.tree = cKDTree(Z)
        # typical distance of a reference row to its nearest other reference row
        d, _ = self.tree.query(Z[: min(len(Z), 1000)], k=2)
        self.nn_scale = float(np.median(d[:, 1])) or 1.0
        # each reference row's distance to its nearest other row: the local spacing of the
        # data, against which a query's distance to its nearest row is measured
        local, _ = self.tree.query(Z, k=2)
        self.local_nn = np.maximum(local[:, 1], LOCAL_FLOOR * self.nn_scale)
        # what queries drawn from the reference data show (the null of ``ref_nn_dist``)
        self.nn_loo = self._loo_ratio(Z[: min(len(Z), 1000)])
        _, s, vt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
        share = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-12)
        k = int(np.searchsorted(share, MANIFOLD_VARIANCE) + 1)
        self.components = vt[: min(k, Z.shape[1])]
        self.center = Z.mean(axis=0)
        res = self.residual(Z[: min(len(Z), 2000)])
        self.residual_scale = float(np.median(res)) or 1.0
        self.residual_loo = res / self.residual_scale  # the null of ``manifold_residual``
        self.cells = _kmeans(Z, min(COVERAGE_CELLS, len(Z)), rng)

    def nn_ratio(self, Z: np.ndarray) -> np.ndarray:
        """Each row's distance to its nearest reference row over that row's own spacing."""
        d, idx = self.tree.query(Z, k=1)
        return d / self.local_nn[idx]

    def _loo_ratio(self, Z: np.ndarray) -> np.ndarray:
        """:meth:`nn_ratio` of the first reference rows ``Z``, each left out of the reference:
        the nearest other row's spacing is taken without the row itself."""
        d, idx = self.tree.query(Z, k=2)
        dd, second = self.tree.query(self.Z[idx[:, 1]], k=3)
        spacing = np.where(second[:, 1] == np.arange(len(Z)), dd[:, 2], dd[:, 1])
        return d[:, 1] / np.maximum(spacing, LOCAL_FLOOR * self.nn_scale)

    @property
    def width(self) -> int:
        return len(self.mean)

    def standardise(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.std

    def residual(self, Z: np.ndarray) -> np.ndarray:
        """Distance of standardised rows from the reference's principal subspace."""
        C = Z - self.center
        return np.linalg.norm(C - (C @ self.components.T) @ self.components, axis=1)

    def cell_of(self, Z: np.ndarray) -> np.ndarray:
        d = ((Z[:, None, :] - self.cells[None, :, :]) ** 2).sum(axis=2)
        return d.argmin(axis=1)


def _kmeans(Z: np.ndarray, k: int, rng: np.random.Generator, iters: int = 15) -> np.ndarray:
    centers = Z[rng.choice(len(Z), k, replace=False)].copy()
    for _ in range(iters):
        lab = ((Z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        for j in range(k):
            members = Z[lab == j]
            if len(members):
                centers[j] = members.mean(axis=0)
    return centers


def _prada(Zu: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    """Min distance of (up to PRADA_TARGETS) distinct queries to the earlier distinct ones:
    median, median / the user's median pairwise distance, Shapiro-Wilk W, near-duplicate rate,
    one-feature-changed rate."""
    n = len(Zu)
    if n < 3:
        return (math.nan, math.nan, math.nan, 0.0, 0.0)
    a_idx, b_idx = rng.integers(n, size=(2, 500))
    pair = np.linalg.norm(Zu[a_idx] - Zu[b_idx], axis=1)
    pair_scale = float(np.median(pair[a_idx != b_idx])) if (a_idx != b_idx).any() else 0.0
    pair_scale = pair_scale if pair_scale > 1e-9 else 1.0
    targets = np.unique(np.linspace(1, n - 1, min(PRADA_TARGETS, n - 1)).astype(np.int64))
    mins = np.empty(len(targets))
    one_changed = np.zeros(len(targets), dtype=bool)
    chunk = 64
    for a in range(0, len(targets), chunk):
        t = targets[a : a + chunk]
        lo = max(0, int(t.min()) - PRADA_HISTORY)
        H = Zu[lo : int(t.max())]
        d2 = (Zu[t] ** 2).sum(1)[:, None] + (H**2).sum(1)[None, :] - 2.0 * Zu[t] @ H.T
        idx = np.arange(lo, int(t.max()))[None, :]
        d2[(idx >= t[:, None]) | (idx < t[:, None] - PRADA_HISTORY)] = np.inf
        j = d2.argmin(axis=1)
        mins[a : a + chunk] = np.sqrt(np.maximum(d2[np.arange(len(t)), j], 0.0))
        diff = np.abs(Zu[t] - H[j]) > 1e-9
        one_changed[a : a + chunk] = diff.sum(axis=1) == 1
    w = math.nan
    if len(mins) >= 3 and np.ptp(mins) > 0:
        w = float(stats.shapiro(mins).statistic)
    return (
        float(np.median(mins)),
        float(np.median(mins) / pair_scale),
        w,
        float(np.mean(mins < NEAR_DUP_RATIO * pair_scale)),
        float(np.mean(one_changed)),
    )


def entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0]
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def geometry_features(
    user_ids: list[str],
    offsets: np.ndarray,
    X: np.ndarray,
    ref: Reference,
    first: np.ndarray,
    seed: int = 0,
) -> pl.DataFrame:
    """Query statistics, geometry and distribution features for users whose events lie in
    ``X[offsets[i]:offsets[i+1]]`` (time order); ``first`` marks each user's first sending of
    each distinct query."""
    rows = []
    for i, uid in enumerate(user_ids):
        # seeded by the user, not their position: a user's features do not depend on which
        # other users share their batch
        rng = np.random.default_rng([seed, zlib.crc32(str(uid).encode())])
        Xu = X[offsets[i] : offsets[i + 1]]
        # distinct queries, in order of first appearance (exact repeats removed first)
        Zu = ref.standardise(Xu[first[offsets[i] : offsets[i + 1]]])
        m = len(Zu)
        sample = Zu if m <= DIST_SAMPLE else Zu[np.sort(rng.choice(m, DIST_SAMPLE, replace=False))]
        nn = ref.nn_ratio(sample)
        out_of_range = ((Xu < ref.lo) | (Xu > ref.hi)).any(axis=1).mean()
        cov_s = (
            sample
            if len(sample) <= COVERAGE_SAMPLE
            else sample[rng.choice(len(sample), COVERAGE_SAMPLE, replace=False)]
        )
        cells = ref.cell_of(cov_s)
        cell_counts = np.bincount(cells, minlength=len(ref.cells))
        std = sample.std(axis=0) if len(sample) > 1 else np.zeros(ref.width)
        if len(sample) >= 8:
            with warnings.catch_warnings():  # constant features: precision-loss warnings
                warnings.simplefilter("ignore", RuntimeWarning)
                skew = np.nan_to_num(stats.skew(sample, axis=0))
                kurt = np.nan_to_num(stats.kurtosis(sample, axis=0))
            # normality: share of features whose marginal passes a Jarque-Bera test at 1%
            jb = len(sample) / 6.0 * (skew**2 + kurt**2 / 4.0)
            normality = float(np.mean(stats.chi2.sf(jb, 2) > 0.01))
            q25, q75 = np.quantile(sample, [0.25, 0.75], axis=0)
            iqr = float(np.mean(q75 - q25) / 1.349)
        else:
            skew = kurt = np.zeros(ref.width)
            normality, iqr = math.nan, 0.0
        med, ratio, w, near, one = _prada(Zu, rng)
        rows.append(
            {
                "user_id": uid,
                "q_mean_abs": float(np.abs(sample.mean(axis=0)).mean()),
                "q_std_ratio": float(std.mean()),
                "q_min": float(sample.min()),
                "q_max": float(sample.max()),
                "q_iqr_ratio": iqr,
                "q_skew_abs": float(np.abs(skew).mean()),
                "q_kurt": float(kurt.mean()),
                "q_normality": normality,
                "prada_min_dist_median": med,
                "step_ratio": ratio,
                "prada_w": w,
                "near_dup_rate": near,
                "one_feature_changed_rate": one,
                "ref_nn_dist": float(np.median(nn)),
                "ref_mean_shift": float(np.linalg.norm(sample.mean(axis=0)) / math.sqrt(ref.width)),
                "manifold_residual": float(np.median(ref.residual(sample)) / ref.residual_scale),
                "out_of_range_share": float(out_of_range),
                "coverage": float((cell_counts > 0).sum() / len(cov_s)),
                "cell_entropy": entropy(cell_counts) / math.log(len(ref.cells)),
            }
        )
    return pl.DataFrame(rows, schema=_GEOMETRY_SCHEMA)


_GEOMETRY_SCHEMA = {
    "user_id": pl.String,
    **dict.fromkeys(GEOMETRY_COLUMNS, pl.Float64),
}
