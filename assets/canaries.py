"""Canary asset: which keys sent a canary (honey-trap) query of the ``--canaries`` registry.

A thin wrapper over :mod:`audits.canaries`: matches the window's events in DuckDB and writes
the ``canary_hits`` table (one row per matching event and canary) and the ``canary_registry``
table (what was checked), both replacing the window's rows. The ``incidents`` asset turns the
hits into incidents of kind ``canary``. Without a registry both tables get no rows.
"""

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from assets.common import preview
from assets.partitions import DUCKDB_POOL
from assets.resources import AuditConfig, audit_window
from audits import canaries as cn
from audits import tables


def read_hits(con, window) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The window's ``canary_hits`` and ``canary_registry`` rows (empty when never run)."""
    tables.create(con, tables.CANARY_HITS, tables.CANARY_REGISTRY)
    return (
        tables.read_window(con, tables.CANARY_HITS, window),
        tables.read_window(con, tables.CANARY_REGISTRY, window),
    )


@asset(deps=["events"], pool=DUCKDB_POOL, group_name="detection")
def canary_hits(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """Every event of the window that matches a canary of the ``--canaries`` registry (exactly
    or within its tolerance), with the key, address and time that sent it."""
    registry = cn.load_registry(audit.canaries) if audit.canaries else None
    with duckdb.get_connection() as con:
        tables.create(con, tables.CANARY_HITS, tables.CANARY_REGISTRY)
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
        tables.replace_window(con, tables.CANARY_HITS, hits, window)
        tables.replace_window(con, tables.CANARY_REGISTRY, table, window)
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
