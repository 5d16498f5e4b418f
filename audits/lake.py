"""The lake: a storage mode in which every day partition is Parquet files under a shared root
(a local path or ``s3://bucket/prefix``), so steps on different hosts share no DuckDB file.

Layout under the root::

    events/day=2026-11-20/<run>.parquet           one file per table and partition,
    rejected_events/day=2026-11-20/<run>.parquet  written by the run that ingested it
    source_files/day=2026-11-20/<run>.parquet
    user_day/day=2026-11-20/<run>.parquet         per-user, per-day partial aggregates
    _manifests/day=2026-11-20.json                which files make up the partition
    tables/<name>.parquet                         window-level outputs (scores, incidents, ...)

A partition is committed by writing its manifest last (one object put, or a rename on a local
disk), so readers see either the previous partition or the new one, never half of one; the
files the manifest no longer names are then deleted. Day partitions are independent: ingest
of different days can run in parallel processes or pods. Cross-day duplicates (a record
redelivered in a later day's files) are resolved afterwards by :func:`resolve_cross_day`:
the earliest day keeps the record, as the sequential DuckDB ingest does.

Object storage goes through ``pyarrow.fs`` (credentials and ``AWS_ENDPOINT_URL`` from the
environment, or ``?endpoint_override=...&scheme=http`` in the URI), and DuckDB scans the
Parquet files as Arrow datasets, so no DuckDB extension is downloaded at run time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from audits import schema, store
from audits.catalog import ArchiveFile
from audits.errors import InputError
from audits.formats import ReaderOptions

DAY_TABLES = ("events", "rejected_events", "source_files", "user_day")
ROW_GROUP_ROWS = 8_192
"""Rows per Parquet row group. A day's events are written sorted by user, so a read of a
batch of users (a range of user ids) skips the row groups of everyone else by their
statistics instead of decoding the whole day (features of 1.66M events over 60 days: 8
batches read in 5.1 s, 9.8 s with one row group per day)."""
MANIFESTS = "_manifests"
TABLES = "tables"
_DDL = {
    "events": schema.EVENTS_DDL,
    "rejected_events": schema.REJECTED_DDL,
    "source_files": schema.SOURCE_FILES_DDL,
    "user_day": schema.USER_DAY_DDL,
}


class Lake:
    """A lake root: its filesystem, its day manifests and its window-level tables."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        target = uri if "://" in uri else str(Path(uri).expanduser().resolve())
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(target)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot open the lake {uri}: {exc}") from None
        self.local = self.fs.type_name == "local"
        if self.local:
            self.fs.create_dir(self.base, recursive=True)

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    # ------------------------------------------------------------ day partitions

    def manifest(self, day: dt.date) -> dict | None:
        return self._read_json(self.path(MANIFESTS, f"day={day.isoformat()}.json"))

    def manifests(self) -> list[dict]:
        selector = pafs.FileSelector(self.path(MANIFESTS), allow_not_found=True)
        names = sorted(info.path for info in self.fs.get_file_info(selector) if info.is_file)
        return [m for m in (self._read_json(name) for name in names) if m]

    def write_day(
        self, day: dt.date, tables: dict[str, pa.Table], *, run_id: str, input_width: int | None
    ) -> None:
        """Write a day's tables, then commit them with the day's manifest, then delete the
        files of the partition's previous commit."""
        previous = self.manifest(day)
        tag = f"{run_id}-{uuid.uuid4().hex[:8]}"
        files: dict[str, str] = {}
        try:
            for name in DAY_TABLES:
                path = self.path(name, f"day={day.isoformat()}", f"{tag}.parquet")
                self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                files[name] = path
                pq.write_table(
                    tables[name],
                    path,
                    filesystem=self.fs,
                    compression="zstd",
                    row_group_size=ROW_GROUP_ROWS,
                )
            manifest = {
                "day": day.isoformat(),
                "run_id": run_id,
                "files": files,
                "input_width": input_width,
                "rows": {name: tables[name].num_rows for name in DAY_TABLES},
                "committed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "committed_by": f"{socket.gethostname()}:{os.getpid()}",
            }
            self._write_json(self.path(MANIFESTS, f"day={day.isoformat()}.json"), manifest)
        except BaseException:
            self._delete_quietly(files.values())  # the previous commit stays in force
            raise
        stale = [p for n, p in (previous or {}).get("files", {}).items() if p != files.get(n)]
        self._delete_quietly(stale)

    def dataset(self, table: str, days: Sequence[dt.date] | None = None) -> ds.Dataset | None:
        """The committed files of a day table (of ``days``, else every day) as one dataset."""
        wanted = {d.isoformat() for d in days} if days is not None else None
        paths = [
            m["files"][table]
            for m in self.manifests()
            if table in m.get("files", {}) and (wanted is None or m["day"] in wanted)
        ]
        if not paths:
            return None
        return ds.dataset(paths, format="parquet", filesystem=self.fs)

    def input_width(self) -> int | None:
        """The input width the committed days agree on; an error when they disagree."""
        widths = {m["input_width"] for m in self.manifests() if m.get("input_width")}
        if len(widths) > 1:
            raise InputError(
                f"the lake's days hold features of different widths {sorted(widths)}: "
                "pass --model so every day is checked against the model's input width"
            )
        return widths.pop() if widths else None

    # ------------------------------------------------------------ window tables

    def table_names(self) -> list[str]:
        selector = pafs.FileSelector(self.path(TABLES), allow_not_found=True)
        return sorted(
            info.base_name.removesuffix(".parquet")
            for info in self.fs.get_file_info(selector)
            if info.is_file and info.base_name.endswith(".parquet")
        )

    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(self.path(TABLES, f"{name}.parquet"), filesystem=self.fs)

    def write_table(self, name: str, table: pa.Table) -> None:
        target = self.path(TABLES, f"{name}.parquet")
        self.fs.create_dir(self.path(TABLES), recursive=True)
        if not self.local:  # one object put: readers see the old or the new object
            pq.write_table(table, target, filesystem=self.fs)
            return
        partial = f"{target}.{uuid.uuid4().hex}.partial"
        pq.write_table(table, partial, filesystem=self.fs)
        self.fs.move(partial, target)

    # ------------------------------------------------------------ helpers

    def _delete_quietly(self, paths) -> None:
        for path in paths:
            with suppress(OSError):  # never written, or already gone
                self.fs.delete_file(path)

    def _read_json(self, path: str) -> dict | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None

    def _write_json(self, path: str, data: dict) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        body = (json.dumps(data, indent=1) + "\n").encode()
        if not self.local:
            with self.fs.open_output_stream(path) as stream:
                stream.write(body)
            return
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        with self.fs.open_output_stream(partial) as stream:
            stream.write(body)
        self.fs.move(partial, path)


# ---------------------------------------------------------------- ingest


def ingest_day(
    lake: Lake,
    day: dt.date,
    files: Sequence[ArchiveFile],
    *,
    model_width: int | None = None,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
    reader: ReaderOptions | None = None,
) -> store.DayResult:
    """Ingest one day partition into the lake: the DuckDB ingest (validation, quarantine,
    within-day dedup, custody) in a scratch database, then the day's tables as Parquet."""
    run_id = run_id or uuid.uuid4().hex
    con = duckdb.connect()
    try:
        store.ensure_schema(con)
        result = store.ingest_day(
            con,
            day,
            files,
            model_width=model_width or lake.input_width(),
            run_id=run_id,
            progress=progress,
            reader=reader,
        )
        tables = {name: _scratch_table(con, name) for name in DAY_TABLES}
    finally:
        con.close()
    lake.write_day(day, tables, run_id=run_id, input_width=result.input_width)
    return result


def _scratch_table(con: duckdb.DuckDBPyConnection, name: str) -> pa.Table:
    order = " ORDER BY user_id, ts, event_id" if name == "events" else ""
    return con.sql(f"SELECT * FROM {name}{order}").to_arrow_table()


def resolve_cross_day(lake: Lake, run_id: str) -> dict[dt.date, int]:
    """Drop records that an earlier day partition already holds (a redelivery a day late):
    the earliest day keeps each event_id. Rewrites only the days that lose records and
    counts those records as duplicates of their file. Returns the records dropped per day."""
    events = lake.dataset("events")
    if events is None:
        return {}
    con = duckdb.connect()
    try:
        con.register("lake_events", events)
        later = con.sql(
            "SELECT partition_day, count(*) FROM (SELECT event_id, partition_day, "
            "min(partition_day) OVER (PARTITION BY event_id) AS first_day "
            "FROM lake_events) WHERE partition_day > first_day GROUP BY 1 ORDER BY 1"
        ).fetchall()
        for day, _count in later:
            _drop_later_copies(con, lake, day, run_id)
    finally:
        con.close()
    return {day: int(count) for day, count in later}


def _drop_later_copies(con: duckdb.DuckDBPyConnection, lake: Lake, day: dt.date, run_id: str):
    manifest = lake.manifest(day)
    earlier = lake.dataset("events", [d for d in _committed_days(lake) if d < day])
    con.register("earlier_events", earlier)
    con.register("day_events", ds.dataset(manifest["files"]["events"], filesystem=lake.fs))
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE kept AS SELECT * FROM day_events d WHERE NOT EXISTS "
            "(SELECT 1 FROM earlier_events e WHERE e.event_id = d.event_id)"
        )
        dropped = dict(
            con.sql(
                "SELECT source_file, count(*) FROM day_events d WHERE EXISTS "
                "(SELECT 1 FROM earlier_events e WHERE e.event_id = d.event_id) GROUP BY 1"
            ).fetchall()
        )
    finally:
        con.unregister("earlier_events")
        con.unregister("day_events")
    custody = pq.read_table(manifest["files"]["source_files"], filesystem=lake.fs)
    files = custody.to_pylist()
    for row in files:
        moved = dropped.get(row["path"], 0)
        row["accepted"] -= moved
        row["duplicates"] += moved
    tables = {
        "events": con.sql("SELECT * FROM kept").to_arrow_table(),
        "rejected_events": pq.read_table(manifest["files"]["rejected_events"], filesystem=lake.fs),
        "source_files": pa.Table.from_pylist(files, schema=custody.schema),
        "user_day": con.sql(store.user_day_select("kept")).to_arrow_table(),
    }
    con.execute("DROP TABLE kept")
    lake.write_day(day, tables, run_id=run_id, input_width=manifest.get("input_width"))


def _committed_days(lake: Lake) -> list[dt.date]:
    return sorted(dt.date.fromisoformat(m["day"]) for m in lake.manifests())


# ---------------------------------------------------------------- sessions


@contextmanager
def session(lake: Lake, database: str = ":memory:") -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection over the lake: the day tables as views over their Parquet files,
    the window-level tables loaded; on a clean exit the tables the caller created or changed
    are written back (only those: steps on other hosts may be writing other tables)."""
    con = duckdb.connect(database)
    store.configure(con)
    # an in-memory database spills past its memory limit to ./.tmp: to a private folder instead
    spill = (
        tempfile.TemporaryDirectory(prefix="stealwatch-spill-") if database == ":memory:" else None
    )
    if spill is not None:
        con.execute(f"SET temp_directory = '{spill.name}'")  # a mkdtemp path: no quote in it
    loaded: dict[str, pa.Table] = {}
    try:
        for name in DAY_TABLES:
            dataset = lake.dataset(name)
            if dataset is None:
                con.execute(_DDL[name])  # nothing committed yet: an empty table
            else:
                con.register(f"_lake_{name}", dataset)
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM _lake_{name}")
        for name in lake.table_names():
            loaded[name] = lake.read_table(name)
            con.register("_loaded", loaded[name])
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _loaded')
            con.unregister("_loaded")
        yield con
        for name, table in _changed_tables(con, loaded).items():
            lake.write_table(name, table)
    finally:
        con.close()
        if spill is not None:
            spill.cleanup()


def _changed_tables(con: duckdb.DuckDBPyConnection, loaded: dict[str, pa.Table]):
    names = [
        name
        for (name,) in con.sql(
            "SELECT table_name FROM duckdb_tables() WHERE NOT temporary AND schema_name = 'main'"
        ).fetchall()
        if name not in DAY_TABLES
    ]
    changed = {}
    for name in names:
        table = con.sql(f'SELECT * FROM "{name}"').to_arrow_table()
        if name not in loaded or not table.equals(loaded[name]):
            changed[name] = table
    return changed
