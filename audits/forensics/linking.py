"""Sybil linking: which flagged keys behave as one client. Two keys are linked by a shared
source address or /24 (:func:`audits.scoring.subnet24`, the /24 rule's own), activity in the
same hours, similar query distributions and complementary coverage (:func:`pair_evidence`,
:func:`linked`); groups are the connected components (:func:`link_groups`). Each key's profile
comes from its own events, read a batch of whole keys at a time."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from audits.event_source import BATCH_EVENTS, EventSource, as_source
from audits.features import feature_matrix
from audits.scoring import subnet24

SCALE_SAMPLE_ROWS = 20_000  # events read for the feature scale when none is given


@dataclass
class _Profile:
    ips: set
    subnets: set
    hours: set
    days: set
    mean: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    n: int


def _profile(events: pl.DataFrame, scale: np.ndarray) -> _Profile:
    """One key's profile from its own events."""
    X = feature_matrix(events["features"]) / scale
    ips = events.select(pl.col("source_ip").drop_nulls().unique())
    return _Profile(
        ips=set(ips["source_ip"].to_list()),
        subnets=set(ips.select(subnet24(pl.col("source_ip"))).to_series().drop_nulls().to_list()),
        hours=set(events["ts"].dt.truncate("1h").unique().to_list()),
        days=set(events["day"].unique().to_list()),
        mean=np.median(X, axis=0),
        q_lo=np.quantile(X, 0.1, axis=0),
        q_hi=np.quantile(X, 0.9, axis=0),
        n=len(X),
    )


def _profiles(
    source: EventSource, users: Iterable[str], scale: np.ndarray, max_events: int
) -> dict[str, _Profile]:
    """The profile of each of ``users`` with events, reading a batch of whole users at a time."""
    out: dict[str, _Profile] = {}
    for batch in source.batches(users, max_events=max_events):
        for (uid,), part in batch.group_by("user_id"):
            out[uid] = _profile(part, scale)
    return out


def feature_scale(events: pl.DataFrame | EventSource, rows: int = SCALE_SAMPLE_ROWS) -> np.ndarray:
    """Each feature's standard deviation over a seeded sample of ``rows`` events."""
    sample = as_source(events).sample(rows, seed=0)
    if sample.height == 0:
        return np.ones(1)
    return feature_matrix(sample["features"]).std(axis=0)


def pair_evidence(a: _Profile, b: _Profile) -> dict[str, float]:
    """How strongly two keys look like one client, each in [0, 1]: network (shared address 1,
    shared /24 0.5), co-activity (Jaccard of active hours), distribution similarity (median
    over features of the location gap in reference units), complementary coverage (the
    strongest one-feature split of otherwise overlapping ranges)."""
    network = 1.0 if a.ips & b.ips else 0.5 if a.subnets & b.subnets else 0.0
    union = len(a.hours | b.hours)
    coactive = len(a.hours & b.hours) / union if union else 0.0
    gap = np.abs(a.mean - b.mean)
    similar = float(math.exp(-2.0 * float(np.median(gap))))
    lo, hi = np.maximum(a.q_lo, b.q_lo), np.minimum(a.q_hi, b.q_hi)
    width = np.maximum(np.minimum(a.q_hi - a.q_lo, b.q_hi - b.q_lo), 1e-9)
    overlap = np.clip((hi - lo) / width, 0.0, 1.0)
    complementary = float(1.0 - overlap.min()) * float(np.median(overlap))
    return {
        "network": network,
        "coactive": coactive,
        "similar": similar,
        "complementary": complementary,
    }


def linked(e: Mapping[str, float], *, same_day: bool) -> bool:
    """The linking rule: a shared address; or a shared /24, a common day and a behavioural
    match (co-activity or similar distribution); or, without any network link, all three
    behavioural signals together (co-active, similar, complementary)."""
    behaviour = (e["coactive"] + e["similar"] + e["complementary"]) / 3.0
    if e["network"] >= 1.0:
        return True
    if e["network"] >= 0.5:
        return same_day and (e["coactive"] >= 0.3 or e["similar"] >= 0.6)
    return (
        e["coactive"] >= 0.5
        and e["similar"] >= 0.6
        and e["complementary"] >= 0.6
        and behaviour >= 0.6
    )


def link_groups(
    events: pl.DataFrame | EventSource,
    suspects: Iterable[str],
    *,
    existing: Mapping[str, str | None] | None = None,
    scale: np.ndarray | None = None,
    max_events: int = BATCH_EVENTS,
) -> dict[str, str]:
    """``{user_id: group_id}`` for the ``suspects`` that belong to a group of two or more
    linked keys (connected components of :func:`linked` pairs). A component that is exactly
    one of the ``existing`` groups (``{user_id: group_id}`` of every user, e.g. the /24 rule's)
    keeps that id; any other gets ``link:<hash of its members>``. ``events`` is a frame or an
    event source: each suspect's profile comes from its own events, read a batch of whole
    suspects (about ``max_events`` events) at a time; ``scale`` (per-feature sd) defaults to a
    sample's (:func:`feature_scale`)."""
    users = sorted(set(suspects))
    if len(users) < 2:
        return {}
    source = as_source(events)
    scale = feature_scale(source) if scale is None else np.asarray(scale, dtype=np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    prof = _profiles(source, users, scale, max_events)
    users = [u for u in users if u in prof]
    parent = {u: u for u in users}

    def find(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for i, a in enumerate(users):
        for b in users[i + 1 :]:
            pa, pb = prof[a], prof[b]
            e = pair_evidence(pa, pb)
            if linked(e, same_day=bool(pa.days & pb.days)):
                parent[find(a)] = find(b)
    components: dict[str, list[str]] = {}
    for u in users:
        components.setdefault(find(u), []).append(u)
    existing = existing or {}
    members_of: dict[str, set[str]] = {}
    for uid, gid in existing.items():
        if gid:
            members_of.setdefault(gid, set()).add(uid)
    out: dict[str, str] = {}
    for members in components.values():
        if len(members) < 2:
            continue
        ids = {existing.get(m) for m in members}
        gid = next(iter(ids)) if len(ids) == 1 else None
        if gid is None or members_of.get(gid) != set(members):
            digest = hashlib.sha256(",".join(sorted(members)).encode()).hexdigest()[:12]
            gid = f"link:{digest}"
        for m in members:
            out[m] = gid
    return out
