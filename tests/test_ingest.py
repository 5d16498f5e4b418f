"""Ingest on generated archives: accounting, dedup, reruns, cut files, atomicity, custody."""

import datetime as dt
import gzip
import hashlib
import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audits import schema, store
from audits.catalog import scan_archive
from tests.conftest import make_record, write_jsonl

DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)


def _ingest_all(con, root: Path, **kwargs) -> list[store.DayResult]:
    files, _ = scan_archive(root)
    days = sorted({f.day for f in files})
    return [store.ingest_day(con, d, [f for f in files if f.day == d], **kwargs) for d in days]


def _count(con, table: str) -> int:
    return con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def _snapshot(root: Path) -> dict[str, tuple]:
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_clean_archive_is_loaded_whole_with_custody(archive: Path, tmp_path: Path) -> None:
    before = _snapshot(archive)
    con = store.connect(tmp_path / "db.duckdb")
    results = _ingest_all(con, archive, run_id="run-1")
    assert sum(r.total("accepted") for r in results) == _count(con, "events") == 800
    files = con.sql("SELECT path, sha256, rows_read, accepted, run_id FROM source_files").fetchall()
    assert len(files) == 4
    for path, sha, rows_read, accepted, run_id in files:
        assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert rows_read == accepted == 200 and run_id == "run-1"
    assert _snapshot(archive) == before  # the archive is read-only to stealwatch


def test_rerun_and_overlap_never_duplicate(archive: Path, tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    _ingest_all(con, archive)
    first = con.sql("SELECT * FROM events ORDER BY event_id").fetchall()
    _ingest_all(con, archive)
    files, _ = scan_archive(archive)
    store.ingest_day(con, DAY2, [f for f in files if f.day == DAY2])
    assert con.sql("SELECT * FROM events ORDER BY event_id").fetchall() == first
    assert _count(con, "source_files") == 4


def test_faults_are_quarantined_and_everything_adds_up(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    good = [json.dumps(make_record("2026-11-01", i)) for i in range(50)]
    redelivered = good[:5]
    bad = [
        "{not json",
        json.dumps({**make_record("2026-11-01", 900), "features": [1.0, 2.0]}),  # wrong width
        json.dumps({**make_record("2026-11-01", 901), "features": [float("nan")] * 4}),
        json.dumps({k: v for k, v in make_record("2026-11-01", 902).items() if k != "ts"}),
    ]
    write_jsonl(root / "dt=2026-11-01" / "a.jsonl.gz", good + bad[:2])
    write_jsonl(root / "dt=2026-11-01" / "b.jsonl", redelivered + bad[2:], compress=False)
    write_jsonl(root / "dt=2026-11-02" / "c.jsonl.gz", redelivered[:2])  # a later day
    con = store.connect(tmp_path / "db.duckdb")
    results = _ingest_all(con, root)
    assert results[0].rejected_by_reason == {
        schema.MALFORMED_JSON: 1,
        schema.WRONG_WIDTH: 1,
        schema.NON_FINITE: 1,
        schema.MISSING_FIELD: 1,
    }
    assert [r.total("duplicates") for r in results] == [5, 2]
    assert _count(con, "events") == 50
    for f in con.sql(
        "SELECT rows_read, accepted, duplicates, rejected FROM source_files"
    ).fetchall():
        assert f[0] == f[1] + f[2] + f[3]
    assert store.unbalanced_files(con, DAY1) == []
    raw = con.sql("SELECT raw_text FROM rejected_events WHERE reason = 'malformed_json'").fetchall()
    assert raw == [("{not json",)]


def test_cut_gzip_keeps_every_complete_line_and_the_run_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    lines = [json.dumps(make_record("2026-11-01", i)) for i in range(3000)]
    whole = gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0)
    cut_bytes = whole[: len(whole) // 2]
    (root / "dt=2026-11-01").mkdir(parents=True)
    (root / "dt=2026-11-01" / "a-cut.jsonl.gz").write_bytes(cut_bytes)
    write_jsonl(root / "dt=2026-11-01" / "b-intact.jsonl.gz", lines[:10])
    available = zlib.decompressobj(31).decompress(cut_bytes)  # what any reader can recover
    complete = available.count(b"\n")
    con = store.connect(tmp_path / "db.duckdb")
    [result] = _ingest_all(con, root)
    cut, intact = result.files
    assert cut.damage == "gzip stream cut short"
    assert intact.damage is None and intact.duplicates == 10  # the run went on past the cut file
    assert cut.accepted == complete
    assert result.rejected_by_reason == {schema.TRUNCATED_LINE: 1}
    assert cut.rows_read == complete + 1
    ids = [r[0] for r in con.sql("SELECT event_id FROM events ORDER BY event_id").fetchall()]
    assert ids == [json.loads(line)["event_id"] for line in lines[:complete]]
    damage = con.sql("SELECT path, damage FROM source_files ORDER BY path").fetchall()
    assert [d for _, d in damage] == ["gzip stream cut short", None]


def test_a_crash_mid_day_leaves_the_database_as_it_was(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    _ingest_all(con, archive)
    before = _count(con, "events"), _count(con, "source_files")

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "record_files", boom)
    files, _ = scan_archive(archive)
    with pytest.raises(OSError):
        store.ingest_day(con, DAY1, [f for f in files if f.day == DAY1])
    assert (_count(con, "events"), _count(con, "source_files")) == before


def test_model_width_overrides_the_dominant_width(archive: Path, tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    [day1, _] = _ingest_all(con, archive, model_width=5)
    assert day1.total("accepted") == 0
    assert day1.rejected_by_reason == {schema.WRONG_WIDTH: 400}
    detail = con.sql("SELECT detail FROM rejected_events LIMIT 1").fetchall()[0][0]
    assert detail == '"features" has 4 values, expected 5'


def test_invalid_utf8_is_quarantined(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    good = json.dumps(make_record("2026-11-01", 1)).encode()
    path = root / "dt=2026-11-01" / "x.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(good + b"\n" + b'{"event_id": "\xff\xfe"}\n')
    con = store.connect(tmp_path / "db.duckdb")
    [result] = _ingest_all(con, root)
    assert result.rejected_by_reason == {schema.INVALID_UTF8: 1}
    assert result.total("accepted") == 1


def test_parquet_with_native_and_text_timestamps(tmp_path: Path) -> None:
    root = tmp_path / "logs" / "dt=2026-11-01"
    root.mkdir(parents=True)
    records = [make_record("2026-11-01", i) for i in range(20)]
    native = pa.Table.from_pylist(
        [
            {**r, "ts": dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00"))}
            for r in records[:10]
        ]
    )
    pq.write_table(native, root / "native.parquet")
    text = pa.Table.from_pylist(
        records[10:] + [{**records[0], "event_id": "naive", "ts": "2026-11-01T00:00:00"}]
    )
    pq.write_table(text, root / "text.parquet")
    con = store.connect(tmp_path / "db.duckdb")
    [result] = _ingest_all(con, tmp_path / "logs")
    assert result.total("accepted") == 20
    assert result.rejected_by_reason == {schema.BAD_TIMESTAMP: 1}
    line_nos = con.sql(
        "SELECT min(line_no), max(line_no) FROM events WHERE source_file LIKE '%native%'"
    )
    assert line_nos.fetchall() == [(1, 10)]


def test_day_is_the_utc_day_and_hostile_strings_are_stored_verbatim(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    hostile = "'; DROP TABLE events; --<script>alert(1)</script>"
    record = {**make_record("2026-11-02", 1, user=hostile), "ts": "2026-11-02T01:00:00+02:00"}
    write_jsonl(root / "dt=2026-11-02" / "a.jsonl.gz", [json.dumps(record)])
    con = store.connect(tmp_path / "db.duckdb")
    _ingest_all(con, root)
    rows = con.sql("SELECT user_id, day, partition_day FROM events").fetchall()
    assert rows == [(hostile, DAY1, DAY2)]


def test_per_day_partials_add_up_to_the_events(archive: Path, tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    _ingest_all(con, archive)
    _ingest_all(con, archive)  # a rerun replaces the partials with the partition
    from_events = con.sql(
        "SELECT user_id, day, count(*), count(probabilities), min(ts), max(ts) FROM events "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    from_partials = con.sql(
        "SELECT user_id, day, sum(n_events), sum(n_with_probabilities), min(first_ts), "
        "max(last_ts) FROM user_day GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert from_partials == from_events and len(from_events) == 26


def test_a_store_from_before_the_partials_gets_them_derived(archive: Path, tmp_path: Path) -> None:
    con = store.connect(tmp_path / "db.duckdb")
    _ingest_all(con, archive)
    con.execute("DROP TABLE user_day")
    store.ensure_schema(con)
    (total,) = con.sql("SELECT sum(n_events) FROM user_day").fetchall()[0]
    assert total == _count(con, "events") == 800


def _faulty_days(root: Path) -> Path:
    """Four days with rejects, a redelivery within a day and redeliveries of earlier days."""
    days = [f"2026-11-0{d}" for d in range(1, 5)]
    kept: list[str] = []
    for n, day in enumerate(days):
        good = [json.dumps(make_record(day, i, user=f"user-{(i + n) % 7}")) for i in range(60)]
        bad = ["{not json", json.dumps({**make_record(day, 900), "features": [1.0]})]
        write_jsonl(root / f"dt={day}" / "a.jsonl.gz", good + bad + good[:3])
        write_jsonl(root / f"dt={day}" / "b.jsonl", kept[-4:] + good[50:], compress=False)
        kept += good
    return root


def _tables(con) -> dict[str, list]:
    queries = {
        "events": "SELECT * FROM events ORDER BY event_id",
        "rejected_events": "SELECT * FROM rejected_events ORDER BY ALL",
        "user_day": "SELECT * FROM user_day ORDER BY ALL",
        "source_files": "SELECT * EXCLUDE (ingested_at, run_id) FROM source_files ORDER BY path",
    }
    return {name: con.sql(sql).fetchall() for name, sql in queries.items()}


@pytest.mark.parametrize("chunk_lines", [1, 150, 1 << 20])
def test_days_loaded_in_chunks_equal_days_loaded_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_lines: int
) -> None:
    files, _ = scan_archive(_faulty_days(tmp_path / "logs"))
    plan = [(d, [f for f in files if f.day == d]) for d in sorted({f.day for f in files})]
    one_by_one = store.connect(tmp_path / "days.duckdb")
    expected = [store.ingest_day(one_by_one, day, day_files) for day, day_files in plan]
    monkeypatch.setattr(store, "CHUNK_LINES", chunk_lines)  # one day, 2-3 days, all four
    chunked = store.connect(tmp_path / "chunks.duckdb")
    results = list(store.ingest_days(chunked, plan))
    assert [(r.day, r.files, r.rejected_by_reason) for r in results] == [
        (r.day, r.files, r.rejected_by_reason) for r in expected
    ]
    assert [r.total("duplicates") for r in results] == [13, 17, 17, 17]  # 4 of earlier days
    assert _tables(chunked) == _tables(one_by_one)
    assert all(store.unbalanced_files(chunked, r.day) == [] for r in results)


def test_a_crash_mid_chunk_leaves_every_day_of_it_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = scan_archive(_faulty_days(tmp_path / "logs"))
    plan = [(d, [f for f in files if f.day == d]) for d in sorted({f.day for f in files})]
    con = store.connect(tmp_path / "db.duckdb")
    store.ingest_day(con, *plan[0])
    before = _tables(con)

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "record_files", boom)
    with pytest.raises(OSError):
        list(store.ingest_days(con, plan))  # the first day again, and three new ones
    assert _tables(con) == before
