"""``simulate --domain NAME``: the archive of one domain's API, in the same layout as the
default simulator's (logs, model, train/holdout/reference tables, truth)."""

from __future__ import annotations

import datetime as dt
import json
import zlib
from pathlib import Path

import numpy as np

from audits.errors import InputError
from audits.simulation import simulator as base
from audits.simulation.domains import people
from audits.simulation.domains.clients import CLIENTS
from audits.simulation.domains.extraction import ATTACKERS, sybil
from audits.simulation.domains.service import Service
from audits.simulation.domains.tasks import TASKS, Task, train
from audits.simulation.fidelity import surrogate_fidelity
from audits.simulation.population import dump_model_bytes
from audits.simulation.roster import Roster
from audits.simulation.world import Stream

DOMAINS = tuple(TASKS)
_TRAIN, _HOLDOUT, _REFERENCE = 6_000, 3_000, 3_000
_FIDELITY_ROWS = 1_500


def simulate_domain(
    out_dir: str | Path,
    domain: str,
    *,
    seed: int = 0,
    days: int = 3,
    users: int = 300,
    faults: bool = False,
    start: str | dt.date | None = None,
    fidelity: bool = True,
    progress: base.Progress | None = None,
) -> dict:
    """Write the archive of ``domain`` into ``out_dir``; return the truth (also in truth.json).
    ``fidelity=False`` skips the per-attacker surrogate fits (the truth then holds None)."""
    if domain not in TASKS:
        raise InputError(f"--domain: unknown {domain!r} (choose from default, {', '.join(TASKS)})")
    say = progress or (lambda _msg: None)
    first = base._check_arguments(seed, days, users, start)
    out = base._prepare_out_dir(Path(out_dir))
    streams_seed = np.random.SeedSequence([seed, zlib.crc32(domain.encode())])
    with base._one_thread():
        rngs = [np.random.default_rng(s) for s in streams_seed.spawn(6)]
        say(f"building the {domain} task and training its served model")
        service, holdout = _served_model(out, TASKS[domain](rngs[0]), rngs[1], seed, days)
        roster = people.build(users, rngs[2])
        say(f"generating traffic of {users} users over {days} days")
        streams = _traffic(service, roster, rngs[3])
        events = base._assemble(service, streams, first, rngs[4], say)
        expected = base._write_archive(out, events, roster, faults, seed, rngs[5], say)
        truth = _truth(domain, seed, first, service, roster, events, expected)
        if fidelity:
            say("measuring each attacker's surrogate fidelity")
            _add_fidelity(truth, service, roster, events, holdout, seed)
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def _served_model(out: Path, task: Task, rng: np.random.Generator, seed: int, days: int):
    X, y = task.natural(rng, _TRAIN + _HOLDOUT + _REFERENCE)
    train_rows, holdout = slice(0, _TRAIN), slice(_TRAIN, _TRAIN + _HOLDOUT)
    reference = X[_TRAIN + _HOLDOUT :]
    model = train(task, X[train_rows], y[train_rows], seed)
    base._write_table(out / "train.parquet", X[train_rows], y[train_rows])
    base._write_table(out / "holdout.parquet", X[holdout], y[holdout])
    base._write_table(out / "reference.parquet", reference, None)
    (out / "model.skops").write_bytes(dump_model_bytes(model))
    service = Service(
        task,
        model,
        days,
        mean=reference.mean(axis=0),
        std=reference.std(axis=0),
        known_lo=np.quantile(reference, 0.005, axis=0),
        known_hi=np.quantile(reference, 0.995, axis=0),
    )
    return service, X[holdout]


def _traffic(service: Service, roster: Roster, rng: np.random.Generator) -> list[Stream]:
    """One stream per member, each from its own child generator; Sybil keys from one job."""
    members = roster.members
    child = rng.spawn(len(members) + 1)
    streams: list[Stream | None] = [None] * len(members)
    for i, member in enumerate(members):
        if member.kind != "sybil":
            make = CLIENTS.get(member.kind) or ATTACKERS[member.kind]
            streams[i] = make(service, child[i], member.tz_hours)
    group = [i for i, m in enumerate(members) if m.kind == "sybil"]
    for i, s in zip(group, sybil(service, child[-1], len(group)), strict=True):
        streams[i] = s
    return streams  # type: ignore[return-value]


def _truth(
    domain: str,
    seed: int,
    first: dt.date,
    service: Service,
    roster: Roster,
    events,
    expected: dict,
) -> dict:
    counts = np.bincount(events.user, minlength=len(roster.members))
    users = [
        {
            "user_id": m.user_id,
            "role": m.role,
            "kind": m.kind,
            "group": m.group,
            "n_events": int(counts[i]),
            "fidelity": None,
        }
        for i, m in enumerate(roster.members)
        if counts[i]  # a key whose every request fell outside the window never used the API
    ]
    groups = [
        {
            "group_id": group,
            "members": sorted(u["user_id"] for u in users if u["group"] == group),
            "subnet": subnet,
            "fidelity": None,
        }
        for group, subnet in roster.subnets.items()
    ]
    return {
        "seed": seed,
        "domain": domain,
        "served_model": service.task.model_kind,
        "days": [(first + dt.timedelta(days=d)).isoformat() for d in range(service.days)],
        "input_width": service.width,
        "classes": list(range(service.task.n_classes)),
        "users": sorted(users, key=lambda u: u["user_id"]),
        "groups": groups,
        "expected_ingest": expected,
    }


def _add_fidelity(truth, service, roster, events, holdout, seed) -> None:
    rows_for = {m.user_id: i for i, m in enumerate(roster.members)}
    check = holdout[:_FIDELITY_ROWS]
    served = service.label(check)
    labels = events.proba.argmax(axis=1)

    def measure(members: list[int]) -> float:
        rows = np.isin(events.user, members)
        return surrogate_fidelity(events.x[rows], labels[rows], check, served, seed)

    for user in truth["users"]:
        if user["role"] == "attacker":
            user["fidelity"] = measure([rows_for[user["user_id"]]])
    for group in truth["groups"]:
        group["fidelity"] = measure([rows_for[u] for u in group["members"]])
