"""The records of a fuzzed archive: valid records of each log format and bad lines of every
reject reason, from one seeded random source (see :mod:`audits.simulation.fuzz`)."""

from __future__ import annotations

import datetime as dt
import json
import math
import random

from audits import schema
from audits.formats import KSERVE_REQUEST, KSERVE_RESPONSE

WIDTH = 4  # the model's input width every valid record has


class RecordMaker:
    """Valid records and bad lines of each format, from one seeded random source."""

    def __init__(self, rng: random.Random, seed: int) -> None:
        self.rng = rng
        self.seed = seed
        self.serial = 0

    def new_id(self) -> str:
        self.serial += 1
        return f"fz{self.seed}-{self.serial:07d}"

    def ts(self, day: str) -> str:
        second = self.rng.randrange(86_400)
        stamp = dt.datetime.fromisoformat(day) + dt.timedelta(seconds=second)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{self.rng.randrange(1000):03d}Z"

    def features(self, width: int = WIDTH) -> list[float]:
        return [round(self.rng.gauss(0, 1), 6) for _ in range(width)]

    def canonical(self, day: str) -> dict:
        event_id = self.new_id()
        label = self.rng.randrange(3)
        return {
            "event_id": event_id,
            "ts": self.ts(day),
            "user_id": f"user-{self.rng.randrange(40)}",
            "session_id": f"s-{self.rng.randrange(100)}",
            "source_ip": f"198.51.100.{self.rng.randrange(250)}",
            "model_id": "churn",
            "model_version": "3",
            "features": self.features(),
            "prediction": label,
            "probabilities": [0.8 if k == label else 0.1 for k in range(3)],
            "status": "200",
            "latency_ms": round(self.rng.uniform(1, 90), 3),
        }

    def bad_canonical(self, day: str, reason: str) -> bytes:
        record = self.canonical(day)
        return _BAD_CANONICAL[reason](self, record)

    def kserve_pair(self, day: str) -> tuple[str, bytes, bytes]:
        event_id = self.new_id()
        sent = dt.datetime.fromisoformat(self.ts(day).rstrip("Z"))
        answered = sent + dt.timedelta(milliseconds=self.rng.randrange(1, 400))
        request = self.cloud_event(
            KSERVE_REQUEST, event_id, sent, {"instances": [self.features()]}, principal=True
        )
        response = self.cloud_event(
            KSERVE_RESPONSE, event_id, answered, {"predictions": [self.rng.randrange(3)]}
        )
        return event_id, request, response

    def cloud_event(
        self, kind: str, event_id: str, at: dt.datetime, data: dict, *, principal: bool = False
    ) -> bytes:
        event = {
            "specversion": "1.0",
            "id": event_id,
            "type": kind,
            "source": "http://churn-predictor",
            "time": at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
            "inferenceservicename": "churn",
            "data": data,
        }
        if principal:
            event["metadata"] = {
                "X-Api-Key-Id": [f"key-{self.rng.randrange(40)}"],
                "X-Forwarded-For": [f"203.0.113.{self.rng.randrange(250)}"],
            }
        return dump(event)

    def bad_kserve(self, day: str, reason: str) -> bytes:
        at = dt.datetime.fromisoformat(self.ts(day).rstrip("Z"))
        if reason == schema.UNPAIRED_RESPONSE:
            return self.cloud_event(KSERVE_RESPONSE, self.new_id(), at, {"predictions": [1]})
        if reason == schema.UNMAPPABLE:
            if self.rng.random() < 0.5:  # a request without inputs
                return self.cloud_event(KSERVE_REQUEST, self.new_id(), at, {"parameters": {}})
            return dump({"specversion": "1.0", "id": self.new_id(), "type": "other.event"})
        return _malformed(self, self.cloud_event(KSERVE_REQUEST, self.new_id(), at, {}))

    def sagemaker(self, day: str, features: str | None = None, ts: str | None = None) -> bytes:
        values = features or ",".join(str(v) for v in self.features())
        label = self.rng.randrange(3)
        output = ",".join("0.8" if k == label else "0.1" for k in range(3))
        record = {
            "captureData": {
                "endpointInput": {
                    "observedContentType": "text/csv",
                    "mode": "INPUT",
                    "data": values,
                    "encoding": "CSV",
                },
                "endpointOutput": {
                    "observedContentType": "text/csv; charset=utf-8",
                    "mode": "OUTPUT",
                    "data": output,
                    "encoding": "CSV",
                },
            },
            "eventMetadata": {
                "eventId": self.new_id(),
                "inferenceId": self.new_id(),
                "inferenceTime": ts or self.ts(day)[:19] + "Z",
            },
            "eventVersion": "0",
        }
        return dump(record)

    def bad_sagemaker(self, day: str, reason: str) -> bytes:
        if reason == schema.UNMAPPABLE:
            return dump({"eventVersion": "0", "note": "not a capture record"})
        if reason == schema.MALFORMED_JSON:
            return _malformed(self, self.sagemaker(day))
        if reason == schema.NON_FINITE:
            values = [str(v) for v in self.features()]
            values[self.rng.randrange(WIDTH)] = self.rng.choice(["NaN", "Infinity", "-Infinity"])
            return self.sagemaker(day, features=",".join(values))
        if reason == schema.WRONG_WIDTH:
            width = self.rng.choice([WIDTH - 1, WIDTH + 1])
            return self.sagemaker(day, features=",".join(str(v) for v in self.features(width)))
        return self.sagemaker(day, ts=self.rng.choice([day, day + "T10:00:00", "soon"]))


def dump(record: object) -> bytes:
    return json.dumps(record, separators=(",", ":"), allow_nan=True).encode()


def _malformed(maker: RecordMaker, text: bytes) -> bytes:
    variant = maker.rng.randrange(4)
    if variant == 0:
        return text[:-1]  # closing brace lost
    if variant == 1:
        return text[: max(2, len(text) // 2)]
    if variant == 2:
        return text.replace(b'"', b"", 2)  # the first key unquoted
    return b"{" + text  # a stray brace


def _not_an_object(maker: RecordMaker, record: dict) -> bytes:
    return maker.rng.choice(
        [b"null", b"[1,2,3]", b'"a string"', b"42", b"true", b" " + dump([record])]
    )


def _missing_field(maker: RecordMaker, record: dict) -> bytes:
    name = maker.rng.choice(schema.REQUIRED_FIELDS)
    if maker.rng.random() < 0.3:
        record[name] = None
    else:
        del record[name]
    return dump(record)


_WRONG_TYPES = {
    "event_id": [[1], {"a": 1}, True],
    "user_id": [True, {"a": 1}, [1]],
    "ts": [1793746830, True, ["2026-11-01T10:00:00Z"]],
    "features": ["1,2,3,4", {"x": 1.0}, [1.0, "2", 3.0, 4.0], [[1.0], 2.0, 3.0, 4.0]],
    "latency_ms": ["12.5", [1.0]],
    "source_ip": [[1], {"a": 1}],
    "status": [{"code": 200}],
}


def _wrong_type(maker: RecordMaker, record: dict) -> bytes:
    name = maker.rng.choice(sorted(_WRONG_TYPES))
    record[name] = maker.rng.choice(_WRONG_TYPES[name])
    return dump(record)


def _bad_timestamp(maker: RecordMaker, record: dict) -> bytes:
    ts = record["ts"]
    record["ts"] = maker.rng.choice(
        [ts[:23], ts[:23].replace("T", " "), ts[:10], "2026-13-45T25:61:00Z", "yesterday 10am"]
    )
    return dump(record)


def _non_finite(maker: RecordMaker, record: dict) -> bytes:
    value = maker.rng.choice([math.nan, math.inf, -math.inf])
    where = maker.rng.choice(["features", "features", "probabilities", "latency_ms"])
    if where == "latency_ms":
        record["latency_ms"] = value
    else:
        record[where][maker.rng.randrange(len(record[where]))] = value
    return dump(record)


def _wrong_width(maker: RecordMaker, record: dict) -> bytes:
    record["features"] = maker.features(maker.rng.choice([0, 1, WIDTH - 1, WIDTH + 1, 9]))
    return dump(record)


def _invalid_utf8(maker: RecordMaker, record: dict) -> bytes:
    text = dump(record)
    at = text.index(b'"user_id":"') + len(b'"user_id":"')
    return text[:at] + maker.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]) + text[at:]


_BAD_CANONICAL = {
    schema.MALFORMED_JSON: lambda maker, record: _malformed(maker, dump(record)),
    schema.NOT_AN_OBJECT: _not_an_object,
    schema.MISSING_FIELD: _missing_field,
    schema.WRONG_TYPE: _wrong_type,
    schema.BAD_TIMESTAMP: _bad_timestamp,
    schema.NON_FINITE: _non_finite,
    schema.WRONG_WIDTH: _wrong_width,
    schema.INVALID_UTF8: _invalid_utf8,
}
