"""Scoring user-level detection against a simulated archive's ground truth.

``evaluate(scores, truth)`` compares ``user_scores`` (one row per user: ``score``, ``flagged``,
``n_events``, optionally ``first_cross_n`` = the number of queries after which the user's running
score first crossed the threshold) with ``truth.json`` and returns plain JSON-able figures.
``events_from_archive`` reads a canonical JSONL archive into an events frame (tests and
benchmarks use it in place of the ingest stage).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score, roc_curve

PRECISION_AT = (10, 25, 50)


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> float:
    """The highest TPR whose FPR does not exceed ``fpr`` (ties kept together)."""
    f, t, _ = roc_curve(y, s)
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def evaluate(
    scores: pl.DataFrame, truth: dict, *, precision_at: Iterable[int] = PRECISION_AT
) -> dict:
    """ROC AUC, TPR at 1% FPR, precision@k, recall per attack family (of the flagged users),
    flagged TPR/FPR, benign kinds flagged, and detection delay in queries."""
    truth_users = pl.DataFrame(
        [
            {"user_id": u["user_id"], "role": u["role"], "kind": u["kind"]}
            for u in truth.get("users", [])
        ],
        schema={"user_id": pl.String, "role": pl.String, "kind": pl.String},
    )
    if truth_users.height == 0:
        raise ValueError("the truth lists no users")
    for col in ("user_id", "score", "flagged"):
        if col not in scores.columns:
            raise ValueError(f"the scores have no {col!r} column")
    j = truth_users.join(scores, on="user_id", how="inner")
    if j.height == 0:
        raise ValueError("no user of the scores appears in the truth")
    y = (j["role"] == "attacker").to_numpy()
    s = j["score"].fill_null(-np.inf).to_numpy().astype(np.float64)
    s = np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) - 1 if np.isfinite(s).any() else 0)
    flagged = j["flagged"].fill_null(False).to_numpy()
    out: dict = {
        "users": int(j.height),
        "attackers": int(y.sum()),
        "benign": int((~y).sum()),
        "unscored_truth_users": int(truth_users.height - j.height),
    }
    both = 0 < y.sum() < len(y)
    out["roc_auc"] = float(roc_auc_score(y, s)) if both else None
    out["tpr_at_1pct_fpr"] = tpr_at_fpr(y, s, 0.01) if both else None
    order = np.argsort(-s, kind="stable")
    out["precision_at_k"] = {
        str(k): float(y[order[:k]].mean()) for k in precision_at if k <= len(y)
    }
    out["flagged"] = int(flagged.sum())
    out["flagged_tpr"] = float(flagged[y].mean()) if y.any() else None
    out["flagged_fpr"] = float(flagged[~y].mean()) if (~y).any() else None
    kinds = j["kind"].to_numpy()
    out["recall_per_family"] = {
        k: float(flagged[(kinds == k) & y].mean()) for k in sorted(set(kinds[y]))
    }
    out["benign_flagged_per_kind"] = {
        k: int(flagged[(kinds == k) & ~y].sum()) for k in sorted(set(kinds[~y]))
    }
    out["family_counts"] = {
        k: {"users": int((kinds == k).sum()), "flagged": int(flagged[kinds == k].sum())}
        for k in sorted(set(kinds))
    }
    out["family_roc_auc"] = {
        k: float(roc_auc_score(np.r_[np.ones(m.sum()), np.zeros((~y).sum())], np.r_[s[m], s[~y]]))
        for k in sorted(set(kinds[y]))
        if (m := (kinds == k) & y).any() and (~y).any()
    }
    if "first_cross_n" in j.columns:
        delay = j.filter(pl.col("role") == "attacker")["first_cross_n"].drop_nulls()
        out["detection_delay_queries"] = {
            "median": float(delay.median()) if delay.len() else None,
            "p90": float(delay.quantile(0.9)) if delay.len() else None,
            "detected": int(delay.len()),
        }
    return out


def family_table(result: dict) -> str:
    """The per-family view of an :func:`evaluate` result as aligned text: each attack family's
    flagged share and AUC against all benign users, then each benign kind's flagged share."""
    counts, aucs = result["family_counts"], result.get("family_roc_auc", {})
    lines = [
        f"users {result['users']}, attackers {result['attackers']}: ROC AUC "
        f"{_fmt(result['roc_auc'])}, TPR at 1% FPR {_fmt(result['tpr_at_1pct_fpr'])}, "
        f"flagged {result['flagged']}",
        f"{'attack family':<20} {'users':>6} {'flagged':>8} {'recall':>7} {'AUC':>6}",
    ]
    for kind in result["recall_per_family"]:
        c = counts[kind]
        lines.append(
            f"{kind:<20} {c['users']:>6} {c['flagged']:>8} {c['flagged'] / c['users']:>7.2f} "
            f"{_fmt(aucs.get(kind)):>6}"
        )
    lines.append(f"{'benign kind':<20} {'users':>6} {'flagged':>8} {'share':>7}")
    for kind in result["benign_flagged_per_kind"]:
        c = counts[kind]
        lines.append(
            f"{kind:<20} {c['users']:>6} {c['flagged']:>8} {c['flagged'] / c['users']:>7.1%}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def events_from_archive(logs: str | Path, days: Iterable[str] | None = None) -> pl.DataFrame:
    """A canonical JSONL(.gz) archive (``logs/dt=YYYY-MM-DD/*.jsonl.gz``) as an events frame:
    ``ts`` naive UTC, ``day`` its date, ``prediction`` as text."""
    root = Path(logs)
    pattern = str(root / "dt=*" / "*.jsonl*") if root.is_dir() else str(root)
    files = sorted(glob.glob(pattern))
    if days is not None:
        wanted = set(days)
        files = [f for f in files if Path(f).parent.name.removeprefix("dt=") in wanted]
    if not files:
        raise FileNotFoundError(f"no JSONL files under {logs}")
    schema = {
        "event_id": pl.String,
        "ts": pl.String,
        "user_id": pl.String,
        "session_id": pl.String,
        "source_ip": pl.String,
        "model_id": pl.String,
        "model_version": pl.String,
        "features": pl.List(pl.Float64),
        "prediction": pl.Int64,
        "probabilities": pl.List(pl.Float64),
        "status": pl.String,
        "latency_ms": pl.Float64,
    }
    frames = [pl.read_ndjson(f, schema=schema) for f in files]
    df = pl.concat(frames)
    ts = pl.col("ts").str.to_datetime(time_zone="UTC", time_unit="us").dt.replace_time_zone(None)
    return df.with_columns(ts.alias("ts"), pl.col("prediction").cast(pl.String)).with_columns(
        pl.col("ts").dt.date().alias("day")
    )
