"""Run the daily-audit job in-process over a day range: what the CLI does, the same code the
schedule runs."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import traceback
import warnings
from pathlib import Path

from dagster import DagsterInstance

from audits.errors import AuditFailed, InputError
from pipelines.definitions import build_definitions
from pipelines.partitions import FIRST_DAY
from pipelines.resources import AuditConfig
from pipelines.window import RANGE_END_TAG, RANGE_START_TAG

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


def check_days(start: dt.date, end: dt.date) -> None:
    first = dt.date.fromisoformat(FIRST_DAY)
    last = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    if start < first or end > last:
        raise InputError(
            f"days {start}..{end} are outside the partitions {first}..{last}; "
            "check the archive's dates or pass --start/--end"
        )


def run_audit(audit: AuditConfig, database: str, start: dt.date, end: dt.date) -> None:
    """Materialise every asset of the daily-audit job for the days ``start..end``."""
    check_days(start, end)
    job = build_definitions(audit, database).resolve_job_def("daily_audit")
    tags = {RANGE_START_TAG: start.isoformat(), RANGE_END_TAG: end.isoformat()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            job.execute_in_process(
                run_config=_QUIET_DAGSTER, instance=DagsterInstance.ephemeral(), tags=tags
            )
        except InputError:
            raise
        except Exception as exc:
            cause = getattr(exc, "user_exception", None) or exc
            if isinstance(cause, InputError):
                raise cause from None
            log = Path(audit.out_dir) / "error.log"
            log.write_text("".join(traceback.format_exception(cause)))
            first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise AuditFailed(f"audit failed: {first_line} (details in {log})") from None
