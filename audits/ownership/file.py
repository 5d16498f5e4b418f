"""The fingerprint file: JSON text (no pickle), read back with every field checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from audits.errors import InputError

FORMAT = "stealwatch-fingerprint"
VERSION = 3


def fingerprint_text(fingerprint: dict) -> str:
    """The fingerprint as one line of JSON (floats round-trip exactly); the caller writes it."""
    return json.dumps(fingerprint, indent=None) + "\n"


def load_fingerprint(path: str | Path) -> dict:
    """Read and check a fingerprint file; anything malformed is an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"fingerprint not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"corrupt fingerprint {path}: not JSON ({exc.__class__.__name__})"
        ) from None
    if isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") != VERSION:
        raise InputError(
            f"fingerprint {path} has format version {data.get('version')!r}, this stealwatch "
            f"reads version {VERSION}: make it again with `stealwatch fingerprint`"
        )
    try:
        _check_fingerprint(data)
    except (KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise InputError(f"corrupt fingerprint {path}: {detail}") from None
    return data


def _check_fingerprint(data) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, this stealwatch reads {VERSION}")
    width = int(data["model"]["n_features_in"])
    for key, labels in (("points", "labels"), ("probe", None)):
        block = data[key] if labels else data["probe"]["points"]
        X = np.asarray(block, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != width or not np.isfinite(X).all() or len(X) == 0:
            raise ValueError(f"{key} must be a non-empty finite {width}-column table")
        y = data[labels] if labels else data["probe"]["labels"]
        if len(y) != len(X):
            raise ValueError(f"{key}: {len(X)} inputs but {len(y)} labels")
    strata = data["strata"]
    if len(strata) != len(data["points"]):
        raise ValueError(f"{len(data['points'])} inputs but {len(strata)} strata")
    nulls = data["null"]
    if len(nulls) < 3:
        raise ValueError("fewer than 3 null models")
    for row in nulls:
        rates = [float(row["agreement"]), *map(float, row["agreement_by_stratum"].values())]
        if not all(0.0 <= r <= 1.0 for r in rates):
            raise ValueError("null agreement outside [0, 1]")
        if set(row["agreement_by_stratum"]) != set(strata):
            raise ValueError("null agreement by stratum does not match the strata")
        if len(row["probe_labels"]) != len(data["probe"]["points"]):
            raise ValueError("null probe labels do not match the probe inputs")
    _check_weights(data)


def _check_weights(data) -> None:
    weights = np.asarray(data["weights"], dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(data["points"]):
        raise ValueError("weights must be one row of per-point weights per null group")
    if not np.isfinite(weights).all():
        raise ValueError("weights must be finite")
    for row in data["null"]:
        scores = [v for v in row["scores"] if v is not None]
        if len(row["scores"]) != len(weights) or not all(map(math.isfinite, scores)):
            raise ValueError("null scores do not match the weight sets")
