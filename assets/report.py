"""The audit's HTML pages: the window overview and one page per incident."""

import duckdb as duckdb_module
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from assets.progress import progress_for
from assets.resources import AuditConfig, audit_window
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
    _link_privacy_report(out)
    say(f"report: {path}")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "incident_pages": MetadataValue.int(written),
            "window": MetadataValue.text(f"{window[0]}..{window[1]}"),
        }
    )


def _incident_pages(con: duckdb_module.DuckDBPyConnection, window, out, say) -> int:
    """A page per listed incident and per canary incident merged into one."""
    scores = data.load_scores(out, con, window)
    listed = pages.triaged_incidents(con, window, scores)
    every = [*listed, *(c for i in listed for c in i["canaries"])]
    population = data.population_sample(con, window) if every else None
    for number, incident in enumerate(every, 1):
        say(f"incident page {number}/{len(every)}: {incident['incident_id']}")
        pages.write_subject_page(
            con,
            window,
            out / incident["page"],
            users=[str(member) for member in incident["members"]],
            title="Incident",
            incident=incident,
            scores=scores,
            population=population,
            audit_dir=out,
            incidents=listed,
        )
    return len(every)


def _link_privacy_report(out) -> None:
    """The privacy gate's page, rewritten with a link back to the overview it belongs to."""
    result = data.privacy_summary(out)
    if result is not None:
        from reports.privacy import write_privacy_report

        write_privacy_report(result, out / "privacy" / "privacy_report.html", "../report.html")


report_assets = [report]
