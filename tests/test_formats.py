"""Serving-stack logs: the same traffic as SageMaker+gateway and KServe gives the same events."""

import gzip
import json
from pathlib import Path

import duckdb
import pytest

from audits import readers, schema
from audits.exporters import export_kserve, export_sagemaker
from audits.formats import UNKNOWN_PRINCIPAL
from pipelines.cli import main
from tests.conftest import make_record, write_jsonl


def _audit(out: Path, logs: Path, *extra: str) -> dict:
    assert main(["audit", "--logs", str(logs), "--out", str(out), "--quiet", *extra]) == 0
    return json.loads((out / "ingest_summary.json").read_text())


def _events(out: Path, request_level: bool = True) -> list[tuple]:
    """Events as comparable tuples; a batch's rows share their request's time and client IP,
    so batched exports are compared without them."""
    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    ts, ip = ("date_trunc('second', ts)", "source_ip") if request_level else ("NULL", "NULL")
    rows = con.sql(
        f"SELECT user_id, {ts}, list_transform(features, lambda v: round(v, 6)), prediction, "
        f"{ip} FROM events ORDER BY ALL"
    ).fetchall()
    con.close()
    return rows


@pytest.fixture
def canonical(archive: Path, tmp_path: Path) -> Path:
    _audit(tmp_path / "canonical", archive)
    return tmp_path / "canonical"


@pytest.mark.parametrize("batch_share", [0.0, 0.3])
def test_sagemaker_with_gateway_gives_the_canonical_events(
    archive: Path, tmp_path: Path, canonical: Path, batch_share: float
) -> None:
    export_sagemaker(archive, tmp_path / "x", seed=1, batch_share=batch_share)
    gateway = str(tmp_path / "x" / "gateway")
    summary = _audit(tmp_path / "sm", tmp_path / "x" / "sagemaker", "--gateway-logs", gateway)
    assert summary["rejected"] == {} and summary["unknown_principal_events"] == 0
    exact = batch_share == 0
    assert _events(tmp_path / "sm", exact) == _events(canonical, exact)


def test_kserve_gives_the_canonical_events_and_dedups_redelivery(
    archive: Path, tmp_path: Path, canonical: Path
) -> None:
    export_kserve(archive, tmp_path / "x", seed=2, batch_share=0.3, redelivered=7)
    summary = _audit(tmp_path / "ks", tmp_path / "x" / "kserve", "--format", "kserve")
    assert summary["rejected"] == {} and summary["duplicates"] > 0
    assert _events(tmp_path / "ks", False) == _events(canonical, False)


def test_unmatched_captures_get_the_unknown_principal(archive: Path, tmp_path: Path) -> None:
    export_sagemaker(archive, tmp_path / "x", seed=3)
    gateway = sorted((tmp_path / "x" / "gateway").rglob("*"))
    first_file = next(p for p in gateway if p.is_file())
    lines = first_file.read_text().splitlines()
    first_file.write_text("\n".join(lines[10:]) + "\nnot json\n")  # 10 requests lost
    summary = _audit(
        tmp_path / "sm",
        tmp_path / "x" / "sagemaker",
        "--gateway-logs",
        str(tmp_path / "x" / "gateway"),
    )
    assert summary["unknown_principal_events"] >= 10
    users = {row[0] for row in _events(tmp_path / "sm")}
    assert UNKNOWN_PRINCIPAL in users


def _cloud_event(kind: str, event_id: str, data: dict, time: str = "2026-11-01T10:00:00Z") -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "time": time,
            "type": f"org.kubeflow.serving.inference.{kind}",
            "inferenceservicename": "m",
            "metadata": {"x-api-key-id": ["key-9"], "X-Forwarded-For": ["203.0.113.9"]},
            "data": data,
        }
    )


def test_kserve_pairs_requests_and_quarantines_orphans(tmp_path: Path) -> None:
    lines = [
        _cloud_event("request", "a", {"instances": [[1.0, 2.0]]}),
        _cloud_event("response", "a", {"predictions": [1]}, "2026-11-01T10:00:00.250Z"),
        _cloud_event("request", "b", {"instances": [[3.0, 4.0], [5.0, 6.0]]}),  # never answered
        _cloud_event("response", "zzz", {"predictions": [0]}),  # no request
        json.dumps({"specversion": "1.0", "id": "q", "type": "something.else"}),
    ]
    path = tmp_path / "logs" / "dt=2026-11-01" / "k.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    summary = _audit(tmp_path / "out", tmp_path / "logs")
    assert summary["accepted"] == 3
    assert summary["rejected"] == {schema.UNPAIRED_RESPONSE: 1, schema.UNMAPPABLE: 1}
    con = duckdb.connect(str(tmp_path / "out" / "stealwatch.duckdb"), read_only=True)
    rows = con.sql(
        "SELECT event_id, user_id, source_ip, status, latency_ms FROM events ORDER BY event_id"
    ).fetchall()
    assert rows == [
        ("a", "key-9", "203.0.113.9", "200", 250.0),
        ("b:0", "key-9", "203.0.113.9", "no_response", None),
        ("b:1", "key-9", "203.0.113.9", "no_response", None),
    ]


def test_kserve_v2_rows_follow_the_shape_and_a_request_without_inputs_is_unmappable(
    tmp_path: Path,
) -> None:
    def v2(shape: list[int], data: list[float]) -> dict:
        return {"shape": shape, "datatype": "FP64", "data": data}

    lines = [
        _cloud_event("request", "one", {"inputs": [v2([1, 2], [1.5, 2.5])]}),
        _cloud_event("response", "one", {"outputs": [v2([1, 2], [0.3, 0.7])]}),
        _cloud_event("request", "two", {"inputs": [v2([2, 2], [1.0, 2.0, 3.0, 4.0])]}),
        _cloud_event("response", "two", {"outputs": [v2([2, 2], [0.1, 0.9, 0.8, 0.2])]}),
        _cloud_event("request", "none", {"parameters": {}}),
        _cloud_event("response", "none", {"outputs": [v2([1, 1], [0.5])]}),
        _cloud_event("request", "zero", {"inputs": [v2([0, 2], [1.0, 2.0])]}),  # no rows
        _cloud_event("response", "zero", {"outputs": [v2([0, 2], [])]}),
    ]
    write_jsonl(tmp_path / "logs" / "dt=2026-11-01" / "k.jsonl.gz", lines)
    summary = _audit(tmp_path / "out", tmp_path / "logs")
    assert summary["accepted"] == 3
    assert summary["rejected"] == {schema.UNMAPPABLE: 2}
    con = duckdb.connect(str(tmp_path / "out" / "stealwatch.duckdb"), read_only=True)
    rows = con.sql(
        "SELECT event_id, features, prediction, probabilities FROM events ORDER BY event_id"
    ).fetchall()
    con.close()
    assert rows == [
        ("one", [1.5, 2.5], "1", [0.3, 0.7]),
        ("two:0", [1.0, 2.0], "1", [0.1, 0.9]),
        ("two:1", [3.0, 4.0], "0", [0.8, 0.2]),
    ]


def test_a_day_mixing_formats_maps_only_the_serving_stack_files(tmp_path: Path) -> None:
    """Files of different formats in one day, interleaved by name: each is read as its own."""
    day = tmp_path / "logs" / "dt=2026-11-01"
    canonical = {
        name: [make_record("2026-11-01", base + i) for i in range(30)]
        for name, base in (("a.jsonl.gz", 0), ("c.jsonl.gz", 100))
    }
    for name, records in canonical.items():
        write_jsonl(day / name, [json.dumps(r) for r in records])
    served = [
        _cloud_event("request", "k1", {"instances": [[1.0, 2.0, 3.0, 4.0]]}),
        _cloud_event("response", "k1", {"predictions": [1]}, "2026-11-01T10:00:00.100Z"),
        _cloud_event("request", "k2", {"instances": [[5.0, 6.0, 7.0, 8.0], [9.0, 1.0, 2.0, 3.0]]}),
        _cloud_event("response", "k2", {"predictions": [0, 2]}, "2026-11-01T10:00:00.200Z"),
    ]
    write_jsonl(day / "b.jsonl.gz", served)
    summary = _audit(tmp_path / "out", tmp_path / "logs")
    assert summary["accepted"] == 63 and summary["rejected"] == {}
    con = duckdb.connect(str(tmp_path / "out" / "stealwatch.duckdb"), read_only=True)
    rows = con.sql(
        "SELECT regexp_extract(source_file, '[abc][.]jsonl[.]gz$'), event_id, user_id, features "
        "FROM events ORDER BY ALL"
    ).fetchall()
    con.close()
    expected = [
        (name, r["event_id"], r["user_id"], r["features"])
        for name, records in canonical.items()
        for r in records
    ] + [
        ("b.jsonl.gz", "k1", "key-9", [1.0, 2.0, 3.0, 4.0]),
        ("b.jsonl.gz", "k2:0", "key-9", [5.0, 6.0, 7.0, 8.0]),
        ("b.jsonl.gz", "k2:1", "key-9", [9.0, 1.0, 2.0, 3.0]),
    ]
    assert rows == sorted(expected)


def test_gateway_lines_logged_twice_give_one_principal_per_request(
    archive: Path, tmp_path: Path, canonical: Path
) -> None:
    export_sagemaker(archive, tmp_path / "x", seed=4, batch_share=0.0)
    for path in (tmp_path / "x" / "gateway").rglob("*"):
        if path.is_file():
            lines = path.read_text().splitlines()
            path.write_text("\n".join(lines + lines[:5]) + "\n")  # at-least-once delivery
    gateway = str(tmp_path / "x" / "gateway")
    summary = _audit(tmp_path / "sm", tmp_path / "x" / "sagemaker", "--gateway-logs", gateway)
    assert summary["rejected"] == {} and summary["duplicates"] == 0
    assert _events(tmp_path / "sm") == _events(canonical)


def test_line_split_across_scan_slices_matches_a_plain_split(monkeypatch) -> None:
    monkeypatch.setattr(readers, "_SCAN_BYTES", 7)  # many slices, lines crossing their bounds
    data = b"".join(b"x" * n + b"\n" for n in (0, 3, 9, 1, 20, 6, 0)) + b"tail"
    lines, bad = readers.split_lines(data)
    assert bad is None
    assert lines["text"].to_pylist() == data.decode().splitlines(keepends=True)
    assert lines["line_no"].to_pylist() == list(range(1, 9))


def test_a_toml_mapping_reads_a_teams_own_logs(tmp_path: Path) -> None:
    record = {
        "request": {"id": "r1", "at": "2026-11-01T09:00:00+01:00"},
        "auth": {"key": "team-key"},
        "payload": {"x": [1.5, 2.5, 3.5]},
        "result": {"label": "fraud", "scores": [0.2, 0.8]},
    }
    broken = {"request": {"id": "r2"}, "auth": {"key": "k"}, "payload": {"x": "oops"}}
    path = tmp_path / "logs" / "2026-11-01.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record) + "\n" + json.dumps(broken) + "\n")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        '[fields]\nevent_id = "$.request.id"\nts = "$.request.at"\nuser_id = "$.auth.key"\n'
        'features = "$.payload.x"\nprediction = "$.result.label"\n'
        'probabilities = "$.result.scores"\n'
    )
    summary = _audit(tmp_path / "out", tmp_path / "logs", "--mapping", str(mapping))
    assert summary["accepted"] == 1
    assert summary["rejected"] == {schema.MISSING_FIELD: 1}  # r2 has no timestamp
    con = duckdb.connect(str(tmp_path / "out" / "stealwatch.duckdb"), read_only=True)
    assert con.sql("SELECT user_id, ts::VARCHAR, features, prediction FROM events").fetchall() == [
        ("team-key", "2026-11-01 08:00:00", [1.5, 2.5, 3.5], "fraud")
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not toml [", "cannot read field mapping"),
        ('[fields]\nevent_id = "$.id"\n', "required fields not mapped: ts, user_id, features"),
        (
            '[fields]\nevent_id = "$.id"\nts = "$.t"\nuser_id = "$.u"\nfeatures = "$.f"\n'
            'colour = "$.c"\n',
            "unknown fields colour",
        ),
    ],
)
def test_a_bad_mapping_is_one_line_and_exit_2(
    archive: Path, tmp_path: Path, capsys, content: str, message: str
) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text(content)
    code = main(
        ["audit", "--logs", str(archive), "--out", str(tmp_path / "o"), "--mapping", str(mapping)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """One simulated day (60 users: the simulator's 10 attackers are 17% of the keys; at 40
    users their 25% sits at the IQR threshold's breakdown point and whether anyone is
    flagged turns on rounding) with its SageMaker+gateway and KServe exports."""
    sim = tmp_path_factory.mktemp("formats") / "sim"
    args = ["simulate", "--out", str(sim), "--seed", "31", "--days", "1", "--users", "60"]
    assert main([*args, "--formats", "sagemaker,kserve", "--quiet"]) == 0
    return sim


def test_simulated_traffic_reads_the_same_in_every_format(simulated: Path, tmp_path: Path) -> None:
    sim = simulated
    model = ["--model", str(sim / "model.skops")]
    _audit(tmp_path / "canonical", sim / "logs", *model)
    sm = _audit(tmp_path / "sm", sim / "sagemaker", "--gateway-logs", str(sim / "gateway"), *model)
    ks = _audit(tmp_path / "ks", sim / "kserve", *model)
    assert sm["rejected"] == ks["rejected"] == {}
    assert sm["unknown_principal_events"] == 0
    expected = _events(tmp_path / "canonical", False)
    assert _events(tmp_path / "sm", False) == expected
    assert _events(tmp_path / "ks", False) == expected


def _user_scores(out: Path) -> list[tuple]:
    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    rows = con.sql(
        "SELECT user_id, round(score, 9), flagged, group_id FROM user_scores ORDER BY user_id"
    ).fetchall()
    con.close()
    return rows


def test_unbatched_exports_give_the_canonical_per_user_scores(
    simulated: Path, tmp_path: Path
) -> None:
    """Unbatched requests keep each event's own time (the gateway's millisecond request time,
    KServe's event time) and session (CustomAttributes, a forwarded header), so every
    behaviour feature and every per-user score equals the canonical archive's."""
    sim, x = simulated, tmp_path / "x"
    export_sagemaker(sim / "logs", x, seed=5, batch_share=0.0)
    export_kserve(sim / "logs", x, seed=6, batch_share=0.0, redelivered=9)
    model = ["--model", str(sim / "model.skops"), "--reference", str(sim / "reference.parquet")]
    _audit(tmp_path / "canonical", sim / "logs", *model)
    sm = _audit(tmp_path / "sm", x / "sagemaker", "--gateway-logs", str(x / "gateway"), *model)
    ks = _audit(tmp_path / "ks", x / "kserve", *model)
    assert sm["rejected"] == ks["rejected"] == {} and ks["duplicates"] > 0
    expected = _user_scores(tmp_path / "canonical")
    assert len(expected) >= 60 and any(row[2] for row in expected)
    assert _user_scores(tmp_path / "sm") == expected
    assert _user_scores(tmp_path / "ks") == expected


def test_unknown_export_format_is_exit_2(tmp_path: Path, capsys) -> None:
    code = main(["simulate", "--out", str(tmp_path / "s"), "--formats", "azure"])
    assert code == 2 and "unknown azure" in capsys.readouterr().err


def _auc(out: Path, truth: dict) -> float:
    from sklearn.metrics import roc_auc_score

    role = {u["user_id"]: u["role"] == "attacker" for u in truth["users"]}
    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    rows = con.sql("SELECT user_id, score FROM user_scores").fetchall()
    con.close()
    return roc_auc_score([role[u] for u, _ in rows], [s for _, s in rows])


def test_batched_exports_score_as_well_as_the_canonical_archive(
    simulated: Path, tmp_path: Path
) -> None:
    """Half the requests batched (a batch's rows share one time and client address): the
    evidence rests on what was asked and answered, not on timing, so the ranking holds."""
    sim, x = simulated, tmp_path / "x"
    export_sagemaker(sim / "logs", x, seed=5, batch_share=0.5)
    export_kserve(sim / "logs", x, seed=6, batch_share=0.5)
    ref = ["--reference", str(sim / "reference.parquet")]
    _audit(tmp_path / "canonical", sim / "logs", *ref)
    _audit(tmp_path / "sm", x / "sagemaker", "--gateway-logs", str(x / "gateway"), *ref)
    _audit(tmp_path / "ks", x / "kserve", *ref)
    truth = json.loads((sim / "truth.json").read_text())
    canonical = _auc(tmp_path / "canonical", truth)
    assert canonical >= 0.95
    for copy in ("sm", "ks"):
        assert _auc(tmp_path / copy, truth) >= canonical - 0.01, copy
