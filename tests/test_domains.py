"""The extra simulated domains: stated geometry, reproducible bytes, truth covering every key,
answers from the served model, the CLI, and an archive that ingests through ``stealwatch audit``
without a reject."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from audits.evaluation import events_from_archive
from audits.models import load_served_model
from audits.simulation.domains import DOMAINS, simulate_domain
from audits.simulation.domains.extraction import FAMILIES
from audits.simulation.domains.tasks import TASKS
from pipelines import cli

SMALL = {"seed": 5, "days": 1, "users": 40, "fidelity": False}
WIDTHS = {
    "wine": 13,
    "sensor": 8,
    "credit": 26,
    "cancer": 30,
    "digits": 64,
    "text": 200,
    "clinic": 10,
}


def _task(name: str, seed: int = 3):
    return TASKS[name](np.random.default_rng(seed))


@pytest.mark.parametrize("name", DOMAINS)
def test_rows_respect_the_stated_geometry(name: str) -> None:
    task = _task(name)
    X, y = task.natural(np.random.default_rng(0), 2000)
    g = task.geometry
    assert X.shape == (2000, WIDTHS[name]) and task.width == WIDTHS[name]
    assert np.all(g.lo <= X) and np.all(g.hi >= X)
    assert np.array_equal(X[:, g.integer], np.round(X[:, g.integer]))
    for group in g.onehot:
        assert set(np.unique(X[:, group])) <= {0.0, 1.0}
        assert np.all(X[:, group].sum(axis=1) == 1.0)
    assert set(np.unique(y)) == set(range(task.n_classes))
    public = task.outside(np.random.default_rng(1), 500)
    assert public.shape == (500, task.width) and np.all(public == g.valid(public))


def test_domains_differ_in_geometry() -> None:
    tasks = {name: _task(name) for name in DOMAINS}
    assert min(WIDTHS.values()) == 8 and max(WIDTHS.values()) == 200
    assert tasks["digits"].geometry.integer.all() and tasks["digits"].geometry.hi.max() == 16
    assert len(tasks["credit"].geometry.onehot) == 4  # one-hot categoricals beside numerics
    assert not tasks["credit"].geometry.integer.all()
    text = tasks["text"].natural(np.random.default_rng(0), 500)[0]
    assert (text == 0).mean() > 0.5  # sparse counts
    cancer = tasks["cancer"].natural(np.random.default_rng(0), 3000)[0]
    skew = ((cancer - cancer.mean(0)) ** 3).mean(0) / cancer.std(0) ** 3
    assert skew.max() > 1.5  # heavy right tails
    sensor = tasks["sensor"].natural(np.random.default_rng(0), 500)[0]
    assert sensor[:, :3].min() >= 0 and sensor[:, :3].max() <= 1  # bounded ratios
    kinds = {t.model_kind for t in tasks.values()}
    assert {"LogisticRegression", "HistGradientBoosting", "RandomForest", "MLP"} <= kinds


def test_a_task_is_a_function_of_its_seed() -> None:
    for name in ("credit", "text", "wine"):
        a = _task(name).natural(np.random.default_rng(9), 300)
        b = _task(name).natural(np.random.default_rng(9), 300)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module", params=DOMAINS)
def archive(request, tmp_path_factory) -> tuple[str, Path, dict]:
    out = tmp_path_factory.mktemp(request.param)
    return request.param, out, simulate_domain(out, request.param, **SMALL)


@pytest.mark.slow
def test_same_seed_same_bytes(archive, tmp_path) -> None:
    name, out, _ = archive
    simulate_domain(tmp_path / "again", name, **SMALL)
    assert _files(out) == _files(tmp_path / "again")


@pytest.mark.slow
def test_truth_covers_every_key_and_family(archive) -> None:
    name, out, truth = archive
    events = events_from_archive(out / "logs")
    logged = Counter(events["user_id"].to_list())
    users = {u["user_id"]: u for u in truth["users"]}
    assert set(users) == set(logged)
    assert all(users[k]["n_events"] == n for k, n in logged.items())
    attack_kinds = {u["kind"] for u in users.values() if u["role"] == "attacker"}
    assert attack_kinds == set(FAMILIES)
    benign = [u for u in users.values() if u["role"] == "benign"]
    assert {"heavy", "batch_rescoring", "whatif_analyst", "integration_test"} <= {
        u["kind"] for u in benign
    }
    assert truth["input_width"] == WIDTHS[name] and truth["domain"] == name
    sybil = [u["user_id"] for u in users.values() if u["kind"] == "sybil"]
    assert sorted(sybil) == truth["groups"][0]["members"] and len(sybil) >= 5
    subnet = truth["groups"][0]["subnet"].removesuffix("0/24")
    ips = events.filter(pl.col("user_id").is_in(sybil))["source_ip"].unique().to_list()
    assert all(ip.startswith(subnet) for ip in ips)


@pytest.mark.slow
def test_logged_answers_are_the_served_models(archive) -> None:
    _, out, truth = archive
    events = events_from_archive(out / "logs").sample(300, seed=1)
    X = np.asarray(events["features"].to_list())
    model = load_served_model(out / "model.skops")
    proba = model.predict_proba(X)
    logged = np.asarray(events["probabilities"].to_list())
    assert X.shape[1] == truth["input_width"] and logged.shape[1] == len(truth["classes"])
    assert np.allclose(logged, np.round(proba, 6), atol=2e-6)
    assert pl.read_parquet(out / "reference.parquet").width == truth["input_width"]
    assert pl.read_parquet(out / "train.parquet")["label"].n_unique() == len(truth["classes"])


def test_cli_domain_errors_exit_2(tmp_path, capsys) -> None:
    code = cli.main(["simulate", "--out", str(tmp_path / "x"), "--domain", "nope", "--quiet"])
    assert code == 2 and "--domain" in capsys.readouterr().err


@pytest.mark.slow
def test_a_domain_archive_ingests_through_audit_without_rejects(tmp_path) -> None:
    sim, out = tmp_path / "sim", tmp_path / "audit"
    simulate = [
        "simulate",
        "--domain",
        "credit",
        "--users",
        "40",
        "--days",
        "1",
        "--seed",
        "2",
        "--quiet",
    ]
    assert cli.main([*simulate, "--out", str(sim)]) == 0
    truth = json.loads((sim / "truth.json").read_text())
    paths = {"logs": "logs", "model": "model.skops", "reference": "reference.parquet"}
    argv = [x for k, name in paths.items() for x in (f"--{k}", str(sim / name))]
    assert cli.main(["audit", "--out", str(out), "--quiet", *argv]) == 0
    summary = json.loads((out / "ingest_summary.json").read_text())
    expected = truth["expected_ingest"]
    assert {k: summary[k] for k in expected} == expected
    assert not summary["rejected"] and expected["accepted"] == sum(
        u["n_events"] for u in truth["users"]
    )
    scores = pl.read_parquet(out / "user_scores.parquet")
    assert set(scores["user_id"]) == {u["user_id"] for u in truth["users"]}
