"""Turn raw JSON lines into typed event rows or reject rows, entirely inside DuckDB.

The input is a relation ``lines_in(line_no BIGINT, text VARCHAR)``; the output is one row
per non-blank line with ``reason``/``detail`` (NULL when the record is valid) and the typed
canonical fields. Rules, in order (first match wins): a cut last line, malformed JSON, not an
object, a missing required field, a wrong type, a bad timestamp, a non-finite number.
"""

from __future__ import annotations

from audits import schema

FIELDS: tuple[str, ...] = schema.REQUIRED_FIELDS + schema.OPTIONAL_FIELDS
_IDX = {name: i + 1 for i, name in enumerate(FIELDS)}  # DuckDB lists are 1-based

_INTEGER = ("BIGINT", "UBIGINT")
_NUMBER = (*_INTEGER, "DOUBLE")
_TEXTUAL = ("VARCHAR", *_INTEGER)
_OPTIONAL_TYPES = {
    "session_id": _TEXTUAL,
    "source_ip": ("VARCHAR",),
    "model_id": _TEXTUAL,
    "model_version": (*_TEXTUAL, "DOUBLE"),
    "prediction": (*_TEXTUAL, "DOUBLE", "BOOLEAN"),
    "probabilities": ("ARRAY",),
    "status": _TEXTUAL,
    "latency_ms": _NUMBER,
}
_ZONE_SUFFIX = r"(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"
_NON_NUMERIC = "['VARCHAR', 'BOOLEAN', 'ARRAY', 'OBJECT', 'NULL']"


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _type(name: str) -> str:
    return f"t_{name}"


def _absent(name: str) -> str:
    return f"({_type(name)} IS NULL OR {_type(name)} = 'NULL')"


def _rules() -> list[tuple[str, str, str]]:
    """(condition, reason, detail SQL) in priority order."""
    rules: list[tuple[str, str, str]] = [
        ("cut", schema.TRUNCATED_LINE, "'partial last line of a file cut short'"),
        ("NOT valid", schema.MALFORMED_JSON, "'not parseable as JSON'"),
        (
            " AND ".join(f"{_type(n)} IS NULL" for n in FIELDS)
            + " AND json_type(text) <> 'OBJECT'",
            schema.NOT_AN_OBJECT,
            "'top-level JSON ' || lower(json_type(text)) || ' is not an object'",
        ),
    ]
    for name in schema.REQUIRED_FIELDS:
        rules.append((_absent(name), schema.MISSING_FIELD, f"'missing required field \"{name}\"'"))
    type_checks = {
        "event_id": _TEXTUAL,
        "ts": ("VARCHAR",),
        "user_id": _TEXTUAL,
        "features": ("ARRAY",),
        **_OPTIONAL_TYPES,
    }
    for name, allowed in type_checks.items():
        optional = "" if name in schema.REQUIRED_FIELDS else f"NOT {_absent(name)} AND "
        rules.append(
            (
                f"{optional}{_type(name)} NOT IN ({_quoted(allowed)})",
                schema.WRONG_TYPE,
                f"'\"{name}\" is ' || lower({_type(name)})",
            )
        )
    for name in ("features", "probabilities"):
        rules.append(
            (
                f"{_type(name)} = 'ARRAY' AND list_has_any(json_type(f[{_IDX[name]}], '$[*]'), "
                f"{_NON_NUMERIC})",
                schema.WRONG_TYPE,
                f"'\"{name}\" holds a value that is not a number'",
            )
        )
    for name in ("event_id", "user_id"):
        rules.append((f"{name} = ''", schema.MISSING_FIELD, f"'empty \"{name}\"'"))
    rules += [
        ("ts_utc IS NULL", schema.BAD_TIMESTAMP, "'unparseable timestamp'"),
        (
            f"NOT regexp_matches(ts_text, '{_ZONE_SUFFIX}')",
            schema.BAD_TIMESTAMP,
            "'timestamp without a zone'",
        ),
        ("len(features) = 0", schema.WRONG_WIDTH, "'\"features\" is empty'"),
        (_not_finite("features"), schema.NON_FINITE, "'non-finite number in \"features\"'"),
        (
            f"probabilities IS NOT NULL AND {_not_finite('probabilities')}",
            schema.NON_FINITE,
            "'non-finite number in \"probabilities\"'",
        ),
        ("NOT isfinite(latency_ms)", schema.NON_FINITE, "'non-finite \"latency_ms\"'"),
    ]
    return rules


def _not_finite(column: str) -> str:
    return f"NOT list_bool_and(list_transform({column}, lambda x: isfinite(x)))"


def _case(rules: list[tuple[str, str, str]], pick: int) -> str:
    def value(rule: tuple[str, str, str]) -> str:
        return f"'{rule[1]}'" if pick == 1 else rule[2]

    arms = "\n            ".join(f"WHEN {r[0]} THEN {value(r)}" for r in rules)
    return f"CASE\n            {arms}\n        END"


_SCALAR = (*_TEXTUAL, "DOUBLE", "BOOLEAN")


def _text_of(name: str) -> str:
    return f"CASE WHEN {_type(name)} IN ({_quoted(_SCALAR)}) THEN f[{_IDX[name]}]->>'$' END"


def _numbers_of(name: str) -> str:
    to_doubles = f"json_transform(f[{_IDX[name]}], '[\"DOUBLE\"]')"
    return f"CASE WHEN {_type(name)} = 'ARRAY' THEN {to_doubles} END"


def _number_of(name: str) -> str:
    value = f"(f[{_IDX[name]}]->>'$')::DOUBLE"
    return f"CASE WHEN {_type(name)} IN ({_quoted(_NUMBER)}) THEN {value} END"


def validation_sql(cut_line: int | None) -> str:
    """SQL over ``lines_in`` that classifies every non-blank line (``cut_line``: a damaged
    file's partial last line, or ``None``)."""
    paths = ", ".join(f"'$.{name}'" for name in FIELDS)
    types = ",\n            ".join(f"json_type(f[{i}]) AS {_type(n)}" for n, i in _IDX.items())
    cut = "FALSE" if cut_line is None else f"line_no = {int(cut_line)}"
    rules = _rules()
    return f"""
WITH src AS (
    SELECT line_no, rtrim(text, chr(10) || chr(13)) AS text FROM lines_in
), lines AS (
    SELECT line_no, text, {cut} AS cut, json_valid(text) AS valid
    FROM src WHERE NOT regexp_full_match(text, '\\s*')
), extracted AS (
    SELECT *, CASE WHEN valid AND NOT cut THEN json_extract(text, [{paths}]) END AS f FROM lines
), typed AS (
    SELECT line_no, text, cut, valid, f,
            {types}
    FROM extracted
), converted AS (
    SELECT *,
        {_text_of("event_id")} AS event_id,
        f[{_IDX["ts"]}]->>'$' AS ts_text,
        {_text_of("user_id")} AS user_id,
        {_numbers_of("features")} AS features,
        {_numbers_of("probabilities")} AS probabilities,
        {_number_of("latency_ms")} AS latency_ms
    FROM typed
), timed AS (
    SELECT *, CASE WHEN t_ts = 'VARCHAR' THEN try_cast(ts_text AS TIMESTAMPTZ) END AS ts_utc
    FROM converted
)
SELECT
    line_no, text,
    {_case(rules, 1)} AS reason,
    {_case(rules, 2)} AS detail,
    event_id,
    make_timestamp(epoch_us(ts_utc)) AS ts,
    user_id,
    {_text_of("session_id")} AS session_id,
    {_text_of("source_ip")} AS source_ip,
    {_text_of("model_id")} AS model_id,
    {_text_of("model_version")} AS model_version,
    features,
    {_text_of("prediction")} AS prediction,
    probabilities,
    {_text_of("status")} AS status,
    latency_ms
FROM timed
"""
