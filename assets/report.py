"""The audit's HTML pages: the window overview and one page per incident."""

import duckdb as duckdb_module
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from pipelines.progress import progress_for
from pipelines.resources import AuditConfig
from pipelines.window import audit_window
from reports import data, pages

REPORT_DEPS = [
    "ingest_summary",
    "user_scores",
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
        written = _incident_pages(con, window, out, say)
    say(f"report: {path}")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "incident_pages": MetadataValue.int(written),
            "window": MetadataValue.text(f"{window[0]}..{window[1]}"),
        }
    )


def _incident_pages(con: duckdb_module.DuckDBPyConnection, window, out, say) -> int:
    scores = data.load_scores(out, con, window)
    incidents = data.incidents(con, window)
    population = data.population_sample(con, window) if incidents else None
    for number, incident in enumerate(incidents, 1):
        say(f"incident page {number}/{len(incidents)}: {incident['incident_id']}")
        pages.write_subject_page(
            con,
            window,
            out / "incidents" / pages.page_name(str(incident["incident_id"])),
            users=[str(member) for member in incident["members"]],
            title=f"Incident {incident['incident_id']}",
            incident=incident,
            scores=scores,
            population=population,
        )
    return len(incidents)


report_assets = [report]
