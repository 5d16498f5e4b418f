"""Forensics' results as the rows of their own tables (``damage``, ``incident_damage``,
``defence_replay``, ``user_forensics`` in :mod:`audits.tables`), and read back: an incident's
damage and replay as the report, triage and the risk register use them, and the user scores
with forensics' fidelity and linked group joined."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import polars as pl

from audits import tables
from audits.forensics.damage import Damage

REPLAY_FIELDS = {
    "baseline": ("queries", "trained_on", "fidelity", "fidelity_probabilities"),
    "rate_limit": ("blocked", "fidelity", "legit_blocked", "legit_users_affected", "legit_users"),
    "top1": ("fidelity", "fidelity_without", "legit_responses_changed", "legit_users_affected"),
    "rounding": ("decimals", "fidelity", "fidelity_without", "legit_responses_changed"),
    "randomisation": (
        "scale",
        "seed",
        "fidelity",
        "fidelity_without",
        "fidelity_labels",
        "legit_responses_changed",
        "legit_labels_changed",
        "legit_mean_abs_change",
    ),
    "dedup": (
        "tolerance",
        "duplicates",
        "fidelity",
        "legit_duplicates",
        "legit_queries_affected",
        "legit_labels_changed",
        "legit_users_affected",
    ),
}
"""Each defence's figures in a replay (:func:`audits.forensics.replay_defences`), in its order."""
LIMIT_PERIODS = ("per_minute", "per_hour", "per_day")
OUTPUT_DEFENCES = ("top1", "rounding", "randomisation", "dedup")


def damage_figures(d: Damage) -> dict:
    """A damage estimate as the :data:`audits.tables.DAMAGE_FIGURES` columns."""
    return {
        "est_fidelity": d.fidelity,
        "ci_low": d.ci[0],
        "ci_high": d.ci[1],
        "fidelity_probabilities": d.fidelity_probabilities,
        "queries": d.queries,
        "queries_to_90": d.queries_to_90,
        "surrogate": d.surrogate,
        "trained_on": d.trained_on,
        "curve_queries": [int(n) for n, _ in d.curve],
        "curve_fidelity": [float(f) for _, f in d.curve],
    }


def damage_of_row(row: Mapping) -> dict:
    """The :data:`audits.tables.DAMAGE_FIGURES` columns of a row as :meth:`Damage.to_dict`."""
    curve = zip(row["curve_queries"] or [], row["curve_fidelity"] or [], strict=True)
    return {
        "fidelity": row["est_fidelity"],
        "ci": [row["ci_low"], row["ci_high"]],
        "curve": [[n, f] for n, f in curve],
        "queries_to_90": row["queries_to_90"],
        "queries": row["queries"],
        "surrogate": row["surrogate"],
        "fidelity_probabilities": row["fidelity_probabilities"],
        "trained_on": row["trained_on"],
    }


def replay_rows(incident_id: str, replay: Mapping) -> list[dict]:
    """A replay as ``defence_replay`` rows: the baseline, each rate-limit scenario, then each
    output defence and deduplication the replay has."""
    parts: list[tuple[str, str | None, Mapping]] = [("baseline", None, replay)]
    parts += [("rate_limit", name, r) for name, r in (replay.get("rate_limit") or {}).items()]
    parts += [(name, None, replay[name]) for name in OUTPUT_DEFENCES if name in replay]
    rows = []
    for position, (defence, scenario, figures) in enumerate(parts):
        row = dict.fromkeys(tables.DEFENCE_REPLAY.schema)
        row.update({k: figures[k] for k in REPLAY_FIELDS[defence]})
        if defence == "rate_limit":
            row.update(figures["limits"])
        row.update(incident_id=incident_id, position=position, defence=defence, scenario=scenario)
        rows.append(row)
    return rows


def replay_of_rows(rows: list[Mapping]) -> dict:
    """The replay dict :func:`replay_rows` was given, from its rows in ``position`` order."""
    out: dict = {}
    for row in rows:
        defence = row["defence"]
        figures = {k: row[k] for k in REPLAY_FIELDS[defence]}
        if defence == "baseline":
            out.update(figures, rate_limit={})
        elif defence == "rate_limit":
            limits = {p: row[p] for p in LIMIT_PERIODS if row[p] is not None}
            out["rate_limit"][row["scenario"]] = {"limits": limits, **figures}
        else:
            out[defence] = figures
    return out


def incident_frames(
    incident_damage: Mapping[str, tuple[Damage, dict]],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``incident_damage`` and ``defence_replay`` rows of each incident's
    ``(damage, replay)``."""
    damage = [{"incident_id": i, **damage_figures(d)} for i, (d, _) in incident_damage.items()]
    replays = [row for i, (_, r) in incident_damage.items() for row in replay_rows(i, r)]
    return (
        pl.DataFrame(damage, schema=tables.INCIDENT_DAMAGE.schema),
        pl.DataFrame(replays, schema=tables.DEFENCE_REPLAY.schema),
    )


def user_frame(fidelity: Mapping[str, float], groups: Mapping[str, str]) -> pl.DataFrame:
    """The ``user_forensics`` rows: each flagged user's fidelity and linked group."""
    return pl.DataFrame(
        {
            "user_id": list(fidelity),
            "est_fidelity": list(fidelity.values()),
            "group_id": [groups.get(u) for u in fidelity],
        },
        schema=tables.USER_FORENSICS.schema,
    )


def read_incident_damage(con: duckdb.DuckDBPyConnection, window: tables.Window) -> dict[str, dict]:
    """``{incident_id: damage}`` of the window (:meth:`Damage.to_dict` with its ``replay``);
    empty when forensics did not run."""
    if not tables.exists(con, tables.INCIDENT_DAMAGE):
        return {}
    replays: dict[str, list[dict]] = {}
    if tables.exists(con, tables.DEFENCE_REPLAY):
        for row in tables.read_window(con, tables.DEFENCE_REPLAY, window).iter_rows(named=True):
            replays.setdefault(row["incident_id"], []).append(row)
    return {
        row["incident_id"]: {
            **damage_of_row(row),
            "replay": replay_of_rows(replays[row["incident_id"]])
            if row["incident_id"] in replays
            else None,
        }
        for row in tables.read_window(con, tables.INCIDENT_DAMAGE, window).iter_rows(named=True)
    }


def with_forensics(
    con: duckdb.DuckDBPyConnection, scores: pl.DataFrame, window: tables.Window
) -> pl.DataFrame:
    """The window's user scores with forensics' ``est_fidelity`` and ``group_id`` in place of
    detection's for the users forensics estimated (the columns and their order unchanged)."""
    if not tables.exists(con, tables.USER_FORENSICS):
        return scores
    found = tables.read_window(con, tables.USER_FORENSICS, window)
    if found.height == 0:
        return scores
    joined = scores.join(
        found.with_columns(pl.lit(True).alias("_estimated")),
        on="user_id",
        how="left",
        suffix="_forensics",
    )
    estimated = pl.col("_estimated").fill_null(False)
    return joined.with_columns(
        pl.when(estimated).then(pl.col(f"{c}_forensics")).otherwise(pl.col(c)).alias(c)
        for c in ("est_fidelity", "group_id")
    ).select(scores.columns)
