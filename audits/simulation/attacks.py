"""Extraction attackers, one generator per family (see the field notes for their signatures).

Adaptive attacks query the served model while they run (batch calls per round); every query
they send is logged and answered by the same model. Budgets are realistic for extraction:
hundreds to a few thousand queries per key over the window.
"""

from __future__ import annotations

import warnings

import numpy as np

from audits.simulation.evasion import hopskipjump
from audits.simulation.world import (
    DAY,
    Stream,
    World,
    human_gaps,
    local_start,
    loguniform_int,
    machine_gaps,
    scripted_bursts,
)


def _budget(rng: np.random.Generator) -> int:
    return loguniform_int(rng, 600, 3000)


def _scripted(world: World, rng: np.random.Generator, x: np.ndarray, sizes=None) -> Stream:
    """Send ``x`` from a script: bursts (given, or a few hundred each) at a regular pace."""
    if sizes is None:
        sizes = _chunks(len(x), int(rng.integers(200, 700)))
    t, burst = scripted_bursts(rng, list(sizes), world.span, rng.uniform(0.3, 3.0))
    return Stream(t, x, burst)


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


class _Surrogate:
    """A quick multinomial logistic regression on standardised features: the attacker's
    local model for choosing what to ask next."""

    def __init__(self, world: World, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        self.world = world
        self.classes = np.unique(y)
        self.lr = None
        if len(self.classes) > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.lr = LogisticRegression(max_iter=200).fit(self._std(X), y)

    def _std(self, X: np.ndarray) -> np.ndarray:
        return (X - self.world.mean) / self.world.std

    def proba(self, X: np.ndarray) -> np.ndarray:
        if self.lr is None:
            return np.ones((len(X), 1))
        return self.lr.predict_proba(self._std(X))

    def gradient_sign(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """sign(d p_y / d x) in standardised units (Papernot's Jacobian augmentation)."""
        if self.lr is None:
            return np.sign(np.random.default_rng(0).standard_normal(X.shape))
        p = self.proba(X)
        W = self.lr.coef_ if len(self.classes) > 2 else np.vstack([-self.lr.coef_, self.lr.coef_])
        col = np.searchsorted(self.classes, y)
        own = p[np.arange(len(X)), col]
        grad = own[:, None] * (W[col] - p @ W)
        return np.sign(grad)


def uniform(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """Tramèr-style probing: uniform over each feature's range."""
    return [_scripted(world, rng, world.uniform(rng, _budget(rng))) for _ in tzs]


def jbda(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """Papernot's Jacobian-based augmentation: a small natural seed set, then rounds of
    x ± λ·sign(∇ surrogate) that double the set, the surrogate retrained each round."""
    return [_jbda_one(world, rng) for _ in tzs]


def _jbda_one(world: World, rng: np.random.Generator, rounds: int = 4, step: float = 0.1):
    seed_size = max(20, _budget(rng) // 2**rounds)
    current = world.natural(rng, seed_size)
    sent, labels = [current], [world.label(current)]
    for r in range(rounds):
        X, y = np.concatenate(sent), np.concatenate(labels)
        surrogate = _Surrogate(world, X, y)
        # Papernot's periodic step (tau = 2), growing a little so no point recurs exactly
        lam = step * (1.0 + 0.15 * r) * (-1.0) ** (r // 2)
        moved = X + lam * world.std * surrogate.gradient_sign(X, y)
        fresh = world.round(moved)
        sent.append(fresh)
        labels.append(world.label(fresh))
    x = np.concatenate(sent)
    sizes = [len(s) for s in sent]
    t, burst = scripted_bursts(rng, sizes, world.span, rng.uniform(0.05, 0.4), (120.0, 1200.0))
    return Stream(t, x, burst)


def knockoff_random(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """KnockoffNets with random selection: natural rows from another distribution."""
    return [_scripted(world, rng, world.knockoff_pool(rng, _budget(rng))) for _ in tzs]


def knockoff_balanced(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """KnockoffNets steering towards a class-balanced transfer set, round by round."""
    return [_pool_attack(world, rng, _balanced_pick) for _ in tzs]


def active_margin(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """ActiveThief-style pool-based active learning with margin (uncertainty) sampling."""
    return [_pool_attack(world, rng, _margin_pick) for _ in tzs]


def _pool_attack(world: World, rng: np.random.Generator, pick, rounds: int = 6) -> Stream:
    """Query a random start set from a public pool, then ``rounds`` batches chosen by
    ``pick(world, asked, answers, candidates, k, rng)`` from what is still unqueried."""
    budget = _budget(rng)
    pool = world.knockoff_pool(rng, max(4 * budget, 4000))
    queried = np.zeros(len(pool), dtype=bool)
    first = rng.choice(len(pool), size=budget // 5, replace=False)
    order, answers = [first], [world.proba(pool[first])]
    queried[first] = True
    batch = (budget - len(first)) // rounds
    for _ in range(rounds):
        asked = pool[np.concatenate(order)]
        free = np.flatnonzero(~queried)
        chosen = free[pick(world, asked, np.concatenate(answers), pool[free], batch, rng)]
        queried[chosen] = True
        order.append(chosen)
        answers.append(world.proba(pool[chosen]))
    return _scripted(world, rng, pool[np.concatenate(order)], [len(o) for o in order])


def _margin_pick(world: World, asked, answers, X: np.ndarray, k: int, rng) -> np.ndarray:
    """The candidates whose estimated top-two margin is smallest; the estimate averages the
    served probabilities of the nearest rows already asked."""
    from sklearn.neighbors import NearestNeighbors

    scale = world.std
    nearest = NearestNeighbors(n_neighbors=min(5, len(asked))).fit(asked / scale)
    _, idx = nearest.kneighbors(X / scale)
    p = np.sort(answers[idx].mean(axis=1), axis=1)
    return np.argsort(p[:, -1] - p[:, -2], kind="stable")[:k]


def _balanced_pick(world: World, asked, answers, X: np.ndarray, k: int, rng) -> np.ndarray:
    """Equal numbers per predicted class (all of a class when it has too few), topped up."""
    guess = _Surrogate(world, asked, answers.argmax(axis=1)).proba(X).argmax(axis=1)
    groups = [rng.permutation(np.flatnonzero(guess == c)) for c in np.unique(guess)]
    quota = k // max(len(groups), 1)
    picked = np.concatenate([g[:quota] for g in groups]) if groups else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(len(X)), picked)
    return np.concatenate([picked, rng.choice(rest, size=k - len(picked), replace=False)])


def low_and_slow(world: World, rng: np.random.Generator, tzs: list[float]) -> list[Stream]:
    """A patient attacker at human rates, every day of the window, in daytime sessions."""
    return [_low_and_slow_one(world, rng, tz) for tz in tzs]


def _low_and_slow_one(world: World, rng: np.random.Generator, tz: float) -> Stream:
    per_day = rng.integers(40, 140, world.days)
    source = world.uniform if rng.random() < 0.5 else world.knockoff_pool
    x = source(rng, int(per_day.sum()))
    parts, at = [], 0
    for day, n in enumerate(per_day):
        k = int(rng.integers(1, 4))
        sizes = rng.multinomial(n, np.full(k, 1.0 / k))
        for size in sizes[sizes > 0]:
            t = local_start(rng, day, tz, 14.0, 2.0) + human_gaps(rng, int(size), 25.0, 0.7)
            parts.append(Stream(t, x[at : at + size], np.full(size, len(parts))))
            at += size
    return Stream.join(parts, world.width).clipped(world.span)


def sybil_group(world: World, rng: np.random.Generator, n_keys: int) -> list[Stream]:
    """One attack split over ``n_keys`` keys: each key takes a complementary stripe of the
    group's query set, at a normal-looking daily volume, on a shared daily schedule."""
    per_key = rng.integers(80, 250, (n_keys, world.days))
    source = world.uniform if rng.random() < 0.5 else world.knockoff_pool
    pool = source(rng, int(per_key.sum()))
    stripes = np.array_split(
        np.argsort(pool[:, rng.integers(world.width)], kind="stable"),
        np.cumsum(per_key.sum(axis=1))[:-1],
    )
    start = rng.uniform(0.0, DAY - 4 * 3600.0)
    interval = rng.uniform(3.0, 8.0)
    streams = []
    for key, stripe in enumerate(stripes):
        x = pool[rng.permutation(stripe)]
        parts, at = [], 0
        for day, n in enumerate(per_key[key]):
            t = day * DAY + start + rng.normal(0.0, 300.0) + machine_gaps(rng, n, interval)
            parts.append(Stream(t, x[at : at + n], np.full(n, day)))
            at += n
        streams.append(Stream.join(parts, world.width).clipped(world.span))
    return streams


ATTACKS = {
    "uniform": uniform,
    "jbda": jbda,
    "knockoff_random": knockoff_random,
    "knockoff_balanced": knockoff_balanced,
    "active_margin": active_margin,
    "hopskipjump": lambda world, rng, tzs: hopskipjump(world, rng, len(tzs), _budget),
    "low_and_slow": low_and_slow,
}
