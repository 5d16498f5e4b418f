"""Every reject reason, and the typed values of a valid record, straight from the SQL rules."""

import json

import duckdb
import pyarrow as pa
import pytest

from audits import schema
from audits.validation import validation_sql
from tests.conftest import make_record

VALID = make_record("2026-11-01", 1)


def _classify(lines: list[str], cut_line: int | None = None, width: int | None = 4) -> list[tuple]:
    n = len(lines)
    table = pa.table(
        {
            "file_index": pa.array([0] * n, pa.int32()),
            "line_no": pa.array(range(1, n + 1), pa.int64()),
            "text": pa.array([line + "\n" for line in lines], pa.large_string()),
            "cut": pa.array([i + 1 == cut_line for i in range(n)]),
            "bad_utf8": pa.array([False] * n),
            "reject": pa.nulls(n, pa.string()),
        }
    )
    con = duckdb.connect()
    con.register("lines_in", table)
    sql = validation_sql(width)
    return con.sql(
        f"SELECT reason, detail, * EXCLUDE (reason, detail, file_index) FROM ({sql})"
    ).fetchall()


def _with(**changes) -> str:
    record = dict(VALID)
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


_DROP = object()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"event_id": "x", ', schema.MALFORMED_JSON),
        ("[1, 2, 3]", schema.NOT_AN_OBJECT),
        ('"a string"', schema.NOT_AN_OBJECT),
        (_with(user_id=_DROP), schema.MISSING_FIELD),
        (_with(user_id=None), schema.MISSING_FIELD),
        (_with(event_id=""), schema.MISSING_FIELD),
        (_with(features=_DROP), schema.MISSING_FIELD),
        (_with(features="1,2,3,4"), schema.WRONG_TYPE),
        (_with(features=[1, "2", 3, 4]), schema.WRONG_TYPE),
        (_with(features=[1, None, 3, 4]), schema.WRONG_TYPE),
        (_with(ts=1793746830), schema.WRONG_TYPE),
        (_with(session_id={"nested": 1}), schema.WRONG_TYPE),
        (_with(probabilities=0.5), schema.WRONG_TYPE),
        (_with(ts="2026-11-01T10:00:00"), schema.BAD_TIMESTAMP),
        (_with(ts="yesterday at noon+01:00"), schema.BAD_TIMESTAMP),
        (_with(ts="2026-13-45T10:00:00Z"), schema.BAD_TIMESTAMP),
        (_with(features=[]), schema.WRONG_WIDTH),
        (_with(features=[1.0, 2.0, 3.0]), schema.WRONG_WIDTH),
        (_with().replace('"latency_ms": 12.5', '"latency_ms": NaN'), schema.NON_FINITE),
        (_with(features=[1, 2, 3, 1e999]), schema.NON_FINITE),
        (json.dumps({**VALID, "features": [1.0, float("nan"), 0.0, 0.0]}), schema.NON_FINITE),
        (json.dumps({**VALID, "probabilities": [float("inf"), 0.0]}), schema.NON_FINITE),
    ],
)
def test_each_fault_gets_its_reason(line: str, reason: str) -> None:
    [row] = _classify([line])
    assert row[0] == reason, row[1]
    assert row[1]  # a human-readable detail


def test_valid_record_is_typed_and_normalised_to_utc() -> None:
    line = _with(ts="2026-11-02T01:30:00.250+02:00", event_id=42, prediction="cat")
    [row] = _classify([line])
    names = ["reason", "detail", "line_no", "text", "event_id", "ts", "user_id"]
    values = dict(zip(names, row, strict=False))
    assert values["reason"] is None
    assert values["event_id"] == "42"
    assert values["ts"].isoformat() == "2026-11-01T23:30:00.250000"
    assert row[-5] == VALID["features"]


def test_blank_lines_are_not_records_and_the_cut_line_is_flagged() -> None:
    rows = _classify([_with(), "", "   ", '{"event_id": "partial'], cut_line=4)
    assert [(r[2], r[0]) for r in rows] == [(1, None), (4, schema.TRUNCATED_LINE)]
