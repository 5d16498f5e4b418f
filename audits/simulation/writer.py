"""The canonical archive: events as JSON lines, built column-wise with Polars, gzip-compressed
into ``logs/dt=YYYY-MM-DD/part-NNNNN.jsonl.gz`` (the UTC day of ``ts``), time-ordered."""

from __future__ import annotations

import datetime as dt
import gzip
from dataclasses import dataclass

import numpy as np
import polars as pl

from audits.simulation.roster import Member

PART_EVENTS = 50_000
MODEL_ID = "risk-scorer"
MODEL_VERSION = "3"
PROBA_DECIMALS = 6
_DAY_MS = 86_400_000


@dataclass
class Events:
    """Every clean event, sorted by time: column arrays."""

    user: np.ndarray  # index into the roster
    ms: np.ndarray  # epoch milliseconds, UTC
    x: np.ndarray  # (n, width) features as logged
    session: np.ndarray  # session number within the user
    proba: np.ndarray  # (n, classes) the served model's answer
    latency: np.ndarray

    def take(self, rows: np.ndarray | slice) -> Events:
        return Events(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.ms)


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64, so distinct inputs give distinct ids."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hex_ids(prefix: str, values: np.ndarray, digits: int = 16) -> np.ndarray:
    """``prefix`` + the low ``digits`` hex digits of each value, vectorised."""
    shifts = np.arange(digits - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    nibbles = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(0xF)
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles.astype(np.intp)]
    text = np.ascontiguousarray(chars).view(f"S{digits}").ravel().astype(f"U{digits}")
    return np.char.add(prefix, text)


def event_ids(first: int, n: int, salt: int) -> np.ndarray:
    """Unique, random-looking event ids for event numbers ``first .. first+n-1``."""
    numbers = np.arange(first, first + n, dtype=np.uint64) ^ np.uint64(salt)
    return hex_ids("evt_", mix64(numbers))


def day_of(ms: np.ndarray) -> np.ndarray:
    """The UTC day number (days since the epoch) of epoch milliseconds."""
    return ms // _DAY_MS


def day_text(day_number: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day_number))).isoformat()


def split_parts(n: int) -> list[slice]:
    """At least two files a day, none above ``PART_EVENTS`` events."""
    parts = max(2, -(-n // PART_EVENTS)) if n > 1 else 1
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class LineFormatter:
    """Formats events of one roster as canonical JSON lines, column-wise."""

    def __init__(self, members: list[Member], salt: int) -> None:
        self.user_ids = np.array([m.user_id for m in members], dtype=object)
        self.offsets = np.array([m.ts_offset_min or 0 for m in members], dtype=np.int64)
        self.suffixes = np.array([_suffix(m.ts_offset_min) for m in members], dtype=object)
        self.has_session = np.array([m.has_session for m in members])
        flat = [ip for m in members for ip in m.ips]
        self.ips = np.array(flat, dtype=object)
        self.ip_count = np.array([len(m.ips) for m in members])
        self.ip_first = np.concatenate([[0], np.cumsum(self.ip_count)[:-1]])
        self.salt = salt

    def lines(self, ev: Events, ids: np.ndarray) -> list[str]:
        """One JSON object per event (no trailing newline), in event order."""
        return (
            self.frame(ev, ids)
            .select(_line_expr(ev.x.shape[1], ev.proba.shape[1]))["line"]
            .to_list()
        )

    def frame(self, ev: Events, ids: np.ndarray) -> pl.DataFrame:
        sessions = hex_ids(
            "s_",
            mix64(
                (ev.user.astype(np.uint64) << np.uint64(24))
                + ev.session.astype(np.uint64)
                + np.uint64(self.salt)
            ),
            12,
        )
        ip = self.ips[self.ip_first[ev.user] + ev.session % self.ip_count[ev.user]]
        columns = {
            "event_id": ids,
            "local_ms": ev.ms + self.offsets[ev.user] * 60_000,
            "suffix": pl.Series(self.suffixes[ev.user], dtype=pl.String),
            "user_id": pl.Series(self.user_ids[ev.user], dtype=pl.String),
            "session_id": sessions,
            "has_session": self.has_session[ev.user],
            "source_ip": pl.Series(ip, dtype=pl.String),
            "prediction": ev.proba.argmax(axis=1),
            "latency_ms": ev.latency,
        }
        columns |= {f"f{j}": ev.x[:, j] for j in range(ev.x.shape[1])}
        proba = np.round(ev.proba, PROBA_DECIMALS)
        columns |= {f"p{k}": proba[:, k] for k in range(proba.shape[1])}
        return pl.DataFrame(columns)


def _suffix(offset_min: int | None) -> str:
    if offset_min is None:
        return "Z"
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _numbers(prefix: str, n: int) -> pl.Expr:
    return pl.concat_str([pl.col(f"{prefix}{i}").cast(pl.String) for i in range(n)], separator=",")


def _line_expr(width: int, classes: int) -> pl.Expr:
    ts = pl.from_epoch(pl.col("local_ms"), time_unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%S%.3f")
    session = (
        pl.when(pl.col("has_session"))
        .then(pl.concat_str([pl.lit(',"session_id":"'), pl.col("session_id"), pl.lit('"')]))
        .otherwise(pl.lit(""))
    )
    return pl.concat_str(
        [
            pl.lit('{"event_id":"'),
            pl.col("event_id"),
            pl.lit('","ts":"'),
            ts,
            pl.col("suffix"),
            pl.lit('","user_id":"'),
            pl.col("user_id"),
            pl.lit('"'),
            session,
            pl.lit(',"source_ip":"'),
            pl.col("source_ip"),
            pl.lit(f'","model_id":"{MODEL_ID}","model_version":"{MODEL_VERSION}","features":['),
            _numbers("f", width),
            pl.lit('],"prediction":'),
            pl.col("prediction").cast(pl.String),
            pl.lit(',"probabilities":['),
            _numbers("p", classes),
            pl.lit('],"status":"200","latency_ms":'),
            pl.col("latency_ms").cast(pl.String),
            pl.lit("}"),
        ]
    ).alias("line")


def compress(lines: list[str]) -> bytes:
    """Gzip of the lines, newline-terminated, with a fixed header (reproducible bytes)."""
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)
