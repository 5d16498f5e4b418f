"""The Dagster wiring and the `stealwatch audit` command, end to end on generated archives."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import build_schedule_context, build_sensor_context

from assets.resources import AuditConfig
from pipelines.cli import main
from pipelines.jobs import daily_audit_schedule
from pipelines.sensors import new_archive_files
from tests.conftest import make_record, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def test_definitions_validate() -> None:
    env = {**os.environ, "STEALWATCH_OUT": "/tmp/stealwatch-validate"}
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "pipelines.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_importing_the_definitions_reads_no_environment() -> None:
    """A bad deployment setting fails the code location when Dagster loads it, not every
    importer of the module (the CLI, a multiprocess run's children)."""
    code = (
        "import pipelines.definitions as d\n"
        "try:\n    d.defs()\nexcept ValueError as e:\n    print('refused:', e)\n"
    )
    env = {**os.environ, "STEALWATCH_ENV": "nowhere", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: STEALWATCH_ENV='nowhere'" in done.stdout


def test_audit_writes_the_summary_and_a_rerun_changes_nothing(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(["audit", "--logs", str(archive), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert {
        k: summary[k] for k in ("files", "rows_read", "accepted", "duplicates", "rejected")
    } == {
        "files": 4,
        "rows_read": 800,
        "accepted": 800,
        "duplicates": 0,
        "rejected": {},
    }
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert main(["audit", "--logs", str(archive), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "ingest_summary.json").read_text()) == summary
    import duckdb

    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    assert con.sql("SELECT count(*) FROM events").fetchall() == [(800,)]


def test_a_range_audits_only_its_days(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["audit", "--logs", str(archive), "--out", str(out), "--quiet"]
    assert main([*args, "--start", "2026-11-02", "--end", "2026-11-02"]) == 0
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["files"] == 2 and summary["window"] == ["2026-11-02", "2026-11-02"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--start", "11/02/2026"], "--start must be a date as YYYY-MM-DD"),
        (["--start", "2026-11-03", "--end", "2026-11-01"], "is after --end"),
        (["--start", "2027-01-01"], "no log files for 2027-01-01"),
        (["--model", "/nonexistent/model.skops"], "model not found"),
        (["--duckdb-memory", "lots"], "must be a size such as 1GB or 512MiB, got 'lots'"),
        (["--fp-budget", "0.7"], "--fp-budget must be above 0 and below 0.5, got 0.7"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    archive: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("STEALWATCH_DUCKDB_MEMORY", raising=False)
    code = main(["audit", "--logs", str(archive), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_bad_memory_limit_in_the_environment_fails_before_any_write(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEALWATCH_DUCKDB_MEMORY", "lots")
    code = main(["audit", "--logs", str(archive), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "STEALWATCH_DUCKDB_MEMORY) must be a size such as 1GB" in err
    assert not (tmp_path / "o").exists()


def test_missing_archive_via_the_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "stealwatch"),
            "audit",
            "--logs",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"stealwatch: error: log archive not found: {tmp_path / 'nope'}"
    ]


def test_schedule_audits_yesterday() -> None:
    context = build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
    )
    request = daily_audit_schedule(context)
    assert request.partition_key == "2026-11-21"


def test_sensor_requests_the_days_of_new_files(archive: Path, tmp_path: Path) -> None:
    audit = AuditConfig(logs=str(archive), out_dir=str(tmp_path / "out"))
    first = new_archive_files(build_sensor_context(resources={"audit": audit}))
    assert sorted(r.partition_key for r in first.run_requests) == ["2026-11-01", "2026-11-02"]
    again = new_archive_files(build_sensor_context(cursor=first.cursor, resources={"audit": audit}))
    assert not getattr(again, "run_requests", None)
    path = write_jsonl(
        archive / "dt=2026-11-03" / "late.jsonl.gz", [json.dumps(make_record("2026-11-03", 1))]
    )
    os.utime(path, ns=(10**19, 10**19))
    later = new_archive_files(build_sensor_context(cursor=first.cursor, resources={"audit": audit}))
    assert [r.partition_key for r in later.run_requests] == ["2026-11-03"]


def _skops_model(tmp_path: Path, width: int) -> Path:
    import numpy as np
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, width))
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    path = tmp_path / f"model{width}.skops"
    sio.dump(model, path)
    return path


def test_the_model_sets_the_input_width(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["audit", "--logs", str(archive), "--out", str(out), "--quiet"]
    assert main([*args, "--model", str(_skops_model(tmp_path, 4))]) == 0
    assert json.loads((out / "ingest_summary.json").read_text())["accepted"] == 800
    assert main([*args, "--model", str(_skops_model(tmp_path, 5))]) == 0
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["accepted"] == 0 and summary["rejected"] == {"wrong_width": 800}


def test_a_pickle_is_refused_without_trust(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(b"not even a pickle")
    code = main(
        ["audit", "--logs", str(archive), "--out", str(tmp_path / "o"), "--model", str(model)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--trust-pickle" in err and len(err.strip().splitlines()) == 1


def test_one_partition_run_passes_the_accounting_check(archive: Path, tmp_path: Path) -> None:
    from dagster import DagsterInstance

    from pipelines.definitions import build_definitions

    audit = AuditConfig(logs=str(archive), out_dir=str(tmp_path / "out"))
    job = build_definitions(audit, str(tmp_path / "db.duckdb")).resolve_job_def("daily_audit")
    result = job.execute_in_process(
        partition_key="2026-11-02", instance=DagsterInstance.ephemeral()
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["every_record_accounted_for"].passed
    [events] = [
        m for m in result.get_asset_materialization_events() if m.asset_key.path == ["events"]
    ]
    assert events.materialization.metadata["accepted"].value == 400
    summary = json.loads((tmp_path / "out" / "ingest_summary.json").read_text())
    assert summary["window"] == ["2026-11-02", "2026-11-02"] and summary["accepted"] == 400


def test_every_store_connection_takes_the_memory_limit(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import duckdb

    from assets.resources import StoreResource
    from audits import connection, store

    def limit(con) -> str:
        return con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]

    monkeypatch.setenv("STEALWATCH_DUCKDB_MEMORY", "")  # unset: the project's default
    with store.connect(tmp_path / "a.duckdb") as con:
        assert limit(con) == limit(duckdb.connect(config={"memory_limit": connection.MEMORY_LIMIT}))
    out = tmp_path / "out"
    args = ["audit", "--logs", str(archive), "--out", str(out), "--quiet"]
    assert main([*args, "--duckdb-memory", "300MB"]) == 0  # also sets it for what follows
    with StoreResource(database=str(out / "stealwatch.duckdb")).get_connection() as con:
        assert limit(con) == "286.1 MiB"
        assert con.sql("SELECT count(*) FROM events").fetchall() == [(800,)]
