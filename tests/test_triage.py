"""Triage: severity from damage and confidence together, canary hits merged, the action."""

from audits.triage import recommended_action, severity, triage, worst_copy


def _incident(iid, kind, members, score, fidelity=None, ci=None, replay=None):
    damage = None
    if fidelity is not None:
        damage = {"fidelity": fidelity, "ci": ci, "fidelity_probabilities": None, "replay": replay}
    return {
        "incident_id": iid,
        "kind": kind,
        "subject": members[0] if kind != "group" else f"grp-{iid}",
        "members": members,
        "score": score,
        "severity": "high",
        "n_events": 100,
        "damage": damage,
    }


def test_severity_weighs_damage_with_confidence() -> None:
    assert severity(0.85, 1.1, 1.0, canary=False) == "critical"  # a confident good copy
    assert severity(0.65, 2.0, 1.0, canary=False) == "critical"
    assert severity(0.65, 1.1, 1.0, canary=False) == "high"
    assert severity(0.30, 5.0, 1.0, canary=False) == "medium"  # high score, poor copy
    assert severity(0.30, 1.1, 1.0, canary=False) == "low"
    assert severity(None, 2.0, 1.0, canary=False) == "high"
    assert severity(0.10, None, None, canary=True) == "critical"


def test_a_damaging_copy_outranks_a_higher_score_and_canaries_merge_into_its_incident() -> None:
    rows = [
        _incident("a", "user", ["k1"], 5.0, 0.58, [0.55, 0.61]),
        _incident("b", "user", ["k2"], 1.2, 0.898, [0.88, 0.91]),
        _incident("c", "canary", ["k2"], None),
        _incident("d", "canary", ["k9"], None),
    ]
    listed = triage(rows, threshold=1.0)
    assert [i["incident_id"] for i in listed] == ["b", "d", "a"]
    assert listed[0]["severity"] == "critical" and listed[0]["detection_severity"] == "high"
    assert [c["incident_id"] for c in listed[0]["canaries"]] == ["c"]
    assert listed[0]["canaries"][0]["severity"] == "critical"
    assert listed[1]["severity"] == "critical" and listed[1]["canaries"] == []
    assert listed[2]["severity"] == "medium" and listed[2]["margin"] == 4.0
    assert worst_copy(listed)["incident_id"] == "b"


def test_the_action_names_the_defence_that_cuts_the_copy_most_and_its_cost() -> None:
    replay = {
        "fidelity": 0.9,
        "fidelity_probabilities": None,
        "rate_limit": {
            "per_hour": {
                "limits": {"per_hour": 600},
                "fidelity": 0.4,
                "legit_blocked": 12,
                "legit_users_affected": 3,
            },
            "per_day": {
                "limits": {"per_day": 5000},
                "fidelity": 0.4,
                "legit_blocked": 0,
                "legit_users_affected": 0,
            },
        },
        "dedup": {"fidelity": 0.88, "legit_queries_affected": 1},
    }
    damage = {"fidelity": 0.9, "ci": [0.88, 0.92], "fidelity_probabilities": None, "replay": replay}
    action = recommended_action("critical", damage, canary=False)
    assert action["keys"].startswith("Revoke")
    assert action["defence"]["name"] == "rate limit (5,000/day)"  # as low, and free
    assert action["defence"]["from"] == 0.9 and "0 legitimate" in action["defence"]["cost_text"]
    useless = {**replay, "rate_limit": {}, "dedup": {"fidelity": 0.89}}
    assert recommended_action("high", {**damage, "replay": useless}, False)["defence"] is None
