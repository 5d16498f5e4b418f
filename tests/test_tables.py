"""The window tables: one declaration each, the DDL derived, one way to read and replace."""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl
import pytest

from audits import tables
from audits.scoring import SCORE_COLUMNS

W1 = (dt.date(2026, 11, 1), dt.date(2026, 11, 2))
W2 = (dt.date(2026, 11, 3), dt.date(2026, 11, 3))
HOSTILE = "x'); DROP TABLE events; --"


def _frame(table: tables.Table, rows: int, text: str) -> pl.DataFrame:
    """``rows`` rows of ``table``'s schema, every text column holding ``text``."""
    values = {}
    for name, dtype in table.schema.items():
        if dtype == pl.String:
            values[name] = [f"{text}{i}" for i in range(rows)]
        elif isinstance(dtype, pl.List) and dtype.inner == pl.String:
            values[name] = [[text, f"{i}"] for i in range(rows)]
        elif isinstance(dtype, pl.List):
            values[name] = [[i, i + 1] for i in range(rows)]
        elif dtype == pl.Boolean:
            values[name] = [i % 2 == 0 for i in range(rows)]
        elif dtype in (pl.Int64,):
            values[name] = list(range(rows))
        elif dtype == pl.Float64:
            values[name] = [i / 3 for i in range(rows)]
        elif dtype == pl.Date:
            values[name] = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(rows)]
        else:
            values[name] = [dt.datetime(2026, 11, 1, 0, i) for i in range(rows)]
    return pl.DataFrame(values, schema=table.schema)


@pytest.mark.parametrize("table", tables.WINDOW_TABLES, ids=lambda t: t.name)
def test_a_window_reads_back_as_written_and_other_windows_stay(table: tables.Table) -> None:
    con = duckdb.connect()
    first, second = _frame(table, 3, HOSTILE), _frame(table, 2, "other")
    tables.replace_window(con, table, first, W1)
    tables.replace_window(con, table, second, W2)
    tables.replace_window(con, table, first, W1)  # a rerun replaces, never duplicates
    order = table.order or tuple(table.schema)[:1]
    assert tables.read_window(con, table, W1, order).equals(first.sort(list(order)))
    assert tables.read_window(con, table, W2, order).equals(second.sort(list(order)))
    described = {r[0]: r[1] for r in con.sql(f"DESCRIBE {table.name}").fetchall()}
    assert list(described) == ["window_start", "window_end", *table.schema]


def test_user_scores_has_a_score_column_per_detector() -> None:
    columns = [c for c in tables.USER_SCORES.schema if c.startswith("score_")]
    assert columns == [f"score_{name}" for name in SCORE_COLUMNS] + ["score_group"]
    assert "score_lof DOUBLE" in tables.USER_SCORES.ddl


def test_required_columns_refuse_nulls() -> None:
    con = duckdb.connect()
    frame = _frame(tables.INCIDENTS, 1, "a").with_columns(pl.lit(None, pl.String).alias("kind"))
    with pytest.raises(duckdb.ConstraintException):
        tables.replace_window(con, tables.INCIDENTS, frame, W1)


def test_delete_window_removes_only_that_window() -> None:
    con = duckdb.connect()
    table = tables.CONFIDENCE_DAILY
    tables.replace_window(con, table, _frame(table, 2, "a"), W1)
    tables.replace_window(con, table, _frame(table, 1, "b"), W2)
    tables.delete_window(con, table, W1)
    assert tables.read_window(con, table, W1).height == 0
    assert tables.read_window(con, table, W2).height == 1


def test_a_table_without_window_holds_the_latest_run_only() -> None:
    con = duckdb.connect()
    table = tables.PRIVACY_AUDIT
    assert tables.read_all(con, table).height == 0  # never written: empty, not an error
    tables.replace_all(con, table, _frame(table, 1, HOSTILE))
    tables.replace_all(con, table, _frame(table, 1, "later"))
    assert tables.read_all(con, table).equals(_frame(table, 1, "later"))
    tables.replace_all(con, table, table.empty())
    assert tables.read_all(con, table).height == 0
    assert "window_start" not in table.ddl
