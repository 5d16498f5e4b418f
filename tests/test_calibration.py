"""Evidence that respects sample size, a threshold held to a false-positive budget, and
detection that survives flooding (many attacker keys at once)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from audits.detectors import DirectionalScorer, reference_null
from audits.features import Reference, user_features
from audits.scoring import audit_scores
from audits.simulation.toy import toy_events


@pytest.fixture(scope="module")
def window():
    events, reference, _ = toy_events(seed=3, benign=60, attackers=0, sybil_keys=0)
    return user_features(events, reference), Reference(reference)


def _as(row: pl.DataFrame, n_events: int, **values: float) -> pl.DataFrame:
    return row.with_columns(
        pl.lit(float(n_events)).alias("n_events"),
        *[pl.lit(v).alias(k) for k, v in values.items()],
    )


@pytest.mark.parametrize(
    "signals",
    [
        {"ref_nn_dist": 2.5, "cell_entropy": 0.8, "coverage": 0.6},
        {"near_dup_rate": 0.6, "step_ratio": 0.02, "low_margin_share": 0.8},
        {"low_margin_share": 0.9, "conf_p10": 0.3, "class_entropy": 0.9},
    ],
)
def test_a_small_key_never_outranks_a_large_key_with_the_same_statistic(window, signals):
    feats, reference = window
    scorer = DirectionalScorer(reference_null(reference)).fit(feats)
    typical = feats.sort("n_events").slice(feats.height // 2, 1)
    sizes = (30, 200, 1000, 5000)
    rows = pl.concat([_as(typical, n, **signals) for n in sizes])
    s = scorer.score(rows)
    assert (np.diff(s) > 0).all(), dict(zip(sizes, s, strict=True))
    # and the small key with a noisier, more extreme statistic still ranks below the large one
    lower = ("step_ratio", "conf_p10")  # lower = more extraction-like
    extreme = {k: v * (0.8 if k in lower else 1.2) for k, v in signals.items()}
    small = scorer.score(_as(typical, 200, **extreme))[0]
    assert small < s[-1]


def test_an_attacker_free_window_is_flagged_within_budget():
    for seed in (4, 5):
        events, reference, _ = toy_events(seed=seed, benign=150, attackers=0, sybil_keys=0)
        _, scores, summary = audit_scores(events, reference, delay=False)
        assert scores["flagged"].mean() <= summary["fp_budget"] == 0.01
        assert summary["warning"] is None
        _, loose, summary = audit_scores(events, reference, delay=False, fp_budget=0.05)
        assert loose["flagged"].mean() <= 0.05 and summary["threshold_method"].count("5.00%")


@pytest.mark.parametrize("attackers", [7, 21, 41])  # 10%, 25% and 40% of the 68-102 keys
def test_flooding_keys_are_still_flagged(attackers):
    events, reference, truth = toy_events(seed=9, benign=60, attackers=attackers, sybil_keys=0)
    _, scores, summary = audit_scores(events, reference, delay=False)
    role = {u["user_id"]: u["role"] for u in truth["users"]}
    is_attacker = scores["user_id"].replace_strict(role) == "attacker"
    assert is_attacker.mean() >= attackers / 103
    assert scores.filter(is_attacker)["flagged"].all()
    assert scores.filter(~is_attacker)["flagged"].mean() <= 0.02
    if attackers >= 21:
        assert "flagged" in summary["warning"]


def _biased_share(rng: np.random.Generator, n: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """A share whose legitimate value rises with sample size (like an entropy over n queries)
    plus between-user and sampling noise."""
    noise = rng.normal(0.0, 1.0, len(n)) * np.sqrt(0.02**2 + 0.25 / n)
    return np.clip(0.9 - 2.0 / np.sqrt(n) + shift + noise, 0.0, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_statistic_biased_by_sample_size_is_no_evidence_for_busier_keys(seed):
    from audits.detection.nulls import SampleSizeNull

    rng = np.random.default_rng(seed)
    n = np.clip(np.round(rng.lognormal(5.0, 1.2, 400)), 10, 20_000)
    null = SampleSizeNull().fit(_biased_share(rng, n), n, share=True)
    # three times the median user's volume, inside the bulk the location curve is fitted on (a
    # single population median puts such keys 1.5 z out; beyond the bulk it is flat)
    large = np.full(200, float(np.quantile(n, 0.75)))
    benign = null.z(_biased_share(rng, large), large, +1)
    assert abs(np.median(benign)) < 0.75 and np.quantile(benign, 0.99) < 3.5
    four_sd = 4.0 * float(np.sqrt(0.02**2 + 0.25 / large[0]))  # between-user and sampling
    shifted = null.z(_biased_share(rng, large, shift=four_sd), large, +1)
    assert np.median(shifted) > 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_legitimate_users_own_spread_is_not_reference_evidence(seed):
    from audits.detection.nulls import ReferenceNull

    rng = np.random.default_rng(seed)
    null = ReferenceNull({"ref_nn_dist": rng.lognormal(0.0, 0.4, 3000)}, seed=seed)
    n = np.full(300, 200.0)
    spread = 0.2  # each legitimate user's queries sit in its own segment of the data
    benign = 1.0 + rng.normal(0.0, spread, len(n))
    assert np.quantile(null.z("ref_nn_dist", benign, n), 0.99) > 3.5  # without it: the tail
    assert np.quantile(null.z("ref_nn_dist", benign, n, between=spread), 0.99) < 3.0
    shifted = 1.0 + 4 * spread + rng.normal(0.0, spread, len(n))
    assert np.median(null.z("ref_nn_dist", shifted, n, between=spread)) > 3.0


def test_a_broad_busy_key_off_the_owners_data_outranks_one_on_it(window):
    feats, reference = window
    scorer = DirectionalScorer(reference_null(reference)).fit(feats)
    typical = feats.sort("n_events").slice(feats.height // 2, 1)
    on = float(np.median(reference.nn_loo))
    broad = {"cell_entropy": 0.95, "coverage": 0.9, "q_std_ratio": 1.5, "class_entropy": 0.95}
    rows = pl.concat(
        [_as(typical, n, ref_nn_dist=on * k, **broad) for n in (2000, 6000) for k in (1.0, 1.6)]
    )
    s = scorer.score(rows)
    assert s[1] > s[0] + 1.0 and s[3] > s[2] + 1.0, s  # a heavy backend vs a knockoff key


def test_repeats_within_a_day_do_not_excuse_a_small_step_chain(window):
    feats, reference = window
    scorer = DirectionalScorer(reference_null(reference)).fit(feats)
    typical = feats.sort("n_events").slice(feats.height // 2, 1)
    chain = {"near_dup_rate": 0.7, "step_ratio": 0.02, "prada_w": 0.5, "unique_share": 0.15}
    rows = pl.concat(
        [
            _as(typical, 1500, within_day_repeat_share=w, cross_day_repeat_share=c, **chain)
            for w, c in ((0.0, 0.0), (0.85, 0.0), (0.0, 0.85))
        ]
    )
    s = scorer.score(rows)
    assert s[0] > 0 and s[1] == pytest.approx(s[0])  # rounding onto the same query
    assert s[2] < 0.1 * s[0]  # re-sending earlier days' queries is still a benign habit
