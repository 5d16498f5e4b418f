"""Forensics: damage estimates, group linking, defence replay, and the Dagster asset over a
small simulated archive."""

import datetime as dt
import json

import duckdb
import numpy as np
import polars as pl
import pytest

from audits import forensics as fx
from audits.simulation.toy import toy_events


def _linear_world(seed: int = 0, width: int = 5):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(width, 3))

    def label(X):
        return (X @ W).argmax(axis=1)

    ref = rng.normal(size=(1500, width))
    return rng, W, label, ref


def test_damage_grows_with_queries_and_reaches_the_model():
    rng, _, label, ref = _linear_world()
    X = rng.normal(size=(1200, ref.shape[1]))
    d = fx.estimate_damage(X, label(X), ref, label(ref), seed=0)
    assert d.fidelity > 0.95
    assert d.ci[0] <= d.fidelity <= d.ci[1] and d.ci[1] - d.ci[0] < 0.05
    assert [n for n, _ in d.curve] == sorted(n for n, _ in d.curve)
    assert d.curve[-1] == (1200, d.fidelity) and len(d.curve) <= fx.CURVE_POINTS
    assert d.curve[0][1] < d.fidelity
    assert d.queries_to_90 is not None and 20 <= d.queries_to_90 <= 1200
    small = fx.estimate_damage(X[:30], label(X[:30]), ref, label(ref), seed=0)
    assert small.fidelity < d.fidelity


def test_the_curve_refits_only_the_family_better_on_all_the_traffic():
    """Nonlinear answers: boosting wins on the full traffic, and every curve point is the
    boosting surrogate's fidelity from the first k queries (one fit per point, not two)."""
    rng = np.random.default_rng(6)
    X, ref = rng.normal(size=(1500, 4)), rng.normal(size=(1500, 4))

    def label(A):
        return (A[:, 0] * A[:, 1] > 0).astype(int)

    d = fx.estimate_damage(X, label(X), ref, label(ref), seed=0)
    assert d.surrogate == "gradient_boosting (labels)"
    ref_y = fx.as_labels(label(ref))
    for k, value in d.curve[:-1]:
        agree, name = fx.agreement(
            X[:k],
            fx.as_labels(label(X[:k])),
            ref,
            ref_y,
            0,
            families=("gradient_boosting",),
            stop_early=True,
        )
        assert value == round(float(agree.mean()), 4) and name.startswith("gradient_boosting")


def test_damage_labels_compare_as_text_and_constant_answers():
    rng, _, label, ref = _linear_world(1)
    X = rng.normal(size=(300, ref.shape[1]))
    as_text = fx.estimate_damage(X, label(X).astype(str), ref, label(ref), seed=0)
    as_int = fx.estimate_damage(X, label(X), ref, label(ref).astype(float), seed=0)
    assert as_text.fidelity == as_int.fidelity
    one = fx.estimate_damage(X, np.zeros(300, int), ref, label(ref), seed=0)
    assert one.fidelity == pytest.approx(np.mean(label(ref) == 0), abs=1e-4)
    assert fx.estimate_damage(X[:0], [], ref, label(ref)).queries == 0


def test_damage_matches_the_simulators_measure():
    """The label-trained estimate is the simulator's truth measure on another sample."""
    from audits.simulation.fidelity import surrogate_fidelity

    rng, _, label, ref = _linear_world(2)
    X = rng.uniform(-3, 3, size=(600, ref.shape[1]))
    holdout = rng.normal(size=(1500, ref.shape[1]))
    truth = surrogate_fidelity(X, label(X), holdout, label(holdout), seed=0)
    est = fx.estimate_damage(X, label(X), ref, label(ref), seed=0)
    assert abs(est.fidelity - truth) < 0.03


def test_probabilities_train_a_second_surrogate():
    rng, W, label, ref = _linear_world(3)
    X = rng.normal(size=(400, ref.shape[1]))
    logits = X @ W
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d = fx.estimate_damage(
        X, label(X), ref, label(ref), probabilities=p, proba_classes=[0, 1, 2], seed=0
    )
    assert d.fidelity_probabilities is not None and d.fidelity_probabilities > 0.9


def _boosting():
    return fx.make_surrogate("gradient_boosting", 0)


def test_boosting_on_bins_predicts_as_boosting_on_the_values():
    rng = np.random.default_rng(4)
    X = np.column_stack(
        [rng.normal(size=3000), rng.integers(0, 40, 3000), rng.exponential(size=3000)]
    )
    y = (X[:, 0] * X[:, 2] > 0.3).astype(int) + (X[:, 1] > 25)
    ref = np.column_stack(
        [rng.normal(size=2000), rng.integers(-5, 45, 2000), rng.normal(size=2000)]
    )
    edges = fx.quantile_edges(X)
    assert len(edges[1]) == 39  # 40 distinct values: their midpoints
    on_values = _boosting().fit(X, y).predict(ref)
    on_bins = _boosting().fit(fx.to_bins(X, edges), y).predict(fx.to_bins(ref, edges))
    assert np.array_equal(on_bins, on_values)


def test_probabilities_train_the_boosting_surrogate_on_a_nonlinear_model():
    rng = np.random.default_rng(5)

    def served(X):
        logits = np.column_stack([np.zeros(len(X)), 4 * X[:, 0] * X[:, 1]])
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    X, ref = rng.normal(size=(3000, 4)), rng.normal(size=(1500, 4))
    p = served(X)
    d = fx.estimate_damage(
        X, p.argmax(axis=1), ref, served(ref).argmax(axis=1), probabilities=p, proba_classes=[0, 1]
    )
    assert d.fidelity_probabilities is not None and d.fidelity_probabilities > 0.9
    ref_y = fx.as_labels(served(ref).argmax(axis=1))
    labels = fx.as_labels(p.argmax(axis=1))
    agree, name = fx.agreement(X, labels, ref, ref_y, 0, p, fx.as_labels([0, 1]))
    assert name == "gradient_boosting (probabilities)" and agree.mean() > 0.9


def test_link_groups_finds_the_sybil_keys_and_no_benign_key():
    events, _, truth = toy_events(0)
    sybils = sorted(u["user_id"] for u in truth["users"] if u["kind"] == "sybil")
    attackers = sorted(u["user_id"] for u in truth["users"] if u["kind"] == "uniform")
    suspects = sybils + attackers + ["benign-000", "batch-000"]
    groups = fx.link_groups(events, suspects)
    assert {groups.get(s) for s in sybils} == {groups[sybils[0]]}
    gid = groups[sybils[0]]
    assert sorted(u for u, g in groups.items() if g == gid) == sybils
    assert gid.startswith("link:")
    kept = fx.link_groups(events, suspects, existing={s: "subnet:x" for s in sybils})
    assert kept[sybils[0]] == "subnet:x"


def test_rate_limit_mask_counts_per_key_and_window():
    ts = np.array([0.0, 1, 2, 3, 61, 62, 0, 1])
    keys = np.array(["a"] * 6 + ["b"] * 2)
    keep = fx.rate_limit_mask(ts, keys, 2, 60)
    assert keep.tolist() == [True, True, False, False, True, True, True, True]


@pytest.fixture(scope="module")
def toy_replay():
    """A defence replay of the toy archive's first attacker, and the legitimate events."""
    events, _, truth = toy_events(1)
    rng, _, _, _ = _linear_world()
    X = np.asarray(events["features"].to_list())
    # the toy's served model: argmax of the logged probabilities
    y = np.asarray(events["prediction"].to_list())
    pick = rng.choice(len(X), 800, replace=False)
    ref_X, ref_y = X[pick], y[pick]
    columns = fx.proba_columns(events)
    subject = events.filter(pl.col("user_id") == "attacker-00")
    legit = events.filter(pl.col("user_id").str.starts_with("benign"))
    out = fx.replay_defences(
        subject,
        legit,
        ref_X,
        ref_y,
        columns=columns,
        settings=fx.DefenceSettings.of({"minute": 10, "day": 150}, round_decimals=1),
    )
    return out, legit


def test_replay_defences_reports_each_defence_and_its_cost(toy_replay):
    out, legit = toy_replay
    per_day = out["rate_limit"]["per_day"]
    assert per_day["blocked"] == out["queries"] - 2 * 150
    assert per_day["fidelity"] <= out["fidelity"] + 0.05
    assert set(out["rate_limit"]) == {"per_minute", "per_day", "combined"}
    assert out["rate_limit"]["combined"]["blocked"] >= per_day["blocked"]
    assert per_day["legit_blocked"] == 0  # benign toy users send <= 120 a day
    assert out["top1"]["legit_responses_changed"] == legit.height
    assert 0 <= out["rounding"]["fidelity"] <= 1
    json.dumps(out)
    with pytest.raises(ValueError, match="unknown rate-limit periods"):
        fx.DefenceSettings.of({"week": 1})


def test_damage_and_replay_read_back_from_their_tables_as_estimated(toy_replay):
    from audits import tables
    from audits.forensics import records

    replay, _ = toy_replay
    damage = fx.Damage(0.71, (0.69, 0.74), [(25, 0.4), (50, 0.71)], None, 50, "tree", 0.8, 50)
    other = fx.Damage(0.5, (0.45, 0.55), [], 3, 7, "linear")
    window = (dt.date(2026, 11, 1), dt.date(2026, 11, 1))
    con = duckdb.connect()
    damage_rows, replay_rows = records.incident_frames(
        {"inc_a": (damage, replay), "inc_b": (other, {**replay, "rate_limit": {}})}
    )
    tables.replace_window(con, tables.INCIDENT_DAMAGE, damage_rows, window)
    tables.replace_window(con, tables.DEFENCE_REPLAY, replay_rows, window)
    back = records.read_incident_damage(con, window)
    # the same dict, the same key order (the pages list the rate-limit scenarios in it)
    assert json.dumps(back["inc_a"]) == json.dumps({**damage.to_dict(), "replay": replay})
    assert back["inc_b"]["replay"]["rate_limit"] == {} and back["inc_b"]["curve"] == []
    assert records.read_incident_damage(con, (window[0], dt.date(2026, 11, 2))) == {}


def test_logged_reference_leaves_out_suspects():
    events, _, _ = toy_events(2)
    X, y = fx.logged_reference(events, ["attacker-00"], rows=500)
    assert len(X) == len(y) <= 500 and X.shape[1] == 6


# ---------------------------------------------------------------- the asset


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A small simulated archive audited through the CLI (ingest + detection)."""
    from audits.simulation import simulate
    from pipelines.cli import main

    root = tmp_path_factory.mktemp("forensics")
    sim, out = root / "sim", root / "out"
    truth = simulate(sim, seed=7, days=2, users=60)
    code = main(
        [
            "audit",
            "--logs",
            str(sim / "logs"),
            "--out",
            str(out),
            "--model",
            str(sim / "model.skops"),
            "--reference",
            str(sim / "reference.parquet"),
            "--quiet",
        ]
    )
    assert code == 0
    return sim, out, truth


def test_forensics_asset_writes_its_tables_joined_into_scores_and_incidents(audited):
    from dagster import materialize
    from dagster_duckdb import DuckDBResource

    from assets.forensics import forensics
    from assets.report import user_scores_file
    from assets.resources import AuditConfig
    from audits.forensics.records import read_incident_damage

    sim, out, truth = audited
    db = str(out / "stealwatch.duckdb")
    audit = AuditConfig(
        logs=str(sim / "logs"),
        out_dir=str(out),
        model=str(sim / "model.skops"),
        reference=str(sim / "reference.parquet"),
    )
    result = materialize(
        [forensics, user_scores_file],
        resources={"duckdb": DuckDBResource(database=db), "audit": audit},
    )
    assert result.success
    scores = pl.read_parquet(out / "user_scores.parquet")
    flagged = scores.filter(pl.col("flagged"))
    assert flagged.height > 0
    assert flagged["est_fidelity"].null_count() == 0
    assert (
        scores.filter(~pl.col("flagged"))["est_fidelity"].null_count()
        == scores.height - flagged.height
    )
    fid = {u["user_id"]: u["fidelity"] for u in truth["users"] if u["fidelity"] is not None}
    est = dict(zip(flagged["user_id"], flagged["est_fidelity"], strict=True))
    errors = [abs(est[u] - fid[u]) for u in est if u in fid]
    assert errors and float(np.mean(errors)) < 0.05
    con = duckdb.connect(db, read_only=True)
    try:
        damage = con.sql("SELECT * FROM damage").pl()
        incidents = con.sql("SELECT * FROM incidents").pl()
        window = (incidents["window_start"][0], incidents["window_end"][0])
        joined = read_incident_damage(con, window)
        stored = con.sql("SELECT * FROM user_scores WHERE est_fidelity IS NOT NULL").pl()
    finally:
        con.close()
    assert set(flagged["user_id"]) <= set(damage.filter(pl.col("kind") == "user")["subject"])
    assert damage["window_start"][0] == dt.date.fromisoformat(truth["days"][0])
    assert damage["curve_queries"].list.len().min() > 0
    # forensics writes only its own tables: detection's rows stay as detection wrote them
    assert "damage" not in incidents.columns and stored.height == 0
    assert incidents.height and set(incidents["incident_id"]) == set(joined)
    replay = joined[incidents["incident_id"][0]]["replay"]
    assert "rate_limit" in replay and joined[incidents["incident_id"][0]]["curve"]
    assert replay["randomisation"]["legit_labels_changed"] == 0
    assert replay["randomisation"]["legit_mean_abs_change"] > 0
    assert 0 <= replay["dedup"]["fidelity"] <= 1 and replay["dedup"]["duplicates"] >= 0
    pages = sorted((out / "incidents").glob("*.html"))
    assert pages and all("query deduplication" in p.read_text() for p in pages)
    assert all("randomised probabilities" in p.read_text() for p in pages)
    for g in truth["groups"]:
        ids = {scores.filter(pl.col("user_id") == m)["group_id"][0] for m in g["members"]}
        assert len(ids) == 1 and None not in ids
        holders = scores.filter(pl.col("group_id") == ids.pop())["user_id"].to_list()
        assert sorted(holders) == sorted(g["members"])


def test_the_asset_reads_the_store_as_a_frame_and_in_workers_as_in_process(audited):
    """The damage rows over the store's events (bounded reads), estimated in this process,
    equal those over the same events in memory estimated by two worker processes, with a
    training budget small enough to sample the busiest subjects."""
    from assets.forensics import ForensicsConfig, forensics_of
    from assets.resources import AuditConfig
    from audits.errors import InputError
    from audits.event_source import DuckDBSource, FrameSource

    sim, out, _ = audited
    audit = AuditConfig(
        logs=str(sim / "logs"),
        out_dir=str(out),
        model=str(sim / "model.skops"),
        reference=str(sim / "reference.parquet"),
    )
    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    try:
        window = con.sql("SELECT min(window_start), max(window_end) FROM user_scores").fetchall()[0]
        params = list(window)
        scores = con.sql(
            "SELECT * EXCLUDE (window_start, window_end) FROM user_scores "
            "WHERE window_start = ? AND window_end = ? ORDER BY user_id",
            params=params,
        ).pl()
        incidents = con.sql(
            "SELECT incident_id, kind, subject, members FROM incidents "
            "WHERE window_start = ? AND window_end = ? ORDER BY kind, incident_id",
            params=params,
        ).pl()
        # the group incidents and one user's: every kind of subject, in a third of the time
        incidents = pl.concat(
            [
                incidents.filter(pl.col("kind") == "group"),
                incidents.filter(pl.col("kind") != "group").head(1),
            ]
        )
        pairs = zip(incidents["members"].to_list(), incidents["subject"].to_list(), strict=True)
        flagged = sorted({m for members, subject in pairs for m in (members or [subject])})
        store = DuckDBSource(con, window)
        frame = FrameSource(store.fetch(store.users()))
        results = [
            forensics_of(
                ForensicsConfig(train_budget=300, workers=workers),
                audit,
                source,
                scores,
                flagged,
                incidents,
                lambda _: None,
            )
            for source, workers in ((store, 1), (frame, 2))
        ]
        for wrong, message in (
            (dict(train_budget=-1), "train_budget"),
            (dict(workers=-1), "workers"),
        ):
            with pytest.raises(InputError, match=message):
                forensics_of(
                    ForensicsConfig(**wrong), audit, store, scores, flagged, incidents, print
                )
    finally:
        con.close()
    (table, fidelity, groups, damage), other = results
    assert table.equals(other[0]) and (fidelity, groups) == other[1:3]
    assert damage == other[3] and len(damage) == incidents.height
    assert set(table["kind"]) == {"user", "group"}
    assert (table["trained_on"] == table["queries"].clip(upper_bound=300)).all()
    assert (table["queries"] > 300).any()


def test_subjects_read_in_batches_get_the_traffic_one_read_each_gives(audited):
    """Consecutive subjects' events read in one query (batches smaller than the window, a
    user in two subjects, a subject larger than the batch) give each subject the arrays a
    query of its own gives."""
    from audits.event_source import DuckDBSource
    from audits.forensics.run import subject_traffic
    from audits.forensics.traffic import traffic

    _, out, truth = audited
    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    try:
        window = con.sql("SELECT min(day), max(day) FROM user_day").fetchall()[0]
        source = DuckDBSource(con, window)
        users = source.users()
        group = tuple(sorted(truth["groups"][0]["members"]))
        keys = [(u,) for u in users[:12]] + [group, (group[0],)] + [tuple(users[12:40])]
        counts = source.user_counts()
        batch = 3 * max(counts[u] for u in users[:12])
        assert sum(counts[u] for u in users[12:40]) > batch  # the last subject: alone
        width = truth["input_width"]
        got = list(subject_traffic(source, keys, width, max_events=batch))
        want = [(key, traffic(source.fetch(list(key)), width)) for key in keys]
    finally:
        con.close()
    assert [key for key, _ in got] == keys
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert len(a.y) > 0 and np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
        assert np.array_equal(a.ts_s, b.ts_s) and np.array_equal(a.key, b.key)
        assert np.array_equal(a.user, b.user) and np.array_equal(a.proba, b.proba)


def test_an_old_damage_table_takes_the_new_rows():
    from assets.forensics import DAMAGE_MIGRATIONS
    from audits import tables

    con = duckdb.connect()
    # as a store from before the training budget and the typed curve holds it
    con.execute(
        "CREATE TABLE damage (window_start DATE NOT NULL, window_end DATE NOT NULL, "
        "subject VARCHAR NOT NULL, kind VARCHAR NOT NULL, members VARCHAR[], "
        "est_fidelity DOUBLE, ci_low DOUBLE, ci_high DOUBLE, fidelity_probabilities DOUBLE, "
        "queries BIGINT, queries_to_90 BIGINT, surrogate VARCHAR, reference VARCHAR, "
        "curve VARCHAR, replay VARCHAR)"
    )
    for migration in (*DAMAGE_MIGRATIONS, *DAMAGE_MIGRATIONS):
        con.execute(migration)
    window = (dt.date(2026, 11, 1), dt.date(2026, 11, 1))
    row = {
        "subject": "k",
        "kind": "user",
        "members": ["k"],
        "est_fidelity": 0.5,
        "queries": 40,
        "trained_on": 40,
        "curve_queries": [20, 40],
        "curve_fidelity": [0.3, 0.5],
    }
    frame = pl.DataFrame([row], schema=tables.DAMAGE.schema)
    tables.replace_window(con, tables.DAMAGE, frame, window)
    back = tables.read_window(con, tables.DAMAGE, window)
    assert back.select(frame.columns).equals(frame)
