"""The window tables: each declared once (its columns and their Polars types; the DuckDB DDL is
derived), with the one way to read and to replace an audit window's rows.

Every window table starts with ``window_start`` and ``window_end`` (the audit window, inclusive
UTC days); :func:`read_window` returns a window's rows without them, :func:`replace_window`
writes a frame as a window's rows. Values reach SQL as bound parameters or a registered frame,
never as SQL text; table and column names come from these declarations only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import duckdb
import polars as pl

from audits.canaries import HITS_SCHEMA, REGISTRY_SCHEMA
from audits.confidence import CONFIDENCE_SCHEMA
from audits.features import FEATURE_COLUMNS
from audits.risk import DEFENCES, REGISTER_COLUMNS
from audits.scoring import INCIDENTS_SCHEMA, USER_SCORES_SCHEMA

Window = tuple[dt.date, dt.date]
WINDOW_COLUMNS = ("window_start", "window_end")


def sql_type(dtype: pl.DataType) -> str:
    """The DuckDB type a Polars column is stored as."""
    if isinstance(dtype, pl.List):
        return sql_type(dtype.inner) + "[]"
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP"
    return _SQL_TYPES[dtype]


_SQL_TYPES = {
    pl.String: "VARCHAR",
    pl.Float64: "DOUBLE",
    pl.Int64: "BIGINT",
    pl.Boolean: "BOOLEAN",
    pl.Date: "DATE",
}


@dataclass(frozen=True)
class Table:
    """A window table: its name, its columns after the window (in order, with their Polars
    types), the columns that may not be null and the row order reads default to."""

    name: str
    columns: Mapping[str, pl.DataType]
    required: tuple[str, ...] = ()
    order: tuple[str, ...] = field(default=())
    windowed: bool = True  # False: the rows of the latest run, whatever the window

    @property
    def schema(self) -> dict[str, pl.DataType]:
        """The Polars schema of a window's rows (the window columns excluded)."""
        return dict(self.columns)

    @property
    def ddl(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` with the window columns first (when windowed)."""
        window = WINDOW_COLUMNS if self.windowed else ()
        columns = [f"{name} DATE NOT NULL" for name in window] + [
            f"{name} {sql_type(dtype)}" + (" NOT NULL" if name in self.required else "")
            for name, dtype in self.columns.items()
        ]
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(columns)})"

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)


def create(con: duckdb.DuckDBPyConnection, *tables: Table) -> None:
    """Create each table when missing."""
    for table in tables:
        con.execute(table.ddl)


def exists(con: duckdb.DuckDBPyConnection, table: Table) -> bool:
    rows = con.sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", params=[table.name]
    ).fetchall()
    return rows[0][0] > 0


def read_window(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    window: Window,
    order: Sequence[str] | None = None,
    where: str = "",
    params: Sequence = (),
) -> pl.DataFrame:
    """The window's rows of ``table`` (every stored column but the window's), in ``order``
    (default: the table's). ``where`` adds a condition whose values are ``params``."""
    keys = ", ".join(order if order is not None else table.order)
    condition = f" AND ({where})" if where else ""
    return con.sql(
        f"SELECT * EXCLUDE (window_start, window_end) FROM {table.name} "
        f"WHERE window_start = ? AND window_end = ?{condition}"
        + (f" ORDER BY {keys}" if keys else ""),
        params=[*window, *params],
    ).pl()


def delete_window(con: duckdb.DuckDBPyConnection, table: Table, window: Window) -> None:
    con.execute(f"DELETE FROM {table.name} WHERE window_start = ? AND window_end = ?", list(window))


def replace_window(
    con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame, window: Window
) -> None:
    """Create ``table`` when missing and replace its rows of ``window`` with ``frame``."""
    create(con, table)
    delete_window(con, table, window)
    staged = frame.select(
        pl.lit(window[0]).alias("window_start"), pl.lit(window[1]).alias("window_end"), pl.all()
    )
    con.register("_staged", staged.to_arrow())
    try:
        columns = ", ".join(staged.columns)
        con.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM _staged")
    finally:
        con.unregister("_staged")


def read_all(con: duckdb.DuckDBPyConnection, table: Table) -> pl.DataFrame:
    """The rows of a table that is not windowed (empty when it is missing)."""
    if not exists(con, table):
        return table.empty()
    keys = ", ".join(table.order)
    return con.sql(f"SELECT * FROM {table.name}" + (f" ORDER BY {keys}" if keys else "")).pl()


def replace_all(con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame) -> None:
    """Create a table that is not windowed when missing and replace all its rows with
    ``frame``."""
    create(con, table)
    con.execute(f"DELETE FROM {table.name}")
    con.register("_staged", frame.select(list(table.schema)).to_arrow())
    try:
        columns = ", ".join(table.schema)
        con.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM _staged")
    finally:
        con.unregister("_staged")


USER_FEATURES = Table(
    "user_features",
    {"user_id": pl.String, **dict.fromkeys(FEATURE_COLUMNS, pl.Float64)},
    required=("user_id",),
    order=("user_id",),
)
USER_SCORES = Table(
    "user_scores", USER_SCORES_SCHEMA, required=("user_id",), order=("user_id",)
)  # its score_* columns: one per detector of audits.detectors.REGISTRY (SCORE_COLUMNS)
SCORE_GROUPS = Table(
    "score_groups",
    {
        "group_id": pl.String,
        "members": pl.List(pl.String),
        "score": pl.Float64,
        "flagged": pl.Boolean,
        "threshold": pl.Float64,
        "threshold_method": pl.String,
    },
    required=("group_id",),
    order=("group_id",),
)
INCIDENTS = Table(
    "incidents",
    INCIDENTS_SCHEMA,
    required=("incident_id", "kind", "subject"),
    order=("incident_id",),
)
CANARY_HITS = Table(
    "canary_hits",
    HITS_SCHEMA,
    required=("canary", "canary_kind", "event_id"),
    order=("user_id", "ts", "event_id", "canary"),
)
CANARY_REGISTRY = Table(
    "canary_registry", REGISTRY_SCHEMA, required=("canary", "canary_kind"), order=("canary",)
)
CONFIDENCE_DAILY = Table("confidence_daily", CONFIDENCE_SCHEMA, required=("day",), order=("day",))
RISK_REGISTER = Table("risk_register", dict.fromkeys(REGISTER_COLUMNS, pl.String))
ATTACK_DEFENCE_MATRIX = Table(
    "attack_defence_matrix", {"attack": pl.String, **dict.fromkeys(DEFENCES, pl.String)}
)
DAMAGE_FIGURES = {
    "est_fidelity": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "fidelity_probabilities": pl.Float64,
    "queries": pl.Int64,
    "queries_to_90": pl.Int64,
    "surrogate": pl.String,
    "trained_on": pl.Int64,
    "curve_queries": pl.List(pl.Int64),
    "curve_fidelity": pl.List(pl.Float64),
}
"""A damage estimate's columns (:class:`audits.forensics.Damage`; the curve as two lists)."""

DAMAGE = Table(
    "damage",
    {
        "subject": pl.String,
        "kind": pl.String,
        "members": pl.List(pl.String),
        **DAMAGE_FIGURES,
        "reference": pl.String,
    },
    required=("subject", "kind"),
    order=("kind", "subject"),
)  # one row per flagged user, linked group and group incident
INCIDENT_DAMAGE = Table(
    "incident_damage",
    {"incident_id": pl.String, **DAMAGE_FIGURES},
    required=("incident_id",),
    order=("incident_id",),
)  # the damage of each incident's keys, joined to ``incidents`` when read
DEFENCE_REPLAY = Table(
    "defence_replay",
    {
        "incident_id": pl.String,
        "position": pl.Int64,
        "defence": pl.String,  # baseline, rate_limit, top1, rounding, randomisation, dedup
        "scenario": pl.String,  # the rate-limit scenario (per_minute, ..., combined)
        "queries": pl.Int64,
        "trained_on": pl.Int64,
        "fidelity": pl.Float64,
        "fidelity_probabilities": pl.Float64,
        "fidelity_without": pl.Float64,
        "fidelity_labels": pl.Float64,
        "per_minute": pl.Int64,
        "per_hour": pl.Int64,
        "per_day": pl.Int64,
        "blocked": pl.Int64,
        "decimals": pl.Int64,
        "scale": pl.Float64,
        "seed": pl.Int64,
        "tolerance": pl.Float64,
        "duplicates": pl.Int64,
        "legit_blocked": pl.Int64,
        "legit_users_affected": pl.Int64,
        "legit_users": pl.Int64,
        "legit_responses_changed": pl.Int64,
        "legit_labels_changed": pl.Int64,
        "legit_mean_abs_change": pl.Float64,
        "legit_duplicates": pl.Int64,
        "legit_queries_affected": pl.Int64,
    },
    required=("incident_id", "position", "defence"),
    order=("incident_id", "position"),
)  # each incident's defence replay, a row per defence (and per rate-limit scenario)
USER_FORENSICS = Table(
    "user_forensics",
    {"user_id": pl.String, "est_fidelity": pl.Float64, "group_id": pl.String},
    required=("user_id",),
    order=("user_id",),
)  # each flagged user's fidelity and linked group: user_scores' two columns, joined when read

WINDOW_TABLES = (
    USER_FEATURES,
    USER_SCORES,
    SCORE_GROUPS,
    INCIDENTS,
    CANARY_HITS,
    CANARY_REGISTRY,
    CONFIDENCE_DAILY,
    RISK_REGISTER,
    ATTACK_DEFENCE_MATRIX,
    DAMAGE,
    INCIDENT_DAMAGE,
    DEFENCE_REPLAY,
    USER_FORENSICS,
)
"""Every window table, in the order the audit writes them."""

PRIVACY_AUDIT = Table(
    "privacy_audit",
    {
        "passed": pl.Boolean,
        "membership_auc": pl.Float64,
        "surrogate_fidelity": pl.Float64,
        "target_accuracy": pl.Float64,
        "model_sha256": pl.String,
        "membership": pl.String,  # the gate's verdicts: pass, fail
        "extraction": pl.String,  # pass, fail, not_gated
        "result": pl.String,  # the whole result as the gate's privacy_audit.json holds it
    },
    windowed=False,
)
"""The privacy audit of the served model: one row (none when the audit was skipped), replaced
by every run of the ``privacy_audit`` asset, so a later step never reads an earlier run's."""
