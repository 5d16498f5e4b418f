"""The cross-domain detection benchmark: its figures, the leave-one-domain-out tuning (the held-out
domain's runs never reach the tuner), and one tiny end-to-end configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from benchmarks import detect


def _frame(rng: np.random.Generator, shift: float, benign: int = 200) -> pl.DataFrame:
    kinds = ["casual"] * benign + ["uniform"] * 5 + ["jbda"] * 5
    role = ["benign"] * benign + ["attacker"] * 10
    score = np.r_[rng.normal(0, 1, benign), rng.normal(3, 1, 5), rng.normal(0.5, 1, 5)] + shift
    return pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(len(kinds))],
            "role": role,
            "kind": kinds,
            "score": score,
            "flagged": score > 2.5 + shift,
            "n_events": np.arange(len(kinds)),
        }
    )


def _runs() -> list[detect.Run]:
    rng = np.random.default_rng(0)
    return [
        detect.Run(domain, seed, Path("/nonexistent"), {"stealwatch": _frame(rng, shift)})
        for domain, shift in (("a", 0.0), ("b", 0.0), ("c", 5.0))
        for seed in (1, 2)
    ]


def test_figures_count_families_and_benign_kinds() -> None:
    f = detect.figures(_frame(np.random.default_rng(1), 0.0))
    assert f["attackers"] == 10 and f["benign"] == 200
    assert f["kinds"]["uniform"]["attack"] and not f["kinds"]["casual"]["attack"]
    assert f["kinds"]["uniform"]["auc"] > f["kinds"]["jbda"]["auc"]
    assert (
        f["attackers_flagged"] == f["kinds"]["uniform"]["flagged"] + f["kinds"]["jbda"]["flagged"]
    )
    text = detect.render(detect.table(_runs()), ("stealwatch",))
    assert "uniform" in text and "casual" in text and "all" in text


def test_the_held_out_domain_never_reaches_the_tuner() -> None:
    seen: list[set[str]] = []

    def tuner(train: list[detect.Run]) -> dict:
        seen.append({r.domain for r in train})
        return detect.threshold_at_budget(train)

    runs = _runs()
    knobs, tuned = detect.held_out(runs, "c", tuner, lambda _m: None)
    assert seen == [{"a", "b"}] and {r.domain for r in tuned} == {"c"}
    # tuned on unshifted domains, the threshold flags nearly every key of the shifted one
    assert all(r.scores["stealwatch"]["flagged"].mean() > 0.9 for r in tuned)
    knobs, tuned = detect.held_out(runs, "a", tuner, lambda _m: None)
    assert seen[-1] == {"b", "c"} and knobs["threshold"] > 5.0  # the shifted domain sets it
    assert not any(r.scores["stealwatch"]["flagged"].any() for r in tuned)


def test_threshold_at_budget_keeps_training_runs_within_budget() -> None:
    runs = [r for r in _runs() if r.domain != "c"]
    threshold = detect.threshold_at_budget(runs)["threshold"]
    for run in runs:
        frame = run.scores["stealwatch"].filter(pl.col("role") == "benign")
        assert (frame["score"] > threshold).mean() <= detect.FP_BUDGET


@pytest.mark.slow
def test_a_tiny_configuration_prints_the_tables(tmp_path, capsys) -> None:
    detect.main(
        [
            "--domains",
            "wine,sensor",
            "--seeds",
            "1",
            "--users",
            "40",
            "--days",
            "1",
            "--work",
            str(tmp_path),
            "--holdout-domain",
            "wine",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    for name in ("stealwatch", "volume", "prada", "low_and_slow", "integration_test"):
        assert name in out
    assert "leave one domain out" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("wine ", "sensor "))]
    assert {(r[0], r[1]) for r in rows} >= {("wine", "volume"), ("sensor", "stealwatch")}
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows)
