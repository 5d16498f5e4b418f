"""Combined score, threshold, Sybil groups, incidents and the Dagster detection assets."""

from __future__ import annotations

import json
from statistics import NormalDist

import duckdb
import numpy as np
import polars as pl
import pytest
from dagster import asset, materialize
from dagster_duckdb import DuckDBResource

from audits.scoring import (
    FP_BUDGET,
    USER_SCORES_SCHEMA,
    audit_scores,
    build_incidents,
    candidate_groups,
    choose_threshold,
    combine,
)
from audits.simulation.toy import toy_events


@pytest.fixture(scope="module")
def audited():
    events, reference, truth = toy_events(seed=1, benign=30, attackers=2, sybil_keys=3)
    feats, scores, summary = audit_scores(events, reference)
    return events, reference, truth, feats, scores, summary


def test_user_scores_columns_and_flags(audited):
    _, _, truth, _, scores, summary = audited
    assert dict(scores.schema) == USER_SCORES_SCHEMA
    flagged = set(scores.filter(pl.col("flagged"))["user_id"])
    attackers = {u["user_id"] for u in truth["users"] if u["role"] == "attacker"}
    assert attackers <= flagged
    top = scores.sort("score", descending=True)["user_id"].head(len(attackers))
    assert set(top) == attackers
    assert summary["threshold"] >= NormalDist().inv_cdf(1 - FP_BUDGET)
    assert summary["fp_budget"] == FP_BUDGET
    assert scores.filter(pl.col("flagged"))["first_cross_n"].is_not_null().all()


def test_sybil_keys_share_a_group(audited):
    events, _, _, _, scores, summary = audited
    groups = candidate_groups(events)
    assert set(groups["group_id"]) == {"subnet:203.0.113.0/24"}
    members = scores.filter(pl.col("group_id").is_not_null())["user_id"].to_list()
    assert sorted(members) == ["sybil-00", "sybil-01", "sybil-02"]
    assert summary["groups"]["flagged"].to_list() == [True]


def test_incidents_are_stable_and_carry_evidence(audited):
    events, _, _, feats, scores, summary = audited
    a = build_incidents(events, feats, scores, summary)
    b = build_incidents(events, feats, scores, summary)
    assert a["incident_id"].to_list() == b["incident_id"].to_list()
    assert set(a["kind"]) == {"user", "group"}
    group = a.filter(pl.col("kind") == "group").row(0, named=True)
    assert sorted(group["members"]) == ["sybil-00", "sybil-01", "sybil-02"]
    evidence = json.loads(a["evidence"][0])
    assert evidence and {"feature", "value", "population_percentile"} <= set(evidence[0])


def test_threshold_keeps_a_normal_null_within_budget():
    s = np.random.default_rng(0).normal(0.5, 1.0, 5000)
    for budget in (0.01, 0.05):
        t, method = choose_threshold(s, budget)
        assert t >= NormalDist().inv_cdf(1 - budget) and f"{budget:.2%}" in method
        assert (s >= t).mean() <= budget


def test_threshold_rejects_a_budget_outside_its_range():
    with pytest.raises(ValueError, match="budget"):
        choose_threshold(np.zeros(10), 0.0)


def test_unsupervised_detectors_cannot_raise_a_zero_evidence_user():
    scores = {"extraction": np.array([0.0, 3.0, -1.0]), "iforest": np.array([9.0, 0.0, 9.0])}
    c = combine(scores)
    assert c[0] == 0.0 and c[1] >= 3.0 and c[2] == -1.0


def test_detection_assets_write_tables(tmp_path, audited):
    from assets.detection import detection_assets
    from assets.resources import AuditConfig
    from audits.schema import EVENTS_DDL
    from audits.store import user_day_select

    events = audited[0].with_columns(
        pl.lit("x").alias("source_file"),
        pl.lit(1).alias("line_no"),
        pl.col("day").alias("partition_day"),
    )
    db = str(tmp_path / "t.duckdb")

    @asset(name="events")
    def fake_events(duckdb: DuckDBResource) -> None:
        with duckdb.get_connection() as con:
            con.execute(EVENTS_DDL)
            con.register("ev", events.to_arrow())
            con.execute("INSERT INTO events BY NAME SELECT * FROM ev")
            con.execute(f"CREATE OR REPLACE TABLE user_day AS {user_day_select('events')}")

    # the owner's reference data, as `--reference` gives it: without it the reference is a
    # sample of the window itself, uniform probes included
    reference = tmp_path / "reference.parquet"
    pl.DataFrame(audited[1], schema=[f"x{i}" for i in range(audited[1].shape[1])]).write_parquet(
        reference
    )
    audit = AuditConfig(logs=str(tmp_path), out_dir=str(tmp_path / "out"), reference=str(reference))
    resources = {"duckdb": DuckDBResource(database=db), "audit": audit}
    for _ in range(2):  # a rerun replaces the window's rows
        result = materialize([fake_events, *detection_assets], resources=resources)
        assert result.success
    con = duckdb.connect(db)
    n_users = events["user_id"].n_unique()
    assert con.sql("SELECT count(*) FROM user_features").fetchall()[0][0] == n_users
    assert con.sql("SELECT count(*) FROM user_scores").fetchall()[0][0] == n_users
    ids = con.sql("SELECT incident_id FROM incidents").fetchall()
    assert len(ids) == len(set(ids)) >= 3
    assert con.sql("SELECT count(*) FROM user_scores WHERE flagged").fetchall()[0][0] >= 3
    con.close()
    # user_scores.parquet is written after forensics, by `user_scores_file` (test_forensics)
    assert not (tmp_path / "out" / "user_scores.parquet").exists()
