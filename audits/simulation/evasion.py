"""Decision-based evasion probes: HopSkipJump (Chen, Jordan & Wainwright 2020), label-only.

Implemented natively (vectorised over every chain of every attacker at once) rather than
through adversarial-robustness-toolbox, so that every query is logged in order and runs stay
fast and reproducible. A chain walks one natural target towards the decision boundary:
binary searches between two points, gradient estimates from tiny random perturbations around
the boundary point, geometric step-size searches: long runs of near-identical queries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from audits.simulation.world import Stream, World, scripted_bursts

_BINARY_STEPS = 12
_PER_CHAIN = 450  # queries one chain spends, roughly
_STEP_TRIES = 8


class _Chains:
    """Every chain's queries, in the order each chain sent them."""

    def __init__(self, world: World, n: int) -> None:
        self.world = world
        self.sent = np.zeros(n, dtype=np.int64)
        self.log: list[tuple[np.ndarray, np.ndarray]] = []

    def ask(self, chains: np.ndarray, S: np.ndarray) -> np.ndarray:
        """Labels of standardised points ``S`` sent by ``chains`` (one row each)."""
        X = self.world.round(S * self.world.std + self.world.mean)
        self.log.append((chains, X))
        np.add.at(self.sent, chains, 1)
        return self.world.label(X)

    def by_chain(self) -> tuple[np.ndarray, np.ndarray]:
        """(chain of each query, features) sorted by chain, each chain in sending order."""
        chains = np.concatenate([c for c, _ in self.log])
        X = np.concatenate([x for _, x in self.log])
        order = np.argsort(chains, kind="stable")
        return chains[order], X[order]


def hopskipjump(
    world: World,
    rng: np.random.Generator,
    n_users: int,
    budget: Callable[[np.random.Generator], int],
) -> list[Stream]:
    """One stream per attacker; each attacker runs a few chains back to back."""
    budgets = np.array([budget(rng) for _ in range(n_users)])
    n_chains = np.maximum(1, np.round(budgets / _PER_CHAIN)).astype(int)
    owner = np.repeat(np.arange(n_users), n_chains)
    limit = np.repeat(budgets // n_chains, n_chains)
    chains = _run(world, rng, len(owner), limit)
    ids, X = chains.by_chain()
    streams = []
    for user in range(n_users):
        mine = np.flatnonzero(owner == user)
        rows = np.isin(ids, mine)
        sizes = [int(np.sum(ids == c)) for c in mine]
        t, burst = scripted_bursts(rng, sizes, world.span, rng.uniform(0.2, 1.2), (60.0, 900.0))
        streams.append(Stream(t, X[rows], burst))
    return streams


def _run(world: World, rng: np.random.Generator, n: int, limit: np.ndarray) -> _Chains:
    chains = _Chains(world, n)
    everyone = np.arange(n)
    origin = (world.natural(rng, n) - world.mean) / world.std
    y0 = chains.ask(everyone, origin)
    start, found = _starting_points(world, rng, chains, y0)
    active = everyone[found]
    boundary = origin.copy()
    boundary[active] = _binary_search(chains, active, origin, start, y0)
    step = 1
    while len(active := active[chains.sent[active] < limit[active]]):
        boundary[active] = _iterate(rng, chains, active, origin, boundary, y0, step)
        step += 1
    return chains


def _starting_points(world, rng, chains: _Chains, y0: np.ndarray, tries: int = 12):
    """For each chain, a natural point the model labels differently from the target."""
    start = np.zeros((len(y0), world.width))
    found = np.zeros(len(y0), dtype=bool)
    for _ in range(tries):
        todo = np.flatnonzero(~found)
        if not len(todo):
            break
        candidate = (world.natural(rng, len(todo)) - world.mean) / world.std
        hit = chains.ask(todo, candidate) != y0[todo]
        start[todo[hit]] = candidate[hit]
        found[todo[hit]] = True
    return start, found


def _binary_search(chains: _Chains, idx: np.ndarray, origin, adversarial, y0) -> np.ndarray:
    """Points on the boundary between each target and its adversarial point."""
    lo, hi = np.zeros(len(idx)), np.ones(len(idx))
    a, b = origin[idx], adversarial[idx]
    for _ in range(_BINARY_STEPS):
        mid = (lo + hi) / 2
        flipped = chains.ask(idx, a + mid[:, None] * (b - a)) != y0[idx]
        hi = np.where(flipped, mid, hi)
        lo = np.where(flipped, lo, mid)
    return a + hi[:, None] * (b - a)


def _iterate(rng, chains: _Chains, idx, origin, boundary, y0, step: int) -> np.ndarray:
    """One HopSkipJump iteration: estimate the gradient, step, project back to the boundary."""
    d = origin.shape[1]
    xb = boundary[idx]
    dist = np.linalg.norm(xb - origin[idx], axis=1)
    delta = np.maximum(dist / d, 1e-4)
    n_probe = int(min(20 * np.sqrt(step), 100))
    u = rng.standard_normal((len(idx), n_probe, d))
    u /= np.linalg.norm(u, axis=2, keepdims=True)
    probes = xb[:, None, :] + delta[:, None, None] * u
    flipped = chains.ask(np.repeat(idx, n_probe), probes.reshape(-1, d)) != np.repeat(
        y0[idx], n_probe
    )
    phi = np.where(flipped, 1.0, -1.0).reshape(len(idx), n_probe)
    centred = phi - phi.mean(axis=1, keepdims=True)
    centred = np.where(np.abs(phi.mean(axis=1, keepdims=True)) == 1.0, phi, centred)
    grad = (centred[:, :, None] * u).mean(axis=1)
    direction = grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)
    target = _step(chains, idx, xb, direction, dist / np.sqrt(step), y0)
    return _binary_search(chains, idx, origin, _full(origin, idx, target), y0)


def _full(origin: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = origin.copy()
    out[idx] = rows
    return out


def _step(chains: _Chains, idx, xb, direction, size, y0) -> np.ndarray:
    """Geometric step-size search: halve the step until the point is still adversarial."""
    out = xb.copy()
    pending = np.ones(len(idx), dtype=bool)
    size = size.copy()
    for _ in range(_STEP_TRIES):
        rows = np.flatnonzero(pending)
        if not len(rows):
            break
        candidate = xb[rows] + size[rows, None] * direction[rows]
        ok = chains.ask(idx[rows], candidate) != y0[idx[rows]]
        out[rows[ok]] = candidate[ok]
        pending[rows[ok]] = False
        size[rows] /= 2
    return out
