"""``simulate``: a served model, its users' traffic and the archive the traffic leaves behind,
with the ground truth (who attacked, how much they obtained, what ingest must count).

Everything derives from one seed through independent child streams, so the same seed gives
the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from audits.errors import InputError
from audits.simulation import docs as docs_mod
from audits.simulation import roster as roster_mod
from audits.simulation.attacks import ATTACKS, sybil_group
from audits.simulation.faults import DayFiles, FaultInjector, Tally, cut_gzip
from audits.simulation.fidelity import surrogate_fidelity
from audits.simulation.personas import PERSONAS
from audits.simulation.population import (
    N_CLASSES,
    dump_model_bytes,
    feature_decimals,
    make_population,
    round_features,
    train_served_model,
)
from audits.simulation.roster import Roster
from audits.simulation.world import Stream, World
from audits.simulation.writer import (
    Events,
    LineFormatter,
    compress,
    day_of,
    day_text,
    event_ids,
    split_parts,
)

DEFAULT_START = "2026-11-01"
MAX_DAYS = 366
MAX_USERS = 100_000
OUTPUTS = (
    "logs",
    "model.skops",
    "train.parquet",
    "holdout.parquet",
    "reference.parquet",
    "truth.json",
    docs_mod.REGISTRY_NAME,  # the canaries planted in the simulated API's sample data
    "sagemaker",  # the same traffic in serving-stack formats (simulate --formats)
    "gateway",
    "kserve",
)
_TRAIN, _HOLDOUT, _REFERENCE = 16_000, 8_000, 8_000
_FIDELITY_ROWS = 4_000
_PREDICT_CHUNK = 1 << 18

Progress = Callable[[str], None]


def simulate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    days: int = 3,
    users: int = 300,
    faults: bool = False,
    start: str | dt.date | None = None,
    progress: Progress | None = None,
) -> dict:
    """Write a simulated archive, the served model and its data into ``out_dir``; return the
    truth (also written to ``truth.json``)."""
    say = progress or (lambda _msg: None)
    first = _check_arguments(seed, days, users, start)
    out = _prepare_out_dir(Path(out_dir))
    with _one_thread():
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
        world, holdout = _served_model(out, rngs[0], seed, days, say)
        roster = roster_mod.build(users, rngs[1])
        say(f"generating traffic of {users} users over {days} days")
        streams = _traffic(world, roster, rngs[2])
        docs = docs_mod.plant(world, roster, streams, rngs[6])
        (out / docs_mod.REGISTRY_NAME).write_text(docs.registry())
        events = _assemble(world, streams, first, rngs[3], say)
        expected = _write_archive(out, events, roster, faults, seed, rngs[4], say)
        say("measuring each attacker's surrogate fidelity")
        truth = _truth(seed, first, world, roster, events, holdout, expected)
        truth["canaries"] = _canary_truth(docs, roster, events)
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def _one_thread():
    """Limit BLAS/OpenMP to one thread: the many small fits here only contend for cores.

    threadpoolctl limits the libraries loaded when it is entered, so load them first.
    """
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.neural_network  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


# ---------------------------------------------------------------- arguments and output folder


def _check_arguments(seed: int, days: int, users: int, start: str | dt.date | None) -> dt.date:
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    if not 1 <= days <= MAX_DAYS:
        raise InputError(f"--days must be between 1 and {MAX_DAYS}, got {days}")
    if not roster_mod.MIN_USERS <= users <= MAX_USERS:
        raise InputError(
            f"--users must be between {roster_mod.MIN_USERS} and {MAX_USERS}, got {users}"
        )
    if isinstance(start, dt.date):
        return start
    try:
        return dt.date.fromisoformat(start or DEFAULT_START)
    except ValueError:
        raise InputError(f"--start must be a date YYYY-MM-DD, got {start!r}") from None


def _prepare_out_dir(out: Path) -> Path:
    """An empty folder, or one that holds only a previous simulation's outputs (replaced)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        if foreign:
            raise InputError(
                f"--out {out} is not empty and is not a previous simulation "
                f"(it holds {foreign[0]!r}); choose an empty or new folder"
            )
        for name in ("truth.json", *OUTPUTS):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------- the served model


def _served_model(out: Path, rng: np.random.Generator, seed: int, days: int, say: Progress):
    """Population, training data, holdout, reference sample, and the trained model."""
    say("training the served model")
    population = make_population(rng)
    X, y, _ = population.sample(rng, _TRAIN + _HOLDOUT + _REFERENCE)
    decimals = feature_decimals(X)
    X = round_features(X, decimals)
    train, holdout = slice(0, _TRAIN), slice(_TRAIN, _TRAIN + _HOLDOUT)
    reference = X[_TRAIN + _HOLDOUT :]
    model = train_served_model(X[train], y[train], seed)
    _write_table(out / "train.parquet", X[train], y[train])
    _write_table(out / "holdout.parquet", X[holdout], y[holdout])
    _write_table(out / "reference.parquet", reference, None)
    (out / "model.skops").write_bytes(dump_model_bytes(model))
    world = World(
        population,
        model,
        decimals,
        lo=reference.min(axis=0),
        hi=reference.max(axis=0),
        mean=reference.mean(axis=0),
        std=reference.std(axis=0),
        days=days,
    )
    return world, X[holdout]


def _write_table(path: Path, X: np.ndarray, y: np.ndarray | None) -> None:
    columns = {f"f{j}": X[:, j] for j in range(X.shape[1])}
    if y is not None:
        columns["label"] = y.astype(np.int64)
    pl.DataFrame(columns).write_parquet(path)


# ---------------------------------------------------------------- traffic


def _traffic(world: World, roster: Roster, rng: np.random.Generator) -> list[Stream]:
    """One stream per member, each kind generated from its own child seed."""
    streams: list[Stream | None] = [None] * len(roster.members)
    kinds = sorted({(m.kind, m.group or "") for m in roster.members})
    for (kind, group), kind_rng in zip(kinds, rng.spawn(len(kinds)), strict=True):
        idx = [
            i for i, m in enumerate(roster.members) if m.kind == kind and (m.group or "") == group
        ]
        tzs = [roster.members[i].tz_hours for i in idx]
        if kind == "sybil":
            made = sybil_group(world, kind_rng, len(idx))
        else:
            made = {**PERSONAS, **ATTACKS}[kind](world, kind_rng, tzs)
        for i, stream in zip(idx, made, strict=True):
            streams[i] = stream
    return streams  # type: ignore[return-value]


def _assemble(
    world: World, streams: list[Stream], first: dt.date, rng: np.random.Generator, say: Progress
) -> Events:
    """All streams as one time-ordered table of events, answered by the served model."""
    t0_ms = int(dt.datetime(first.year, first.month, first.day, tzinfo=dt.UTC).timestamp()) * 1000
    user = np.concatenate([np.full(len(s.t), i, dtype=np.int32) for i, s in enumerate(streams)])
    t = np.concatenate([s.t for s in streams])
    order = np.lexsort((np.arange(len(t)), user, np.floor(t * 1000)))
    x = np.concatenate([s.x for s in streams])[order]
    say(f"answering {len(t):,} queries with the served model")
    proba = (
        np.concatenate(
            [world.proba(x[i : i + _PREDICT_CHUNK]) for i in range(0, len(x), _PREDICT_CHUNK)]
        )
        if len(x)
        else np.zeros((0, N_CLASSES))
    )
    latency = np.round(rng.lognormal(np.log(18.0), 0.35, len(t)), 1)
    return Events(
        user=user[order],
        ms=t0_ms + np.floor(t[order] * 1000).astype(np.int64),
        x=x,
        session=np.concatenate([s.session for s in streams])[order].astype(np.int64),
        proba=proba,
        latency=latency,
    )


# ---------------------------------------------------------------- the archive


def _write_archive(
    out: Path,
    events: Events,
    roster: Roster,
    faults: bool,
    seed: int,
    rng: np.random.Generator,
    say: Progress,
) -> dict:
    """``logs/dt=…/part-….jsonl.gz`` for every day, faults injected when asked; returns the
    counts ingest must report."""
    salt = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
    formatter = LineFormatter(roster.members, salt & 0xFFFFFFFF)
    next_fault_id = iter(range(len(events), 1 << 62))
    injector = FaultInjector(rng, lambda: str(event_ids(next(next_fault_id), 1, salt)[0]))
    tally = Tally(copied=injector.copied)
    day_numbers = day_of(events.ms)
    days = np.unique(day_numbers)
    bounds = np.searchsorted(day_numbers, days, side="left").tolist() + [len(events)]
    cut_day = days[len(days) // 2] if faults else None
    for k, day in enumerate(days):
        rows = slice(bounds[k], bounds[k + 1])
        folder = out / "logs" / f"dt={day_text(day)}"
        folder.mkdir(parents=True, exist_ok=True)
        day_ev = events.take(rows)
        ids = event_ids(rows.start, len(day_ev), salt)
        parts = split_parts(len(day_ev))
        files = DayFiles([], [])
        for part in parts:
            files.lines.append(formatter.lines(day_ev.take(part), ids[part]))
            files.tags.append(ids[part].tolist() if faults else [])
        if faults:
            injector.inject(files, last_day=k == len(days) - 1)
        for p, lines in enumerate(files.lines):
            data = compress(lines)
            if day == cut_day and p == len(parts) // 2:
                data, readable, partial = cut_gzip(data, rng)
                tally.add_tagged(files.tags[p][:readable], partial)
            elif faults:
                tally.add_tagged(files.tags[p])
            else:
                tally.add_clean(len(lines))
            (folder / f"part-{p:05d}.jsonl.gz").write_bytes(data)
        say(f"wrote {folder.relative_to(out)}: {len(day_ev):,} events in {len(parts)} files")
    return tally.summary()


# ---------------------------------------------------------------- truth


def _canary_truth(docs: docs_mod.Docs, roster: Roster, events: Events) -> dict:
    """Who sent a canary (from what was sent, not from the audit's matcher)."""
    ids = [m.user_id for m in roster.members]
    order = np.argsort(events.user, kind="stable")
    bounds = np.searchsorted(events.user[order], np.arange(len(ids) + 1))
    user_x = {ids[i]: events.x[order[bounds[i] : bounds[i + 1]]] for i in range(len(ids))}
    out = docs_mod.truth(docs, user_x, docs_mod.REGISTRY_NAME)
    out["scraper"] = None if docs.scraper is None else ids[docs.scraper]
    out["docs_tester"] = None if docs.tester is None else ids[docs.tester]
    return out


def _truth(
    seed: int,
    first: dt.date,
    world: World,
    roster: Roster,
    events: Events,
    holdout: np.ndarray,
    expected: dict,
) -> dict:
    served = world.label(holdout[:_FIDELITY_ROWS])
    counts = np.bincount(events.user, minlength=len(roster.members))
    labels = events.proba.argmax(axis=1)

    def fidelity(members: list[int]) -> float:
        rows = np.isin(events.user, members)
        return surrogate_fidelity(
            events.x[rows], labels[rows], holdout[:_FIDELITY_ROWS], served, seed
        )

    users = []
    for i, m in enumerate(roster.members):
        attacker = m.role == "attacker"
        users.append(
            {
                "user_id": m.user_id,
                "role": m.role,
                "kind": m.kind,
                "group": m.group,
                "n_events": int(counts[i]),
                "fidelity": fidelity([i]) if attacker else None,
            }
        )
    groups = []
    for group_id, subnet in roster.subnets.items():  # in group order
        members = [i for i, m in enumerate(roster.members) if m.group == group_id]
        groups.append(
            {
                "group_id": group_id,
                "members": sorted(roster.members[i].user_id for i in members),
                "subnet": subnet,
                "fidelity": fidelity(members),
            }
        )
    return {
        "seed": seed,
        "days": [(first + dt.timedelta(days=d)).isoformat() for d in range(world.days)],
        "input_width": world.width,
        "classes": list(range(N_CLASSES)),
        "users": sorted(users, key=lambda u: u["user_id"]),
        "groups": groups,
        "expected_ingest": expected,
    }
