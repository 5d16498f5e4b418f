"""The fuzzed ingest at full size: how many generated archives hold the ingest's property.

    python benchmarks/fuzz_ingest.py --archives 2000            # seeds 0..1999
    python benchmarks/fuzz_ingest.py --archives 50 --first 7000 --batch 10

Each archive (``audits.simulation.fuzz``) mixes every reject reason, canonical, KServe and
SageMaker files, empty to 100,000-line files, whole files of one bad kind, redeliveries across
days, cut and CRC-damaged gzip streams, BOMs and plain text named ``.gz``. The property: the
ingest succeeds, ``rows_read = accepted + duplicates + rejected`` per file with the counts the
generator expects, every rejected line is in ``rejected_events`` with its expected reason, and
the accepted events equal those of an ingest of the valid lines alone.

Prints a progress line per batch and, at the end, ``held: N of M archives``; every failure is
printed with its seed (``fuzz.check([seed], ...)`` replays it). Exit status 1 when any failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from audits.simulation import fuzz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archives", type=int, default=2000, help="how many archives")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--batch", type=int, default=40, help="archives ingested side by side")
    parser.add_argument("--max-lines", type=int, default=100_000, help="largest file, in lines")
    args = parser.parse_args(argv)
    seeds = list(range(args.first, args.first + args.archives))
    held, failed, started = 0, 0, time.time()
    for start in range(0, len(seeds), args.batch):
        batch = seeds[start : start + args.batch]
        for seed, problems in _check(batch, args.max_lines).items():
            if problems:
                failed += 1
                print(f"seed {seed} FAILED:\n  " + "\n  ".join(problems), flush=True)
            else:
                held += 1
        print(
            f"{held + failed} archives checked, {held} held, {failed} failed "
            f"({time.time() - started:.0f} s)",
            flush=True,
        )
    print(f"held: {held} of {len(seeds)} archives (seeds {seeds[0]}..{seeds[-1]})")
    return 1 if failed else 0


def _check(batch: list[int], max_lines: int) -> dict[int, list[str]]:
    """The batch side by side; if its ingest raised, each archive alone (to name the seed)."""
    results = _in_scratch(batch, max_lines)
    if len(batch) > 1 and any(p and p[0].startswith("ingest raised") for p in results.values()):
        results = {seed: _in_scratch([seed], max_lines)[seed] for seed in batch}
    return results


def _in_scratch(batch: list[int], max_lines: int) -> dict[int, list[str]]:
    work = Path(tempfile.mkdtemp(prefix="fuzz-ingest-"))
    try:
        return fuzz.check(batch, work, max_lines)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
