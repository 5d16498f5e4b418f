"""Risk asset: the release review's risk register and attack-defence matrix for the window.

A thin wrapper over :mod:`audits.risk`: gathers the window's incidents (with forensics'
damage and defence replay joined), linked groups, canary hits, the privacy audit's result (the
``privacy_audit`` asset's table), the
``confidence_daily`` rows when confidence monitoring ran, and what the logs show about the
controls in place (busiest key per minute / hour / day, whether and how precisely
probabilities are served, repeated queries per key). Writes the ``risk_register`` and
``attack_defence_matrix`` tables (replacing the window's rows) and ``OUT/risk_register.csv``
and ``OUT/attack_defence_matrix.csv`` (atomic writes).
"""

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from assets.canaries import read_hits
from assets.common import preview
from assets.partitions import DUCKDB_POOL
from assets.resources import AuditConfig, audit_window
from audits import risk, tables
from audits.forensics.records import read_incident_damage
from audits.privacy_results import read_privacy
from audits.tables import exists, read_window, replace_window

PROBABILITY_SAMPLE = 2_000


def findings(con, window) -> risk.Findings:
    """Everything the register is generated from, read from the store."""
    incidents = (
        read_window(con, tables.INCIDENTS, window)
        if exists(con, tables.INCIDENTS)
        else pl.DataFrame(schema={"kind": pl.String, "subject": pl.String})
    )
    damage = read_window(con, tables.DAMAGE, window) if exists(con, tables.DAMAGE) else None
    hits, registry = read_hits(con, window)
    confidence = None
    if exists(con, tables.CONFIDENCE_DAILY):
        confidence = read_window(con, tables.CONFIDENCE_DAILY, window)
    detection_ran = exists(con, tables.USER_SCORES) and bool(
        con.sql(
            "SELECT count(*) FROM user_scores WHERE window_start = ? AND window_end = ?",
            params=list(window),
        ).fetchall()[0][0]
    )
    return risk.Findings(
        incidents=incidents,
        damage=damage,
        incident_damage=read_incident_damage(con, window),
        privacy=read_privacy(con),
        canary_hits=hits if registry.height else None,
        canaries=registry.height,
        confidence=confidence,
        usage=_usage(con, window),
        controls=_controls(con, window),
        detection_ran=detection_ran,
    )


def _usage(con, window) -> pl.DataFrame:
    # distinct queries counted by their 64-bit hash: 8 bytes per query in DuckDB's hash table
    # instead of the whole vector (a collision among a key's 10^6 queries: p ~ 3e-8)
    return con.sql(
        "SELECT user_id, count(*) AS n, count(DISTINCT hash(features)) AS unique_queries "
        "FROM events WHERE day BETWEEN ? AND ? GROUP BY user_id ORDER BY user_id",
        params=list(window),
    ).pl()


def _controls(con, window) -> dict:
    """What the logs show: the busiest key per minute, hour and day, and how probabilities
    are served."""
    params = list(window)
    busiest = {}
    for name, unit in (("minute", "minute"), ("hour", "hour")):
        busiest[f"max_per_{name}"] = con.sql(
            f"SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM events "
            f"WHERE day BETWEEN ? AND ? GROUP BY user_id, date_trunc('{unit}', ts))",
            params=params,
        ).fetchall()[0][0]
    # day-level figures add up the per-day partial aggregates, not the raw events
    busiest["max_per_day"], total, with_proba = con.sql(
        "SELECT coalesce(max(n), 0), coalesce(sum(n), 0), coalesce(sum(p), 0) FROM "
        "(SELECT sum(n_events) AS n, sum(n_with_probabilities) AS p FROM user_day "
        "WHERE day BETWEEN ? AND ? GROUP BY user_id, day)",
        params=params,
    ).fetchall()[0]
    sample = con.sql(
        "SELECT probabilities FROM events WHERE day BETWEEN ? AND ? AND probabilities IS NOT NULL "
        "ORDER BY hash(event_id), event_id LIMIT ?",
        params=[*params, PROBABILITY_SAMPLE],
    ).fetchall()
    return {
        **busiest,
        "probabilities_share": with_proba / total if total else None,
        "probability_decimals": _decimals([v for (row,) in sample for v in row or []]),
    }


def _decimals(values: list[float], most: int = 9) -> int | None:
    """The fewest decimals that represent every sampled probability."""
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64)
    for d in range(most + 1):
        if np.all(np.abs(np.round(v, d) - v) <= 1e-12):
            return d
    return None


@asset(
    deps=["incidents", "forensics", "privacy_audit", "canary_hits", "confidence_monitor"],
    pool=DUCKDB_POOL,
    group_name="report",
)
def risk_register(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """Per threat (extraction, Sybil extraction, membership inference, canary
    reconnaissance, training-data-like traffic, boundary probing): the evidence of this audit,
    likelihood, impact, risk, the control in place and the one to add; and the matrix of what
    each defence did against each attack in this audit."""
    with duckdb.get_connection() as con:
        tables.create(con, tables.RISK_REGISTER, tables.ATTACK_DEFENCE_MATRIX)
        window = audit_window(context, audit, con)
        if window is None:
            return MaterializeResult(metadata={"rows": 0, "status": "no events"})
        found = findings(con, window)
        register = risk.risk_register(found)
        matrix = risk.defence_matrix(found)
        replace_window(con, tables.RISK_REGISTER, register, window)
        replace_window(con, tables.ATTACK_DEFENCE_MATRIX, matrix, window)
    out = audit.out_path
    path = risk.write_csv_atomic(register, out / "risk_register.csv")
    matrix_path = risk.write_csv_atomic(matrix, out / "attack_defence_matrix.csv")
    return MaterializeResult(
        metadata={
            "rows": register.height,
            "high": int((register["risk"] == risk.HIGH).sum()),
            "path": MetadataValue.path(str(path)),
            "matrix": MetadataValue.path(str(matrix_path)),
            "window": f"{window[0]}..{window[1]}",
            "preview": preview(register.select("threat", "likelihood", "impact", "risk")),
        }
    )


risk_assets = [risk_register]
