"""Jobs and schedules, at module scope so multiprocess children can re-import them."""

from __future__ import annotations

from dagster import AssetSelection, build_schedule_from_partitioned_job, define_asset_job

from pipelines.partitions import daily_partitions

daily_audit_job = define_asset_job(
    "daily_audit",
    selection=AssetSelection.all(),
    partitions_def=daily_partitions,
    description="Ingest a day range of the archive and audit it: every stage, one run.",
)

daily_audit_schedule = build_schedule_from_partitioned_job(
    daily_audit_job,
    hour_of_day=3,
    name="daily_audit_schedule",
    description="Every day at 03:00 UTC, audit yesterday's partition.",
)
