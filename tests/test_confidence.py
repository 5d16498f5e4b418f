"""Confidence monitoring: the daily statistics and alerts, on a simulated archive and on an
overfit model served on the simulator's data."""

import datetime as dt
import json

import duckdb
import numpy as np
import polars as pl
import pytest

from audits import confidence as cf
from audits.simulation.roster import ATTACK_FAMILIES

BOUNDARY_PROBERS = ("hopskipjump",)  # the attack whose queries sit on the decision boundary


def _materialize(sim, out, **audit_kwargs):
    from dagster import materialize
    from dagster_duckdb import DuckDBResource

    from assets.monitoring import confidence_monitor
    from assets.resources import AuditConfig

    audit = AuditConfig(logs=str(sim / "logs"), out_dir=str(out), **audit_kwargs)
    result = materialize(
        [confidence_monitor],
        resources={"duckdb": DuckDBResource(database=str(out / "db.duckdb")), "audit": audit},
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    return event.materialization.metadata


def _model_files(sim) -> dict:
    return {
        "model": str(sim / "model.skops"),
        "train": str(sim / "train.parquet"),
        "holdout": str(sim / "holdout.parquet"),
    }


def _table(out) -> pl.DataFrame:
    con = duckdb.connect(str(out / "db.duckdb"), read_only=True)
    try:
        return con.sql("SELECT * FROM confidence_daily ORDER BY window_start, day").pl()
    finally:
        con.close()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A simulated archive of three days ingested into a fresh store."""
    from audits import store
    from audits.catalog import scan_archive
    from audits.simulation import simulate

    root = tmp_path_factory.mktemp("confidence")
    sim, out = root / "sim", root / "out"
    truth = simulate(sim, seed=7, days=3, users=60)
    out.mkdir()
    con = store.connect(out / "db.duckdb")
    try:
        files, _ = scan_archive(sim / "logs")
        for day in sorted({f.day for f in files}):
            store.ingest_day(con, day, [f for f in files if f.day == day])
        kinds = {u["user_id"]: u["kind"] for u in truth["users"]}
        per_day = con.sql("SELECT day, user_id, count(*) AS n FROM events GROUP BY ALL").pl()
    finally:
        con.close()
    probing = (
        per_day.with_columns(
            pl.col("user_id").replace_strict(kinds).is_in(BOUNDARY_PROBERS).cast(pl.Int64)
        )
        .group_by("day")
        .agg((pl.col("n") * pl.col("user_id")).sum() / pl.col("n").sum())
        .sort("day")
    )
    shares = dict(zip(probing["day"].to_list(), probing["n"].to_list(), strict=True))
    return sim, out, truth, shares


def test_confidence_and_margin_ignore_column_order_and_bad_rows():
    proba = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.05, 0.05, 0.9]])
    conf, margin = cf.confidence_and_margin(proba)
    np.testing.assert_allclose(conf, [0.7, 0.5, 0.9])
    np.testing.assert_allclose(margin, [0.5, 0.0, 0.85])
    series = pl.Series([[0.2, 0.7, 0.1], None, [1.0], [0.6, float("nan")], [0.4, 0.6]])
    conf, margin = cf.response_scores(series)
    np.testing.assert_allclose(conf, [0.7, 0.6])
    np.testing.assert_allclose(margin, [0.5, 0.2])


def test_boundary_probing_day_is_a_low_margin_shift_and_other_days_are_quiet(simulated):
    from reports import pages

    sim, out, truth, probing = simulated
    assert set(BOUNDARY_PROBERS) <= set(ATTACK_FAMILIES)
    meta = _materialize(sim, out, **_model_files(sim))
    table = _table(out)
    assert table["day"].to_list() == [dt.date.fromisoformat(d) for d in truth["days"]]
    assert meta["rows"].value == 3
    # the ground truth: the days where HopSkipJump sent a tenth or more of the traffic
    probed = {day for day, share in probing.items() if share >= 0.10}
    assert probed and probed != set(table["day"].to_list())
    alerted = table.filter(pl.col("alert").is_not_null())
    assert set(alerted["day"].to_list()) == probed
    assert set(alerted["alert"].to_list()) == {cf.LOW_MARGIN_SHIFT}
    jump = pl.col("low_margin_share") - pl.col("baseline_share")
    assert table.filter(pl.col("alert").is_null()).select((jump < cf.MIN_JUMP).all()).item()
    assert alerted.select((jump >= cf.MIN_JUMP).all()).item()
    # this MLP is hardly overfit: training and holdout confidences look alike, so nothing can
    # be called training-like, and the report says so
    assert table["reference_gap"].max() < cf.MIN_REFERENCE_GAP
    assert table["n"].sum() == sum(u["n_events"] for u in truth["users"])
    assert table.select(pl.col("ks_train", "ks_holdout").is_between(0, 1).all()).row(0) == (
        True,
        True,
    )
    con = duckdb.connect(str(out / "db.duckdb"), read_only=True)
    try:
        types = dict(
            con.sql(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'confidence_daily'"
            ).fetchall()
        )
        window = (table["window_start"][0], table["window_end"][0])
        path = pages.write_overview(con, window, out)
    finally:
        con.close()
    assert {
        k: types[k] for k in ("window_start", "day", "n", "ks_train", "p_holdout", "alert")
    } == {
        "window_start": "DATE",
        "day": "DATE",
        "n": "BIGINT",
        "ks_train": "DOUBLE",
        "p_holdout": "DOUBLE",
        "alert": "VARCHAR",
    }
    html = path.read_text()
    section = html[html.index("<h2>Confidence monitoring</h2>") :]
    section = section[: section.index("</section>")]
    assert "<svg" in section and "low-margin shift" in section
    assert "cannot be told apart" in section


def test_a_daily_run_takes_its_baseline_from_the_earlier_days(simulated):
    sim, out, truth, _ = simulated
    _materialize(sim, out, **_model_files(sim))
    full = _table(out)
    last = truth["days"][-1]
    meta = _materialize(sim, out, start=last, end=last, **_model_files(sim))
    assert meta["rows"].value == 1
    daily = _table(out).filter(pl.col("window_start") == pl.col("window_end"))
    earlier = full.filter(pl.col("day") < dt.date.fromisoformat(last))["low_margin_share"]
    assert daily["baseline_share"][0] == pytest.approx(np.median(earlier.to_numpy()), abs=1e-6)
    same = full.filter(pl.col("day") == dt.date.fromisoformat(last))
    assert daily.select("ks_train", "alert").rows() == same.select("ks_train", "alert").rows()


def test_without_the_model_or_training_data_no_rows_and_the_report_says_what_to_pass(
    simulated, tmp_path
):
    from reports import pages

    sim, out, _, _ = simulated
    _materialize(sim, out, **_model_files(sim))
    meta = _materialize(sim, out, model=str(sim / "model.skops"))
    assert meta["rows"].value == 0 and "--train" in meta["status"].value
    assert _table(out).filter(pl.col("window_start") != pl.col("window_end")).height == 0
    con = duckdb.connect(str(out / "db.duckdb"), read_only=True)
    try:
        days = con.sql("SELECT min(day), max(day) FROM events").fetchall()[0]
        path = pages.write_overview(con, days, tmp_path)
    finally:
        con.close()
    assert "Not measured: pass <code>--model</code>" in path.read_text()


# ---------------------------------------------------------------- an overfit model


@pytest.fixture(scope="module")
def overfit(simulated):
    """A random forest served on the simulator's data: confident on its training rows."""
    from sklearn.ensemble import RandomForestClassifier

    sim = simulated[0]
    train = pl.read_parquet(sim / "train.parquet").head(6000)
    X, y = train.drop("label").to_numpy(), train["label"].to_numpy()
    forest = RandomForestClassifier(40, min_samples_leaf=1, random_state=0, n_jobs=1).fit(X, y)
    holdout = pl.read_parquet(sim / "holdout.parquet").drop("label").to_numpy()[:4000]
    reference = pl.read_parquet(sim / "reference.parquet").to_numpy()
    return forest, X, holdout, reference


def _day_frame(day: dt.date, proba: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {"day": [day] * len(proba), "probabilities": proba.tolist()},
        schema={"day": pl.Date, "probabilities": pl.List(pl.Float64)},
    )


def _boundary_probes(forest, reference: np.ndarray, n: int, rng) -> np.ndarray:
    """HopSkipJump-like probes: bisect between two rows with different answers, 12 steps."""
    label = forest.predict(reference)
    a = rng.choice(len(reference), 4 * n)
    b = rng.choice(len(reference), 4 * n)
    keep = label[a] != label[b]
    lo, hi = reference[a[keep]][:n], reference[b[keep]][:n]
    for _ in range(12):
        mid = (lo + hi) / 2
        same = forest.predict(mid) == forest.predict(lo)
        lo = np.where(same[:, None], mid, lo)
        hi = np.where(same[:, None], hi, mid)
    return (lo + hi) / 2


def test_replayed_training_rows_are_training_like_and_probes_shift_the_margins(overfit):
    forest, train_X, holdout_X, reference = overfit
    rng = np.random.default_rng(0)
    baseline = cf.baseline_from_model(_Served(forest), train_X, holdout_X)
    assert baseline.discriminates and baseline.reference_gap > 0.2
    days = [dt.date(2026, 11, d) for d in range(1, 6)]
    normal = np.array_split(reference[rng.permutation(len(reference))[:4500]], 3)
    replay = train_X[rng.choice(len(train_X), 1500, replace=False)]
    probes = _boundary_probes(forest, reference, 1500, rng)
    frames = [
        _day_frame(day, forest.predict_proba(X)) for day, X in zip(days[:3], normal, strict=True)
    ]
    frames += [
        _day_frame(days[3], forest.predict_proba(replay)),
        _day_frame(days[4], forest.predict_proba(probes)),
    ]
    table = cf.daily_confidence(pl.concat(frames), baseline, days)
    alerts = dict(zip(table["day"].to_list(), table["alert"].to_list(), strict=True))
    assert [alerts[d] for d in days[:3]] == [None, None, None]
    assert cf.TRAINING_LIKE in alerts[days[3]]
    assert cf.LOW_MARGIN_SHIFT in alerts[days[4]] and cf.TRAINING_LIKE not in alerts[days[4]]
    row = table.row(3, named=True)
    assert row["ks_train"] < row["ks_holdout"] and row["p_holdout"] < cf.ALPHA
    # a bounded, deterministic sample: n counts every response, the statistics use 500
    sampled = cf.daily_confidence(pl.concat(frames), baseline, days, max_per_day=500, seed=3)
    again = cf.daily_confidence(pl.concat(frames), baseline, days, max_per_day=500, seed=3)
    assert sampled.equals(again)
    assert sampled["sampled"].to_list() == [500] * 5 and sampled["n"].to_list() == [1500] * 5
    assert sampled["alert"].to_list() == table["alert"].to_list()
    json.dumps(baseline.describe())


class _Served:
    """The ServedModel interface over a fitted estimator (only what the baseline needs)."""

    def __init__(self, estimator):
        self.estimator = estimator

    def predict_proba(self, X):
        return self.estimator.predict_proba(X)
