"""A small synthetic window of events for tests, built in memory: no archive, no model."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl


def toy_events(
    seed: int = 0,
    *,
    benign: int = 40,
    attackers: int = 3,
    sybil_keys: int = 3,
    days: int = 2,
    width: int = 6,
) -> tuple[pl.DataFrame, np.ndarray, dict]:
    """A small synthetic window for tests: benign users querying their own slice of a
    low-dimensional data manifold (some re-sending earlier rows), one nightly re-scorer,
    uniform-probing attackers and a Sybil group on one /24. Returns (events, reference, truth)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(2, width))
    W = rng.normal(size=(width, 3))

    def natural(n: int, center: np.ndarray, spread: float) -> np.ndarray:
        z = center + spread * rng.normal(size=(n, 2))
        return np.round(z @ mixing + 0.05 * rng.normal(size=(n, width)), 4)

    reference = natural(2000, np.zeros(2), 1.0)
    lo, hi = reference.min(axis=0), reference.max(axis=0)
    t0 = dt.datetime(2026, 11, 1)
    rows: list[dict] = []
    users: list[dict] = []

    def emit(
        user: str, ip: str, day: int, x: np.ndarray, start_s: float, gap_s: float, jitter: float
    ) -> None:
        t = start_s + np.cumsum(gap_s * rng.lognormal(0.0, jitter, len(x)))
        for k in range(len(x)):
            rows.append(
                {
                    "user_id": user,
                    "source_ip": ip,
                    "ts": t0 + dt.timedelta(days=day, seconds=float(t[k])),
                    "features": x[k].tolist(),
                }
            )

    for i in range(benign):
        uid, ip = f"benign-{i:03d}", f"10.{i}.1.{i % 200 + 2}"
        center, history = rng.normal(size=2), []
        for day in range(days):
            x = natural(int(rng.integers(20, 120)), center, 0.3)
            if history:
                again = rng.random(len(x)) < 0.2
                old = np.concatenate(history)
                x[again] = old[rng.integers(len(old), size=int(again.sum()))]
            history.append(x)
            emit(uid, ip, day, x, 9 * 3600 + rng.uniform(0, 3600), 20.0, 1.0)
        users.append({"user_id": uid, "role": "benign", "kind": "regular", "group": None})
    book = natural(400, rng.normal(size=2), 0.5)
    for day in range(days):
        emit("batch-000", "10.200.1.2", day, book, 2 * 3600, 0.1, 0.01)
    users.append(
        {"user_id": "batch-000", "role": "benign", "kind": "batch_rescoring", "group": None}
    )
    for i in range(attackers):
        uid = f"attacker-{i:02d}"
        for day in range(days):
            x = np.round(rng.uniform(lo, hi, size=(300, width)), 4)
            emit(uid, f"172.16.{i}.9", day, x, 3600 * rng.uniform(0, 20), 2.0, 0.05)
        users.append({"user_id": uid, "role": "attacker", "kind": "uniform", "group": None})
    for i in range(sybil_keys):
        uid = f"sybil-{i:02d}"
        for day in range(days):
            x = np.round(rng.uniform(lo, hi, size=(40, width)), 4)
            emit(uid, f"203.0.113.{i + 10}", day, x, 4 * 3600, 5.0, 0.05)
        users.append({"user_id": uid, "role": "attacker", "kind": "sybil", "group": "sybil-1"})
    df = pl.DataFrame(rows).with_columns(pl.col("features").cast(pl.List(pl.Float64)))
    X = np.asarray(df["features"].to_list())
    logits = X @ W
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    df = df.with_columns(
        pl.Series("probabilities", np.round(p, 6).tolist(), dtype=pl.List(pl.Float64)),
        pl.Series("prediction", p.argmax(axis=1).astype(str)),
        pl.lit(None, pl.String).alias("session_id"),
        pl.col("ts").dt.date().alias("day"),
    ).sort("ts", "user_id")
    df = df.with_columns(
        pl.format("evt-{}", pl.int_range(pl.len())).alias("event_id"),
        pl.col("ts").cast(pl.Datetime("us")),
    )
    return df, reference, {"users": users}
