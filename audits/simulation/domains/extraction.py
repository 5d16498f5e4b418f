"""Extraction attackers of a domain's API, written from the field notes' descriptions:

* ``uniform``: uniform draws over the documented ranges;
* ``knockoff_random`` / ``knockoff_balanced``: natural rows from another source, sent at random
  or chosen so the served classes come out balanced (a nearest-neighbour guess of each pool
  row's class from the answers so far);
* ``jbda``: a small seed set grown by Jacobian steps of a logistic substitute, doubling per round;
* ``active_margin``: pool-based active learning on the substitute's smallest margin;
* ``hopskipjump``: decision-based probes: bisection between two rows of different served
  classes, then small steps around each boundary point;
* ``sybil``: one knockoff or active job split over several keys on one /24;
* ``low_and_slow``: a knockoff at a person's rate, every day of the window.

Each attacker's seed data comes from a source drawn per attacker (public data of the same task,
noisy or shifted copies of the training distribution, synthetic rows). Adaptive attackers query
the service while they run.
"""

from __future__ import annotations

import warnings

import numpy as np

from audits.simulation.domains.service import (
    DAY,
    Service,
    batched,
    daytime,
    pieces,
    runs,
    scripted,
    stream,
    typed,
)
from audits.simulation.world import Stream

NATURAL_SOURCES = ("public", "noisy", "shifted")
ANY_SOURCE = (*NATURAL_SOURCES, "synthetic")


def _budget(rng: np.random.Generator, lo: float = 800, hi: float = 6000) -> int:
    return int(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _source(rng: np.random.Generator, choices: tuple[str, ...]) -> str:
    """One of ``choices``; a public data set of the task, when offered, half of the time."""
    if "public" in choices and rng.random() < 0.5:
        return "public"
    others = [c for c in choices if c != "public"]
    return str(others[int(rng.integers(len(others)))])


def _script(service: Service, rng: np.random.Generator, x: np.ndarray, rounds=None) -> Stream:
    """Send ``x`` from a script: runs (given sizes, or random), a loose or tight pace, sometimes
    through a batch endpoint."""
    sizes = rounds if rounds is not None else pieces(len(x), 150, 1200, rng)
    pace, wobble = float(rng.uniform(0.1, 2.5)), float(rng.uniform(0.0, 0.9))
    t, run = runs(rng, list(sizes), service.span, pace, wobble, (120.0, 4 * 3600.0))
    if rng.random() < 0.3:
        t = batched(t, int(rng.choice([8, 16, 32, 64])))
    return stream(t, x, run, service.span)


class Substitute:
    """The attacker's own model: a logistic regression on standardised rows."""

    def __init__(self, service: Service) -> None:
        self.center, self.scale = service.mean, np.where(service.std > 0, service.std, 1.0)
        self.model = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> Substitute:
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = LogisticRegression(C=1.0, max_iter=150).fit(self._z(X), y)
        return self

    def _z(self, X: np.ndarray) -> np.ndarray:
        return (X - self.center) / self.scale

    def margin(self, X: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.zeros(len(X))
        p = np.sort(self.model.predict_proba(self._z(X)), axis=1)
        return p[:, -1] - p[:, -2]

    def gradient_sign(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Sign of d log p(y|x) / dx in standardised units (zero before the first fit)."""
        if self.model is None:
            return np.zeros_like(X)
        W = self.model.coef_
        if W.shape[0] == 1:  # binary: one weight vector for class 1
            W = np.vstack([-W[0], W[0]]) / 2
        p = self.model.predict_proba(self._z(X))
        cls = np.searchsorted(self.model.classes_, y).clip(0, len(self.model.classes_) - 1)
        return np.sign(W[cls] - p @ W)


# ---------------------------------------------------------------- families


def uniform(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    n = _budget(rng, 600, 4000)
    x = service.valid(rng.uniform(service.known_lo, service.known_hi, (n, service.width)))
    return _script(service, rng, x)


def knockoff_random(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    n = _budget(rng, 1000, 6000)
    x = service.seed_rows(rng, n, _source(rng, NATURAL_SOURCES))
    return _script(service, rng, x)


def _balanced_picks(
    rng: np.random.Generator, pool: np.ndarray, guess: np.ndarray, counts: np.ndarray, n: int
) -> np.ndarray:
    """Indices of ``n`` pool rows, favouring the classes seen least so far."""
    want = 1.0 / (1.0 + counts[guess])
    return rng.choice(len(pool), size=min(n, len(pool)), replace=False, p=want / want.sum())


def knockoff_balanced(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    from sklearn.neighbors import KNeighborsClassifier

    n = _budget(rng, 1000, 5000)
    pool = service.seed_rows(rng, 4 * n, _source(rng, NATURAL_SOURCES))
    first = int(rng.integers(100, 400))
    asked = [pool[:first]]
    answers = [service.label(asked[0])]
    pool = pool[first:]
    sizes = [first]
    classes = service.task.n_classes
    scale = np.where(service.std > 0, service.std, 1.0)
    while sum(sizes) < n and len(pool):
        k = min(int(rng.integers(100, 500)), n - sum(sizes))
        X, y = np.concatenate(asked), np.concatenate(answers)
        seen = rng.choice(len(pool), size=min(len(pool), 6 * k), replace=False)
        guess = KNeighborsClassifier(5).fit(X / scale, y).predict(pool[seen] / scale)
        pick = seen[_balanced_picks(rng, seen, guess, np.bincount(y, minlength=classes), k)]
        asked.append(pool[pick])
        answers.append(service.label(pool[pick]))
        pool = np.delete(pool, pick, axis=0)
        sizes.append(len(pick))
    return _script(service, rng, np.concatenate(asked), sizes)


def jbda(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    n = _budget(rng, 800, 5000)
    x = service.seed_rows(rng, int(rng.integers(30, 200)), _source(rng, ANY_SOURCE))
    step = float(rng.uniform(0.05, 0.3))
    asked, sizes = [x], [len(x)]
    sub = Substitute(service)
    direction = 1.0
    while sum(sizes) < n:
        X = np.concatenate(asked)
        y = service.label(X)
        sub.fit(X, y)
        grow = min(len(X), n - sum(sizes))
        pick = rng.choice(len(X), size=grow, replace=False)
        moved = X[pick] + direction * step * sub.scale * sub.gradient_sign(X[pick], y[pick])
        asked.append(service.valid(moved))
        sizes.append(grow)
        direction = -direction if rng.random() < 0.5 else direction  # periodic step size
    return _script(service, rng, np.concatenate(asked), sizes)


def active_margin(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    n = _budget(rng, 1000, 5500)
    pool = service.seed_rows(rng, 5 * n, _source(rng, ("noisy", "synthetic", "public")))
    first = int(rng.integers(100, 300))
    asked = [pool[:first]]
    pool = pool[first:]
    sizes = [first]
    sub = Substitute(service)
    while sum(sizes) < n and len(pool):
        X = np.concatenate(asked)
        sub.fit(X, service.label(X))
        k = min(int(rng.integers(100, 400)), n - sum(sizes), len(pool))
        candidates = rng.choice(len(pool), size=min(len(pool), 20 * k), replace=False)
        pick = candidates[np.argsort(sub.margin(pool[candidates]), kind="stable")[:k]]
        asked.append(pool[pick])
        pool = np.delete(pool, pick, axis=0)
        sizes.append(len(pick))
    x = np.concatenate(asked)
    t, run = runs(rng, sizes, service.span, float(rng.uniform(0.05, 1.0)), 0.5, (60.0, 900.0))
    t = batched(t, int(rng.integers(10, 100)))
    return stream(t, x, run, service.span)


def _bisect(service: Service, a: np.ndarray, b: np.ndarray, steps: int) -> list[np.ndarray]:
    """Queries of a bisection between rows ``a`` and ``b`` of different served classes."""
    label_a = service.label(a[None, :])[0]
    out = []
    for _ in range(steps):
        mid = service.valid(((a + b) / 2)[None, :])
        out.append(mid[0])
        if service.label(mid)[0] == label_a:
            a = mid[0]
        else:
            b = mid[0]
    return out


def hopskipjump(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    n = _budget(rng, 600, 3000)
    rows = service.seed_rows(rng, 400, _source(rng, NATURAL_SOURCES))
    labels = service.label(rows)
    queries: list[np.ndarray] = []
    while len(queries) < n and len(np.unique(labels)) > 1:
        i = int(rng.integers(len(rows)))
        others = np.flatnonzero(labels != labels[i])
        j = int(others[rng.integers(len(others))])
        queries += _bisect(service, rows[i], rows[j], int(rng.integers(10, 25)))
        edge = queries[-1]
        steps = rng.standard_normal((int(rng.integers(10, 40)), service.width))
        queries += list(service.valid(edge + 0.03 * service.std * steps))
    if not queries:
        queries = list(rows)
    x = np.asarray(queries[:n])
    t, run = runs(rng, pieces(len(x), 200, 900, rng), service.span, 0.2, 0.6, (600.0, 7200.0))
    return stream(t, x, run, service.span)


def low_and_slow(service: Service, rng: np.random.Generator, tz: float) -> Stream:
    per_day = int(rng.integers(60, 300))
    source = _source(rng, ANY_SOURCE)
    ts, xs, ss = [], [], []
    for day in range(service.days):
        for _ in range(int(rng.integers(2, 6))):
            k = max(1, per_day // 4)
            ts.append(daytime(rng, day, tz, mean=13.0) + typed(rng, k, rng.uniform(20.0, 90.0)))
            xs.append(service.seed_rows(rng, k, source))
            ss.append(np.full(k, len(ss)))
    return stream(np.concatenate(ts), np.concatenate(xs), np.concatenate(ss), service.span)


def sybil(service: Service, rng: np.random.Generator, keys: int) -> list[Stream]:
    """One job split over ``keys`` keys: each takes every ``keys``-th query of it, at the same
    hours, with a modest volume per key."""
    per_key = int(rng.integers(150, 600))
    total = per_key * keys
    if rng.random() < 0.5:
        x = service.seed_rows(rng, total, _source(rng, NATURAL_SOURCES))
    else:
        x = _split_active(service, rng, total)
    hour = rng.uniform(0.0, 20.0)  # the day's job ends inside the day
    days = max(1, service.days)
    out = []
    for k in range(keys):
        mine = x[k::keys]
        per_day = np.array_split(np.arange(len(mine)), days)
        ts, ss = [], []
        for day, idx in enumerate(per_day):
            begin = day * DAY + hour * 3600.0 + rng.uniform(0, 1800)
            ts.append(begin + scripted(rng, len(idx), float(rng.uniform(1.0, 6.0)), 0.6))
            ss.append(np.full(len(idx), day))
        out.append(stream(np.concatenate(ts), mine, np.concatenate(ss), service.span))
    return out


def _split_active(service: Service, rng: np.random.Generator, total: int) -> np.ndarray:
    pool = service.seed_rows(rng, 4 * total, "noisy")
    sub = Substitute(service)
    first = min(200, total)
    asked = [pool[:first]]
    pool = pool[first:]
    while sum(map(len, asked)) < total:
        X = np.concatenate(asked)
        sub.fit(X, service.label(X))
        k = min(300, total - len(X))
        pick = np.argsort(sub.margin(pool), kind="stable")[:k]
        asked.append(pool[pick])
        pool = np.delete(pool, pick, axis=0)
    return np.concatenate(asked)


ATTACKERS = {
    "uniform": uniform,
    "knockoff_random": knockoff_random,
    "knockoff_balanced": knockoff_balanced,
    "jbda": jbda,
    "active_margin": active_margin,
    "hopskipjump": hopskipjump,
    "low_and_slow": low_and_slow,
}
FAMILIES = (*ATTACKERS, "sybil")
