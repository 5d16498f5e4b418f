"""Canary asset: which keys sent a canary (honey-trap) query of the ``--canaries`` registry.

A thin wrapper over :mod:`audits.canaries`: matches the window's events in DuckDB and writes
the ``canary_hits`` table (one row per matching event and canary) and the ``canary_registry``
table (what was checked), both replacing the window's rows. The ``incidents`` asset turns the
hits into incidents of kind ``canary``. Without a registry both tables get no rows.
"""

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from assets.common import preview, replace_rows
from assets.partitions import DUCKDB_POOL
from assets.resources import AuditConfig, audit_window
from audits import canaries as cn

CANARY_HITS_DDL = """
CREATE TABLE IF NOT EXISTS canary_hits (
    window_start DATE NOT NULL, window_end DATE NOT NULL,
    canary VARCHAR NOT NULL, canary_kind VARCHAR NOT NULL, event_id VARCHAR NOT NULL,
    ts TIMESTAMP, day DATE, user_id VARCHAR, source_ip VARCHAR, distance DOUBLE
)
"""
CANARY_REGISTRY_DDL = """
CREATE TABLE IF NOT EXISTS canary_registry (
    window_start DATE NOT NULL, window_end DATE NOT NULL,
    canary VARCHAR NOT NULL, canary_kind VARCHAR NOT NULL, definition VARCHAR, width BIGINT
)
"""


def read_hits(con, window) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The window's ``canary_hits`` and ``canary_registry`` rows (empty when never run)."""
    con.execute(CANARY_HITS_DDL)
    con.execute(CANARY_REGISTRY_DDL)
    params = list(window)
    hits = con.sql(
        "SELECT * EXCLUDE (window_start, window_end) FROM canary_hits "
        "WHERE window_start = ? AND window_end = ? ORDER BY user_id, ts, event_id, canary",
        params=params,
    ).pl()
    registry = con.sql(
        "SELECT * EXCLUDE (window_start, window_end) FROM canary_registry "
        "WHERE window_start = ? AND window_end = ? ORDER BY canary",
        params=params,
    ).pl()
    return hits, registry


@asset(deps=["events"], pool=DUCKDB_POOL, group_name="detection")
def canary_hits(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """Every event of the window that matches a canary of the ``--canaries`` registry (exactly
    or within its tolerance), with the key, address and time that sent it."""
    registry = cn.load_registry(audit.canaries) if audit.canaries else None
    with duckdb.get_connection() as con:
        con.execute(CANARY_HITS_DDL)
        con.execute(CANARY_REGISTRY_DDL)
        window = audit_window(context, audit, con)
        if window is None:
            return MaterializeResult(metadata={"rows": 0, "status": "no events"})
        if registry is None:
            hits = pl.DataFrame(schema=cn.HITS_SCHEMA)
            table = pl.DataFrame(schema=cn.REGISTRY_SCHEMA)
        else:
            hits = cn.find_hits(con, window, registry)
            table = registry.table()
            widths = {
                r[0]
                for r in con.sql(
                    "SELECT DISTINCT len(features) FROM events WHERE day BETWEEN ? AND ?",
                    params=list(window),
                ).fetchall()
            }
            never = cn.widths_never_matched(registry, widths)
            if never:
                context.log.warning(
                    f"{len(never)} canaries cannot match queries of width "
                    f"{sorted(widths)}: {', '.join(never[:5])}"
                )
        replace_rows(con, "canary_hits", CANARY_HITS_DDL, hits, window)
        replace_rows(con, "canary_registry", CANARY_REGISTRY_DDL, table, window)
    keys = hits["user_id"].n_unique() if hits.height else 0
    per_canary = (
        hits.group_by("canary")
        .agg(pl.col("user_id").n_unique().alias("keys"), pl.len().alias("events"))
        .sort("keys", "canary", descending=[True, False])
    )
    return MaterializeResult(
        metadata={
            "canaries": len(registry) if registry else 0,
            "registry": MetadataValue.text(registry.source if registry else "none (--canaries)"),
            "rows": hits.height,
            "keys": keys,
            "window": f"{window[0]}..{window[1]}",
            "preview": preview(per_canary),
        }
    )


canary_assets = [canary_hits]
