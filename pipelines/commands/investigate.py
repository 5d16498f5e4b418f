"""``stealwatch investigate``: the incident page for any user and date range."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audits.errors import InputError
from pipelines.commands.audit import parse_day
from pipelines.commands.outputs import output_folder, store_error


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "investigate",
        help="write the drill-down page of one user over a date range",
        description="Render the incident page for any user (flagged or not) from an audit's "
        "DuckDB file.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="the audit's DuckDB file")
    where.add_argument("--lake", help="the audit's lake (path or s3://bucket/prefix)")
    parser.add_argument("--user", required=True, help="user id (API key, principal)")
    parser.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: the user's first)")
    parser.add_argument("--end", help="last UTC day, YYYY-MM-DD (default: the user's last)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    start, end = parse_day(args.start, "--start"), parse_day(args.end, "--end")
    if start and end and start > end:
        raise InputError(f"--start {start} is after --end {end}")
    output_folder(args.out)
    with _store(args) as (con, name):
        span = con.sql(
            "SELECT min(day), max(day) FROM events WHERE user_id = ?", params=[args.user]
        ).fetchall()[0]
        if span[0] is None:
            raise InputError(f"user {args.user!r} has no events in {name}")
        return _write_page(con, args, user_range(start, end, span))


def user_range(
    start: dt.date | None, end: dt.date | None, span: tuple[dt.date, dt.date]
) -> tuple[dt.date, dt.date]:
    """``start..end``, a bound not given being the user's first or last day (``span``); a
    range that ends before it starts is a one-line :class:`InputError`."""
    if start and not end and start > span[1]:
        raise InputError(
            f"--start {start} is after the user's last day {span[1]} (the default --end)"
        )
    if end and not start and end < span[0]:
        raise InputError(
            f"--end {end} is before the user's first day {span[0]} (the default --start)"
        )
    return start or span[0], end or span[1]


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def page_file_name(user: str) -> str:
    """The page's file name: the id made safe for a file name (readable, at most 40
    characters) and 12 hex digits of the exact id's sha256, so that two ids never share a
    page, even ones that differ only in case or in characters a file name cannot hold."""
    readable = _UNSAFE.sub("_", user)[:40].strip("._") or "id"
    digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"user-{readable}-{digest}.html"


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[object, str]]:
    """A read connection to the audit's DuckDB file or lake, and its name for messages."""
    import duckdb

    from audits import store
    from reports import data

    if args.lake:
        from audits.lake import Lake, session

        lake = Lake(args.lake)
        if not lake.manifests():
            raise InputError(f"{args.lake} holds no ingested day (no _manifests)")
        with session(lake) as con:
            yield con, args.lake
        return
    if not Path(args.db).is_file():
        raise InputError(f"database not found: {args.db}")
    try:
        con = duckdb.connect(args.db, read_only=True)
    except duckdb.Error as exc:
        raise InputError(store_error(args.db, exc)) from None
    try:
        store.configure(con)
        if not data.has_table(con, "events"):
            raise InputError(f"{args.db} is not a stealwatch database (no events table)")
        yield con, args.db
    finally:
        con.close()


def _write_page(con, args: argparse.Namespace, window) -> int:
    from reports import data, pages

    out = Path(args.out)
    path = pages.write_subject_page(
        con,
        window,
        out / page_file_name(args.user),
        users=[args.user],
        title="Investigation",
        scores=data.load_scores(None, con, window),
        audit_dir=Path(args.db).parent if args.db else None,  # its overview, when there
    )
    print(path)
    if not pages.has_events(con, [args.user], window):
        print(
            f"stealwatch: note: {args.user!r} sent nothing in {window[0]}..{window[1]}",
            file=sys.stderr,
        )
    return 0
