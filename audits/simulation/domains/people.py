"""Who uses a domain's API: roles, kinds, keys, addresses, clients and time zones.

About a tenth of the keys attack (every family at least once, one Sybil group of 5 to 13 keys
on one /24); the benign keys are mostly casual, with heavy backends, batch jobs, what-if
analysts and CI tests among them, and an office of casual users behind one /24. Attackers use
one address, or rotate over a few cloud addresses per session.
"""

from __future__ import annotations

import numpy as np

from audits.simulation.domains.extraction import ATTACKERS
from audits.simulation.roster import Member, Roster

BENIGN_SHARES = {
    "heavy": 0.05,
    "batch_rescoring": 0.02,
    "whatif_analyst": 0.02,
    "integration_test": 0.02,
}
_ZONES = (-8.0, -6.0, -5.0, -3.0, 0.0, 1.0, 2.0, 3.0, 5.5, 7.0, 8.0, 9.0, 10.0)


def plan(users: int, rng: np.random.Generator) -> list[tuple[str, str, str | None]]:
    """(role, kind, group) per key."""
    attackers = max(12, round(0.1 * users))
    sybils = int(np.clip(round(0.35 * attackers), 5, 13))
    rows: list[tuple[str, str, str | None]] = [("attacker", "sybil", "sybil-1")] * sybils
    solo = list(ATTACKERS)
    start = int(rng.integers(len(solo)))
    rows += [("attacker", solo[(start + i) % len(solo)], None) for i in range(attackers - sybils)]
    for kind, share in BENIGN_SHARES.items():
        rows += [("benign", kind, None)] * max(2, round(share * users))
    rows += [("benign", "casual", None)] * max(0, users - len(rows))
    return rows


class _Addresses:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.used: set[tuple[int, int, int]] = set()

    def subnet(self) -> tuple[int, int, int]:
        while True:
            net = (
                int(self.rng.integers(11, 223)),
                int(self.rng.integers(256)),
                int(self.rng.integers(256)),
            )
            if net not in self.used and net[0] not in (127, 172, 192, 10):
                self.used.add(net)
                return net

    def hosts(self, net: tuple[int, int, int], n: int) -> list[str]:
        chosen = self.rng.choice(np.arange(1, 255), size=n, replace=False)
        return [f"{net[0]}.{net[1]}.{net[2]}.{h}" for h in chosen]


def build(users: int, rng: np.random.Generator) -> Roster:
    """The roster, in random order (keys are random, so nothing about a key gives its role)."""
    rows = plan(users, rng)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    keys = [f"k-{v:010x}" for v in rng.choice(2**40, size=len(rows), replace=False)]
    addresses = _Addresses(rng)
    members = []
    for key, (role, kind, group) in zip(keys, rows, strict=True):
        tz = float(rng.choice(_ZONES))
        local = rng.random() < 0.1
        session = rng.random() < (0.5 if role == "attacker" else 0.75)
        members.append(
            Member(key, role, kind, group, tz, int(tz * 60) if local else None, bool(session))
        )
    subnets = _addresses(members, addresses, rng)
    return Roster(members, subnets)


def _addresses(members: list[Member], pool: _Addresses, rng: np.random.Generator):
    sybil_net = pool.subnet()
    sybils = [m for m in members if m.kind == "sybil"]
    hosts = pool.hosts(sybil_net, 2 * len(sybils))
    for k, member in enumerate(sybils):
        member.ips = hosts[2 * k : 2 * k + (1 + int(rng.random() < 0.3))]
    casual = [m for m in members if m.kind == "casual"]
    if len(casual) >= 20:
        office = pool.subnet()
        chosen = rng.choice(len(casual), size=int(rng.integers(4, 9)), replace=False)
        for member, ip in zip(
            [casual[i] for i in chosen], pool.hosts(office, len(chosen)), strict=True
        ):
            member.ips = [ip]
    for member in members:
        if member.ips:
            continue
        if member.role == "attacker" and rng.random() < 0.4:  # a rotating cloud pool
            member.ips = [pool.hosts(pool.subnet(), 1)[0] for _ in range(rng.integers(2, 6))]
        else:
            n = 1 if rng.random() < 0.8 else 2
            member.ips = [pool.hosts(pool.subnet(), 1)[0] for _ in range(n)]
    net = ".".join(map(str, sybil_net))
    return {"sybil-1": f"{net}.0/24"}
