"""Ingest: the archive's day partitions into the ``events`` table, and the ingest summary."""

import datetime as dt
import json
from collections import defaultdict

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_duckdb import DuckDBResource

from audits import store
from audits.catalog import ArchiveFile, scan_archive
from audits.ingest_summary import ingest_summary as summarise
from pipelines.partitions import DUCKDB_POOL, daily_partitions
from pipelines.progress import progress_for
from pipelines.resources import AuditConfig
from pipelines.window import audit_window

ACCOUNTING_CHECK = "every_record_accounted_for"


@asset(
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    pool=DUCKDB_POOL,
    group_name="ingest",
    check_specs=[AssetCheckSpec(ACCOUNTING_CHECK, asset="events", blocking=True)],
)
def events(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """Accepted events of each day partition; rejects quarantined with their reason."""
    say = progress_for(context)
    reader, unusable_gateway_lines = audit.reader_options()
    files_by_day = _files_by_day(audit.logs, reader)
    days = [dt.date.fromisoformat(key) for key in context.partition_keys]
    width = _model_width(audit)
    totals: dict[str, int] = defaultdict(int)
    rejected: dict[str, int] = defaultdict(int)
    unbalanced: list[str] = []
    plan = [(day, files_by_day[day]) for day in days if day in files_by_day]
    with duckdb.get_connection() as con:
        store.ensure_schema(con)
        results = store.ingest_days(
            con, plan, model_width=width, run_id=context.run.run_id, progress=say, reader=reader
        )
        for result in results:
            width = width or result.input_width
            say(
                f"{result.day}: {result.total('rows_read')} read, "
                f"{result.total('accepted')} accepted, {result.total('duplicates')} duplicates, "
                f"{result.total('rejected')} rejected"
            )
            for name in ("rows_read", "accepted", "duplicates", "rejected"):
                totals[name] += result.total(name)
            for reason, count in result.rejected_by_reason.items():
                rejected[reason] += count
            unbalanced += store.unbalanced_files(con, result.day)
    return MaterializeResult(
        metadata={
            **{name: MetadataValue.int(value) for name, value in totals.items()},
            "rejected_by_reason": MetadataValue.json(dict(rejected)),
            "input_width": MetadataValue.int(width or 0),
            "unusable_gateway_lines": MetadataValue.int(unusable_gateway_lines),
        },
        check_results=[
            AssetCheckResult(
                check_name=ACCOUNTING_CHECK,
                passed=not unbalanced,
                severity=AssetCheckSeverity.ERROR,
                metadata={"unbalanced_files": MetadataValue.json(unbalanced)},
            )
        ],
    )


@asset(deps=[events], group_name="ingest")
def ingest_summary(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """``ingest_summary.json``: files, rows read, accepted, duplicates, rejects by reason."""
    with duckdb.get_connection() as con:
        store.ensure_schema(con)
        window = audit_window(context, audit, con)
        summary = summarise(con, window)
    path = audit.out_path / "ingest_summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "summary": MetadataValue.json(summary),
        }
    )


def _files_by_day(logs: str, reader) -> dict[dt.date, list[ArchiveFile]]:
    files, _skipped = scan_archive(logs, reader.format, reader.mapping)
    by_day: dict[dt.date, list[ArchiveFile]] = defaultdict(list)
    for file in files:
        by_day[file.day].append(file)
    return dict(by_day)


def _model_width(audit: AuditConfig) -> int | None:
    if not audit.model:
        return None
    from audits.models import load_served_model

    return load_served_model(audit.model, trust_pickle=audit.trust_pickle).n_features_in


ingest_assets = [events, ingest_summary]
