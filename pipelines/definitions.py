"""The Dagster definitions: every asset, check, job, schedule and sensor, and their resources.

``dagster dev -m pipelines.definitions`` serves them; ``stealwatch audit`` runs the same job
in-process with resources built from its arguments. Environment variables configure the
deployed resources: ``STEALWATCH_LOGS`` (archive root), ``STEALWATCH_OUT`` (output folder),
``STEALWATCH_DB`` (DuckDB file, default ``$STEALWATCH_OUT/stealwatch.duckdb``),
``STEALWATCH_MODEL``, ``STEALWATCH_REFERENCE``, ``STEALWATCH_TRAIN``, ``STEALWATCH_HOLDOUT``,
``STEALWATCH_CANARIES`` (the canary registry, TOML).
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import Definitions
from dagster_duckdb import DuckDBResource

from assets.canaries import canary_assets
from assets.detection import detection_assets
from assets.forensics import forensics_assets
from assets.ingest import ingest_assets
from assets.monitoring import monitoring_assets
from assets.privacy import privacy_assets
from assets.report import report_assets
from assets.risk import risk_assets
from pipelines.jobs import daily_audit_job, daily_audit_schedule
from pipelines.resources import AuditConfig
from pipelines.sensors import new_archive_files

ALL_ASSETS = [
    *ingest_assets,
    *canary_assets,
    *detection_assets,
    *forensics_assets,
    *monitoring_assets,
    *privacy_assets,
    *risk_assets,
    *report_assets,
]


def build_definitions(audit: AuditConfig, database: str) -> Definitions:
    """Definitions bound to one archive, output folder and DuckDB file."""
    return Definitions(
        assets=ALL_ASSETS,
        jobs=[daily_audit_job],
        schedules=[daily_audit_schedule],
        sensors=[new_archive_files],
        resources={"duckdb": DuckDBResource(database=database), "audit": audit},
    )


def resources_from_env() -> tuple[AuditConfig, str]:
    out_dir = os.environ.get("STEALWATCH_OUT", "stealwatch-out")
    audit = AuditConfig(
        logs=os.environ.get("STEALWATCH_LOGS", "archive"),
        out_dir=out_dir,
        model=os.environ.get("STEALWATCH_MODEL"),
        reference=os.environ.get("STEALWATCH_REFERENCE"),
        train=os.environ.get("STEALWATCH_TRAIN"),
        holdout=os.environ.get("STEALWATCH_HOLDOUT"),
        canaries=os.environ.get("STEALWATCH_CANARIES"),
    )
    database = os.environ.get("STEALWATCH_DB", str(Path(out_dir) / "stealwatch.duckdb"))
    return audit, database


defs = build_definitions(*resources_from_env())
