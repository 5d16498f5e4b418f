"""Detectors: every score present, direction guarded, benign oddities not rewarded."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from audits.detectors import DetectorSuite, DirectionalScorer, Standardiser
from audits.features import user_features
from audits.simulation.toy import toy_events


@pytest.fixture(scope="module")
def feats():
    events, reference, _ = toy_events(seed=7, benign=30, attackers=2, sybil_keys=0)
    return user_features(events, reference)


def test_suite_scores_every_detector(feats):
    suite = DetectorSuite(seed=0).fit(feats)
    scores = suite.score(feats)
    assert set(scores) == {"extraction", "entropy", "iforest", "lof", "ocsvm", "autoencoder"}
    for name, s in scores.items():
        assert s.shape == (feats.height,), name
        assert np.isfinite(s).all(), name


def test_directional_score_ranks_probers_first_and_excuses_repeats(feats):
    scorer = DirectionalScorer().fit(feats)
    s = scorer.score(feats)
    users = feats["user_id"].to_list()
    top = {users[i] for i in np.argsort(-s)[:2]}
    assert top == {"attacker-00", "attacker-01"}
    # the same traffic, but re-sent from earlier days, is discounted (positive evidence only:
    # a discount never lifts a user with negative evidence towards zero)
    fresh = scorer.score(feats.with_columns(pl.lit(0.0).alias("cross_day_repeat_share")))
    repeated = scorer.score(feats.with_columns(pl.lit(0.9).alias("cross_day_repeat_share")))
    assert (fresh > 0).any() and (fresh < 0).any()
    assert np.allclose(repeated, np.where(fresh > 0, (1 - 0.9) ** 2 * fresh, fresh))


def test_standardiser_is_robust_to_missing_values(feats):
    broken = feats.with_columns(pl.lit(None, pl.Float64).alias("prada_w"))
    X = Standardiser().fit(broken).transform(broken)
    assert np.isfinite(X).all() and np.abs(X).max() <= 10.0


def test_tiny_populations_still_score():
    events, reference, _ = toy_events(seed=8, benign=2, attackers=1, sybil_keys=0)
    f = user_features(events, reference)
    scores = DetectorSuite(seed=0).fit(f).score(f)
    assert all(len(v) == f.height for v in scores.values())
