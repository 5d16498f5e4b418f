"""The one partitioning of the pipeline: UTC days."""

from dagster import DailyPartitionsDefinition

FIRST_DAY = "2015-01-01"

daily_partitions = DailyPartitionsDefinition(start_date=FIRST_DAY, timezone="UTC", end_offset=1)

# Assets that write the DuckDB file share this pool; dagster.yaml limits it to one at a time.
DUCKDB_POOL = "duckdb_writer"
