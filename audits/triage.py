"""Triage of a window's incidents: a severity from the damage and the detection's confidence
together, the action the defence replay supports, and canary hits merged into the incident of
the key that sent them.

Plain functions over the ``incidents`` rows as the report reads them (``damage`` parsed from
its JSON); the stored severity (from the score alone) is kept as ``detection_severity``.
"""

from __future__ import annotations

SEVERITIES = ("critical", "high", "medium", "low")
# lower bounds of the fidelity's 95% interval: a copy this good at least, with confidence
SEVERE_COPY = 0.8
SUBSTANTIAL_COPY = 0.6
STRONG_EVIDENCE = 1.5  # score at least this many times the threshold
USEFUL_CUT = 0.05  # a defence must take at least 5 points off the copy to be recommended


def severity(
    ci_low: float | None, score: float | None, threshold: float | None, canary: bool
) -> str:
    """``critical``: a canary was sent, or the copy's interval lies above 80%, or above 60% with
    strong evidence; ``high``: above 60%, or strong evidence where the damage is unknown;
    ``medium``: flagged otherwise; ``low``: the copy is known to be poor (below 60%) and the
    evidence is weak."""
    ratio = None if not score or not threshold or threshold <= 0 else score / threshold
    strong = ratio is not None and ratio >= STRONG_EVIDENCE
    if canary or (ci_low is not None and ci_low >= SEVERE_COPY):
        return "critical"
    if ci_low is not None and ci_low >= SUBSTANTIAL_COPY:
        return "critical" if strong else "high"
    if ci_low is None:
        return "high" if strong else "medium"
    return "medium" if strong else "low"


def margin(score: float | None, threshold: float | None) -> float | None:
    """How far over the threshold the score is, as a fraction of the threshold (0.5: 50%)."""
    if score is None or not threshold or threshold <= 0:
        return None
    return score / threshold - 1.0


def defence_options(damage: dict | None) -> list[dict]:
    """Each replayed defence with the copy fidelity it would have left the subject (``fidelity``),
    the fidelity it is compared with (``from``: the label-trained copy for defences that keep
    answers as they are, the probability-trained one for those that change probabilities) and
    its cost to legitimate users; the largest cut first, then the cheapest."""
    replay = (damage or {}).get("replay") or {}
    base = replay.get("fidelity")
    if base is None:
        return []
    soft = replay.get("fidelity_probabilities")
    options = []
    for limit in (replay.get("rate_limit") or {}).values():
        rates = ", ".join(f"{v:,}/{k.removeprefix('per_')}" for k, v in limit["limits"].items())
        blocked, users = limit.get("legit_blocked", 0), limit.get("legit_users_affected", 0)
        cost = f"{blocked:,} legitimate queries blocked ({users:,} users)"
        options.append(_option(f"rate limit ({rates})", limit["fidelity"], base, blocked, cost))
    if soft is not None:
        top1 = replay.get("top1") or {}
        if top1:
            changed = top1.get("legit_responses_changed", 0)
            cost = f"{changed:,} legitimate answers lose their probabilities"
            options.append(_option("serve the top-1 label only", base, soft, changed, cost))
        for key, label in (
            ("rounding", "round probabilities"),
            ("randomisation", "randomise probabilities"),
        ):
            entry = replay.get(key)
            if entry:
                changed = entry.get("legit_responses_changed", 0)
                cost = f"{changed:,} legitimate answers changed"
                left = max(entry["fidelity"], base)  # labels alone still train a copy
                options.append(_option(label, left, soft, changed, cost))
    dedup = replay.get("dedup")
    if dedup:
        cached = dedup.get("legit_queries_affected", 0)
        cost = f"{cached:,} legitimate queries answered from cache"
        options.append(
            _option("deduplicate repeated queries", dedup["fidelity"], base, cached, cost)
        )
    return sorted(options, key=lambda o: (o["fidelity"] - o["from"], o["cost"], o["name"]))


def _option(name: str, fidelity: float, before: float, cost: int, cost_text: str) -> dict:
    return {
        "name": name,
        "fidelity": float(fidelity),
        "from": float(before),
        "cost": int(cost),
        "cost_text": cost_text,
    }


def recommended_action(level: str, damage: dict | None, canary: bool) -> dict:
    """The action for an incident: what to do with its keys (by severity) and the replayed
    defence that would have cut its copy most, when one would have cut it by 5 points or more."""
    keys = {
        "critical": "Revoke the key(s) now",
        "high": "Suspend the key(s) and review",
        "medium": "Watch the key(s)",
        "low": "No action beyond watching",
    }[level]
    if canary:
        keys += ": they replayed canary inputs no legitimate client sends"
    best = next(iter(defence_options(damage)), None)
    if best is None or best["from"] - best["fidelity"] < USEFUL_CUT:
        return {"keys": keys, "defence": None}
    return {"keys": keys, "defence": best}


def triage(incidents: list[dict], threshold: float | None) -> list[dict]:
    """The incidents to list: each canary incident whose key has a detection incident is
    merged into it (listed in its ``canaries``, critical, kept for its own page); every incident
    gets ``severity`` (damage and confidence), ``detection_severity`` (the stored one),
    ``margin`` and ``action``. Most severe first, then highest fidelity, then score."""
    canaries = {i["subject"]: i for i in incidents if i.get("kind") == "canary"}
    listed, merged = [], set()
    for incident in incidents:
        if incident.get("kind") == "canary":
            continue
        hits = [canaries[m] for m in incident.get("members") or [] if m in canaries]
        merged.update(h["subject"] for h in hits)
        listed.append({**incident, "canaries": hits})
    for subject, incident in canaries.items():
        incident["canaries"] = []
        if subject not in merged:
            listed.append(incident)
        else:
            incident["detection_severity"] = incident.get("severity")
            incident["severity"] = "critical"
    for incident in listed:
        damage = incident.get("damage") or {}
        ci = damage.get("ci") or [None, None]
        canary = bool(incident["canaries"]) or incident.get("kind") == "canary"
        level = severity(ci[0], incident.get("score"), threshold, canary)
        incident["detection_severity"] = incident.get("severity")
        incident["severity"] = level
        incident["margin"] = margin(incident.get("score"), threshold)
        incident["action"] = recommended_action(level, damage, canary)
    listed.sort(
        key=lambda i: (
            SEVERITIES.index(i["severity"]),
            -((i.get("damage") or {}).get("fidelity") or 0.0),
            -(i.get("score") or 0.0),
            str(i["incident_id"]),
        )
    )
    return listed


def worst_copy(incidents: list[dict]) -> dict | None:
    """The incident whose copy reached the highest fidelity, when any damage was estimated."""
    with_damage = [i for i in incidents if (i.get("damage") or {}).get("fidelity") is not None]
    return max(with_damage, key=lambda i: i["damage"]["fidelity"], default=None)
