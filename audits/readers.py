"""Reading archive files into raw records: bytes in, lines (or Parquet rows) out, each file
hashed for custody, a day's files decompressed in threads and the next day read ahead while
the current one is stored.

A gzip file cut short in transit, or damaged inside (a failed CRC, corrupt deflate data),
still yields every byte that inflates before the damage; the damage is reported, never raised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # the catalog imports this module's GZIP_MAGIC
    from audits.catalog import ArchiveFile

Progress = Callable[[str], None]

_CHUNK = 1 << 16
_SALVAGE_PIECE = 1 << 10  # a damaged member is re-inflated in small pieces: little is lost
_GZIP_WBITS = 31
_RAW_DEFLATE = -15
GZIP_MAGIC = b"\x1f\x8b"


def decompress_recoverable(raw: bytes) -> tuple[bytes, str | None]:
    """Decompress a (possibly multi-member) gzip stream, keeping all output before any damage.

    Returns ``(data, damage)``; ``damage`` is ``None`` for an intact stream, else a short
    description such as ``"gzip stream cut short"``.
    """
    parts: list[bytes] = []
    decomp = zlib.decompressobj(_GZIP_WBITS)
    view = memoryview(raw)
    pos = 0
    member_parts = 0  # parts before the current member
    while True:
        while pos < len(view) and not decomp.eof:
            chunk = view[pos : pos + _CHUNK]
            pos += len(chunk)
            try:
                parts.append(decomp.decompress(chunk))
            except zlib.error as exc:
                salvaged = salvage_member(bytes(view))
                return b"".join(parts[:member_parts]) + salvaged, f"corrupt gzip stream: {exc}"
        if not decomp.eof:
            parts.append(decomp.flush())
            return b"".join(parts), "gzip stream cut short"
        rest = decomp.unused_data + bytes(view[pos:])
        if not rest.strip(b"\x00"):
            return b"".join(parts), None
        if not rest.startswith(GZIP_MAGIC):
            return b"".join(parts), "trailing bytes after the gzip stream"
        view, pos, member_parts = memoryview(rest), 0, len(parts)
        decomp = zlib.decompressobj(_GZIP_WBITS)


def salvage_member(member: bytes) -> bytes:
    """What a damaged gzip member's deflate data inflates to before the damage, its CRC
    unchecked (a failed CRC alone loses nothing)."""
    start = _header_length(member)
    if start is None:
        return b""
    inflate = zlib.decompressobj(_RAW_DEFLATE)
    parts = []
    for pos in range(start, len(member), _SALVAGE_PIECE):
        try:
            parts.append(inflate.decompress(member[pos : pos + _SALVAGE_PIECE]))
        except zlib.error:
            break
        if inflate.eof:
            break
    return b"".join(parts)


_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16


def _header_length(member: bytes) -> int | None:
    """The length of a gzip member's header (RFC 1952), ``None`` when it is not one."""
    if len(member) < 10 or not member.startswith(GZIP_MAGIC):
        return None
    flags, pos = member[3], 10
    if flags & _FEXTRA:
        pos += 2 + int.from_bytes(member[pos : pos + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = member.find(b"\x00", pos)
            if end < 0:
                return None
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return pos if pos <= len(member) else None


@dataclass
class RawFile:
    """A file's lines as read, with its custody facts."""

    lines: pa.Table  # line_no, text, cut, bad_utf8, reject
    sha256: str
    size_bytes: int
    damage: str | None


BATCH_ROWS = 1 << 16  # rows per Arrow batch: DuckDB scans batches in parallel


_BOM = b"\xef\xbb\xbf"


_READ_THREADS = 4


def read_raw(file: ArchiveFile) -> RawFile:
    """Read a file once: hash its bytes, recover what a cut gzip holds, split lines. A file
    that cannot be read (a dangling link, a CSV named ``.parquet``) has no lines and its
    damage says why; the file's ``note`` (an odd name or link) is part of its damage."""
    try:
        raw = file.path.read_bytes()
    except OSError as exc:
        return _unreadable(file, b"", f"unreadable: {exc.strerror or exc}")
    digest = hashlib.sha256(raw).hexdigest()
    if file.format == "parquet":
        try:
            lines = parquet_lines(duckdb.connect(), file.path)
        except duckdb.Error as exc:
            return _unreadable(file, raw, f"not a readable Parquet file ({first_line(exc)})")
        return RawFile(_with_flags(lines, None, None), digest, len(raw), file.note)
    damage = None
    data = raw
    if file.compressed and raw and (raw.startswith(GZIP_MAGIC) or GZIP_MAGIC.startswith(raw)):
        data, damage = decompress_recoverable(raw)  # a stream cut inside its magic is gzip
    elif file.compressed and raw:
        damage = "named .gz but not gzip: read as plain text"
    if data.startswith(_BOM):  # a byte-order mark is no part of the first record
        data = data[len(_BOM) :]
    lines, bad_utf8 = split_lines(data)
    cut_line = lines.num_rows if damage and data and not data.endswith(b"\n") else None
    flagged = _with_flags(lines, cut_line, bad_utf8)
    return RawFile(flagged, digest, len(raw), _joined(file.note, damage))


def _unreadable(file: ArchiveFile, raw: bytes, damage: str) -> RawFile:
    """A file of no lines, with its custody facts and why nothing was read."""
    empty = pa.table({"line_no": pa.array([], pa.int64()), "text": pa.array([], pa.large_string())})
    digest = hashlib.sha256(raw).hexdigest()
    return RawFile(_with_flags(empty, None, None), digest, len(raw), _joined(file.note, damage))


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _with_flags(lines: pa.Table, cut_line: int | None, bad_utf8: np.ndarray | None) -> pa.Table:
    n = lines.num_rows
    cut = np.zeros(n, dtype=bool)
    if cut_line is not None:
        cut[cut_line - 1] = True
    bad = bad_utf8 if bad_utf8 is not None else np.zeros(n, dtype=bool)
    return (
        lines.append_column("cut", pa.array(cut))
        .append_column("bad_utf8", pa.array(bad))
        .append_column("reject", pa.nulls(n, pa.string()))
    )


def split_lines(data: bytes) -> tuple[pa.Table, np.ndarray | None]:
    """Zero-copy split of a byte buffer into ``(line_no, text)``, and which lines were not
    UTF-8 (``None`` when all were; those lines are decoded with replacement characters)."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return _split_lines_slow(data)
    ends = _line_ends(data)
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    n = len(offsets) - 1
    text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    line_no = pa.array(np.arange(1, n + 1, dtype=np.int64))
    return pa.table({"line_no": line_no, "text": text}), None


_SCAN_BYTES = 1 << 22  # newline scan in slices: one small mask reused, not one per byte


def _line_ends(data: bytes) -> np.ndarray:
    """Offsets just past each newline. Scanning in slices into one reused mask avoids
    allocating (and page-faulting) a mask as large as the buffer."""
    buf = np.frombuffer(data, dtype=np.uint8)
    mask = np.empty(min(len(buf), _SCAN_BYTES), dtype=bool)
    parts = [np.empty(0, dtype=np.int64)]
    for start in range(0, len(buf), _SCAN_BYTES):
        chunk = buf[start : start + _SCAN_BYTES]
        found = np.equal(chunk, 10, out=mask[: len(chunk)])
        parts.append(np.flatnonzero(found) + (start + 1))
    return np.concatenate(parts)


def _split_lines_slow(data: bytes) -> tuple[pa.Table, np.ndarray]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    texts, bad = [], []
    for part in parts:
        try:
            texts.append(part.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            texts.append(part.decode("utf-8", errors="replace"))
            bad.append(True)
    line_no = pa.array(np.arange(1, len(texts) + 1, dtype=np.int64))
    table = pa.table({"line_no": line_no, "text": pa.array(texts, pa.large_string())})
    return table, np.array(bad, dtype=bool)


@dataclass
class DayRead:
    """A day's files as read: custody facts per file and one table of all their lines."""

    raws: list[RawFile]
    lines: pa.Table  # file_index, line_no, text, cut, bad_utf8, reject


def read_day(files: Sequence[ArchiveFile], say: Progress | None = None) -> DayRead:
    """Read a day's files (decompression in threads) into one table of lines, in batches
    small enough for DuckDB to validate in parallel."""
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        raws = list(pool.map(read_raw, files))
    for file, raw in zip(files, raws, strict=True):
        if raw.damage and say:
            say(f"{file.text}: {raw.damage}; keeping the {raw.lines.num_rows} lines read")
    tables = [
        raw.lines.add_column(0, "file_index", pa.array(np.full(raw.lines.num_rows, i, np.int32)))
        for i, raw in enumerate(raws)
    ]
    if not tables:
        return DayRead(raws, pa.table({}))
    combined = pa.concat_tables(tables)
    return DayRead(raws, rebatched(combined))


def rebatched(table: pa.Table) -> pa.Table:
    """``table`` in batches of at most :data:`BATCH_ROWS` rows (DuckDB scans them in
    parallel); an empty table keeps its columns."""
    return pa.Table.from_batches(table.to_batches(max_chunksize=BATCH_ROWS), schema=table.schema)


@dataclass
class ReadDay:
    day: dt.date
    files: Sequence[ArchiveFile]
    read: DayRead


def read_ahead(
    plan: Sequence[tuple[dt.date, Sequence[ArchiveFile]]], say: Progress | None
) -> Iterator[ReadDay]:
    """The plan's days as read, the next one always being read in a thread."""
    if not plan:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read_day, plan[0][1], say)
        for index, (day, files) in enumerate(plan):
            read = pending.result()
            if index + 1 < len(plan):
                pending = reader.submit(read_day, plan[index + 1][1], say)
            yield ReadDay(day, files, read)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def parquet_lines(con: duckdb.DuckDBPyConnection, path: Path) -> pa.Table:
    """A Parquet file as JSON text lines, so one set of rules validates every format.

    A native timestamp column without a zone is read as UTC.
    """
    source = con.sql("SELECT * FROM read_parquet(?)", params=[str(path)])
    columns = dict(zip(source.columns, (str(t) for t in source.types), strict=True))
    fields = []
    for name, kind in columns.items():
        quoted = '"' + name.replace('"', '""') + '"'
        value = quoted
        if name == "ts" and kind == "TIMESTAMP":
            value = f"strftime({quoted}, '%Y-%m-%dT%H:%M:%S.%fZ')"
        fields.append(f"{quoted} := {value}")
    return con.sql(
        f"SELECT file_row_number + 1 AS line_no, to_json(struct_pack({', '.join(fields)}))"
        "::VARCHAR AS text FROM read_parquet(?, file_row_number = true) ORDER BY file_row_number",
        params=[str(path)],
    ).to_arrow_table()
