"""Defences and what they would have cost legitimate users: a per-key rate limit
(:func:`rate_limit_mask`), output minimisation (top-1 labels, rounded probabilities), response
randomisation (:func:`randomise_probabilities`) and query deduplication
(:func:`duplicate_queries`), with their parameters spelled once, in :class:`DefenceSettings`,
and their cost to the legitimate users of a window (:class:`LegitCosts`, :func:`legit_costs`:
computed once per window, a batch of whole users at a time). The replay of a subject's traffic
under each defence is :func:`audits.forensics.replay.replay_defences`."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from audits.event_source import BATCH_EVENTS, EventSource, as_source
from audits.forensics.traffic import Traffic, traffic

DEFAULT_RATE_LIMITS: dict[str, int] = {"minute": 30, "hour": 600, "day": 5_000}
DEFAULT_ROUND_DECIMALS = 1
DEFAULT_NOISE_SCALE = 1.0  # sd of the Gaussian noise on each log-probability
DEFAULT_DEDUP_TOLERANCE = 0.01  # dedup grid side, in reference standard deviations
_PERIOD_SECONDS = {"minute": 60, "hour": 3_600, "day": 86_400}


def _hashable(keys) -> np.ndarray:
    """Keys as integers when they are (cheap to hash), else as text."""
    keys = np.asarray(keys)
    return keys if keys.dtype.kind in "iu" else keys.astype(str)


def rate_limit_mask(ts_s: np.ndarray, keys: np.ndarray, limit: int, period_s: float) -> np.ndarray:
    """Which queries a per-key limit of ``limit`` per fixed ``period_s`` window would let
    through (rejected queries do not count against the limit)."""
    n = len(ts_s)
    if n == 0 or limit <= 0:
        return np.zeros(n, dtype=bool) if limit <= 0 else np.ones(n, dtype=bool)
    bucket = np.floor(ts_s / period_s).astype(np.int64)
    frame = pl.DataFrame({"i": np.arange(n), "k": _hashable(keys), "b": bucket, "t": ts_s})
    rank = frame.sort("t", "i").with_columns(pl.int_range(pl.len()).over("k", "b").alias("r"))
    keep = np.zeros(n, dtype=bool)
    keep[rank["i"].to_numpy()] = rank["r"].to_numpy() < limit
    return keep


def apply_limits(t: Traffic, limits: Mapping[str, int]) -> np.ndarray:
    keep = np.ones(len(t.ts_s), dtype=bool)
    for period, limit in limits.items():
        idx = np.nonzero(keep)[0]
        sub = rate_limit_mask(t.ts_s[idx], t.key[idx], int(limit), _PERIOD_SECONDS[period])
        keep[idx[~sub]] = False
    return keep


def randomise_probabilities(
    proba: np.ndarray,
    *,
    scale: float = DEFAULT_NOISE_SCALE,
    seed: int = 0,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """Randomised responses that keep every answer's top-1 class: Gaussian noise of standard
    deviation ``scale`` added to each log-probability, renormalised (a softmax), and where the
    noise made another class the largest, that value and the original top class's swapped back.
    Labels never change; the probabilities an attacker could train on are blurred, by a factor
    of about ``exp(+-scale)`` each. The same ``seed`` gives the same answers. With ``keys`` (one
    per row, rows in time order) each key's rows get the noise of their own generator, seeded
    by ``seed`` and the key, so a key's answers do not depend on the other keys randomised with
    it (batches of whole keys give the answers of one pass). (Chosen over reverse-sigmoid
    poisoning because its cost to users is easy to state and to bound.)"""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.size == 0 or scale <= 0:
        return p.copy()
    if keys is None:
        noise = np.random.default_rng(seed).standard_normal(p.shape)
    else:
        noise = _per_key_normals(np.asarray(keys), p.shape[1], seed)
    logits = np.log(np.clip(p, 1e-12, None)) + scale * noise
    out = np.exp(logits - logits.max(axis=1, keepdims=True))
    out /= out.sum(axis=1, keepdims=True)
    top, now = p.argmax(axis=1), out.argmax(axis=1)
    rows = np.nonzero(top != now)[0]
    kept = out[rows, top[rows]].copy()
    out[rows, top[rows]] = out[rows, now[rows]]
    out[rows, now[rows]] = kept
    return out


def _per_key_normals(keys: np.ndarray, width: int, seed: int) -> np.ndarray:
    """Standard normals, ``width`` per row; each key's rows, in order, from a generator seeded
    by ``seed`` and the key's CRC-32."""
    names, codes = np.unique(keys.astype(str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    out = np.empty((len(keys), width))
    for i, name in enumerate(names):
        rows = order[bounds[i] : bounds[i + 1]]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[rows] = rng.standard_normal((len(rows), width))
    return out


def duplicate_queries(
    X: np.ndarray,
    keys: np.ndarray,
    *,
    tolerance: float = DEFAULT_DEDUP_TOLERANCE,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What a per-key deduplicating cache would have answered from the cache (rows in time
    order): a query is a duplicate when an earlier query of the same key fell in the same cell
    of a grid of side ``tolerance`` x the feature's standard deviation ``scale`` on every
    feature (``tolerance`` 0: identical features). The cache answers it with the answer of the
    first query of that cell, so it brings the key nothing new. Returns ``(is_duplicate,
    source)``: ``source[i]`` is the index of the query whose answer query ``i`` gets (``i``
    itself when it is not a duplicate)."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    if tolerance > 0:
        s = np.ones(X.shape[1]) if scale is None else np.asarray(scale, dtype=np.float64)
        s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
        cells = np.floor(X / (tolerance * s)).astype(np.int64)
    else:
        cells = (X + 0.0).view(np.int64)  # + 0.0 makes -0.0 and 0.0 one value
    cell_columns = [f"c{j}" for j in range(cells.shape[1])]
    frame = pl.DataFrame(
        {"key": _hashable(keys), **dict(zip(cell_columns, cells.T, strict=True))}
    ).with_row_index("row")
    # the first (lowest) row of each (key, cell): a hash group-by, not a sort of whole rows
    first = frame.select(pl.col("row").min().over("key", *cell_columns))["row"]
    source = first.to_numpy().astype(np.int64)
    return source != np.arange(n), source


def rate_limits_of(rate_limits: Mapping[str, int] | None) -> dict[str, int]:
    """The per-key limits to replay (``None``: the defaults); unknown periods are an error."""
    limits = dict(DEFAULT_RATE_LIMITS if rate_limits is None else rate_limits)
    unknown = set(limits) - set(_PERIOD_SECONDS)
    if unknown:
        raise ValueError(f"unknown rate-limit periods {sorted(unknown)}: use minute/hour/day")
    return {period: int(limit) for period, limit in limits.items()}


def scenarios(limits: Mapping[str, int]) -> list[tuple[dict[str, int], str]]:
    """Each limit alone (``per_<period>``) and, with more than one, all together."""
    out = [({p: limit}, f"per_{p}") for p, limit in limits.items()]
    if len(limits) > 1:
        out.append((dict(limits), "combined"))
    return out


@dataclass(frozen=True)
class DefenceSettings:
    """The defences a replay applies, spelled once: per-key rate limits (``(period, limit)``
    pairs), the rounding decimals, the randomisation noise, the dedup tolerance and grid
    ``scale`` (per-feature sd, ``None``: 1; a replay fills it with the reference's) and the
    seed. :meth:`of` builds them from plain values (``rate_limits`` ``None``: the defaults)."""

    limits: tuple[tuple[str, int], ...]
    round_decimals: int = DEFAULT_ROUND_DECIMALS
    noise_scale: float = DEFAULT_NOISE_SCALE
    dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE
    scale: tuple[float, ...] | None = None
    seed: int = 0

    @classmethod
    def of(
        cls,
        rate_limits: Mapping[str, int] | None = None,
        round_decimals: int = DEFAULT_ROUND_DECIMALS,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        dedup_tolerance: float = DEFAULT_DEDUP_TOLERANCE,
        scale: np.ndarray | None = None,
        seed: int = 0,
    ) -> DefenceSettings:
        limits = tuple(rate_limits_of(rate_limits).items())
        settings = cls(limits, int(round_decimals), float(noise_scale), float(dedup_tolerance))
        return dataclasses.replace(settings.with_scale(scale), seed=int(seed))

    @property
    def rate_limits(self) -> dict[str, int]:
        return dict(self.limits)

    def grid_scale(self) -> np.ndarray | None:
        return None if self.scale is None else np.asarray(self.scale, dtype=np.float64)

    def with_scale(self, scale: np.ndarray | None) -> DefenceSettings:
        """The same settings with the dedup grid's per-feature ``scale``."""
        values = None if scale is None else tuple(float(v) for v in np.asarray(scale).ravel())
        return dataclasses.replace(self, scale=values)


@dataclass
class LegitCosts:
    """What each defence would have cost the legitimate users of a window under ``settings``:
    counts and sums over their labelled traffic. Rate limits and deduplication act per key,
    rounding and randomisation per response (randomised per key, :func:`randomise_probabilities`
    with ``keys``), so the figures of batches of whole users add up (:meth:`add`) to those of
    one pass over all of them."""

    settings: DefenceSettings
    users: int = 0
    responses: int = 0
    proba_widths: set[int] = field(default_factory=set)  # per batch; 0: one without
    rounded: int = 0
    randomised: int = 0
    labels_changed: int = 0
    abs_change: float = 0.0  # sum of |randomised - served| over every probability
    entries: int = 0  # probabilities summed in abs_change
    duplicates: int = 0
    near_duplicates: int = 0
    near_flipped: int = 0
    near_users: int = 0
    blocked: dict[str, int] = field(default_factory=dict)  # per rate-limit scenario
    blocked_users: dict[str, int] = field(default_factory=dict)

    @property
    def has_probabilities(self) -> bool:
        """Whether every response showed probabilities of one width (as one pass sees it)."""
        return self.responses > 0 and len(self.proba_widths) == 1 and 0 not in self.proba_widths

    def add(self, t: Traffic) -> None:
        """Add the costs on ``t``, the traffic of whole users not added before."""
        if len(t.y) == 0:
            return
        self.users += len(np.unique(t.key))
        self.responses += len(t.y)
        self.proba_widths.add(0 if t.proba is None else t.proba.shape[1])
        if t.proba is not None:
            self._add_output_costs(t.proba, t.user)
        self._add_dedup_costs(t)
        for chosen, name in scenarios(dict(self.settings.limits)):
            out = ~apply_limits(t, chosen)
            self.blocked[name] = self.blocked.get(name, 0) + int(out.sum())
            self.blocked_users[name] = self.blocked_users.get(name, 0) + len(np.unique(t.key[out]))

    def _add_output_costs(self, proba: np.ndarray, users: np.ndarray) -> None:
        s = self.settings
        self.rounded += int(
            (np.abs(np.round(proba, s.round_decimals) - proba) > 0).any(axis=1).sum()
        )
        noisy = randomise_probabilities(proba, scale=s.noise_scale, seed=s.seed + 1, keys=users)
        change = np.abs(noisy - proba)
        self.labels_changed += int((noisy.argmax(axis=1) != proba.argmax(axis=1)).sum())
        self.randomised += int((change > 1e-9).any(axis=1).sum())
        self.abs_change += float(change.sum())
        self.entries += change.size

    def _add_dedup_costs(self, t: Traffic) -> None:
        s = self.settings
        dup, source = duplicate_queries(
            t.X, t.key, tolerance=s.dedup_tolerance, scale=s.grid_scale()
        )
        # an exact repeat gets the answer it would have got; a near one gets its neighbour's
        near = dup & np.any(t.X[source] != t.X, axis=1)
        self.duplicates += int(dup.sum())
        self.near_duplicates += int(near.sum())
        self.near_flipped += int((near & (t.y[source] != t.y)).sum())
        self.near_users += len(np.unique(t.key[near]))

    def rate_limit(self, name: str) -> dict:
        """The legitimate cost of one rate-limit scenario (``per_minute``, ``combined``, ...)."""
        return {
            "legit_blocked": self.blocked.get(name, 0),
            "legit_users_affected": self.blocked_users.get(name, 0),
            "legit_users": self.users,
        }

    def outputs(self) -> dict:
        """The legitimate cost of top-1 labels, rounding and randomisation."""
        p = self.has_probabilities
        mean_change = round(self.abs_change / self.entries, 6) if p and self.entries else 0.0
        return {
            "top1_changed": self.responses if p else 0,
            "top1_users": self.users if p else 0,
            "rounding_changed": self.rounded if p else 0,
            "randomisation": {
                "legit_responses_changed": self.randomised if p else 0,
                "legit_labels_changed": self.labels_changed if p else 0,
                "legit_mean_abs_change": mean_change,
            },
        }

    def dedup(self) -> dict:
        return {
            "legit_duplicates": self.duplicates,
            "legit_queries_affected": self.near_duplicates,
            "legit_labels_changed": self.near_flipped,
            "legit_users_affected": self.near_users,
        }


def legit_costs(
    events: pl.DataFrame | EventSource | Traffic,
    settings: DefenceSettings | None = None,
    *,
    width: int | None = None,
    exclude: Iterable[str] = (),
    max_events: int = BATCH_EVENTS,
) -> LegitCosts:
    """What each defence (``settings``, ``None``: the defaults) would have cost the legitimate
    users: the users of ``events`` (a frame or an event source) not in ``exclude``, read a batch
    of whole users (about ``max_events`` events) at a time, so memory follows the batch; the
    sums equal one pass's. A :func:`audits.forensics.traffic.traffic` is costed as it is and
    keeps the result for the next call."""
    settings = DefenceSettings.of() if settings is None else settings
    if isinstance(events, Traffic):
        if settings not in events.costs:
            costs = LegitCosts(settings)
            costs.add(events)
            events.costs[settings] = costs
        return events.costs[settings]
    source = as_source(events)
    skip = set(exclude)
    costs = LegitCosts(settings)
    users = [u for u in source.user_counts() if u not in skip]
    for batch in source.batches(users, max_events=max_events):
        legit = traffic(batch, width)
        del batch  # the frame goes before the costs take their own memory
        costs.add(legit)
    return costs
