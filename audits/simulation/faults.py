"""Faults a real archive has (``--faults``), and the exact ingest counts they imply.

Every injected fault is an otherwise-valid record with a fresh event id, so each line has one
reason. Lines carry tags while the archive is built: an event id for a valid record,
``"!" + reason`` for a rejected one, ``""`` for a blank line. :class:`Tally` replays the
reader's rules on the tags of what can actually be read back, cut file included.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from audits import schema
from audits.readers import decompress_recoverable

_BLANKS = ("", "   ", "\t ")


@dataclass
class DayFiles:
    """One day's files while they are built: lines and their tags, file by file."""

    lines: list[list[str]]
    tags: list[list[str]]


def _malformed(rec: dict, rng: np.random.Generator) -> str:
    text = _dump(rec)
    variant = rng.integers(3)
    if variant == 0:
        return text[:-1]  # closing brace lost
    if variant == 1:
        return text[: len(text) // 2]
    return text.replace('"user_id":', "user_id:", 1)  # unquoted key


def _non_finite(rec: dict, rng: np.random.Generator) -> str:
    rec["features"][rng.integers(len(rec["features"]))] = float("nan")
    return _dump(rec)  # json.dumps writes the literal NaN


def _wrong_width(rec: dict, rng: np.random.Generator) -> str:
    extra = int(rng.choice([-3, -1, 1, 2]))
    f = rec["features"]
    rec["features"] = f[:extra] if extra < 0 else f + [round(float(v), 3) for v in f[:extra]]
    return _dump(rec)


def _missing_field(rec: dict, rng: np.random.Generator) -> str:
    name = str(rng.choice(["ts", "user_id", "features"]))
    if rng.random() < 0.25:
        rec[name] = None
    else:
        del rec[name]
    return _dump(rec)


def _bad_timestamp(rec: dict, rng: np.random.Generator) -> str:
    ts = rec["ts"]
    naive = ts[:23]  # YYYY-MM-DDTHH:MM:SS.fff, zone dropped
    rec["ts"] = [naive, naive.replace("T", " "), "2026-13-45T25:61:00Z", "yesterday 10am"][
        rng.integers(4)
    ]
    return _dump(rec)


_MAKERS: dict[str, Callable[[dict, np.random.Generator], str]] = {
    schema.MALFORMED_JSON: _malformed,
    schema.NON_FINITE: _non_finite,
    schema.WRONG_WIDTH: _wrong_width,
    schema.MISSING_FIELD: _missing_field,
    schema.BAD_TIMESTAMP: _bad_timestamp,
}


def _dump(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"))


@dataclass
class FaultInjector:
    """Adds faults to each day's files; redeliveries of one day land in the next day's files."""

    rng: np.random.Generator
    fresh_id: Callable[[], str]
    copied: set[str] = field(default_factory=set)
    carry: list[tuple[str, str]] = field(default_factory=list)

    def inject(self, day: DayFiles, last_day: bool) -> None:
        """Insert faulty records, blank lines and duplicates into ``day`` in place."""
        n = sum(len(lines) for lines in day.lines)
        per_kind = int(np.clip(n // 4000, 2, 40))
        inserts: list[list[tuple[int, str, str]]] = [[] for _ in day.lines]
        for reason, make in _MAKERS.items():
            for _ in range(per_kind):
                f, i = self._pick(day)
                rec = json.loads(day.lines[f][i])
                rec["event_id"] = self.fresh_id()
                inserts[f].append((self._where(day, f), make(rec, self.rng), "!" + reason))
        for blank in _BLANKS:
            f = int(self.rng.integers(len(day.lines)))
            inserts[f].append((self._where(day, f), blank, ""))
        for _ in range(per_kind):  # redelivered in the same file
            f, i = self._pick(day)
            self._copy(inserts[f], day.lines[f][i], day.tags[f][i], self._where(day, f))
        for line, tag in self.carry:  # redelivered a day later, in another file
            f = int(self.rng.integers(len(day.lines)))
            self._copy(inserts[f], line, tag, self._where(day, f))
        self.carry = [self._valid(day) for _ in range(per_kind)]
        self.copied.update(tag for _, tag in self.carry)  # known before this day is tallied
        if last_day:  # nothing comes later: redeliver into this day's other file
            for line, tag in self.carry:
                f = len(day.lines) - 1
                self._copy(inserts[f], line, tag, self._where(day, f))
            self.carry = []
        for f, extra in enumerate(inserts):
            day.lines[f], day.tags[f] = _merge(day.lines[f], day.tags[f], extra)

    def _pick(self, day: DayFiles) -> tuple[int, int]:
        f = int(self.rng.integers(len(day.lines)))
        return f, int(self.rng.integers(len(day.lines[f])))

    def _where(self, day: DayFiles, f: int) -> int:
        return int(self.rng.integers(len(day.lines[f]) + 1))

    def _valid(self, day: DayFiles) -> tuple[str, str]:
        f, i = self._pick(day)
        return day.lines[f][i], day.tags[f][i]

    def _copy(self, inserts: list, line: str, tag: str, where: int) -> None:
        self.copied.add(tag)
        inserts.append((where, line, tag))


def _merge(lines: list[str], tags: list[str], inserts: list[tuple[int, str, str]]):
    """Lines with each insert placed before original line ``position``."""
    out_lines: list[str] = []
    out_tags: list[str] = []
    previous = 0
    for position, line, tag in sorted(inserts, key=lambda item: item[0]):
        out_lines += lines[previous:position]
        out_tags += tags[previous:position]
        out_lines.append(line)
        out_tags.append(tag)
        previous = position
    return out_lines + lines[previous:], out_tags + tags[previous:]


def cut_gzip(data: bytes, rng: np.random.Generator) -> tuple[bytes, int, bool]:
    """``data`` cut short in the middle. Returns the cut bytes, how many complete lines the
    reader recovers from them, and whether a non-blank partial line follows those."""
    at = int(len(data) * rng.uniform(0.4, 0.6))
    while at > 16:
        recovered, damage = decompress_recoverable(data[:at])
        partial = recovered[recovered.rfind(b"\n") + 1 :]
        if damage and partial.strip(b" \t\r\n"):
            return data[:at], recovered.count(b"\n"), True
        at -= 7
    raise ValueError("no cut point leaves a partial line")  # pragma: no cover


@dataclass
class Tally:
    """The ingest counts the reader must produce, replayed from line tags."""

    copied: set[str] = field(default_factory=set)
    files: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)

    def add_clean(self, n: int) -> None:
        """A file of ``n`` valid, never-repeated records."""
        self.files += 1
        self.accepted += n

    def add_tagged(self, tags: list[str], partial: bool = False) -> None:
        """A file's readable lines (tags), plus a cut file's partial last line."""
        self.files += 1
        for tag in tags:
            if not tag:
                continue
            if tag[0] == "!":
                self.rejected[tag[1:]] += 1
            elif tag in self.copied:
                if tag in self.seen:
                    self.duplicates += 1
                else:
                    self.seen.add(tag)
                    self.accepted += 1
            else:
                self.accepted += 1
        if partial:
            self.rejected[schema.TRUNCATED_LINE] += 1

    def summary(self) -> dict:
        rejected = {reason: self.rejected[reason] for reason in sorted(self.rejected)}
        return {
            "files": self.files,
            "rows_read": self.accepted + self.duplicates + sum(rejected.values()),
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": rejected,
        }
