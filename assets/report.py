"""The audit's files for people and other tools: ``OUT/user_scores.parquet`` (the user scores
with forensics' fidelity and linked group joined), the window overview and one page per
incident."""

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from assets.partitions import DUCKDB_POOL
from assets.progress import progress_for
from assets.resources import AuditConfig, audit_window
from audits import tables
from audits.forensics.records import with_forensics
from reports import data, incident_pages, pages

SCORES_FILE = "user_scores.parquet"


@asset(deps=["user_scores", "forensics"], pool=DUCKDB_POOL, group_name="report")
def user_scores_file(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """``OUT/user_scores.parquet``: the window's ``user_scores`` with ``est_fidelity`` and
    ``group_id`` from ``user_forensics`` for the users forensics estimated (the only writer of
    the file; empty when nothing was scored)."""
    with duckdb.get_connection() as con:
        window = audit_window(context, audit, con)
        scores = tables.USER_SCORES.empty()
        if window is not None and tables.exists(con, tables.USER_SCORES):
            scored = tables.read_window(con, tables.USER_SCORES, window)
            scores = with_forensics(con, scored, window)
    schema = tables.USER_SCORES.schema
    scores = scores.select([pl.col(c).cast(t) for c, t in schema.items()])
    path = audit.out_path / SCORES_FILE
    scores.write_parquet(path)
    return MaterializeResult(
        metadata={"rows": scores.height, "path": MetadataValue.path(str(path))}
    )


REPORT_DEPS = [
    "ingest_summary",
    "user_scores",
    "user_scores_file",
    "incidents",
    "forensics",
    "confidence_monitor",
    "privacy_audit",
    "canary_hits",
    "risk_register",
]


@asset(deps=REPORT_DEPS, group_name="report")
def report(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """``report.html`` for the audited window and ``incidents/<incident_id>.html`` pages."""
    say = progress_for(context)
    out = audit.out_path
    with duckdb.get_connection() as con:
        window = audit_window(context, audit, con)
        if window is None:
            return MaterializeResult(metadata={"skipped": "no events in the store"})
        path = pages.write_overview(con, window, out)
        written = incident_pages.write_incident_pages(con, window, out, say)
        privacy = data.privacy_summary(con)
    _link_privacy_report(privacy, out)
    say(f"report: {path}")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "incident_pages": MetadataValue.int(written),
            "window": MetadataValue.text(f"{window[0]}..{window[1]}"),
        }
    )


def _link_privacy_report(result: dict | None, out) -> None:
    """The privacy gate's page, rewritten with a link back to the overview it belongs to."""
    if result is not None:
        from reports.privacy import write_privacy_report

        write_privacy_report(result, out / "privacy" / "privacy_report.html", "../report.html")


report_assets = [user_scores_file, report]
