"""The store's schema: every table created when missing, and the per-day partials derived
once for a store written before they existed."""

from __future__ import annotations

import duckdb

from audits import schema


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    had_partials = has_table(con, "user_day")
    for ddl in schema.ALL_DDL:
        con.execute(ddl)
    if not had_partials:  # a store from before the partials: derive them once
        con.execute(f"INSERT INTO user_day {user_day_select('events')}")


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", params=[name]
    ).fetchall()
    return rows[0][0] > 0


def user_day_select(events: str, where: str = "true") -> str:
    """SQL selecting ``user_day`` rows (per-user, per-day partial aggregates) from the rows
    of an events relation that satisfy ``where``."""
    return (
        "SELECT partition_day, day, user_id, count(*) AS n_events, "
        "count(probabilities) AS n_with_probabilities, min(ts) AS first_ts, max(ts) AS last_ts "
        f"FROM {events} WHERE {where} GROUP BY ALL"
    )
