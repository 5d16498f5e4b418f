"""What every persona and attack generator shares: the served model as an oracle, the feature
ranges a client can know, the time window, and the timing shapes of humans and scripts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audits.simulation.population import Population, round_features

DAY = 86_400.0


@dataclass
class Stream:
    """One user's queries: seconds since the window start, rounded features, session numbers."""

    t: np.ndarray
    x: np.ndarray
    session: np.ndarray

    @staticmethod
    def join(parts: list[Stream], width: int) -> Stream:
        """Concatenate parts in order."""
        if not parts:
            return Stream(np.zeros(0), np.zeros((0, width)), np.zeros(0, np.int64))
        return Stream(
            np.concatenate([p.t for p in parts]),
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.session for p in parts]),
        )

    def clipped(self, span: float) -> Stream:
        """Only the queries inside ``[0, span)``."""
        keep = (self.t >= 0) & (self.t < span)
        return Stream(self.t[keep], self.x[keep], self.session[keep])


@dataclass
class World:
    """The served model behind an oracle, and what a client of the API can know."""

    population: Population
    model: object
    decimals: np.ndarray
    lo: np.ndarray  # per-feature range a client can know (from the public reference sample)
    hi: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    days: int

    @property
    def span(self) -> float:
        return self.days * DAY

    @property
    def width(self) -> int:
        return len(self.decimals)

    def round(self, X: np.ndarray) -> np.ndarray:
        """Features exactly as the log will hold them."""
        return round_features(X, self.decimals)

    def proba(self, X: np.ndarray) -> np.ndarray:
        """The served model's answer to already-rounded rows."""
        return self.model.predict_proba(X)

    def label(self, X: np.ndarray) -> np.ndarray:
        """The served label (class index) of already-rounded rows."""
        return self.proba(X).argmax(axis=1)

    def knockoff_pool(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Natural-looking rows from a shifted distribution: another mix of segments, moved
        and widened, as an attacker's public data set would be."""
        weights = rng.dirichlet(np.full(len(self.population.weights), 0.8))
        offset = rng.normal(0.0, 0.6, self.population.centers.shape[1])
        X, _, _ = self.population.sample(rng, n, weights=weights, offset=offset, spread=1.35)
        return self.round(X)

    def natural(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Rows from the legitimate population itself."""
        return self.round(self.population.sample(rng, n)[0])

    def uniform(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Rows uniform over each feature's known range (correlations broken)."""
        return self.round(rng.uniform(self.lo, self.hi, (n, self.width)))


# ---------------------------------------------------------------- timing shapes


def human_gaps(rng: np.random.Generator, n: int, median: float, sigma: float = 0.9) -> np.ndarray:
    """Offsets of ``n`` queries typed by a person: log-normal think times, first at 0."""
    gaps = rng.lognormal(np.log(median), sigma, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def machine_gaps(rng: np.random.Generator, n: int, interval: float, jitter: float = 0.02):
    """Offsets of ``n`` queries sent by a script: a fixed interval with tiny jitter."""
    gaps = interval * (1.0 + jitter * rng.standard_normal(n))
    gaps[0] = 0.0
    return np.cumsum(np.maximum(gaps, interval * 0.1))


def local_start(
    rng: np.random.Generator,
    day: int,
    tz_hours: float,
    hour_mean: float = 13.0,
    hour_sd: float = 3.0,
) -> float:
    """Seconds since the window start of a session begun on ``day`` at a daytime local hour."""
    local_hour = float(np.clip(rng.normal(hour_mean, hour_sd), 6.5, 23.0))
    return day * DAY + ((local_hour - tz_hours) * 3600.0) % DAY


def scripted_bursts(
    rng: np.random.Generator,
    sizes: list[int],
    span: float,
    interval: float,
    pause: tuple[float, float] = (300.0, 5400.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A script's schedule: bursts of the given sizes at a machine-regular interval, pauses
    between bursts, started where the whole run fits in the window. Returns (t, burst)."""
    pauses = rng.uniform(*pause, len(sizes))
    offsets = [machine_gaps(rng, n, interval) for n in sizes]
    lengths = np.array([o[-1] if len(o) else 0.0 for o in offsets])
    total = float(lengths.sum() + pauses[1:].sum()) if len(sizes) else 0.0
    if total > 0.95 * span:  # squeeze a too-long run into the window
        factor = 0.95 * span / total
        offsets = [o * factor for o in offsets]
        lengths, pauses, total = lengths * factor, pauses * factor, total * factor
    start = rng.uniform(0.0, span - total)
    begins = start + np.concatenate([[0.0], np.cumsum(lengths[:-1] + pauses[1:])])
    t = np.concatenate([b + o for b, o in zip(begins, offsets, strict=True)])
    burst = np.repeat(np.arange(len(sizes)), sizes)
    return t, burst


def loguniform_int(rng: np.random.Generator, low: float, high: float) -> int:
    """An integer drawn log-uniformly from ``[low, high]``."""
    return int(np.exp(rng.uniform(np.log(low), np.log(high))))
