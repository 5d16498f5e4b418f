"""Ingest of an archive's day partitions into the DuckDB file and into the lake, in one process
and with day partitions in parallel processes (Dagster's multiprocess executor).

    python benchmarks/lake.py SIM_DIR [--workers 2] [--lake PATH|s3://...]

Materialises only the ``events`` asset (with its accounting check) of the daily-audit job over
every day of ``SIM_DIR/logs``, each mode in a fresh process, and prints wall seconds, events/s
and the parent's peak RSS (VmHWM; step processes of the multiprocess run are not included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time, datetime as dt, warnings
warnings.simplefilter("ignore")
from dagster import AssetKey, DagsterInstance, execute_job, reconstructable
from audits.catalog import scan_archive
from pipelines import runner
from pipelines import definitions
from assets.resources import AuditConfig
sim, out, lake, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lake = None if lake == "-" else lake
files, _ = scan_archive(sim + "/logs")
days = sorted({f.day for f in files})
audit = AuditConfig(logs=sim + "/logs", out_dir=out, model=sim + "/model.skops")
tags = {runner.RANGE_START_TAG: days[0].isoformat(), runner.RANGE_END_TAG: days[-1].isoformat()}
selection = [AssetKey("events")]
database = ":memory:" if lake else out + "/stealwatch.duckdb"
start = time.perf_counter()
if workers > 1:
    config = {"execution": {"config": {"multiprocess": {"max_concurrent": workers,
              "start_method": {"forkserver": {"preload_modules": runner._PRELOAD}}}}},
              "resources": definitions.per_run_resources(audit, database, lake)}
    with runner._child_environment(), runner._temporary_instance() as inst:
        job = reconstructable(definitions.daily_audit_configured_per_run)
        result = execute_job(job, instance=inst, tags=tags, run_config=config,
                             asset_selection=selection)
else:
    job = definitions.build_definitions(audit, database, lake).resolve_job_def("daily_audit")
    result = job.execute_in_process(instance=DagsterInstance.ephemeral(), tags=tags,
                                    asset_selection=selection)
seconds = time.perf_counter() - start
assert result.success
[check] = [c for c in result.get_asset_check_evaluations()]
events = [m for m in result.get_asset_materialization_events() if m.asset_key == selection[0]]
read = events[0].materialization.metadata["rows_read"].value  # the run's total, every day
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"seconds": seconds, "days": len(days), "check": check.passed, "peak_mib": peak,
                  "rows_read": read}))
"""


def _measure(sim: Path, lake: str | None, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lake-bench-") as out:
        target = lake or "-"
        if lake and "://" not in lake:
            target = str(Path(out) / "lake")
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(sim), out, target, str(workers)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path, help="a `stealwatch simulate` folder")
    parser.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    parser.add_argument("--lake", default="local", help="lake root (default: a temporary path)")
    args = parser.parse_args(argv)
    if not (args.sim / "logs").is_dir():
        parser.error(f"{args.sim} has no logs/ folder")
    rows = []
    for name, lake, workers in (
        ("DuckDB file, one process", None, 1),
        ("lake, one process", args.lake, 1),
        (f"lake, {args.workers} processes", args.lake, args.workers),
    ):
        print(f"{name} ...", file=sys.stderr, flush=True)
        result = _measure(args.sim, lake, workers)
        rows.append((name, result))
    events = rows[0][1]["rows_read"]
    print(f"archive: {args.sim / 'logs'}: {events:,} records over {rows[0][1]['days']} days")
    print(f"{'mode':<28} {'seconds':>8} {'events/s':>10} {'peak MiB':>9}  check")
    for name, result in rows:
        rate = events / result["seconds"]
        print(
            f"{name:<28} {result['seconds']:>8.1f} {rate:>10,.0f} {result['peak_mib']:>9,.0f}  "
            f"{'passed' if result['check'] else 'FAILED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
