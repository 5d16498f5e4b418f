"""Settings of every stealwatch DuckDB connection: the memory limit (from the environment,
checked) and the session settings the audit relies on."""

from __future__ import annotations

import os
import re

import duckdb

from audits.errors import InputError

MEMORY_LIMIT = "1GB"
"""DuckDB's memory, its cache of pages read included, unless ``STEALWATCH_DUCKDB_MEMORY``
says otherwise. DuckDB's own default (80% of RAM) let the cache grow with the store: ingesting
the 11.4M-event year peaked at 1,824 MiB with it, 1,278 MiB with 1GB and 817 MiB with 512MB
(77, 83 and 83 s; ``benchmarks/ingest.py``). Work that outgrows the limit spills to disk."""


MEMORY_ENV = "STEALWATCH_DUCKDB_MEMORY"


_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def memory_limit() -> str:
    """The configured DuckDB memory limit (``MEMORY_ENV``, else :data:`MEMORY_LIMIT`)."""
    return checked_size(os.environ.get(MEMORY_ENV, "").strip() or MEMORY_LIMIT)


def checked_size(value: str) -> str:
    """``value`` if DuckDB reads it as a memory size, else a one-line :class:`InputError`."""
    if not _SIZE.fullmatch(value.strip()):
        raise InputError(
            f"the DuckDB memory limit ({MEMORY_ENV}) must be a size such as 1GB or 512MiB, "
            f"got {value!r}"
        )
    return value.strip()


def configure(con: duckdb.DuckDBPyConnection) -> None:
    """Settings of every stealwatch connection: its memory limit, no progress bar (progress
    is ours to print), and insertion order kept: ingest turns that off for its own writes, and
    settings are global to a database that stays open across a run's connections."""
    con.execute(f"SET memory_limit = '{memory_limit()}'")  # checked against _SIZE
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = true")
