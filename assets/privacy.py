"""The privacy audit as a Dagster asset, with the release gate as an asset check.

Its result is the asset's output: the ``privacy_audit`` table (:data:`audits.tables.
PRIVACY_AUDIT`), replaced by every run (no row when the audit is skipped), which the risk
register and the report read. The gate's files (``OUT/privacy/privacy_audit.json``, JUnit,
HTML) are written for people and CI as ``stealwatch gate`` writes them; no step reads them
back."""

from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_duckdb import DuckDBResource

from assets.partitions import DUCKDB_POOL
from assets.progress import progress_for
from assets.resources import AuditConfig
from audits import tables
from audits.privacy_results import privacy_frame

GATE_CHECK = "privacy_gate"


@asset(
    group_name="privacy",
    pool=DUCKDB_POOL,
    # not blocking: a served model that fails the gate is a finding of the audit, shown in its
    # report and risk register; `stealwatch gate` is the release gate that exits 1
    check_specs=[AssetCheckSpec(GATE_CHECK, asset="privacy_audit", blocking=False)],
)
def privacy_audit(
    context: AssetExecutionContext, duckdb: DuckDBResource, audit: AuditConfig
) -> MaterializeResult:
    """Membership leakage and extraction risk of the served model, with the gate's verdict."""
    if not (audit.model and audit.train and audit.holdout):
        _remove_earlier_gate_outputs(audit.out_path / "privacy")
        _store(duckdb, None)
        return _skipped()
    from audits.privacy import Thresholds, extraction, run_privacy_audit
    from reports.privacy import write_gate_outputs

    model = audit.served_model()
    result = run_privacy_audit(
        model,
        audit.train,
        audit.holdout,
        label_column=audit.label_column,
        thresholds=Thresholds(),
        budgets=extraction.DEFAULT_BUDGETS,
        families=extraction.FAMILIES,
        progress=progress_for(context),
    )
    paths = write_gate_outputs(result, audit.out_path / "privacy")
    _store(duckdb, result)
    return MaterializeResult(
        metadata=_metadata(result, paths),
        check_results=[_gate_result(result)],
    )


def _store(duckdb: DuckDBResource, result: dict | None) -> None:
    """This run's result (``None``: skipped) as the whole ``privacy_audit`` table."""
    with duckdb.get_connection() as con:
        tables.replace_all(con, tables.PRIVACY_AUDIT, privacy_frame(result))


def _remove_earlier_gate_outputs(folder: Path) -> None:
    """A skipped audit leaves no earlier run's gate files in the output folder (the scheduled
    job reuses it), where a reader would take them for this run's."""
    from audits.privacy.gate import HTML_NAME, JSON_NAME, JUNIT_NAME

    for name in (JSON_NAME, JUNIT_NAME, HTML_NAME):
        (folder / name).unlink(missing_ok=True)


def _skipped() -> MaterializeResult:
    reason = "skipped: needs the model, training data and holdout data"
    return MaterializeResult(
        metadata={"status": MetadataValue.text(reason)},
        check_results=[
            AssetCheckResult(
                check_name=GATE_CHECK,
                passed=True,
                severity=AssetCheckSeverity.WARN,
                metadata={"status": MetadataValue.text(reason)},
            )
        ],
    )


def _metadata(result: dict, paths: dict) -> dict:
    rows = "\n".join(
        f"| {name} | {m['auc']:.3f} | {_fmt(m['tpr_at_10pct_fpr'])} | "
        f"{_fmt(m['tpr_at_1pct_fpr'])} | {_fmt(m['tpr_at_0_1pct_fpr'])} | {m['advantage']:.3f} |"
        for name, m in result["membership"].items()
    )
    table = (
        "| attack | AUC | TPR@10%FPR | TPR@1%FPR | TPR@0.1%FPR | advantage |\n"
        "|---|---|---|---|---|---|\n" + rows
    )
    return {
        "passed": MetadataValue.bool(result["passed"]),
        "verdicts": MetadataValue.json(result["verdicts"]),
        "membership_auc": MetadataValue.float(result["membership_auc"]),
        "surrogate_fidelity": MetadataValue.float(result["surrogate_fidelity"]),
        "target_accuracy": MetadataValue.float(result["target_accuracy"]),
        "model_sha256": MetadataValue.text(result["model_sha256"]),
        "membership": MetadataValue.md(table),
        "report": MetadataValue.path(str(paths["html"])),
        "json": MetadataValue.path(str(paths["json"])),
        "junit": MetadataValue.path(str(paths["junit"])),
    }


def _gate_result(result: dict) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=GATE_CHECK,
        passed=bool(result["passed"]),
        severity=AssetCheckSeverity.ERROR,
        metadata={
            check["risk"]: MetadataValue.text(
                {True: "pass", False: "FAIL", None: "not gated"}[check["passed"]]
                + ": "
                + check["detail"]
            )
            for check in result["checks"]
        },
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


privacy_assets = [privacy_audit]
