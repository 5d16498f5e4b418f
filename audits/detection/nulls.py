"""What legitimate users' statistics look like, as a function of how many queries they rest on:
:class:`SampleSizeNull` (the window's population, by volume) and :class:`ReferenceNull` (n rows
drawn from the model owner's reference data)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from audits.detection.geometry import COVERAGE_SAMPLE, DIST_SAMPLE, PRADA_TARGETS, entropy

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
REFERENCE_TOLERANCE = 0.1  # reference units: how far a legitimate user's queries may sit from
# the reference data (its local nearest-neighbour spacing / typical residual) without it counting
# (chosen leaving one domain out: docs/detection.md)
REFERENCE_DRAWS = 300
BROAD_SHARE = 0.5  # queries covering at least half the reference's own cell entropy are broad


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

    Location: the median of each volume bin of the bulk, interpolated in log n (a share or an
    entropy over 30 queries is biased unlike one over 3,000; flat beyond the bulk's range).
    Spread: ``sqrt(a + b / n)``, the between-user spread ``a`` plus sampling noise ``b / n``,
    fitted (non-negative least squares) on the robust spread (1.4826 MAD about each bin's
    location) of volume bins of the bulk (users up to the 80th volume percentile, so
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
        self.loc_n, self.loc_x = _location_curve(base, nb, self.loc)
        self.a, self.b = _spread_model(base, nb, self.location(nb))
        spread = float(np.std(base)) if len(base) else 0.0
        self.floor = max(1e-3 * spread, 1e-9)
        return self

    def location(self, n: np.ndarray) -> np.ndarray:
        """The median legitimate value at sample size n (flat beyond the bulk's range)."""
        at = np.log(np.maximum(np.asarray(n, dtype=np.float64), 1.0))
        return np.interp(at, self.loc_n, self.loc_x)

    def scale(self, n: np.ndarray) -> np.ndarray:
        s = np.sqrt(self.a + self.b / np.maximum(n, 1.0))
        if self.share:
            p = np.clip(self.location(n), 0.01, 0.99)
            s = np.maximum(s, np.sqrt(p * (1.0 - p) / np.maximum(n, 1.0)))
        return np.maximum(s, self.floor)

    def z(self, x: np.ndarray, n: np.ndarray, direction: int) -> np.ndarray:
        """Signed z in the extraction direction (NaN -> 0), clipped to ``Z_CLIP``."""
        z = direction * (x - self.location(n)) / self.scale(n)
        return np.clip(np.nan_to_num(z, nan=0.0), *Z_CLIP)


def _mad(x: np.ndarray, center: float) -> float:
    return 1.4826 * float(np.median(np.abs(x - center))) if len(x) else 0.0


def _volume_bins(n: np.ndarray) -> tuple[np.ndarray, int]:
    """The bulk's users (up to ``BULK_VOLUME_QUANTILE`` by volume) and their volume bin (-1:
    outside the bulk), with the number of bins (0 when too few users or one volume)."""
    which = np.full(len(n), -1)
    bulk = np.argsort(n, kind="stable")[: max(int(BULK_VOLUME_QUANTILE * len(n)), 1)]
    k = min(VOLUME_BINS, len(bulk) // BIN_MIN_USERS)
    if k < 2 or np.ptp(np.log(n[bulk])) == 0:
        return which, 0
    edges = np.quantile(np.log(n[bulk]), np.linspace(0, 1, k + 1))
    which[bulk] = np.clip(np.searchsorted(edges, np.log(n[bulk]), side="right") - 1, 0, k - 1)
    return which, k


def _location_curve(x: np.ndarray, n: np.ndarray, loc: float) -> tuple[np.ndarray, np.ndarray]:
    """(log n, median) of each volume bin of the bulk: where a legitimate user's statistic sits
    at each sample size (a share over 30 queries is biased unlike one over 3,000)."""
    which, k = _volume_bins(n) if len(x) else (np.zeros(0, int), 0)
    at, med = [], []
    for j in range(k):
        member = which == j
        if member.sum() >= BIN_MIN_USERS // 2:
            at.append(float(np.log(np.median(n[member]))))
            med.append(float(np.median(x[member])))
    if not at:
        return np.zeros(1), np.asarray([loc])
    return np.asarray(at), np.asarray(med)


def _spread_model(x: np.ndarray, n: np.ndarray, loc: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of spread^2 = a + b / n from volume bins of the bulk (see SampleSizeNull),
    each user's deviation taken from the location at its own sample size."""
    from scipy.optimize import nnls

    if len(x) == 0:
        return 1.0, 0.0
    dev = np.abs(x - loc)
    overall = (1.4826 * float(np.median(dev))) ** 2
    which, k = _volume_bins(n)
    rows, target = [], []
    for j in range(k):
        member = which == j
        if member.sum() < BIN_MIN_USERS // 2:
            continue
        rows.append([1.0, 1.0 / float(np.median(n[member]))])
        target.append((1.4826 * float(np.median(dev[member]))) ** 2)
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

    def z(self, feature: str, x: np.ndarray, n: np.ndarray, between: float = 0.0) -> np.ndarray:
        """How far above the reference's own value at the same n (0 when not tabulated).
        ``between``: the legitimate users' own between-user spread of the feature (they are
        not i.i.d. draws from the reference: each has its own segment), used as the tolerance
        when it is wider than ``REFERENCE_TOLERANCE`` of the reference's value."""
        if feature not in self.table:
            return np.zeros(len(x))
        means, sds = self.table[feature]
        at = np.log(np.maximum(n, 1.0))
        grid = np.log(np.asarray(self.GRID, dtype=np.float64))
        mu, sd = np.interp(at, grid, means), np.interp(at, grid, sds)
        tolerance = max(REFERENCE_TOLERANCE * max(means[-1], 1e-9), between)
        z = (x - mu) / np.sqrt(sd**2 + tolerance**2)
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
