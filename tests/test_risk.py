"""The risk register and the attack-defence matrix: the documented rules on findings shaped
like the store's tables (``tests/test_canaries.py`` checks the files ``stealwatch audit``
writes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from audits import risk
from audits.scoring import INCIDENTS_SCHEMA

T0 = dt.datetime(2026, 11, 1, 9)


def _replay(before: float, limited: float, legit_users_affected: int, legit_users: int = 50):
    """A defence replay as :func:`audits.forensics.replay_defences` writes it."""
    return {
        "queries": 2000,
        "fidelity": before,
        "fidelity_probabilities": before + 0.01,
        "rate_limit": {
            "combined": {
                "limits": {"per_minute": 30, "per_hour": 600},
                "blocked": 1200,
                "fidelity": limited,
                "legit_blocked": 40 * legit_users_affected,
                "legit_users_affected": legit_users_affected,
                "legit_users": legit_users,
            }
        },
        "top1": {
            "fidelity": before,
            "fidelity_without": before + 0.01,
            "legit_responses_changed": 9000,
            "legit_users_affected": legit_users,
        },
        "rounding": {
            "decimals": 1,
            "fidelity": before - 0.03,
            "fidelity_without": before + 0.01,
            "legit_responses_changed": 8000,
        },
    }


def _incidents(rows: list[dict]) -> dict:
    """The ``incidents`` and ``incident_damage`` of :class:`risk.Findings` for ``rows``."""
    base = {
        "first_seen": T0,
        "last_seen": T0,
        "n_events": 10,
        "score": 5.0,
        "evidence": "[]",
    }
    frame = pl.DataFrame(
        [{**base, **{k: v for k, v in r.items() if k != "damage"}} for r in rows],
        schema=INCIDENTS_SCHEMA,
    )
    damage = {r["incident_id"]: r["damage"] for r in rows if r["damage"] is not None}
    return {"incidents": frame, "incident_damage": damage}


def _incident(kind: str, subject: str, severity: str, fidelity: float | None, replay=None) -> dict:
    damage = None
    if fidelity is not None:
        damage = {"fidelity": fidelity, "queries": 2000, "replay": replay}
    return {
        "incident_id": f"inc_{kind}_{subject}",
        "kind": kind,
        "subject": subject,
        "members": [subject] if kind != "group" else ["k1", "k2", "k3"],
        "severity": severity,
        "damage": damage,
    }


def _register(f: risk.Findings) -> dict[str, dict]:
    return {r["threat"]: r for r in risk.risk_register(f).iter_rows(named=True)}


def test_levels_and_risk() -> None:
    assert risk.level(0.93, *risk.FIDELITY_LEVELS) == risk.HIGH
    assert risk.level(0.7, *risk.FIDELITY_LEVELS) == risk.MEDIUM
    assert risk.level(0.5, *risk.FIDELITY_LEVELS) == risk.LOW
    assert risk.level(None, 1, 0) == risk.NOT_MEASURED
    assert risk.risk_of(risk.HIGH, risk.MEDIUM) == risk.HIGH
    assert risk.risk_of(risk.MEDIUM, risk.MEDIUM) == risk.MEDIUM
    assert risk.risk_of(risk.LOW, risk.MEDIUM) == risk.LOW
    assert risk.risk_of(risk.MEDIUM, risk.NOT_MEASURED) == risk.MEDIUM
    assert risk.risk_of(risk.NOT_MEASURED, risk.HIGH) == risk.NOT_MEASURED


def test_extraction_row_follows_the_incidents_and_the_replay() -> None:
    incidents = _incidents(
        [
            _incident("user", "k_a", "critical", 0.95, _replay(0.95, 0.60, 1)),
            _incident("user", "k_b", "medium", 0.80, _replay(0.80, 0.70, 1)),
        ]
    )
    rows = _register(risk.Findings(**incidents))
    row = rows[risk.EXTRACTION]
    assert (row["likelihood"], row["impact"], row["risk"]) == ("high", "high", "high")
    assert "2 key incident(s), 1 high or critical" in row["evidence"]
    assert "95.0% (k_a" in row["evidence"]
    assert row["recommended_control"].startswith("per-key rate limits (30/minute, 600/hour)")
    # the same limits blocking 10 of 50 legitimate keys are too costly: rounding wins
    costly = _incidents([_incident("user", "k_a", "high", 0.95, _replay(0.95, 0.60, 10))])
    advice = _register(risk.Findings(**costly))[risk.EXTRACTION]["recommended_control"]
    assert advice.startswith("round probabilities to 1 decimal(s)")
    quiet = _register(risk.Findings(**_incidents([])))[risk.EXTRACTION]
    assert (quiet["likelihood"], quiet["impact"]) == ("low", "not measured")


def test_membership_canary_and_monitoring_rows() -> None:
    privacy = {
        "membership_auc": 0.66,
        "membership_auc_attack": "loss",
        "membership": {"loss": {"auc": 0.66, "tpr_at_1pct_fpr": 0.07}, "label_only": {"auc": 0.51}},
        "surrogate_fidelity": 0.97,
        "passed": False,
    }
    hits = pl.DataFrame(
        {
            "canary": ["c1", "c2", "c1"],
            "user_id": ["k_a", "k_a", "k_z"],
            "event_id": ["1", "2", "3"],
        }
    )
    confidence = pl.DataFrame(
        {"day": [dt.date(2026, 11, 1), dt.date(2026, 11, 2)], "alert": ["training-like", None]}
    )
    incidents = _incidents(
        [
            _incident("user", "k_a", "high", None),
            _incident("canary", "k_a", "high", None),
            _incident("canary", "k_z", "high", 0.93, _replay(0.93, 0.9, 0)),
        ]
    )
    f = risk.Findings(
        **incidents, privacy=privacy, canary_hits=hits, canaries=3, confidence=confidence
    )
    rows = _register(f)
    member = rows[risk.MEMBERSHIP]
    assert (member["likelihood"], member["impact"]) == ("high", "high")
    assert member["recommended_control"].startswith("serve top-1 labels only")
    assert "privacy gate failed" in member["control_in_place"]
    canary = rows[risk.CANARY]
    assert (canary["likelihood"], canary["impact"]) == ("high", "high")
    assert "2 key(s) sent 2 of 3 canaries (3 events); 1 of them also flagged" in canary["evidence"]
    assert canary["control_in_place"] == "3 canaries planted"
    assert rows[risk.TRAINING_LIKE]["likelihood"] == "high"
    assert rows[risk.BOUNDARY]["likelihood"] == "low"
    # the extraction impact falls back to the privacy audit's surrogate when nothing was estimated
    assert rows[risk.EXTRACTION]["impact"] == "high"
    matrix = {r["attack"]: r for r in risk.defence_matrix(f).iter_rows(named=True)}
    assert list(matrix) == list(risk.THREATS)
    assert matrix[risk.CANARY]["canaries"] == "caught 2 key(s) (3 matching events)"
    assert "93.0% → 90.0%" in matrix[risk.CANARY]["rate_limits"]
    assert (
        matrix[risk.MEMBERSHIP]["top1_labels"] == "best attack AUC 0.660 (loss) → label-only 0.510"
    )
    assert matrix[risk.EXTRACTION]["canaries"] == "1 of 1 incident keys sent a canary"
    assert matrix[risk.EXTRACTION]["rate_limits"] == "not measured"
    assert matrix[risk.TRAINING_LIKE]["monitoring"] == "training-like alert on 1 of 2 days"
    assert matrix[risk.SYBIL]["randomisation"] == "not measured"


def test_csv_is_written_atomically(tmp_path: Path) -> None:
    frame = pl.DataFrame({"threat": ["a, b"], "evidence": ['say "x"']})
    path = risk.write_csv_atomic(frame, tmp_path / "r.csv")
    assert pl.read_csv(path).equals(frame)
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]
