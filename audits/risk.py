"""The risk register and the attack-defence matrix of one audit, for release reviews.

Both are generated from what the audit found: incidents and their damage (forensics), the
defence replay of every incident, the privacy audit, canary hits and confidence monitoring,
plus what the logs show about the controls in place. Nothing is assumed that the audit did
not measure: a figure it could not compute reads "not measured".

Levels are ``high``, ``medium``, ``low`` or ``not measured``:

- model extraction (one key): likelihood high when a key incident is high or critical, medium
  when there is any key incident, else low; impact from the highest estimated copy fidelity
  of those incidents (>= 0.9 high, >= 0.7 medium, else low), without incidents from the
  privacy audit's surrogate fidelity at its query budget (what an attacker could get).
- Sybil / distributed extraction: likelihood high with a group incident, medium when forensics
  linked keys into a group without one, else low; impact from the groups' copy fidelity.
- membership inference: likelihood from the privacy audit's highest AUC (>= 0.6, the gate's
  default limit, high; >= 0.55 medium; else low); impact from that attack's TPR at 1% FPR
  (>= 0.05 high, >= 0.02 medium, else low).
- canary-triggering reconnaissance (needs ``--canaries``): likelihood high when any key sent a
  canary, else low; impact from those keys' copy fidelity when forensics estimated it, else
  medium (reconnaissance precedes extraction).
- training-data-like traffic (needs confidence monitoring): likelihood high on any
  ``training-like`` day, else low; impact from the membership AUC as above.
- decision-boundary probing (confidence monitoring): likelihood high on any ``low-margin
  shift`` day, else low; impact as for model extraction.

Risk = likelihood x impact on a 1-3 scale (>= 6 high, >= 3 medium, else low; an impact not
measured counts as medium; a likelihood not measured gives a risk not measured).

Recommended control for the extraction threats: the replayed defence (rate limits, top-1
labels, rounding, and randomisation and deduplication where the replay has them) with the
largest mean fidelity cut over the threat's incidents among those that block at most
``MAX_LEGIT_SHARE`` of legitimate users; a cut below ``MIN_CUT`` means no replayed defence
helps and the keys themselves must go (both in :mod:`audits.defence_effects`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from audits.defence_effects import defence_effects, describe_controls, effect_text, pct, recommend

HIGH, MEDIUM, LOW, NOT_MEASURED = "high", "medium", "low", "not measured"
FIDELITY_LEVELS = (0.9, 0.7)
AUC_LEVELS = (0.6, 0.55)
TPR_LEVELS = (0.05, 0.02)

EXTRACTION = "model extraction (one key)"
SYBIL = "Sybil / distributed extraction"
MEMBERSHIP = "membership inference"
CANARY = "canary-triggering reconnaissance"
TRAINING_LIKE = "training-data-like traffic"
BOUNDARY = "decision-boundary probing"
THREATS = (EXTRACTION, SYBIL, MEMBERSHIP, CANARY, TRAINING_LIKE, BOUNDARY)
DEFENCES = (
    "rate_limits",
    "top1_labels",
    "rounding",
    "randomisation",
    "dedup",
    "canaries",
    "monitoring",
)
REGISTER_COLUMNS = (
    "threat",
    "evidence",
    "likelihood",
    "impact",
    "risk",
    "control_in_place",
    "recommended_control",
)
_SCALE = {LOW: 1, MEDIUM: 2, HIGH: 3}


@dataclass
class Findings:
    """What one audit found, as the risk asset reads it from the store."""

    incidents: pl.DataFrame  # the incidents table
    damage: pl.DataFrame | None = None  # the damage table (linked groups included)
    # {incident_id: damage with its replay} (audits.forensics.records.read_incident_damage)
    incident_damage: dict[str, dict] = field(default_factory=dict)
    privacy: dict | None = None  # the privacy audit's result (the privacy_audit asset's table)
    canary_hits: pl.DataFrame | None = None  # None: no registry given
    canaries: int = 0  # canaries in the registry
    confidence: pl.DataFrame | None = None  # confidence_daily rows; None: monitor absent
    usage: pl.DataFrame | None = None  # per key: user_id, n (queries), unique_queries
    controls: dict = field(default_factory=dict)  # observed in the logs, see describe_controls
    detection_ran: bool = True


def level(value: float | None, high: float, medium: float) -> str:
    if value is None:
        return NOT_MEASURED
    return HIGH if value >= high else MEDIUM if value >= medium else LOW


def risk_of(likelihood: str, impact: str) -> str:
    if likelihood == NOT_MEASURED:
        return NOT_MEASURED
    score = _SCALE[likelihood] * _SCALE.get(impact, _SCALE[MEDIUM])
    return HIGH if score >= 6 else MEDIUM if score >= 3 else LOW


def _damages(f: Findings, kind: str) -> list[dict]:
    """The forensics damage (with its defence replay) of each incident of ``kind``."""
    if f.incidents.height == 0 or not f.incident_damage:
        return []
    out = []
    for row in f.incidents.filter(pl.col("kind") == kind).iter_rows(named=True):
        damage = f.incident_damage.get(row["incident_id"])
        if damage is not None:
            out.append({**damage, "subject": row["subject"], "members": row["members"]})
    return out


def _of_kind(incidents: pl.DataFrame, kind: str) -> pl.DataFrame:
    return incidents.filter(pl.col("kind") == kind) if incidents.height else incidents


def _max_fidelity(damages: list[dict]) -> dict | None:
    scored = [d for d in damages if d.get("fidelity") is not None]
    return max(scored, key=lambda d: d["fidelity"]) if scored else None


# ---------------------------------------------------------------- the register


def risk_register(f: Findings) -> pl.DataFrame:
    """One row per threat (``REGISTER_COLUMNS``), in ``THREATS`` order."""
    controls = describe_controls(f.controls)
    in_place_api = "; ".join(v for v in (controls.get("rate_limits"), controls.get("output")) if v)
    rows = [
        _extraction_row(f, in_place_api),
        _sybil_row(f, in_place_api),
        _membership_row(f, controls),
        _canary_row(f),
        _training_like_row(f),
        _boundary_row(f, in_place_api),
    ]
    for row in rows:
        row["risk"] = risk_of(row["likelihood"], row["impact"])
    return pl.DataFrame(rows).select(REGISTER_COLUMNS)


def _extraction_row(f: Findings, in_place: str) -> dict:
    keys = _of_kind(f.incidents, "user")
    damages = _damages(f, "user")
    top = _max_fidelity(damages)
    if not f.detection_ran:
        likelihood, evidence = NOT_MEASURED, "detection did not run for this window"
    elif keys.height:
        serious = keys.filter(pl.col("severity").is_in(["high", "critical"])).height
        likelihood = HIGH if serious else MEDIUM
        evidence = f"{keys.height} key incident(s), {serious} high or critical"
    else:
        likelihood, evidence = LOW, "no key crossed the detection threshold"
    surrogate = (f.privacy or {}).get("surrogate_fidelity")
    if top is not None:
        impact = level(top["fidelity"], *FIDELITY_LEVELS)
        evidence += (
            f"; highest est. copy fidelity {pct(top['fidelity'])} ({top['subject']}, "
            f"{top.get('queries', 0):,} queries)"
        )
    elif surrogate is not None:
        impact = level(surrogate, *FIDELITY_LEVELS)
        evidence += f"; privacy audit: a surrogate reaches {pct(surrogate)} at its query budget"
    else:
        impact = NOT_MEASURED
    advice = recommend(defence_effects(damages))
    if advice is None:
        advice = (
            "keep detection running; replay defences once there is an incident"
            if likelihood in (LOW, NOT_MEASURED)
            else "run forensics (needs --model and --reference) to replay defences"
        )
    return _row(EXTRACTION, evidence, likelihood, impact, in_place or "not measured", advice)


def _sybil_row(f: Findings, in_place: str) -> dict:
    groups = _of_kind(f.incidents, "group")
    damages = _damages(f, "group")
    linked = (
        f.damage.filter(pl.col("kind") == "group")
        if f.damage is not None and f.damage.height
        else None
    )
    if not f.detection_ran:
        likelihood, evidence = NOT_MEASURED, "detection did not run for this window"
    elif groups.height:
        keys = sum(len(m) for m in groups["members"].to_list())
        likelihood = HIGH
        evidence = f"{groups.height} group incident(s) over {keys} keys"
    elif linked is not None and linked.height:
        likelihood = MEDIUM
        evidence = f"forensics linked {linked.height} group(s) of flagged keys (no group incident)"
    else:
        likelihood, evidence = LOW, "no group of keys crossed the threshold or was linked"
    fidelities = [d for d in damages if d.get("fidelity") is not None]
    if linked is not None and linked.height:
        fidelities += [
            {"fidelity": r["est_fidelity"], "subject": r["subject"], "queries": r["queries"]}
            for r in linked.iter_rows(named=True)
            if r["est_fidelity"] is not None
        ]
    top = _max_fidelity(fidelities)
    impact = NOT_MEASURED if top is None else level(top["fidelity"], *FIDELITY_LEVELS)
    if top is not None:
        evidence += f"; highest group copy fidelity {pct(top['fidelity'])} ({top['subject']})"
    advice = recommend(defence_effects(damages))
    if advice is None:
        advice = (
            "keep group linking on; limits per account or per /24, not only per key"
            if likelihood in (LOW, NOT_MEASURED)
            else "revoke the group's keys; limit per account or per /24, not only per key"
        )
    else:
        advice += "; per-key limits split over many keys: limit per account or per /24 too"
    return _row(SYBIL, evidence, likelihood, impact, in_place or "not measured", advice)


def _membership_row(f: Findings, controls: dict) -> dict:
    privacy = f.privacy
    if not privacy:
        return _row(
            MEMBERSHIP,
            "privacy audit did not run (needs --model, --train and --holdout)",
            NOT_MEASURED,
            NOT_MEASURED,
            controls.get("output", "not measured"),
            "run the privacy audit before release (stealwatch gate)",
        )
    auc = privacy.get("membership_auc")
    attack = privacy.get("membership_auc_attack", "")
    tpr = (privacy.get("membership") or {}).get(attack, {}).get("tpr_at_1pct_fpr")
    label_only = (privacy.get("membership") or {}).get("label_only", {}).get("auc")
    evidence = f"highest membership AUC {auc:.3f} ({attack})"
    if tpr is not None:
        evidence += f", TPR {tpr:.3f} at 1% FPR"
    if label_only is not None and attack != "label_only":
        evidence += f"; label-only attack AUC {label_only:.3f}"
    verdict = (privacy.get("verdicts") or {}).get("membership")  # the gate judges two risks
    passed = verdict == "pass" if verdict else privacy.get("passed")
    in_place = f"privacy gate {'passed' if passed else 'failed'}"
    if controls.get("output"):
        in_place += f"; {controls['output']}"
    likelihood = level(auc, *AUC_LEVELS)
    if likelihood == LOW:
        advice = "none beyond keeping the privacy gate in the release pipeline"
    elif label_only is not None and label_only < AUC_LEVELS[1] <= auc:
        advice = f"serve top-1 labels only (label-only AUC {label_only:.3f}); regularise the model"
    else:
        advice = "retrain with stronger regularisation or differential privacy; gate the release"
    return _row(MEMBERSHIP, evidence, likelihood, level(tpr, *TPR_LEVELS), in_place, advice)


def _canary_row(f: Findings) -> dict:
    if f.canary_hits is None or not f.canaries:
        return _row(
            CANARY,
            "no canary registry given (--canaries)",
            NOT_MEASURED,
            NOT_MEASURED,
            "none",
            "plant canaries in public sample data and docs and audit with --canaries",
        )
    hits = f.canary_hits
    in_place = f"{f.canaries} canaries planted"
    if hits.height == 0:
        return _row(CANARY, "no key sent a canary", LOW, MEDIUM, in_place, "keep the canaries")
    keys = sorted(set(hits["user_id"].to_list()))
    sent = hits["canary"].n_unique()
    flagged = set()
    if f.incidents.height:
        others = f.incidents.filter(pl.col("kind").is_in(["user", "group"]))
        flagged = {m for ms in others["members"].to_list() for m in (ms or [])}
    caught = sum(k in flagged for k in keys)
    evidence = (
        f"{len(keys)} key(s) sent {sent} of {f.canaries} canaries "
        f"({hits['event_id'].n_unique():,} events); {caught} of them also flagged by detection"
    )
    top = _max_fidelity(_damages(f, "canary"))
    impact = MEDIUM if top is None else level(top["fidelity"], *FIDELITY_LEVELS)
    if top is not None:
        evidence += f"; highest est. copy fidelity {pct(top['fidelity'])} ({top['subject']})"
    advice = "review and revoke the keys that sent canaries; rotate the canaries they saw"
    return _row(CANARY, evidence, HIGH, impact, in_place, advice)


def _monitoring(f: Findings, alert: str) -> tuple[int, int] | None:
    c = f.confidence
    if c is None or c.height == 0:
        return None
    hit = c.filter(pl.col("alert").fill_null("").str.contains(alert, literal=True)).height
    return hit, c.height


def _training_like_row(f: Findings) -> dict:
    days = _monitoring(f, "training-like")
    if days is None:
        return _row(
            TRAINING_LIKE,
            "confidence monitoring did not run (needs --model and --train)",
            NOT_MEASURED,
            NOT_MEASURED,
            "none",
            "run confidence monitoring (--model, --train, --holdout)",
        )
    alerts, total = days
    auc = (f.privacy or {}).get("membership_auc")
    evidence = f"training-like confidences on {alerts} of {total} days"
    if auc is not None:
        evidence += f"; membership AUC {auc:.3f}"
    likelihood = HIGH if alerts else LOW
    advice = (
        "investigate the keys active on the alerted days; serve top-1 labels or round "
        "probabilities if the model leaks membership"
        if alerts
        else "keep monitoring"
    )
    return _row(
        TRAINING_LIKE,
        evidence,
        likelihood,
        level(auc, *AUC_LEVELS),
        f"confidence monitoring over {total} days",
        advice,
    )


def _boundary_row(f: Findings, in_place: str) -> dict:
    days = _monitoring(f, "low-margin shift")
    extraction = _extraction_row(f, in_place)
    if days is None:
        return _row(
            BOUNDARY,
            "confidence monitoring did not run (needs --model and --train)",
            NOT_MEASURED,
            extraction["impact"],
            "none",
            "run confidence monitoring (--model, --train, --holdout)",
        )
    alerts, total = days
    advice = (
        "investigate the keys active on the alerted days; round probabilities"
        if alerts
        else "keep monitoring"
    )
    return _row(
        BOUNDARY,
        f"low-margin shift on {alerts} of {total} days",
        HIGH if alerts else LOW,
        extraction["impact"],
        f"confidence monitoring over {total} days",
        advice,
    )


def _row(threat, evidence, likelihood, impact, in_place, advice) -> dict:
    return {
        "threat": threat,
        "evidence": evidence,
        "likelihood": likelihood,
        "impact": impact,
        "control_in_place": in_place,
        "recommended_control": advice,
    }


# ---------------------------------------------------------------- attack x defence


def defence_matrix(f: Findings) -> pl.DataFrame:
    """Attacks (the register's threats) x defences: the effect this audit measured, as text,
    or "not measured"."""
    rows = []
    for threat, kind in ((EXTRACTION, "user"), (SYBIL, "group"), (CANARY, "canary")):
        damages = _damages(f, kind)
        effects = defence_effects(damages)
        subjects = len(damages)
        of_kind = _of_kind(f.incidents, kind)
        members = (
            [m for ms in of_kind["members"].to_list() for m in (ms or [])] if of_kind.height else []
        )
        if kind == "canary" and not members and f.canary_hits is not None:
            members = sorted(set(f.canary_hits["user_id"].to_list()))
        row = {"attack": threat}
        for name in ("rate_limits", "top1_labels", "rounding", "randomisation"):
            row[name] = effect_text(name, effects.get(name), subjects)
        if "dedup" in effects:
            row["dedup"] = effect_text("dedup", effects["dedup"], subjects)
        else:
            row["dedup"] = _dedup_text(f.usage, members)
        row["canaries"] = _canary_text(f, members, kind)
        row["monitoring"] = _monitoring_text(f)
        rows.append(row)
    rows.append(_membership_matrix_row(f))
    for threat, alert in ((TRAINING_LIKE, "training-like"), (BOUNDARY, "low-margin shift")):
        row = {"attack": threat, **dict.fromkeys(DEFENCES, "not measured")}
        days = _monitoring(f, alert)
        if days is not None:
            row["monitoring"] = f"{alert} alert on {days[0]} of {days[1]} days"
        rows.append(row)
    order = {t: i for i, t in enumerate(THREATS)}
    rows.sort(key=lambda r: order[r["attack"]])
    return pl.DataFrame(rows).select("attack", *DEFENCES)


def _dedup_text(usage: pl.DataFrame | None, members: list[str]) -> str:
    if usage is None or not members:
        return "not measured"
    mine = usage.filter(pl.col("user_id").is_in(members))
    n = int(mine["n"].sum()) if mine.height else 0
    if n == 0:
        return "not measured"
    repeats = n - int(mine["unique_queries"].sum())
    return (
        f"{repeats / n:.1%} of their {n:,} queries repeat one of their own: dedup or caching "
        "removes those, they carry no new information"
    )


def _canary_text(f: Findings, members: list[str], kind: str) -> str:
    if f.canary_hits is None or not f.canaries:
        return "not measured (no --canaries)"
    senders = set(f.canary_hits["user_id"].to_list())
    if kind == "canary":
        return f"caught {len(senders)} key(s) ({f.canary_hits.height:,} matching events)"
    if not members:
        return "not measured (no incident)"
    caught = len(set(members) & senders)
    return f"{caught} of {len(set(members))} incident keys sent a canary"


def _monitoring_text(f: Findings) -> str:
    c = f.confidence
    if c is None or c.height == 0:
        return "not measured"
    days = c.filter(pl.col("alert").is_not_null()).height
    return f"confidence alerts on {days} of {c.height} days (not attributed to keys)"


def _membership_matrix_row(f: Findings) -> dict:
    row = {"attack": MEMBERSHIP, **dict.fromkeys(DEFENCES, "not measured")}
    privacy = f.privacy or {}
    membership = privacy.get("membership") or {}
    if membership:
        best = privacy.get("membership_auc_attack")
        label_only = membership.get("label_only", {}).get("auc")
        if label_only is not None and best:
            row["top1_labels"] = (
                f"best attack AUC {privacy['membership_auc']:.3f} ({best}) → label-only "
                f"{label_only:.3f}"
            )
    days = _monitoring(f, "training-like")
    if days is not None:
        row["monitoring"] = f"training-like alert on {days[0]} of {days[1]} days"
    return row


# ---------------------------------------------------------------- files


def write_csv_atomic(frame: pl.DataFrame, path: Path) -> Path:
    """Write ``frame`` as CSV to ``path`` through a temporary file in the same folder, so a
    reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.write_csv(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
