"""The checks an audit runs before any work, so a bad input fails at once with one line: the
CLI calls them on its arguments and the first asset on its resources (so a scheduled run
fails early too)."""

from __future__ import annotations

from pathlib import Path

from audits.errors import InputError
from audits.models import ServedModel, load_served_model


def existing(path: str | None, what: str) -> str | None:
    """``path`` when it is unset or exists, else a one-line :class:`InputError`."""
    if path is not None and not Path(path).exists():
        raise InputError(f"{what} not found: {path}")
    return path


def check_audit_inputs(
    *,
    logs: str,
    mapping: str | None = None,
    canaries: str | None = None,
    model: str | None = None,
    trust_pickle: bool = False,
    gateway_logs: str | None = None,
    reference: str | None = None,
    train: str | None = None,
    holdout: str | None = None,
) -> ServedModel | None:
    """Fail on a missing input, a field mapping or canary registry that cannot be read, or a
    model that cannot be loaded; the loaded model (``None`` without one)."""
    if existing(mapping, "field mapping"):
        from audits.formats import load_mapping

        load_mapping(mapping)
    existing(logs, "log archive")
    if existing(canaries, "canary registry"):
        from audits.canaries import load_registry

        load_registry(canaries)
    served = None
    if existing(model, "model"):
        served = load_served_model(model, trust_pickle=trust_pickle)
    existing(gateway_logs, "gateway logs")
    existing(reference, "reference data")
    existing(train, "training data")
    existing(holdout, "holdout data")
    return served
