"""Fuzzed archives for the ingest: random mixes of every reject reason, with what ingest must
make of them.

A seeded generator writes an archive of a few days, each with canonical, KServe and SageMaker
files (gzip or plain, some cut short, some wholly of one bad kind, some with a BOM), records
redelivered across days, and knows for every line what it is: a valid record (its event id),
a reject (its reason), a blank line, or the response of a KServe request. :func:`expected`
replays the ingest's accounting on what can actually be read back (a cut file's lost tail
excluded), and :func:`write_valid_only` writes the same archive with its valid lines alone,
whose audit the fuzzed archive's accepted events must equal.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from audits import schema
from audits.catalog import scan_archive
from audits.readers import decompress_recoverable
from audits.simulation.fuzz_records import WIDTH, RecordMaker, dump

CANONICAL, KSERVE, SAGEMAKER = "canonical", "kserve", "sagemaker"
BLANK, RESPONSE = "blank", "response"
BOM = "\ufeff".encode()

CANONICAL_REASONS = (
    schema.MALFORMED_JSON,
    schema.NOT_AN_OBJECT,
    schema.MISSING_FIELD,
    schema.WRONG_TYPE,
    schema.BAD_TIMESTAMP,
    schema.NON_FINITE,
    schema.WRONG_WIDTH,
    schema.INVALID_UTF8,
)
KSERVE_REASONS = (schema.UNPAIRED_RESPONSE, schema.UNMAPPABLE, schema.MALFORMED_JSON)
SAGEMAKER_REASONS = (
    schema.UNMAPPABLE,
    schema.MALFORMED_JSON,
    schema.NON_FINITE,
    schema.WRONG_WIDTH,
    schema.BAD_TIMESTAMP,
)


@dataclass(frozen=True)
class Tag:
    """What a line is: ``kind`` valid (``value`` its event id), reject (``value`` its reason),
    blank, or response (of the KServe request ``value``)."""

    kind: str
    value: str = ""


@dataclass
class FuzzFile:
    """One file of a fuzzed archive, as generated."""

    relative: str
    format: str
    lines: list[bytes]
    tags: list[Tag]
    compress: bool
    keep_fraction: float | None = None  # a cut gzip stream keeps this share of its bytes
    bad_crc: bool = False  # a gzip stream whose CRC does not match its data
    bom: bool = False

    def content(self) -> bytes:
        data = (BOM if self.bom else b"") + b"".join(line + b"\n" for line in self.lines)
        if not self.compress:
            return data
        packed = gzip.compress(data, mtime=0)
        if self.bad_crc:
            crc = bytes(b ^ 0xFF for b in packed[-8:-4])
            packed = packed[:-8] + crc + packed[-4:]
        if self.keep_fraction is None:
            return packed
        return packed[: int(len(packed) * self.keep_fraction)]


@dataclass
class FuzzArchive:
    """A fuzzed archive: its days' files in the order ingest reads them."""

    seed: int
    days: list[str]
    files: list[FuzzFile] = field(default_factory=list)

    def write(self, root: Path) -> Path:
        for file in self.files:
            path = root / file.relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(file.content())
        return root


@dataclass
class FileOutcome:
    """What ingest must report for one file."""

    rows_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejects: dict[int, str] = field(default_factory=dict)  # line_no -> reason
    valid: list[tuple[int, bytes, Tag]] = field(default_factory=list)  # readable valid lines

    @property
    def rejected(self) -> int:
        return len(self.rejects)


# ---------------------------------------------------------------- archives


def file_size(rng: random.Random, max_lines: int) -> int:
    """Lines in a file: log-uniform up to 1,000, a large file (up to ``max_lines``) one time
    in a hundred, and an empty or one-line file one time in ten."""
    if rng.random() < 0.1:
        return rng.choice([0, 1])
    top = max_lines if rng.random() < 0.01 else min(max_lines, 1_000)
    return max(1, int(math.exp(rng.uniform(0, math.log(top)))))


def generate(seed: int, max_lines: int = 100_000) -> FuzzArchive:
    """A fuzzed archive of one to three days, one to four files a day."""
    rng = random.Random(seed)
    maker = RecordMaker(rng, seed)
    start = dt.date(2026, 11, 1) + dt.timedelta(days=rng.randrange(20))
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(rng.randint(1, 3))]
    archive = FuzzArchive(seed, days)
    delivered: list[tuple[bytes, ...]] = []  # valid records (a KServe pair) seen so far
    for day in days:
        earlier = list(delivered)
        for index in range(rng.randint(1, 4)):
            fmt = rng.choices([CANONICAL, KSERVE, SAGEMAKER], weights=[6, 2, 2])[0]
            file = _file(maker, day, index, fmt, file_size(rng, max_lines), earlier, delivered)
            archive.files.append(file)
    return archive


def _file(
    maker: RecordMaker,
    day: str,
    index: int,
    fmt: str,
    size: int,
    earlier: list[tuple[bytes, ...]],
    delivered: list[tuple[bytes, ...]],
) -> FuzzFile:
    rng = maker.rng
    reasons = {CANONICAL: CANONICAL_REASONS, KSERVE: KSERVE_REASONS, SAGEMAKER: SAGEMAKER_REASONS}
    one_kind = rng.choice(reasons[fmt]) if rng.random() < 0.15 else None
    bad_share = 1.0 if one_kind else rng.choice([0.0, 0.01, 0.1, 0.5])
    redelivered = rng.choice([0.0, 0.0, 0.05]) if earlier and not one_kind else 0.0
    lines: list[bytes] = []
    tags: list[Tag] = []
    if fmt != CANONICAL:  # the file's first record names its format
        _valid(maker, fmt, day, lines, tags, delivered)
    while len(lines) < size:
        draw = rng.random()
        if draw < 0.01:
            lines.append(rng.choice([b"", b"   ", b"\t"]))
            tags.append(Tag(BLANK))
        elif draw < 0.01 + bad_share:
            reason = one_kind or rng.choice(reasons[fmt])
            lines.append(_bad(maker, fmt, day, reason))
            tags.append(Tag("reject", reason))
        elif rng.random() < redelivered:
            _redeliver(rng, fmt, earlier, lines, tags)
        else:
            _valid(maker, fmt, day, lines, tags, delivered)
    compress = rng.random() < 0.6
    damage = rng.choice(["cut", "cut", "crc"]) if rng.random() < 0.15 else None
    cut = compress and fmt != KSERVE and damage == "cut"
    plain_named_gz = not compress and rng.random() < 0.05
    suffix = ".jsonl.gz" if compress or plain_named_gz else ".jsonl"
    return FuzzFile(
        relative=f"dt={day}/part-{index:02d}-{fmt}{suffix}",
        format=fmt,
        lines=lines,
        tags=tags,
        compress=compress,
        keep_fraction=rng.uniform(0.05, 0.99) if cut else None,
        bad_crc=compress and damage == "crc",
        bom=fmt == CANONICAL and rng.random() < 0.1,
    )


def _bad(maker: RecordMaker, fmt: str, day: str, reason: str) -> bytes:
    if fmt == KSERVE:
        return maker.bad_kserve(day, reason)
    if fmt == SAGEMAKER:
        return maker.bad_sagemaker(day, reason)
    return maker.bad_canonical(day, reason)


def _valid(
    maker: RecordMaker,
    fmt: str,
    day: str,
    lines: list[bytes],
    tags: list[Tag],
    delivered: list[tuple[bytes, ...]],
) -> None:
    if fmt == KSERVE:
        event_id, request, response = maker.kserve_pair(day)
        lines += [request, response]
        tags += [Tag("valid", event_id), Tag(RESPONSE, event_id)]
        delivered.append((request, response))
        return
    line = maker.sagemaker(day) if fmt == SAGEMAKER else dump(maker.canonical(day))
    lines.append(line)
    tags.append(Tag("valid", _event_id(fmt, line)))
    delivered.append((line,))


def _redeliver(
    rng: random.Random,
    fmt: str,
    earlier: list[tuple[bytes, ...]],
    lines: list[bytes],
    tags: list[Tag],
) -> None:
    """An earlier day's record again (in a file of its own format), as at-least-once delivery
    does."""
    same = [d for d in earlier if _format_of(d) == fmt]
    if not same:
        return
    chosen = rng.choice(same)
    event_id = _event_id(fmt, chosen[0])
    lines += list(chosen)
    tags += [Tag("valid", event_id)] + [Tag(RESPONSE, event_id)] * (len(chosen) - 1)


def _format_of(delivery: tuple[bytes, ...]) -> str:
    if len(delivery) == 2:
        return KSERVE
    return SAGEMAKER if delivery[0].startswith(b'{"captureData"') else CANONICAL


def _event_id(fmt: str, line: bytes) -> str:
    record = json.loads(line)
    if fmt == SAGEMAKER:
        return record["eventMetadata"]["eventId"]
    return record["id"] if fmt == KSERVE else record["event_id"]


# ---------------------------------------------------------------- expectations


def readable(file: FuzzFile) -> tuple[list[tuple[int, bytes, Tag]], int | None]:
    """The lines ingest can read back, ``(line_no, text, tag)``, and the line number of a
    partial last line (a cut stream's), if any."""
    content = file.content()
    data = decompress_recoverable(content)[0] if file.compress else content
    if data.startswith(BOM):
        data = data[len(BOM) :]
    complete = data.count(b"\n")
    kept = [(i + 1, file.lines[i], file.tags[i]) for i in range(complete)]
    partial = data[data.rfind(b"\n") + 1 :] if file.keep_fraction is not None else b""
    cut_line = complete + 1 if partial.strip(b" \t\r\n") else None
    return kept, cut_line


def expected(archive: FuzzArchive) -> dict[str, FileOutcome]:
    """Per file (relative path), the counts and rejects ingest must report: first occurrence
    of an event id wins, by day, then file path, then line."""
    seen: set[str] = set()
    outcomes: dict[str, FileOutcome] = {}
    for file in sorted(archive.files, key=lambda f: f.relative):
        outcome = FileOutcome()
        kept, cut_line = readable(file)
        for line_no, _text, tag in kept:
            if tag.kind in (BLANK, RESPONSE):
                continue
            outcome.rows_read += 1
            if tag.kind == "reject":
                outcome.rejects[line_no] = tag.value
            elif tag.value in seen:
                outcome.duplicates += 1
            else:
                seen.add(tag.value)
                outcome.accepted += 1
        if cut_line is not None:
            outcome.rows_read += 1
            outcome.rejects[cut_line] = schema.TRUNCATED_LINE
        outcome.valid = [k for k in kept if k[2].kind in ("valid", RESPONSE)]
        outcomes[file.relative] = outcome
    return outcomes


def write_valid_only(archive: FuzzArchive, root: Path) -> Path:
    """The archive's readable valid lines (and their KServe responses) alone, at the same
    paths, uncut: what an audit of the good data would have seen."""
    outcomes = expected(archive)
    for file in archive.files:
        valid = outcomes[file.relative].valid
        clean = FuzzFile(
            file.relative,
            file.format,
            [text for _, text, _ in valid],
            [tag for _, _, tag in valid],
            file.compress,
        )
        path = root / file.relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(clean.content())
    return root


# ---------------------------------------------------------------- the property

_EVENT_COLUMNS = (
    "event_id, ts, day, user_id, session_id, source_ip, model_id, model_version, features, "
    "prediction, probabilities, status, latency_ms, partition_day"
)


def ingest(root: Path, db: Path | None = None) -> duckdb.DuckDBPyConnection:
    """Ingest an archive as ``stealwatch audit --model`` does (the model's width known)."""
    from audits.store import connect, ingest_days

    files, _ = scan_archive(root)
    by_day: dict[dt.date, list] = {}
    for file in files:
        by_day.setdefault(file.day, []).append(file)
    con = connect(db or ":memory:")
    for _ in ingest_days(con, sorted(by_day.items()), model_width=WIDTH):
        pass
    return con


def check(seeds: list[int], workdir: Path, max_lines: int = 100_000) -> dict[int, list[str]]:
    """The fuzz property for each seed's archive: the ways it failed (none when it held).

    The archives are ingested side by side in one store, each in a folder of its own (their
    event ids never collide, so none changes another's outcome): one ingest's fixed costs
    serve many archives. The valid-lines-only twins are ingested likewise.
    """
    archives = {seed: generate(seed, max_lines) for seed in seeds}
    for seed, archive in archives.items():
        archive.write(workdir / "fuzzed" / _folder(seed))
        write_valid_only(archive, workdir / "valid" / _folder(seed))
    try:
        con = ingest(workdir / "fuzzed")
        con_clean = ingest(workdir / "valid")
    except Exception as exc:  # the property is that nothing raises: report it as a failure
        return {seed: [f"ingest raised {type(exc).__name__}: {exc}"] for seed in seeds}
    try:
        files, rejects = _stored(con, workdir / "fuzzed")
        mine, theirs = _events(con, workdir / "fuzzed"), _events(con_clean, workdir / "valid")
    finally:
        con.close()
        con_clean.close()
    problems = {}
    for seed, archive in archives.items():
        folder = _folder(seed)
        found = _check_files(archive, folder, files, rejects)
        if mine.get(folder, []) != theirs.get(folder, []):
            found.append(
                f"accepted events differ from the valid lines' own audit "
                f"({len(mine.get(folder, []))} against {len(theirs.get(folder, []))})"
            )
        problems[seed] = found
    return problems


def _folder(seed: int) -> str:
    return f"archive-{seed:06d}"


def _stored(
    con: duckdb.DuckDBPyConnection, root: Path
) -> tuple[dict[str, tuple], dict[str, dict[int, str]]]:
    """Custody counts and rejects by file path (relative to ``root``)."""
    files = {
        Path(path).relative_to(root).as_posix(): tuple(counts)
        for path, *counts in con.sql(
            "SELECT path, rows_read, accepted, duplicates, rejected FROM source_files"
        ).fetchall()
    }
    rejects: dict[str, dict[int, str]] = {}
    for path, line_no, reason in con.sql(
        "SELECT source_file, line_no, reason FROM rejected_events"
    ).fetchall():
        rejects.setdefault(Path(path).relative_to(root).as_posix(), {})[line_no] = reason
    return files, rejects


def _check_files(
    archive: FuzzArchive,
    folder: str,
    files: dict[str, tuple],
    rejects: dict[str, dict[int, str]],
) -> list[str]:
    problems = []
    for relative, want in expected(archive).items():
        path = f"{folder}/{relative}"
        got = files.get(path)
        counts = (want.rows_read, want.accepted, want.duplicates, want.rejected)
        if got is None:
            problems.append(f"{relative}: no custody record")
            continue
        if got[0] != got[1] + got[2] + got[3]:
            problems.append(f"{relative}: rows_read {got[0]} != the sum of {got[1:]}")
        if got != counts:
            problems.append(f"{relative}: read/accepted/dup/rejected {got}, want {counts}")
        found = rejects.get(path, {})
        wrong = {n: (found.get(n), r) for n, r in want.rejects.items() if found.get(n) != r}
        extra = sorted(set(found) - set(want.rejects))
        if wrong or extra:
            sample = dict(list(wrong.items())[:3])
            problems.append(
                f"{relative}: {len(wrong)} rejects with another reason or none (line: "
                f"(got, want) {sample}), {len(extra)} unexpected rejects {extra[:3]}"
            )
    return problems


def _events(con: duckdb.DuckDBPyConnection, root: Path) -> dict[str, list[tuple]]:
    """Accepted events by archive folder, comparable across roots (paths relative)."""
    start = len(str(root)) + 2  # 1-based, past the root's slash
    rows = con.sql(
        f"SELECT source_file[{start}:] AS relative, {_EVENT_COLUMNS} FROM events ORDER BY ALL"
    ).fetchall()
    by_folder: dict[str, list[tuple]] = {}
    for row in rows:
        by_folder.setdefault(row[0].split("/", 1)[0], []).append(row)
    return by_folder
