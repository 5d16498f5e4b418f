"""The whole path on a simulated archive with faults injected: exact counts, idempotent reruns."""

import json
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main


@pytest.fixture(scope="module")
def faulty_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from audits.simulation import simulate

    out = tmp_path_factory.mktemp("sim")
    truth = simulate(out, seed=23, days=2, users=60, faults=True)
    return out, truth


def _table_counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    tables = ("events", "rejected_events", "source_files")
    counts = {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    con.close()
    return counts


def test_summary_matches_the_truth_and_a_rerun_adds_nothing(
    faulty_archive: tuple[Path, dict], tmp_path: Path
) -> None:
    sim, truth = faulty_archive
    out = tmp_path / "audit"
    args = [
        "audit",
        "--logs",
        str(sim / "logs"),
        "--model",
        str(sim / "model.skops"),
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    summary = json.loads((out / "ingest_summary.json").read_text())
    expected = truth["expected_ingest"]
    assert {k: summary[k] for k in expected} == expected
    assert expected["duplicates"] > 0 and len(expected["rejected"]) >= 5
    assert len(summary["damaged_files"]) == 1
    before = _table_counts(out / "stealwatch.duckdb")
    assert before["events"] == expected["accepted"]
    assert main(args) == 0
    assert _table_counts(out / "stealwatch.duckdb") == before
    assert json.loads((out / "ingest_summary.json").read_text())["rejected"] == expected["rejected"]
