"""Serving-stack logs turned into canonical records, inside DuckDB, before the common validation.

Every reader maps a day's lines ``(file_index, line_no, text, cut, bad_utf8, reject)`` to
canonical JSON lines of the same shape, so quarantine, custody, dedup and accounting are the
canonical reader's: a record that cannot be mapped keeps its raw text and is rejected with a reason.

- ``sagemaker``: SageMaker Data Capture (CSV, JSON and BASE64 bodies, batches expanded to one
  event per row), principal and IP joined from API Gateway access logs on request id
  (``requestId`` = ``inferenceId``); no match gives ``UNKNOWN_PRINCIPAL``. The time is the
  gateway's ``requestTimeEpoch`` (milliseconds) when joined, else ``inferenceTime`` (seconds);
  a ``session_id=...`` (or ``session=...``) pair in ``customAttributes`` is the session.
- ``kserve``: KServe payload-logger CloudEvents, request and response paired by ``id``, V1 and
  V2 (Open Inference Protocol) bodies, batches expanded, principal and IP from forwarded
  metadata headers (and the session from a third, when forwarded), latency from the two
  times. A redelivered request expands to the same event ids, so it is counted as a
  duplicate; a request without a response (a failed call) is kept with ``status`` ``"no_response"``.
- ``mapped``: a team's own JSON lines, with a TOML file naming the JSON path of each field.
"""

from __future__ import annotations

import json
import re
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from audits import schema, validation
from audits.errors import InputError

CANONICAL, SAGEMAKER, KSERVE, MAPPED = "canonical", "sagemaker", "kserve", "mapped"
FORMATS = ("auto", CANONICAL, SAGEMAKER, KSERVE)
UNKNOWN_PRINCIPAL = "(unknown principal)"
KSERVE_REQUEST = "org.kubeflow.serving.inference.request"
KSERVE_RESPONSE = "org.kubeflow.serving.inference.response"
_NOT_NUMERIC_CSV = re.compile(r"[^0-9eE+\-.,\s]")


@dataclass
class ReaderOptions:
    """How non-canonical logs are read."""

    format: str = "auto"
    gateway: pa.Table | None = None  # request_id, user_id, source_ip, latency_ms
    principal_header: str = "X-Api-Key-Id"
    ip_header: str = "X-Forwarded-For"
    session_header: str = "X-Session-Id"
    mapping: dict[str, str] = field(default_factory=dict)  # canonical field -> JSON path


def kind_of(first_line: str, format: str, mapping: dict[str, str] | None = None) -> str:
    """The reader for a file: the format asked for, or the one its first record shows."""
    if format != "auto":
        return MAPPED if format == CANONICAL and mapping else format
    found = detect(first_line)
    return MAPPED if found == CANONICAL and mapping else found


def detect(first_line: str) -> str:
    """The format of a file from its first record."""
    try:
        record = json.loads(first_line)
    except ValueError:
        return CANONICAL  # the canonical reader quarantines what it cannot parse
    if not isinstance(record, dict):
        return CANONICAL
    if "captureData" in record:
        return SAGEMAKER
    if str(record.get("type", "")).startswith("org.kubeflow.serving.inference."):
        return KSERVE
    return CANONICAL


def load_mapping(path: str | Path) -> dict[str, str]:
    """A TOML field mapping: ``[fields]`` canonical name = JSON path (``$.a.b``)."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read field mapping {path}: {exc}") from None
    fields = document.get("fields")
    known = set(schema.REQUIRED_FIELDS + schema.OPTIONAL_FIELDS)
    if not isinstance(fields, dict) or not fields:
        raise InputError(f'field mapping {path} needs a [fields] table: name = "$.json.path"')
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"field mapping {path}: unknown fields {', '.join(unknown)}")
    missing = [name for name in schema.REQUIRED_FIELDS if name not in fields]
    if missing:
        raise InputError(f"field mapping {path}: required fields not mapped: {', '.join(missing)}")
    for name, path_text in fields.items():
        if not isinstance(path_text, str) or not path_text.startswith("$"):
            raise InputError(f'field mapping {path}: {name} must be a JSON path like "$.a.b"')
    return dict(fields)


def load_gateway(root: str | Path) -> tuple[pa.Table, int]:
    """API Gateway access logs under ``root`` (JSON lines, any file name, gzip or not) as
    ``(request_id, user_id, source_ip, latency_ms, ts)``, and the count of lines that could not
    be used (unparseable, or without a request id)."""
    from audits.readers import rebatched

    root = Path(root)
    if not root.exists():
        raise InputError(f"gateway logs not found: {root}")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=4) as pool:
        tables = list(pool.map(_gateway_text, [p for p in paths if not p.name.startswith(".")]))
    lines = (
        pa.concat_tables(tables) if tables else pa.table({"text": pa.array([], pa.large_string())})
    )
    con = duckdb.connect()
    con.register("gateway_lines", rebatched(lines))
    con.execute(
        "CREATE TEMP TABLE parsed AS SELECT g[1] AS request_id, nullif(g[2], '-') AS user_id, "
        "nullif(g[3], '-') AS source_ip, try_cast(nullif(g[4], '-') AS DOUBLE) AS latency_ms, "
        "strftime(epoch_ms(try_cast(g[5] AS BIGINT)), '%Y-%m-%dT%H:%M:%S.%gZ') AS ts, "
        "coalesce(g[1] NOT IN ('-', ''), FALSE) AS usable "
        "FROM (SELECT try(json_extract_string(text, ['$.requestId', '$.apiKeyId', '$.ip', "
        "'$.responseLatency', '$.requestTimeEpoch'])) AS g "
        f"FROM gateway_lines WHERE NOT {_BLANK})"
    )
    unusable, usable, distinct = con.sql(
        "SELECT count(*) FILTER (WHERE NOT usable), count(*) FILTER (WHERE usable), "
        "count(DISTINCT request_id) FILTER (WHERE usable) FROM parsed"
    ).fetchall()[0]
    # a request logged more than once keeps one of its lines (the dedup only when needed)
    first = "DISTINCT ON (request_id) " if distinct < usable else ""
    gateway = con.sql(
        f"SELECT {first}request_id, user_id, source_ip, latency_ms, ts FROM parsed WHERE usable"
    ).to_arrow_table()
    con.close()
    return gateway, unusable


def _gateway_text(path: Path) -> pa.Table:
    """One gateway log file's lines (``text``), gunzipped when it is gzip."""
    from audits.readers import decompress_recoverable, split_lines

    raw = path.read_bytes()
    data = decompress_recoverable(raw)[0] if raw[:2] == b"\x1f\x8b" else raw
    return split_lines(data)[0].select(["text"])


def _empty_gateway() -> pa.Table:
    return pa.table(
        {
            "request_id": pa.array([], pa.string()),
            "user_id": pa.array([], pa.string()),
            "source_ip": pa.array([], pa.string()),
            "latency_ms": pa.array([], pa.float64()),
            "ts": pa.array([], pa.string()),
        }
    )


def to_canonical(
    con: duckdb.DuckDBPyConnection, lines: pa.Table, kind: str, options: ReaderOptions
) -> pa.Table:
    """Map one format's lines to canonical JSON lines (the same five columns)."""
    con.register("format_lines", lines)
    try:
        if kind == SAGEMAKER:
            con.register("gateway", options.gateway if options.gateway else _empty_gateway())
            return con.sql(_SAGEMAKER_SQL, params=[UNKNOWN_PRINCIPAL]).to_arrow_table()
        if kind == KSERVE:
            return con.sql(
                _KSERVE_SQL,
                params=[
                    options.principal_header,
                    options.ip_header,
                    KSERVE_REQUEST,
                    KSERVE_RESPONSE,
                    options.session_header,
                ],
            ).to_arrow_table()
        if kind == MAPPED:
            return con.sql(_mapping_sql(options.mapping)).to_arrow_table()
        raise ValueError(f"no reader for {kind}")
    finally:
        con.unregister("format_lines")
        if kind == SAGEMAKER:
            con.unregister("gateway")


_JSON_FIELDS = ("features", "probabilities", "latency_ms")
_RECORD_COLUMNS = "NULL::VARCHAR AS text, FALSE AS cut, FALSE AS bad_utf8, NULL::VARCHAR AS reject"
_ARGMAX_OR = (
    "CASE WHEN probabilities IS NOT NULL "
    "THEN (list_position(probabilities, list_max(probabilities)) - 1)::VARCHAR ELSE {label} END"
)


def _record(**fields: str) -> str:
    """SQL for a mapped record as the validator takes it over (``record_struct_type``):
    features as the JSON text the reader found (checked by the validation), other numbers
    written as JSON, the rest as text; unnamed fields NULL."""

    def value(name: str) -> str:
        expr = fields.get(name)
        if expr is None:
            return "NULL"
        if name == "features":
            return f"({expr})::VARCHAR"
        return f"to_json({expr})::VARCHAR" if name in _JSON_FIELDS else f"({expr})::VARCHAR"

    packed = ", ".join(f"{name} := {value(name)}" for name in validation.FIELDS)
    return f"struct_pack({packed})::{validation.record_struct_type()}"


# a blank line: the cheap prefix test (whitespace sorts below "!") spares the trim
_BLANK = "(text < '!' AND ltrim(text, chr(32) || chr(9) || chr(10) || chr(13)) = '')"
_PASS_THROUGH = f"""
    SELECT file_index, line_no, text, cut, bad_utf8, reject, NULL AS v FROM format_lines
    WHERE cut OR bad_utf8 OR {_BLANK}
"""


def _json_list(body: str, key: str) -> str:
    """The elements (as JSON text) of a JSON body that is a list, or an object's ``key`` list."""
    return (
        f"(CASE WHEN left(ltrim({body}), 1) = '[' THEN try(json_transform({body}, '[\"JSON\"]')) "
        f'ELSE try(json_transform({body}, \'{{"{key}": ["JSON"]}}\')).{key} END)::VARCHAR[]'
    )


_SAGEMAKER_RECORD = _record(
    event_id="event_id || CASE WHEN n > 1 THEN ':' || (i - 1) ELSE '' END",
    ts="coalesce(g.ts, inference_time)",
    user_id="coalesce(g.user_id, ?)",
    source_ip="g.source_ip",
    session_id="nullif(regexp_extract(attributes, "
    "'(^|[;,&[:space:]])session(_id)?=([^;,&[:space:]]+)', 3), '')",
    features="features",
    prediction=_ARGMAX_OR.format(label="trim(answer, '\"[] ')"),
    probabilities="probabilities",
    latency_ms="g.latency_ms",
    status="'200'",
)
_KSERVE_RECORD = _record(
    event_id="id || CASE WHEN n > 1 THEN ':' || (i - 1) ELSE '' END",
    ts="time",
    user_id="principal",
    source_ip="ip",
    session_id="session",
    model_id="model_id",
    model_version="body.model_version",
    features="features",
    prediction=_ARGMAX_OR.format(label="answer->>'$'"),
    probabilities="probabilities",
    status="CASE WHEN has_response THEN '200' ELSE 'no_response' END",
    latency_ms="(epoch_us(try_cast(response_time AS TIMESTAMPTZ))"
    " - epoch_us(try_cast(time AS TIMESTAMPTZ))) / 1000.0",
)

# Bodies: BASE64 is decoded first; CSV rows become JSON arrays; JSON bodies give
# "instances"/"predictions" (or a bare list). Output rows with several numbers are
# probabilities (the prediction is the index of the largest), a single value is a label.
_SAGEMAKER_SQL = f"""
WITH records AS (
    SELECT file_index, line_no,
        try(json_extract_string(text, [
            '$.captureData.endpointInput.data', '$.captureData.endpointInput.encoding',
            '$.captureData.endpointInput.observedContentType',
            '$.captureData.endpointOutput.data', '$.captureData.endpointOutput.encoding',
            '$.captureData.endpointOutput.observedContentType',
            '$.eventMetadata.eventId', '$.eventMetadata.inferenceId',
            '$.eventMetadata.inferenceTime', '$.eventMetadata.customAttributes'])) AS c
    FROM format_lines
    WHERE NOT cut AND NOT bad_utf8 AND NOT {_BLANK}
), bodies AS (
    SELECT file_index, line_no, c IS NULL AS unparsed, c[7] AS event_id, c[8] AS request_id,
        c[9] AS inference_time, c[10] AS attributes,
        CASE WHEN c[2] = 'BASE64' THEN try(decode(from_base64(c[1]))) ELSE c[1] END AS body_in,
        CASE WHEN c[5] = 'BASE64' THEN try(decode(from_base64(c[4]))) ELSE c[4] END AS body_out,
        c[2] = 'JSON' OR c[3] ILIKE '%json%' AS json_in,
        c[5] = 'JSON' OR c[6] ILIKE '%json%' AS json_out
    FROM records
), rows_ AS MATERIALIZED (
    SELECT file_index, line_no, unparsed, event_id, request_id, inference_time, attributes,
        CASE WHEN json_in THEN {_json_list("body_in", "instances")}
             WHEN NOT contains(csv_in, chr(10)) THEN ['[' || csv_in || ']']
             ELSE list_transform(string_split(csv_in, chr(10)),
                                 lambda r: '[' || rtrim(r, chr(13)) || ']')
        END AS inputs,
        CASE WHEN json_out THEN {_json_list("body_out", "predictions")}
             WHEN NOT contains(csv_out, chr(10)) THEN [csv_out]
             ELSE list_transform(string_split(csv_out, chr(10)), lambda r: rtrim(r, chr(13)))
        END AS outputs
    FROM (SELECT *,
              CASE WHEN json_in THEN NULL ELSE rtrim(body_in, chr(10) || chr(13)) END AS csv_in,
              CASE WHEN json_out THEN NULL ELSE rtrim(body_out, chr(10) || chr(13)) END AS csv_out
          FROM bodies)
), instances AS (
    SELECT file_index, line_no, event_id, request_id, inference_time, attributes,
        len(inputs) AS n, unnest(inputs) AS features, generate_subscripts(inputs, 1) AS i,
        outputs
    FROM rows_ WHERE NOT unparsed AND event_id IS NOT NULL AND len(inputs) > 0
), answered AS (
    SELECT *, outputs[i] AS answer,
        CASE WHEN contains(outputs[i], ',') THEN
            try_cast('[' || trim(outputs[i], '[] ') || ']' AS DOUBLE[]) END AS probabilities
    FROM instances
)
SELECT a.file_index, a.line_no, {_RECORD_COLUMNS},
    {_SAGEMAKER_RECORD} AS v
FROM answered a LEFT JOIN gateway g ON g.request_id = a.request_id
UNION ALL
SELECT file_index, line_no, text, FALSE, FALSE,
    CASE WHEN try(json_valid(text)) THEN '{schema.UNMAPPABLE}' END, NULL
FROM format_lines SEMI JOIN (
    SELECT file_index, line_no FROM rows_
    WHERE unparsed OR event_id IS NULL OR inputs IS NULL OR len(inputs) = 0
) USING (file_index, line_no)
UNION ALL
{_PASS_THROUGH}
"""

_KSERVE_SPEC = (
    '{"id": "VARCHAR", "type": "VARCHAR", "time": "VARCHAR", "inferenceservicename": "VARCHAR", '
    '"metadata": "JSON", "data": {"instances": "JSON[]", "predictions": "JSON[]", '
    '"inputs": [{"shape": "BIGINT[]", "data": "JSON"}], '
    '"outputs": [{"shape": "BIGINT[]", "data": "JSON[]"}], "model_version": "VARCHAR"}}'
)


def _header(index: int, position: int) -> str:
    """The first value of the metadata header named by parameter ``position``: ``h[index]``
    (looked up by its exact name), else the header of that name in any case. A header value is
    a list of strings, or one string."""
    any_case = (
        "json_extract(e.metadata, '$.\"' || replace(list_filter(keys, "
        f"lambda k: lower(k) = lower(${position}))[1], '\"', '') || '\"')"
    )
    value = f"coalesce(h[{index}], {any_case})"
    return f"CASE WHEN left({value}, 1) = '[' THEN {value}->>'$[0]' ELSE {value}->>'$' END"


def _keys_if_needed(*pairs: tuple[int, int]) -> str:
    """The metadata's keys, only where a header (``h[index]``, named by parameter ``position``)
    is missing by its exact name but its name, in any case, occurs in the metadata."""
    missing = " OR ".join(
        f"(h[{index}] IS NULL AND contains(lower(e.metadata), lower(${position})))"
        for index, position in pairs
    )
    return f"CASE WHEN {missing} THEN json_keys(e.metadata) END"


def _exact_headers(*positions: int) -> str:
    """The metadata headers named by the parameters at ``positions``, in one lookup."""
    paths = ", ".join(f"'$.\"' || replace(${p}, '\"', '') || '\"'" for p in positions)
    return f"json_extract(e.metadata, [{paths}])"


def _rows(flat: str, shape: str, index: str) -> str:
    """Row ``index`` (0-based) of a flat row-major JSON list with a 2-D ``shape``."""
    return f"list_slice({flat}, ({index}) * {shape}[2] + 1, ({index} + 1) * {shape}[2])"


# One typed parse of every line; batches expand to one event per instance. V1 instances and
# predictions stay JSON text; V2 flat data is sliced by its shape.
_KSERVE_SQL = f"""
WITH events AS (
    SELECT file_index, line_no, try(json_transform(text, '{_KSERVE_SPEC}')) AS e
    FROM format_lines
    WHERE NOT cut AND NOT bad_utf8 AND NOT {_BLANK}
), requests AS MATERIALIZED (
    SELECT file_index, line_no, e.id AS id, e.time AS time,
        e.inferenceservicename AS model_id,
        {_header(1, 1)} AS principal,
        trim(split_part({_header(2, 2)}, ',', 1)) AS ip,
        {_header(3, 5)} AS session,
        CASE WHEN e.data.instances IS NOT NULL THEN e.data.instances
             WHEN coalesce(left(flat, 1) <> '[', TRUE) THEN NULL
             WHEN len(shape) = 2
                  AND coalesce(shape[1] <> 1 OR json_array_length(flat) <> shape[2], TRUE)
                 THEN list_transform(range(0, shape[1]), lambda k: '[' || array_to_string({
    _rows("flat::JSON[]", "shape", "k")
}, ',') || ']')
             ELSE [flat]
        END AS inputs
    FROM (SELECT *, {_keys_if_needed((1, 1), (2, 2), (3, 5))} AS keys
          FROM (SELECT *, {_exact_headers(1, 2, 5)} AS h, e.data.inputs[1].data AS flat,
                    e.data.inputs[1].shape AS shape
                FROM events WHERE e.type = $3))
), response_events AS (
    SELECT file_index, line_no, e.id AS id, e.time AS response_time, e.data AS body
    FROM events WHERE e.type = $4
), redelivered AS (
    SELECT id FROM response_events GROUP BY id HAVING count(*) > 1
), responses AS (
    SELECT id, response_time, body FROM response_events ANTI JOIN redelivered USING (id)
    UNION ALL
    SELECT id, response_time, body FROM response_events SEMI JOIN redelivered USING (id)
    QUALIFY row_number() OVER (PARTITION BY id ORDER BY file_index, line_no) = 1
), instances AS (
    SELECT r.*, s.response_time, s.body, s.id IS NOT NULL AS has_response, len(inputs) AS n,
        unnest(inputs) AS features, generate_subscripts(inputs, 1) AS i
    FROM requests r LEFT JOIN responses s USING (id)
    WHERE inputs IS NOT NULL AND len(inputs) > 0
), answered AS (
    SELECT *,
        CASE WHEN len(body.outputs[1].shape) = 2
                 THEN try_cast({_rows("body.outputs[1].data", "body.outputs[1].shape", "i - 1")}
                               AS DOUBLE[])
             WHEN left(answer, 1) = '[' THEN try_cast(answer::JSON[] AS DOUBLE[])
        END AS probabilities
    FROM (SELECT *, coalesce(body.predictions[i], body.outputs[1].data[i]) AS answer
          FROM instances)
)
SELECT file_index, line_no, {_RECORD_COLUMNS},
    {_KSERVE_RECORD} AS v
FROM answered
UNION ALL
SELECT l.file_index, l.line_no, l.text, FALSE, FALSE,
    CASE WHEN reason <> 'unparsed' THEN reason
         WHEN try(json_valid(l.text)) THEN '{schema.UNMAPPABLE}' END,
    NULL
FROM format_lines l JOIN (
    SELECT file_index, line_no, '{schema.UNMAPPABLE}' AS reason FROM requests
    WHERE inputs IS NULL OR len(inputs) = 0
    UNION ALL
    SELECT file_index, line_no, 'unparsed' FROM events
    WHERE e IS NULL OR e.type IS NULL OR e.type NOT IN ($3, $4)
    UNION ALL
    SELECT file_index, line_no, '{schema.UNPAIRED_RESPONSE}'
    FROM response_events ANTI JOIN (SELECT id FROM requests) USING (id)
) problems USING (file_index, line_no)
UNION ALL
{_PASS_THROUGH}
"""


def _mapping_sql(mapping: dict[str, str]) -> str:
    paths = list(mapping.values())
    names = list(mapping.keys())
    quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    pairs = ", ".join(f"'{name}', v[{i}]" for i, name in enumerate(names, 1))
    return f"""
WITH mapped AS (
    SELECT file_index, line_no, text, try(json_extract(text, [{quoted}])) AS v
    FROM format_lines
    WHERE NOT cut AND NOT bad_utf8 AND NOT {_BLANK}
)
SELECT file_index, line_no,
    CASE WHEN v IS NULL THEN text ELSE json_object({pairs})::VARCHAR END AS text,
    FALSE AS cut, FALSE AS bad_utf8, NULL::VARCHAR AS reject, NULL AS v
FROM mapped
UNION ALL
{_PASS_THROUGH}
"""
