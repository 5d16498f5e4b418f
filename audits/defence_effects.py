"""What the defence replay says each defence would have done to an audit's incidents: mean
fidelity without and with it and its legitimate cost, the defence to recommend, and the
controls the logs show in place."""

from __future__ import annotations

MAX_LEGIT_SHARE = 0.05  # a recommended rate limit blocks at most this share of legitimate users
MIN_CUT = 0.02  # a smaller mean fidelity cut means no replayed defence helps


def pct(value: float | None) -> str:
    """``value`` as a percentage with one decimal, ``–`` when not measured."""
    return "–" if value is None else f"{value:.1%}"


def defence_effects(damages: list[dict]) -> dict[str, dict]:
    """Mean over the subjects' replays, per defence: fidelity without and with it, and the
    legitimate cost. Keys: ``rate_limits`` (the combined limits, else the only one),
    ``top1_labels``, ``rounding``, and ``randomisation`` / ``dedup`` when the replay has them."""
    replays = [d["replay"] for d in damages if isinstance(d.get("replay"), dict)]
    if not replays:
        return {}

    out: dict[str, dict] = {}
    limits = []
    for r in replays:
        scenarios = r.get("rate_limit") or {}
        chosen = scenarios.get("combined") or next(iter(scenarios.values()), None)
        if chosen:
            limits.append((r, chosen))
    if limits:
        first = limits[0][1]
        out["rate_limits"] = {
            "limits": ", ".join(
                f"{v}/{k.removeprefix('per_')}" for k, v in first.get("limits", {}).items()
            ),
            "before": _mean(r["fidelity"] for r, _ in limits),
            "after": _mean(c["fidelity"] for _, c in limits),
            "blocked_share": _mean(c["blocked"] / max(1, r["queries"]) for r, c in limits),
            "legit_blocked": max(c["legit_blocked"] for _, c in limits),
            "legit_users_affected": max(c["legit_users_affected"] for _, c in limits),
            "legit_users": max(c["legit_users"] for _, c in limits),
        }
    top1 = [r["top1"] for r in replays if r.get("top1")]
    if top1:
        out["top1_labels"] = {
            **_output_effect(top1),
            "legit_users_affected": max(t["legit_users_affected"] for t in top1),
        }
    rounding = [r["rounding"] for r in replays if r.get("rounding")]
    if rounding:
        out["rounding"] = {"decimals": rounding[0]["decimals"], **_output_effect(rounding)}
    noisy = [r["randomisation"] for r in replays if r.get("randomisation")]
    if noisy:
        out["randomisation"] = {
            "scale": noisy[0].get("scale"),
            **_output_effect(noisy),
            "legit_labels_changed": max(t.get("legit_labels_changed", 0) for t in noisy),
        }
    dedup = [(r, r["dedup"]) for r in replays if r.get("dedup")]
    if dedup:
        out["dedup"] = {
            "before": _mean(r["fidelity"] for r, _ in dedup),
            "after": _mean(t.get("fidelity") for _, t in dedup),
            "duplicate_share": _mean(
                t.get("duplicates", 0) / max(1, r["queries"]) for r, t in dedup
            ),
            "legit_affected": max(t.get("legit_queries_affected", 0) for _, t in dedup),
        }
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _output_effect(replays: list[dict]) -> dict:
    """An output defence's mean fidelity without and with it, and its largest legitimate cost."""
    return {
        "before": _mean(t.get("fidelity_without") for t in replays),
        "after": _mean(t.get("fidelity") for t in replays),
        "legit_changed": max(t.get("legit_responses_changed", 0) for t in replays),
    }


def effect_text(name: str, e: dict | None, subjects: int) -> str:
    if not e or e.get("before") is None:
        return "not measured"
    cut = f"their fidelity {pct(e['before'])} → {pct(e['after'])}"
    of = f" (mean of {subjects} incident{'s' if subjects != 1 else ''})"
    if name == "rate_limits":
        return (
            f"{e['limits']}: blocks {pct(e['blocked_share'])} of their queries, {cut}{of}; "
            f"blocks {e['legit_blocked']:,} legitimate queries of {e['legit_users_affected']} "
            f"of {e['legit_users']} other keys"
        )
    if name == "top1_labels":
        return (
            f"their fidelity trained on probabilities {pct(e['before'])} → on labels only "
            f"{pct(e['after'])}{of}; {e['legit_changed']:,} legitimate responses lose "
            "their probabilities"
        )
    if name == "randomisation":
        return (
            f"noise scale {e['scale']}: {cut}{of}; {e['legit_changed']:,} legitimate responses "
            f"changed, {e['legit_labels_changed']:,} labels changed"
        )
    if name == "dedup":
        return (
            f"{pct(e['duplicate_share'])} of their queries are near-duplicates: {cut}{of}; "
            f"{e['legit_affected']:,} legitimate queries answered from a neighbour"
        )
    return (
        f"to {e['decimals']} decimal(s): {cut}{of}; "
        f"{e['legit_changed']:,} legitimate responses changed"
    )


def recommend(effects: dict[str, dict]) -> str | None:
    """The replayed defence that cuts fidelity most within the legitimate-cost bound, as text;
    ``None`` when nothing was replayed."""
    if not effects:
        return None
    options = []
    for name, e in effects.items():
        if e.get("before") is None or e.get("after") is None:
            continue
        if name == "rate_limits":
            share = e["legit_users_affected"] / max(1, e["legit_users"])
            if share > MAX_LEGIT_SHARE:
                continue
        options.append((e["before"] - e["after"], name, e))
    if not options:
        return None
    cut, name, e = max(options, key=lambda o: (o[0], o[1]))
    if cut < MIN_CUT:
        return (
            "no replayed defence cuts their fidelity by 2 points: revoke the keys found, keep "
            "detection running and plant canaries"
        )
    label = {
        "rate_limits": f"per-key rate limits ({e.get('limits', '')})",
        "top1_labels": "serve top-1 labels only",
        "rounding": f"round probabilities to {e.get('decimals')} decimal(s)",
        "randomisation": f"randomise probabilities (noise scale {e.get('scale')})",
        "dedup": "answer near-duplicate queries from a cache",
    }[name]
    return f"{label}: cuts their fidelity by {cut:.1%} ({pct(e['before'])} → {pct(e['after'])})"


def describe_controls(controls: dict) -> dict[str, str]:
    """What the logs show about each control, as text."""
    out = {}
    if controls.get("max_per_minute") is not None:
        out["rate_limits"] = (
            f"busiest key: {controls['max_per_minute']:,}/min, {controls['max_per_hour']:,}/h, "
            f"{controls['max_per_day']:,}/day (any per-key limit in place is above these)"
        )
    share = controls.get("probabilities_share")
    if share is not None:
        if share <= 0:
            out["output"] = "top-1 labels only (no probabilities logged)"
        else:
            decimals = controls.get("probability_decimals")
            places = f", {decimals} decimals" if decimals is not None else ""
            out["output"] = f"probabilities served on {share:.0%} of responses{places}"
    return out
