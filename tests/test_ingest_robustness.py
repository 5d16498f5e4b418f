"""Bad input at scale never stops the audit: a fuzzed ingest, the all-bad day, damaged and odd
files, errors inside the ingest transaction (issues 22 and 23)."""

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from audits import schema, store
from audits.catalog import scan_archive
from audits.simulation import fuzz
from tests.conftest import make_record, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
DAY = "2026-11-01"
SCORED_SEED = 0  # canonical and KServe files with rejects, valid records the majority


def _audit(logs: Path, out: Path, env: dict[str, str] | None = None) -> dict:
    """``stealwatch audit`` in a subprocess: it must exit 0 with one line of error at most."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "audit", "--logs", str(logs), "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return json.loads((out / "ingest_summary.json").read_text())


def _lines(n: int, day: str = DAY, start: int = 0, **changes) -> list[str]:
    records = [make_record(day, start + i) for i in range(n)]
    for record in records:
        record.update(changes)
    return [json.dumps(r) for r in records]


def _ingest(root: Path) -> tuple[duckdb.DuckDBPyConnection, list[store.DayResult]]:
    files, _ = scan_archive(root)
    plan = [(d, [f for f in files if f.day == d]) for d in sorted({f.day for f in files})]
    con = store.connect(":memory:")
    return con, list(store.ingest_days(con, plan))


# ---------------------------------------------------------------- the fuzzed ingest (22.1)


def test_fuzzed_archives_hold_the_ingest_property(tmp_path: Path) -> None:
    """Every reject reason, three formats, damaged streams, redeliveries: counts, reasons and
    the accepted events are exactly what the generator wrote (benchmarks/fuzz_ingest.py runs
    thousands)."""
    problems = fuzz.check(list(range(16)), tmp_path, max_lines=5_000)
    assert {seed: p for seed, p in problems.items() if p} == {}


def test_a_fuzzed_archive_scores_as_its_valid_lines_alone(tmp_path: Path) -> None:
    """Through ``stealwatch audit``: the fuzzed archive's scores are those of its valid lines
    audited alone (the sampled score check of the fuzz property)."""
    archive = fuzz.generate(SCORED_SEED, 5_000)
    assert {f.format for f in archive.files} >= {fuzz.CANONICAL, fuzz.KSERVE}
    fuzzed = _audit(archive.write(tmp_path / "fuzzed"), tmp_path / "out-fuzzed")
    valid = _audit(fuzz.write_valid_only(archive, tmp_path / "valid"), tmp_path / "out-valid")
    assert fuzzed["accepted"] == valid["accepted"] > 0 and sum(fuzzed["rejected"].values()) > 0
    scores = [
        pl.read_parquet(tmp_path / out / "user_scores.parquet").sort("user_id")
        for out in ("out-fuzzed", "out-valid")
    ]
    assert_frame_equal(*scores)  # floats to 1e-5: LOF and OCSVM sum in the store's order


def test_the_fuzzer_covers_every_reject_reason_and_format() -> None:
    """The generator's archives (these seeds) hold every reason and damage the property is
    claimed for, so the property test above cannot pass by never meeting them."""
    reasons, formats, damage = set(), set(), set()
    for seed in range(16):
        archive = fuzz.generate(seed, 5_000)
        for file in archive.files:
            formats.add(file.format)
            damage |= {"cut"} if file.keep_fraction else set()
            damage |= {"crc"} if file.bad_crc else set()
            damage |= {"bom"} if file.bom else set()
        for outcome in fuzz.expected(archive).values():
            reasons |= set(outcome.rejects.values())
    assert reasons == set(schema.REJECT_REASONS)
    assert formats == {fuzz.CANONICAL, fuzz.KSERVE, fuzz.SAGEMAKER}
    assert damage == {"cut", "crc", "bom"}


def test_the_fuzz_property_fails_on_a_wrong_expectation(tmp_path: Path, monkeypatch) -> None:
    """The checker notices a reject with another reason than the generator's."""
    real = fuzz.expected

    def shifted(archive):
        outcomes = real(archive)
        for outcome in outcomes.values():
            outcome.rejects = {n: schema.WRONG_WIDTH for n in outcome.rejects}
        return outcomes

    monkeypatch.setattr(fuzz, "expected", shifted)
    assert any(fuzz.check([3], tmp_path).values())


# ---------------------------------------------------------------- the all-bad day (22.2, 23.2)


@pytest.mark.parametrize(
    ("n", "bad", "reason"),
    [
        (3_000, "no_zone", schema.BAD_TIMESTAMP),
        (50_000, "nan_feature", schema.NON_FINITE),
    ],
)
def test_a_day_of_bad_records_is_quarantined_within_the_memory_limit(
    tmp_path: Path, n: int, bad: str, reason: str
) -> None:
    lines = _lines(n)
    if bad == "no_zone":
        lines = [line.replace('Z"', '"', 1) for line in lines]
    else:
        lines = [
            json.dumps({**json.loads(line), "features": [float("nan"), 1.0, 2.0, 3.0]})
            for line in lines
        ]
    write_jsonl(tmp_path / "logs" / f"dt={DAY}" / "bad.jsonl", lines, compress=False)
    write_jsonl(tmp_path / "logs" / "dt=2026-11-02" / "good.jsonl.gz", _lines(300, "2026-11-02"))
    summary = _audit(tmp_path / "logs", tmp_path / "out", {"STEALWATCH_DUCKDB_MEMORY": "1GB"})
    assert summary["rejected"] == {reason: n}
    assert (summary["rows_read"], summary["accepted"]) == (n + 300, 300)


def test_a_failing_fast_validation_falls_back_to_every_rule(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one fast statement failing (as it did out of memory) changes nothing but speed."""
    write_jsonl(archive / "dt=2026-11-01" / "bad.jsonl.gz", _lines(50, ts="2026-11-01"))
    expected_con, expected = _ingest(archive)
    real = store.validation_sql

    def failing_when_fast(width=None, *, pretyped=False, fast=True):
        if fast:
            return "SELECT error('Out of Memory Error: failed to allocate')"
        return real(width, pretyped=pretyped, fast=False)

    monkeypatch.setattr(store, "validation_sql", failing_when_fast)
    monkeypatch.setattr(store, "FALLBACK_SLICE_ROWS", 64)  # several slices
    con, results = _ingest(archive)
    assert [r.files for r in results] == [r.files for r in expected]
    assert [r.rejected_by_reason for r in results] == [r.rejected_by_reason for r in expected]
    query = "SELECT * FROM {} ORDER BY ALL"
    for table in ("events", "rejected_events"):
        assert con.sql(query.format(table)).fetchall() == (
            expected_con.sql(query.format(table)).fetchall()
        )


def test_an_error_inside_the_transaction_is_raised_as_itself_and_rolled_back(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = scan_archive(archive)
    con = store.connect(tmp_path / "db.duckdb")
    day = dt.date(2026, 11, 1)
    store.ingest_day(con, day, [f for f in files if f.day == day])
    before = con.sql("SELECT count(*) FROM events").fetchall()

    def failing_store(con):
        con.execute("DELETE FROM events")
        con.execute("SELECT error('the real failure')")

    monkeypatch.setattr(store, "_store", failing_store)
    with pytest.raises(duckdb.Error, match="the real failure"):
        store.ingest_day(con, day, [f for f in files if f.day == day])
    assert con.sql("SELECT count(*) FROM events").fetchall() == before
    monkeypatch.undo()  # the connection is usable again: the same day ingests as before
    [result] = [store.ingest_day(con, day, [f for f in files if f.day == day])]
    assert result.total("accepted") == before[0][0]


# ---------------------------------------------------------------- damaged gzip (23.4)


def test_a_gzip_with_a_bad_crc_keeps_every_line_and_records_the_damage(tmp_path: Path) -> None:
    packed = gzip.compress("".join(line + "\n" for line in _lines(194)).encode(), mtime=0)
    crc = bytes(b ^ 0xFF for b in packed[-8:-4])
    path = tmp_path / "logs" / f"dt={DAY}" / "crc.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(packed[:-8] + crc + packed[-4:])
    _, [result] = _ingest(tmp_path / "logs")
    [file] = result.files
    assert (file.rows_read, file.accepted) == (194, 194)
    assert "corrupt gzip stream" in file.damage


def test_a_gzip_corrupt_inside_keeps_the_complete_lines_before_the_damage(
    tmp_path: Path,
) -> None:
    lines = _lines(2_000)
    packed = bytearray(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))
    middle = len(packed) // 2
    packed[middle : middle + 64] = bytes(64)  # a run of zeroed bytes: invalid deflate data
    path = tmp_path / "logs" / f"dt={DAY}" / "corrupt.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(packed))
    con, [result] = _ingest(tmp_path / "logs")
    [file] = result.files
    assert file.damage and "gzip" in file.damage
    assert file.accepted > 500  # most of the first half survives
    assert file.rows_read == file.accepted + file.duplicates + file.rejected
    stored = [r[0] for r in con.sql("SELECT event_id FROM events ORDER BY line_no").fetchall()]
    assert stored[:500] == [json.loads(line)["event_id"] for line in lines[:500]]


def test_a_plain_text_file_named_gz_is_read_as_text(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "logs" / f"dt={DAY}" / "plain.jsonl.gz", _lines(40), compress=False)
    summary = _audit(tmp_path / "logs", tmp_path / "out")
    assert (summary["rows_read"], summary["accepted"]) == (40, 40)
    [damaged] = summary["damaged_files"]
    assert damaged["damage"] == "named .gz but not gzip: read as plain text"


# ---------------------------------------------------------------- timestamps, BOM, null


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo"])
def test_a_date_only_ts_is_a_bad_timestamp_whatever_the_host_zone(
    tmp_path: Path, zone: str
) -> None:
    lines = _lines(20) + _lines(3, start=100, ts=DAY)
    write_jsonl(tmp_path / "logs" / f"dt={DAY}" / "a.jsonl", lines, compress=False)
    summary = _audit(tmp_path / "logs", tmp_path / "out", {"TZ": zone})
    assert summary["rejected"] == {schema.BAD_TIMESTAMP: 3}
    con = duckdb.connect(str(tmp_path / "out" / "stealwatch.duckdb"), read_only=True)
    first = con.sql("SELECT ts FROM events WHERE event_id = ?", params=[f"{DAY}-000001"])
    assert first.fetchall() == [(dt.datetime(2026, 11, 1, 1, 1, 7, 1000),)]  # UTC, any host
    con.close()


def test_a_bom_keeps_the_first_record_and_null_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "logs" / f"dt={DAY}" / "bom.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xef\xbb\xbf" + "".join(line + "\n" for line in _lines(5)).encode())
    write_jsonl(tmp_path / "logs" / f"dt={DAY}" / "null.jsonl.gz", ["null", *_lines(2, start=9)])
    con, [result] = _ingest(tmp_path / "logs")
    assert result.total("accepted") == 7
    assert result.rejected_by_reason == {schema.NOT_AN_OBJECT: 1}
    assert con.sql("SELECT detail FROM rejected_events").fetchall() == [
        ("top-level JSON null is not an object",)
    ]


# ---------------------------------------------------------------- odd files (23.7)


def _good_day(root: Path) -> None:
    write_jsonl(root / f"dt={DAY}" / "good.jsonl", _lines(200), compress=False)


def test_a_day_whose_only_file_is_empty_is_recorded_and_the_audit_goes_on(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    _good_day(logs)
    (logs / "dt=2026-11-02").mkdir()
    (logs / "dt=2026-11-02" / "only.jsonl").write_bytes(b"")
    summary = _audit(logs, tmp_path / "out")
    assert (summary["files"], summary["accepted"]) == (2, 200)


def test_odd_files_are_recorded_as_damaged_and_the_audit_goes_on(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    _good_day(logs)
    day = logs / f"dt={DAY}"
    (day / "data.parquet").write_text("a,b,c\n1,2,3\n")  # a CSV named .parquet
    with open(os.fsencode(day) + b"/odd-\xff.jsonl", "wb") as handle:  # a non-UTF-8 name
        handle.write("".join(line + "\n" for line in _lines(5, start=500)).encode())
    os.symlink(tmp_path / "nowhere.jsonl", day / "dangling.jsonl")
    outside = tmp_path / "outside.jsonl"
    write_jsonl(outside, _lines(3, start=900), compress=False)
    os.symlink(outside, day / "outside.jsonl")
    summary = _audit(logs, tmp_path / "out")
    assert (summary["files"], summary["accepted"]) == (5, 208)
    damage = {Path(d["path"]).name: d["damage"] for d in summary["damaged_files"]}
    assert damage["data.parquet"].startswith("not a readable Parquet file")
    assert damage["odd-\\xff.jsonl"] == "file name is not UTF-8 (recorded with \\x escapes)"
    assert "does not exist" in damage["dangling.jsonl"]
    assert damage["outside.jsonl"] == f"a symlink to {outside}, outside the archive"
    con = duckdb.connect(str(tmp_path / "out" / "stealwatch.duckdb"), read_only=True)
    [(sha,)] = con.sql(
        "SELECT sha256 FROM source_files WHERE path LIKE '%outside.jsonl'"
    ).fetchall()
    con.close()
    import hashlib

    assert sha == hashlib.sha256(outside.read_bytes()).hexdigest()  # the target's bytes
