"""Incidents: one per flagged Sybil group and one per flagged user outside a flagged group,
with the features that stand out as their evidence."""

from __future__ import annotations

import hashlib
import json
import math

import polars as pl

from audits.detection.directional import EXTRACTION_SIGNALS
from audits.event_source import EventSource, as_source

Events = pl.DataFrame | EventSource

INCIDENTS_SCHEMA = {
    "incident_id": pl.String,
    "kind": pl.String,
    "subject": pl.String,
    "members": pl.List(pl.String),
    "severity": pl.String,
    "first_seen": pl.Datetime("us"),
    "last_seen": pl.Datetime("us"),
    "n_events": pl.Int64,
    "score": pl.Float64,
    "evidence": pl.String,
}


def _evidence(row: dict, features: pl.DataFrame, top: int = 5) -> list[dict]:
    """The features of ``row`` that stand out in the extraction direction: value and
    percentile in the population of users."""
    items = []
    for signals in EXTRACTION_SIGNALS.values():
        for col, direction in signals:
            value = row.get(col)
            if value is None or not math.isfinite(value):
                continue
            pop = features[col].drop_nulls().drop_nans().to_numpy()
            if len(pop) == 0:
                continue
            pct = float((pop < value).mean() + 0.5 * (pop == value).mean()) * 100.0
            strength = pct if direction > 0 else 100.0 - pct
            items.append(
                (
                    strength,
                    {
                        "feature": col,
                        "value": round(float(value), 6),
                        "population_percentile": round(pct, 2),
                    },
                )
            )
    items.sort(key=lambda t: -t[0])
    return [e for _, e in items[:top]]


def incident_id(kind: str, subject: str, members: list[str], first_day: str) -> str:
    """Stable across reruns: a hash of the kind, the subject (or sorted members) and the
    first day seen."""
    key = "|".join([kind, subject, ",".join(sorted(members)), first_day])
    return "inc_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def severity(score: float, threshold: float) -> str:
    ratio = score / threshold if threshold > 0 else math.inf
    return "critical" if ratio >= 3 else "high" if ratio >= 1.5 else "medium"


def build_incidents(
    events: Events,
    features: pl.DataFrame,
    scores: pl.DataFrame,
    summary: dict,
) -> pl.DataFrame:
    """One incident per flagged group (its members' traffic pooled) and one per flagged user
    not covered by a flagged group."""
    threshold = summary["threshold"]
    span = as_source(events).spans()
    span_d = {r["user_id"]: r for r in span.iter_rows(named=True)}
    rows = []
    groups: pl.DataFrame = summary.get("groups")
    covered: set[str] = set()
    gfeats = summary.get("group_features")
    if groups is not None and groups.height:
        for g in groups.filter(pl.col("flagged")).iter_rows(named=True):
            members = list(g["members"])
            covered.update(members)
            spans = [span_d[m] for m in members if m in span_d]
            first = min(s["first_seen"] for s in spans)
            grow = {}
            if gfeats is not None:
                hit = gfeats.filter(pl.col("user_id") == g["group_id"])
                grow = hit.row(0, named=True) if hit.height else {}
            rows.append(
                {
                    "incident_id": incident_id("group", g["group_id"], members, str(first.date())),
                    "kind": "group",
                    "subject": g["group_id"],
                    "members": members,
                    "severity": severity(g["score"], threshold),
                    "first_seen": first,
                    "last_seen": max(s["last_seen"] for s in spans),
                    "n_events": int(sum(s["n_events"] for s in spans)),
                    "score": float(g["score"]),
                    "evidence": json.dumps(_evidence(grow, features)),
                }
            )
    feat_rows = {r["user_id"]: r for r in features.iter_rows(named=True)}
    for u in scores.filter(pl.col("flagged")).iter_rows(named=True):
        uid = u["user_id"]
        if uid in covered or uid not in span_d:
            continue
        s = span_d[uid]
        rows.append(
            {
                "incident_id": incident_id("user", uid, [uid], str(s["first_seen"].date())),
                "kind": "user",
                "subject": uid,
                "members": [uid],
                "severity": severity(u["score"], threshold),
                "first_seen": s["first_seen"],
                "last_seen": s["last_seen"],
                "n_events": int(s["n_events"]),
                "score": float(u["score"]),
                "evidence": json.dumps(_evidence(feat_rows.get(uid, {}), features)),
            }
        )
    return pl.DataFrame(rows, schema=INCIDENTS_SCHEMA).sort("score", descending=True)
