"""Reading a window in batches: the store and an in-memory frame answer alike, and detection
over small batches gives exactly what it gives over the whole window at once."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from audits.event_source import DuckDBSource, FrameSource, pack
from audits.features import window_features
from audits.schema import EVENTS_DDL
from audits.scoring import audit_scores, build_incidents
from audits.simulation.toy import toy_events


@pytest.fixture(scope="module")
def window():
    events, reference, truth = toy_events(seed=3, benign=24, attackers=2, sybil_keys=3)
    return events, reference, truth


@pytest.fixture()
def store_source(window):
    from audits.store import user_day_select

    events = window[0].with_columns(
        pl.lit("x").alias("source_file"),
        pl.lit(1).alias("line_no"),
        pl.col("day").alias("partition_day"),
    )
    con = duckdb.connect()
    con.execute(EVENTS_DDL)
    con.register("ev", events.to_arrow())
    con.execute("INSERT INTO events BY NAME SELECT * FROM ev")
    con.execute(f"CREATE TABLE user_day AS {user_day_select('events')}")
    days = events["day"]
    yield DuckDBSource(con, (days.min(), days.max()))
    con.close()


def test_pack_keeps_users_whole_and_batches_bounded():
    counts = {"a": 5, "b": 5, "c": 20, "d": 1, "e": 0}
    assert pack(counts, counts, 10) == [["a", "b"], ["c"], ["d"]]
    assert pack(counts, ["d", "a"], 100) == [["a", "d"]]


def test_store_and_frame_answer_alike(window, store_source):
    frame = FrameSource(window[0])
    assert store_source.user_counts() == frame.user_counts()
    users = sorted(frame.user_counts())[:5]
    columns = ["event_id", "user_id", "features", "prediction"]
    assert_frame_equal(
        store_source.fetch(users).select(columns), frame.fetch(users).select(columns)
    )
    assert_frame_equal(store_source.spans(), frame.spans())
    assert_frame_equal(
        store_source.subnet_days().select("user_id", "source_ip"),
        frame.subnet_days().select("user_id", "source_ip"),
    )


def test_store_sample_is_deterministic_and_respects_exclusions(window, store_source):
    a = store_source.sample(50, seed=1, exclude=["attacker-00"], labelled=True)
    b = store_source.sample(50, seed=1, exclude=["attacker-00"], labelled=True)
    assert a.height == 50 and a["event_id"].to_list() == b["event_id"].to_list()
    assert "attacker-00" not in set(a["user_id"]) and a["prediction"].null_count() == 0
    other = store_source.sample(50, seed=2)["event_id"].to_list()
    assert other != a["event_id"].to_list()


def test_batched_detection_equals_one_pass(window, store_source):
    events, reference, truth = window
    whole = window_features(events, reference, max_events=10**9)
    assert len(list(store_source.batches(max_events=500))) > 5  # many batches, whole users
    for source in (FrameSource(events), store_source):
        assert_frame_equal(window_features(source, reference, max_events=500), whole)
    one = audit_scores(events, reference, max_events=10**9)
    small = audit_scores(store_source, reference, max_events=500)
    assert_frame_equal(small[1], one[1])  # scores, groups, flags and detection delay
    assert_frame_equal(small[2]["group_features"], one[2]["group_features"])
    flagged = set(small[1].filter(pl.col("flagged"))["user_id"])
    attackers = {u["user_id"] for u in truth["users"] if u["role"] == "attacker"}
    assert attackers <= flagged and small[1]["first_cross_n"].drop_nulls().len() > 0
    a = build_incidents(store_source, small[0], small[1], small[2])
    b = build_incidents(events, one[0], one[1], one[2])
    assert_frame_equal(a, b)


def test_a_users_features_do_not_depend_on_their_batch(window):
    events, reference, _ = window
    users = sorted(events["user_id"].unique())
    alone = window_features(events.filter(pl.col("user_id") == users[-1]), reference)
    together = window_features(events, reference).filter(pl.col("user_id") == users[-1])
    np.testing.assert_array_equal(alone.to_numpy(), together.to_numpy())
