"""Custody of ingested files: what ingest did with each file (counts that add up), the
``source_files`` rows that record it, and which stored files a new archive lacks."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from audits.catalog import ArchiveFile
from audits.migrations import has_table
from audits.readers import RawFile

IN_PARTITIONS = "partition_day IN (SELECT unnest(?::DATE[]))"


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


def count_outcomes(
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
            f"SELECT source_file, count(*) FROM events WHERE {IN_PARTITIONS} GROUP BY 1",
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


def record_files(
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


def absent_stored_files(
    con: duckdb.DuckDBPyConnection, files_by_day: Mapping[dt.date, Sequence[ArchiveFile]]
) -> list[tuple[dt.date, str]]:
    """The stored source files of ``files_by_day``'s days that are not among those days' new
    files, in day and path order: re-ingesting the days would delete their records and custody
    rows. A stored file is present when a new file of its day has its path (as stored or
    resolved) or, for an archive moved elsewhere, its size and sha256."""
    if not files_by_day or not has_table(con, "source_files"):
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
