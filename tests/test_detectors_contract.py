"""The detector contract: one registry drives the suite, the score columns and the schema; every
detector fits and scores feature rows with its fitted state in ``_`` attributes; the thresholder
carries ``threshold_`` and ``method_``."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from audits.detection.contract import EVIDENCE, TIE_BREAK, DetectorContext, DetectorSpec
from audits.detection.threshold import BudgetThreshold, choose_threshold
from audits.detectors import REGISTRY, DetectorSuite, reference_null
from audits.features import Reference, user_features
from audits.scoring import SCORE_COLUMNS, USER_SCORES_SCHEMA, combine, score_users
from audits.simulation.toy import toy_events
from audits.tables import USER_SCORES


@pytest.fixture(scope="module")
def window():
    events, reference, _ = toy_events(seed=5, benign=40, attackers=3, sybil_keys=0)
    ref = Reference(reference)
    return user_features(events, ref), ref


def test_the_registry_names_the_score_columns_and_the_schema():
    names = tuple(spec.name for spec in REGISTRY)
    assert names == SCORE_COLUMNS and len(set(names)) == len(names)
    scored = [c for c in USER_SCORES_SCHEMA if c.startswith("score_") and c != "score_group"]
    assert scored == [f"score_{n}" for n in names]
    assert [c for c in USER_SCORES.schema if c in scored] == scored
    assert {spec.role for spec in REGISTRY} == {EVIDENCE, TIE_BREAK}


def test_every_registered_detector_follows_the_contract(window):
    feats, ref = window
    context = DetectorContext(seed=0, reference=reference_null(ref))
    for spec in REGISTRY:
        detector = spec.build(context).fit(feats)
        fitted = [a for a in vars(detector) if a.endswith("_") and not a.startswith("_")]
        assert fitted, spec.name
        s = detector.decision_function(feats.head(7))
        assert s.shape == (7,) and np.isfinite(s).all(), spec.name


class _Constant:
    """A tie-break detector that is not in the registry: the suite takes it as given."""

    def fit(self, features: pl.DataFrame) -> _Constant:
        self.value_ = 1.0
        return self

    def decision_function(self, features: pl.DataFrame) -> np.ndarray:
        return np.full(features.height, self.value_)


def test_a_new_detector_is_one_registry_entry(window):
    feats, ref = window
    extra = DetectorSpec("constant", TIE_BREAK, lambda context: _Constant())
    suite = DetectorSuite(seed=0, registry=(*REGISTRY, extra), reference=reference_null(ref))
    scores = suite.fit(feats).score(feats)
    assert list(scores) == [*SCORE_COLUMNS, "constant"]
    # a tie-break detector never lifts a user without evidence
    base = combine({k: v for k, v in scores.items() if k != "constant"})
    both = combine(scores)
    assert np.array_equal(both <= 0, base <= 0)
    with pytest.raises(ValueError, match="role"):
        DetectorSpec("bad", "vote", lambda context: _Constant())


def test_the_thresholder_records_its_value_and_method(window):
    feats, ref = window
    scores, summary = score_users(feats, reference=ref, fp_budget=0.02)
    fitted = BudgetThreshold(0.02).fit(np.random.default_rng(1).normal(0, 1, 500))
    assert isinstance(fitted.threshold_, float) and "2.00%" in fitted.method_
    assert (fitted.threshold_, fitted.method_) == choose_threshold(
        np.random.default_rng(1).normal(0, 1, 500), 0.02
    )
    assert summary["threshold_method"].count("2.00%")
    assert scores["flagged"].to_list() == (scores["score"] >= summary["threshold"]).to_list()
