"""What the assets share: writing a window's rows of a table and previewing a frame."""

import polars as pl
from dagster import MetadataValue


def replace_rows(con, table: str, ddl: str, frame: pl.DataFrame, window) -> None:
    """Create ``table`` when missing and replace its rows of ``window`` with ``frame``."""
    con.execute(ddl)
    con.execute(f"DELETE FROM {table} WHERE window_start = ? AND window_end = ?", list(window))
    staged = frame.select(
        pl.lit(window[0]).alias("window_start"), pl.lit(window[1]).alias("window_end"), pl.all()
    )
    con.register("_staged", staged.to_arrow())
    try:
        columns = ", ".join(staged.columns)
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _staged")
    finally:
        con.unregister("_staged")


def preview(frame: pl.DataFrame, rows: int = 10) -> MetadataValue:
    """The first rows of ``frame`` as a markdown table for the asset's metadata."""
    try:
        return MetadataValue.md(frame.head(rows).to_pandas().to_markdown(index=False))
    except Exception:  # noqa: BLE001 - tabulate may be missing: plain text then
        return MetadataValue.md("```\n" + str(frame.head(rows)) + "\n```")
