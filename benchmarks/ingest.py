"""Ingest throughput against DuckDB's own bare ``read_json`` load of the same files.

    python benchmarks/ingest.py                       # simulate >= 2M events, then measure
    python benchmarks/ingest.py --archive PATH/logs   # measure an existing archive
    python benchmarks/ingest.py --formats             # also SageMaker+gateway and KServe logs

Prints rows/s for stealwatch's ingest (validation, quarantine, dedup, custody), the bare load's
time, their ratio, and the peak RSS of each (VmHWM: ru_maxrss would carry over the parent's
peak across exec), each measured in a fresh process. Peak RSS is also
measured for the first day alone, to show memory follows a day's data, not the archive's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints a JSON dict as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


_INGEST = """
import json, sys, time, datetime as dt
from audits import store
from audits.catalog import scan_archive
from audits.formats import ReaderOptions, load_gateway
archive, db, days, gateway = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
reader = ReaderOptions(gateway=load_gateway(gateway)[0] if gateway != "-" else None)
files, _ = scan_archive(archive)
all_days = sorted({f.day for f in files})[: days or None]
con = store.connect(db)
plan = [(day, [f for f in files if f.day == day]) for day in all_days]
results = store.ingest_days(con, plan, reader=reader)
rows = sum(result.total("rows_read") for result in results)
seconds = time.perf_counter() - start
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "peak_mib": peak, "days": len(all_days)}))
"""

_BARE = """
import json, sys, time, duckdb
archive, db = sys.argv[1], sys.argv[2]
con = duckdb.connect(db)
start = time.perf_counter()
con.execute(f"CREATE TABLE raw AS SELECT * FROM read_json('{archive}/**/*.jsonl.gz', "
            "format='newline_delimited')")
rows = con.sql("SELECT count(*) FROM raw").fetchall()[0][0]
seconds = time.perf_counter() - start
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "peak_mib": peak}))
"""


def simulate(out: Path, users: int, days: int, seed: int) -> Path:
    from audits.simulation import simulate as run_simulation

    run_simulation(out, seed=seed, days=days, users=users)
    return out / "logs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="existing archive (default: simulate one)")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument(
        "--formats",
        action="store_true",
        help="also time SageMaker+gateway and KServe logs of the same traffic",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.archive:
            archive = Path(args.archive)
        else:
            started = time.perf_counter()
            archive = simulate(work / "sim", args.users, args.days, args.seed)
            print(f"simulated archive in {time.perf_counter() - started:.0f} s", flush=True)
        files = sorted(archive.rglob("*.jsonl.gz"))
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"archive: {archive} ({len(files)} files, {size:.0f} MiB gzip)", flush=True)
        bare = _child(_BARE, str(archive), str(work / "bare.duckdb"))
        ours = _child(_INGEST, str(archive), str(work / "ours.duckdb"), "0", "-")
        one_day = _child(_INGEST, str(archive), str(work / "one.duckdb"), "1", "-")
        formats = _formats(archive, work) if args.formats else {}
    ratio = ours["seconds"] / bare["seconds"]
    print(f"events (records read): {ours['rows']:,} over {ours['days']} days")
    print(
        f"stealwatch ingest: {ours['seconds']:.1f} s, "
        f"{ours['rows'] / ours['seconds']:,.0f} rows/s, peak RSS {ours['peak_mib']:.0f} MiB"
    )
    print(
        f"duckdb bare read_json: {bare['seconds']:.1f} s, "
        f"{bare['rows'] / bare['seconds']:,.0f} rows/s, peak RSS {bare['peak_mib']:.0f} MiB"
    )
    print(f"ratio (stealwatch / bare): {ratio:.2f}  (target <= 1.5)")
    print(
        f"peak RSS, first day alone: {one_day['peak_mib']:.0f} MiB "
        f"({one_day['rows']:,} records) vs whole archive {ours['peak_mib']:.0f} MiB"
    )
    for name, result in formats.items():
        print(
            f"{name}: {result['rows']:,} events in {result['seconds']:.1f} s, "
            f"{result['rows'] / result['seconds']:,.0f} events/s, "
            f"{result['seconds'] / ours['seconds']:.2f}x the canonical ingest (target <= 2)"
        )


def _formats(archive: Path, work: Path) -> dict[str, dict]:
    """The same traffic as SageMaker capture + gateway logs and as KServe CloudEvents."""
    from audits.exporters import export_kserve, export_sagemaker

    exported = work / "formats"
    started = time.perf_counter()
    export_sagemaker(archive, exported)
    export_kserve(archive, exported)
    print(f"exported both formats in {time.perf_counter() - started:.0f} s", flush=True)
    return {
        "SageMaker + gateway": _child(
            _INGEST,
            str(exported / "sagemaker"),
            str(work / "sm.duckdb"),
            "0",
            str(exported / "gateway"),
        ),
        "KServe": _child(_INGEST, str(exported / "kserve"), str(work / "ks.duckdb"), "0", "-"),
    }


if __name__ == "__main__":
    main()
