"""Benign users: ordinary clients, and the hard negatives that look alarming but are not.

Each generator takes the world, a random generator and the users' time-zone offsets (hours)
and returns one :class:`Stream` per user.
"""

from __future__ import annotations

import numpy as np

from audits.simulation.population import LATENT
from audits.simulation.world import (
    DAY,
    Stream,
    World,
    human_gaps,
    local_start,
    loguniform_int,
    machine_gaps,
)


def _slice(world: World, rng: np.random.Generator) -> tuple[int, np.ndarray, float]:
    """A user's own slice of the population: a cluster, an offset inside it, a spread."""
    pop = world.population
    cluster = int(rng.choice(len(pop.weights), p=pop.weights))
    return cluster, rng.normal(0.0, 0.35, LATENT), float(rng.uniform(0.35, 0.8))


def _rows(world: World, rng: np.random.Generator, where: tuple, n: int) -> np.ndarray:
    cluster, offset, spread = where
    return world.round(world.population.slice_sample(rng, cluster, n, offset, spread))


def regular(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """Ordinary clients: heavy-tailed volumes, daytime sessions in their own time zone, rows
    from their own slice, and re-scoring of rows they sent on earlier days."""
    return [_regular_one(world, rng, tz) for tz in tzs]


def _regular_one(world: World, rng: np.random.Generator, tz: float) -> Stream:
    where = _slice(world, rng)
    rate = min(rng.lognormal(np.log(30.0), 1.2), 2500.0)
    p_repeat = rng.uniform(0.05, 0.35)
    active = rng.random(world.days) < rng.uniform(0.5, 1.0)
    active[rng.integers(world.days)] = True
    parts, history = [], []
    for day in np.flatnonzero(active):
        n = max(1, int(rng.poisson(rate * rng.lognormal(0.0, 0.3))))
        x = _rows(world, rng, where, n)
        if history:
            again = rng.random(n) < p_repeat
            earlier = np.concatenate(history)
            x[again] = earlier[rng.integers(len(earlier), size=int(again.sum()))]
        history.append(x)
        n_sessions = 1 + min(int(rng.poisson(n / 40)), 7)
        sizes = rng.multinomial(n, np.full(n_sessions, 1.0 / n_sessions))
        parts += _sessions(world, rng, day, tz, x, sizes, first=len(parts))
    return Stream.join(parts, world.width).clipped(world.span)


def _sessions(world, rng, day, tz, x, sizes, *, first: int, median_gap: float = 10.0):
    """Split ``x`` into daytime sessions of the given sizes on ``day``."""
    parts, at = [], 0
    for k, size in enumerate(sizes[sizes > 0]):
        t = local_start(rng, day, tz) + human_gaps(rng, int(size), median_gap)
        parts.append(Stream(t, x[at : at + size], np.full(size, first + k)))
        at += size
    return parts


def batch_rescoring(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """Nightly jobs: the same book of rows every night, at a machine-regular pace."""
    return [_batch_one(world, rng, tz) for tz in tzs]


def _batch_one(world: World, rng: np.random.Generator, tz: float) -> Stream:
    size = loguniform_int(rng, 1500, 6000)
    book = np.concatenate([_rows(world, rng, _slice(world, rng), size // 2) for _ in range(2)])
    start = ((rng.uniform(0.5, 4.0) - tz) * 3600.0) % DAY
    interval = 1.0 / rng.uniform(8.0, 25.0)
    parts = []
    for day in range(world.days):
        churn = rng.random(len(book)) < 0.02  # a few accounts opened or closed each day
        book[churn] = _rows(world, rng, _slice(world, rng), int(churn.sum()))
        t = day * DAY + start + rng.normal(0.0, 20.0) + machine_gaps(rng, len(book), interval, 0.01)
        parts.append(Stream(t, book.copy(), np.full(len(book), day)))
    return Stream.join(parts, world.width).clipped(world.span)


def whatif_analyst(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """Analysts who take one record and sweep one feature over a grid, then another."""
    return [_whatif_one(world, rng, tz) for tz in tzs]


def _whatif_one(world: World, rng: np.random.Generator, tz: float) -> Stream:
    where = _slice(world, rng)
    base = _rows(world, rng, where, 1)[0]
    parts = []
    for day in range(world.days):
        if rng.random() > 0.85 and parts:
            continue
        for _ in range(rng.integers(1, 4)):
            if rng.random() < 0.5:
                base = _rows(world, rng, where, 1)[0]
            x = np.concatenate([_sweep(world, rng, base) for _ in range(rng.integers(1, 4))])
            t = local_start(rng, day, tz) + human_gaps(rng, len(x), 3.0, 0.5)
            parts.append(Stream(t, x, np.full(len(x), len(parts))))
    return Stream.join(parts, world.width).clipped(world.span)


def _sweep(world: World, rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    j = rng.integers(world.width)
    grid = np.linspace(world.lo[j], world.hi[j], rng.integers(12, 41))
    x = np.repeat(base[None, :], len(grid), axis=0)
    x[:, j] = grid
    return world.round(x)


def integration_test(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """CI checks: the same canned requests, in the same order, every hour."""
    return [_integration_one(world, rng) for _ in tzs]


def _integration_one(world: World, rng: np.random.Generator) -> Stream:
    canned = world.natural(rng, int(rng.integers(4, 16)))
    minute = rng.uniform(0.0, 3500.0)
    hours = int(world.span // 3600)
    starts = np.arange(hours) * 3600.0 + minute + rng.normal(0.0, 1.5, hours)
    offsets = machine_gaps(rng, len(canned), 0.15, 0.05)
    t = (starts[:, None] + offsets[None, :]).ravel()
    x = np.tile(canned, (hours, 1))
    return Stream(t, x, np.repeat(np.arange(hours), len(canned))).clipped(world.span)


PERSONAS = {
    "regular": regular,
    "batch_rescoring": batch_rescoring,
    "whatif_analyst": whatif_analyst,
    "integration_test": integration_test,
}
