"""Privacy audit and pre-release gate: membership inference and extraction risk of a served model.

Plain functions, no orchestration import: the CLI (``stealwatch gate``) and the Dagster asset
``privacy_audit`` both call :func:`run_privacy_audit` and :func:`write_gate_outputs`.
"""

from audits.privacy import extraction, membership
from audits.privacy.gate import Thresholds, run_privacy_audit, write_gate_outputs

__all__ = ["extraction", "membership", "Thresholds", "run_privacy_audit", "write_gate_outputs"]
