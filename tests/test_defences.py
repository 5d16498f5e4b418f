"""Response randomisation and query deduplication as defences: the shared mechanism, the
incident replay and the extraction study's randomised granularity."""

import json

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from audits import forensics as fx
from audits.privacy import extraction


def test_randomised_answers_keep_every_label_and_repeat_for_a_seed():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.full(4, 0.5), size=2000)
    noisy = fx.randomise_probabilities(proba, scale=1.0, seed=5)
    assert np.array_equal(noisy.argmax(axis=1), proba.argmax(axis=1))
    np.testing.assert_allclose(noisy.sum(axis=1), 1.0)
    assert (noisy >= 0).all() and not np.allclose(noisy, proba)
    assert np.array_equal(noisy, fx.randomise_probabilities(proba, scale=1.0, seed=5))
    assert not np.array_equal(noisy, fx.randomise_probabilities(proba, scale=1.0, seed=6))
    louder = fx.randomise_probabilities(proba, scale=3.0, seed=5)
    assert np.array_equal(louder.argmax(axis=1), proba.argmax(axis=1))
    assert np.abs(louder - proba).mean() > np.abs(noisy - proba).mean()
    assert np.array_equal(fx.randomise_probabilities(proba, scale=0.0), proba)
    # the extraction study serves exactly this mechanism
    labels = proba.argmax(axis=1)
    served = extraction.served_output(proba, labels, "randomised", 4, seed=5)
    assert np.array_equal(served, noisy)


def test_duplicates_are_per_key_exact_or_in_the_same_grid_cell():
    X = np.array(
        [
            [0.10, 1.00],  # a: first
            [0.10, 1.00],  # a: exact repeat
            [0.104, 1.002],  # a: same 0.01-sd cell as row 0
            [0.10, 1.00],  # b: another key, new to b
            [0.30, 1.00],  # a: another cell
            [0.116, 1.00],  # a: next cell over
        ]
    )
    keys = np.array(["a", "a", "a", "b", "a", "a"])
    dup, source = fx.duplicate_queries(X, keys, tolerance=0.01, scale=np.array([1.0, 1.0]))
    assert dup.tolist() == [False, True, True, False, False, False]
    assert source.tolist() == [0, 0, 0, 3, 4, 5]
    exact, source = fx.duplicate_queries(X, keys, tolerance=0.0)
    assert exact.tolist() == [False, True, False, False, False, False]
    assert source[1] == 0
    none, _ = fx.duplicate_queries(X[:0], keys[:0])
    assert none.shape == (0,)


def _with_repeats(events: pl.DataFrame, user: str, exact: int, near: int, scale) -> pl.DataFrame:
    """``user``'s first ``exact`` queries sent again a day later, and ``near`` more moved to the
    centre of their dedup cell (a different query the cache would answer the same)."""
    mine = events.filter(pl.col("user_id") == user).sort("ts", "event_id")
    X = np.asarray(mine["features"].to_list())
    step = fx.DEFAULT_DEDUP_TOLERANCE * scale
    centred = (np.floor(X / step) + 0.5) * step
    again = pl.concat([mine.head(exact), mine.slice(exact, near)]).with_columns(
        pl.col("ts") + pl.duration(days=1),
        pl.format("again-{}", pl.col("event_id")).alias("event_id"),
        pl.Series("features", np.vstack([X[:exact], centred[exact : exact + near]]).tolist()),
    )
    return pl.concat([mine, again])


def test_replay_measures_randomisation_and_dedup_and_their_legitimate_cost(toy):
    events, ref_X, ref_y, columns = toy
    scale = ref_X.std(axis=0)
    subject = events.filter(pl.col("user_id") == "sybil-00")
    repeated = _with_repeats(events, "sybil-00", 30, 10, scale)
    benign = events.filter(pl.col("user_id").str.starts_with("benign"))
    # one benign query sent again, nudged within its cell, and answered differently
    moved = _with_repeats(events, "benign-000", 0, 1, scale).tail(1)
    moved = moved.with_columns(
        pl.when(pl.col("prediction") == "0")
        .then(pl.lit("1"))
        .otherwise(pl.lit("0"))
        .alias("prediction")
    )
    legit = pl.concat([benign, moved.select(benign.columns)])
    kwargs = {"columns": columns, "settings": fx.DefenceSettings.of({}, seed=0)}
    with threadpool_limits(1):
        out = fx.replay_defences(repeated, legit, ref_X, ref_y, **kwargs)
        plain = fx.replay_defences(subject, legit, ref_X, ref_y, **kwargs)

    dedup = out["dedup"]
    assert dedup["duplicates"] == 40 and plain["dedup"]["duplicates"] == 0
    # without its repeats the subject holds exactly its original queries
    assert dedup["fidelity"] == plain["fidelity"]
    assert dedup["legit_queries_affected"] == 1 and dedup["legit_labels_changed"] == 1
    assert dedup["legit_users_affected"] == 1
    assert dedup["legit_duplicates"] > 1  # the toy's benign users re-send rows: no cost

    rnd = out["randomisation"]
    assert rnd["legit_labels_changed"] == 0
    assert rnd["legit_responses_changed"] == legit.height
    assert 0 < rnd["legit_mean_abs_change"] < 0.2
    assert rnd["fidelity_labels"] == out["fidelity"] and 0 <= rnd["fidelity"] <= 1
    assert rnd["fidelity_without"] == out["fidelity_probabilities"]
    json.dumps(out)

    # the legitimate costs are computed once per legitimate traffic and reused
    traffic = fx.traffic(legit, ref_X.shape[1])
    with threadpool_limits(1):
        first = fx.replay_defences(subject, traffic, ref_X, ref_y, **kwargs)
        assert len(traffic.costs) == 1
        second = fx.replay_defences(subject, traffic, ref_X, ref_y, **kwargs)
    assert first == second == plain and len(traffic.costs) == 1
