"""Per-user features on small synthetic windows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from audits.features import FEATURE_COLUMNS, repetition_features, user_features, with_sessions
from audits.simulation.toy import toy_events


@pytest.fixture(scope="module")
def toy():
    events, reference, truth = toy_events(seed=3, benign=15, attackers=2, sybil_keys=2)
    return events, reference, user_features(events, reference)


def test_one_row_per_user_with_every_feature(toy):
    events, _, feats = toy
    assert feats.columns == ["user_id", *FEATURE_COLUMNS]
    assert feats.height == events["user_id"].n_unique()
    counts = dict(events.group_by("user_id").len().iter_rows())
    assert all(counts[u] == n for u, n in feats.select("user_id", "n_events").iter_rows())


def test_directions_separate_probing_from_benign(toy):
    _, _, feats = toy
    by = {r["user_id"]: r for r in feats.iter_rows(named=True)}
    benign = [r for u, r in by.items() if u.startswith("benign")]
    attacker = by["attacker-00"]
    assert attacker["ref_nn_dist"] > max(r["ref_nn_dist"] for r in benign)
    assert attacker["cross_day_repeat_share"] == 0.0
    assert np.median([r["cross_day_repeat_share"] for r in benign]) > 0.05
    # the nightly re-scorer sends the same book every day
    assert by["batch-000"]["cross_day_repeat_share"] == pytest.approx(0.5)


def test_population_reference_is_used_without_reference():
    events, _, _ = toy_events(seed=4, benign=8, attackers=1, sybil_keys=0)
    feats = user_features(events.lazy(), None)
    assert feats.height == events["user_id"].n_unique()
    assert feats["ref_nn_dist"].is_not_null().all()


def _frame(rows):
    return pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "ts": pl.Datetime("us"),
            "session_id": pl.String,
            "features": pl.List(pl.Float64),
        },
        orient="row",
    ).with_columns(
        pl.col("ts").dt.date().alias("day"),
        pl.format("e{}", pl.int_range(pl.len())).alias("event_id"),
    )


def test_sessions_from_ids_else_inactivity_gap():
    t = dt.datetime(2026, 11, 1, 9)
    m = dt.timedelta(minutes=1)
    frame = _frame(
        [
            ("a", t, None, [1.0]),
            ("a", t + 5 * m, None, [2.0]),
            ("a", t + 50 * m, None, [3.0]),
            ("b", t, "s1", [1.0]),
            ("b", t + 90 * m, "s1", [1.0]),
        ]
    )
    s = with_sessions(frame.lazy()).collect()
    a = s.filter(pl.col("user_id") == "a")["session_key"].to_list()
    assert a[0] == a[1] != a[2]
    assert s.filter(pl.col("user_id") == "b")["session_key"].unique().to_list() == ["s1"]


def test_repeats_across_days_vs_within_a_day():
    t = dt.datetime(2026, 11, 1, 9)
    d = dt.timedelta(days=1)
    frame = _frame(
        [
            ("a", t, None, [1.0, 2.0]),
            ("a", t, None, [1.0, 2.0]),
            ("a", t + d, None, [1.0, 2.0]),
            ("a", t + d, None, [5.0, 2.0]),
        ]
    )
    r = repetition_features(frame.lazy()).collect().row(0, named=True)
    assert r["cross_day_repeat_share"] == pytest.approx(0.25)
    assert r["within_day_repeat_share"] == pytest.approx(0.25)
    assert r["unique_share"] == pytest.approx(0.5)


def test_width_mismatch_with_reference_is_an_error():
    events, reference, _ = toy_events(seed=5, benign=5, attackers=1, sybil_keys=0)
    with pytest.raises(ValueError, match="features"):
        user_features(events, reference[:, :3])
