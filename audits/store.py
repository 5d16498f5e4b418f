"""The DuckDB store: schema, and ingest of one day partition in one transaction.

Every record read is accounted for: ``rows_read = accepted + duplicates + rejected`` per file,
rejects keep their reason and raw text, and every source file is recorded with its sha256.
Re-ingesting a partition replaces that partition's rows, so reruns never duplicate anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from audits import schema
from audits.catalog import ArchiveFile
from audits.readers import decompress_recoverable
from audits.validation import validation_sql

Progress = Callable[[str], None]
_WIDTH_KEY = "input_width"
_STAGED_COLUMNS = (
    "event_id, ts, user_id, session_id, source_ip, model_id, model_version, features, "
    "prediction, probabilities, status, latency_ms"
)


def connect(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) a stealwatch database with its tables."""
    con = duckdb.connect(str(path))
    ensure_schema(con)
    return con


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = ()) -> tuple:
    """The first row of a query (DuckDB 2.0 relations have no ``fetchone``)."""
    rows = con.sql(sql, params=list(params)).fetchall()
    return rows[0] if rows else ()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in schema.ALL_DDL:
        con.execute(ddl)


@dataclass
class FileResult:
    """What ingest did with one file."""

    path: str
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    damage: str | None = None
    sha256: str = ""
    size_bytes: int = 0


@dataclass
class DayResult:
    """What ingest did with one day partition."""

    day: dt.date
    input_width: int | None
    files: list[FileResult] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.files)


@dataclass
class RawFile:
    """A file's bytes as read, split into lines (JSONL) and with its custody facts."""

    lines: pa.Table | None  # line_no, text (None for Parquet)
    sha256: str
    size_bytes: int
    damage: str | None
    cut_line: int | None


# ---------------------------------------------------------------- reading


def read_raw(file: ArchiveFile) -> RawFile:
    """Read a file once: hash its bytes, recover what a cut gzip holds, split lines."""
    raw = file.path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if file.format == "parquet":
        return RawFile(None, digest, len(raw), None, None)
    damage = None
    data = raw
    if file.compressed:
        data, damage = decompress_recoverable(raw)
    lines = split_lines(data)
    cut_line = lines.num_rows if damage and data and not data.endswith(b"\n") else None
    return RawFile(lines, digest, len(raw), damage, cut_line)


def split_lines(data: bytes) -> pa.Table:
    """Zero-copy split of a byte buffer into ``(line_no, text)``; bad UTF-8 lines are marked."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return _split_lines_slow(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10) + 1
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    n = len(offsets) - 1
    text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    return pa.table({"line_no": pa.array(np.arange(1, n + 1, dtype=np.int64)), "text": text})


_INVALID_UTF8_MARK = "\x00stealwatch:invalid-utf8\x00"


def _split_lines_slow(data: bytes) -> pa.Table:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    texts = []
    for part in parts:
        try:
            texts.append(part.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(_INVALID_UTF8_MARK + part.decode("utf-8", errors="replace"))
    return pa.table(
        {
            "line_no": pa.array(np.arange(1, len(texts) + 1, dtype=np.int64)),
            "text": pa.array(texts, pa.large_string()),
        }
    )


# ---------------------------------------------------------------- ingest


def ingest_day(
    con: duckdb.DuckDBPyConnection,
    day: dt.date,
    files: Sequence[ArchiveFile],
    *,
    model_width: int | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> DayResult:
    """Load one day partition's files in one transaction, replacing the partition's rows.

    The expected ``features`` width is the model's when given, else the width stored by an
    earlier ingest, else the dominant width of the first file with valid records.
    """
    run_id = run_id or uuid.uuid4().hex
    say = progress or (lambda _msg: None)
    width = model_width or _stored_width(con)
    con.execute("BEGIN TRANSACTION")
    try:
        _clear_partition(con, day)
        _create_staging(con)
        results = []
        for index, file in enumerate(files):
            say(f"{day}: {file.path.name} ({index + 1}/{len(files)})")
            result, width = _stage_file(con, index, file, width)
            results.append(result)
        _insert_deduplicated(con, day)
        by_reason = _count_outcomes(con, results)
        _record_files(con, files, results, day, run_id)
        if width is not None:
            _store_width(con, width)
        con.execute("DROP TABLE staged")
        con.execute("DROP TABLE staged_rejects")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return DayResult(day, width, results, by_reason)


def _stored_width(con: duckdb.DuckDBPyConnection) -> int | None:
    row = fetch_one(con, "SELECT value FROM settings WHERE key = ?", [_WIDTH_KEY])
    return int(row[0]) if row else None


def _store_width(con: duckdb.DuckDBPyConnection, width: int) -> None:
    con.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", [_WIDTH_KEY, str(width)])


def _clear_partition(con: duckdb.DuckDBPyConnection, day: dt.date) -> None:
    for table in ("events", "rejected_events", "source_files"):
        con.execute(f"DELETE FROM {table} WHERE partition_day = ?", [day])


def _create_staging(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE staged AS SELECT "
        f"{_STAGED_COLUMNS}, source_file, line_no, 0 AS file_index FROM events WHERE FALSE"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE staged_rejects AS SELECT source_file, line_no, reason, "
        "detail, raw_text, 0 AS file_index FROM rejected_events WHERE FALSE"
    )


def _stage_file(
    con: duckdb.DuckDBPyConnection, index: int, file: ArchiveFile, width: int | None
) -> tuple[FileResult, int | None]:
    """Validate one file into the staging tables; returns its result and the width in force."""
    raw = read_raw(file)
    lines = raw.lines if raw.lines is not None else _parquet_lines(con, file.path)
    con.register("lines_in", lines)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE parsed AS {validation_sql(raw.cut_line)}")
    finally:
        con.unregister("lines_in")
    width = width or _dominant_width(con)
    if width is not None:
        _mark_wrong_width(con, width)
    path = str(file.path)
    con.execute(
        f"INSERT INTO staged SELECT {_STAGED_COLUMNS}, ?, line_no, ? FROM parsed "
        "WHERE reason IS NULL",
        [path, index],
    )
    con.execute(
        f"INSERT INTO staged_rejects SELECT ?, line_no, reason, detail, {_capped('text')}, ? "
        "FROM parsed WHERE reason IS NOT NULL",
        [path, index],
    )
    (rows_read,) = fetch_one(con, "SELECT count(*) FROM parsed")
    con.execute("DROP TABLE parsed")
    return FileResult(
        path, rows_read=rows_read, damage=raw.damage, sha256=raw.sha256, size_bytes=raw.size_bytes
    ), width


def _dominant_width(con: duckdb.DuckDBPyConnection) -> int | None:
    row = fetch_one(con, "SELECT mode(len(features)) FROM parsed WHERE reason IS NULL")
    return int(row[0]) if row and row[0] else None


def _mark_wrong_width(con: duckdb.DuckDBPyConnection, width: int) -> None:
    con.execute(
        f"UPDATE parsed SET reason = '{schema.WRONG_WIDTH}', detail = '\"features\" has ' || "
        "len(features) || ' values, expected ' || ? WHERE reason IS NULL AND len(features) <> ?",
        [width, width],
    )
    con.execute(
        f"UPDATE parsed SET reason = '{schema.INVALID_UTF8}', detail = 'bytes that are not UTF-8', "
        "text = replace(text, ?, '') WHERE starts_with(text, ?)",
        [_INVALID_UTF8_MARK, _INVALID_UTF8_MARK],
    )


def _capped(expr: str) -> str:
    """SQL for text capped at 4 KiB of UTF-8 (1,024 characters when multi-byte runs long)."""
    cap = schema.RAW_TEXT_CAP_BYTES
    return (
        f"CASE WHEN strlen(left({expr}, {cap})) <= {cap} THEN left({expr}, {cap}) "
        f"ELSE left({expr}, {cap // 4}) END"
    )


def _insert_deduplicated(con: duckdb.DuckDBPyConnection, day: dt.date) -> None:
    """Keep the first valid occurrence of each event_id across the whole store."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ranked AS SELECT s.*, "
        "(row_number() OVER (PARTITION BY s.event_id ORDER BY s.file_index, s.line_no) > 1 "
        " OR e.event_id IS NOT NULL) AS duplicate "
        "FROM staged s LEFT JOIN (SELECT DISTINCT event_id FROM events) e USING (event_id)"
    )
    con.execute(
        f"INSERT INTO events SELECT {_STAGED_COLUMNS.replace('ts, ', 'ts, CAST(ts AS DATE), ')}"
        ", source_file, line_no, ? FROM ranked WHERE NOT duplicate ORDER BY ts",
        [day],
    )
    con.execute(
        "INSERT INTO rejected_events SELECT source_file, line_no, reason, detail, raw_text, ? "
        "FROM staged_rejects",
        [day],
    )


def _count_outcomes(con: duckdb.DuckDBPyConnection, results: list[FileResult]) -> dict[str, int]:
    """Fill per-file counts; fails loudly if any record is unaccounted for."""
    counts = con.sql(
        "SELECT file_index, count(*) FILTER (WHERE NOT duplicate), "
        "count(*) FILTER (WHERE duplicate) FROM ranked GROUP BY file_index"
    ).fetchall()
    for index, accepted, duplicates in counts:
        results[index].accepted, results[index].duplicates = accepted, duplicates
    for index, rejected in con.sql(
        "SELECT file_index, count(*) FROM staged_rejects GROUP BY file_index"
    ).fetchall():
        results[index].rejected = rejected
    for result in results:
        if result.rows_read != result.accepted + result.duplicates + result.rejected:
            raise RuntimeError(f"ingest accounting broken for {result.path}")
    con.execute("DROP TABLE ranked")
    rows = con.sql("SELECT reason, count(*) FROM staged_rejects GROUP BY reason ORDER BY reason")
    return dict(rows.fetchall())


def _record_files(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[ArchiveFile],
    results: list[FileResult],
    day: dt.date,
    run_id: str,
) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = [
        (
            r.path,
            r.size_bytes,
            r.sha256,
            f.format,
            r.rows_read,
            r.accepted,
            r.rejected,
            r.duplicates,
            r.damage,
            day,
            now,
            run_id,
        )
        for f, r in zip(files, results, strict=True)
    ]
    if rows:
        con.executemany(
            "INSERT INTO source_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )


def _parquet_lines(con: duckdb.DuckDBPyConnection, path: Path) -> pa.Table:
    """A Parquet file as JSON text lines, so one set of rules validates every format.

    A native timestamp column without a zone is read as UTC.
    """
    source = con.sql("SELECT * FROM read_parquet(?)", params=[str(path)])
    columns = dict(zip(source.columns, (str(t) for t in source.types), strict=True))
    selected = [f'"{name}"' for name in columns if name != "ts"]
    if "ts" in columns:
        selected.append(
            "strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ') AS ts" if columns["ts"] == "TIMESTAMP" else "ts"
        )
    return con.sql(
        "SELECT file_row_number + 1 AS line_no, to_json(t)::VARCHAR AS text FROM "
        f"(SELECT {', '.join(selected)} FROM read_parquet(?, file_row_number = true)"
        " ORDER BY file_row_number) t",
        params=[str(path)],
    ).to_arrow_table()


def unbalanced_files(con: duckdb.DuckDBPyConnection, day: dt.date) -> list[str]:
    """Files of a partition whose counts do not add up (rows_read = accepted + dup + rejected),
    checked against the rows actually stored."""
    rows = con.sql(
        """
        SELECT f.path FROM source_files f
        LEFT JOIN (SELECT source_file, count(*) AS n FROM events WHERE partition_day = ?
                   GROUP BY source_file) e ON e.source_file = f.path
        LEFT JOIN (SELECT source_file, count(*) AS n FROM rejected_events
                   WHERE partition_day = ? GROUP BY source_file) r ON r.source_file = f.path
        WHERE f.partition_day = ?
          AND (f.rows_read <> f.accepted + f.duplicates + f.rejected
               OR coalesce(e.n, 0) <> f.accepted OR coalesce(r.n, 0) <> f.rejected)
        """,
        params=[day, day, day],
    ).fetchall()
    return [path for (path,) in rows]
