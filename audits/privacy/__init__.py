"""Privacy audit and pre-release gate: membership inference and extraction risk of a served model.

Plain functions, no orchestration import: the CLI (``stealwatch gate``) and the Dagster asset
``privacy_audit`` both call :func:`run_privacy_audit`, then ``reports.privacy.write_gate_outputs``
(which writes :func:`write_gate_files` and the HTML report).
"""

from audits.privacy import extraction, membership
from audits.privacy.gate import Thresholds, run_privacy_audit, write_gate_files

__all__ = ["extraction", "membership", "Thresholds", "run_privacy_audit", "write_gate_files"]
