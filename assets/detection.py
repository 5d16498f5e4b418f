"""Detection assets: per-user features, user scores (with Sybil groups) and incidents.

Thin wrappers over :mod:`audits.features` and :mod:`audits.scoring`: each reads the audit
window's events from the store a batch of whole users at a time (a
:class:`audits.event_source.DuckDBSource`), writes its table (replacing that window's rows;
every log-derived value reaches SQL as a bound parameter or a registered frame, never as SQL
text) and reports metadata.
"""

from pathlib import Path

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, asset
from dagster_duckdb import DuckDBResource

from assets.common import preview
from assets.partitions import DUCKDB_POOL
from assets.progress import progress_for
from assets.resources import AuditConfig, audit_window
from audits import store, tables
from audits.errors import InputError
from audits.event_source import DuckDBSource
from audits.features import FEATURE_COLUMNS, window_features
from audits.scoring import (
    INCIDENTS_SCHEMA,
    audit_scores,
    build_incidents,
    group_features,
)
from audits.tables import read_window, replace_window


def load_reference(audit: AuditConfig) -> np.ndarray | None:
    """The ``--reference`` inputs as a matrix (numeric columns, the label column dropped)."""
    if not audit.reference:
        return None
    path = Path(audit.reference)
    if not path.exists():
        raise InputError(f"reference data not found: {path}")
    try:
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"cannot read reference data {path}: {exc}") from None
    numeric = [c for c, t in frame.schema.items() if t.is_numeric() and c != audit.label_column]
    if not numeric:
        raise InputError(f"reference data {path} has no numeric columns")
    return frame.select(numeric).to_numpy().astype(np.float64)


MIN_USERS = 3  # fewer users than this in the window: nothing to compare anyone with


def _window_or_empty(context, audit, con):
    """The audit window, or ``None`` when it holds too few users to score."""
    window = audit_window(context, audit, con)
    if window is None:
        context.log.info("no events: nothing to score")
        return None
    store.ensure_schema(con)  # the per-day partials, derived once for a store without them
    users = con.sql(
        "SELECT count(DISTINCT user_id) FROM user_day WHERE day BETWEEN ? AND ?",
        params=list(window),
    ).fetchall()[0][0]
    if users < MIN_USERS:
        context.log.info(f"{users} users in {window[0]}..{window[1]}: too few to score")
        return None
    return window


def _forget_window(context, audit, con, *written: tables.Table) -> None:
    """Nothing to score: an earlier run's rows of the window go, so that no later step reads
    them as this run's."""
    window = audit_window(context, audit, con)
    for table in written:
        if window is not None and tables.exists(con, table):
            tables.delete_window(con, table, window)


@asset(deps=["events"], pool=DUCKDB_POOL, group_name="detection")
def user_features(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """One row per user of the audit window: volume, timing, query, geometry, distribution,
    response and repetition features."""
    reference = load_reference(audit)
    with duckdb.get_connection() as con:
        window = _window_or_empty(context, audit, con)
        if window is None:
            return MaterializeResult(metadata={"rows": 0})
        source = DuckDBSource(con, window)
        progress_for(context)(f"detection: features of each user in {window[0]}..{window[1]}")
        features = window_features(source, reference)
        replace_window(con, tables.USER_FEATURES, features, window)
    return MaterializeResult(
        metadata={
            "rows": features.height,
            "events": source.n_events,
            "window": f"{window[0]}..{window[1]}",
            "preview": preview(features.select("user_id", *FEATURE_COLUMNS[:6])),
        }
    )


@asset(deps=["events", "user_features"], pool=DUCKDB_POOL, group_name="detection")
def user_scores(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """Every detector's score, the combined score, its threshold and the flag, per user;
    Sybil groups scored on their pooled traffic (``OUT/user_scores.parquet`` is written by
    ``user_scores_file``, after forensics)."""
    reference = load_reference(audit)
    with duckdb.get_connection() as con:
        window = _window_or_empty(context, audit, con)
        if window is None:
            _forget_window(context, audit, con, tables.USER_SCORES, tables.SCORE_GROUPS)
            return MaterializeResult(metadata={"rows": 0, "flagged": 0})
        progress_for(context)("detection: scoring every user with each detector")
        features = read_window(con, tables.USER_FEATURES, window)
        if features.height == 0:
            features = None
        source = DuckDBSource(con, window)
        _, scores, summary = audit_scores(
            source, reference, features=features, fp_budget=audit.fp_budget
        )
        if summary["warning"]:
            context.log.warning(summary["warning"])
        replace_window(con, tables.USER_SCORES, scores, window)
        groups = summary["groups"].with_columns(
            pl.lit(summary["threshold"]).alias("threshold"),
            pl.lit(summary["threshold_method"]).alias("threshold_method"),
        )
        replace_window(con, tables.SCORE_GROUPS, groups, window)
    flagged = scores.filter(pl.col("flagged"))
    return MaterializeResult(
        metadata={
            "rows": scores.height,
            "flagged": flagged.height,
            "threshold": float(summary["threshold"]),
            "threshold_method": summary["threshold_method"],
            "fp_budget": float(summary["fp_budget"]),
            "flagged_share": float(summary["flagged_share"]),
            "warning": summary["warning"] or "",
            "groups": groups.height,
            "flagged_groups": int(groups["flagged"].sum()) if groups.height else 0,
            "preview": preview(
                scores.sort("score", descending=True).select(
                    "user_id", "score", "flagged", "n_events", "score_extraction", "group_id"
                )
            ),
        }
    )


@asset(
    deps=["events", "user_features", "user_scores", "canary_hits"],
    pool=DUCKDB_POOL,
    group_name="detection",
)
def incidents(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """Flagged users and Sybil groups as incidents with a stable id, severity, first / last
    seen, volume and the evidence (features that stand out vs the population); and every key
    that sent a canary query (kind ``canary``, its matching events as evidence)."""
    with duckdb.get_connection() as con:
        window = _window_or_empty(context, audit, con)
        if window is None:
            return _canary_incidents_only(context, audit, con)
        source = DuckDBSource(con, window)
        features = read_window(con, tables.USER_FEATURES, window)
        scores = read_window(con, tables.USER_SCORES, window)
        tables.create(con, tables.SCORE_GROUPS)
        groups = read_window(con, tables.SCORE_GROUPS, window)
        threshold = (
            float(groups["threshold"][0])
            if groups.height
            else float(scores.filter(pl.col("flagged"))["score"].min() or np.inf)
        )
        group_feats = None
        flagged_groups = groups.filter(pl.col("flagged")) if groups.height else groups
        if flagged_groups.height:
            members = (
                flagged_groups.select("group_id", "members")
                .explode("members")
                .rename({"members": "user_id"})
            )
            group_feats = group_features(source, members, load_reference(audit))
        summary = {"threshold": threshold, "groups": groups, "group_features": group_feats}
        table = (
            build_incidents(source, features, scores, summary)
            if scores.height
            else (pl.DataFrame(schema=INCIDENTS_SCHEMA))
        )
        table = pl.concat([table, _canary_incidents(con, window)])
        replace_window(con, tables.INCIDENTS, table, window)
    return MaterializeResult(
        metadata={
            "rows": table.height,
            "groups": int((table["kind"] == "group").sum()) if table.height else 0,
            "canary": int((table["kind"] == "canary").sum()) if table.height else 0,
            "preview": preview(
                table.select("incident_id", "kind", "subject", "severity", "n_events", "score")
            ),
        }
    )


def _canary_incidents(con, window) -> pl.DataFrame:
    from assets.canaries import read_hits
    from audits.canaries import canary_incidents

    hits, registry = read_hits(con, window)
    return canary_incidents(hits, registry)


def _canary_incidents_only(context, audit: AuditConfig, con) -> MaterializeResult:
    """Too few users to score: a canary needs no population, so its incidents still stand."""
    window = audit_window(context, audit, con)
    if window is None:
        return MaterializeResult(metadata={"rows": 0})
    table = _canary_incidents(con, window)
    replace_window(con, tables.INCIDENTS, table, window)
    return MaterializeResult(metadata={"rows": table.height, "canary": table.height})


detection_assets = [user_features, user_scores, incidents]
