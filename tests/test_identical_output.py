"""The audit's figures do not depend on the path that ran it, nor on the run: the CLI and a
direct materialisation of the daily job for one partition (the schedule's path) give the same
user scores and incidents, and a second CLI run gives the same incident pages.

Floats are compared to 1e-12 relative: DuckDB's parallel aggregation sums in a varying order,
so a feature (and the LOF/OCSVM scores computed from it) can move in its last bit between two
runs of the same code; every other value, the flags and the combined score included, must be
equal."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.cli import main

DAY = "2026-11-01"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audits.simulation import simulate

    out = tmp_path_factory.mktemp("sim")
    simulate(out, seed=7, days=1, users=40, start=DAY)
    return out


def _inputs(sim: Path) -> dict[str, str]:
    return {
        "model": str(sim / "model.skops"),
        "reference": str(sim / "reference.parquet"),
        "canaries": str(sim / "canaries.toml"),
    }


def _cli_audit(sim: Path, out: Path) -> None:
    flags = [f"--{name}={path}" for name, path in _inputs(sim).items()]
    assert main(["audit", "--logs", str(sim / "logs"), "--out", str(out), "--quiet", *flags]) == 0


def _scheduled_audit(sim: Path, out: Path) -> None:
    from dagster import DagsterInstance

    from assets.resources import AuditConfig
    from pipelines.definitions import build_definitions

    audit = AuditConfig(logs=str(sim / "logs"), out_dir=str(out), **_inputs(sim))
    job = build_definitions(audit, str(out / "stealwatch.duckdb")).resolve_job_def("daily_audit")
    result = job.execute_in_process(partition_key=DAY, instance=DagsterInstance.ephemeral())
    assert result.success


def _incidents(out: Path) -> pl.DataFrame:
    with duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True) as con:
        return con.sql(
            "SELECT * EXCLUDE (window_start, window_end) FROM incidents ORDER BY incident_id"
        ).pl()


def _pages(out: Path) -> dict[str, str]:
    """The incident pages, without what differs between runs by design (the output folder's
    path and the time of the run)."""
    folder = re.escape(str(out))
    stamp = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?(\.\d+)?( ?UTC|Z)?")
    return {
        page.name: stamp.sub("<time>", re.sub(folder, "<out>", page.read_text()))
        for page in sorted((out / "incidents").glob("*.html"))
    }


@pytest.fixture(scope="module")
def audits(simulated: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {name: tmp_path_factory.mktemp(name) for name in ("cli", "again", "scheduled")}
    _cli_audit(simulated, runs["cli"])
    _cli_audit(simulated, runs["again"])
    _scheduled_audit(simulated, runs["scheduled"])
    return runs


def test_the_audit_found_something_to_compare(audits: dict[str, Path]) -> None:
    scores = pl.read_parquet(audits["cli"] / "user_scores.parquet")
    assert scores.height >= 20 and scores["flagged"].any()
    assert _incidents(audits["cli"]).height > 0
    assert _pages(audits["cli"])


@pytest.mark.parametrize("other", ["again", "scheduled"])
def test_user_scores_and_incidents_are_identical(audits: dict[str, Path], other: str) -> None:
    ours = pl.read_parquet(audits["cli"] / "user_scores.parquet")
    theirs = pl.read_parquet(audits[other] / "user_scores.parquet")
    _same_figures(ours, theirs)
    assert ours["flagged"].equals(theirs["flagged"])
    _same_figures(_incidents(audits["cli"]), _incidents(audits[other]))


def _same_figures(ours: pl.DataFrame, theirs: pl.DataFrame) -> None:
    assert_frame_equal(ours, theirs, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)


def test_a_second_run_writes_the_same_incident_pages(audits: dict[str, Path]) -> None:
    assert _pages(audits["cli"]) == _pages(audits["again"])


@pytest.mark.parametrize("workers", [1, 2])
def test_incident_pages_rendered_in_worker_processes_are_the_same_bytes(
    audits: dict[str, Path], tmp_path: Path, workers: int
) -> None:
    """The report's pages from a pool of workers, and one page at a time in this process,
    are the bytes the audit wrote (whose pages, fewer than the pool's threshold, were
    rendered in-process)."""
    import shutil

    from reports.incident_pages import write_incident_pages

    out = tmp_path / "out"
    shutil.copytree(audits["cli"], out)
    written = {page.name: page.read_bytes() for page in (out / "incidents").glob("*.html")}
    shutil.rmtree(out / "incidents")
    with duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True) as con:
        window = tuple(con.sql("SELECT min(day), max(day) FROM events").fetchall()[0])
        count = write_incident_pages(con, window, out, workers=workers, min_pool_pages=1)
    again = {page.name: page.read_bytes() for page in (out / "incidents").glob("*.html")}
    assert count == len(written) >= 2
    assert again == written
