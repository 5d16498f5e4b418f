"""Benign clients of a domain's API, whose volumes overlap the attackers':

* ``casual``: people with a few hundred requests (heavy-tailed), from their own segment;
* ``heavy``: an application backend relaying its own users: thousands of natural requests
  spread over the whole population, Poisson arrivals in business hours;
* ``batch_rescoring``: a nightly job re-sending its book through a batch endpoint;
* ``whatif_analyst``: one record, one column swept over its values, by hand;
* ``integration_test``: canned requests from CI on every deploy and on a schedule.

Each takes the service, a generator and a time zone and returns one stream.
"""

from __future__ import annotations

import numpy as np

from audits.simulation.domains.service import (
    DAY,
    HOUR,
    Service,
    batched,
    daytime,
    pieces,
    poisson,
    scripted,
    stream,
    typed,
)
from audits.simulation.domains.tasks import Rows
from audits.simulation.world import Stream


def segment(service: Service, rng: np.random.Generator, size: int) -> Rows:
    """A client's own corner of the population: the base rows nearest a random one."""
    base = service.task.private
    scale = np.where(base.X.std(axis=0) > 0, base.X.std(axis=0), 1.0)
    anchor = base.X[rng.integers(len(base.X))]
    nearest = np.argsort((((base.X - anchor) / scale) ** 2).sum(axis=1))[:size]
    return Rows(base.X[nearest], base.y[nearest])


def _from_segment(service: Service, rng: np.random.Generator, rows: Rows, n: int) -> np.ndarray:
    return rows.sample(rng, n, service.task.geometry, noise=0.04)[0]


def _resend(rng: np.random.Generator, x: np.ndarray, history: list[np.ndarray], share: float):
    if history:
        earlier = np.concatenate(history)
        again = rng.random(len(x)) < share
        x[again] = earlier[rng.integers(len(earlier), size=int(again.sum()))]
    history.append(x)
    return x


def casual(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    total = int(np.clip(rng.lognormal(np.log(200.0), 0.9), 5, 6000))
    rows = segment(service, rng, int(rng.integers(20, 120)))
    days = rng.choice(service.days, size=int(rng.integers(1, service.days + 1)), replace=False)
    share = rng.uniform(0.0, 0.4)
    history: list[np.ndarray] = []
    ts, xs, ss = [], [], []
    counts = rng.multinomial(total, np.ones(len(days)) / len(days))
    for day, n in zip(np.sort(days), counts, strict=True):
        x = _resend(rng, _from_segment(service, rng, rows, n), history, share)
        for size in pieces(n, 10, 150, rng) if n else []:
            ts.append(daytime(rng, int(day), tz) + typed(rng, size, rng.uniform(4.0, 40.0)))
            ss.append(np.full(size, len(ss)))
        xs.append(x)
    if not ts:
        return stream(np.zeros(0), np.zeros((0, service.width)), np.zeros(0), service.span)
    return stream(np.concatenate(ts), np.concatenate(xs), np.concatenate(ss), service.span)


def heavy(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    per_day = int(np.exp(rng.uniform(np.log(500), np.log(4000))))
    share = rng.uniform(0.02, 0.25)
    open_h, close_h = rng.uniform(6, 10), rng.uniform(17, 23)
    history: list[np.ndarray] = []
    ts, xs, ss = [], [], []
    for day in range(service.days):
        n = int(rng.poisson(per_day * rng.uniform(0.6, 1.3)))
        x, _ = service.task.natural(rng, n)
        xs.append(_resend(rng, x, history, share))
        begin = day * DAY + ((open_h - tz) * HOUR) % DAY
        t = poisson(rng, n, begin, begin + (close_h - open_h) * HOUR)
        ts.append(t)
        ss.append((t // HOUR).astype(np.int64))  # the backend renews its session hourly
    return stream(np.concatenate(ts), np.concatenate(xs), np.concatenate(ss), service.span)


def batch_rescoring(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    size = int(np.exp(rng.uniform(np.log(400), np.log(4000))))
    book = np.concatenate(
        [_from_segment(service, rng, segment(service, rng, 150), size // 3 + 1) for _ in range(3)]
    )[:size]
    hour = rng.uniform(0.0, 5.0)
    batch = int(rng.choice([25, 50, 100, 250]))
    ts, xs, ss = [], [], []
    for day in range(service.days):
        replaced = rng.random(len(book)) < rng.uniform(0.0, 0.05)
        book[replaced] = service.task.natural(rng, int(replaced.sum()))[0]
        start = day * DAY + ((hour - tz) * HOUR) % DAY + rng.normal(0, 60)
        t = start + scripted(rng, len(book), rng.uniform(0.01, 0.2), 0.3)
        ts.append(batched(t, batch))
        xs.append(book.copy())
        ss.append(np.full(len(book), day))
    return stream(np.concatenate(ts), np.concatenate(xs), np.concatenate(ss), service.span)


def _sweep(service: Service, rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    geometry = service.task.geometry
    column = int(rng.integers(service.width))
    group = next((g for g in geometry.onehot if column in g), None)
    if group is not None:  # try every category of the column's group
        x = np.repeat(base[None, :], len(group), axis=0)
        x[:, group] = np.eye(len(group))
        return x
    lo, hi = service.known_lo[column], service.known_hi[column]
    if geometry.integer[column]:
        grid = np.unique(np.round(np.linspace(lo, hi, min(int(hi - lo) + 1, 25))))
    else:
        grid = np.linspace(lo, hi, int(rng.integers(8, 30)))
    x = np.repeat(base[None, :], len(grid), axis=0)
    x[:, column] = grid
    return service.valid(x)


def whatif_analyst(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    rows = segment(service, rng, 60)
    ts, xs, ss = [], [], []
    for day in range(service.days):
        for _ in range(int(rng.integers(0, 4))):
            base = _from_segment(service, rng, rows, 1)[0]
            x = np.concatenate([_sweep(service, rng, base) for _ in range(rng.integers(1, 6))])
            ts.append(daytime(rng, day, tz) + typed(rng, len(x), rng.uniform(1.5, 8.0)))
            xs.append(x)
            ss.append(np.full(len(x), len(ss)))
    if not ts:
        return whatif_analyst(service, rng, tz)
    return stream(np.concatenate(ts), np.concatenate(xs), np.concatenate(ss), service.span)


def integration_test(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    canned, _ = service.task.natural(rng, int(rng.integers(3, 13)))
    every = float(rng.choice([900.0, 1800.0, 3600.0, 7200.0]))
    schedule = np.arange(rng.uniform(0, every), service.span, every)
    deploys = poisson(rng, int(rng.integers(2, 10)) * service.days, 0.0, service.span)
    starts = np.sort(np.concatenate([schedule, deploys]))
    offsets = scripted(rng, len(canned), rng.uniform(0.05, 0.5), 0.2)
    t = (starts[:, None] + offsets[None, :]).ravel()
    x = np.tile(canned, (len(starts), 1))
    return stream(t, x, np.repeat(np.arange(len(starts)), len(canned)), service.span)


CLIENTS = {
    "casual": casual,
    "heavy": heavy,
    "batch_rescoring": batch_rescoring,
    "whatif_analyst": whatif_analyst,
    "integration_test": integration_test,
}
