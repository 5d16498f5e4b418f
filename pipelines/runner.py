"""Run the daily-audit job in-process over a day range: what the CLI does, the same code the
schedule runs."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

from assets.partitions import FIRST_DAY
from assets.resources import RANGE_END_TAG, RANGE_START_TAG, AuditConfig
from audits.errors import AuditFailed, InputError
from pipelines.definitions import (
    build_definitions,
    daily_audit_configured_per_run,
    per_run_resources,
)

_PRELOAD = ["pipelines.definitions", "audits.detectors", "audits.forensics", "reports.render"]
_QUIET_DAGSTER = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def show_progress(enabled: bool = True) -> None:
    """Print the ``stealwatch`` logger's progress lines on stderr."""
    logger = logging.getLogger("stealwatch")
    if enabled and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    logger.propagate = False


STALE_OUTPUTS = (
    "report.html",
    "ingest_summary.json",
    "user_scores.parquet",
    "risk_register.csv",
    "attack_defence_matrix.csv",
    "error.log",
    "privacy/privacy_audit.json",
    "privacy/junit.xml",
    "privacy/privacy_report.html",
)
"""Files of the output folder that a run writes: an earlier run's copy is removed before the
run starts, so that a run that skips a step (the privacy audit without a model and data) or
fails shows no earlier run's file as its own. No step reads them back (the risk register and
the report take the privacy result from the ``privacy_audit`` table); the CLI reads
``ingest_summary.json``."""


def remove_stale_outputs(out: Path) -> list[Path]:
    """Remove an earlier run's :data:`STALE_OUTPUTS` from ``out``; the paths removed."""
    removed = []
    for name in STALE_OUTPUTS:
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


def check_days(start: dt.date, end: dt.date) -> None:
    first = dt.date.fromisoformat(FIRST_DAY)
    last = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    if start < first or end > last:
        raise InputError(
            f"days {start}..{end} are outside the partitions {first}..{last}; "
            "check the archive's dates or pass --start/--end"
        )


def run_audit(
    audit: AuditConfig,
    database: str,
    start: dt.date,
    end: dt.date,
    *,
    lake: str | None = None,
    workers: int = 1,
) -> None:
    """Materialise every asset of the daily-audit job for the days ``start..end``: in this
    process, or with ``workers`` > 1 (lake mode) under Dagster's multiprocess executor, each
    day partition's ingest a process of its own."""
    check_days(start, end)
    tags = {RANGE_START_TAG: start.isoformat(), RANGE_END_TAG: end.isoformat()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if workers > 1:
            if not lake:
                raise InputError("--workers needs --lake: a DuckDB file takes one writer at a time")
            _run_multiprocess(audit, database, lake, tags, workers)
            return
        job = build_definitions(audit, database, lake).resolve_job_def("daily_audit")
        try:
            with _instance() as instance:
                job.execute_in_process(run_config=_QUIET_DAGSTER, instance=instance, tags=tags)
        except InputError:
            raise
        except Exception as exc:
            cause = getattr(exc, "user_exception", None) or exc
            if isinstance(cause, InputError):
                raise cause from None
            _fail(audit, "".join(traceback.format_exception(cause)), str(cause) or repr(cause))


def _fail(audit: AuditConfig, details: str, message: str) -> None:
    log = Path(audit.out_dir) / "error.log"
    log.write_text(details)
    first_line = (message.strip().splitlines() or ["unknown error"])[0]
    raise AuditFailed(f"audit failed: {first_line} (details in {log})") from None


def _run_multiprocess(
    audit: AuditConfig, database: str, lake: str, tags: dict[str, str], workers: int
) -> None:
    run_config = {
        **_QUIET_DAGSTER,
        "resources": per_run_resources(audit, database, lake),
        "execution": {
            "config": {
                "multiprocess": {
                    "max_concurrent": workers,
                    # steps fork from a server that has imported the pipeline once, instead
                    # of each step process importing Dagster, PyOD and torch again
                    "start_method": {"forkserver": {"preload_modules": _PRELOAD}},
                }
            }
        },
    }
    with _child_environment(), _temporary_instance() as instance:
        result = execute_job(
            reconstructable(daily_audit_configured_per_run),
            instance=instance,
            tags=tags,
            run_config=run_config,
            raise_on_error=False,
        )
        if result.success:
            return
        failures = [
            event.step_failure_data.error
            for event in result.all_events
            if event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data
        ]
    error = failures[0] if failures else None
    while error is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause or error
        if error.cause is None:
            break
    if error is not None and error.cls_name == "InputError":
        raise InputError(error.message.split(": ", 1)[-1].strip())
    details = error.to_string() if error else "the run failed without a step failure"
    _fail(audit, details, error.message.split(": ", 1)[-1] if error else details)


@contextmanager
def _child_environment() -> Iterator[None]:
    """How a multiprocess run's children print and compute (their audit settings come with
    the run's config)."""
    values = {
        "STEALWATCH_PROGRESS": "1" if logging.getLogger("stealwatch").handlers else "0",
        # OpenMP threads that spin at barriers starve each other when steps run side by side
        # (scikit-learn's gradient boosting took minutes instead of seconds): let them sleep
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"),  # as in-process
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _instance() -> DagsterInstance:
    """The instance in ``$DAGSTER_HOME`` when it is set (so the Dagster UI on the same home
    shows the CLI's runs and materialisations), else a throwaway one in memory."""
    if os.environ.get("DAGSTER_HOME"):
        _dagster_home()
        return DagsterInstance.get()
    return DagsterInstance.ephemeral()


def _dagster_home() -> Path:
    """``$DAGSTER_HOME``, created when it does not exist yet (Dagster refuses a missing one)."""
    home = Path(os.environ["DAGSTER_HOME"])
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create DAGSTER_HOME {home}: {exc.strerror}") from None
    return home


@contextmanager
def _temporary_instance() -> Iterator[DagsterInstance]:
    """A throwaway Dagster instance on disk (the multiprocess executor needs one), with the
    project's pool limits: writers of the window tables one at a time. The instance in
    ``$DAGSTER_HOME`` instead, when it is set (its ``dagster.yaml`` sets the pools)."""
    if os.environ.get("DAGSTER_HOME"):
        _dagster_home()
        with DagsterInstance.get() as instance:
            yield instance
        return
    with tempfile.TemporaryDirectory(prefix="stealwatch-dagster-") as home:
        overrides = {
            "concurrency": {"pools": {"default_limit": 1}},
            # step processes log "started" lines to the console at this level, run config
            # aside: progress comes from the stealwatch logger instead
            "python_logs": {"python_log_level": "CRITICAL"},
        }
        with DagsterInstance.local_temp(tempdir=home, overrides=overrides) as instance:
            yield instance
