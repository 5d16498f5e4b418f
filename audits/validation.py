"""Turn raw JSON lines into typed event rows or reject rows, entirely inside DuckDB.

The input is a relation ``lines_in(file_index, line_no, text, cut, bad_utf8)``; the output
is one row per non-blank line with ``reason``/``detail`` (NULL when the record is valid) and
the typed canonical fields. Rules, in order (first match wins): a cut last line, bad UTF-8,
malformed JSON, not an object, a missing required field, a wrong type, a bad timestamp, a
non-finite number, a features width other than the model's.
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
# Characters that cannot occur in a (minified) JSON array of numbers, NaN or Infinity:
# strings, objects, true/false/null, and nested arrays.
_NOT_NUMBERS = ('"', "{", "r", "l", "[[", ",[")


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
        ("bad_utf8", schema.INVALID_UTF8, "'bytes that are not UTF-8'"),
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
                f"{_type(name)} = 'ARRAY' AND ("
                + " OR ".join(f"contains(f[{_IDX[name]}], '{c}')" for c in _NOT_NUMBERS)
                + ")",
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


def _rule_number(rules: list[tuple[str, str, str]]) -> str:
    arms = "\n            ".join(f"WHEN {r[0]} THEN {i}" for i, r in enumerate(rules, 1))
    return f"CASE\n            {arms}\n        END"


def _by_rule(rules: list[tuple[str, str, str]], pick: int) -> str:
    arms = " ".join(
        f"WHEN {i} THEN {repr(r[1]) if pick == 1 else r[2]}" for i, r in enumerate(rules, 1)
    )
    return f"CASE rule {arms} END"


_SCALAR = (*_TEXTUAL, "DOUBLE", "BOOLEAN")


def _text_of(name: str) -> str:
    return f"CASE WHEN {_type(name)} IN ({_quoted(_SCALAR)}) THEN f[{_IDX[name]}]->>'$' END"


def _numbers_of(name: str) -> str:
    to_doubles = f"json_transform(f[{_IDX[name]}], '[\"DOUBLE\"]')"
    return f"CASE WHEN {_type(name)} = 'ARRAY' THEN {to_doubles} END"


def _number_of(name: str) -> str:
    value = f"(f[{_IDX[name]}]->>'$')::DOUBLE"
    return f"CASE WHEN {_type(name)} IN ({_quoted(_NUMBER)}) THEN {value} END"


def dominant_width_sql(sample_rows: int = 20_000) -> str:
    """SQL for the most common ``features`` length among a sample of ``lines_in``."""
    return (
        "SELECT mode(json_array_length(try(json_extract(text, '$.features')))) "
        f"FROM (SELECT text FROM lines_in WHERE NOT cut AND NOT bad_utf8 LIMIT {sample_rows})"
    )


def validation_sql(width: int | None = None) -> str:
    """SQL over ``lines_in(file_index, line_no, text, cut)`` that classifies every non-blank
    line; ``cut`` marks a damaged file's partial last line; ``width``, when known, is the
    required length of ``features``."""
    paths = ", ".join(f"'$.{name}'" for name in FIELDS)
    types = ",\n            ".join(f"json_type(f[{i}]) AS {_type(n)}" for n, i in _IDX.items())
    rules = _rules()
    if width is not None:
        rules.append(
            (
                f"len(features) <> {int(width)}",
                schema.WRONG_WIDTH,
                f"'\"features\" has ' || len(features) || ' values, expected {int(width)}'",
            )
        )
    return f"""
WITH lines AS (
    SELECT * FROM lines_in WHERE ltrim(text, chr(32) || chr(9) || chr(10) || chr(13)) <> ''
), extracted AS (
    SELECT *, CASE WHEN NOT cut AND NOT bad_utf8 THEN try(json_extract(text, [{paths}])) END
        AS f
    FROM lines
), parsed AS (
    SELECT *, f IS NOT NULL AS valid FROM extracted
), typed AS (
    SELECT file_index, line_no, text, cut, bad_utf8, valid, f,
            {types}
    FROM parsed
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
), ruled AS (
    SELECT *, {_rule_number(rules)} AS rule FROM timed
)
SELECT
    file_index, line_no,
    CASE WHEN rule IS NOT NULL THEN rtrim(text, chr(10) || chr(13)) END AS text,
    {_by_rule(rules, 1)} AS reason,
    {_by_rule(rules, 2)} AS detail,
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
FROM ruled
"""
