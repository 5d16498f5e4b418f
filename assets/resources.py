"""Resources shared by every asset: where the archive and the outputs are, and the audit window
(its partition range, else the configured days, else all days)."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path

from dagster import AssetExecutionContext, ConfigurableResource
from dagster_duckdb import DuckDBResource
from pydantic import PrivateAttr

from audits import store


class StoreResource(DuckDBResource):
    """Where the audit's tables live: the DuckDB file (``database``, the default), or, when
    ``lake`` is set, day partitions as Parquet under a path or ``s3://`` root that steps on
    different hosts share (``database`` is then a scratch file or ``:memory:``)."""

    lake: str | None = None

    @contextmanager
    def get_connection(self):
        if not self.lake:
            with super().get_connection() as con:
                store.configure(con)
                yield con
            return
        from audits.lake import Lake, session

        with session(Lake(self.lake), self.database) as con:
            yield con


class AuditConfig(ConfigurableResource):
    """What one audit run looks at and where it writes.

    ``start``/``end`` bound the audit window (inclusive UTC days, ``YYYY-MM-DD``); when unset the
    window is every day present in the ``events`` table.
    """

    logs: str
    out_dir: str
    log_format: str = "auto"
    gateway_logs: str | None = None
    mapping: str | None = None
    principal_header: str = "X-Api-Key-Id"
    ip_header: str = "X-Forwarded-For"
    session_header: str = "X-Session-Id"
    model: str | None = None
    reference: str | None = None
    train: str | None = None
    holdout: str | None = None
    canaries: str | None = None
    label_column: str = "label"
    trust_pickle: bool = False
    start: str | None = None
    end: str | None = None
    fp_budget: float = 0.01  # share of legitimate keys the detection threshold may flag
    _served: object = PrivateAttr(default=None)  # the loaded model, once per run

    def check_inputs(self) -> None:
        """Fail early on a bad input (what the CLI checks on its arguments); keeps the model
        loaded for the run's later assets."""
        from audits.preflight import check_audit_inputs

        served = check_audit_inputs(
            logs=self.logs,
            mapping=self.mapping,
            canaries=self.canaries,
            model=self.model,
            trust_pickle=self.trust_pickle,
            gateway_logs=self.gateway_logs,
            reference=self.reference,
            train=self.train,
            holdout=self.holdout,
        )
        if served is not None:
            self._served = served

    def served_model(self):
        """The served model (``None`` without ``model``), loaded once per run: Dagster gives
        every step of an in-process run this one resource instance."""
        if self.model and self._served is None:
            from audits.models import load_served_model

            self._served = load_served_model(self.model, trust_pickle=self.trust_pickle)
        return self._served if self.model else None

    def reader_options(self):
        """How to read non-canonical logs (the gateway logs are loaded here, once)."""
        from audits.formats import ReaderOptions, load_gateway, load_mapping

        gateway, unusable = (None, 0)
        if self.gateway_logs:
            gateway, unusable = load_gateway(self.gateway_logs)
        options = ReaderOptions(
            format=self.log_format,
            gateway=gateway,
            principal_header=self.principal_header,
            ip_header=self.ip_header,
            session_header=self.session_header,
            mapping=load_mapping(self.mapping) if self.mapping else {},
        )
        return options, unusable

    @property
    def out_path(self) -> Path:
        path = Path(self.out_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def window(self, con) -> tuple[dt.date, dt.date] | None:
        """The audit window: the configured days, else the span of days in ``events``."""
        if self.start and self.end:
            return dt.date.fromisoformat(self.start), dt.date.fromisoformat(self.end)
        row = con.sql("SELECT min(day), max(day) FROM events").fetchall()[0]
        if row[0] is None:
            return None
        start = dt.date.fromisoformat(self.start) if self.start else row[0]
        end = dt.date.fromisoformat(self.end) if self.end else row[1]
        return start, end


PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def run_days(tags: dict[str, str]) -> tuple[dt.date, dt.date] | None:
    """The days a run covers, from its partition tags (a single day or a range)."""
    if PARTITION_TAG in tags:
        day = dt.date.fromisoformat(tags[PARTITION_TAG])
        return day, day
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        return dt.date.fromisoformat(tags[RANGE_START_TAG]), dt.date.fromisoformat(
            tags[RANGE_END_TAG]
        )
    return None


def audit_window(
    context: AssetExecutionContext, audit: AuditConfig, con
) -> tuple[dt.date, dt.date] | None:
    """The window an unpartitioned (window-level) asset audits in this run."""
    return run_days(context.run.tags) or audit.window(con)
