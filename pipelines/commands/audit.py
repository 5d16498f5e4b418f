"""``stealwatch audit``: ingest and audit an archive's days through the Dagster assets."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from audits.catalog import scan_archive
from audits.errors import InputError
from audits.preflight import check_audit_inputs
from pipelines.commands.outputs import database_file, free_store, hold_store, output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="ingest an archive of prediction-API logs and audit it",
        description="Materialise the audit assets (the same the daily schedule runs) for every "
        "day present in the archive, or the range given.",
    )
    parser.add_argument("--logs", required=True, help="archive root folder (or one file)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--model",
        help="served model (.skops default; .onnx; pickle with "
        "--trust-pickle): its input width checks features",
    )
    parser.add_argument("--reference", help="reference inputs (Parquet/CSV) of legitimate use")
    parser.add_argument("--train", help="the model's training data, for the privacy audit")
    parser.add_argument("--holdout", help="held-out data, for the privacy audit")
    parser.add_argument("--label-column", default="label", help="label column (default: label)")
    parser.add_argument(
        "--canaries",
        help="canary registry (TOML): vectors and rules no legitimate client sends; "
        "any key that sends one is an incident",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickle/joblib model (runs code from the file)",
    )
    parser.add_argument(
        "--format",
        dest="log_format",
        default="auto",
        choices=["auto", "canonical", "sagemaker", "kserve"],
        help="log format (default: auto, detected per file)",
    )
    parser.add_argument(
        "--gateway-logs",
        help="API Gateway access logs (JSON lines) that hold "
        "the principal of SageMaker captures, joined on request id",
    )
    parser.add_argument("--mapping", help="TOML field mapping for a team's own JSON logs")
    parser.add_argument(
        "--principal-header",
        default="X-Api-Key-Id",
        help="KServe metadata header naming the caller (default: X-Api-Key-Id)",
    )
    parser.add_argument(
        "--ip-header",
        default="X-Forwarded-For",
        help="KServe metadata header with the client IP (default: X-Forwarded-For)",
    )
    parser.add_argument(
        "--session-header",
        default="X-Session-Id",
        help="KServe metadata header with the session id, when forwarded (default: X-Session-Id)",
    )
    parser.add_argument("--start", help="first UTC day to audit, YYYY-MM-DD")
    parser.add_argument("--end", help="last UTC day to audit, YYYY-MM-DD")
    parser.add_argument("--db", help="DuckDB file (default: OUT/stealwatch.duckdb)")
    parser.add_argument(
        "--lake",
        help="store day partitions as Parquet under this path or s3://bucket/prefix "
        "(shared by steps on different hosts) instead of the DuckDB file",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="with --lake: processes for the day partitions' ingest (default: 1, in-process)",
    )
    parser.add_argument(
        "--duckdb-memory",
        metavar="SIZE",
        help="DuckDB's memory limit, its page cache included, e.g. 512MB or 4GB "
        "(default: $STEALWATCH_DUCKDB_MEMORY, else 1GB; more spills to disk)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="allow replacing a stored day whose stored files are absent from this archive "
        "(without it the audit refuses: it would delete that day's events and custody rows)",
    )
    parser.add_argument(
        "--fp-budget",
        type=float,
        default=0.01,
        help="share of legitimate keys the detection threshold may flag (default: 0.01)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=run)


def parse_day(value: str | None, flag: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{flag} must be a date as YYYY-MM-DD, got {value!r}") from None


def audit_days(logs: str, start: dt.date | None, end: dt.date | None) -> tuple[dt.date, dt.date]:
    """The day range to audit: the archive's days, narrowed by ``start``/``end``."""
    if start and end and start > end:
        raise InputError(f"--start {start} is after --end {end}")
    files, _skipped = scan_archive(logs)
    if not files:
        raise InputError(f"no log files (.jsonl, .ndjson, .json[.gz], .parquet) under {logs}")
    days = sorted({f.day for f in files})
    inside = [d for d in days if (start is None or d >= start) and (end is None or d <= end)]
    if not inside:
        raise InputError(
            f"no log files for {start or days[0]}..{end or days[-1]} in {logs} "
            f"(the archive holds {days[0]}..{days[-1]})"
        )
    return start or inside[0], end or inside[-1]


def run(args: argparse.Namespace) -> int:
    from audits import connection

    if args.duckdb_memory is not None:
        # set for this process and the step processes it starts
        try:
            os.environ[connection.MEMORY_ENV] = connection.checked_size(args.duckdb_memory)
        except InputError as exc:
            raise InputError(f"--duckdb-memory: {exc}") from None
    connection.memory_limit()  # fail now on a bad size, from the flag or the environment
    if not 0.0 < args.fp_budget < 0.5:
        raise InputError(f"--fp-budget must be above 0 and below 0.5, got {args.fp_budget}")
    check_audit_inputs(  # the same checks the first asset runs, before any work here
        logs=args.logs,
        mapping=args.mapping,
        canaries=args.canaries,
        model=args.model,
        trust_pickle=args.trust_pickle,
        gateway_logs=args.gateway_logs,
        reference=args.reference,
        train=args.train,
        holdout=args.holdout,
    )
    start, end = audit_days(
        args.logs, parse_day(args.start, "--start"), parse_day(args.end, "--end")
    )
    out = output_folder(args.out)
    if not args.lake:  # before the slow imports below: a busy or bad --db fails at once
        free_store(database_file(args.db or str(out / "stealwatch.duckdb"), out))
    from assets.resources import AuditConfig
    from pipelines.runner import show_progress

    audit = AuditConfig(
        logs=args.logs,
        out_dir=str(out),
        log_format=args.log_format,
        gateway_logs=args.gateway_logs,
        mapping=args.mapping,
        principal_header=args.principal_header,
        ip_header=args.ip_header,
        session_header=args.session_header,
        model=args.model,
        reference=args.reference,
        train=args.train,
        holdout=args.holdout,
        canaries=args.canaries,
        label_column=args.label_column,
        trust_pickle=args.trust_pickle,
        start=start.isoformat(),
        end=end.isoformat(),
        fp_budget=args.fp_budget,
    )
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and not args.lake:
        raise InputError("--workers needs --lake: a DuckDB file takes one writer at a time")
    if args.lake:
        from audits.lake import Lake

        Lake(args.lake)  # fail now on a lake that cannot be opened
    database = args.db or (":memory:" if args.lake else str(out / "stealwatch.duckdb"))
    show_progress(not args.quiet)
    if args.lake:
        _prepare(out)
        _run(audit, database, start, end, args)
    else:
        if not Path(database).parent.exists():
            _make_folder(out)  # the default database's folder
        with hold_store(database) as con:  # a second run on this file fails here, at once
            if not args.replace:
                _refuse_silent_replacement(con, audit, start, end, database)
            _prepare(out)
            _run(audit, database, start, end, args)
    summary = json.loads((out / "ingest_summary.json").read_text())
    print(
        f"ingested {summary['files']} files: {summary['rows_read']} records read, "
        f"{summary['accepted']} accepted, {summary['duplicates']} duplicates, "
        f"{sum(summary['rejected'].values())} rejected",
        file=sys.stderr,
    )
    if (out / "risk_register.csv").exists():
        print(
            f"risk register: {out / 'risk_register.csv'} "
            f"(attack-defence matrix: {out / 'attack_defence_matrix.csv'})",
            file=sys.stderr,
        )
    from reports.pages import closing_summary

    line = closing_summary(database, (start, end), out, lake=args.lake)
    print(f"stealwatch: {line}", file=sys.stderr)
    for name in ("report.html", "ingest_summary.json"):
        if (out / name).exists():
            print(out / name)
            break
    return 0


def _run(audit, database: str, start: dt.date, end: dt.date, args: argparse.Namespace) -> None:
    from pipelines.runner import run_audit

    where = args.lake or database
    print(f"stealwatch: auditing {start}..{end} of {args.logs} into {where}", file=sys.stderr)
    run_audit(audit, database, start, end, lake=args.lake, workers=args.workers)


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror}") from None


def _prepare(out: Path) -> None:
    """The output folder, created, without an earlier run's outputs (``STALE_OUTPUTS``)."""
    from pipelines.runner import remove_stale_outputs

    _make_folder(out)
    remove_stale_outputs(out)


def _refuse_silent_replacement(con, audit, start: dt.date, end: dt.date, database: str) -> None:
    """Refuse, as one line, to re-ingest a stored day whose stored files this archive lacks:
    that would delete their events and custody rows. A rerun of the same archive passes."""
    from collections import defaultdict

    from audits import store
    from audits.formats import load_mapping

    mapping = load_mapping(audit.mapping) if audit.mapping else None
    files, _skipped = scan_archive(audit.logs, audit.log_format, mapping)
    by_day = defaultdict(list)
    for file in files:
        if start <= file.day <= end:
            by_day[file.day].append(file)
    absent = store.absent_stored_files(con, by_day)
    if absent:
        day, path = absent[0]
        more = f" (and {len(absent) - 1} more stored files)" if len(absent) > 1 else ""
        raise InputError(
            f"{database} holds day {day} from {path}, which this archive lacks{more}: "
            "auditing would replace that day's events and custody rows; pass --replace to "
            "replace them, or audit into another --db"
        )
