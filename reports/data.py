"""What the pages show, gathered from the DuckDB store and the audit's output files.

Every query binds its values as parameters. Detection outputs (``user_scores.parquet``, the
``user_features`` and ``incidents`` tables), forensics' tables and the privacy audit's table are
optional: a page says what did not run instead of failing.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from audits import tables
from audits.forensics.records import read_incident_damage, with_forensics
from audits.privacy_results import read_privacy
from audits.tables import read_window

Window = tuple[dt.date, dt.date]
POPULATION_SAMPLE = 3000
SUBJECT_SAMPLE = 2000


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", params=[name]
    ).fetchall()
    return rows[0][0] > 0


def _rows(con, sql: str, params: list) -> list[dict]:
    rel = con.sql(sql, params=params)
    return [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]


@dataclass
class Scores:
    """The detection stage's per-user output, when it ran."""

    frame: pl.DataFrame
    threshold: float | None

    @property
    def detectors(self) -> list[str]:
        names = [c.removeprefix("score_") for c in self.frame.columns if c.startswith("score_")]
        return [name for name in names if name != "group"]  # the Sybil group's pooled score


def load_scores(
    out_dir: Path | None,
    con: duckdb.DuckDBPyConnection | None = None,
    window: Window | None = None,
) -> Scores | None:
    """Per-user scores from ``OUT/user_scores.parquet``, else from the ``user_scores`` table:
    the scored window that best covers ``window`` (the latest one overlapping it)."""
    path = None if out_dir is None else out_dir / "user_scores.parquet"
    if path is not None and path.exists():
        frame = pl.read_parquet(path)
    elif con is not None and has_table(con, "user_scores"):
        scored = scored_window(con, "user_scores", window)
        if scored is None:
            return None
        frame = with_forensics(con, read_window(con, tables.USER_SCORES, scored), scored)
    else:
        return None
    if "threshold" not in frame.columns and con is not None and has_table(con, "score_groups"):
        frame = frame.with_columns(threshold=pl.lit(_group_threshold(con, window)))
    if "threshold" in frame.columns and frame.height and frame["threshold"][0] is not None:
        threshold = float(frame["threshold"][0])
    elif frame.height and frame["flagged"].any():
        threshold = float(frame.filter(pl.col("flagged"))["score"].min())
    else:
        threshold = None
    return Scores(frame.sort("score", descending=True), threshold)


def scored_window(
    con: duckdb.DuckDBPyConnection, table: str, window: Window | None
) -> Window | None:
    """The latest scored window in ``table`` that overlaps ``window`` (any when ``None``)."""
    start, end = window or (dt.date.min, dt.date.max)
    rows = con.sql(
        f"SELECT window_start, window_end FROM {table} WHERE window_start <= ? "
        "AND window_end >= ? GROUP BY ALL ORDER BY window_end DESC, window_start LIMIT 1",
        params=[end, start],
    ).fetchall()
    return rows[0] if rows else None


def _group_threshold(con: duckdb.DuckDBPyConnection, window: Window | None) -> float | None:
    scored = scored_window(con, "score_groups", window)
    if scored is None:
        return None
    rows = con.sql(
        "SELECT max(threshold) FROM score_groups WHERE window_start = ? AND window_end = ?",
        params=list(scored),
    ).fetchall()
    return rows[0][0]


def ingest_health(con: duckdb.DuckDBPyConnection, window: Window) -> dict:
    params = list(window)
    files = _rows(
        con,
        "SELECT count(*) AS files, coalesce(sum(rows_read), 0) AS rows_read, "
        "coalesce(sum(accepted), 0) AS accepted, coalesce(sum(duplicates), 0) AS duplicates, "
        "coalesce(sum(rejected), 0) AS rejected, count(damage) AS damaged "
        "FROM source_files WHERE partition_day BETWEEN ? AND ?",
        params,
    )[0]
    reasons = _rows(
        con,
        "SELECT reason, count(*) AS n, min(detail) AS example FROM rejected_events "
        "WHERE partition_day BETWEEN ? AND ? GROUP BY reason ORDER BY n DESC, reason",
        params,
    )
    damaged = _rows(
        con,
        "SELECT path, damage, rows_read FROM source_files WHERE damage IS NOT NULL "
        "AND partition_day BETWEEN ? AND ? ORDER BY path",
        params,
    )
    return {**files, "reasons": reasons, "damaged_files": damaged}


def event_totals(con: duckdb.DuckDBPyConnection, window: Window) -> dict:
    return _rows(
        con,
        "SELECT coalesce(sum(n_events), 0) AS events, count(DISTINCT user_id) AS users "
        "FROM user_day WHERE day BETWEEN ? AND ?",
        list(window),
    )[0]


def hourly_activity(
    con: duckdb.DuckDBPyConnection, window: Window, suspects: list[str]
) -> tuple[list[dt.datetime], list[int], list[int]]:
    """Queries per hour for everyone and for the given users (zero-filled)."""
    rows = con.sql(
        "WITH chosen AS (SELECT DISTINCT unnest(?::VARCHAR[]) AS user_id) "
        "SELECT date_trunc('hour', e.ts) AS hour, count(*) AS everyone, "
        "count(chosen.user_id) AS suspects FROM events AS e LEFT JOIN chosen USING (user_id) "
        "WHERE e.day BETWEEN ? AND ? GROUP BY 1 ORDER BY 1",
        params=[suspects, *window],
    ).fetchall()
    if not rows:
        return [], [], []
    start = dt.datetime.combine(window[0], dt.time())
    hours = [start + dt.timedelta(hours=h) for h in range(((window[1] - window[0]).days + 1) * 24)]
    by_hour = {row[0]: row for row in rows}
    everyone = [by_hour[h][1] if h in by_hour else 0 for h in hours]
    flagged = [by_hour[h][2] if h in by_hour else 0 for h in hours]
    return hours, everyone, flagged


def incidents(con: duckdb.DuckDBPyConnection, window: Window) -> list[dict]:
    if not has_table(con, "incidents"):
        return []
    scored = scored_window(con, "incidents", window)
    if scored is None:
        return []
    rows = read_window(con, tables.INCIDENTS, scored, ("score DESC", "incident_id")).to_dicts()
    damage = read_incident_damage(con, scored)
    for row in rows:
        row["damage"] = damage.get(row["incident_id"])
        row["evidence"] = _json_list(row.get("evidence"))
        row["members"] = _json_list(row.get("members")) or [row.get("subject")]
    return rows


def _json_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return [value]
    return parsed if isinstance(parsed, list) else [parsed]


CANARY_EVENTS = 200  # matching events listed on a subject page


def canary_overview(con: duckdb.DuckDBPyConnection, window: Window) -> dict | None:
    """The canary registry checked for the window and, per canary, the keys and events that
    matched it; ``None`` when no registry was given."""
    if not has_table(con, "canary_registry"):
        return None
    scored = scored_window(con, "canary_registry", window)
    if scored is None:
        return None
    canaries = _rows(
        con,
        "SELECT r.canary, r.canary_kind, r.definition, count(h.event_id) AS events, "
        "count(DISTINCT h.user_id) AS n_keys, min(h.ts) AS first_seen, "
        "list(DISTINCT h.user_id ORDER BY h.user_id) FILTER (WHERE h.user_id IS NOT NULL) "
        "AS senders FROM canary_registry AS r LEFT JOIN canary_hits AS h "
        "ON h.canary = r.canary AND h.window_start = r.window_start "
        "AND h.window_end = r.window_end WHERE r.window_start = ? AND r.window_end = ? "
        "GROUP BY ALL ORDER BY events DESC, r.canary",
        list(scored),
    )
    for row in canaries:
        row["senders"] = row["senders"] or []
    senders = sorted({k for row in canaries for k in row["senders"]})
    return {"canaries": canaries, "senders": senders, "events": sum(r["events"] for r in canaries)}


def canary_hits(
    con: duckdb.DuckDBPyConnection,
    users: list[str],
    window: Window,
    limit: int | None = CANARY_EVENTS,
) -> list[dict]:
    """The subject's events that matched a canary, with the features they sent, in time order
    (the first ``limit``; ``None``: all, for :func:`hits_of` to pick from)."""
    if not has_table(con, "canary_hits"):
        return []
    scored = scored_window(con, "canary_hits", window)
    if scored is None:
        return []
    rows = _rows(
        con,
        "WITH chosen AS (SELECT DISTINCT unnest(?::VARCHAR[]) AS user_id), "
        "hits AS (SELECT h.* FROM canary_hits AS h SEMI JOIN chosen USING (user_id) "
        "WHERE h.window_start = ? AND h.window_end = ?) "
        "SELECT h.canary, h.canary_kind, h.ts, h.event_id, h.user_id, h.source_ip, h.distance, "
        "e.features FROM hits AS h LEFT JOIN events AS e ON e.event_id = h.event_id "
        "AND e.day = h.day ORDER BY h.ts, h.event_id, h.canary LIMIT ?",
        [users, *scored, limit],
    )
    for row in rows:
        row["features"] = ", ".join(f"{v:.6g}" for v in row["features"] or [])
    return rows


def hits_of(rows: list[dict], users: list[str], limit: int = CANARY_EVENTS) -> list[dict]:
    """The first ``limit`` of the :func:`canary_hits` rows (of several subjects) that one of
    ``users`` sent: what :func:`canary_hits` gives for ``users`` alone."""
    mine = set(users)
    return [row for row in rows if row["user_id"] in mine][:limit]


def risk_tables(con: duckdb.DuckDBPyConnection, window: Window) -> dict | None:
    """The risk register and the attack-defence matrix of the window, when they were made."""
    if not (has_table(con, "risk_register") and has_table(con, "attack_defence_matrix")):
        return None
    scored = scored_window(con, "risk_register", window)
    if scored is None:
        return None
    register = read_window(con, tables.RISK_REGISTER, scored).to_dicts()
    matrix = read_window(con, tables.ATTACK_DEFENCE_MATRIX, scored).to_dicts()
    defences = [c for c in (matrix[0] if matrix else {}) if c != "attack"]
    return {"register": register, "matrix": matrix, "defences": defences}


def privacy_summary(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The latest privacy audit's result with its verdicts (``None``: skipped or not run)."""
    return privacy_of(read_privacy(con))


def privacy_of(result: dict | None) -> dict | None:
    return None if result is None else {**result, "verdicts": privacy_verdicts(result)}


def privacy_verdicts(result: dict) -> dict:
    """``{"membership": "pass"|"fail", "extraction": "pass"|"fail"|"not_gated"}``: the gate's
    own ``verdicts`` when it wrote them, else read from its checks."""
    if isinstance(result.get("verdicts"), dict):
        return result["verdicts"]
    outcome = {True: "pass", False: "fail", None: "not_gated"}
    checks = {c.get("name"): c.get("passed") for c in result.get("checks") or []}
    membership = checks.get("membership_auc", result.get("passed"))
    return {
        "membership": outcome[membership if membership is not None else True],
        "extraction": outcome[checks.get("surrogate_fidelity")],
    }


def confidence_daily(con: duckdb.DuckDBPyConnection, window: Window) -> list[dict] | None:
    """The window's daily confidence statistics (the ``confidence_monitor`` asset), in day
    order; ``None`` when the monitor did not run or lacked the model and training data."""
    if not has_table(con, "confidence_daily"):
        return None
    rows = read_window(con, tables.CONFIDENCE_DAILY, window).to_dicts()
    return rows or None


# ---------------------------------------------------------------- one subject (user or group)


def subject_events(
    con: duckdb.DuckDBPyConnection, users: list[str], window: Window
) -> pl.DataFrame:
    """The events of ``users`` in the window, in time order (one scan for any number of
    users: split them with :func:`events_of`)."""
    return con.sql(
        "SELECT event_id, ts, day, user_id, session_id, source_ip, features, prediction, "
        "probabilities FROM events WHERE user_id IN (SELECT unnest(?::VARCHAR[])) "
        "AND day BETWEEN ? AND ? ORDER BY ts, event_id",
        params=[users, *window],
    ).pl()


def events_of(events: pl.DataFrame, users: list[str]) -> pl.DataFrame:
    """The rows of :func:`subject_events` (of several subjects) that ``users`` sent, in the
    same order: what :func:`subject_events` gives for ``users`` alone."""
    return events.filter(pl.col("user_id").is_in(users))


def population_sample(con: duckdb.DuckDBPyConnection, window: Window) -> pl.DataFrame:
    """A reproducible sample of everyone's events in the window: the ids are chosen first
    (a top-N over one narrow column), then only their rows are read."""
    return con.sql(
        "WITH chosen AS (SELECT event_id FROM events WHERE day BETWEEN ? AND ? "
        "ORDER BY hash(event_id) LIMIT ?) "
        "SELECT features, prediction, probabilities FROM events SEMI JOIN chosen USING (event_id) "
        "WHERE day BETWEEN ? AND ? ORDER BY hash(event_id)",
        params=[*window, POPULATION_SAMPLE, *window],
    ).pl()


def margins(probabilities: pl.Series) -> np.ndarray:
    """Top-1 minus top-2 probability of each response that carried probabilities (the top-1
    alone when there is one class)."""
    shown = probabilities.drop_nulls().cast(pl.List(pl.Float64))
    shown = shown.filter(shown.list.len() > 0)
    widths = shown.list.len().to_numpy()
    out = np.empty(len(shown))
    for width in np.unique(widths):  # one 2-D array per width (responses share one, mostly)
        rows = widths == width
        values = shown.filter(pl.Series(rows)).list.to_array(int(width)).to_numpy()
        if width == 1:
            out[rows] = values[:, 0]
            continue
        top = -np.partition(-values, 1, axis=1)[:, :2]
        out[rows] = top[:, 0] - top[:, 1]
    return out


def feature_percentiles(
    con: duckdb.DuckDBPyConnection, users: list[str], window: Window, limit: int = 10
) -> list[dict]:
    """The subject's behaviour features that stand out most, as population percentiles."""
    return percentiles_of(feature_frame(con, window), users, limit)


def feature_frame(con: duckdb.DuckDBPyConnection, window: Window) -> pl.DataFrame | None:
    """The per-user features of the scored window covering ``window`` (``None``: none)."""
    if not has_table(con, "user_features"):
        return None
    scored = scored_window(con, "user_features", window)
    if scored is None:
        return None
    return read_window(con, tables.USER_FEATURES, scored)


def percentiles_of(frame: pl.DataFrame | None, users: list[str], limit: int = 10) -> list[dict]:
    """:func:`feature_percentiles` from the window's :func:`feature_frame`."""
    if frame is None or "user_id" not in frame.columns:
        return []
    numeric = [c for c, t in frame.schema.items() if t.is_numeric() and c != "user_id"]
    mine = frame.filter(pl.col("user_id").is_in(users))
    if mine.is_empty():
        return []
    rows = []
    for column in numeric:
        values = frame[column].drop_nulls().drop_nans().to_numpy()
        value = mine[column].mean()
        if value is None or not len(values) or not np.isfinite(value):
            continue
        pct = 100.0 * float((values < value).mean() + 0.5 * (values == value).mean())
        rows.append({"feature": column, "value": float(value), "population_percentile": pct})
    rows.sort(key=lambda r: (-abs(r["population_percentile"] - 50.0), r["feature"]))
    return rows[:limit]


def sql_literal(text: str) -> str:
    """A SQL string literal of ``text``; invisible and direction-changing characters are
    spelled ``chr(n)`` so that the statement shows them and still matches exactly."""
    from reports.render import is_hidden

    pieces, plain = [], ""
    for char in text:
        if is_hidden(char):
            pieces += (["'" + plain.replace("'", "''") + "'"] if plain else []) + [
                f"chr({ord(char)})"
            ]
            plain = ""
        else:
            plain += char
    if plain or not pieces:
        pieces.append("'" + plain.replace("'", "''") + "'")
    return " || ".join(pieces)


def sql_to_pull(users: list[str], window: Window) -> str:
    """The exact SQL that pulls the subject's events from the DuckDB file (literals quoted)."""
    quoted = ", ".join(sql_literal(user) for user in users)
    return (
        f"SELECT * FROM events\nWHERE user_id IN ({quoted})\n"
        f"  AND day BETWEEN DATE '{window[0]}' AND DATE '{window[1]}'\nORDER BY ts, event_id;"
    )
