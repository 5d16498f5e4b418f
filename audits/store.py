"""The DuckDB store's transactional ingest of day partitions, each chunk of days (one large
day, or consecutive small ones up to ``CHUNK_LINES`` lines) validated in one statement and
committed in one transaction. Reading is :mod:`audits.readers`, custody counts
:mod:`audits.custody`, the schema :mod:`audits.migrations`, connection settings
:mod:`audits.connection`.

Every record read is accounted for: ``rows_read = accepted + duplicates + rejected`` per file,
rejects keep their reason and raw text, and every source file is recorded with its sha256.
Re-ingesting a partition replaces that partition's rows, so reruns never duplicate anything.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audits import schema
from audits.catalog import ArchiveFile
from audits.connection import configure
from audits.custody import (
    IN_PARTITIONS,
    DayResult,
    FileResult,
    absent_stored_files,
    count_outcomes,
    record_files,
    unbalanced_files,
)
from audits.formats import CANONICAL, ReaderOptions, to_canonical
from audits.migrations import ensure_schema, user_day_select
from audits.readers import (
    DayRead,
    Progress,
    ReadDay,
    first_line,
    read_ahead,
    read_day,
    rebatched,
)
from audits.validation import dominant_width_sql, validation_sql

__all__ = [
    "DayResult",
    "FileResult",
    "absent_stored_files",
    "configure",
    "connect",
    "ensure_schema",
    "fetch_one",
    "ingest_day",
    "ingest_days",
    "unbalanced_files",
    "user_day_select",
]

_WIDTH_KEY = "input_width"
_POSITION = "(file_index::BIGINT << 32) + line_no"  # a record's place in the day's files
_STAGED_COLUMNS = (
    "event_id, ts, user_id, session_id, source_ip, model_id, model_version, features, "
    "prediction, probabilities, status, latency_ms"
)


def connect(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) a stealwatch database with its tables."""
    con = duckdb.connect(str(path))
    configure(con)
    ensure_schema(con)
    return con


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = ()) -> tuple:
    """The first row of a query (DuckDB 2.0 relations have no ``fetchone``)."""
    rows = con.sql(sql, params=list(params)).fetchall()
    return rows[0] if rows else ()


CHUNK_LINES = 1 << 20
"""Consecutive days are validated in one statement and committed in one transaction until
their lines reach this many, so small days do not each pay the fixed cost of a statement, a
commit and a checkpoint (the checkpoints of many small chunks cost far more than a few large
ones'; docs/benchmarks.md). A larger day is a chunk of its own."""
CHUNK_DAYS = 31  # and at most this many days, however small


def ingest_days(
    con: duckdb.DuckDBPyConnection,
    plan: Sequence[tuple[dt.date, Sequence[ArchiveFile]]],
    **options,
) -> Iterator[DayResult]:
    """Ingest days in order, a chunk of days (:data:`CHUNK_LINES`) per transaction, reading
    the next day's files while DuckDB loads the current chunk (so at most a chunk and one day
    are in memory at once)."""
    chunk: list[ReadDay] = []
    for read in read_ahead(plan, options.get("progress")):
        chunk.append(read)
        if sum(r.read.lines.num_rows for r in chunk) >= CHUNK_LINES or len(chunk) >= CHUNK_DAYS:
            yield from ingest_chunk(con, chunk, **options)
            chunk = []
    if chunk:
        yield from ingest_chunk(con, chunk, **options)


# ---------------------------------------------------------------- ingest


def ingest_day(
    con: duckdb.DuckDBPyConnection,
    day: dt.date,
    files: Sequence[ArchiveFile],
    *,
    prefetched: DayRead | None = None,
    **options,
) -> DayResult:
    """Load one day partition's files in one transaction, replacing the partition's rows
    (options as :func:`ingest_chunk`)."""
    read = prefetched or read_day(files, options.get("progress"))
    return ingest_chunk(con, [ReadDay(day, files, read)], **options)[0]


def ingest_chunk(
    con: duckdb.DuckDBPyConnection,
    days: Sequence[ReadDay],
    *,
    model_width: int | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    reader: ReaderOptions | None = None,
) -> list[DayResult]:
    """Load day partitions (in order) in one transaction, replacing each partition's rows.
    A record whose event_id an earlier day (or an earlier record of the same day) holds is a
    duplicate, exactly as if the days were loaded one by one.

    The expected ``features`` width is the model's when given, else the width stored by an
    earlier ingest, else the dominant width of the chunk's valid records.
    """
    run_id = run_id or uuid.uuid4().hex
    say = progress or (lambda _msg: None)
    width = model_width or _stored_width(con)
    files = [f for d in days for f in d.files]
    raws = [r for d in days for r in d.read.raws]
    lines = _chunk_lines(days)
    label = str(days[0].day) if len(days) == 1 else f"{days[0].day}..{days[-1].day}"
    say(f"{label}: validating {lines.num_rows} lines of {len(files)} files")
    if files:
        lines = _as_canonical(con, files, lines, reader or ReaderOptions())
    paths = pa.table(
        {
            "file_index": pa.array(range(len(files)), pa.int32()),
            "source_file": pa.array([f.text for f in files], pa.string()),
            "partition_day": pa.array([d.day for d in days for _ in d.files], pa.date32()),
        }
    )
    partitions = [d.day for d in days]
    # Row order within tables is never relied on (first occurrences use explicit positions),
    # so DuckDB may write in parallel.
    con.execute("SET preserve_insertion_order = false")
    if files:  # into a temp table, before the transaction: a failure here can be retried
        width = _validate(con, lines, width, say)
    try:
        with _registered(con, "day_files", paths), _transaction(con):
            _clear_partitions(con, partitions)
            if files:
                _store(con)
                con.execute(
                    f"INSERT INTO user_day {user_day_select('events', IN_PARTITIONS)}",
                    [partitions],
                )
            results, by_reason = count_outcomes(con, files, raws, partitions)
            record_files(con, files, results, paths, run_id)
            if width is not None:
                _store_width(con, width)
    finally:
        with suppress(duckdb.Error):
            con.execute("DROP TABLE IF EXISTS parsed")
    _checkpoint(con)
    return _day_results(days, width, results, by_reason)


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Commit what the block did, or roll it back and re-raise the block's own error (a
    failing rollback never masks it)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[None]:
    """``table`` visible to SQL as ``name`` for the block; unregistering never masks the
    block's own error (in an aborted transaction it fails too)."""
    con.register(name, table)
    try:
        yield
    except BaseException:
        with suppress(duckdb.Error):
            con.unregister(name)
        raise
    con.unregister(name)


def _checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Write the committed chunk into the database file now. Bulk inserts bypass the WAL, so
    DuckDB's automatic checkpoint would otherwise wait for the connection to close and then
    merge every chunk at once (7.5 s and a 4,725 MiB peak at the end of a 365-day ingest,
    against 1,820 MiB for the whole ingest with a checkpoint per chunk)."""
    con.execute("CHECKPOINT")


def _chunk_lines(days: Sequence[ReadDay]) -> pa.Table:
    """The chunk's lines in one table, ``file_index`` numbering its files across days."""
    tables, offset = [], 0
    for d in days:
        if d.files:
            shifted = pc.add(d.read.lines["file_index"], pa.scalar(offset, pa.int32()))
            tables.append(d.read.lines.set_column(0, "file_index", shifted))
        offset += len(d.files)
    if not tables:
        return pa.table({})
    return rebatched(pa.concat_tables(tables))


def _day_results(
    days: Sequence[ReadDay],
    width: int | None,
    results: list[FileResult],
    by_reason: dict[dt.date, dict[str, int]],
) -> list[DayResult]:
    out, first = [], 0
    for d in days:
        files = results[first : first + len(d.files)]
        out.append(DayResult(d.day, width, files, by_reason.get(d.day, {})))
        first += len(d.files)
    return out


def _as_canonical(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[ArchiveFile],
    lines: pa.Table,
    reader: ReaderOptions,
) -> pa.Table:
    """The day's lines with every serving-stack format mapped to canonical records."""
    kinds = {f.kind for f in files} - {CANONICAL}
    if not kinds:
        return lines
    parts = []
    for kind in sorted(kinds | {CANONICAL}):
        indexes = [i for i, f in enumerate(files) if f.kind == kind]
        if not indexes:
            continue
        subset = _rows_of_files(lines, indexes)
        parts.append(subset if kind == CANONICAL else to_canonical(con, subset, kind, reader))
    # readers hand over the records they parsed in ``v`` (see validation.validation_sql)
    record_type = next(part.schema.field("v").type for part in parts if "v" in part.column_names)
    schema_ = lines.schema.append(pa.field("v", record_type))
    mapped = pa.concat_tables(
        [
            (
                part
                if "v" in part.column_names
                else part.append_column("v", pa.nulls(part.num_rows, record_type))
            )
            .select(schema_.names)
            .cast(schema_)
            for part in parts
        ]
    )
    return rebatched(mapped)  # small batches again, so DuckDB validates them in parallel


def _rows_of_files(lines: pa.Table, indexes: list[int]) -> pa.Table:
    """The lines of the files at ``indexes``: zero-copy slices where the lines are in file
    order (as ``read_day`` builds them), else a filter."""
    file_index = lines["file_index"].to_numpy()
    if len(file_index) and np.any(file_index[1:] < file_index[:-1]):
        return lines.filter(pc.is_in(lines["file_index"], pa.array(indexes, pa.int32())))
    starts = np.searchsorted(file_index, indexes, side="left")
    stops = np.searchsorted(file_index, indexes, side="right")
    slices = [lines.slice(a, b - a) for a, b in zip(starts, stops, strict=True) if b > a]
    return pa.concat_tables(slices) if slices else lines.slice(0, 0)


def _stored_width(con: duckdb.DuckDBPyConnection) -> int | None:
    row = fetch_one(con, "SELECT value FROM settings WHERE key = ?", [_WIDTH_KEY])
    return int(row[0]) if row else None


def _store_width(con: duckdb.DuckDBPyConnection, width: int) -> None:
    con.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", [_WIDTH_KEY, str(width)])


def _clear_partitions(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> None:
    for table in ("events", "rejected_events", "source_files", "user_day"):
        con.execute(f"DELETE FROM {table} WHERE {IN_PARTITIONS}", [days])


def _validate(
    con: duckdb.DuckDBPyConnection, lines: pa.Table, width: int | None, say: Progress
) -> int | None:
    """Classify every line into the temp table ``parsed``; returns the width in force (the
    given one, else the dominant width of a sample of the day's lines). Should the one fast
    statement fail (DuckDB out of memory, say), the lines take every rule in slices instead."""
    pretyped = "v" in lines.column_names
    try:
        with _registered(con, "lines_in", lines):
            if width is None:
                row = fetch_one(con, dominant_width_sql(pretyped=pretyped))
                width = int(row[0]) if row and row[0] else None
            sql = validation_sql(width, pretyped=pretyped)
            con.execute(f"CREATE OR REPLACE TEMP TABLE parsed AS {sql}")
    except duckdb.Error as exc:
        say(f"fast validation failed ({first_line(exc)}); validating in slices")
        _validate_in_slices(con, lines, width, pretyped)
    return width


FALLBACK_SLICE_ROWS = 4096


def _validate_in_slices(
    con: duckdb.DuckDBPyConnection, lines: pa.Table, width: int | None, pretyped: bool
) -> None:
    """The fallback of :func:`_validate`: every rule for every line, a slice at a time; a
    slice that still fails is split down to single lines, and a line that fails alone is
    quarantined as unreadable with the error (never raised)."""
    sql = validation_sql(width, pretyped=pretyped, fast=False)
    with _registered(con, "lines_in", lines.slice(0, 0)):
        con.execute(f"CREATE OR REPLACE TEMP TABLE parsed AS {sql}")
    pending = [
        lines.slice(start, FALLBACK_SLICE_ROWS)
        for start in range(0, lines.num_rows, FALLBACK_SLICE_ROWS)
    ]
    while pending:
        part = pending.pop()
        try:
            with _registered(con, "lines_in", part):
                con.execute(f"INSERT INTO parsed {sql}")
        except duckdb.Error as exc:
            if part.num_rows > 1:
                half = part.num_rows // 2
                pending += [part.slice(0, half), part.slice(half)]
            else:
                _quarantine_unreadable(con, part, exc)


def _quarantine_unreadable(
    con: duckdb.DuckDBPyConnection, line: pa.Table, exc: duckdb.Error
) -> None:
    """A line the rules could not classify even alone: rejected as malformed, with the error."""
    row = line.to_pylist()[0]
    con.execute(
        "INSERT INTO parsed (file_index, line_no, text, reason, detail) VALUES (?, ?, ?, ?, ?)",
        [
            row["file_index"],
            row["line_no"],
            row.get("text") or "",
            schema.MALFORMED_JSON,
            f"the rules could not read this line: {first_line(exc)}",
        ],
    )


def _store(con: duckdb.DuckDBPyConnection) -> None:
    """Rejects to quarantine; valid records to ``events``, keeping the first occurrence of
    each event_id across the whole store (first by day, then file, then line: ``day_files``
    numbers the chunk's files in that order)."""
    con.execute(
        "INSERT INTO rejected_events SELECT source_file, line_no, reason, detail, "
        f"{_capped('text')}, partition_day FROM parsed JOIN day_files USING (file_index) "
        "WHERE reason IS NOT NULL"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE first_seen AS SELECT min({_POSITION}) AS position "
        "FROM parsed p WHERE reason IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = p.event_id) "
        "GROUP BY event_id"
    )
    columns = _STAGED_COLUMNS.replace("ts, ", "ts, CAST(ts AS DATE), ")
    (firsts,) = fetch_one(con, "SELECT count(*) FROM first_seen")
    (valid,) = fetch_one(con, "SELECT count(*) FROM parsed WHERE reason IS NULL")
    keep = "" if firsts == valid else f" AND {_POSITION} IN (SELECT position FROM first_seen)"
    con.execute(
        f"INSERT INTO events SELECT {columns}, source_file, line_no, partition_day "
        f"FROM parsed JOIN day_files USING (file_index) WHERE reason IS NULL{keep}"
    )
    con.execute("DROP TABLE first_seen")


def _capped(expr: str) -> str:
    """SQL for text capped at 4 KiB of UTF-8 (1,024 characters when multi-byte runs long)."""
    cap = schema.RAW_TEXT_CAP_BYTES
    return (
        f"CASE WHEN strlen(left({expr}, {cap})) <= {cap} THEN left({expr}, {cap}) "
        f"ELSE left({expr}, {cap // 4}) END"
    )
