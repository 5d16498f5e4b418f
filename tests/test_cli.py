"""The commands' behaviour at their edges, through the console script where exit codes matter:
a busy or killed store, replacing stored days, output paths, investigate's ranges and pages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from audits import store
from audits.catalog import scan_archive
from pipelines.cli import main
from pipelines.commands.investigate import page_file_name
from tests.conftest import make_record, write_jsonl

REPO = Path(__file__).resolve().parents[1]
STEALWATCH = str(REPO / ".venv" / "bin" / "stealwatch")
DAYS = ("2026-11-01", "2026-11-02")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "STEALWATCH_DUCKDB_MEMORY": "512MB"}


def _stealwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STEALWATCH, *args], capture_output=True, text=True, timeout=600, env=_env()
    )


def _one_line_error(done: subprocess.CompletedProcess, message: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and message in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def _write_archive(root: Path, lines_per_file: int, *, faults: bool = True) -> Path:
    """Two days of two files each; with ``faults``, each file also has a malformed line, a
    record of the wrong width and a redelivery of an earlier record (a duplicate)."""
    for day in DAYS:
        for part in range(2):
            records = [
                json.dumps(make_record(day, part * 10**5 + i)) for i in range(lines_per_file)
            ]
            if faults:
                records += [
                    '{"event_id": "cut',
                    json.dumps(make_record(day, 90000 + part, width=5)),
                ]
                records.append(json.dumps(make_record(day, part * 10**5)))
            write_jsonl(root / f"dt={day}" / f"part-{part}.jsonl.gz", records)
    return root


def _files_by_day(root: Path) -> dict:
    files, _ = scan_archive(root)
    by_day = defaultdict(list)
    for file in files:
        by_day[file.day].append(file)
    return dict(by_day)


def _ingest(root: Path, database: Path) -> None:
    """An uninterrupted ingest of the archive, straight through the store."""
    con = store.connect(database)
    try:
        list(store.ingest_days(con, sorted(_files_by_day(root).items())))
    finally:
        con.close()


def _store_counts(database: Path) -> dict:
    """What the store holds: rows per table, rejects per reason, and each file's custody."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        tables = {
            name: con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0]
            for name in ("events", "rejected_events", "source_files", "user_day")
        }
        reasons = con.sql(
            "SELECT reason, count(*) FROM rejected_events GROUP BY reason ORDER BY reason"
        ).fetchall()
        files = con.sql(
            "SELECT path, partition_day, sha256, rows_read, accepted, duplicates, rejected "
            "FROM source_files ORDER BY path"
        ).fetchall()
    finally:
        con.close()
    return {"tables": tables, "reasons": reasons, "files": files}


@pytest.fixture
def started(tmp_path: Path) -> Iterator:
    """Start ``stealwatch audit`` in the background; its stderr goes to a file to poll."""
    running: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"stderr-{len(running)}.txt"
        with log.open("w") as err:
            process = subprocess.Popen(
                [STEALWATCH, "audit", *args], stdout=subprocess.DEVNULL, stderr=err, env=_env()
            )
        running.append(process)
        return process, log

    yield start
    for process in running:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)


def _wait_for(process: subprocess.Popen, log: Path, text: str) -> None:
    """Poll the run's stderr until ``text`` shows (the test fails if the run ends first)."""
    while text not in log.read_text():
        assert process.poll() is None, f"the run ended before {text!r}: {log.read_text()[-3000:]}"
        time.sleep(0.02)


def test_a_second_audit_on_a_busy_store_fails_at_once_and_writes_nothing(
    tmp_path: Path, started
) -> None:
    logs = _write_archive(tmp_path / "logs", 200)
    out = tmp_path / "out"
    first, log = started("--logs", str(logs), "--out", str(out))
    _wait_for(first, log, "stealwatch: auditing")  # printed once the store is held
    second_out = tmp_path / "second"
    database = out / "stealwatch.duckdb"
    done = _stealwatch(
        "audit", "--logs", str(logs), "--out", str(second_out), "--db", str(database)
    )
    assert first.poll() is None  # failed while the first still runs, not after retrying
    _one_line_error(done, f"{database} is in use by another process (PID {first.pid})")
    assert not second_out.exists()
    readers = _stealwatch(
        "investigate", "--db", str(database), "--user", "user-1", "--out", str(second_out)
    )
    _one_line_error(readers, "is in use by another process")
    assert not second_out.exists()


def test_a_run_killed_during_ingest_reruns_to_the_counts_of_an_uninterrupted_one(
    tmp_path: Path, started
) -> None:
    logs = _write_archive(tmp_path / "logs", 3000)
    uninterrupted = tmp_path / "uninterrupted.duckdb"
    _ingest(logs, uninterrupted)
    expected = _store_counts(uninterrupted)
    assert expected["tables"]["rejected_events"] == 8 and len(expected["files"]) == 4
    out = tmp_path / "out"
    killed, log = started("--logs", str(logs), "--out", str(out))
    _wait_for(killed, log, "validating")  # the ingest has begun
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    done = _stealwatch("audit", "--logs", str(logs), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _store_counts(out / "stealwatch.duckdb") == expected
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["rows_read"] == 4 * 3003 and summary["duplicates"] == 4
    assert summary["accepted"] == expected["tables"]["events"]


def test_a_day_from_another_archive_is_refused_unless_replace(tmp_path: Path) -> None:
    first = _write_archive(tmp_path / "first", 50, faults=False)
    other = tmp_path / "other"
    for day in DAYS:  # the same days, other files
        records = [json.dumps(make_record(day, 500 + i, user="other-user")) for i in range(60)]
        write_jsonl(other / f"dt={day}" / "other.jsonl.gz", records)
    out = tmp_path / "out"
    out.mkdir()
    database = out / "stealwatch.duckdb"
    _ingest(first, database)
    before = _store_counts(database)

    done = _stealwatch("audit", "--logs", str(other), "--out", str(out))
    stored = first / f"dt={DAYS[0]}" / "part-0.jsonl.gz"
    _one_line_error(done, f"holds day {DAYS[0]} from {stored}, which this archive lacks")
    assert "(and 3 more stored files)" in done.stderr and "--replace" in done.stderr
    assert _store_counts(database) == before
    assert sorted(p.name for p in out.iterdir()) == ["stealwatch.duckdb"]

    stale = {"passed": False, "membership_auc": 0.987, "membership_auc_attack": "loss"}
    (out / "privacy").mkdir()
    (out / "privacy" / "privacy_audit.json").write_text(json.dumps(stale))
    args = ["audit", "--logs", str(other), "--out", str(out), "--quiet", "--replace"]
    assert main(args) == 0
    after = _store_counts(database)
    assert after["tables"]["events"] == 120
    assert {path for path, *_ in after["files"]} == {
        str(other / f"dt={day}" / "other.jsonl.gz") for day in DAYS
    }
    # this run skipped the privacy audit: the earlier run's result is neither kept nor read
    assert not (out / "privacy" / "privacy_audit.json").exists()
    register = (out / "risk_register.csv").read_text()
    assert "privacy audit did not run" in register and "0.987" not in register


def test_a_moved_archive_still_holds_its_stored_files(tmp_path: Path) -> None:
    logs = _write_archive(tmp_path / "logs", 30)
    database = tmp_path / "store.duckdb"
    _ingest(logs, database)
    moved = tmp_path / "moved"
    logs.rename(moved)
    con = store.connect(database)
    try:
        assert store.absent_stored_files(con, _files_by_day(moved)) == []
        one_day = _files_by_day(moved)
        dropped = one_day[min(one_day)].pop()
        absent = store.absent_stored_files(con, one_day)
    finally:
        con.close()
    original = logs / dropped.path.relative_to(moved)
    assert absent == [(dropped.day, str(original))]


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A folder that exists but cannot be written: by permissions, or (as root, whom
    permissions do not stop) a folder of sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys/kernel")
    probe = folder / "stealwatch-probe"
    try:
        probe.write_text("")
    except OSError:
        yield folder
        return
    probe.unlink()
    pytest.skip("no folder here refuses writes to root")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the two days, ingested straight through the store."""
    root = tmp_path_factory.mktemp("store")
    logs = _write_archive(root / "logs", 40, faults=False)
    users = [(DAYS[0], "Alice"), (DAYS[0], "alice"), (DAYS[1], "a/b"), (DAYS[1], "a_b")]
    for number, (day, user) in enumerate(users):
        records = [json.dumps(make_record(day, 900 + 10 * number + i, user=user)) for i in range(5)]
        write_jsonl(logs / f"dt={day}" / f"{user.replace('/', '-')}.jsonl.gz", records)
    _ingest(logs, root / "stealwatch.duckdb")
    return root / "stealwatch.duckdb"


@pytest.mark.parametrize("command", ["audit", "investigate", "gate"])
def test_an_unwritable_out_is_one_line_before_any_work(
    command: str, unwritable: Path, small_store: Path, tmp_path: Path
) -> None:
    logs = small_store.parent / "logs"
    args = {
        "audit": ["--logs", str(logs), "--db", str(tmp_path / "new.duckdb")],
        "investigate": ["--db", str(small_store), "--user", "user-1"],
        # the output check comes first: these inputs are never read
        "gate": ["--model", "m.skops", "--train", "t.parquet", "--holdout", "h.parquet"],
    }[command]
    done = _stealwatch(command, *args, "--out", str(unwritable))
    _one_line_error(done, f"--out {unwritable}: cannot write in {unwritable}")
    assert not (tmp_path / "new.duckdb").exists()


@pytest.mark.parametrize("kind", ["folder", "not DuckDB", "no folder"])
def test_a_db_that_is_no_duckdb_file_is_one_line_and_untouched(
    kind: str, small_store: Path, tmp_path: Path
) -> None:
    database = {
        "folder": tmp_path / "a-folder",
        "not DuckDB": tmp_path / "notes.txt",
        "no folder": tmp_path / "missing" / "x.duckdb",
    }[kind]
    if kind == "folder":
        database.mkdir()
    if kind == "not DuckDB":
        database.write_text("not a database\n")
    message = {
        "folder": "is a folder, not a DuckDB file",
        "not DuckDB": "not a valid DuckDB database file",
        "no folder": f"the folder {database.parent} does not exist",
    }[kind]
    logs = small_store.parent / "logs"
    out = tmp_path / "out"
    done = _stealwatch("audit", "--logs", str(logs), "--out", str(out), "--db", str(database))
    _one_line_error(done, message)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {"folder": ["a-folder"], "not DuckDB": ["notes.txt"], "no folder": []}[kind]
    )
    if kind == "not DuckDB":
        assert database.read_text() == "not a database\n"


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        (["--start", "2026-11-05"], "--start 2026-11-05 is after the user's last day 2026-11-02"),
        (["--end", "2026-10-30"], "--end 2026-10-30 is before the user's first day 2026-11-01"),
        (["--start", "2026-11-02", "--end", "2026-11-01"], "is after --end"),
    ],
)
def test_investigate_refuses_a_reversed_range(
    bounds: list[str], message: str, small_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "inv"
    done = _stealwatch(
        "investigate", "--db", str(small_store), "--user", "user-1", *bounds, "--out", str(out)
    )
    _one_line_error(done, message)
    assert not out.exists()


def test_investigate_pages_of_different_ids_never_collide(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "inv"
    pages = {}
    for user in ("Alice", "alice", "a/b", "a_b"):
        args = ["investigate", "--db", str(small_store), "--user", user, "--out", str(out)]
        assert main(args) == 0
        pages[user] = Path(capsys.readouterr().out.strip())
    assert len({page.name.lower() for page in pages.values()}) == 4  # case-insensitive too
    for user, page in pages.items():
        assert page.parent == out and page.name == page_file_name(user)
        assert f"Investigation: {user}" in page.read_text()
    assert page_file_name("a/b").startswith("user-a_b-")
    assert page_file_name("../../x" + "y" * 300).startswith("user-x")
    assert len(page_file_name("y" * 300)) < 80
