"""Turn raw JSON lines into typed event rows or reject rows, entirely inside DuckDB.

The input is a relation ``lines_in(file_index, line_no, text, cut, bad_utf8, reject)``
(``reject``: a reason a format reader already found, else NULL); the output
is one row per non-blank line with ``reason``/``detail`` (NULL when the record is valid) and
the typed canonical fields. Rules, in order (first match wins): a cut last line, bad UTF-8,
malformed JSON, not an object, a missing required field, a wrong type, a bad timestamp, a
non-finite number, a features width other than the model's.

Each line is parsed twice, both times by DuckDB: ``json_extract`` yields every field's JSON
fragment (whose first character tells its JSON type), ``json_transform`` the typed values.
"""

from __future__ import annotations

from audits import schema

FIELDS: tuple[str, ...] = schema.REQUIRED_FIELDS + schema.OPTIONAL_FIELDS
_IDX = {name: i + 1 for i, name in enumerate(FIELDS)}  # DuckDB lists are 1-based

# JSON types, told by a minified fragment's first character.
_STRING, _NUMBER, _ARRAY, _OBJECT, _BOOLEAN, _NULL = (
    "string",
    "number",
    "array",
    "object",
    "boolean",
    "null",
)
_KIND_OF_FIRST_CHAR = {
    '"': _STRING,
    "[": _ARRAY,
    "{": _OBJECT,
    "t": _BOOLEAN,
    "f": _BOOLEAN,
    "n": _NULL,
}
_SCALAR_ID = (_STRING, _NUMBER)
ALLOWED_KINDS: dict[str, tuple[str, ...]] = {
    "event_id": _SCALAR_ID,
    "ts": (_STRING,),
    "user_id": _SCALAR_ID,
    "features": (_ARRAY,),
    "session_id": _SCALAR_ID,
    "source_ip": _SCALAR_ID,  # as the other ids: text, or a number kept as its text
    "model_id": _SCALAR_ID,
    "model_version": _SCALAR_ID,
    "prediction": (_STRING, _NUMBER, _BOOLEAN),
    "probabilities": (_ARRAY,),
    "status": _SCALAR_ID,
    "latency_ms": (_NUMBER,),
}
_SQL_TYPES = {  # as DuckDB's json_transform reads each field; fragments are checked, then cast
    "features": "JSON",
    "probabilities": "JSON",
    "latency_ms": "JSON",
}
_REJECT_DETAILS = (
    f"WHEN '{schema.UNPAIRED_RESPONSE}' THEN 'a response with no request of the same id' "
    f"WHEN '{schema.UNMAPPABLE}' THEN 'not a record of the format this file was read as' "
    "ELSE reject"
)
_ZONE_SUFFIX = r"(?:[Zz]|[+-]\d\d(?::?\d\d)?)\s*$"
# A date alone ("2026-11-01") would pass the zone test (its "-01" reads as an offset) and
# take the host's zone: a timestamp needs its hours and minutes.
_TIME_OF_DAY = r"\d[Tt ]\d\d:\d\d"
# Text that cannot occur in a minified JSON array of numbers (NaN and Infinity included):
# strings, objects, true/false/null, nested arrays.
_NOT_NUMBERS = ('"', "{", "r", "l", "[[", ",[")


# Every field's JSON fragment. Only the full rules use it (for the few records that fail the
# fast check), so the line is parsed again only for those, and only once: the fragments and
# their kinds are columns the rules read (written inline in every rule, the same extraction
# ran some 150 times per line and a day of 2,000 bad records ran DuckDB out of memory).
_FRAGMENTS = "try(json_extract(text, [" + ", ".join(f"'$.{name}'" for name in FIELDS) + "]))"


def _fragment(name: str) -> str:
    return f"fragments[{_IDX[name]}]"


def _kind(name: str) -> str:
    """The column holding the JSON type of a field (NULL when absent)."""
    return f"kind_{name}"


def _kind_sql(name: str) -> str:
    """SQL for the JSON type of a field (NULL when absent), from its fragment's first char."""
    arms = " ".join(f"WHEN '{c}' THEN '{k}'" for c, k in _KIND_OF_FIRST_CHAR.items())
    fragment = _fragment(name)
    return (
        f"(CASE WHEN {fragment} IS NOT NULL THEN CASE left({fragment}, 1) {arms} "
        f"ELSE '{_NUMBER}' END END)"
    )


def _kind_columns() -> str:
    return ",\n        ".join(f"{_kind_sql(name)} AS {_kind(name)}" for name in FIELDS)


def _absent(name: str) -> str:
    return f"({_kind(name)} IS NULL OR {_kind(name)} = '{_NULL}')"


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _rules() -> list[tuple[str, str, str]]:
    """(condition, reason, detail SQL) in priority order."""
    rules: list[tuple[str, str, str]] = [
        ("reject IS NOT NULL", "reject", "reject_detail"),
        ("cut", schema.TRUNCATED_LINE, "'partial last line of a file cut short'"),
        ("bad_utf8", schema.INVALID_UTF8, "'bytes that are not UTF-8'"),
        (
            "v IS NULL AND NOT coalesce(try(json_valid(text)), FALSE)",
            schema.MALFORMED_JSON,
            "'not parseable as JSON'",
        ),
        (
            "left(ltrim(text), 1) <> '{'",
            schema.NOT_AN_OBJECT,
            "'top-level JSON ' || lower(json_type(text)) || ' is not an object'",
        ),
    ]
    for name in schema.REQUIRED_FIELDS:
        rules.append((_absent(name), schema.MISSING_FIELD, f"'missing required field \"{name}\"'"))
    for name, allowed in ALLOWED_KINDS.items():
        optional = "" if name in schema.REQUIRED_FIELDS else f"NOT {_absent(name)} AND "
        rules.append(
            (
                f"{optional}{_kind(name)} NOT IN ({_listed(allowed)})",
                schema.WRONG_TYPE,
                f"'\"{name}\" is a ' || {_kind(name)}",
            )
        )
    for name in ("features", "probabilities"):
        fragment = _fragment(name)
        rules.append(
            (
                f"{_kind(name)} = '{_ARRAY}' AND ("
                + " OR ".join(f"contains({fragment}, '{c}')" for c in _NOT_NUMBERS)
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
            f"NOT regexp_matches(ts_text, '{_TIME_OF_DAY}')",
            schema.BAD_TIMESTAMP,
            "'a date without a time of day'",
        ),
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


def _width_rule(width: int) -> tuple[str, str, str]:
    return (
        f"len(features) <> {int(width)}",
        schema.WRONG_WIDTH,
        f"'\"features\" has ' || len(features) || ' values, expected {int(width)}'",
    )


def _plain(column: str, *, booleans: bool = False) -> str:
    """A VARCHAR-converted value that cannot have been an object or array (or, unless
    allowed, a boolean); a string that merely looks like one takes the full rules."""
    test = f"left({column}, 1) NOT IN ('{{', '[')"
    return test if booleans else f"{test} AND {column} NOT IN ('true', 'false')"


def _numbers_fragment(column: str) -> str:
    """A JSON fragment that is an array of plain numbers (NaN and Infinity included)."""
    return f"left({column}, 1) = '[' AND " + " AND ".join(
        f"NOT contains({column}, '{c}')" for c in _NOT_NUMBERS
    )


def _clean(width: int | None) -> str:
    """One cheap predicate, on the typed values alone, that holds only when no rule fires:
    the common case. Whatever fails it goes through every rule, in order."""
    checks = [
        "reject IS NULL",
        "NOT cut",
        "NOT bad_utf8",
        "v IS NOT NULL",
        "event_id <> ''",
        _plain("event_id"),
        "user_id <> ''",
        _plain("user_id"),
        _numbers_fragment("v.features"),
        "(v.probabilities IS NULL OR (" + _numbers_fragment("v.probabilities") + "))",
        "ts_utc IS NOT NULL",
        f"regexp_matches(ts_text, '{_TIME_OF_DAY}')",
        f"regexp_matches(ts_text, '{_ZONE_SUFFIX}')",
        f"len(features) = {int(width)}" if width is not None else "len(features) > 0",
        # a finite sum implies finite elements (the converse can fail on overflow: such a row
        # just takes the full rules below)
        "isfinite(list_sum(features))",
        "(probabilities IS NULL OR len(probabilities) = 0 OR isfinite(list_sum(probabilities)))",
        "(v.latency_ms IS NULL OR (ascii(v.latency_ms) NOT IN (34, 91, 123, 116, 102) "
        "AND isfinite(latency_ms)))",
        *(
            f"({name} IS NULL OR ({_plain(name, booleans=name == 'prediction')}))"
            for name in (
                "session_id",
                "source_ip",
                "model_id",
                "model_version",
                "prediction",
                "status",
            )
        ),
    ]
    return " AND ".join(checks)


def _rule_number(rules: list[tuple[str, str, str]]) -> str:
    """The first rule that fires, for a line that failed the fast check (``clean``)."""
    arms = "\n            ".join(f"WHEN {r[0]} THEN {i}" for i, r in enumerate(rules, 1))
    return f"CASE WHEN clean THEN NULL ELSE CASE\n            {arms}\n        END END"


def _reason_sql(reason: str) -> str:
    """A rule's reason as SQL: a constant, or the ``reject`` column a reader filled."""
    return reason if reason == "reject" else repr(reason)


def _by_rule(rules: list[tuple[str, str, str]], pick: int) -> str:
    arms = " ".join(
        f"WHEN {i} THEN {_reason_sql(r[1]) if pick == 1 else r[2]}" for i, r in enumerate(rules, 1)
    )
    return f"CASE rule {arms} END"


def record_struct_type() -> str:
    """The SQL type in which a format reader that has already parsed its own records hands
    them over (a ``v`` column): every field as text, the JSON ones as JSON text (unchecked)."""
    return "STRUCT(" + ", ".join(f"{name} VARCHAR" for name in FIELDS) + ")"


def _record_json(record: str) -> str:
    """SQL for the canonical JSON line of a handed-over record (for the rules and the
    quarantine): JSON fields embedded as JSON when they parse, else as strings."""

    def value(name: str) -> str:
        field = f"{record}.{name}"
        if name in _SQL_TYPES:
            return f"coalesce(try(json({field})), to_json({field}))"
        return field

    return "json_object(" + ", ".join(f"'{name}', {value(name)}" for name in FIELDS) + ")"


def _transform_spec() -> str:
    fields = ", ".join(f'"{name}": "{_SQL_TYPES.get(name, "VARCHAR")}"' for name in FIELDS)
    return "{" + fields + "}"


def dominant_width_sql(sample_rows: int = 20_000, *, pretyped: bool = False) -> str:
    """SQL for the most common ``features`` length among a sample of ``lines_in``."""
    features = "try(json_extract(text, '$.features'))"
    if pretyped:
        features = f"coalesce(v.features, {features})"
    return (
        f"SELECT mode(try(json_array_length({features}))) FROM (SELECT * FROM lines_in "
        f"WHERE NOT cut AND NOT bad_utf8 AND reject IS NULL LIMIT {sample_rows})"
    )


def validation_sql(width: int | None = None, *, pretyped: bool = False, fast: bool = True) -> str:
    """SQL over ``lines_in(file_index, line_no, text, cut, bad_utf8)`` that classifies every
    non-blank line; ``cut`` marks a damaged file's partial last line; ``width``, when known,
    is the required length of ``features``. With ``pretyped``, ``lines_in`` also has a ``v``
    column (``record_struct_type``): where set, the record is taken
    as parsed (``text`` is NULL) and its canonical JSON is written only when some rule needs
    it. Without ``fast``, every line takes every rule (the same outcome, slower: the fallback
    when the fast check fails)."""
    typed_elsewhere = ("ts", "features", "probabilities", "latency_ms")
    values = ",\n        ".join(
        f"v.{name} AS {name}" for name in FIELDS if name not in typed_elsewhere
    )
    rules = _rules() + ([_width_rule(width)] if width is not None else [])
    parse = f"try(json_transform(text, '{_transform_spec()}'))"
    blank = "ltrim(text, chr(32) || chr(9) || chr(10) || chr(13)) = ''"
    if pretyped:
        lines_in = (
            f"(SELECT * RENAME (v AS parsed_v) FROM lines_in WHERE text IS NULL OR NOT ({blank}))"
        )
        parse = f"coalesce(parsed_v, {parse}::{record_struct_type()})"
        # the canonical JSON of a record parsed by its reader, for the rules and the quarantine
        as_text = (
            "CASE WHEN text IS NULL AND NOT clean "
            f"THEN {_record_json('parsed_v')}::VARCHAR ELSE text END"
        )
        typed_text = f"* REPLACE ({as_text} AS text)"
    else:
        lines_in = f"(SELECT * FROM lines_in WHERE NOT ({blank}))"
        typed_text = "*"
    return f"""
WITH lines AS (
    SELECT *, CASE reject {_REJECT_DETAILS} END AS reject_detail FROM {lines_in}
), kinds AS (
    SELECT *,
        CASE WHEN NOT cut AND NOT bad_utf8 AND reject IS NULL THEN {parse} END AS v
    FROM lines
), typed_values AS (
    SELECT *,
        {values},
        CASE WHEN left(v.features, 1) = '[' THEN try(json_transform(v.features, '["DOUBLE"]'))
            END AS features,
        CASE WHEN left(v.probabilities, 1) = '['
             THEN try(json_transform(v.probabilities, '["DOUBLE"]')) END AS probabilities,
        try_cast(v.latency_ms AS DOUBLE) AS latency_ms,
        v.ts AS ts_text,
        try_cast(v.ts AS TIMESTAMPTZ) AS ts_utc
    FROM kinds
), checked AS (
    SELECT *, {f"coalesce({_clean(width)}, FALSE)" if fast else "FALSE"} AS clean
    FROM typed_values
), typed AS (
    SELECT {typed_text} FROM checked
), extracted AS (
    SELECT *, CASE WHEN NOT clean THEN {_FRAGMENTS} END AS fragments FROM typed
), kinded AS (
    SELECT *,
        {_kind_columns()}
    FROM extracted
), ruled AS (
    SELECT *, {_rule_number(rules)} AS rule FROM kinded
)
SELECT
    file_index, line_no,
    CASE WHEN rule IS NOT NULL THEN rtrim(text, chr(10) || chr(13)) END AS text,
    {_by_rule(rules, 1)} AS reason,
    {_by_rule(rules, 2)} AS detail,
    event_id,
    make_timestamp(epoch_us(ts_utc)) AS ts,
    user_id, session_id, source_ip, model_id, model_version, features, prediction,
    probabilities, status, latency_ms
FROM ruled
"""
