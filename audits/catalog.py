"""Find the archive's files and the day partition each belongs to.

A file's partition day comes from its path (``dt=YYYY-MM-DD``, ``YYYY/MM/DD`` folders, or a
``YYYY-MM-DD`` in its name); a file with no date in its path is assigned the UTC day of its
first timestamp, or failing that of its modification time. Events always keep their own UTC
day in the ``events`` table.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from audits.errors import InputError
from audits.formats import kind_of
from audits.readers import GZIP_MAGIC

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_IGNORED_NAMES = {"_SUCCESS", ".DS_Store"}

_HIVE_DAY = re.compile(r"(?:^|/)(?:dt|date|day)=(\d{4}-\d{2}-\d{2})(?:/|$)")
_FOLDER_DAY = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})(?:/|$)")
_NAME_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class ArchiveFile:
    """One file of the archive, with what is known about it before reading it."""

    path: Path
    size_bytes: int
    mtime_ns: int
    format: str  # "jsonl" | "parquet"
    day: dt.date
    kind: str = "canonical"  # the reader: canonical, sagemaker, kserve or mapped
    note: str | None = None  # what custody must know before reading: an odd name or link

    @property
    def compressed(self) -> bool:
        return self.path.name.endswith(".gz")

    @property
    def text(self) -> str:
        """The path as custody records and progress lines show it (:func:`path_text`)."""
        return path_text(self.path)


def path_text(path: Path) -> str:
    """A path as text that any UTF-8 sink takes: bytes of a name that are not UTF-8 are
    written as ``\\xNN`` escapes (Python keeps them as lone surrogates, which DuckDB, Arrow
    and the console refuse)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_format(path: Path) -> str | None:
    """``"jsonl"`` or ``"parquet"`` from the file name, ``None`` for anything else."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def day_from_path(relative: str) -> dt.date | None:
    """The partition day a path names, if it names one."""
    for pattern in (_HIVE_DAY, _FOLDER_DAY, _NAME_DAY):
        match = pattern.search(relative)
        if match:
            text = "-".join(match.groups()) if len(match.groups()) == 3 else match.group(1)
            try:
                return dt.date.fromisoformat(text)
            except ValueError:
                continue
    return None


def scan_archive(
    root: str | Path, log_format: str = "auto", mapping: dict[str, str] | None = None
) -> tuple[list[ArchiveFile], list[Path]]:
    """List the archive's log files (sorted by path) and the other files it holds; each file's
    reader is ``log_format``, or (``auto``) the format its first record shows."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"log archive not found: {root}")
    candidates = [root] if root.is_file() else _walk(root)
    files: list[ArchiveFile] = []
    skipped: list[Path] = []
    for path in candidates:
        fmt = file_format(path)
        if fmt is None:
            if path.name not in _IGNORED_NAMES and not path.name.startswith("."):
                skipped.append(path)
            continue
        stat = path.stat() if path.exists() else path.lstat()  # a dangling link: the link's
        relative = path.relative_to(root).as_posix() if path != root else path.name
        first = _first_line(path) if fmt == "jsonl" else ""
        kind = kind_of(first, log_format, mapping) if fmt == "jsonl" else "canonical"
        day = day_from_path(relative) or _first_event_day(path, fmt) or _mtime_day(stat)
        note = custody_note(root, path)
        files.append(ArchiveFile(path, stat.st_size, stat.st_mtime_ns, fmt, day, kind, note))
    return files, skipped


def custody_note(root: Path, path: Path) -> str | None:
    """What custody must record about a file beyond its bytes: a name that is not UTF-8, a
    dangling symlink, or a symlink whose target lies outside the archive (the target is
    recorded; the sha256 custody keeps is the target's)."""
    notes = []
    if path_text(path) != str(path):
        notes.append("file name is not UTF-8 (recorded with \\x escapes)")
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.exists():
            notes.append(f"a symlink to {path_text(target)}, which does not exist")
        elif not target.is_relative_to(Path(os.path.realpath(root))):
            notes.append(f"a symlink to {path_text(target)}, outside the archive")
    return "; ".join(notes) or None


def _first_line(path: Path) -> str:
    """The first non-blank line of a JSON-lines file ('' when unreadable)."""
    try:
        with _open_text(path, "utf-8-sig") as handle:
            for _, line in zip(range(100), handle, strict=False):
                if line.strip():
                    return line
    except (OSError, EOFError, zlib.error):
        return ""
    return ""


def _open_text(path: Path, encoding: str) -> IO[str]:
    """A JSON-lines file as text: gunzipped when its bytes are gzip (not merely its name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    if gzipped:
        return gzip.open(path, "rt", encoding=encoding, errors="replace")
    return open(path, encoding=encoding, errors="replace")


def _mtime_day(stat: os.stat_result) -> dt.date:
    """Last resort for a file whose path and content name no day: its modification day."""
    return dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).date()


def _walk(root: Path) -> list[Path]:
    paths = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths.extend(Path(folder) / name for name in sorted(names))
    return paths


def _first_event_day(path: Path, fmt: str) -> dt.date | None:
    """The UTC day of the first parseable timestamp in a file (for paths that name no day)."""
    try:
        if fmt == "parquet":
            return _first_parquet_day(path)
        with _open_text(path, "utf-8-sig") as handle:
            for _, line in zip(range(1000), handle, strict=False):
                day = _day_of_line(line)
                if day:
                    return day
    except (OSError, EOFError, zlib.error, ValueError):  # ValueError: not Parquet at all
        return None
    return None


def _day_of_line(line: str) -> dt.date | None:
    try:
        record = json.loads(line)
        value = (
            record.get("ts")
            or record.get("time")
            or (record.get("eventMetadata") or {}).get("inferenceTime")
        )
        stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        return None
    if stamp.tzinfo is None:
        return None
    return stamp.astimezone(dt.UTC).date()


def _first_parquet_day(path: Path) -> dt.date | None:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read_row_group(0, columns=["ts"]) if path.stat().st_size else None
    if table is None or table.num_rows == 0:
        return None
    value = table.column("ts")[0].as_py()
    if isinstance(value, str):
        return _day_of_line(json.dumps({"ts": value}))
    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.UTC) if value.tzinfo else value).date()
    return None
