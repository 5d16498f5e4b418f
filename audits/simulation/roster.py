"""Who uses the API: every user's role, persona or attack family, key, addresses and client.

Keys are random (``key_`` + 12 hex digits) and nothing about a user's key, address, time
zone or client gives the role away; Sybil keys share one /24, as do a few office colleagues.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ATTACK_FAMILIES = (
    "uniform",
    "jbda",
    "knockoff_random",
    "knockoff_balanced",
    "active_margin",
    "hopskipjump",
    "sybil",
    "low_and_slow",
)
HARD_NEGATIVES = ("batch_rescoring", "whatif_analyst", "integration_test")
MIN_USERS = 20

_TIME_ZONES = np.array([-8, -7, -6, -5, -3, 0, 1, 2, 3, 5.5, 8, 9, 10])
_TZ_WEIGHTS = np.array([8, 3, 6, 10, 3, 8, 12, 8, 3, 6, 8, 5, 3], dtype=float)
_FIRST_OCTETS = (
    23,
    31,
    37,
    45,
    62,
    77,
    81,
    89,
    91,
    94,
    103,
    109,
    128,
    145,
    151,
    176,
    185,
    188,
    193,
    212,
    217,
)


@dataclass
class Member:
    """One user of the API and how their client talks to it."""

    user_id: str
    role: str  # "benign" | "attacker"
    kind: str  # persona or attack family
    group: str | None
    tz_hours: float
    ts_offset_min: int | None  # None: the client writes "Z"; else this offset, e.g. +02:00
    has_session: bool
    ips: list[str] = field(default_factory=list)


@dataclass
class Roster:
    members: list[Member]
    subnets: dict[str, str]  # sybil group id -> its /24


def plan(users: int, rng: np.random.Generator) -> list[tuple[str, str, str | None]]:
    """(role, kind, group) for every user: ~10% attackers (at least one per family and a
    Sybil group of three), a few of each hard negative, the rest ordinary clients."""
    attackers = max(round(0.10 * users), 10)
    sybil_keys = max(3, round(0.3 * attackers))
    n_groups = max(1, round(sybil_keys / 5))
    rows: list[tuple[str, str, str | None]] = []
    for g, keys in enumerate(np.array_split(np.arange(sybil_keys), n_groups)):
        rows += [("attacker", "sybil", f"sybil-{g + 1}")] * len(keys)
    solo = [f for f in ATTACK_FAMILIES if f != "sybil"]
    offset = int(rng.integers(len(solo)))
    rows += [
        ("attacker", solo[(i + offset) % len(solo)], None) for i in range(attackers - sybil_keys)
    ]
    per_negative = max(2, round(0.015 * users))
    for kind in HARD_NEGATIVES:
        rows += [("benign", kind, None)] * per_negative
    rows += [("benign", "regular", None)] * (users - len(rows))
    return rows


def build(users: int, rng: np.random.Generator) -> Roster:
    """The roster in plan order (user ids are random, so the order reveals nothing)."""
    rows = plan(users, rng)
    ids = _unique_keys(len(rows), rng)
    tz = rng.choice(_TIME_ZONES, size=len(rows), p=_TZ_WEIGHTS / _TZ_WEIGHTS.sum())
    local = rng.random(len(rows)) < 0.15
    local &= np.array([kind != "batch_rescoring" for _, kind, _ in rows])  # big jobs log UTC
    session = rng.random(len(rows)) < 0.6
    members = [
        Member(
            ids[i],
            role,
            kind,
            group,
            float(tz[i]),
            int(round(tz[i] * 60)) if local[i] else None,
            bool(session[i]),
        )
        for i, (role, kind, group) in enumerate(rows)
    ]
    subnets = _assign_addresses(members, rng)
    return Roster(members, subnets)


def _unique_keys(n: int, rng: np.random.Generator) -> list[str]:
    keys: dict[str, None] = {}
    while len(keys) < n:
        for value in rng.integers(0, 2**48, size=n - len(keys), dtype=np.int64):
            keys.setdefault(f"key_{int(value):012x}", None)
    return list(keys)


class _Addresses:
    """Random public-looking IPv4 addresses, no two users in one /24 unless meant to be."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.prefixes: set[str] = set()

    def subnet(self) -> str:
        while True:
            a = self.rng.choice(_FIRST_OCTETS)
            prefix = f"{a}.{self.rng.integers(0, 256)}.{self.rng.integers(0, 256)}"
            if prefix not in self.prefixes:
                self.prefixes.add(prefix)
                return prefix

    def hosts(self, prefix: str, n: int) -> list[str]:
        return [f"{prefix}.{h}" for h in self.rng.choice(np.arange(2, 255), n, replace=False)]


def _assign_addresses(members: list[Member], rng: np.random.Generator) -> dict[str, str]:
    pool = _Addresses(rng)
    subnets: dict[str, str] = {}
    groups = list(dict.fromkeys(m.group for m in members if m.group))  # sybil-1, sybil-2, …
    for group in groups:
        keys = [m for m in members if m.group == group]
        prefix = pool.subnet()
        subnets[group] = f"{prefix}.0/24"
        for member, ip in zip(keys, pool.hosts(prefix, len(keys)), strict=True):
            member.ips = [ip]
    regular = [m for m in members if m.kind == "regular"]
    office_size = int(rng.integers(3, 5))
    if len(regular) >= 4 * office_size:  # colleagues behind one office /24: benign
        office = pool.subnet()
        chosen = rng.choice(len(regular), office_size, replace=False)
        for member, ip in zip(
            [regular[i] for i in chosen], pool.hosts(office, office_size), strict=True
        ):
            member.ips = [ip]
    for member in members:
        if not member.ips:
            n = 1 if member.kind in HARD_NEGATIVES else int(rng.choice([1, 1, 1, 2, 2, 3]))
            member.ips = [pool.hosts(pool.subnet(), 1)[0] for _ in range(n)]
    return subnets
