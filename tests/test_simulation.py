"""The archive simulator: reproducible bytes, truth consistent with the archive, real served
answers, exact expected ingest counts under faults, and CLI errors."""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from audits import schema
from audits.errors import InputError
from audits.readers import decompress_recoverable
from audits.simulation import simulate
from audits.simulation.roster import ATTACK_FAMILIES, HARD_NEGATIVES
from audits.simulation.simulator import _prepare_out_dir
from pipelines import cli

ARGS = {"seed": 11, "days": 2, "users": 60}


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim")
    return out, simulate(out, **ARGS)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("faulty")
    return out, simulate(out, faults=True, **ARGS)


@pytest.fixture
def with_simulate():
    """The CLI's entry point, which has the simulate command."""
    return cli.main


def _records(root: Path) -> list[tuple[str, dict]]:
    """(dt folder, record) of every line of an intact archive."""
    out = []
    for path in sorted((root / "logs").rglob("*.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).decode().splitlines():
            out.append((path.parent.name, json.loads(line)))
    return out


def _utc(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts).astimezone(dt.UTC)


def test_truth_matches_archive(sim) -> None:
    root, truth = sim
    records = _records(root)
    per_user = Counter(r["user_id"] for _, r in records)
    assert {u["user_id"]: u["n_events"] for u in truth["users"]} == dict(per_user)
    assert len({r["event_id"] for _, r in records}) == len(records)
    assert truth["days"] == ["2026-11-01", "2026-11-02"] and truth["classes"] == [0, 1, 2, 3]
    kinds = {u["kind"] for u in truth["users"]}
    assert set(ATTACK_FAMILIES) | set(HARD_NEGATIVES) | {"regular"} == kinds
    assert all(re.fullmatch(r"key_[0-9a-f]{12}", u["user_id"]) for u in truth["users"])
    for folder, r in records:
        assert folder == f"dt={_utc(r['ts']).date()}"
        assert len(r["features"]) == truth["input_width"]
        assert r["status"] == "200" and isinstance(r["prediction"], int)
    zones = Counter(r["ts"].endswith("Z") for _, r in records)
    assert 0 < zones[False] < zones[True]
    with_session = {r["user_id"] for _, r in records if "session_id" in r}
    assert 0 < len(with_session) < len(per_user)
    assert truth["expected_ingest"] == {
        "files": len(list((root / "logs").rglob("*.jsonl.gz"))),
        "rows_read": len(records),
        "accepted": len(records),
        "duplicates": 0,
        "rejected": {},
    }


def test_sybil_keys_share_a_subnet_nobody_else_uses(sim) -> None:
    root, truth = sim
    ips = defaultdict(set)
    for _, r in _records(root):
        ips[r["user_id"]].add(r["source_ip"])
    assert truth["groups"]
    for group in truth["groups"]:
        subnet = ipaddress.ip_network(group["subnet"])
        assert len(group["members"]) >= 3 and 0 < group["fidelity"] <= 1
        for user, addresses in ips.items():
            inside = {ipaddress.ip_address(a) in subnet for a in addresses}
            assert inside == ({True} if user in group["members"] else {False})
    sybils = {u["user_id"] for u in truth["users"] if u["kind"] == "sybil"}
    assert sybils == {m for g in truth["groups"] for m in g["members"]}


def test_roles_and_fidelity(sim) -> None:
    _, truth = sim
    for user in truth["users"]:
        attacker = user["role"] == "attacker"
        assert attacker == (user["kind"] in ATTACK_FAMILIES)
        assert (user["group"] is not None) == (user["kind"] == "sybil")
        assert (user["fidelity"] is not None) == attacker
        if attacker:
            assert 0 < user["fidelity"] <= 1 and user["n_events"] >= 100


def test_logged_answers_are_the_served_models(sim) -> None:
    import skops.io as sio

    root, truth = sim
    path = root / "model.skops"
    model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    records = [r for _, r in _records(root)][::7]
    X = np.array([r["features"] for r in records])
    logged = np.array([r["probabilities"] for r in records])
    proba = model.predict_proba(X)
    assert np.abs(proba - logged).max() <= 5.1e-7
    assert [r["prediction"] for r in records] == proba.argmax(axis=1).tolist()
    assert list(model.classes_) == truth["classes"]


def test_data_files(sim) -> None:
    root, truth = sim
    features = [f"f{j}" for j in range(truth["input_width"])]
    train = pl.read_parquet(root / "train.parquet")
    holdout = pl.read_parquet(root / "holdout.parquet")
    reference = pl.read_parquet(root / "reference.parquet")
    assert train.columns == holdout.columns == [*features, "label"]
    assert reference.columns == features
    assert set(train["label"].unique()) == set(truth["classes"])
    assert train.join(holdout, on=features, how="semi").height == 0


def test_family_signatures(sim) -> None:
    """A few tells the field notes promise: evasion chains march in tiny steps, batch jobs
    re-send the same rows every day, integration tests repeat every hour."""
    root, truth = sim
    kind = {u["user_id"]: u["kind"] for u in truth["users"]}
    by_user: dict[str, list] = defaultdict(list)
    for _, r in _records(root):
        by_user[r["user_id"]].append(r)
    scale = pl.read_parquet(root / "reference.parquet").to_numpy().std(axis=0)

    def step(user: str) -> float:
        X = np.array([r["features"] for r in by_user[user]]) / scale
        return float(np.median(np.linalg.norm(np.diff(X, axis=0), axis=1)))

    hsj = [u for u, k in kind.items() if k == "hopskipjump"]
    uniform = [u for u, k in kind.items() if k == "uniform"]
    assert max(step(u) for u in hsj) < 0.2 * min(step(u) for u in uniform)
    for user in (u for u, k in kind.items() if k == "batch_rescoring"):
        days = defaultdict(set)
        for r in by_user[user]:
            days[_utc(r["ts"]).date()].add(tuple(r["features"]))
        first, second = days.values()
        assert len(first & second) > 0.9 * len(first)
    for user in (u for u, k in kind.items() if k == "integration_test"):
        rows = Counter(tuple(r["features"]) for r in by_user[user])
        assert len(rows) < 20 and min(rows.values()) >= 40


def _plain_ingest(root: Path, width: int) -> dict:
    """The reader's rules in plain Python: blank lines skipped, a cut file's partial last line
    rejected, first valid occurrence of an event id accepted, later ones duplicates."""
    seen: set[str] = set()
    counts = Counter()
    rejected = Counter()
    files = sorted((root / "logs").rglob("*.jsonl.gz"))
    for path in files:
        data, damage = decompress_recoverable(path.read_bytes())
        lines = data.split(b"\n")
        partial = lines.pop()
        for line in lines:
            if line.strip():
                reason = _reason(line, width)
                if reason:
                    rejected[reason] += 1
                else:
                    event_id = json.loads(line)["event_id"]
                    counts["duplicates" if event_id in seen else "accepted"] += 1
                    seen.add(event_id)
        if partial.strip():
            assert damage
            rejected[schema.TRUNCATED_LINE] += 1
    total = counts["accepted"] + counts["duplicates"] + sum(rejected.values())
    return {
        "files": len(files),
        "rows_read": total,
        "accepted": counts["accepted"],
        "duplicates": counts["duplicates"],
        "rejected": dict(sorted(rejected.items())),
    }


def _reason(line: bytes, width: int) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return schema.MALFORMED_JSON
    if any(record.get(name) is None for name in schema.REQUIRED_FIELDS):
        return schema.MISSING_FIELD
    try:
        if dt.datetime.fromisoformat(record["ts"]).tzinfo is None:
            return schema.BAD_TIMESTAMP
    except ValueError:
        return schema.BAD_TIMESTAMP
    if not all(math.isfinite(v) for v in record["features"]):
        return schema.NON_FINITE
    if len(record["features"]) != width:
        return schema.WRONG_WIDTH
    return None


def test_faults_expected_ingest_is_exact(faulty, sim) -> None:
    root, truth = faulty
    expected = truth["expected_ingest"]
    assert _plain_ingest(root, truth["input_width"]) == expected
    assert set(expected["rejected"]) == {
        schema.MALFORMED_JSON,
        schema.NON_FINITE,
        schema.WRONG_WIDTH,
        schema.MISSING_FIELD,
        schema.BAD_TIMESTAMP,
        schema.TRUNCATED_LINE,
    }
    assert expected["rejected"][schema.TRUNCATED_LINE] == 1 and expected["duplicates"] > 0
    damaged = [
        p for p in (root / "logs").rglob("*.gz") if decompress_recoverable(p.read_bytes())[1]
    ]
    assert len(damaged) == 1
    clean_users = {u["user_id"]: u["n_events"] for u in sim[1]["users"]}
    assert {u["user_id"]: u["n_events"] for u in truth["users"]} == clean_users


def test_same_seed_same_bytes_through_the_cli(sim, tmp_path, with_simulate, capsys) -> None:
    root, _ = sim
    out = tmp_path / "again"
    argv = ["simulate", "--out", str(out), "--quiet", "--domain", "default"]
    argv += [x for k, v in ARGS.items() for x in (f"--{k}", str(v))]
    assert with_simulate(argv) == 0
    assert str(out / "truth.json") in capsys.readouterr().out

    def files(base: Path) -> dict[str, bytes]:
        return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}

    assert files(out) == files(root)


@pytest.mark.parametrize(
    "extra",
    [["--days", "0"], ["--users", "5"], ["--start", "2026-13-01"], ["--seed", "-1"]],
)
def test_cli_bad_arguments_exit_2(extra, tmp_path, with_simulate, capsys) -> None:
    assert with_simulate(["simulate", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stealwatch: error:") and "\n" not in err


def test_cli_refuses_a_foreign_non_empty_folder(tmp_path, with_simulate, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert with_simulate(["simulate", "--out", str(tmp_path)]) == 2
    assert "not a previous simulation" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_previous_simulation_is_replaced(tmp_path) -> None:
    (tmp_path / "logs" / "dt=2026-11-01").mkdir(parents=True)
    (tmp_path / "logs" / "dt=2026-11-01" / "part-00000.jsonl.gz").write_bytes(b"x")
    (tmp_path / "truth.json").write_text("{}")
    assert _prepare_out_dir(tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []
    file = tmp_path / "model.skops"
    file.write_text("x")
    with pytest.raises(InputError):
        _prepare_out_dir(file)
