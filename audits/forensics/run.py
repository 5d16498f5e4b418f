"""One window's forensics, as the asset and ``benchmarks/forensics.py`` both run it: the
reference, the linked groups of the flagged keys, the legitimate users' defence costs (once),
then every subject (each flagged user, each linked group, each incident's keys) estimated in
a process pool, with the defence replay of every incident; consecutive subjects' events are
read a batch at a time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from audits.cores import default_workers
from audits.errors import InputError
from audits.event_source import BATCH_EVENTS, EventSource
from audits.forensics.damage import TRAIN_BUDGET, Damage
from audits.forensics.defences import DefenceSettings, LegitCosts, legit_costs
from audits.forensics.linking import link_groups
from audits.forensics.pool import SubjectTask, estimate_subjects
from audits.forensics.records import damage_figures
from audits.forensics.surrogates import as_labels
from audits.forensics.traffic import (
    REFERENCE_ROWS,
    Traffic,
    logged_reference,
    proba_columns,
    traffic,
)

Reference = tuple[np.ndarray, np.ndarray, str]
"""Reference inputs, the served model's answers on them and where they came from."""


@dataclass(frozen=True)
class ForensicsSettings:
    """The run's settings: the defences to replay (:class:`DefenceSettings`), the reference
    rows, the training budget per surrogate (0: every query), the worker processes (0: one per
    core, at most 4; 1: in-process) and the seed."""

    defences: DefenceSettings = field(default_factory=DefenceSettings.of)
    reference_rows: int = REFERENCE_ROWS
    train_budget: int = TRAIN_BUDGET
    workers: int = 0
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`InputError` on a setting out of range."""
        if self.train_budget < 0:
            raise InputError(f"train_budget must be 0 (no budget) or more, not {self.train_budget}")
        if self.workers < 0:
            raise InputError(f"workers must be 0 (one per core) or more, not {self.workers}")


@dataclass
class ForensicsResult:
    """The damage rows (one per subject, the ``damage`` table's columns), each flagged user's
    fidelity, the linked groups ``{user_id: group_id}``, each incident's ``(damage, replay)``
    and the seconds of each phase."""

    rows: list[dict]
    fidelity: dict[str, float]
    groups: dict[str, str]
    incident_damage: dict[str, tuple[Damage, dict]]
    seconds: dict[str, float] = field(default_factory=dict)


def _members_key(members: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(members))


def _incident_members(inc: dict) -> list[str]:
    return sorted(inc["members"] or [inc["subject"]])


def subjects_of(flagged, groups, incidents: pl.DataFrame) -> list[tuple[str, str, list[str]]]:
    """``(kind, subject, members)`` of every damage row: each flagged user, each linked group
    and each group incident's members not linked as one group."""
    subjects: list[tuple[str, str, list[str]]] = [("user", u, [u]) for u in sorted(flagged)]
    linked: dict[str, list[str]] = {}
    for uid, gid in groups.items():
        linked.setdefault(gid, []).append(uid)
    subjects += [("group", gid, sorted(m)) for gid, m in sorted(linked.items())]
    for inc in incidents.iter_rows(named=True):
        if inc["kind"] == "group" and inc["subject"] not in linked:
            subjects.append(("group", inc["subject"], _incident_members(inc)))
    seen: set[tuple[str, str]] = set()
    unique = []
    for kind, subject, members in subjects:
        if (kind, subject) not in seen:
            seen.add((kind, subject))
            unique.append((kind, subject, members))
    return unique


def _reference(source, flagged, settings: ForensicsSettings, given: Reference | None):
    X, y, kind = given or (
        *logged_reference(source, flagged, rows=settings.reference_rows, seed=settings.seed),
        "logged",
    )
    if len(y) == 0:
        raise InputError(
            "no reference inputs: give --reference and --model, or logs of "
            "unflagged users with predictions"
        )
    return X, as_labels(y), kind


def run_forensics(
    source: EventSource,
    scores: pl.DataFrame,
    flagged: Sequence[str],
    incidents: pl.DataFrame,
    settings: ForensicsSettings,
    reference: Reference | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> ForensicsResult:
    """The window's forensics from its events in ``source``: ``scores`` (``user_id``,
    ``group_id`` of every user), the ``flagged`` users, the ``incidents`` (``incident_id``,
    ``kind``, ``subject``, ``members``) and the ``reference`` (``None``: a sample of the
    unflagged users' logged traffic). Consecutive subjects (keys or groups' keys) are read a
    batch at a time and estimated one at a time, the legitimate users' defence costs once, a
    batch at a time."""
    settings.check()
    clock = _Clock()
    ref_X, ref_y, ref_kind = _reference(source, flagged, settings, reference)
    width, scale = ref_X.shape[1], ref_X.std(axis=0)
    columns = proba_columns(source)
    clock.lap("reference")
    existing = dict(zip(scores["user_id"].to_list(), scores["group_id"].to_list(), strict=True))
    groups = link_groups(source, flagged, existing=existing, scale=scale)
    clock.lap("link_groups")
    subjects = subjects_of(flagged, groups, incidents)
    incident_keys = {
        inc["incident_id"]: _members_key(_incident_members(inc))
        for inc in incidents.iter_rows(named=True)
    }
    defences = settings.defences.with_scale(scale)
    replay_keys = set(incident_keys.values())
    legit: LegitCosts | None = None
    if replay_keys:  # once per window: every incident's replay shares it
        legit = legit_costs(source, defences, width=width, exclude=flagged)
    clock.lap("legit_costs")
    task = SubjectTask(ref_X, ref_y, columns, settings.seed, settings.train_budget, defences, legit)
    keys = list(dict.fromkeys([*incident_keys.values(), *(_members_key(m) for *_, m in subjects)]))
    damages, replays = _estimate_all(source, task, keys, replay_keys, width, settings, log)
    clock.lap("subjects")
    rows = [
        _damage_row(kind, subject, members, damages, ref_kind)
        for kind, subject, members in subjects
    ]
    fidelity = {u: damages[(u,)].fidelity for u in flagged if (u,) in damages}
    incident_damage = {i: (damages[k], replays[k]) for i, k in incident_keys.items()}
    return ForensicsResult(rows, fidelity, groups, incident_damage, clock.seconds)


def subject_traffic(
    source: EventSource,
    keys: Sequence[tuple[str, ...]],
    width: int,
    max_events: int = BATCH_EVENTS,
) -> Iterator[tuple[tuple[str, ...], Traffic]]:
    """``(key, traffic)`` of each subject ``key`` (its members), in order: consecutive
    subjects' events read in one query of about ``max_events`` events (a larger subject alone),
    each subject's rows then taken from it, the same rows one query per subject would give."""
    counts = source.user_counts()
    batch: list[tuple[str, ...]] = []
    size = 0
    for key in keys:
        n = sum(counts.get(user, 0) for user in key)
        if batch and size + n > max_events:
            yield from _traffic_of_batch(source, batch, width)
            batch, size = [], 0
        batch.append(key)
        size += n
    if batch:
        yield from _traffic_of_batch(source, batch, width)


def _traffic_of_batch(source, batch, width):
    events = source.fetch(sorted({user for key in batch for user in key}))
    for key in batch:
        yield key, traffic(events.filter(pl.col("user_id").is_in(list(key))), width)


def _estimate_all(source, task, keys, replay_keys, width, settings, log):
    # a batch of subjects' events read at a time, while the workers estimate the ones before
    work = ((key, t, key in replay_keys) for key, t in subject_traffic(source, keys, width))
    workers = settings.workers or default_workers()
    damages: dict[tuple[str, ...], Damage] = {}
    replays: dict[tuple[str, ...], dict] = {}
    log(f"forensics: {len(keys)} subjects (keys and groups) on {workers} worker(s)")
    for number, (key, damage, replay) in enumerate(estimate_subjects(task, work, workers), 1):
        damages[key] = damage
        if replay is not None:
            replays[key] = replay
        who = key[0] if len(key) == 1 else f"group of {len(key)} keys"
        log(
            f"forensics: subject {number}/{len(keys)}: {who}: fidelity {damage.fidelity:.3f}"
            + (", defences replayed" if replay is not None else "")
        )
    return damages, replays


def _damage_row(kind, subject, members, damages, ref_kind) -> dict:
    d = damages[_members_key(members)]
    return {
        "subject": subject,
        "kind": kind,
        "members": members,
        **damage_figures(d),
        "reference": ref_kind,
    }


class _Clock:
    """Seconds per phase, each from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now
