"""The canonical event schema, the DuckDB tables that hold it, and the reject reasons.

Everything that reads logs produces rows of ``EVENTS_DDL``; everything downstream reads them.
Timestamps are stored as naive ``TIMESTAMP`` values in UTC; ``day`` is the event's UTC day.
"""

from __future__ import annotations

REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "ts", "user_id", "features")
OPTIONAL_FIELDS: tuple[str, ...] = (
    "session_id",
    "source_ip",
    "model_id",
    "model_version",
    "prediction",
    "probabilities",
    "status",
    "latency_ms",
)

# Reject reasons: the keys of ``ingest_summary.json["rejected"]``.
MALFORMED_JSON = "malformed_json"  # not parseable JSON
NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not an object
MISSING_FIELD = "missing_field"  # a required field absent or null
WRONG_TYPE = "wrong_type"  # a field of the wrong JSON type
BAD_TIMESTAMP = "bad_timestamp"  # ts unparseable or without a zone
NON_FINITE = "non_finite"  # NaN / Infinity anywhere in a numeric field
WRONG_WIDTH = "wrong_width"  # features length != the model's input width
TRUNCATED_LINE = "truncated_line"  # the partial last line of a file cut short
INVALID_UTF8 = "invalid_utf8"  # bytes that are not UTF-8 text
UNPAIRED_RESPONSE = "unpaired_response"  # a KServe response whose request is not logged
UNMAPPABLE = "unmappable"  # a SageMaker/KServe/mapped line that is not a record of that format

REJECT_REASONS: tuple[str, ...] = (
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    BAD_TIMESTAMP,
    NON_FINITE,
    WRONG_WIDTH,
    TRUNCATED_LINE,
    INVALID_UTF8,
    UNPAIRED_RESPONSE,
    UNMAPPABLE,
)

RAW_TEXT_CAP_BYTES = 4096

EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS events (
    event_id      VARCHAR NOT NULL,
    ts            TIMESTAMP NOT NULL,   -- UTC
    day           DATE NOT NULL,        -- UTC day of ts
    user_id       VARCHAR NOT NULL,
    session_id    VARCHAR,
    source_ip     VARCHAR,
    model_id      VARCHAR,
    model_version VARCHAR,
    features      DOUBLE[] NOT NULL,
    prediction    VARCHAR,              -- the served label, as text
    probabilities DOUBLE[],
    status        VARCHAR,
    latency_ms    DOUBLE,
    source_file   VARCHAR NOT NULL,     -- custody: where the record came from
    line_no       BIGINT NOT NULL,      -- 1-based line (JSONL) or row (Parquet)
    partition_day DATE NOT NULL         -- the ingest partition that loaded it
)
"""

REJECTED_DDL = """
CREATE TABLE IF NOT EXISTS rejected_events (
    source_file   VARCHAR NOT NULL,
    line_no       BIGINT NOT NULL,
    reason        VARCHAR NOT NULL,
    detail        VARCHAR NOT NULL,
    raw_text      VARCHAR NOT NULL,     -- capped at 4 KiB
    partition_day DATE NOT NULL
)
"""

SOURCE_FILES_DDL = """
CREATE TABLE IF NOT EXISTS source_files (
    path          VARCHAR NOT NULL,
    size_bytes    BIGINT NOT NULL,
    sha256        VARCHAR NOT NULL,
    format        VARCHAR NOT NULL,
    rows_read     BIGINT NOT NULL,
    accepted      BIGINT NOT NULL,
    rejected      BIGINT NOT NULL,
    duplicates    BIGINT NOT NULL,
    damage        VARCHAR,              -- e.g. a gzip stream cut short; NULL when intact
    partition_day DATE NOT NULL,
    ingested_at   TIMESTAMP NOT NULL,
    run_id        VARCHAR NOT NULL
)
"""

SETTINGS_DDL = """
CREATE TABLE IF NOT EXISTS settings (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
)
"""

USER_DAY_DDL = """
CREATE TABLE IF NOT EXISTS user_day (
    partition_day        DATE NOT NULL,
    day                  DATE NOT NULL,
    user_id              VARCHAR NOT NULL,
    n_events             BIGINT NOT NULL,
    n_with_probabilities BIGINT NOT NULL,
    first_ts             TIMESTAMP NOT NULL,
    last_ts              TIMESTAMP NOT NULL
)
"""
"""Per-user, per-day partial aggregates written with each day partition: a window's volume
rollups (users, events, busiest key per day, probability share) add them up instead of
re-reading the raw events."""

ALL_DDL: tuple[str, ...] = (
    EVENTS_DDL,
    REJECTED_DDL,
    SOURCE_FILES_DDL,
    SETTINGS_DDL,
    USER_DAY_DDL,
)
