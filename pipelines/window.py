"""The audit window of a run: its partition range, else the configured days, else all days."""

from __future__ import annotations

import datetime as dt

from dagster import AssetExecutionContext

from pipelines.resources import AuditConfig

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def run_days(tags: dict[str, str]) -> tuple[dt.date, dt.date] | None:
    """The days a run covers, from its partition tags (a single day or a range)."""
    if PARTITION_TAG in tags:
        day = dt.date.fromisoformat(tags[PARTITION_TAG])
        return day, day
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        return dt.date.fromisoformat(tags[RANGE_START_TAG]), dt.date.fromisoformat(
            tags[RANGE_END_TAG]
        )
    return None


def audit_window(
    context: AssetExecutionContext, audit: AuditConfig, con
) -> tuple[dt.date, dt.date] | None:
    """The window an unpartitioned (window-level) asset audits in this run."""
    return run_days(context.run.tags) or audit.window(con)
