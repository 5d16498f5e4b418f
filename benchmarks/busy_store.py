"""How long a second ``stealwatch audit`` on a DuckDB file another audit is writing takes to
give up, and how it ends.

    PYTHONPATH=. .venv/bin/python benchmarks/busy_store.py [--users 60] [--days 2]

Simulates a small archive, starts an audit, waits until its ingest has begun, then runs a
second audit with the same ``--db`` and prints one JSON object: the second's exit code, its
wall time, its last stderr line, and whether the first was still running when it ended.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEALWATCH = [sys.executable, "-m", "pipelines.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--days", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="busy-store-") as scratch:
        root = Path(scratch)
        subprocess.run(
            [*STEALWATCH, "simulate", "--out", str(root / "sim"), "--quiet"]
            + ["--users", str(args.users), "--days", str(args.days)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(json.dumps(second_audit(root / "sim" / "logs", root), indent=1))


def second_audit(logs: Path, root: Path) -> dict:
    log = root / "first.txt"
    with log.open("w") as err:
        first = subprocess.Popen(
            [*STEALWATCH, "audit", "--logs", str(logs), "--out", str(root / "first")],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        while "validating" not in log.read_text():
            if first.poll() is not None:
                raise SystemExit(f"the first audit ended early: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        began = time.monotonic()
        second = subprocess.run(
            [*STEALWATCH, "audit", "--logs", str(logs), "--out", str(root / "second")]
            + ["--db", str(root / "first" / "stealwatch.duckdb"), "--quiet"],
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - began
        lines = second.stderr.strip().splitlines()
        return {
            "second_exit": second.returncode,
            "second_seconds": round(seconds, 1),
            "second_stderr_lines": len(lines),
            "second_last_line": lines[-1] if lines else "",
            "first_still_running": first.poll() is None,
        }
    finally:
        first.kill()
        first.wait()


if __name__ == "__main__":
    main()
