"""The DuckDB store: schema, and ingest of day partitions, each chunk of days (one large day,
or consecutive small ones up to ``CHUNK_LINES`` lines) validated in one statement and
committed in one transaction.

Every record read is accounted for: ``rows_read = accepted + duplicates + rejected`` per file,
rejects keep their reason and raw text, and every source file is recorded with its sha256.
Re-ingesting a partition replaces that partition's rows, so reruns never duplicate anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audits import schema
from audits.catalog import ArchiveFile
from audits.errors import InputError
from audits.formats import CANONICAL, ReaderOptions, to_canonical
from audits.readers import GZIP_MAGIC, decompress_recoverable
from audits.validation import dominant_width_sql, validation_sql

Progress = Callable[[str], None]
_WIDTH_KEY = "input_width"
_POSITION = "(file_index::BIGINT << 32) + line_no"  # a record's place in the day's files
_STAGED_COLUMNS = (
    "event_id, ts, user_id, session_id, source_ip, model_id, model_version, features, "
    "prediction, probabilities, status, latency_ms"
)


MEMORY_LIMIT = "1GB"
"""DuckDB's memory, its cache of pages read included, unless ``STEALWATCH_DUCKDB_MEMORY``
says otherwise. DuckDB's own default (80% of RAM) let the cache grow with the store: ingesting
the 11.4M-event year peaked at 1,824 MiB with it, 1,278 MiB with 1GB and 817 MiB with 512MB
(77, 83 and 83 s; ``benchmarks/ingest.py``). Work that outgrows the limit spills to disk."""
MEMORY_ENV = "STEALWATCH_DUCKDB_MEMORY"
_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def memory_limit() -> str:
    """The configured DuckDB memory limit (``MEMORY_ENV``, else :data:`MEMORY_LIMIT`)."""
    return checked_size(os.environ.get(MEMORY_ENV, "").strip() or MEMORY_LIMIT)


def checked_size(value: str) -> str:
    """``value`` if DuckDB reads it as a memory size, else a one-line :class:`InputError`."""
    if not _SIZE.fullmatch(value.strip()):
        raise InputError(
            f"the DuckDB memory limit (--duckdb-memory, {MEMORY_ENV}) must be a size such as "
            f"1GB or 512MiB, got {value!r}"
        )
    return value.strip()


def configure(con: duckdb.DuckDBPyConnection) -> None:
    """Settings of every stealwatch connection: its memory limit, no progress bar (progress
    is ours to print), and insertion order kept: ingest turns that off for its own writes, and
    settings are global to a database that stays open across a run's connections."""
    con.execute(f"SET memory_limit = '{memory_limit()}'")  # checked against _SIZE
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = true")


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


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    had_partials = _has_table(con, "user_day")
    for ddl in schema.ALL_DDL:
        con.execute(ddl)
    if not had_partials:  # a store from before the partials: derive them once
        con.execute(f"INSERT INTO user_day {user_day_select('events')}")


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", params=[name]
    ).fetchall()
    return rows[0][0] > 0


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
    """A file's lines as read, with its custody facts."""

    lines: pa.Table  # line_no, text, cut, bad_utf8, reject
    sha256: str
    size_bytes: int
    damage: str | None


# ---------------------------------------------------------------- reading

BATCH_ROWS = 1 << 16  # rows per Arrow batch: DuckDB scans batches in parallel
_BOM = b"\xef\xbb\xbf"
_READ_THREADS = 4


def read_raw(file: ArchiveFile) -> RawFile:
    """Read a file once: hash its bytes, recover what a cut gzip holds, split lines. A file
    that cannot be read (a dangling link, a CSV named ``.parquet``) has no lines and its
    damage says why; the file's ``note`` (an odd name or link) is part of its damage."""
    try:
        raw = file.path.read_bytes()
    except OSError as exc:
        return _unreadable(file, b"", f"unreadable: {exc.strerror or exc}")
    digest = hashlib.sha256(raw).hexdigest()
    if file.format == "parquet":
        try:
            lines = _parquet_lines(duckdb.connect(), file.path)
        except duckdb.Error as exc:
            return _unreadable(file, raw, f"not a readable Parquet file ({_first_line(exc)})")
        return RawFile(_with_flags(lines, None, None), digest, len(raw), file.note)
    damage = None
    data = raw
    if file.compressed and raw and (raw.startswith(GZIP_MAGIC) or GZIP_MAGIC.startswith(raw)):
        data, damage = decompress_recoverable(raw)  # a stream cut inside its magic is gzip
    elif file.compressed and raw:
        damage = "named .gz but not gzip: read as plain text"
    if data.startswith(_BOM):  # a byte-order mark is no part of the first record
        data = data[len(_BOM) :]
    lines, bad_utf8 = split_lines(data)
    cut_line = lines.num_rows if damage and data and not data.endswith(b"\n") else None
    flagged = _with_flags(lines, cut_line, bad_utf8)
    return RawFile(flagged, digest, len(raw), _joined(file.note, damage))


def _unreadable(file: ArchiveFile, raw: bytes, damage: str) -> RawFile:
    """A file of no lines, with its custody facts and why nothing was read."""
    empty = pa.table({"line_no": pa.array([], pa.int64()), "text": pa.array([], pa.large_string())})
    digest = hashlib.sha256(raw).hexdigest()
    return RawFile(_with_flags(empty, None, None), digest, len(raw), _joined(file.note, damage))


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _with_flags(lines: pa.Table, cut_line: int | None, bad_utf8: np.ndarray | None) -> pa.Table:
    n = lines.num_rows
    cut = np.zeros(n, dtype=bool)
    if cut_line is not None:
        cut[cut_line - 1] = True
    bad = bad_utf8 if bad_utf8 is not None else np.zeros(n, dtype=bool)
    return (
        lines.append_column("cut", pa.array(cut))
        .append_column("bad_utf8", pa.array(bad))
        .append_column("reject", pa.nulls(n, pa.string()))
    )


def split_lines(data: bytes) -> tuple[pa.Table, np.ndarray | None]:
    """Zero-copy split of a byte buffer into ``(line_no, text)``, and which lines were not
    UTF-8 (``None`` when all were; those lines are decoded with replacement characters)."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return _split_lines_slow(data)
    ends = _line_ends(data)
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    n = len(offsets) - 1
    text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    line_no = pa.array(np.arange(1, n + 1, dtype=np.int64))
    return pa.table({"line_no": line_no, "text": text}), None


_SCAN_BYTES = 1 << 22  # newline scan in slices: one small mask reused, not one per byte


def _line_ends(data: bytes) -> np.ndarray:
    """Offsets just past each newline. Scanning in slices into one reused mask avoids
    allocating (and page-faulting) a mask as large as the buffer."""
    buf = np.frombuffer(data, dtype=np.uint8)
    mask = np.empty(min(len(buf), _SCAN_BYTES), dtype=bool)
    parts = [np.empty(0, dtype=np.int64)]
    for start in range(0, len(buf), _SCAN_BYTES):
        chunk = buf[start : start + _SCAN_BYTES]
        found = np.equal(chunk, 10, out=mask[: len(chunk)])
        parts.append(np.flatnonzero(found) + (start + 1))
    return np.concatenate(parts)


def _split_lines_slow(data: bytes) -> tuple[pa.Table, np.ndarray]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    texts, bad = [], []
    for part in parts:
        try:
            texts.append(part.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            texts.append(part.decode("utf-8", errors="replace"))
            bad.append(True)
    line_no = pa.array(np.arange(1, len(texts) + 1, dtype=np.int64))
    table = pa.table({"line_no": line_no, "text": pa.array(texts, pa.large_string())})
    return table, np.array(bad, dtype=bool)


@dataclass
class DayRead:
    """A day's files as read: custody facts per file and one table of all their lines."""

    raws: list[RawFile]
    lines: pa.Table  # file_index, line_no, text, cut, bad_utf8, reject


def read_day(files: Sequence[ArchiveFile], say: Progress | None = None) -> DayRead:
    """Read a day's files (decompression in threads) into one table of lines, in batches
    small enough for DuckDB to validate in parallel."""
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        raws = list(pool.map(read_raw, files))
    for file, raw in zip(files, raws, strict=True):
        if raw.damage and say:
            say(f"{file.text}: {raw.damage}; keeping the {raw.lines.num_rows} lines read")
    tables = [
        raw.lines.add_column(0, "file_index", pa.array(np.full(raw.lines.num_rows, i, np.int32)))
        for i, raw in enumerate(raws)
    ]
    if not tables:
        return DayRead(raws, pa.table({}))
    combined = pa.concat_tables(tables)
    return DayRead(raws, rebatched(combined))


def rebatched(table: pa.Table) -> pa.Table:
    """``table`` in batches of at most :data:`BATCH_ROWS` rows (DuckDB scans them in
    parallel); an empty table keeps its columns."""
    return pa.Table.from_batches(table.to_batches(max_chunksize=BATCH_ROWS), schema=table.schema)


CHUNK_LINES = 1 << 18
"""Consecutive days are validated in one statement and committed in one transaction until
their lines reach this many, so small days do not each pay the fixed cost of a statement and
a commit. A larger day is a chunk of its own."""
CHUNK_DAYS = 31  # and at most this many days, however small


def ingest_days(
    con: duckdb.DuckDBPyConnection,
    plan: Sequence[tuple[dt.date, Sequence[ArchiveFile]]],
    **options,
) -> Iterator[DayResult]:
    """Ingest days in order, a chunk of days (:data:`CHUNK_LINES`) per transaction, reading
    the next day's files while DuckDB loads the current chunk (so at most a chunk and one day
    are in memory at once)."""
    chunk: list[_ReadDay] = []
    for read in _read_ahead(plan, options.get("progress")):
        chunk.append(read)
        if sum(r.read.lines.num_rows for r in chunk) >= CHUNK_LINES or len(chunk) >= CHUNK_DAYS:
            yield from ingest_chunk(con, chunk, **options)
            chunk = []
    if chunk:
        yield from ingest_chunk(con, chunk, **options)


@dataclass
class _ReadDay:
    day: dt.date
    files: Sequence[ArchiveFile]
    read: DayRead


def _read_ahead(
    plan: Sequence[tuple[dt.date, Sequence[ArchiveFile]]], say: Progress | None
) -> Iterator[_ReadDay]:
    """The plan's days as read, the next one always being read in a thread."""
    if not plan:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read_day, plan[0][1], say)
        for index, (day, files) in enumerate(plan):
            read = pending.result()
            if index + 1 < len(plan):
                pending = reader.submit(read_day, plan[index + 1][1], say)
            yield _ReadDay(day, files, read)


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
    return ingest_chunk(con, [_ReadDay(day, files, read)], **options)[0]


def ingest_chunk(
    con: duckdb.DuckDBPyConnection,
    days: Sequence[_ReadDay],
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
                    f"INSERT INTO user_day {user_day_select('events', _IN_PARTITIONS)}",
                    [partitions],
                )
            results, by_reason = _count_outcomes(con, files, raws, partitions)
            _record_files(con, files, results, paths, run_id)
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


_IN_PARTITIONS = "partition_day IN (SELECT unnest(?::DATE[]))"


def _checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Write the committed chunk into the database file now. Bulk inserts bypass the WAL, so
    DuckDB's automatic checkpoint would otherwise wait for the connection to close and then
    merge every chunk at once (7.5 s and a 4,725 MiB peak at the end of a 365-day ingest,
    against 1,820 MiB for the whole ingest with a checkpoint per chunk)."""
    con.execute("CHECKPOINT")


def _chunk_lines(days: Sequence[_ReadDay]) -> pa.Table:
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
    days: Sequence[_ReadDay],
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
        con.execute(f"DELETE FROM {table} WHERE {_IN_PARTITIONS}", [days])


def user_day_select(events: str, where: str = "true") -> str:
    """SQL selecting ``user_day`` rows (per-user, per-day partial aggregates) from the rows
    of an events relation that satisfy ``where``."""
    return (
        "SELECT partition_day, day, user_id, count(*) AS n_events, "
        "count(probabilities) AS n_with_probabilities, min(ts) AS first_ts, max(ts) AS last_ts "
        f"FROM {events} WHERE {where} GROUP BY ALL"
    )


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
        say(f"fast validation failed ({_first_line(exc)}); validating in slices")
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
            f"the rules could not read this line: {_first_line(exc)}",
        ],
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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


def _count_outcomes(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[ArchiveFile],
    raws: list[RawFile],
    partitions: list[dt.date],
) -> tuple[list[FileResult], dict[dt.date, dict[str, int]]]:
    """Per-file counts, and rejects by reason per day; duplicates are the valid records not
    stored."""
    results = [
        FileResult(f.text, damage=r.damage, sha256=r.sha256, size_bytes=r.size_bytes)
        for f, r in zip(files, raws, strict=True)
    ]
    if not files:
        return results, {}
    for index, read, rejected in con.sql(
        "SELECT file_index, count(*), count(reason) FROM parsed GROUP BY file_index"
    ).fetchall():
        results[index].rows_read, results[index].rejected = read, rejected
    stored = dict(
        con.sql(
            f"SELECT source_file, count(*) FROM events WHERE {_IN_PARTITIONS} GROUP BY 1",
            params=[partitions],
        ).fetchall()
    )
    for result in results:
        result.accepted = stored.get(result.path, 0)
        result.duplicates = result.rows_read - result.rejected - result.accepted
    by_reason: dict[dt.date, dict[str, int]] = {}
    rows = con.sql(
        "SELECT partition_day, reason, count(*) FROM parsed JOIN day_files USING (file_index) "
        "WHERE reason IS NOT NULL GROUP BY ALL ORDER BY 1, 2"
    ).fetchall()
    for day, reason, count in rows:
        by_reason.setdefault(day, {})[reason] = count
    return results, by_reason


def _record_files(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[ArchiveFile],
    results: list[FileResult],
    paths: pa.Table,
    run_id: str,
) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    days = paths["partition_day"].to_pylist()
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
        for f, r, day in zip(files, results, days, strict=True)
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
    fields = []
    for name, kind in columns.items():
        quoted = '"' + name.replace('"', '""') + '"'
        value = quoted
        if name == "ts" and kind == "TIMESTAMP":
            value = f"strftime({quoted}, '%Y-%m-%dT%H:%M:%S.%fZ')"
        fields.append(f"{quoted} := {value}")
    return con.sql(
        f"SELECT file_row_number + 1 AS line_no, to_json(struct_pack({', '.join(fields)}))"
        "::VARCHAR AS text FROM read_parquet(?, file_row_number = true) ORDER BY file_row_number",
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


# ---------------------------------------------------------------- replacing stored days


def absent_stored_files(
    con: duckdb.DuckDBPyConnection, files_by_day: Mapping[dt.date, Sequence[ArchiveFile]]
) -> list[tuple[dt.date, str]]:
    """The stored source files of ``files_by_day``'s days that are not among those days' new
    files, in day and path order: re-ingesting the days would delete their records and custody
    rows. A stored file is present when a new file of its day has its path (as stored or
    resolved) or, for an archive moved elsewhere, its size and sha256."""
    if not files_by_day or not _has_table(con, "source_files"):
        return []
    stored = con.sql(
        "SELECT partition_day, path, size_bytes, sha256 FROM source_files "
        "WHERE partition_day IN (SELECT unnest(?::DATE[])) ORDER BY partition_day, path",
        params=[sorted(files_by_day)],
    ).fetchall()
    absent = []
    for day, path, size, digest in stored:
        if not _present(path, size, digest, files_by_day[day]):
            absent.append((day, path))
    return absent


def _present(path: str, size: int, digest: str, files: Sequence[ArchiveFile]) -> bool:
    paths = {str(f.path) for f in files} | {str(f.path.resolve()) for f in files}
    if path in paths or str(Path(path).resolve()) in paths:
        return True
    return any(f.size_bytes == size and _sha256(f.path) == digest for f in files)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
