"""Jobs and schedules, at module scope so multiprocess children can re-import them."""

import datetime as dt

from dagster import (
    AssetSelection,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

daily_audit_job = define_asset_job(
    "daily_audit",
    selection=AssetSelection.all(),
    description="Ingest a day range of the archive and audit it: every stage, one run.",
)


@schedule(
    job=daily_audit_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="Every day at 03:00 UTC, audit yesterday's partition.",
)
def daily_audit_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    yesterday = (context.scheduled_execution_time - dt.timedelta(days=1)).date().isoformat()
    return RunRequest(run_key=f"daily-{yesterday}", partition_key=yesterday)
