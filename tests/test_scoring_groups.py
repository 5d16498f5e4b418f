"""Sybil groups judged by their members' own evidence pooled (``member_pool_z``)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import polars as pl
import pytest

from audits.detection.groups import member_pool_z
from audits.features import reference_of, window_features
from audits.scoring import FP_BUDGET, group_features, score_users
from audits.simulation.toy import toy_events

NOMINAL = NormalDist().inv_cdf(1.0 - FP_BUDGET)


def _groups(members: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(g, u) for g, us in members.items() for u in us]
    return pl.DataFrame(rows, schema=["group_id", "user_id"], orient="row")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sub_threshold_members_pool_past_the_budget_and_benign_ones_do_not(seed):
    rng = np.random.default_rng(seed)
    population = rng.normal(0.5, 1.0, 400)
    q97 = float(np.quantile(population, 0.97))  # each member alone well under 3 z
    own = {f"u{i}": float(s) for i, s in enumerate(population)}
    own |= {f"sybil{i}": q97 + rng.normal(0, 0.1) for i in range(5)}
    own |= {"loud": float(population.max() + 6.0)}
    benign = [f"u{i}" for i in rng.choice(400, 5, replace=False)]
    groups = _groups(
        {
            "sybil": [f"sybil{i}" for i in range(5)],
            "benign": benign,
            "one_loud": [*benign[:4], "loud"],  # one strong member carries no colleagues
        }
    )
    table = pl.DataFrame({"user_id": list(own), "own": list(own.values())})
    pool = dict(member_pool_z(groups, table, population).iter_rows())
    assert max(own[f"sybil{i}"] for i in range(5)) < 3.0
    assert pool["sybil"] >= NOMINAL
    assert pool["benign"] < NOMINAL
    assert pool["one_loud"] < NOMINAL


@pytest.mark.parametrize("seed", [4, 5])
def test_groups_of_legitimate_keys_are_not_flagged(seed):
    events, reference, _ = toy_events(seed=seed, benign=120, attackers=0, sybil_keys=0)
    ref = reference_of(events, reference, 0)
    feats = window_features(events, ref, seed=0)
    users = feats["user_id"].to_list()
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(users))[:40].reshape(8, 5)
    groups = _groups({f"g{j}": [users[i] for i in row] for j, row in enumerate(picks)})
    gfeats = group_features(events, groups, ref, seed=0)
    scores, summary = score_users(feats, group_feats=gfeats, groups=groups, reference=ref)
    assert not summary["groups"]["flagged"].any()
    assert scores["flagged"].mean() <= FP_BUDGET
