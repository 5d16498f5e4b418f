"""What the assets share: a frame's preview for their metadata."""

import polars as pl
from dagster import MetadataValue


def preview(frame: pl.DataFrame, rows: int = 10) -> MetadataValue:
    """The first rows of ``frame`` as a markdown table for the asset's metadata."""
    try:
        return MetadataValue.md(frame.head(rows).to_pandas().to_markdown(index=False))
    except Exception:  # noqa: BLE001 - tabulate may be missing: plain text then
        return MetadataValue.md("```\n" + str(frame.head(rows)) + "\n```")
