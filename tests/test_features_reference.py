"""Distance from the reference data is measured against the data's own local spacing: queries
drawn from the owner's distribution, even from its sparsest region, are not "far", while noisy
copies of it are, at every sample size."""

from __future__ import annotations

import numpy as np
import pytest

from audits.detectors import reference_null
from audits.features import Reference


@pytest.fixture(scope="module")
def owner():
    rng = np.random.default_rng(3)
    dense = rng.normal(0.0, 0.3, (2400, 5))
    sparse = rng.normal(6.0, 2.0, (600, 5))
    return Reference(np.vstack([dense, sparse])), rng


def _z(ref: Reference, rows: np.ndarray) -> float:
    ratio = np.median(ref.nn_ratio(ref.standardise(rows)))
    return float(reference_null(ref).z("ref_nn_dist", np.array([ratio]), np.array([len(rows)]))[0])


@pytest.mark.parametrize("n", [50, 400])
def test_a_sparse_corner_of_the_owner_data_is_not_far(owner, n):
    ref, rng = owner
    sparse_corner = rng.normal(6.0, 2.0, (n, 5))
    whole = np.vstack([rng.normal(0.0, 0.3, (n * 4, 5)), rng.normal(6.0, 2.0, (n, 5))])
    assert _z(ref, sparse_corner) < 1.5
    assert _z(ref, whole[rng.permutation(len(whole))[:n]]) < 1.5


@pytest.mark.parametrize("n", [50, 400])
def test_noisy_copies_of_the_owner_data_are_far(owner, n):
    ref, rng = owner
    rows = np.vstack([rng.normal(0.0, 0.3, (n * 4, 5)), rng.normal(6.0, 2.0, (n, 5))])
    rows = rows[rng.permutation(len(rows))[:n]]
    noisy = rows + rng.normal(0.0, 0.6, rows.shape) * rows.std(axis=0)
    assert _z(ref, noisy) > 3.0
