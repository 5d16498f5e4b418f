"""Output paths checked before any work: a folder a command cannot write, or a database it
cannot open, fails as one line (exit 2) at the start, not as a traceback after the run.
The checks create nothing."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from audits import store
from audits.errors import InputError

STORE_CONFIG = {"custom_user_agent": "dagster"}
"""The configuration ``dagster_duckdb.DuckDBResource`` opens the job's connections with: a
connection held with the same one shares its database within the process."""


def output_folder(path: str, flag: str = "--out") -> Path:
    """``path`` as a folder that exists, or can be created, and can be written; else a one-line
    :class:`InputError`. Only probes (an unnamed temporary file), creates nothing."""
    folder = Path(path)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        where = "is not a folder" if existing == folder else f"is below {existing}, not a folder"
        raise InputError(f"{flag} {path} {where}")
    problem = _write_problem(existing)
    if problem:
        raise InputError(f"{flag} {path}: cannot write in {existing} ({problem})")
    return folder


def database_file(path: str, out: Path, flag: str = "--db") -> Path:
    """``path`` as a DuckDB file to open or create: not a folder, in a folder that exists and
    can be written (DuckDB writes its WAL beside the file), or that is ``out``, created first."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"{flag} {path} is a folder, not a DuckDB file")
    folder = file.parent
    if folder.resolve() == out.resolve() and not folder.exists():
        return file
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: the folder {folder} does not exist")
    problem = _write_problem(folder)
    if problem:
        raise InputError(f"{flag} {path}: cannot write in {folder} ({problem})")
    return file


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a dangling link counts as existing)."""
    while not (path.exists() or path.is_symlink()) and path.parent != path:
        path = path.parent
    return path


def _write_problem(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (``None`` when it can). A probe, since
    permission bits say nothing for root on a read-only or virtual file system."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


def store_error(database: str | Path, exc: Exception) -> str:
    """One line saying why the DuckDB file ``database`` cannot be opened."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    holder = _LOCK_HOLDER.search(text)
    if holder:
        return (
            f"{database} is in use by another process (PID {holder['pid']}), e.g. an audit "
            "still running: wait for it to finish or use another --db"
        )
    return f"cannot open the database {database}: {text}"


def free_store(database: str | Path) -> None:
    """Fail at once, as one line, when the DuckDB file ``database`` cannot be opened for
    writing (held by another process, not a DuckDB file). A cheap check before a run's slow
    imports; the run then holds the file (:func:`hold_store`). Creates nothing."""
    if Path(database).is_file():
        with hold_store(database):
            pass


@contextmanager
def hold_store(database: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The DuckDB file opened for a whole run. DuckDB lets one process write a file: a second
    run on the same file fails here at once, as one line, instead of retrying the job's
    connections for ~100 s and failing inside it. The job's connections, opened in this
    process with :data:`STORE_CONFIG`, share this one's database."""
    try:
        con = duckdb.connect(str(database), config=STORE_CONFIG)
    except duckdb.Error as exc:
        raise InputError(store_error(database, exc)) from None
    try:
        store.configure(con)
        yield con
    finally:
        con.close()
