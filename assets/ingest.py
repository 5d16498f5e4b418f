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
    DynamicOut,
    DynamicOutput,
    MaterializeResult,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    asset,
    graph_asset,
    op,
)
from dagster_duckdb import DuckDBResource

from assets.partitions import DUCKDB_POOL, daily_partitions
from assets.progress import progress_for
from assets.resources import AuditConfig, StoreResource, audit_window
from audits import store
from audits.catalog import ArchiveFile, scan_archive
from audits.ingest_summary import ingest_summary as summarise

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
    audit.check_inputs()
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
    return audit.served_model().n_features_in


ingest_assets = [events, ingest_summary]


# ---------------------------------------------------------------- lake mode

# In the lake storage mode (``StoreResource.lake``) day partitions are independent: a graph
# fans the run's days out to one step each (parallel processes under the multiprocess
# executor, pods under k8s_job_executor), then one step resolves cross-day duplicates and
# checks the accounting of every committed day.


@op(out=DynamicOut(dict))
def plan_lake_days(context: OpExecutionContext, audit: AuditConfig):
    """One output per day of the run that has archive files (the last day when none has),
    with the model's input width (read once here, not once per day)."""
    audit.check_inputs()
    reader, unusable = audit.reader_options()
    with_files = _files_by_day(audit.logs, reader)
    keys = [key for key in context.partition_keys if dt.date.fromisoformat(key) in with_files]
    shared = {"model_width": _model_width(audit), "unusable_gateway_lines": unusable}
    for key in keys or context.partition_keys[-1:]:
        yield DynamicOutput({"day": key, **shared}, mapping_key=key.replace("-", "_"))


@op
def ingest_lake_day(
    context: OpExecutionContext, duckdb: StoreResource, audit: AuditConfig, plan: dict
) -> dict:
    """Ingest one day partition into the lake (a step of its own: days run in parallel)."""
    from audits.lake import Lake, ingest_day

    say = progress_for(context)
    reader, _ = audit.reader_options()
    day = plan["day"]
    date = dt.date.fromisoformat(day)
    files = _files_by_day(audit.logs, reader).get(date, [])
    result = ingest_day(
        Lake(duckdb.lake),
        date,
        files,
        model_width=plan["model_width"],
        run_id=context.run.run_id,
        progress=say,
        reader=reader,
    )
    say(
        f"{day}: {result.total('rows_read')} read, {result.total('accepted')} accepted, "
        f"{result.total('duplicates')} duplicates within the day, "
        f"{result.total('rejected')} rejected"
    )
    return {"day": day, "unusable_gateway_lines": plan["unusable_gateway_lines"]}


@op(out={"result": Out(Nothing), f"events_{ACCOUNTING_CHECK}": Out(Nothing, is_required=False)})
def commit_lake_days(context: OpExecutionContext, duckdb: StoreResource, days: list[dict]):
    """Resolve cross-day duplicates, then account for every record of the run's days."""
    from audits.lake import Lake, resolve_cross_day

    say = progress_for(context)
    lake = Lake(duckdb.lake)
    dropped = resolve_cross_day(lake, context.run.run_id)
    for day, count in dropped.items():
        say(f"{day}: {count} records already held by an earlier day counted as duplicates")
    window = (
        min(dt.date.fromisoformat(d["day"]) for d in days),
        max(dt.date.fromisoformat(d["day"]) for d in days),
    )
    with duckdb.get_connection() as con:
        summary = summarise(con, window)
        unbalanced = [
            path
            for d in days
            for path in store.unbalanced_files(con, dt.date.fromisoformat(d["day"]))
        ]
    yield Output(
        None,
        "result",
        metadata={
            **{k: MetadataValue.int(summary[k]) for k in ("rows_read", "accepted", "duplicates")},
            "rejected": MetadataValue.int(sum(summary["rejected"].values())),
            "rejected_by_reason": MetadataValue.json(summary["rejected"]),
            "input_width": MetadataValue.int(lake.input_width() or 0),
            "cross_day_duplicates": MetadataValue.int(sum(dropped.values())),
            "unusable_gateway_lines": MetadataValue.int(days[0]["unusable_gateway_lines"]),
        },
    )
    yield AssetCheckResult(
        check_name=ACCOUNTING_CHECK,
        asset_key="events",
        passed=not unbalanced,
        severity=AssetCheckSeverity.ERROR,
        metadata={"unbalanced_files": MetadataValue.json(unbalanced)},
    )


@graph_asset(
    name="events",
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    group_name="ingest",
    check_specs=[AssetCheckSpec(ACCOUNTING_CHECK, asset="events", blocking=True)],
)
def lake_events():
    """Accepted events of each day partition, as Parquet in the lake: one step per day."""
    return commit_lake_days(plan_lake_days().map(ingest_lake_day).collect())


lake_ingest_assets = [lake_events, ingest_summary]
