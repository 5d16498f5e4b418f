"""``stealwatch gate`` and the ``privacy_audit`` asset: exit codes, outputs, the blocking check."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import joblib
import polars as pl
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audits.errors import InputError
from pipelines.commands import gate

FAST = ["--budgets", "100,300", "--query-budget", "300", "--quiet"]


def write_frame(path: Path, X, y) -> Path:
    columns = {f"f{i}": X[:, i] for i in range(X.shape[1])}
    frame = pl.DataFrame({**columns, "label": y})
    frame.write_csv(path) if path.suffix == ".csv" else frame.write_parquet(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    X, y = load_breast_cancer(return_X_y=True)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    forest = RandomForestClassifier(50, bootstrap=False, random_state=0).fit(Xa, ya)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(C=0.01)).fit(Xa, ya)
    sio.dump(forest, root / "forest.skops")
    sio.dump(logreg, root / "logreg.skops")
    joblib.dump(logreg, root / "logreg.joblib")
    return {
        "forest": root / "forest.skops",
        "logreg": root / "logreg.skops",
        "pickle": root / "logreg.joblib",
        "train": write_frame(root / "train.parquet", Xa, ya),
        "holdout": write_frame(root / "holdout.csv", Xb, yb),
    }


def cli(argv: list[str]) -> int:
    """What ``stealwatch gate`` does: parse, run, InputError -> exit 2."""
    parser = argparse.ArgumentParser(prog="stealwatch")
    gate.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except InputError as exc:
        print(f"stealwatch: error: {exc}", file=sys.stderr)
        return 2


def gate_args(files, model: str, out: Path, *extra: str) -> list[str]:
    return [
        "gate",
        "--model",
        str(files[model]),
        "--train",
        str(files["train"]),
        "--holdout",
        str(files["holdout"]),
        "--out",
        str(out),
        *FAST,
        *extra,
    ]


def test_leaky_forest_fails_with_exit_1(files, tmp_path):
    assert cli(gate_args(files, "forest", tmp_path)) == 1
    result = json.loads((tmp_path / "privacy_audit.json").read_text())
    assert result["passed"] is False and result["membership_auc"] > 0.6
    assert result["model_sha256"] == result["model"]["sha256"] and len(result["model_sha256"]) == 64
    for name in ("max_confidence", "loss", "modified_entropy", "lira_offline", "label_only"):
        assert set(result["membership"][name]) >= {
            "auc",
            "auc_ci",
            "tpr_at_1pct_fpr",
            "tpr_at_0_1pct_fpr",
            "advantage",
        }
    assert result["thresholds"] == {"max_membership_auc": 0.6, "max_fidelity": None}
    assert 0 <= result["surrogate_fidelity"] <= 1 and result["query_budget"] == 300
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"membership_auc", "surrogate_fidelity"}
    assert cases["membership_auc"].find("failure") is not None
    assert (tmp_path / "privacy_report.html").stat().st_size > 10_000
    granularities = {c["granularity"] for c in result["extraction"]["curves"]}
    assert granularities == {"probabilities", "rounded_2dp", "randomised", "top1_label"}
    randomised = result["extraction"]["output_minimisation"]["options"]["randomised"]
    assert randomised["accuracy_cost"] == 0 and randomised["brier_increase"] > 0
    assert "randomised (label-preserving noise)" in (tmp_path / "privacy_report.html").read_text()


def test_regularised_logreg_passes_then_fidelity_threshold_fails(files, tmp_path):
    assert cli(gate_args(files, "logreg", tmp_path / "a")) == 0
    assert cli(gate_args(files, "logreg", tmp_path / "b", "--max-fidelity", "0.5")) == 1
    suite = ET.parse(tmp_path / "b" / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "1" and suite.get("tests") == "2"


def test_pickle_refused_without_trust(files, tmp_path, capsys):
    assert cli(gate_args(files, "pickle", tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "arbitrary code" in err and "--trust-pickle" in err and "\n" not in err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--max-membership-auc", "1.5"], "max-membership-auc"),
        (["--query-budget", "0"], "query-budget"),
        (["--budgets", "a,b"], "budgets"),
        (["--label-column", "nope"], "no label column 'nope'"),
    ],
)
def test_usage_errors_exit_2(files, tmp_path, capsys, extra, match):
    assert cli(gate_args(files, "logreg", tmp_path, *extra)) == 2
    assert match in capsys.readouterr().err


def _gate_registered() -> bool:
    from pipelines import cli as cli_module

    return "pipelines.commands.gate" in cli_module.COMMAND_MODULES


@pytest.mark.skipif(not _gate_registered(), reason="gate not yet in COMMAND_MODULES")
def test_stealwatch_gate_subprocess(files, tmp_path):
    exe = Path(sys.executable).with_name("stealwatch")
    proc = subprocess.run(
        [str(exe), *gate_args(files, "pickle", tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [str(exe), *gate_args(files, "pickle", tmp_path, "--trust-pickle")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_privacy_audit_asset_blocks_on_failure(files, tmp_path, monkeypatch):
    from dagster import materialize

    from assets.privacy import privacy_audit
    from audits.privacy import extraction
    from pipelines.resources import AuditConfig

    monkeypatch.setattr(extraction, "DEFAULT_BUDGETS", (100,))
    monkeypatch.setattr(extraction, "FAMILIES", ("logistic_regression",))
    config = AuditConfig(
        logs=str(tmp_path),
        out_dir=str(tmp_path),
        model=str(files["forest"]),
        train=str(files["train"]),
        holdout=str(files["holdout"]),
    )
    result = materialize([privacy_audit], resources={"audit": config}, raise_on_error=False)
    checks = result.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["privacy_gate"] and not checks[0].passed
    for name in ("privacy_audit.json", "junit.xml", "privacy_report.html"):
        assert (tmp_path / "privacy" / name).exists()


def test_privacy_audit_asset_skips_without_data(tmp_path):
    from dagster import materialize

    from assets.privacy import privacy_audit
    from pipelines.resources import AuditConfig

    result = materialize(
        [privacy_audit], resources={"audit": AuditConfig(logs=str(tmp_path), out_dir=str(tmp_path))}
    )
    assert result.success
    mats = result.asset_materializations_for_node("privacy_audit")
    assert "skipped" in mats[0].metadata["status"].value
