"""Canary (honey-trap) queries: inputs no legitimate client would ever send.

A team plants canaries where a scraper, not a reader, picks them up (rows of a downloadable
sample data set, examples generated into the API reference, a value only the docs use) and
lists them in a registry. Any key that sends one, exactly or within the tolerance, is an
incident: the matching events are the evidence.

The registry is a TOML file::

    tolerance = 1e-9            # optional: default absolute tolerance per feature
    rtol = 1e-6                 # optional: default tolerance relative to the canary's value
    vectors = "canaries.csv"    # optional: more vectors from a CSV, Parquet or .npy file

    [[vector]]
    name = "docs-sample-17"
    values = [0.52, 1830.0, 3.25]
    tolerance = 0.0             # optional: this vector's own (0 and rtol = 0: exact)

    [[rule]]
    name = "negative-balance"
    when = "f3 < -12.5 and f0 == f1"   # or: all = ["f3 < -12.5", "f0 == f1"]

Vector match: every feature ``i`` of the query lies within ``max(tolerance, rtol * |v_i|)``
of the canary's ``v_i`` (L-infinity; the query must have the canary's width). Defaults: absolute
``DEFAULT_TOLERANCE`` = 1e-9 and relative ``DEFAULT_RTOL`` = 1e-6, i.e. the canary itself as it
survives a float round trip through JSON, CSV or a client's own formatting, not a neighbour of
it. Rules are conditions ``f<i> <op> <number | f<j>>`` (``op`` one of ``< <= > >= == !=``,
features numbered from 0) joined by ``and``, parsed by a small grammar (never evaluated as
code) and run as SQL with the numbers bound as parameters. Vector files: numeric columns are
the values, in order; an optional text column ``name`` names each row (else ``<file>#<row>``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from audits.errors import InputError

DEFAULT_TOLERANCE = 1e-9
DEFAULT_RTOL = 1e-6
EVIDENCE_EVENTS = 50  # event ids listed per canary in an incident's evidence (all are in the table)
OPERATORS = ("<=", ">=", "==", "!=", "<", ">")
_CONDITION = re.compile(
    r"^\s*f(\d{1,5})\s*(<=|>=|==|!=|<|>)\s*(?:f(\d{1,5})|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))\s*$"
)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_TOP_KEYS = {"tolerance", "rtol", "vectors", "vector", "rule"}
_VECTOR_KEYS = {"name", "values", "tolerance", "rtol"}
_RULE_KEYS = {"name", "when", "all"}

HITS_SCHEMA = {
    "canary": pl.String,
    "canary_kind": pl.String,
    "event_id": pl.String,
    "ts": pl.Datetime("us"),
    "day": pl.Date,
    "user_id": pl.String,
    "source_ip": pl.String,
    "distance": pl.Float64,
}
REGISTRY_SCHEMA = {
    "canary": pl.String,
    "canary_kind": pl.String,
    "definition": pl.String,
    "width": pl.Int64,
}


@dataclass(frozen=True)
class Condition:
    """``f<left> <op> <f<right_feature> | value>``, features numbered from 0."""

    left: int
    op: str
    right_feature: int | None = None
    value: float | None = None

    def __str__(self) -> str:
        right = f"f{self.right_feature}" if self.right_feature is not None else repr(self.value)
        return f"f{self.left} {self.op} {right}"


@dataclass(frozen=True)
class VectorCanary:
    name: str
    values: tuple[float, ...]
    tolerance: float = DEFAULT_TOLERANCE
    rtol: float = DEFAULT_RTOL

    def bounds(self) -> tuple[list[float], list[float]]:
        """Per feature, the lowest and highest value that still matches."""
        v = np.asarray(self.values, dtype=np.float64)
        tol = np.maximum(self.tolerance, self.rtol * np.abs(v))
        return (v - tol).tolist(), (v + tol).tolist()


@dataclass(frozen=True)
class RuleCanary:
    name: str
    conditions: tuple[Condition, ...]

    @property
    def text(self) -> str:
        return " and ".join(str(c) for c in self.conditions)

    @property
    def width(self) -> int:
        """The fewest features a query needs for the rule to apply."""
        used = [c.left for c in self.conditions]
        used += [c.right_feature for c in self.conditions if c.right_feature is not None]
        return max(used) + 1


@dataclass(frozen=True)
class Registry:
    vectors: tuple[VectorCanary, ...]
    rules: tuple[RuleCanary, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.vectors) + len(self.rules)

    def table(self) -> pl.DataFrame:
        """One row per canary: what it is, for the report (``REGISTRY_SCHEMA``)."""
        rows = [
            {
                "canary": v.name,
                "canary_kind": "vector",
                "definition": f"{len(v.values)} values, within max({v.tolerance:g}, "
                f"{v.rtol:g} x |value|) per feature",
                "width": len(v.values),
            }
            for v in self.vectors
        ]
        rows += [
            {"canary": r.name, "canary_kind": "rule", "definition": r.text, "width": r.width}
            for r in self.rules
        ]
        return pl.DataFrame(rows, schema=REGISTRY_SCHEMA)


# ---------------------------------------------------------------- parsing


def parse_rule(text: str, where: str = "rule") -> tuple[Condition, ...]:
    """``"f3 < 0 and f0 == f1"`` as conditions; anything else is an :class:`InputError`."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: a condition must be text like 'f3 < 0'")
    out = []
    for part in _AND.split(text.strip()):
        m = _CONDITION.match(part)
        if m is None:
            raise InputError(
                f"{where}: cannot read condition {part.strip()!r}; write f<i> <op> "
                f"<number or f<j>> with op one of {' '.join(OPERATORS)}, joined by 'and'"
            )
        left, op, right, number = m.groups()
        if right is not None:
            out.append(Condition(int(left), op, right_feature=int(right)))
            continue
        value = float(number)
        if not math.isfinite(value):
            raise InputError(f"{where}: {part.strip()!r} compares with a non-finite number")
        out.append(Condition(int(left), op, value=value))
    return tuple(out)


def _number(value, what: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise InputError(f"{what} must be a finite number{bound}, got {value!r}")
    return value


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def load_registry(path: str | Path) -> Registry:
    """The canary registry at ``path``; a bad file is one :class:`InputError` line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"canary registry not found: {path}")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"canary registry {path} is not valid TOML: {exc}") from None
    return parse_registry(doc, base=path.parent, source=str(path))


def _named_entries(doc: dict, key: str, plural: str, allowed, source: str):
    """``(where, name, table)`` for each ``[[key]]`` table, each checked for its keys and name."""
    entries = doc.get(key, [])
    if not isinstance(entries, list):
        raise InputError(f"{source}: write {plural} as [[{key}]] tables")
    for k, entry in enumerate(entries, 1):
        where = f"{source}: [[{key}]] {k}"
        if not isinstance(entry, dict):
            raise InputError(f"{where} is not a table")
        _check_keys(entry, allowed, where)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where} needs a name")
        yield where, name, entry


def parse_registry(doc: dict, *, base: Path | None = None, source: str = "registry") -> Registry:
    """A registry from parsed TOML; ``base`` resolves a relative ``vectors`` file."""
    _check_keys(doc, _TOP_KEYS, source)
    tolerance = _number(doc.get("tolerance", DEFAULT_TOLERANCE), f"{source}: tolerance", minimum=0)
    rtol = _number(doc.get("rtol", DEFAULT_RTOL), f"{source}: rtol", minimum=0)
    vectors: list[VectorCanary] = []
    for where, name, entry in _named_entries(doc, "vector", "vectors", _VECTOR_KEYS, source):
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise InputError(f"{where} ({name}) needs values = [numbers]")
        numbers = tuple(_number(v, f"{where} ({name}) values") for v in values)
        vectors.append(
            VectorCanary(
                name,
                numbers,
                _number(entry.get("tolerance", tolerance), f"{where} tolerance", minimum=0),
                _number(entry.get("rtol", rtol), f"{where} rtol", minimum=0),
            )
        )
    files = doc.get("vectors", [])
    for file in [files] if isinstance(files, str) else files:
        if not isinstance(file, str):
            raise InputError(f"{source}: vectors must name a file (CSV, Parquet or .npy)")
        vectors += _file_vectors((base or Path(".")) / file, tolerance, rtol)
    rules: list[RuleCanary] = []
    for where, name, entry in _named_entries(doc, "rule", "rules", _RULE_KEYS, source):
        if ("when" in entry) == ("all" in entry):
            raise InputError(f'{where} ({name}) needs one of when = "..." or all = [...]')
        parts = [entry["when"]] if "when" in entry else entry["all"]
        if not isinstance(parts, list) or not parts:
            raise InputError(f"{where} ({name}): all must be a list of conditions")
        conditions = tuple(c for part in parts for c in parse_rule(part, f"{where} ({name})"))
        rules.append(RuleCanary(name, conditions))
    names = [v.name for v in vectors] + [r.name for r in rules]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{source}: canary name {name!r} is used twice")
        seen.add(name)
    if not names:
        raise InputError(f"{source}: no canaries ([[vector]], vectors = file or [[rule]])")
    return Registry(tuple(vectors), tuple(rules), source)


def _file_vectors(path: Path, tolerance: float, rtol: float) -> list[VectorCanary]:
    if not path.is_file():
        raise InputError(f"canary vectors file not found: {path}")
    names: list[str] | None = None
    try:
        if path.suffix == ".npy":
            matrix = np.atleast_2d(np.load(path, allow_pickle=False)).astype(np.float64)
        else:
            frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
            if "name" in frame.columns:
                names = [str(n) for n in frame["name"].to_list()]
            numeric = [c for c, t in frame.schema.items() if t.is_numeric() and c != "name"]
            if not numeric:
                raise InputError(f"canary vectors file {path} has no numeric columns")
            matrix = frame.select(numeric).to_numpy().astype(np.float64)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"cannot read canary vectors file {path}: {exc}") from None
    if matrix.ndim != 2 or matrix.size == 0:
        raise InputError(f"canary vectors file {path} holds no vectors")
    if not np.isfinite(matrix).all():
        raise InputError(f"canary vectors file {path} has missing or non-finite values")
    names = names or [f"{path.name}#{i + 1}" for i in range(len(matrix))]
    return [
        VectorCanary(name, tuple(row.tolist()), tolerance, rtol)
        for name, row in zip(names, matrix, strict=True)
    ]


# ---------------------------------------------------------------- matching


_HIT_COLUMNS = "e.event_id, e.ts, e.day, e.user_id, e.source_ip"


def find_hits(con, window: tuple[dt.date, dt.date], registry: Registry) -> pl.DataFrame:
    """Every event of the window that matches a canary (``HITS_SCHEMA``), in DuckDB over the
    ``events`` table: vectors through a range join on the first feature, then all features
    checked against the tolerance box; rules as SQL with their numbers bound."""
    parts = []
    if registry.vectors:
        parts.append(_vector_hits(con, window, registry.vectors))
    for rule in registry.rules:
        parts.append(_rule_hits(con, window, rule))
    if not parts:
        return pl.DataFrame(schema=HITS_SCHEMA)
    hits = pl.concat([p.select([pl.col(c).cast(t) for c, t in HITS_SCHEMA.items()]) for p in parts])
    return hits.sort("user_id", "ts", "event_id", "canary")


def _vector_hits(con, window, vectors: Sequence[VectorCanary]) -> pl.DataFrame:
    bounds = [v.bounds() for v in vectors]
    canaries = pl.DataFrame(
        {
            "name": [v.name for v in vectors],
            "vals": [list(v.values) for v in vectors],
            "lo": [b[0] for b in bounds],
            "hi": [b[1] for b in bounds],
            "lo0": [b[0][0] for b in bounds],
            "hi0": [b[1][0] for b in bounds],
            "width": [len(v.values) for v in vectors],
        },
        schema={
            "name": pl.String,
            "vals": pl.List(pl.Float64),
            "lo": pl.List(pl.Float64),
            "hi": pl.List(pl.Float64),
            "lo0": pl.Float64,
            "hi0": pl.Float64,
            "width": pl.Int64,
        },
    )
    con.register("_canary_vectors", canaries.to_arrow())
    try:
        return con.sql(
            f"SELECT c.name AS canary, 'vector' AS canary_kind, {_HIT_COLUMNS}, "
            "list_max(list_transform(list_zip(e.features, c.vals), "
            "lambda p: abs(p[1] - p[2]))) AS distance "
            "FROM events AS e JOIN _canary_vectors AS c "
            "ON e.features[1] >= c.lo0 AND e.features[1] <= c.hi0 "
            "WHERE e.day BETWEEN ? AND ? AND len(e.features) = c.width "
            "AND list_bool_and(list_transform(list_zip(e.features, c.lo, c.hi), "
            "lambda p: p[1] >= p[2] AND p[1] <= p[3]))",
            params=list(window),
        ).pl()
    finally:
        con.unregister("_canary_vectors")


def _rule_hits(con, window, rule: RuleCanary) -> pl.DataFrame:
    # feature indices come from the grammar (digits only); every number is a bound parameter
    clauses, params = [], [rule.name, *window, rule.width]
    for c in rule.conditions:
        right = f"e.features[{c.right_feature + 1}]" if c.right_feature is not None else "?"
        if c.right_feature is None:
            params.append(c.value)
        clauses.append(f"e.features[{c.left + 1}] {c.op} {right}")
    return con.sql(
        f"SELECT ? AS canary, 'rule' AS canary_kind, {_HIT_COLUMNS}, "
        "CAST(NULL AS DOUBLE) AS distance FROM events AS e "
        "WHERE e.day BETWEEN ? AND ? AND len(e.features) >= ? AND " + " AND ".join(clauses),
        params=params,
    ).pl()


def widths_never_matched(registry: Registry, widths: set[int]) -> list[str]:
    """Canaries that cannot match any query of the given input widths (a registry made for
    another model)."""
    out = [v.name for v in registry.vectors if len(v.values) not in widths]
    out += [r.name for r in registry.rules if not any(w >= r.width for w in widths)]
    return out


# ---------------------------------------------------------------- incidents


def canary_incidents(
    hits: pl.DataFrame, registry_table: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One incident of kind ``canary`` per key that sent a canary (``INCIDENTS_SCHEMA``):
    severity high, first / last seen and count of the matching events, no ``score`` (a canary
    is not a detector's degree of suspicion), and evidence naming each canary it sent with the
    matching event ids."""
    from audits.scoring import INCIDENTS_SCHEMA, incident_id

    if hits.height == 0:
        return pl.DataFrame(schema=INCIDENTS_SCHEMA)
    definitions = {}
    if registry_table is not None and registry_table.height:
        definitions = dict(zip(registry_table["canary"], registry_table["definition"], strict=True))
    rows = []
    for (user,), part in (
        hits.sort("ts", "event_id")
        .partition_by("user_id", as_dict=True, maintain_order=True)
        .items()
    ):
        evidence = []
        for (name,), mine in part.partition_by("canary", as_dict=True, maintain_order=True).items():
            distance = mine["distance"].drop_nulls()
            evidence.append(
                {
                    "canary": name,
                    "kind": mine["canary_kind"][0],
                    "definition": definitions.get(name, ""),
                    "events": mine.height,
                    "first_seen": mine["ts"].min().isoformat(),
                    "max_distance": float(distance.max()) if distance.len() else None,
                    "event_ids": mine["event_id"].head(EVIDENCE_EVENTS).to_list(),
                }
            )
        evidence.sort(key=lambda e: (e["first_seen"], e["canary"]))
        first = part["ts"].min()
        rows.append(
            {
                "incident_id": incident_id("canary", user, [user], str(first.date())),
                "kind": "canary",
                "subject": user,
                "members": [user],
                "severity": "high",
                "first_seen": first,
                "last_seen": part["ts"].max(),
                "n_events": part["event_id"].n_unique(),
                "score": None,
                "evidence": json.dumps(evidence),
            }
        )
    return pl.DataFrame(rows, schema=INCIDENTS_SCHEMA).sort("subject")
