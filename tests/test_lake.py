"""The lake storage mode: day partitions as Parquet on a path or S3-compatible storage, day
partitions ingested in parallel processes, results equal to the DuckDB file's."""

import json
import os
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from audits.lake import DAY_TABLES, Lake, ingest_day, session
from pipelines.cli import main

ROUND = 9  # detector scores are compared at 9 decimals: float sums may differ in the last bits


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two days with faults: redeliveries within a day and a day late, rejects, a cut gzip."""
    from audits.simulation import simulate

    out = tmp_path_factory.mktemp("sim")
    truth = simulate(out, seed=29, days=2, users=40, faults=True)
    return out, truth


def _audit(sim: Path, out: Path, *extra: str) -> dict:
    args = ["audit", "--logs", str(sim / "logs"), "--model", str(sim / "model.skops")]
    assert main([*args, "--out", str(out), "--quiet", *extra]) == 0
    return json.loads((out / "ingest_summary.json").read_text())


def _scores(out: Path) -> pl.DataFrame:
    frame = pl.read_parquet(out / "user_scores.parquet").sort("user_id")
    return frame.with_columns(pl.col(pl.Float64).round(ROUND))


def _counted(summary: dict, truth: dict) -> dict:
    return {key: summary[key] for key in truth["expected_ingest"]}


@pytest.fixture(scope="module")
def duckdb_audit(sim, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("duckdb")
    _audit(sim[0], out)
    return out


@pytest.fixture(scope="module")
def lake_audit(sim, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lake")
    _audit(sim[0], out, "--lake", str(out / "lake"))
    return out


def test_lake_audit_counts_every_record_and_scores_like_the_duckdb_file(
    sim, duckdb_audit: Path, lake_audit: Path
) -> None:
    _, truth = sim
    summary = json.loads((lake_audit / "ingest_summary.json").read_text())
    assert _counted(summary, truth) == truth["expected_ingest"]
    assert not (lake_audit / "stealwatch.duckdb").exists()
    lake_scores, file_scores = _scores(lake_audit), _scores(duckdb_audit)
    assert lake_scores.equals(file_scores)
    assert lake_scores["flagged"].sum() > 0
    pages = [
        sorted(p.name for p in (out / "incidents").iterdir()) for out in (lake_audit, duckdb_audit)
    ]
    assert pages[0] == pages[1] and pages[0]


def test_a_rerun_replaces_each_partition_and_leaves_no_stale_file(sim, lake_audit: Path) -> None:
    sim_dir, truth = sim
    lake = Lake(str(lake_audit / "lake"))
    before = {m["day"]: m for m in lake.manifests()}
    summary = _audit(sim_dir, lake_audit, "--lake", str(lake_audit / "lake"))
    assert _counted(summary, truth) == truth["expected_ingest"]
    after = {m["day"]: m for m in lake.manifests()}
    assert after.keys() == before.keys() and len(after) == 2
    for day, manifest in after.items():
        assert manifest["rows"] == before[day]["rows"]
        for table in DAY_TABLES:
            folder = lake_audit / "lake" / table / f"day={day}"
            assert [str(p) for p in folder.iterdir()] == [manifest["files"][table]]
    with session(lake) as con:
        (events,) = con.sql("SELECT count(*) FROM events").fetchall()[0]
        (distinct,) = con.sql("SELECT count(DISTINCT event_id) FROM events").fetchall()[0]
        spill = Path(con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0])
    assert events == distinct == truth["expected_ingest"]["accepted"]
    # an in-memory session spills to a private folder, not ./.tmp, and removes it
    assert spill.name.startswith("stealwatch-spill-") and not spill.exists()


def test_parallel_day_partitions_equal_the_single_process_run(
    sim, lake_audit: Path, tmp_path: Path
) -> None:
    sim_dir, truth = sim
    out = tmp_path / "parallel"
    summary = _audit(sim_dir, out, "--lake", str(out / "lake"), "--workers", "2")
    assert _counted(summary, truth) == truth["expected_ingest"]
    assert _scores(out).equals(_scores(lake_audit))
    writers = {m["committed_by"] for m in Lake(str(out / "lake")).manifests()}
    assert len(writers) == 2  # each day was ingested by a process of its own
    assert all(not w.endswith(f":{os.getpid()}") for w in writers)


def test_a_failed_commit_keeps_the_previous_partition(
    sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audits.catalog import scan_archive

    sim_dir, _ = sim
    lake = Lake(str(tmp_path / "lake"))
    files, _ = scan_archive(str(sim_dir / "logs"))
    day = min(f.day for f in files)
    day_files = [f for f in files if f.day == day]
    ingest_day(lake, day, day_files, model_width=None)
    committed = lake.manifest(day)
    real_write = pq.write_table
    calls = []

    def fail_on_third(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        ingest_day(lake, day, day_files, model_width=None)
    assert lake.manifest(day) == committed
    for table in DAY_TABLES:
        folder = tmp_path / "lake" / table / f"day={day.isoformat()}"
        assert [str(p) for p in folder.iterdir()] == [committed["files"][table]]


def test_s3_lake_on_a_local_object_store(
    sim, lake_audit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole audit against an S3-compatible server started here on loopback."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="audit-lake")
        sim_dir, truth = sim
        out = tmp_path / "s3"
        summary = _audit(sim_dir, out, "--lake", "s3://audit-lake/prod")
        assert _counted(summary, truth) == truth["expected_ingest"]
        assert _scores(out).equals(_scores(lake_audit))
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="audit-lake")["Contents"]]
        assert "prod/_manifests/day=2026-11-01.json" in keys
        assert any(k.startswith("prod/tables/user_scores") for k in keys)
        assert not (out / "stealwatch.duckdb").exists()
    finally:
        server.stop()


def test_workers_without_a_lake_is_a_usage_error(sim, tmp_path: Path, capsys) -> None:
    sim_dir, _ = sim
    code = main(
        ["audit", "--logs", str(sim_dir / "logs"), "--out", str(tmp_path), "--workers", "2"]
    )
    assert code == 2
    assert "--workers needs --lake" in capsys.readouterr().err


def test_the_k8s_profile_runs_steps_as_jobs_over_the_lake(tmp_path: Path) -> None:
    pytest.importorskip("dagster_k8s")
    from assets.resources import AuditConfig
    from pipelines.definitions import build_definitions

    audit = AuditConfig(logs=str(tmp_path), out_dir=str(tmp_path / "out"))
    defs = build_definitions(audit, ":memory:", "s3://audit-lake/prod", "k8s")
    job = defs.resolve_job_def("daily_audit")
    assert job.executor_def.name == "stealwatch_k8s"
    assert job.executor_def.config_schema  # pods sized per step kind
    with pytest.raises(ValueError, match="needs STEALWATCH_LAKE"):
        build_definitions(audit, "db.duckdb", None, "k8s")


def test_the_k8s_instance_profile_is_valid_dagster_config(monkeypatch: pytest.MonkeyPatch) -> None:
    k8s = pytest.importorskip("dagster_k8s")
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config

    profile = Path(__file__).parents[1] / "pipelines" / "profiles" / "k8s"
    config, _ = dagster_instance_config(str(profile))
    launcher = config["run_launcher"]
    assert launcher["class"] == "K8sRunLauncher"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    for name in ("STEALWATCH_IMAGE", "STEALWATCH_NAMESPACE"):
        monkeypatch.setenv(name, "stealwatch")
    checked = process_config(k8s.K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors


def test_investigate_reads_the_lake(lake_audit: Path, tmp_path: Path) -> None:
    scores = pl.read_parquet(lake_audit / "user_scores.parquet").sort("score", descending=True)
    user = scores["user_id"][0]
    lake = str(lake_audit / "lake")
    assert main(["investigate", "--lake", lake, "--user", user, "--out", str(tmp_path)]) == 0
    [page] = tmp_path.glob("user-*.html")
    assert user in page.read_text()
    assert main(["investigate", "--lake", lake, "--user", "nobody", "--out", str(tmp_path)]) == 2
