"""The audit's pages: the overview of a window, and one page per incident or investigated user."""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from scipy.stats import rankdata

from audits import triage
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


def incident_page(incident: dict) -> str:
    """An incident page's path under the audit's output folder."""
    return "incidents/" + page_name(str(incident["incident_id"]))


def triaged_incidents(
    con: duckdb.DuckDBPyConnection, window: d.Window, scores: d.Scores | None
) -> list[dict]:
    """The window's incidents as the overview lists them (:func:`audits.triage.triage`), each
    with its page and its canary incidents' pages."""
    listed = triage.triage(d.incidents(con, window), None if scores is None else scores.threshold)
    for incident in listed:
        incident["page"] = incident_page(incident)
        for hit in incident["canaries"]:
            hit["page"] = incident_page(hit)
    return listed


def write_overview(con: duckdb.DuckDBPyConnection, window: d.Window, out_dir: Path) -> Path:
    scores = d.load_scores(out_dir, con, window)
    incidents = triaged_incidents(con, window, scores)
    flagged = [] if scores is None else scores.frame.filter(pl.col("flagged"))["user_id"].to_list()
    context = {
        "window": window,
        "totals": d.event_totals(con, window),
        "ingest": d.ingest_health(con, window),
        "scores": _scores_context(scores),
        "flagged_count": len(flagged),
        "incidents": incidents,
        "by_severity": Counter(i["severity"] for i in incidents),
        "severities": triage.SEVERITIES,
        "worst": triage.worst_copy(incidents),
        "privacy": d.privacy_summary(con),
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
            matrix = rank_correlation(frame.select([f"score_{n}" for n in names]).to_numpy())
            result["agreement"] = charts.detector_agreement(names, matrix)
    return result


def rank_correlation(columns: np.ndarray) -> np.ndarray:
    """Spearman's rho between every pair of columns, always a k × k matrix: NaN where a column
    is constant (a detector that scored every key alike ranks nobody), 1 on its diagonal
    otherwise."""
    ranks = rankdata(np.asarray(columns, dtype=float), axis=0)
    centred = ranks - ranks.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = (centred.T @ centred) / np.outer(norms, norms)
    matrix[:, norms == 0] = np.nan
    matrix[norms == 0, :] = np.nan
    return np.clip(matrix, -1.0, 1.0)


def has_events(con: duckdb.DuckDBPyConnection, users: list[str], window: d.Window) -> bool:
    rows = con.sql(
        "SELECT count(*) FROM events WHERE list_contains(?, user_id) AND day BETWEEN ? AND ?",
        params=[users, *window],
    ).fetchall()
    return rows[0][0] > 0


@dataclass
class Population:
    """A window's :func:`reports.data.population_sample` with what every subject page draws
    from it, computed once: its principal components (``None``: too few rows or features to
    project) and its answers' margins."""

    frame: pl.DataFrame
    pca: object | None
    projected: np.ndarray | None
    margins: np.ndarray

    @classmethod
    def of(cls, frame: pl.DataFrame) -> Population:
        from sklearn.decomposition import PCA

        pop = np.array(frame["features"].to_list(), dtype=float)
        pca = projected = None
        if pop.ndim == 2 and len(pop) >= 3 and pop.shape[1] >= 2:
            pca = PCA(n_components=2, random_state=0).fit(pop)
            projected = pca.transform(pop)
        return cls(frame, pca, projected, d.margins(frame["probabilities"]))


@dataclass
class SubjectData:
    """What a subject page reads from the store: its events (time order), its features'
    population percentiles (read only when the incident brings no evidence) and its canary
    hits."""

    events: pl.DataFrame
    evidence: list[dict]
    canary_hits: list[dict]


def read_subject(
    con: duckdb.DuckDBPyConnection, window: d.Window, users: list[str], incident: dict | None
) -> SubjectData:
    """One subject's :class:`SubjectData`, read from the store."""
    evidence = [] if own_evidence(incident) else d.feature_percentiles(con, users, window)
    return SubjectData(
        d.subject_events(con, users, window), evidence, d.canary_hits(con, users, window)
    )


def own_evidence(incident: dict | None) -> list | None:
    """The incident's own evidence (a canary incident's is the canaries it sent: none here)."""
    if (incident or {}).get("kind") == "canary":
        return None
    return (incident or {}).get("evidence")


def write_subject_page(
    con: duckdb.DuckDBPyConnection,
    window: d.Window,
    out_path: Path,
    *,
    users: list[str],
    title: str,
    incident: dict | None = None,
    scores: d.Scores | None = None,
    population: pl.DataFrame | Population | None = None,
    audit_dir: Path | None = None,
    incidents: list[dict] | None = None,
) -> Path:
    """One page about a user or a group: the incident page and ``stealwatch investigate``.
    ``title``: what the page is ("Incident", "Investigation"); the subject follows it.
    ``population``: :func:`reports.data.population_sample` of the window (or its
    :class:`Population`), when the caller writes several pages. ``audit_dir``: the audit's
    output folder, to link its overview and incident pages when they exist; ``incidents``:
    :func:`triaged_incidents`, when known."""
    if population is None:
        population = d.population_sample(con, window)
    if not isinstance(population, Population):
        population = Population.of(population)
    if incidents is None:
        incidents = triaged_incidents(con, window, scores)
    return render_subject_page(
        out_path,
        read_subject(con, window, users, incident),
        window=window,
        users=users,
        title=title,
        incident=incident,
        scores=scores,
        population=population,
        audit_dir=audit_dir,
        incidents=incidents,
    )


def render_subject_page(
    out_path: Path,
    subject: SubjectData,
    *,
    window: d.Window,
    users: list[str],
    title: str,
    incident: dict | None,
    scores: d.Scores | None,
    population: Population,
    audit_dir: Path | None,
    incidents: list[dict],
) -> Path:
    """:func:`write_subject_page` from what it read (:func:`read_subject`), without the store."""
    events = subject.events
    score_rows = []
    if scores is not None:
        score_rows = scores.frame.filter(pl.col("user_id").is_in(users)).to_dicts()
    canary = (incident or {}).get("kind") == "canary"  # its evidence is the canaries it sent
    related = _related(incidents, incident, users, score_rows)
    shown = related["listed"] or incident  # a merged canary's page shows its key's verdict
    summary = _subject_summary(events)
    context = {
        "title": title,
        "subject": (incident or {}).get("subject") or (users[0] if len(users) == 1 else None),
        "window": window,
        "users": users,
        "incident": incident,
        "summary": summary,
        "verdict": _verdict(shown, summary, score_rows, scores),
        "links": _links(out_path, audit_dir, related),
        "evidence": own_evidence(incident) or subject.evidence,
        "canary_evidence": (incident or {}).get("evidence") if canary else [],
        "canary_hits": subject.canary_hits,
        "score_rows": score_rows,
        "detectors": [] if scores is None else scores.detectors,
        "threshold": None if scores is None else scores.threshold,
        "class_mix": _class_mix(events, population.frame),
        "charts": _subject_charts(events, population),
        "damage": (incident or {}).get("damage"),
        "damage_chart": _damage_chart((incident or {}).get("damage")),
        "sample": _sample(events),
        "sql": d.sql_to_pull(users, window),
    }
    return render_page("subject.html", out_path, **context)


def _related(
    incidents: list[dict], incident: dict | None, users: list[str], score_rows: list[dict]
) -> dict:
    """The listed incident this page belongs to (its own, the key's when it is a merged canary
    incident, or the one covering an investigated key), the other incidents that share a key
    with it, and the Sybil groups its keys were linked into."""
    mine = set(users)
    own = (incident or {}).get("incident_id")
    listed = next((i for i in incidents if i["incident_id"] == own), None)
    if listed is None:
        listed = next(
            (
                i
                for i in incidents
                if own in {c["incident_id"] for c in i["canaries"]}
                or (own is None and mine & set(map(str, i.get("members") or [])))
            ),
            None,
        )
    others = [
        i for i in incidents if i is not listed and mine & set(map(str, i.get("members") or []))
    ]
    groups = sorted({str(r["group_id"]) for r in score_rows if r.get("group_id") is not None})
    return {"listed": listed, "others": others, "groups": groups}


def _links(out_path: Path, audit_dir: Path | None, related: dict) -> dict:
    """Relative links from this page to the audit's overview and to the related incident
    pages; none when the audit's folder has no overview (the incident pages are written with
    it)."""
    if audit_dir is None or not (audit_dir / "report.html").exists():
        return {"overview": None, "related": [], "groups": related["groups"]}

    def href(relative: str) -> str:
        return Path(os.path.relpath(audit_dir / relative, out_path.parent)).as_posix()

    items = []
    listed = related["listed"]
    for i in ([listed] if listed else []) + related["others"]:
        items.append({"incident": i, "href": href(i["page"]), "relation": i["kind"]})
        items += [
            {"incident": hit, "href": href(hit["page"]), "relation": "canary"}
            for hit in i["canaries"]
        ]
    here = out_path.resolve()
    items = [item for item in items if (out_path.parent / item["href"]).resolve() != here]
    return {"overview": href("report.html"), "related": items, "groups": related["groups"]}


def _verdict(
    incident: dict | None, summary: dict, score_rows: list[dict], scores: d.Scores | None
) -> dict:
    """The box at the top of a subject page: what happened, the copy's fidelity with its
    interval, the margin over the threshold and the action with its cost."""
    threshold = None if scores is None else scores.threshold
    flagged = [r for r in score_rows if r.get("flagged")]
    if incident is not None:
        damage = incident.get("damage") or {}
        return {
            "severity": incident.get("severity"),
            "kind": incident.get("kind"),
            "n_keys": len(incident.get("members") or []),
            "queries": incident.get("n_events"),
            "fidelity": damage.get("fidelity"),
            "ci": damage.get("ci"),
            "queries_to_90": damage.get("queries_to_90"),
            "score": incident.get("score"),
            "margin": incident.get("margin"),
            "threshold": threshold,
            "canaries": sum(c.get("n_events") or 0 for c in incident.get("canaries") or []),
            "action": incident.get("action"),
            "flagged": True,
        }
    top = max(score_rows, key=lambda r: r.get("score") or 0.0, default={})
    return {
        "severity": None,
        "kind": "user",
        "n_keys": len(score_rows) or 1,
        "queries": summary.get("events"),
        "fidelity": top.get("est_fidelity"),
        "ci": None,
        "queries_to_90": None,
        "score": top.get("score"),
        "margin": triage.margin(top.get("score"), threshold),
        "threshold": threshold,
        "canaries": 0,
        "action": None,
        "flagged": bool(flagged),
    }


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


def _subject_charts(events: pl.DataFrame, population: Population) -> dict:
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
    mine, pop = d.margins(events["probabilities"]), population.margins
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


def _projection(events: pl.DataFrame, population: Population):
    mine = np.array(events["features"].head(d.SUBJECT_SAMPLE).to_list(), dtype=float)
    if population.pca is None or mine.ndim != 2:
        return None
    return population.projected, population.pca.transform(mine)


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


def closing_summary(database: str, window: d.Window, out_dir: Path, lake: str | None = None) -> str:
    """One line for the end of ``stealwatch audit``: incidents by severity, the worst copy, the
    privacy gate's verdicts when it ran (from the store: the DuckDB file, or the ``lake``), and
    where the report is."""
    parts = []
    privacy = None
    if database != ":memory:" and Path(database).is_file():
        con = duckdb.connect(database, read_only=True)
        try:
            listed = triaged_incidents(con, window, d.load_scores(out_dir, con, window))
            privacy = d.privacy_summary(con)
        finally:
            con.close()
        counts = Counter(i["severity"] for i in listed)
        levels = ", ".join(f"{counts[s]} {s}" for s in triage.SEVERITIES if counts[s])
        parts.append(f"{len(listed)} incident{'' if len(listed) == 1 else 's'}")
        parts[-1] += f" ({levels})" if levels else ""
        worst = triage.worst_copy(listed)
        if worst is not None:
            fidelity, subject = worst["damage"]["fidelity"], ascii(worst["subject"])
            parts.append(f"worst copy {fidelity:.1%} by {subject}")
    if lake:
        privacy = d.privacy_of(_lake_privacy(lake))
    if privacy is not None:
        verdicts = privacy["verdicts"]
        parts.append(
            f"privacy gate {'passed' if privacy.get('passed') else 'FAILED'} "
            f"(membership {verdicts['membership']}, "
            f"extraction {verdicts['extraction'].replace('_', ' ')})"
        )
    report = out_dir / "report.html"
    if report.exists():
        parts.append(f"open {report.resolve().as_uri()}")
    return "; ".join(parts)


def _lake_privacy(root: str) -> dict | None:
    """The privacy audit's result as the lake holds its table."""
    from audits.lake import Lake
    from audits.privacy_results import result_of
    from audits.tables import PRIVACY_AUDIT

    lake = Lake(root)
    if PRIVACY_AUDIT.name not in lake.table_names():
        return None
    return result_of(pl.from_arrow(lake.read_table(PRIVACY_AUDIT.name)))
