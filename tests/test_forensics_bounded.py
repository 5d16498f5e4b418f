"""Forensics in bounded memory and time: the legitimate users' defence costs summed over
batches of whole users, and the training budget per surrogate."""

import dataclasses

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_limits

from audits import forensics as fx
from audits.event_source import FrameSource
from audits.simulation.toy import toy_events


def _figures(costs: fx.LegitCosts) -> dict:
    out = dataclasses.asdict(costs)
    out.pop("settings")
    out["abs_change"] = pytest.approx(out["abs_change"], rel=1e-12)
    return out


SETTINGS = fx.DefenceSettings.of({"minute": 5, "hour": 40}, round_decimals=2, seed=3)


def test_batched_legit_costs_equal_one_pass(toy):
    events, ref_X, _, _ = toy
    flagged = ["attacker-00", "sybil-00"]
    scale, width = ref_X.std(axis=0), ref_X.shape[1]
    source = FrameSource(events)
    assert len(list(source.batches(max_events=700))) > 5
    batched = fx.legit_costs(
        source, SETTINGS.with_scale(scale), exclude=flagged, width=width, max_events=700
    )
    whole = fx.legit_costs(
        source, SETTINGS.with_scale(scale), exclude=flagged, width=width, max_events=10**9
    )
    legit = events.filter(~pl.col("user_id").is_in(flagged))
    one_traffic = fx.legit_costs(fx.traffic(legit, width), SETTINGS.with_scale(scale))
    assert _figures(batched) == _figures(whole) == _figures(one_traffic)
    assert batched.users == legit["user_id"].n_unique() and batched.responses == legit.height
    assert batched.has_probabilities and batched.randomised == legit.height
    assert batched.blocked["per_minute"] > 0 and batched.duplicates > 0
    assert batched.outputs() == whole.outputs() and batched.dedup() == whole.dedup()


def test_batched_legit_costs_see_missing_probabilities_as_one_pass_does(toy):
    events, ref_X, _, _ = toy
    # one user's responses without probabilities: no probability costs anywhere
    events = events.with_columns(
        pl.when(pl.col("user_id") == "benign-039")
        .then(None)
        .otherwise(pl.col("probabilities"))
        .alias("probabilities")
    )
    width = ref_X.shape[1]
    batched = fx.legit_costs(FrameSource(events), SETTINGS, width=width, max_events=700)
    single = fx.legit_costs(fx.traffic(events, width), SETTINGS)
    assert not batched.has_probabilities and not single.has_probabilities
    assert batched.outputs() == single.outputs()
    assert batched.outputs()["randomisation"]["legit_mean_abs_change"] == 0.0


def test_per_key_randomisation_does_not_depend_on_the_other_keys():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.full(3, 0.5), size=300)
    keys = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    together = fx.randomise_probabilities(proba, seed=4, keys=keys)
    alone = fx.randomise_probabilities(proba[keys == "b"], seed=4, keys=keys[keys == "b"])
    assert np.array_equal(together[keys == "b"], alone)
    assert np.array_equal(together.argmax(axis=1), proba.argmax(axis=1))
    assert not np.array_equal(together, fx.randomise_probabilities(proba, seed=5, keys=keys))


def test_replay_takes_precomputed_legit_costs(toy):
    events, ref_X, ref_y, columns = toy
    subject = events.filter(pl.col("user_id") == "attacker-00")
    legit = events.filter(pl.col("user_id").str.starts_with("benign"))
    scale = ref_X.std(axis=0)
    costs = fx.legit_costs(FrameSource(legit), SETTINGS.with_scale(scale), max_events=500)
    with threadpool_limits(1):
        from_costs = fx.replay_defences(
            subject, costs, ref_X, ref_y, columns=columns, settings=SETTINGS
        )
        from_events = fx.replay_defences(
            subject, legit, ref_X, ref_y, columns=columns, settings=SETTINGS
        )
    assert from_costs == from_events
    assert from_costs["rate_limit"]["per_minute"]["legit_users"] == legit["user_id"].n_unique()
    with pytest.raises(ValueError, match="other defence settings"):
        fx.replay_defences(
            subject, costs, ref_X, ref_y, columns=columns, settings=fx.DefenceSettings.of(seed=9)
        )


def test_replay_from_the_damage_baselines_equals_refitting_them(toy):
    events, ref_X, ref_y, columns = toy
    subject = fx.traffic(events.filter(pl.col("user_id") == "attacker-00"), ref_X.shape[1])
    legit = events.filter(pl.col("user_id").str.starts_with("benign"))
    with threadpool_limits(1):
        damage = fx.damage_of_traffic(subject, ref_X, ref_y, columns=columns, seed=3)
        refitted = fx.replay_defences(
            subject, legit, ref_X, ref_y, columns=columns, settings=SETTINGS
        )
        given = fx.replay_defences(
            subject,
            legit,
            ref_X,
            ref_y,
            columns=columns,
            baseline=damage.fidelity,
            soft_baseline=damage.fidelity_probabilities,
            settings=SETTINGS,
        )
    assert damage.fidelity_probabilities is not None
    assert given == refitted


def _linear(n: int, seed: int = 0, width: int = 5):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(width, 3))
    X, ref = rng.normal(size=(n, width)), rng.normal(size=(1500, width))
    return X, (X @ W).argmax(axis=1), ref, (ref @ W).argmax(axis=1)


def test_training_rows_are_a_fixed_uniform_sample_of_the_budget():
    draws = fx.budget_draws(10_000, seed=1)
    assert np.array_equal(draws[:100], fx.budget_draws(100, seed=1))  # prefix-stable
    rows = fx.training_rows(np.arange(10_000), draws, 1_000)
    assert len(rows) == 1_000 and np.all(np.diff(rows) > 0)
    assert 0.4 < np.mean(rows < 5_000) < 0.6  # spread over the whole set
    mask = np.arange(10_000) % 3 == 0
    kept = fx.training_rows(np.flatnonzero(mask), draws, 1_000)
    assert len(kept) == 1_000 and mask[kept].all()
    small = np.arange(0, 900, 2)
    assert np.array_equal(fx.training_rows(small, draws, 1_000), small)
    assert np.array_equal(fx.training_rows(np.arange(5_000), draws, 0), np.arange(5_000))


def test_a_subject_above_the_budget_trains_on_the_budget():
    X, y, ref, ref_y = _linear(3_000)
    with threadpool_limits(1):
        d = fx.estimate_damage(X, y, ref, ref_y, seed=0, budget=400)
        full = fx.estimate_damage(X, y, ref, ref_y, seed=0, budget=0)
    assert d.queries == full.queries == 3_000
    assert d.trained_on == 400 and full.trained_on == 3_000
    sizes = [n for n, _ in d.curve]
    assert sizes == [n for n, _ in full.curve] and sizes[-1] == 3_000
    used = [len(fx.training_rows(np.arange(n), fx.budget_draws(3_000), 400)) for n in sizes]
    assert used == [min(n, 400) for n in sizes] and used == sorted(used)
    # curve points within the budget are the unbudgeted ones
    assert [f for n, f in d.curve if n <= 400] == [f for n, f in full.curve if n <= 400]
    assert abs(d.fidelity - full.fidelity) < 0.05
    assert d.to_dict()["trained_on"] == 400


def test_a_subject_within_the_budget_is_estimated_as_without_one(toy):
    X, y, ref, ref_y = _linear(900, seed=2)
    with threadpool_limits(1):
        unbounded = fx.estimate_damage(X, y, ref, ref_y, seed=0, budget=0)
        assert fx.estimate_damage(X, y, ref, ref_y, seed=0, budget=900) == unbounded
        assert fx.estimate_damage(X, y, ref, ref_y, seed=0) == unbounded
    assert unbounded.trained_on == 900
    events, ref_X, ref_yy, columns = toy
    subject = events.filter(pl.col("user_id") == "sybil-01")
    legit = fx.traffic(events.filter(pl.col("user_id").str.starts_with("benign")), 6)
    with threadpool_limits(1):
        plain = fx.replay_defences(subject, legit, ref_X, ref_yy, columns=columns, budget=0)
        budgeted = fx.replay_defences(subject, legit, ref_X, ref_yy, columns=columns)
    assert plain == budgeted and plain["trained_on"] == plain["queries"]


def test_replay_above_the_budget_trains_each_defence_on_the_budget(toy):
    events, ref_X, ref_y, columns = toy
    subject = events.filter(pl.col("user_id") == "attacker-00")
    legit = fx.traffic(events.filter(pl.col("user_id").str.starts_with("benign")), 6)
    with threadpool_limits(1):
        out = fx.replay_defences(
            subject,
            legit,
            ref_X,
            ref_y,
            columns=columns,
            budget=100,
            settings=fx.DefenceSettings.of({"day": 150}),
        )
    assert out["trained_on"] == 100 < out["queries"]
    assert out["rate_limit"]["per_day"]["blocked"] == out["queries"] - 2 * 150
    assert 0 <= out["rate_limit"]["per_day"]["fidelity"] <= 1


def test_link_groups_reads_suspects_a_batch_at_a_time():
    events, _, truth = toy_events(0)
    suspects = sorted(u["user_id"] for u in truth["users"] if u["kind"] in ("sybil", "uniform"))
    whole = fx.link_groups(events, suspects)
    assert whole and fx.link_groups(FrameSource(events), suspects, max_events=300) == whole
