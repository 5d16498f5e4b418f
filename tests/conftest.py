"""Shared fixtures: small canonical archives generated on the fly."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest


def make_record(day: str, index: int, *, user: str | None = None, width: int = 4, rng=None) -> dict:
    rng = rng or random.Random(index)
    return {
        "event_id": f"{day}-{index:06d}",
        "ts": f"{day}T{index % 24:02d}:{index % 60:02d}:{(index * 7) % 60:02d}.{index % 1000:03d}Z",
        "user_id": user or f"user-{index % 13}",
        "session_id": f"s-{index // 50}",
        "source_ip": f"198.51.100.{index % 200}",
        "model_id": "churn",
        "model_version": "3",
        "features": [round(rng.gauss(0, 1), 6) for _ in range(width)],
        "prediction": index % 3,
        "probabilities": [0.8 if k == index % 3 else 0.1 for k in range(3)],
        "status": "200",
        "latency_ms": 12.5,
    }


def write_jsonl(path: Path, lines: list[str], *, compress: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Two days, two files a day, 200 valid records per file, no faults."""
    root = tmp_path / "logs"
    for day in ("2026-11-01", "2026-11-02"):
        for part in range(2):
            records = [make_record(day, part * 1000 + i) for i in range(200)]
            write_jsonl(
                root / f"dt={day}" / f"part-{part}.jsonl.gz", [json.dumps(r) for r in records]
            )
    return root


@pytest.fixture(scope="module")
def toy():
    """A toy window's events, 800 of its queries with their answers, and the probability
    columns' labels (forensics and defence tests)."""
    from audits import forensics as fx
    from audits.simulation.toy import toy_events

    events, _, _ = toy_events(1)
    X = np.asarray(events["features"].to_list())
    y = np.asarray(events["prediction"].to_list())
    pick = np.random.default_rng(0).choice(len(X), 800, replace=False)
    return events, X[pick], y[pick], fx.proba_columns(events)
