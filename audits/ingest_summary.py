"""The ingest summary of an audit window, from the custody tables."""

from __future__ import annotations

import datetime as dt

import duckdb

from audits.formats import UNKNOWN_PRINCIPAL


def ingest_summary(con: duckdb.DuckDBPyConnection, window: tuple[dt.date, dt.date] | None) -> dict:
    """``{"files", "rows_read", "accepted", "duplicates", "rejected": {reason: n}}`` plus the
    damaged files, for the partitions inside ``window`` (every partition when ``None``)."""
    start, end = window or (dt.date.min, dt.date.max)
    params = [start, end]
    files, rows_read, accepted, duplicates = con.sql(
        "SELECT count(*), coalesce(sum(rows_read), 0), coalesce(sum(accepted), 0), "
        "coalesce(sum(duplicates), 0) FROM source_files WHERE partition_day BETWEEN ? AND ?",
        params=params,
    ).fetchall()[0]
    rejected = con.sql(
        "SELECT reason, count(*) FROM rejected_events WHERE partition_day BETWEEN ? AND ? "
        "GROUP BY reason ORDER BY reason",
        params=params,
    ).fetchall()
    damaged = con.sql(
        "SELECT path, damage FROM source_files WHERE damage IS NOT NULL "
        "AND partition_day BETWEEN ? AND ? ORDER BY path",
        params=params,
    ).fetchall()
    unknown = con.sql(
        "SELECT count(*) FROM events WHERE user_id = ? AND partition_day BETWEEN ? AND ?",
        params=[UNKNOWN_PRINCIPAL, *params],
    ).fetchall()[0][0]
    return {
        "files": int(files),
        "rows_read": int(rows_read),
        "accepted": int(accepted),
        "duplicates": int(duplicates),
        "rejected": {reason: int(n) for reason, n in rejected},
        "damaged_files": [{"path": path, "damage": damage} for path, damage in damaged],
        "unknown_principal_events": int(unknown),
        "window": None if window is None else [start.isoformat(), end.isoformat()],
    }
