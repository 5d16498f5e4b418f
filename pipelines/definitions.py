"""The Dagster definitions: every asset, check, job, schedule and sensor, and their resources.

``dagster dev -m pipelines.definitions`` serves them (:func:`defs`, built when Dagster loads
the code location, not when the module is imported); ``stealwatch audit`` runs the same job
in-process with resources built from its arguments. Environment variables configure the
deployed resources: ``STEALWATCH_LOGS`` (archive root), ``STEALWATCH_OUT`` (output folder),
``STEALWATCH_DB`` (DuckDB file, default ``$STEALWATCH_OUT/stealwatch.duckdb``),
``STEALWATCH_MODEL``, ``STEALWATCH_REFERENCE``, ``STEALWATCH_TRAIN``, ``STEALWATCH_HOLDOUT``,
``STEALWATCH_CANARIES`` (the canary registry, TOML), ``STEALWATCH_LAKE`` (a path or
``s3://bucket/prefix``: the Parquet storage mode; unset, the DuckDB file),
and ``STEALWATCH_DUCKDB_MEMORY`` (DuckDB's memory limit, default 1GB). A multiprocess run of
the CLI does not go through the environment: its settings travel in the run's config
(:func:`daily_audit_configured_per_run`).

``STEALWATCH_ENV`` picks the deployment profile: ``local`` (default: the daily-audit job runs
its steps in-process or in local processes) or ``k8s`` (each step a Kubernetes job through
``dagster-k8s``; needs ``STEALWATCH_LAKE``, since pods share no disk). See
``pipelines/profiles/k8s/dagster.yaml`` and the README's "Scale" section.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import Definitions, JobDefinition, definitions

from assets.canaries import canary_assets
from assets.detection import detection_assets
from assets.forensics import forensics_assets
from assets.ingest import ingest_assets, lake_ingest_assets
from assets.monitoring import monitoring_assets
from assets.privacy import privacy_assets
from assets.report import report_assets
from assets.resources import AuditConfig, StoreResource
from assets.risk import risk_assets
from pipelines.jobs import daily_audit_job, daily_audit_schedule
from pipelines.sensors import new_archive_files

PROFILES = ("local", "k8s")

AUDIT_ASSETS = [
    *canary_assets,
    *detection_assets,
    *forensics_assets,
    *monitoring_assets,
    *privacy_assets,
    *risk_assets,
    *report_assets,
]


def build_definitions(
    audit: AuditConfig, database: str, lake: str | None = None, profile: str = "local"
) -> Definitions:
    """Definitions bound to one archive, output folder and store (a DuckDB file, or a lake
    of Parquet day partitions with ``database`` as the scratch database)."""
    ingest = lake_ingest_assets if lake else ingest_assets
    return Definitions(
        assets=[*ingest, *AUDIT_ASSETS],
        jobs=[daily_audit_job],
        schedules=[daily_audit_schedule],
        sensors=[new_archive_files],
        resources={"duckdb": StoreResource(database=database, lake=lake), "audit": audit},
        executor=_executor(profile, lake),
    )


def _executor(profile: str, lake: str | None):
    if profile not in PROFILES:
        raise ValueError(f"STEALWATCH_ENV={profile!r}: expected one of {', '.join(PROFILES)}")
    if profile == "local":
        return None  # Dagster's default: in-process or multiprocess, chosen by run config
    if not lake:
        raise ValueError("STEALWATCH_ENV=k8s needs STEALWATCH_LAKE: pods share no DuckDB file")
    return k8s_executor()


# Window-level steps read the whole audit window: they get the larger pods.
WINDOW_STEPS = (
    "user_features",
    "user_scores",
    "incidents",
    "forensics",
    "privacy_audit",
    "confidence_monitor",
    "canary_hits",
    "risk_register",
    "report",
)


def k8s_executor():
    """Each step a Kubernetes job: day-partition steps sized by ``STEALWATCH_DAY_MEMORY``,
    window steps by ``STEALWATCH_WINDOW_MEMORY``, at most ``STEALWATCH_K8S_MAX_STEPS`` at once."""
    from dagster_k8s import k8s_job_executor

    def pod(memory: str, cpu: str) -> dict:
        limits = {"memory": memory}
        return {
            "container_config": {
                "resources": {"requests": {"cpu": cpu, **limits}, "limits": limits}
            }
        }

    window = pod(os.environ.get("STEALWATCH_WINDOW_MEMORY", "16Gi"), "2")
    return k8s_job_executor.configured(
        {
            "max_concurrent": int(os.environ.get("STEALWATCH_K8S_MAX_STEPS", "8")),
            "step_k8s_config": pod(os.environ.get("STEALWATCH_DAY_MEMORY", "4Gi"), "1"),
            "per_step_k8s_config": {step: window for step in WINDOW_STEPS},
        },
        name="stealwatch_k8s",
    )


def resources_from_env() -> tuple[AuditConfig, str, str | None]:
    """The audit settings, the DuckDB file and the lake root the environment names."""
    audit = AuditConfig(
        logs=os.environ.get("STEALWATCH_LOGS", "archive"),
        out_dir=os.environ.get("STEALWATCH_OUT", "stealwatch-out"),
        model=os.environ.get("STEALWATCH_MODEL"),
        reference=os.environ.get("STEALWATCH_REFERENCE"),
        train=os.environ.get("STEALWATCH_TRAIN"),
        holdout=os.environ.get("STEALWATCH_HOLDOUT"),
        canaries=os.environ.get("STEALWATCH_CANARIES"),
    )
    lake = os.environ.get("STEALWATCH_LAKE") or None
    default_db = ":memory:" if lake else str(Path(audit.out_dir) / "stealwatch.duckdb")
    return audit, os.environ.get("STEALWATCH_DB", default_db), lake


def daily_audit_configured_per_run() -> JobDefinition:
    """The daily-audit job over a lake, its store and audit settings given by each run's
    config (``resources.duckdb`` and ``resources.audit``): what the processes of a
    multiprocess run rebuild (``dagster.reconstructable`` needs a module-level factory), so
    they take the settings the run was launched with, not the environment's."""
    return Definitions(
        assets=[*lake_ingest_assets, *AUDIT_ASSETS],
        jobs=[daily_audit_job],
        resources={
            "duckdb": StoreResource.configure_at_launch(),
            "audit": AuditConfig.configure_at_launch(),
        },
    ).resolve_job_def("daily_audit")


def per_run_resources(audit: AuditConfig, database: str, lake: str) -> dict:
    """The run config of :func:`daily_audit_configured_per_run` for these settings."""
    fields = {name: getattr(audit, name) for name in AuditConfig.model_fields}
    return {
        "duckdb": {"config": {"database": database, "lake": lake}},
        "audit": {"config": {k: v for k, v in fields.items() if v is not None}},
    }


@definitions
def defs() -> Definitions:
    """The deployed code location (``dagster dev -m pipelines.definitions``), built when Dagster
    loads it: importing this module (the CLI, a multiprocess run's children, the tests) reads
    no environment."""
    return build_definitions(*resources_from_env(), os.environ.get("STEALWATCH_ENV", "local"))
