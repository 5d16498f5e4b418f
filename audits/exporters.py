"""Write a canonical archive's traffic as the serving stacks log it: SageMaker Data Capture with
API Gateway access logs, and KServe payload-logger CloudEvents.

The same traffic in every format is how the readers are tested: auditing each must give the
events of the canonical archive. Mapping rules (what a reader can and cannot recover):
SageMaker's ``inferenceTime`` has one-second resolution and carries no principal (the gateway
log does); a batch of rows becomes events ``<eventId>:<i>``; predictions are class indexes.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from audits.catalog import scan_archive

ENDPOINT, VARIANT = "fraud-scorer", "AllTraffic"
PRINCIPAL_HEADER, IP_HEADER, SESSION_HEADER = "X-Api-Key-Id", "X-Forwarded-For", "X-Session-Id"


def canonical_events(logs: Path) -> Iterator[dict]:
    """The canonical archive's records, file by file, in order (only complete, valid lines)."""
    files, _ = scan_archive(logs, "canonical")
    for file in files:
        opener = gzip.open if file.compressed else open
        with opener(file.path, "rt", encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "features" in record and "ts" in record:
                    yield record


def requests(logs: Path, rng: random.Random, batch_share: float) -> Iterator[list[dict]]:
    """The archive's records as API requests: most carry one record; ``batch_share`` of them
    carry two consecutive records of the same user (a batch)."""
    pending: dict[str, dict] = {}
    for record in canonical_events(logs):
        user = record["user_id"]
        if user in pending:
            yield [pending.pop(user), record]
        elif rng.random() < batch_share:
            pending[user] = record
        else:
            yield [record]
    for record in pending.values():
        yield [record]


def _utc(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(dt.UTC)


def _csv(values: list[float]) -> str:
    return ",".join(repr(float(v)) for v in values)


# ---------------------------------------------------------------- SageMaker + gateway


def export_sagemaker(logs: Path, out: Path, *, seed: int = 0, batch_share: float = 0.1) -> dict:
    """Data Capture under ``out/sagemaker`` and gateway access logs under ``out/gateway``.

    Most records carry one row; ``batch_share`` of them carry two consecutive rows of the same
    user (a batch). Encodings rotate between CSV, JSON and BASE64.
    """
    rng = random.Random(seed)
    captures: dict[Path, list[str]] = defaultdict(list)
    gateway: dict[Path, list[str]] = defaultdict(list)
    count = 0
    for group in requests(logs, rng, batch_share):
        count += len(group)
        _add_capture(group, rng, captures, gateway, out)
    _write_all(captures)
    _write_all(gateway)
    return {"events": count, "capture_files": len(captures), "gateway_files": len(gateway)}


def _add_capture(group: list[dict], rng, captures, gateway, out: Path) -> None:
    first = group[0]
    when = _utc(first["ts"])
    request_id = str(uuid.UUID(int=rng.getrandbits(128)))
    encoding = rng.choice(["CSV", "CSV", "JSON", "BASE64"])
    rows = [r["features"] for r in group]
    answers = [_answer(r) for r in group]
    if encoding == "JSON":
        body_in = json.dumps({"instances": rows})
        body_out = json.dumps({"predictions": answers})
        content = "application/json"
    else:
        body_in = "\n".join(_csv(row) for row in rows) + "\n"
        body_out = "\n".join(_csv(a) for a in answers)
        content = "text/csv"
        if encoding == "BASE64":
            body_in = base64.b64encode(body_in.encode()).decode()
            body_out = base64.b64encode(body_out.encode()).decode()
    capture = {
        "captureData": {
            "endpointInput": {
                "observedContentType": content,
                "mode": "INPUT",
                "data": body_in,
                "encoding": encoding,
            },
            "endpointOutput": {
                "observedContentType": content,
                "mode": "OUTPUT",
                "data": body_out,
                "encoding": encoding,
            },
        },
        "eventMetadata": {
            "eventId": first["event_id"],
            "inferenceId": request_id,
            "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **_custom_attributes(first),
        },
        "eventVersion": "0",
    }
    hour = when.strftime("%Y/%m/%d/%H")
    captures[out / "sagemaker" / ENDPOINT / VARIANT / hour / "capture.jsonl"].append(
        json.dumps(capture)
    )
    access = {
        "requestId": request_id,
        "apiKeyId": first["user_id"],
        "ip": first.get("source_ip") or "-",
        "requestTime": when.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "requestTimeEpoch": str(int(when.timestamp() * 1000)),
        "httpMethod": "POST",
        "resourcePath": "/predict",
        "status": "200",
        "responseLatency": str(int(first.get("latency_ms") or 0)),
    }
    stamp = when.strftime("%Y-%m-%d-%H")
    gateway[out / "gateway" / hour / f"access-logs-1-{stamp}"].append(json.dumps(access))


def _custom_attributes(record: dict) -> dict:
    """The caller's CustomAttributes: its session, when the client sends one."""
    session = record.get("session_id")
    return {"customAttributes": f"session_id={session}"} if session else {}


def _answer(record: dict) -> list:
    if record.get("probabilities"):
        return record["probabilities"]
    return [] if record.get("prediction") is None else [record["prediction"]]


def _write_all(files: dict[Path, list[str]]) -> None:
    for path, lines in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))


# ---------------------------------------------------------------- KServe


def export_kserve(
    logs: Path, out: Path, *, seed: int = 0, batch_share: float = 0.1, redelivered: int = 5
) -> dict:
    """Request and response CloudEvents under ``out/kserve/dt=YYYY-MM-DD/`` (gzip JSON lines):
    V1 bodies (probabilities when logged, else labels) for odd users, V2 (Open Inference
    Protocol) for even ones; ``redelivered`` requests and responses logged twice
    (at-least-once delivery)."""
    rng = random.Random(seed)
    days: dict[str, list[str]] = defaultdict(list)
    count = 0
    for group in requests(logs, rng, batch_share):
        count += len(group)
        days[_utc(group[0]["ts"]).date().isoformat()] += _cloud_events(group, rng)
    for day, lines in sorted(days.items()):
        for line in rng.sample(lines, min(redelivered, len(lines))):
            lines.append(line)
        path = out / "kserve" / f"dt={day}" / "payloads.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress("".join(x + "\n" for x in lines).encode(), mtime=0))
    return {"events": count, "files": len(days)}


def _cloud_events(group: list[dict], rng) -> list[str]:
    first = group[0]
    when = _utc(first["ts"])
    request_id = first["event_id"]
    v2 = sum(map(ord, first["user_id"])) % 2 == 0
    rows = [r["features"] for r in group]
    probabilities = [r.get("probabilities") for r in group]
    common = {
        "specversion": "1.0",
        "id": request_id,
        "source": "http://localhost:9081/",
        "inferenceservicename": first.get("model_id") or ENDPOINT,
        "namespace": "models",
        "component": "predictor",
        "endpoint": "default",
    }
    if v2:
        width = len(rows[0])
        request_body = {
            "id": request_id,
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [len(rows), width],
                    "datatype": "FP64",
                    "data": [v for row in rows for v in row],
                }
            ],
        }
        k = len(probabilities[0] or [])
        response_body = {
            "id": request_id,
            "model_name": first.get("model_id") or ENDPOINT,
            "model_version": first.get("model_version") or "1",
            "outputs": [
                {
                    "name": "predict_proba",
                    "shape": [len(rows), k],
                    "datatype": "FP64",
                    "data": [v for p in probabilities for v in (p or [])],
                }
            ],
        }
    else:
        request_body = {"instances": rows}
        # sklearnserver with predict_proba answers probabilities; a label-only model, labels
        response_body = {
            "predictions": [r.get("probabilities") or r.get("prediction") for r in group]
        }
    latency = dt.timedelta(milliseconds=float(first.get("latency_ms") or 5))
    request = {
        **common,
        "type": "org.kubeflow.serving.inference.request",
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "metadata": {
            PRINCIPAL_HEADER: [first["user_id"]],
            IP_HEADER: [f"{first.get('source_ip') or '0.0.0.0'}, 10.0.0.1"],
            **({SESSION_HEADER: [first["session_id"]]} if first.get("session_id") else {}),
        },
        "datacontenttype": "application/json",
        "data": request_body,
    }
    response = {
        **common,
        "type": "org.kubeflow.serving.inference.response",
        "time": (when + latency).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "datacontenttype": "application/json",
        "data": response_body,
    }
    return [json.dumps(request), json.dumps(response)]


def canonical_frame(logs: Path) -> pl.DataFrame:
    """The canonical archive's events as a frame (for comparing what each format yields)."""
    return pl.DataFrame(list(canonical_events(logs)))
