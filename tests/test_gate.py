"""``stealwatch gate`` and the ``privacy_audit`` asset: exit codes, outputs, the gate's check."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import joblib
import numpy as np
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
    for name in (
        "max_confidence",
        "loss",
        "modified_entropy",
        "lira_offline",
        "rmia",
        "label_only",
    ):
        assert set(result["membership"][name]) >= {
            "auc",
            "auc_ci",
            "tpr_at_10pct_fpr",
            "tpr_at_10pct_fpr_ci",
            "tpr_at_1pct_fpr",
            "tpr_at_0_1pct_fpr",
            "advantage",
        }
    assert result["thresholds"] == {"max_membership_auc": 0.6, "max_fidelity": 0.9}
    assert result["verdicts"]["membership"] == "fail"
    assert 0 <= result["surrogate_fidelity"] <= 1 and result["query_budget"] == 300
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"membership", "extraction"}
    assert cases["membership"].find("failure") is not None
    assert (tmp_path / "privacy_report.html").stat().st_size > 10_000
    granularities = {c["granularity"] for c in result["extraction"]["curves"]}
    assert granularities == {"probabilities", "rounded_2dp", "randomised", "top1_label"}
    randomised = result["extraction"]["output_minimisation"]["options"]["randomised"]
    assert randomised["accuracy_cost"] == 0 and randomised["brier_increase"] > 0
    assert "randomised (label-preserving noise)" in (tmp_path / "privacy_report.html").read_text()


def test_default_gate_fails_a_tight_model_that_is_easy_to_copy(files, tmp_path, capsys):
    """The regularised model leaks no membership, but a copy reaches the default fidelity bar
    within the default budget: the default gate judges both risks and says which failed."""
    assert cli(gate_args(files, "logreg", tmp_path / "a")) == 1
    result = json.loads((tmp_path / "a" / "privacy_audit.json").read_text())
    assert result["verdicts"] == {"membership": "pass", "extraction": "fail"}
    assert result["surrogate_fidelity"] >= 0.9 and result["passed"] is False
    suite = ET.parse(tmp_path / "a" / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert suite.get("failures") == "1" and suite.get("tests") == "2"
    assert cases["extraction"].find("failure") is not None
    assert cases["membership"].find("failure") is None
    err = capsys.readouterr().err
    assert "gate FAILED (membership pass, extraction fail)" in err


def test_extraction_not_gated_on_request(files, tmp_path):
    assert cli(gate_args(files, "logreg", tmp_path / "b", "--max-fidelity", "none")) == 0
    result = json.loads((tmp_path / "b" / "privacy_audit.json").read_text())
    assert result["verdicts"] == {"membership": "pass", "extraction": "not_gated"}
    suite = ET.parse(tmp_path / "b" / "junit.xml").getroot().find("testsuite")
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"


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


def run_stealwatch(args: list[str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("stealwatch")
    return subprocess.run([str(exe), *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("single_train", "single_holdout", "named"),
    [(True, True, "training data"), (True, False, "training data"), (False, True, "holdout data")],
)
def test_single_label_class_is_a_one_line_usage_error(
    files, tmp_path, single_train, single_holdout, named
):
    """One class in either file: exit 2 with one line, not a traceback or a false FAIL."""
    paths = dict(files)
    for key, single in (("train", single_train), ("holdout", single_holdout)):
        if single:
            frame = pl.read_csv(files[key]) if files[key].suffix == ".csv" else None
            frame = frame if frame is not None else pl.read_parquet(files[key])
            paths[key] = tmp_path / f"one-class-{key}.parquet"
            frame.filter(pl.col("label") == 1).write_parquet(paths[key])
    proc = run_stealwatch(gate_args(paths, "logreg", tmp_path / "out"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "FAILED" not in proc.stderr
    assert f"{named} holds a single label class (1)" in lines[0]


def test_library_warnings_go_to_the_gate_log_not_the_console(files, tmp_path):
    """Reference models of an under-iterated logistic regression do not converge: the
    ConvergenceWarnings are in OUT/gate.log; the console shows one line pointing there."""
    X = pl.read_parquet(files["train"])
    model = LogisticRegression(max_iter=3).fit(X.drop("label").to_numpy(), X["label"].to_numpy())
    sio.dump(model, tmp_path / "slow.skops")
    paths = {**files, "slow": tmp_path / "slow.skops"}
    out = tmp_path / "out"
    proc = run_stealwatch(gate_args(paths, "slow", out, "--max-fidelity", "none"))
    assert proc.returncode in (0, 1), proc.stderr
    assert "ConvergenceWarning" not in proc.stderr and "https://" not in proc.stderr
    log = (out / "gate.log").read_text()
    assert "ConvergenceWarning" in log
    assert f"library warning(s) in {out / 'gate.log'}" in proc.stderr


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
        [
            str(exe),
            *gate_args(files, "pickle", tmp_path, "--trust-pickle", "--max-fidelity", "none"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def _store(folder):
    from assets.resources import StoreResource

    return StoreResource(database=str(folder / "store.duckdb"))


def test_privacy_audit_asset_reports_a_failed_gate_and_the_run_goes_on(
    files, tmp_path, monkeypatch
):
    """A failed gate is a finding of the audit (the report and risk register show it), not a
    failed audit: the check fails, the materialisation does not."""
    from dagster import materialize

    from assets.privacy import privacy_audit
    from assets.resources import AuditConfig
    from audits.privacy import extraction

    monkeypatch.setattr(extraction, "DEFAULT_BUDGETS", (100,))
    monkeypatch.setattr(extraction, "FAMILIES", ("logistic_regression",))
    config = AuditConfig(
        logs=str(tmp_path),
        out_dir=str(tmp_path),
        model=str(files["forest"]),
        train=str(files["train"]),
        holdout=str(files["holdout"]),
    )
    resources = {"audit": config, "duckdb": _store(tmp_path)}
    result = materialize([privacy_audit], resources=resources, raise_on_error=False)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["privacy_gate"] and not checks[0].passed
    for name in ("privacy_audit.json", "junit.xml", "privacy_report.html"):
        assert (tmp_path / "privacy" / name).exists()
    # the asset's output: its table holds the result the gate's JSON holds
    import duckdb

    from audits.privacy_results import read_privacy

    written = json.loads((tmp_path / "privacy" / "privacy_audit.json").read_text())
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        assert read_privacy(con) == written and written["passed"] is False


def test_privacy_audit_asset_skips_without_data(tmp_path):
    from dagster import materialize

    from assets.privacy import privacy_audit
    from assets.resources import AuditConfig

    audit = AuditConfig(logs=str(tmp_path), out_dir=str(tmp_path))
    result = materialize([privacy_audit], resources={"audit": audit, "duckdb": _store(tmp_path)})
    assert result.success
    mats = result.asset_materializations_for_node("privacy_audit")
    assert "skipped" in mats[0].metadata["status"].value


def test_skipped_privacy_audit_removes_an_earlier_runs_gate_outputs(tmp_path):
    """The scheduled job reuses its output folder: a skipped audit must not leave the last
    run's verdict for the risk register and the report to read as this run's."""
    from dagster import materialize

    from assets.privacy import privacy_audit
    from assets.resources import AuditConfig

    earlier = tmp_path / "privacy"
    earlier.mkdir()
    for name in ("privacy_audit.json", "junit.xml", "privacy_report.html"):
        (earlier / name).write_text("from an earlier run")
    (earlier / "notes.txt").write_text("not ours")
    audit = AuditConfig(logs=str(tmp_path), out_dir=str(tmp_path))
    assert materialize(
        [privacy_audit], resources={"audit": audit, "duckdb": _store(tmp_path)}
    ).success
    assert sorted(p.name for p in earlier.iterdir()) == ["notes.txt"]


def test_reference_recipe_trains_references_of_the_served_kind(files, tmp_path):
    """An ONNX file carries no recipe: with --reference-recipe the references are the given
    estimator's clones, and the JSON and the page say so."""
    from skl2onnx import to_onnx

    forest = sio.load(files["forest"], trusted=sio.get_untrusted_types(file=files["forest"]))
    width = forest.n_features_in_
    onx = to_onnx(forest, np.zeros((1, width), np.float32), options={"zipmap": False})
    (tmp_path / "forest.onnx").write_bytes(onx.SerializeToString())
    sio.dump(RandomForestClassifier(50, bootstrap=False, random_state=0), tmp_path / "r.skops")
    args = gate_args({**files, "onnx": tmp_path / "forest.onnx"}, "onnx", tmp_path / "out")
    assert cli([*args, "--reference-recipe", str(tmp_path / "r.skops")]) == 1
    info = json.loads((tmp_path / "out" / "privacy_audit.json").read_text())["membership_info"]
    assert info["reference_family"] == "recipe"
    assert info["reference_estimator"] == "RandomForestClassifier"
    assert "given with --reference-recipe" in (tmp_path / "out" / "privacy_report.html").read_text()


@pytest.mark.parametrize(
    ("recipe", "match"),
    [("missing.skops", "not found"), ("r.csv", "must be a .skops file")],
)
def test_bad_reference_recipe_is_a_one_line_error(files, tmp_path, capsys, recipe, match):
    (tmp_path / "r.csv").write_text("a\n1\n")
    args = gate_args(
        files, "logreg", tmp_path / "out", "--reference-recipe", str(tmp_path / recipe)
    )
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
