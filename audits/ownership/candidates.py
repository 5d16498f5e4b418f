"""Candidate inputs for the fingerprint and the query sets of simulated extraction attackers."""

from __future__ import annotations

import numpy as np

from audits.forensics import as_labels

QUERY_SOURCES = ("natural", "uniform", "perturbed", "widened", "boundary", "jittered")
REGIONS = ("natural", "interpolated", "boundary", "uniform", "perturbed", "widened")
MIN_MARGIN = 1e-3  # served top-two probability gap: float32 (ONNX) copies must not flip


def candidate_pool(
    served, reference: np.ndarray, rng: np.random.Generator, per_region: int
) -> dict[str, np.ndarray]:
    """Candidate inputs per region (see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    width = ref.shape[1]
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    sd = np.maximum(ref.std(axis=0), 1e-12)
    a = ref[rng.integers(0, len(ref), per_region)]
    b = ref[rng.integers(0, len(ref), per_region)]
    return {
        "natural": ref[rng.choice(len(ref), min(per_region, len(ref)), replace=False)],
        "interpolated": a + rng.uniform(0.0, 1.0, (per_region, 1)) * (b - a),
        "boundary": boundary_points(served, ref, rng, per_region),
        "uniform": rng.uniform(lo, hi, (per_region, width)),
        "perturbed": a + sd * rng.standard_normal((per_region, width)),
        "widened": widened(ref, rng, per_region),
    }


def widened(ref: np.ndarray, rng: np.random.Generator, n: int, scale: float = 1.5) -> np.ndarray:
    """A Gaussian with the reference rows' mean and correlations, ``scale`` times wider: the
    region an attacker's "public" data set from a shifted distribution covers."""
    cov = np.atleast_2d(np.cov(ref, rowvar=False)) * scale**2
    return rng.multivariate_normal(ref.mean(axis=0), cov, n, method="eigh")


def boundary_points(
    served, ref: np.ndarray, rng: np.random.Generator, n: int, steps: int = 20
) -> np.ndarray:
    """Points beside the served decision boundary: bisection on segments between reference
    rows of different predicted classes, then a step back to the first row's side."""
    labels = as_labels(served.predict(ref))
    a = rng.integers(0, len(ref), 4 * n)
    b = rng.integers(0, len(ref), 4 * n)
    keep = labels[a] != labels[b]
    a, b = a[keep][:n], b[keep][:n]
    if len(a) == 0:
        return np.zeros((0, ref.shape[1]))
    xa, xb, la = ref[a], ref[b], labels[a]
    lo, hi = np.zeros(len(a)), np.ones(len(a))
    for _ in range(steps):
        mid = (lo + hi) / 2
        same = as_labels(served.predict(xa + mid[:, None] * (xb - xa))) == la
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    # stay on the first row's side by a random fraction of the distance to the boundary
    t = lo * (1.0 - rng.uniform(0.0, 0.05, len(a)))
    return xa + t[:, None] * (xb - xa)


def query_sets(
    ref: np.ndarray, rng: np.random.Generator, n: int, served=None
) -> dict[str, np.ndarray]:
    """The query strategies of the simulated extraction attackers used for selection: natural
    rows, uniform probing, rows with Gaussian noise, a widened distribution, and, given the
    served model, points beside its boundary (decision-based attacks) and natural rows nudged
    by a tenth of a standard deviation (Jacobian augmentation)."""
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    sd = np.maximum(ref.std(axis=0), 1e-12)
    rows = ref[rng.integers(0, len(ref), n)]
    out = {
        "natural": ref[rng.choice(len(ref), min(n, len(ref)), replace=False)],
        "uniform": rng.uniform(lo, hi, (n, ref.shape[1])),
        "perturbed": rows + sd * rng.standard_normal(rows.shape),
        "widened": widened(ref, rng, n),
    }
    if served is not None:
        near = boundary_points(served, ref, rng, n)
        out["boundary"] = near + 0.05 * sd * rng.standard_normal(near.shape)
        seeds = ref[rng.integers(0, len(ref), n)]
        out["jittered"] = seeds + 0.15 * sd * rng.choice([-1.0, 1.0], seeds.shape)
    return out


def served_margin(served, X: np.ndarray) -> np.ndarray | None:
    """The gap between the served model's two likeliest classes (``None`` if label-only)."""
    proba = served.predict_proba(X)
    if proba is None or proba.shape[1] < 2:
        return None
    top = np.sort(proba, axis=1)
    return top[:, -1] - top[:, -2]


# ---------------------------------------------------------------- fingerprint
