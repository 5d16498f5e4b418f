"""The served model of a domain as its clients see it, and the clocks their traffic runs on.

Written for the domain simulator on its own (not shared with the default simulator's
generators), so detection can be judged on traffic it was not tuned on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audits.simulation.domains.tasks import Task
from audits.simulation.world import Stream

DAY = 86_400.0
HOUR = 3_600.0


@dataclass
class Service:
    """The prediction API of one domain: the model behind it and what a client can know."""

    task: Task
    model: object
    days: int
    mean: np.ndarray  # from the public reference sample
    std: np.ndarray
    known_lo: np.ndarray  # the range a client can read off the documentation
    known_hi: np.ndarray

    @property
    def span(self) -> float:
        return self.days * DAY

    @property
    def width(self) -> int:
        return self.task.width

    def valid(self, X: np.ndarray) -> np.ndarray:
        return self.task.geometry.valid(X)

    def proba(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X)

    def label(self, X: np.ndarray) -> np.ndarray:
        return self.proba(X).argmax(axis=1) if len(X) else np.zeros(0, np.int64)

    def synthetic(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Rows from independent per-column normals fitted to the documented statistics."""
        return self.valid(self.mean + self.std * rng.standard_normal((n, self.width)))

    def noisy(self, rng: np.random.Generator, n: int, level: float = 0.15) -> np.ndarray:
        """Copies of the training distribution with noise, as a leaked, perturbed sample."""
        X, _ = self.task.natural(rng, n)
        return self.valid(X + level * self.std * rng.standard_normal(X.shape))

    def shifted(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The training distribution moved and rescaled column by column."""
        X, _ = self.task.natural(rng, n)
        offset = rng.normal(0.0, 0.25, self.width) * self.std
        gain = np.exp(rng.normal(0.0, 0.1, self.width))
        return self.valid((X - self.mean) * gain + self.mean + offset)

    def seed_rows(self, rng: np.random.Generator, n: int, source: str) -> np.ndarray:
        """An attacker's starting data from ``source``: public, noisy, shifted or synthetic."""
        if source == "public":
            return self.task.outside(rng, n)
        return getattr(self, source)(rng, n)


# ---------------------------------------------------------------- clocks


def daytime(rng: np.random.Generator, day: int, tz: float, mean: float = 14.0) -> float:
    """Seconds since the window start of a local daytime moment on ``day``."""
    hour = float(np.clip(rng.normal(mean, 2.5), 7.0, 22.0))
    return day * DAY + ((hour - tz) * HOUR) % DAY


def typed(rng: np.random.Generator, n: int, pace: float) -> np.ndarray:
    """Offsets of ``n`` requests made by hand: gamma think times of mean ``pace`` seconds."""
    gaps = rng.gamma(1.3, pace / 1.3, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def scripted(rng: np.random.Generator, n: int, pace: float, wobble: float) -> np.ndarray:
    """Offsets of a client loop: a pace with uniform wobble (0 = metronome, 1 = very loose)."""
    gaps = pace * rng.uniform(1.0 - wobble, 1.0 + wobble, n)
    gaps[0] = 0.0
    return np.cumsum(np.maximum(gaps, 0.01))


def poisson(rng: np.random.Generator, n: int, begin: float, end: float) -> np.ndarray:
    """``n`` independent arrival times in ``[begin, end)``, sorted."""
    return np.sort(rng.uniform(begin, end, n))


def batched(t: np.ndarray, size: int) -> np.ndarray:
    """Requests sent as batches: every ``size`` consecutive queries share their first time."""
    first = (np.arange(len(t)) // max(size, 1)) * max(size, 1)
    return t[first]


def runs(
    rng: np.random.Generator,
    sizes: list[int],
    span: float,
    pace: float,
    wobble: float,
    rest: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Scripted runs of the given sizes separated by rests, placed at random in the window;
    squeezed when they would not fit. Returns (times, run number)."""
    offsets = [scripted(rng, k, pace, wobble) for k in sizes]
    lengths = np.array([o[-1] for o in offsets])
    rests = rng.uniform(*rest, len(sizes))
    rests[0] = 0.0
    total = float(lengths.sum() + rests.sum())
    squeeze = min(1.0, 0.9 * span / max(total, 1e-9))
    begin = rng.uniform(0.0, span - total * squeeze)
    starts = begin + squeeze * np.cumsum(rests + np.concatenate([[0.0], lengths[:-1]]))
    t = np.concatenate([s + squeeze * o for s, o in zip(starts, offsets, strict=True)])
    return t, np.repeat(np.arange(len(sizes)), sizes)


def pieces(total: int, size_lo: int, size_hi: int, rng: np.random.Generator) -> list[int]:
    """``total`` split into consecutive pieces of random sizes."""
    out: list[int] = []
    while sum(out) < total:
        out.append(min(int(rng.integers(size_lo, size_hi + 1)), total - sum(out)))
    return out


def stream(t: np.ndarray, x: np.ndarray, session: np.ndarray, span: float) -> Stream:
    """A stream in time order, inside the window."""
    order = np.argsort(t, kind="stable")
    return Stream(t[order], x[order], np.asarray(session, np.int64)[order]).clipped(span)
