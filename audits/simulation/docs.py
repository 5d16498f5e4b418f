"""The simulated API's public documentation, and the canaries planted in it.

The docs show a few quick-start examples (anyone may send those: one ordinary client, the
"docs tester", does) and offer a downloadable sample data set. The team planted canaries in
the sample file only: a few rows that look natural but were never anyone's record (the
``[[vector]]`` canaries) and one row with an impossible value, an amount-like feature below
the floor no real record can reach (the ``[[rule]]`` canary). A reader never sends those; a
scraper that replays the sample file does: one knockoff attacker starts by sending the whole
file (quick-start examples included) before its own attack.

The registry is written as ``canaries.toml``; the truth records who sent a canary, computed
here with plain NumPy over what each user actually sent (independent of the audit's matcher).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audits.simulation.population import _POSITIVE
from audits.simulation.roster import Roster
from audits.simulation.world import Stream, World

QUICKSTART = 3
SAMPLE_ROWS = 40
VECTOR_CANARIES = 4
SCRAPER_KIND = "knockoff_random"
DOCS_TESTER_KIND = "regular"
REGISTRY_NAME = "canaries.toml"


@dataclass
class Docs:
    quickstart: np.ndarray  # (QUICKSTART, width): public examples, not canaries
    sample: np.ndarray  # (SAMPLE_ROWS + 1, width): the sample file, canaries included
    canaries: np.ndarray  # (VECTOR_CANARIES, width): the planted vectors
    rule_feature: int
    rule_floor: float  # the rule canary: f<rule_feature> < rule_floor
    scraper: int | None = None  # roster index
    tester: int | None = None

    @property
    def rule_text(self) -> str:
        return f"f{self.rule_feature} < {self.rule_floor!r}"

    def matches(self, x: np.ndarray) -> np.ndarray:
        """Which rows of ``x`` are a canary (exactly a planted vector, or break the rule)."""
        if len(x) == 0:
            return np.zeros(0, dtype=bool)
        exact = (x[:, None, :] == self.canaries[None, :, :]).all(axis=2).any(axis=1)
        return exact | (x[:, self.rule_feature] < self.rule_floor)

    def registry(self) -> str:
        """``canaries.toml``: the registry a team would keep."""
        lines = [
            "# Canaries planted in the public sample data set (docs/sample.csv).",
            "# A reader never sends these rows; a scraper replaying the file does.",
            "",
        ]
        for k, row in enumerate(self.canaries, 1):
            values = ", ".join(repr(float(v)) for v in row)
            lines += ["[[vector]]", f'name = "sample-row-canary-{k}"', f"values = [{values}]", ""]
        lines += [
            "[[rule]]",
            'name = "impossible-amount"',
            f'when = "{self.rule_text}"',
            "",
        ]
        return "\n".join(lines)


def make_docs(world: World, rng: np.random.Generator) -> Docs:
    """Quick-start examples, the sample file and its canaries, from natural rows."""
    rows = world.natural(rng, QUICKSTART + SAMPLE_ROWS)
    quickstart, sample = rows[:QUICKSTART], rows[QUICKSTART:].copy()
    planted = rng.choice(SAMPLE_ROWS, VECTOR_CANARIES, replace=False)
    feature = int(_POSITIVE[rng.integers(len(_POSITIVE))])
    pop = world.population
    # softplus x scale + shift never goes below shift: one scale below it is impossible
    floor = round(float(pop.shift[feature] - abs(pop.scale[feature])), int(world.decimals[feature]))
    impossible = sample[rng.integers(SAMPLE_ROWS)].copy()
    impossible[feature] = floor - abs(float(pop.scale[feature]))
    impossible = world.round(impossible[None, :])[0]
    sample = np.vstack([sample, impossible])
    return Docs(quickstart, sample, sample[np.sort(planted)], feature, floor)


def plant(world: World, roster: Roster, streams: list[Stream], rng: np.random.Generator) -> Docs:
    """Add the docs traffic to two existing users: the scraper (a knockoff attacker) sends
    the quick-start examples and the whole sample file, shortly before its attack; the docs
    tester (an ordinary client) sends the quick-start examples once. Everyone else's traffic
    is untouched."""
    docs = make_docs(world, rng)
    kinds = [m.kind for m in roster.members]
    scrapers = [i for i, k in enumerate(kinds) if k == SCRAPER_KIND]
    testers = [i for i, k in enumerate(kinds) if k == DOCS_TESTER_KIND]
    if scrapers:
        docs.scraper = scrapers[0]
        sent = np.vstack([docs.quickstart, docs.sample])
        streams[docs.scraper] = _before(world, rng, streams[docs.scraper], sent, interval=1.5)
    if testers:
        docs.tester = testers[int(rng.integers(len(testers)))]
        streams[docs.tester] = _before(world, rng, streams[docs.tester], docs.quickstart, 20.0)
    return docs


def _before(
    world: World, rng: np.random.Generator, stream: Stream, x: np.ndarray, interval: float
) -> Stream:
    """``stream`` with ``x`` sent in a new session that ends a few minutes before its first
    query (or starts the window)."""
    first = float(stream.t.min()) if len(stream.t) else 10 * 3600.0
    span = interval * len(x)
    start = max(0.0, first - rng.uniform(120.0, 900.0) - span)
    t = start + interval * np.arange(len(x)) + rng.uniform(0.0, 0.2, len(x))
    session = int(stream.session.max()) + 1 if len(stream.session) else 0
    added = Stream(t, x, np.full(len(x), session, dtype=np.int64))
    return Stream.join([added, stream], world.width).clipped(world.span)


def truth(docs: Docs, user_x: dict[str, np.ndarray], registry: str) -> dict:
    """Who sent a canary and how often; who sent only the quick-start examples."""
    senders = {}
    for user, x in user_x.items():
        n = int(docs.matches(x).sum())
        if n:
            senders[user] = n
    return {
        "registry": registry,
        "vectors": len(docs.canaries),
        "rules": 1,
        "senders": dict(sorted(senders.items())),
    }
