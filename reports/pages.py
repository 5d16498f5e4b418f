"""The audit's pages: the overview of a window, and one page per incident or investigated user."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from scipy.stats import spearmanr

from audits.confidence import MIN_REFERENCE_GAP
from reports import charts
from reports import data as d
from reports.render import render_page

SAMPLE_EVENTS = 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")


def page_name(identifier: str, prefix: str = "") -> str:
    """A file name for a subject: the id itself when it is safe, else a readable hash."""
    if _SAFE_NAME.fullmatch(identifier) and not identifier.startswith("."):
        return f"{prefix}{identifier}.html"
    digest = hashlib.sha256(identifier.encode()).hexdigest()[:16]
    return f"{prefix}{digest}.html"


def write_overview(con: duckdb.DuckDBPyConnection, window: d.Window, out_dir: Path) -> Path:
    scores = d.load_scores(out_dir, con, window)
    incidents = d.incidents(con, window)
    for incident in incidents:
        incident["page"] = "incidents/" + page_name(str(incident["incident_id"]))
    flagged = [] if scores is None else scores.frame.filter(pl.col("flagged"))["user_id"].to_list()
    context = {
        "window": window,
        "totals": d.event_totals(con, window),
        "ingest": d.ingest_health(con, window),
        "scores": _scores_context(scores),
        "flagged_count": len(flagged),
        "incidents": incidents,
        "privacy": d.privacy_summary(out_dir),
        "confidence": _confidence_context(con, window),
        "canaries": d.canary_overview(con, window),
        "risk": d.risk_tables(con, window),
        "charts": _overview_charts(con, window, scores, flagged),
    }
    return render_page("report.html", out_dir / "report.html", **context)


def _confidence_context(con: duckdb.DuckDBPyConnection, window: d.Window) -> dict | None:
    """The confidence-monitoring section: the daily rows, their alerts and the trend chart."""
    rows = d.confidence_daily(con, window)
    if not rows:
        return None
    first = rows[0]
    return {
        "rows": rows,
        "alerts": [r for r in rows if r["alert"]],
        "threshold": first["low_margin_threshold"],
        "reference_gap": first["reference_gap"],
        "training_like_possible": (first["reference_gap"] or 0.0) >= MIN_REFERENCE_GAP,
        "chart": charts.confidence_trend(
            [str(r["day"]) for r in rows],
            [r["ks_train"] for r in rows],
            [r["ks_holdout"] for r in rows],
            [r["low_margin_share"] for r in rows],
            [r["baseline_share"] for r in rows],
            [bool(r["alert"]) for r in rows],
        ),
    }


def _scores_context(scores: d.Scores | None) -> dict | None:
    if scores is None:
        return None
    top = scores.frame.head(25).to_dicts()
    return {
        "threshold": scores.threshold,
        "detectors": scores.detectors,
        "top": top,
        "users": scores.frame.height,
    }


def _overview_charts(con, window, scores: d.Scores | None, flagged: list[str]) -> dict:
    result = dict.fromkeys(("timeline", "scores", "agreement"))
    hours, everyone, suspects = d.hourly_activity(con, window, flagged)
    if hours:
        result["timeline"] = charts.activity_timeline(hours, everyone, suspects)
    if scores is not None and scores.frame.height:
        frame = scores.frame
        result["scores"] = charts.score_distribution(
            frame["score"].to_numpy(), frame["flagged"].to_numpy(), scores.threshold
        )
        names = scores.detectors
        if len(names) >= 2 and frame.height >= 3:
            matrix = spearmanr(frame.select([f"score_{n}" for n in names]).to_numpy()).statistic
            result["agreement"] = charts.detector_agreement(names, np.atleast_2d(matrix))
    return result


def has_events(con: duckdb.DuckDBPyConnection, users: list[str], window: d.Window) -> bool:
    rows = con.sql(
        "SELECT count(*) FROM events WHERE list_contains(?, user_id) AND day BETWEEN ? AND ?",
        params=[users, *window],
    ).fetchall()
    return rows[0][0] > 0


def write_subject_page(
    con: duckdb.DuckDBPyConnection,
    window: d.Window,
    out_path: Path,
    *,
    users: list[str],
    title: str,
    incident: dict | None = None,
    scores: d.Scores | None = None,
    population: pl.DataFrame | None = None,
) -> Path:
    """One page about a user or a group: the incident page and ``stealwatch investigate``.
    ``population``: :func:`reports.data.population_sample` of the window, when the caller
    writes several pages."""
    events = d.subject_events(con, users, window)
    if population is None:
        population = d.population_sample(con, window)
    score_rows = []
    if scores is not None:
        score_rows = scores.frame.filter(pl.col("user_id").is_in(users)).to_dicts()
    canary = (incident or {}).get("kind") == "canary"  # its evidence is the canaries it sent
    evidence = None if canary else (incident or {}).get("evidence")
    context = {
        "title": title,
        "window": window,
        "users": users,
        "incident": incident,
        "summary": _subject_summary(events),
        "evidence": evidence or d.feature_percentiles(con, users, window),
        "canary_evidence": (incident or {}).get("evidence") if canary else [],
        "canary_hits": d.canary_hits(con, users, window),
        "score_rows": score_rows,
        "detectors": [] if scores is None else scores.detectors,
        "threshold": None if scores is None else scores.threshold,
        "class_mix": _class_mix(events, population),
        "charts": _subject_charts(events, population, window),
        "damage": (incident or {}).get("damage"),
        "damage_chart": _damage_chart((incident or {}).get("damage")),
        "sample": _sample(events),
        "sql": d.sql_to_pull(users, window),
    }
    return render_page("subject.html", out_path, **context)


def _subject_summary(events: pl.DataFrame) -> dict:
    if events.is_empty():
        return {"events": 0}
    return {
        "events": events.height,
        "first_seen": events["ts"].min(),
        "last_seen": events["ts"].max(),
        "days": events["day"].n_unique(),
        "sessions": events["session_id"].drop_nulls().n_unique(),
        "source_ips": sorted(events["source_ip"].drop_nulls().unique().to_list())[:20],
        "distinct_queries": events["features"].n_unique(),
    }


def _class_mix(events: pl.DataFrame, population: pl.DataFrame) -> list[dict]:
    mine = Counter(events["prediction"].to_list()) if events.height else Counter()
    pop = Counter(population["prediction"].to_list()) if population.height else Counter()
    labels = sorted(set(mine) | set(pop), key=lambda v: (v is None, str(v)))
    return [
        {
            "label": "(none)" if label is None else label,
            "share": mine[label] / max(1, events.height),
            "population_share": pop[label] / max(1, population.height),
        }
        for label in labels
    ]


def _subject_charts(events: pl.DataFrame, population: pl.DataFrame, window: d.Window) -> dict:
    result = dict.fromkeys(("per_day", "per_hour", "projection", "margins"))
    if events.is_empty():
        return result
    per_day = events.group_by("day").len().sort("day")
    result["per_day"] = charts.bars(
        [str(day) for day in per_day["day"]],
        per_day["len"].to_list(),
        xlabel="UTC day",
        ylabel="queries",
    )
    per_hour = events.group_by(pl.col("ts").dt.hour().alias("hour")).len()
    counts = dict(zip(per_hour["hour"].to_list(), per_hour["len"].to_list(), strict=True))
    result["per_hour"] = charts.bars(
        [f"{h:02d}" for h in range(24)],
        [counts.get(h, 0) for h in range(24)],
        xlabel="hour of day (UTC)",
        ylabel="queries",
    )
    projected = _projection(events, population)
    if projected is not None:
        result["projection"] = charts.projection(*projected)
    mine, pop = d.margins(events["probabilities"]), d.margins(population["probabilities"])
    if len(mine):
        result["margins"] = charts.histogram(
            mine, xlabel="margin (top-1 − top-2 probability)", reference=pop
        )
    return result


def _damage_chart(damage: dict | None):
    curve = (damage or {}).get("curve") or []
    if len(curve) < 2:
        return None
    return charts.fidelity_curve([int(n) for n, _ in curve], [float(f) for _, f in curve])


def _projection(events: pl.DataFrame, population: pl.DataFrame):
    from sklearn.decomposition import PCA

    pop = np.array(population["features"].to_list(), dtype=float)
    mine = np.array(events["features"].head(d.SUBJECT_SAMPLE).to_list(), dtype=float)
    if pop.ndim != 2 or len(pop) < 3 or pop.shape[1] < 2 or mine.ndim != 2:
        return None
    pca = PCA(n_components=2, random_state=0).fit(pop)
    return pca.transform(pop), pca.transform(mine)


def _sample(events: pl.DataFrame) -> list[dict]:
    rows = events.head(SAMPLE_EVENTS).to_dicts()
    for row in rows:
        row["features"] = ", ".join(f"{v:.4g}" for v in row["features"])
        row["probabilities"] = (
            ""
            if row["probabilities"] is None
            else ", ".join(f"{v:.3f}" for v in row["probabilities"])
        )
    return rows
