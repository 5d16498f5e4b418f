"""A sensor that audits the day partitions of archive files as they land."""

import json
from collections import defaultdict

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.resources import AuditConfig
from audits.catalog import ArchiveFile, scan_archive
from audits.errors import InputError
from pipelines.jobs import daily_audit_job


def new_files(files: list[ArchiveFile], cursor: str | None) -> tuple[list[ArchiveFile], str]:
    """Files newer than the cursor's high-water mark, and the advanced cursor.

    The cursor keeps the newest modification time seen and the paths seen at exactly that
    time, so files landing within the same clock tick are not missed.
    """
    state = json.loads(cursor) if cursor else {"mtime_ns": -1, "paths": []}
    seen_at_mark = set(state["paths"])
    fresh = [
        f
        for f in files
        if f.mtime_ns > state["mtime_ns"]
        or (f.mtime_ns == state["mtime_ns"] and str(f.path) not in seen_at_mark)
    ]
    if not fresh:
        return [], json.dumps(state)
    mark = max(f.mtime_ns for f in files)
    at_mark = sorted(str(f.path) for f in files if f.mtime_ns == mark)
    return fresh, json.dumps({"mtime_ns": mark, "paths": at_mark})


@sensor(
    job=daily_audit_job,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.STOPPED,
    description="Starts an audit of each day partition that new archive files land in.",
)
def new_archive_files(context: SensorEvaluationContext, audit: AuditConfig):
    try:
        files, _skipped = scan_archive(audit.logs)
    except InputError as exc:
        return SkipReason(str(exc))
    fresh, cursor = new_files(files, context.cursor)
    if not fresh:
        return SkipReason("no new archive files")
    newest: dict[str, int] = defaultdict(int)
    for file in fresh:
        key = file.day.isoformat()
        newest[key] = max(newest[key], file.mtime_ns)
    requests = [
        RunRequest(run_key=f"{day}:{mtime}", partition_key=day)
        for day, mtime in sorted(newest.items())
    ]
    return SensorResult(run_requests=requests, cursor=cursor)
