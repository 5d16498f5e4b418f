"""The privacy audit's result as the row of its table (:data:`audits.tables.PRIVACY_AUDIT`),
written by the ``privacy_audit`` asset, and read back as the result dict."""

from __future__ import annotations

import json

import duckdb
import polars as pl

from audits import tables


def privacy_frame(result: dict | None) -> pl.DataFrame:
    """The table's rows for ``result``: one row, none when the audit was skipped."""
    if result is None:
        return tables.PRIVACY_AUDIT.empty()
    verdicts = result.get("verdicts") or {}
    row = {
        "passed": bool(result["passed"]),
        "membership_auc": result.get("membership_auc"),
        "surrogate_fidelity": result.get("surrogate_fidelity"),
        "target_accuracy": result.get("target_accuracy"),
        "model_sha256": result.get("model_sha256"),
        "membership": verdicts.get("membership"),
        "extraction": verdicts.get("extraction"),
        # the gate's own serialisation (privacy_audit.json): the same dict reads back
        "result": json.dumps(result, indent=2, sort_keys=True),
    }
    return pl.DataFrame([row], schema=tables.PRIVACY_AUDIT.schema)


def result_of(frame: pl.DataFrame) -> dict | None:
    """The result a :func:`privacy_frame` holds (``None``: skipped, or never run)."""
    return json.loads(frame["result"][0]) if frame.height else None


def read_privacy(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The latest run's privacy audit result from the store."""
    return result_of(tables.read_all(con, tables.PRIVACY_AUDIT))
