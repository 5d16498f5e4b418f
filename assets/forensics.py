"""Forensics asset: the damage of every flagged user and group, linked Sybil groups and the
defence replay of every incident.

A thin wrapper over :mod:`audits.forensics`: reads the window's scores and incidents from
DuckDB and its events through a :class:`audits.event_source.DuckDBSource` (one subject's events
at a time, the legitimate users' a batch at a time, samples for the reference and the
probability columns: memory follows a subject and a batch, not the window), writes the
``damage`` table (replacing the window's rows), fills ``user_scores.est_fidelity`` /
``group_id`` and ``incidents.est_fidelity`` / ``damage`` for the window, and rewrites
``OUT/user_scores.parquet``. Every log-derived value reaches SQL as a bound parameter or a
registered frame.
"""

import json

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, asset
from dagster_duckdb import DuckDBResource

from assets.common import preview
from assets.detection import load_reference
from assets.partitions import DUCKDB_POOL
from assets.progress import progress_for
from assets.resources import AuditConfig, audit_window
from audits import forensics as fx
from audits import tables
from audits.errors import InputError
from audits.event_source import DuckDBSource, EventSource

# a store from before the training budget
DAMAGE_MIGRATION = "ALTER TABLE damage ADD COLUMN IF NOT EXISTS trained_on BIGINT"


class ForensicsConfig(Config):
    """Run configuration: the defences to replay and the cost bounds."""

    rate_limit_per_minute: int | None = fx.DEFAULT_RATE_LIMITS["minute"]
    rate_limit_per_hour: int | None = fx.DEFAULT_RATE_LIMITS["hour"]
    rate_limit_per_day: int | None = fx.DEFAULT_RATE_LIMITS["day"]
    round_decimals: int = fx.DEFAULT_ROUND_DECIMALS
    noise_scale: float = fx.DEFAULT_NOISE_SCALE
    dedup_tolerance: float = fx.DEFAULT_DEDUP_TOLERANCE
    reference_rows: int = fx.REFERENCE_ROWS
    train_budget: int = fx.TRAIN_BUDGET  # queries per surrogate at most (0: every query)
    workers: int = 0  # processes estimating subjects (0: one per core, at most 4; 1: in-process)
    seed: int = 0

    def rate_limits(self) -> dict[str, int]:
        limits = {
            "minute": self.rate_limit_per_minute,
            "hour": self.rate_limit_per_hour,
            "day": self.rate_limit_per_day,
        }
        return {k: int(v) for k, v in limits.items() if v is not None and v > 0}


def forensic_reference(
    audit: AuditConfig, events: EventSource | pl.DataFrame, flagged: list[str], rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Reference inputs and the served model's answers on them: ``--reference`` labelled by
    ``--model`` when both are given, else a sample of unflagged users' logged traffic."""
    reference = load_reference(audit) if audit.model else None
    if reference is not None:
        model = audit.served_model()
        if reference.shape[1] != model.n_features_in:
            raise InputError(
                f"reference data has {reference.shape[1]} columns, the model takes "
                f"{model.n_features_in} inputs"
            )
        if len(reference) > rows:
            pick = np.random.default_rng(seed).choice(len(reference), rows, replace=False)
            reference = reference[np.sort(pick)]
        return reference, np.asarray(model.predict(reference)), "reference"
    X, y = fx.logged_reference(events, flagged, rows=rows, seed=seed)
    return X, y, "logged"


def _members_key(members) -> tuple[str, ...]:
    return tuple(sorted(members))


@asset(deps=["user_scores", "incidents"], pool=DUCKDB_POOL, group_name="forensics")
def forensics(
    context: AssetExecutionContext,
    config: ForensicsConfig,
    duckdb: DuckDBResource,
    audit: AuditConfig,
) -> MaterializeResult:
    """How much of the model each flagged user and group obtained (surrogate fidelity with a
    bootstrap interval, fidelity against queries, queries to 90%), linked groups, and what a
    rate limit, output minimisation, randomised responses or query deduplication would have done
    to each incident and to legitimate users."""
    with duckdb.get_connection() as con:
        window = audit_window(context, audit, con)
        tables.create(con, tables.DAMAGE)
        con.execute(DAMAGE_MIGRATION)
        if window is None:
            return MaterializeResult(metadata={"rows": 0})
        tables.create(con, tables.USER_SCORES)
        scores = tables.read_window(con, tables.USER_SCORES, window)
        flagged = scores.filter(pl.col("flagged").fill_null(False))["user_id"].to_list()
        tables.delete_window(con, tables.DAMAGE, window)
        if not flagged:
            context.log.info("no flagged users: no damage to estimate")
            return MaterializeResult(metadata={"rows": 0, "flagged": 0})
        incidents = (
            tables.read_window(con, tables.INCIDENTS, window, order=())
            if tables.exists(con, tables.INCIDENTS)
            else tables.INCIDENTS.empty()
        ).select("incident_id", "kind", "subject", "members")
        table, fidelity, groups, incident_damage = forensics_of(
            config,
            audit,
            DuckDBSource(con, window),
            scores,
            flagged,
            incidents,
            progress_for(context),
        )
        _write(con, window, table, fidelity, groups, incident_damage, audit)
    return MaterializeResult(
        metadata={
            "rows": table.height,
            "flagged": len(flagged),
            "groups": len(set(groups.values())),
            "incidents": len(incident_damage),
            "reference": table["reference"][0] if table.height else "",
            "window": f"{window[0]}..{window[1]}",
            "preview": preview(
                table.select(
                    "subject",
                    "kind",
                    "est_fidelity",
                    "ci_low",
                    "ci_high",
                    "queries",
                    "queries_to_90",
                )
            ),
        }
    )


def _subjects(flagged, groups, incidents) -> list[tuple[str, str, list[str]]]:
    """``(kind, subject, members)`` of every damage row: each flagged user, each linked group
    and each group incident's members not linked as one group."""
    subjects: list[tuple[str, str, list[str]]] = [("user", u, [u]) for u in sorted(flagged)]
    linked: dict[str, list[str]] = {}
    for uid, gid in groups.items():
        linked.setdefault(gid, []).append(uid)
    subjects += [("group", gid, sorted(m)) for gid, m in sorted(linked.items())]
    for inc in incidents.iter_rows(named=True):
        if inc["kind"] == "group" and inc["subject"] not in linked:
            subjects.append(("group", inc["subject"], _incident_members(inc)))
    seen: set[tuple[str, str]] = set()
    unique = []
    for kind, subject, members in subjects:
        if (kind, subject) not in seen:
            seen.add((kind, subject))
            unique.append((kind, subject, members))
    return unique


def _incident_members(inc: dict) -> list[str]:
    return sorted(inc["members"] or [inc["subject"]])


def forensics_of(config, audit, source: EventSource, scores, flagged, incidents, log):
    """The damage table, each flagged user's fidelity, the linked groups and each incident's
    ``(damage, replay)`` from the window's events in ``source``: one subject (a key or a group's
    keys) read and estimated at a time, the legitimate users' defence costs once, a batch at a
    time."""
    if config.train_budget < 0:
        raise InputError(f"train_budget must be 0 (no budget) or more, not {config.train_budget}")
    if config.workers < 0:
        raise InputError(f"workers must be 0 (one per core) or more, not {config.workers}")
    seed = config.seed
    ref_X, ref_y, ref_kind = forensic_reference(audit, source, flagged, config.reference_rows, seed)
    if len(ref_y) == 0:
        raise InputError(
            "no reference inputs: give --reference and --model, or logs of "
            "unflagged users with predictions"
        )
    ref_y = fx.as_labels(ref_y)
    width, scale = ref_X.shape[1], ref_X.std(axis=0)
    columns = fx.proba_columns(source)
    existing = dict(zip(scores["user_id"].to_list(), scores["group_id"].to_list(), strict=True))
    groups = fx.link_groups(source, flagged, existing=existing, scale=scale)
    subjects = _subjects(flagged, groups, incidents)
    incident_keys = {
        inc["incident_id"]: _members_key(_incident_members(inc))
        for inc in incidents.iter_rows(named=True)
    }
    defences = {
        "rate_limits": config.rate_limits(),
        "round_decimals": config.round_decimals,
        "noise_scale": config.noise_scale,
        "dedup_tolerance": config.dedup_tolerance,
        "seed": seed,
    }
    replay_keys = set(incident_keys.values())
    legit = None
    if replay_keys:  # once per window: every incident's replay shares it
        legit = fx.legit_costs(source, exclude=flagged, width=width, scale=scale, **defences)
    task = fx.SubjectTask(ref_X, ref_y, columns, seed, config.train_budget, defences, legit)
    keys = [*incident_keys.values(), *(_members_key(m) for _, _, m in subjects)]
    # one subject's events read at a time, while the workers estimate the ones before it
    work = (
        (key, fx.traffic(source.fetch(list(key)), width), key in replay_keys)
        for key in dict.fromkeys(keys)
    )
    workers = config.workers or fx.default_workers()
    damages: dict[tuple[str, ...], fx.Damage] = {}
    replays: dict[tuple[str, ...], dict] = {}
    total = len(dict.fromkeys(keys))
    log(f"forensics: {total} subjects (keys and groups) on {workers} worker(s)")
    for number, (key, damage, replay) in enumerate(fx.estimate_subjects(task, work, workers), 1):
        damages[key] = damage
        if replay is not None:
            replays[key] = replay
        who = key[0] if len(key) == 1 else f"group of {len(key)} keys"
        log(
            f"forensics: subject {number}/{total}: {who}: fidelity {damage.fidelity:.3f}"
            + (", defences replayed" if replay is not None else "")
        )
    rows = []
    for kind, subject, members in subjects:
        d = damages[_members_key(members)]
        replay = replays.get(_members_key(members))
        rows.append(
            {
                "subject": subject,
                "kind": kind,
                "members": members,
                "est_fidelity": d.fidelity,
                "ci_low": d.ci[0],
                "ci_high": d.ci[1],
                "fidelity_probabilities": d.fidelity_probabilities,
                "queries": d.queries,
                "queries_to_90": d.queries_to_90,
                "surrogate": d.surrogate,
                "reference": ref_kind,
                "curve": json.dumps(d.curve),
                "replay": json.dumps(replay) if replay is not None else None,
                "trained_on": d.trained_on,
            }
        )
    table = pl.DataFrame(rows, schema=tables.DAMAGE.schema)
    fidelity = {u: damages[(u,)].fidelity for u in flagged if (u,) in damages}
    incident_damage = {i: (damages[k], replays[k]) for i, k in incident_keys.items()}
    return table, fidelity, groups, incident_damage


def _write(con, window, table, fidelity, groups, incident_damage, audit) -> None:
    params = list(window)
    tables.replace_window(con, tables.DAMAGE, table, window)
    updates = pl.DataFrame(
        {
            "user_id": list(fidelity),
            "est_fidelity": list(fidelity.values()),
            "group_id": [groups.get(u) for u in fidelity],
        },
        schema={"user_id": pl.String, "est_fidelity": pl.Float64, "group_id": pl.String},
    )
    con.register("_fx_users", updates.to_arrow())
    try:
        con.execute(
            "UPDATE user_scores AS s SET est_fidelity = u.est_fidelity, group_id = u.group_id "
            "FROM _fx_users AS u WHERE s.user_id = u.user_id "
            "AND s.window_start = ? AND s.window_end = ?",
            params,
        )
    finally:
        con.unregister("_fx_users")
    con.execute("ALTER TABLE incidents ADD COLUMN IF NOT EXISTS est_fidelity DOUBLE")
    con.execute("ALTER TABLE incidents ADD COLUMN IF NOT EXISTS damage VARCHAR")
    if incident_damage:
        inc = pl.DataFrame(
            {
                "incident_id": list(incident_damage),
                "est_fidelity": [d.fidelity for d, _ in incident_damage.values()],
                "damage": [
                    json.dumps({**d.to_dict(), "replay": r}) for d, r in incident_damage.values()
                ],
            },
            schema={"incident_id": pl.String, "est_fidelity": pl.Float64, "damage": pl.String},
        )
        con.register("_fx_incidents", inc.to_arrow())
        try:
            con.execute(
                "UPDATE incidents AS i SET est_fidelity = d.est_fidelity, damage = d.damage "
                "FROM _fx_incidents AS d WHERE i.incident_id = d.incident_id "
                "AND i.window_start = ? AND i.window_end = ?",
                params,
            )
        finally:
            con.unregister("_fx_incidents")
    scores = tables.read_window(con, tables.USER_SCORES, window)
    scores = scores.select([pl.col(c).cast(t) for c, t in tables.USER_SCORES.schema.items()])
    scores.write_parquet(audit.out_path / "user_scores.parquet")


forensics_assets = [forensics]
