"""Monitoring asset: the daily confidence and margin statistics of the served responses.

A thin wrapper over :mod:`audits.confidence`: loads ``--model`` and its ``--train`` (and
``--holdout``) rows like the privacy audit does, reads a bounded, deterministic sample of each
day's logged probabilities from DuckDB (plus up to ``HISTORY_DAYS`` earlier days, the
low-margin baseline's history) and writes the ``confidence_daily`` table, replacing the window's
rows. Without the model or its training data the table gets no rows and the metadata says why.
"""

import datetime as dt

import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from assets.common import preview
from assets.partitions import DUCKDB_POOL
from assets.resources import AuditConfig, audit_window
from audits import confidence as cf
from audits import tables

NEEDS = "needs --model (serving probabilities) and --train (better with --holdout)"


class ConfidenceConfig(Config):
    """Run configuration: the per-day sample size and the sampling seed."""

    max_per_day: int = cf.MAX_PER_DAY
    reference_rows: int = cf.MAX_REFERENCE_ROWS
    seed: int = 0


@asset(deps=["events"], pool=DUCKDB_POOL, group_name="monitoring")
def confidence_monitor(
    context: AssetExecutionContext,
    config: ConfidenceConfig,
    duckdb: DuckDBResource,
    audit: AuditConfig,
) -> MaterializeResult:
    """Per UTC day, how the served confidences and margins compare with the model's on its
    training and holdout data (two-sample KS), the low-margin share, and alerts when a day looks
    like training data or shifts toward near-boundary queries."""
    baseline, reason = _baseline(audit, config)
    with duckdb.get_connection() as con:
        tables.create(con, tables.CONFIDENCE_DAILY)
        window = audit_window(context, audit, con)
        if window is None:
            return MaterializeResult(metadata={"rows": 0, "status": "no events"})
        if baseline is None:
            tables.delete_window(con, tables.CONFIDENCE_DAILY, window)
            context.log.info(f"confidence monitoring skipped: {reason}")
            return MaterializeResult(metadata={"rows": 0, "status": MetadataValue.text(reason)})
        table = _daily(con, window, baseline, config)
        tables.replace_window(con, tables.CONFIDENCE_DAILY, table, window)
    alerts = table.filter(pl.col("alert").is_not_null())
    return MaterializeResult(
        metadata={
            "rows": table.height,
            "alerts": alerts.height,
            "window": f"{window[0]}..{window[1]}",
            "baseline": MetadataValue.json(baseline.describe()),
            "preview": preview(
                table.select("day", "n", "ks_train", "ks_holdout", "low_margin_share", "alert")
            ),
        }
    )


def _baseline(audit: AuditConfig, config: ConfidenceConfig) -> tuple[cf.Baseline | None, str]:
    """The model's confidences on its own data, or ``None`` and why not."""
    if not (audit.model and audit.train):
        return None, f"skipped: {NEEDS}"
    from audits.privacy.data import read_table, to_labelled

    model = audit.served_model()
    if model.label_only:
        return None, "skipped: the model serves labels only, so it has no confidences"
    kwargs = {
        "label_column": audit.label_column,
        "classes": model.classes_,
        "width": model.n_features_in,
    }
    train = to_labelled(read_table(audit.train, "training data"), name="training data", **kwargs)
    holdout = None
    if audit.holdout:
        frame = read_table(audit.holdout, "holdout data")
        holdout = to_labelled(frame, name="holdout data", **kwargs)
    baseline = cf.baseline_from_model(
        model,
        train.X,
        None if holdout is None else holdout.X,
        rows=config.reference_rows,
        seed=config.seed,
    )
    return baseline, "ok"


def _responses(con, first: dt.date, last: dt.date, rows: int) -> tuple[pl.DataFrame, dict]:
    """A deterministic sample of at most ``rows`` responses with probabilities per day, and
    each day's full count."""
    usable = "probabilities IS NOT NULL AND len(probabilities) >= 2"
    sample = con.sql(
        f"SELECT day, probabilities FROM events WHERE day BETWEEN ? AND ? AND {usable} "
        "QUALIFY row_number() OVER (PARTITION BY day ORDER BY hash(event_id), event_id) <= ?",
        params=[first, last, rows],
    ).pl()
    counts = con.sql(
        f"SELECT day, count(*) FROM events WHERE day BETWEEN ? AND ? AND {usable} GROUP BY day",
        params=[first, last],
    ).fetchall()
    return sample, dict(counts)


def _daily(con, window, baseline: cf.Baseline, config: ConfidenceConfig) -> pl.DataFrame:
    start, end = window
    days = [
        r[0]
        for r in con.sql(
            "SELECT DISTINCT day FROM events WHERE day BETWEEN ? AND ? ORDER BY day",
            params=[start, end],
        ).fetchall()
    ]
    kwargs = {"max_per_day": config.max_per_day, "seed": config.seed}
    before = start - dt.timedelta(days=1)
    earlier, earlier_totals = _responses(
        con, start - dt.timedelta(days=cf.HISTORY_DAYS), before, config.max_per_day
    )
    history = cf.history_shares(earlier, baseline, totals=earlier_totals, **kwargs)
    responses, totals = _responses(con, start, end, config.max_per_day)
    return cf.daily_confidence(responses, baseline, days, totals=totals, history=history, **kwargs)


monitoring_assets = [confidence_monitor]
