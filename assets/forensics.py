"""Forensics asset: the damage of every flagged user and group, linked Sybil groups and the
defence replay of every incident.

A thin wrapper over :mod:`audits.forensics`: reads the window's scores and incidents from
DuckDB and its events through a :class:`audits.event_source.DuckDBSource` (one subject's events
at a time, the legitimate users' a batch at a time, samples for the reference and the
probability columns: memory follows a subject and a batch, not the window) and writes its
own tables only, replacing the window's rows: ``damage`` (each flagged user, linked group and
group incident), ``incident_damage`` and ``defence_replay`` (each incident's damage and replay,
joined to ``incidents`` when read) and ``user_forensics`` (each flagged user's fidelity and
linked group, joined to ``user_scores`` when read, as in ``OUT/user_scores.parquet``, which the
``user_scores_file`` asset writes). Every log-derived value reaches SQL as a bound parameter or
a registered frame.
"""

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, asset
from dagster_duckdb import DuckDBResource

from assets.common import preview
from assets.detection import load_reference
from assets.partitions import DUCKDB_POOL
from assets.progress import progress_for
from assets.resources import AuditConfig, audit_window
from audits import forensics as fx
from audits import tables
from audits.errors import InputError
from audits.event_source import DuckDBSource, EventSource
from audits.forensics import records
from audits.forensics.run import Reference

# a store from before the training budget and the typed curve (its curve/replay JSON stays null)
DAMAGE_MIGRATIONS = tuple(
    f"ALTER TABLE damage ADD COLUMN IF NOT EXISTS {name} {tables.sql_type(dtype)}"
    for name, dtype in tables.DAMAGE.schema.items()
    if name in ("trained_on", "curve_queries", "curve_fidelity")
)
OUTPUTS = (tables.DAMAGE, tables.INCIDENT_DAMAGE, tables.DEFENCE_REPLAY, tables.USER_FORENSICS)


class ForensicsConfig(Config):
    """Run configuration: the defences to replay and the cost bounds."""

    rate_limit_per_minute: int | None = fx.DEFAULT_RATE_LIMITS["minute"]
    rate_limit_per_hour: int | None = fx.DEFAULT_RATE_LIMITS["hour"]
    rate_limit_per_day: int | None = fx.DEFAULT_RATE_LIMITS["day"]
    round_decimals: int = fx.DEFAULT_ROUND_DECIMALS
    noise_scale: float = fx.DEFAULT_NOISE_SCALE
    dedup_tolerance: float = fx.DEFAULT_DEDUP_TOLERANCE
    reference_rows: int = fx.REFERENCE_ROWS
    train_budget: int = fx.TRAIN_BUDGET  # queries per surrogate at most (0: every query)
    workers: int = 0  # processes estimating subjects (0: one per core, at most 4; 1: in-process)
    seed: int = 0

    def rate_limits(self) -> dict[str, int]:
        limits = {
            "minute": self.rate_limit_per_minute,
            "hour": self.rate_limit_per_hour,
            "day": self.rate_limit_per_day,
        }
        return {k: int(v) for k, v in limits.items() if v is not None and v > 0}

    def settings(self) -> fx.ForensicsSettings:
        """The run's settings, the defences spelled once in their :class:`DefenceSettings`."""
        defences = fx.DefenceSettings.of(
            self.rate_limits(),
            self.round_decimals,
            self.noise_scale,
            self.dedup_tolerance,
            seed=self.seed,
        )
        return fx.ForensicsSettings(
            defences, self.reference_rows, self.train_budget, self.workers, self.seed
        )


def model_reference(audit: AuditConfig, rows: int, seed: int) -> Reference | None:
    """``--reference`` labelled by ``--model`` when both are given (``None`` otherwise: the run
    samples unflagged users' logged traffic)."""
    reference = load_reference(audit) if audit.model else None
    if reference is None:
        return None
    model = audit.served_model()
    if reference.shape[1] != model.n_features_in:
        raise InputError(
            f"reference data has {reference.shape[1]} columns, the model takes "
            f"{model.n_features_in} inputs"
        )
    if len(reference) > rows:
        pick = np.random.default_rng(seed).choice(len(reference), rows, replace=False)
        reference = reference[np.sort(pick)]
    return reference, np.asarray(model.predict(reference)), "reference"


@asset(deps=["user_scores", "incidents"], pool=DUCKDB_POOL, group_name="forensics")
def forensics(
    context: AssetExecutionContext,
    config: ForensicsConfig,
    duckdb: DuckDBResource,
    audit: AuditConfig,
) -> MaterializeResult:
    """How much of the model each flagged user and group obtained (surrogate fidelity with a
    bootstrap interval, fidelity against queries, queries to 90%), linked groups, and what a
    rate limit, output minimisation, randomised responses or query deduplication would have done
    to each incident and to legitimate users."""
    with duckdb.get_connection() as con:
        window = audit_window(context, audit, con)
        tables.create(con, *OUTPUTS)
        for migration in DAMAGE_MIGRATIONS:
            con.execute(migration)
        if window is None:
            return MaterializeResult(metadata={"rows": 0})
        tables.create(con, tables.USER_SCORES)
        scores = tables.read_window(con, tables.USER_SCORES, window)
        flagged = scores.filter(pl.col("flagged").fill_null(False))["user_id"].to_list()
        for table in OUTPUTS:  # an earlier run's rows of this window go, whatever this one finds
            tables.delete_window(con, table, window)
        if not flagged:
            context.log.info("no flagged users: no damage to estimate")
            return MaterializeResult(metadata={"rows": 0, "flagged": 0})
        incidents = (
            tables.read_window(con, tables.INCIDENTS, window, order=())
            if tables.exists(con, tables.INCIDENTS)
            else tables.INCIDENTS.empty()
        ).select("incident_id", "kind", "subject", "members")
        table, fidelity, groups, incident_damage = forensics_of(
            config,
            audit,
            DuckDBSource(con, window),
            scores,
            flagged,
            incidents,
            progress_for(context),
        )
        _write(con, window, table, fidelity, groups, incident_damage)
    return MaterializeResult(
        metadata={
            "rows": table.height,
            "flagged": len(flagged),
            "groups": len(set(groups.values())),
            "incidents": len(incident_damage),
            "reference": table["reference"][0] if table.height else "",
            "window": f"{window[0]}..{window[1]}",
            "preview": preview(
                table.select(
                    "subject",
                    "kind",
                    "est_fidelity",
                    "ci_low",
                    "ci_high",
                    "queries",
                    "queries_to_90",
                )
            ),
        }
    )


def forensics_of(config, audit, source: EventSource, scores, flagged, incidents, log):
    """The damage table, each flagged user's fidelity, the linked groups and each incident's
    ``(damage, replay)`` from the window's events in ``source``
    (:func:`audits.forensics.run_forensics`)."""
    settings = config.settings()
    settings.check()
    reference = model_reference(audit, config.reference_rows, config.seed)
    result = fx.run_forensics(source, scores, flagged, incidents, settings, reference, log)
    table = pl.DataFrame(result.rows, schema=tables.DAMAGE.schema)
    return table, result.fidelity, result.groups, result.incident_damage


def _write(con, window, table, fidelity, groups, incident_damage) -> None:
    """The forensics tables of the window, each replaced whole (no other table is touched)."""
    damage, replay = records.incident_frames(incident_damage)
    tables.replace_window(con, tables.DAMAGE, table, window)
    tables.replace_window(con, tables.INCIDENT_DAMAGE, damage, window)
    tables.replace_window(con, tables.DEFENCE_REPLAY, replay, window)
    tables.replace_window(con, tables.USER_FORENSICS, records.user_frame(fidelity, groups), window)


forensics_assets = [forensics]
