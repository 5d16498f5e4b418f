"""``evaluate`` figures and the ``stealwatch evaluate`` command."""

from __future__ import annotations

import argparse
import json

import polars as pl
import pytest

from audits.errors import InputError
from audits.evaluation import evaluate, tpr_at_fpr
from pipelines.commands import evaluate as command

TRUTH = {
    "users": [{"user_id": f"b{i}", "role": "benign", "kind": "regular"} for i in range(98)]
    + [
        {"user_id": "b98", "role": "benign", "kind": "batch_rescoring"},
        {"user_id": "a0", "role": "attacker", "kind": "uniform"},
        {"user_id": "a1", "role": "attacker", "kind": "jbda"},
    ]
}


def _scores(flag_batch: bool = False) -> pl.DataFrame:
    users = [u["user_id"] for u in TRUTH["users"]]
    score = [float(i) / 100 for i in range(98)] + [0.5, 5.0, 4.0]
    flagged = [False] * 98 + [flag_batch, True, False]
    return pl.DataFrame(
        {
            "user_id": users,
            "score": score,
            "flagged": flagged,
            "first_cross_n": [None] * 99 + [100, None],
        }
    )


def test_figures():
    r = evaluate(_scores(), TRUTH)
    assert r["roc_auc"] == 1.0 and r["tpr_at_1pct_fpr"] == 1.0
    assert r["precision_at_k"]["10"] == pytest.approx(0.2)
    assert r["recall_per_family"] == {"jbda": 0.0, "uniform": 1.0}
    assert r["flagged_tpr"] == 0.5 and r["flagged_fpr"] == 0.0
    assert r["detection_delay_queries"]["median"] == 100.0
    r = evaluate(_scores(flag_batch=True), TRUTH)
    assert r["benign_flagged_per_kind"]["batch_rescoring"] == 1


def test_tpr_at_fpr_keeps_ties_together():
    import numpy as np

    y = np.array([0, 0, 1, 1])
    assert tpr_at_fpr(y, np.array([0.0, 1.0, 1.0, 2.0]), 0.0) == 0.5


def test_command_prints_json(tmp_path, capsys):
    scores, truth = tmp_path / "s.parquet", tmp_path / "t.json"
    _scores().write_parquet(scores)
    truth.write_text(json.dumps(TRUTH))
    assert command.run(argparse.Namespace(scores=str(scores), truth=str(truth), json=True)) == 0
    assert json.loads(capsys.readouterr().out)["roc_auc"] == 1.0


def test_command_prints_the_family_table(tmp_path, capsys):
    scores, truth = tmp_path / "s.parquet", tmp_path / "t.json"
    _scores(flag_batch=True).write_parquet(scores)
    truth.write_text(json.dumps(TRUTH))
    assert command.run(argparse.Namespace(scores=str(scores), truth=str(truth))) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["uniform"][:3] == ["1", "1", "1.00"]  # users, flagged, recall
    assert rows["jbda"][:3] == ["1", "0", "0.00"]
    assert rows["batch_rescoring"][:2] == ["1", "1"]


def test_command_input_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    scores = tmp_path / "s.parquet"
    _scores().write_parquet(scores)
    with pytest.raises(InputError):
        command.run(argparse.Namespace(scores=str(tmp_path / "missing"), truth=str(bad)))
    with pytest.raises(InputError):
        command.run(argparse.Namespace(scores=str(scores), truth=str(bad)))
    bad.write_text("[]")
    with pytest.raises(InputError):
        command.run(argparse.Namespace(scores=str(scores), truth=str(bad)))


def test_register_adds_the_command():
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--scores", "a", "--truth", "b"])
    assert args.handler is command.run
