"""How the whole audit's cost grows with the archive, and how it compares with DuckDB's bare load.

    python benchmarks/scale.py                          # 1x, 2x, 4x the days of 300 users
    python benchmarks/scale.py --grow users             # ... or 2x, 4x the users over 15 days
    python benchmarks/scale.py --events 10M             # the whole audit vs DuckDB's bare load
    python benchmarks/scale.py --archive SIM1 --archive SIM2   # existing simulations instead
    python benchmarks/scale.py --audit-args "--lake L --workers 2"   # the audit in another mode
    python benchmarks/scale.py --shapes many-keys,year   # issue 20's targets on both shapes

Every audit is ``stealwatch audit --logs SIM/logs --model SIM/model.skops --reference
SIM/reference.parquet --out OUT`` (plus ``--train/--holdout`` with ``--privacy``) in a fresh
process; archives come from ``stealwatch simulate`` (no faults) and are kept under ``--work``
for the next run. Per size it prints events, wall and CPU seconds (user + system of the audit's
process tree: steadier than wall time on a shared machine), events/s, peak RSS
(the child's own VmHWM: ``ru_maxrss`` would carry the parent's peak across exec; with the
sampled sum over the process tree when the audit spawns processes), the cost ratio of each size
to the first relative to the events ratio (1.00 = linear), and the seconds of every Dagster step
with the peak RSS reached by the end of each. ``--bare`` (always on with ``--events``) also
times DuckDB's bare ``read_json`` of the largest archive. ``--shapes`` audits the named archive
shapes (``many-keys``: about 2.5M events of 4,500 keys over 5 days; ``year``: 300 users over
365 days, about 11M events), times the bare load of each and prints, per shape, the audit's and
ingest's ratio to it and the peak RSS against the targets. When ``stealwatch audit --help``
offers ``--lake``, the largest size is also audited with ``--lake DIR --workers 2``. An audit
whose process tree passes ``--max-rss-gib`` is stopped, naming the step it was in.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEALWATCH = [sys.executable, "-m", "pipelines.cli"]
# events per user and day of a 15-day simulation (fewer over more days: attackers stop); only
# to size --events archives, which grow in users
EVENTS_PER_USER_DAY = 112
POLL_SECONDS = 0.25
# issue 20's two archive shapes: (users, days) of each; the targets of the whole audit and of
# ingest as multiples of DuckDB's bare load of the same files, and of the peak RSS
SHAPES = {"many-keys": (4_500, 5), "year": (300, 365)}
TARGET_RATIO, TARGET_INGEST_RATIO, TARGET_PEAK_GIB = 4.0, 1.5, 4.0
INGEST_STEPS = ("events", "ingest_day[*]")

# The audit's child: runs the CLI unchanged and, from every Dagster instance the run creates
# (ephemeral in-process, or on disk for the multiprocess executor, read before it is disposed),
# collects each step's first and last event time; writes them, its own peak RSS (VmHWM) and its
# VmHWM at the end of each step it ran itself to the JSON file named by argv[1]. Each step event
# it handles is also logged as a "[scale] HH:MM:SS STEP_..." line, so a stopped run names its step.
_AUDIT_CHILD = """
import json, os, sys, time
from dagster import DagsterInstance
from pipelines.cli import main

instances, steps, hwm_after = [], {}, {}
real_init, real_dispose = DagsterInstance.__init__, DagsterInstance.dispose
real_handle = DagsterInstance.handle_new_event
STEP_EVENTS = ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")

def vm_hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024

def handle(self, event, **kwargs):
    kind = event.dagster_event.event_type_value if event.dagster_event else None
    if event.step_key and kind in STEP_EVENTS:
        stamp = time.strftime("%H:%M:%S")
        line = f"[scale] {stamp} {kind} {event.step_key} VmHWM {vm_hwm():.0f} MiB"
        print(line, file=sys.stderr, flush=True)
        if kind != "STEP_START":
            hwm_after[event.step_key] = vm_hwm()
    return real_handle(self, event, **kwargs)

def harvest(instance):
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            kind = entry.dagster_event.event_type_value if entry.dagster_event else None
            if entry.step_key and kind in STEP_EVENTS:
                span = steps.setdefault(entry.step_key, [entry.timestamp, entry.timestamp])
                span[0], span[1] = min(span[0], entry.timestamp), max(span[1], entry.timestamp)

def keep(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    instances.append(self)

def dispose(self):
    if any(kept is self for kept in instances):
        instances[:] = [kept for kept in instances if kept is not self]
        harvest(self)
    real_dispose(self)

DagsterInstance.__init__, DagsterInstance.dispose = keep, dispose
DagsterInstance.handle_new_event = handle
code = main(sys.argv[2:])
for instance in list(instances):
    harvest(instance)
result = {"code": code, "steps": steps, "peak_mib": vm_hwm(), "hwm_after": hwm_after}
open(sys.argv[1], "w").write(json.dumps(result))
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
"""


@dataclass
class Archive:
    """One simulated archive: ``stealwatch simulate``'s output folder."""

    path: Path
    users: int
    days: int
    label: str = ""

    @property
    def logs(self) -> Path:
        return self.path / "logs"


@dataclass
class AuditRun:
    """What one audit cost."""

    label: str
    archive: str
    events: int
    days: int
    users: int
    seconds: float
    peak_mib: float
    tree_peak_mib: float
    processes: int
    cpu_seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    run_seconds: float = 0.0
    hwm_after: dict[str, float] = field(default_factory=dict)  # the child's VmHWM, MiB
    mode: str = ""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class MemoryLimitExceeded(RuntimeError):
    """The audit's process tree went past ``--max-rss-gib``."""


def parse_count(text: str) -> int:
    """``10M``, ``500k``, ``1.5m`` or ``2000000`` as an integer."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    value = text.strip().lower().replace("_", "").replace(",", "")
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        count = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 10M, 500k)") from None
    if count <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return count


def parse_shapes(text: str) -> list[str]:
    """``many-keys,year`` as ``["many-keys", "year"]``; unknown names are a usage error."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"shapes are {', '.join(SHAPES)} (comma-separated), got {text!r}"
        )
    return names


def parse_factors(text: str) -> list[int]:
    """``1,2,4`` as ``[1, 2, 4]``."""
    try:
        factors = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"factors must be integers, got {text!r}") from None
    if not factors or min(factors) < 1:
        raise argparse.ArgumentTypeError(f"factors must be >= 1, got {text!r}")
    return factors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/scale.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "stealwatch-scale"),
        help="folder for simulated archives (reused when already there) and audit outputs "
        "(default: %(default)s)",
    )
    parser.add_argument("--users", type=int, default=300, help="users at 1x (default: 300)")
    parser.add_argument("--days", type=int, default=15, help="days at 1x (default: 15)")
    parser.add_argument(
        "--grow",
        choices=["days", "users"],
        default="days",
        help="what the factors multiply (default: days, the 'year of logs' case)",
    )
    parser.add_argument(
        "--factors",
        type=parse_factors,
        default=[1, 2, 4],
        help="sizes as multiples of the 1x archive (default: 1,2,4)",
    )
    parser.add_argument("--seed", type=int, default=8, help="simulation seed (default: 8)")
    parser.add_argument(
        "--start", default="2025-01-01", help="first simulated day (default: %(default)s)"
    )
    parser.add_argument(
        "--archive",
        action="append",
        default=[],
        metavar="SIM_DIR",
        help="an existing `stealwatch simulate` output (logs/, model.skops, reference.parquet) "
        "to audit instead of simulating; repeat, smallest first",
    )
    parser.add_argument(
        "--events",
        type=parse_count,
        metavar="N",
        help="compare mode: an archive of about N events (e.g. 10M; --days days, as many users "
        "as it takes), the whole audit against DuckDB's bare read_json of the same files",
    )
    parser.add_argument(
        "--shapes",
        type=parse_shapes,
        metavar="NAMES",
        help=f"audit these archive shapes ({', '.join(SHAPES)}; comma-separated) and compare "
        "each with its own bare load against the targets",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="also time DuckDB's bare read_json of the largest archive against its audit "
        "(always on with --events)",
    )
    parser.add_argument(
        "--audit-args",
        default="",
        help='extra arguments for every `stealwatch audit`, e.g. "--lake DIR --workers 2"',
    )
    parser.add_argument(
        "--privacy",
        action="store_true",
        help="also pass --train/--holdout (the privacy audit, a separate cost)",
    )
    parser.add_argument(
        "--lake-workers",
        type=int,
        default=2,
        help="workers for the --lake run of the largest size, when the audit offers --lake; "
        "0 skips it (default: 2)",
    )
    parser.add_argument(
        "--max-rss-gib",
        type=float,
        default=18.0,
        help="stop an audit whose process tree passes this resident size (default: 18)",
    )
    parser.add_argument("--keep-out", action="store_true", help="keep each audit's output folder")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- archives ----------------------------------------------------------------------------------


def sizes(args: argparse.Namespace) -> list[Archive]:
    """The archives to audit: given ones, or one simulation per factor."""
    work = Path(args.work)
    if args.archive:
        return [_given(Path(path)) for path in args.archive]
    if args.shapes:
        return [_planned(work, *SHAPES[name], args.seed, name) for name in args.shapes]
    if args.events:
        users = math.ceil(args.events / (args.days * EVENTS_PER_USER_DAY))
        return [_planned(work, users, args.days, args.seed, f"{args.events / 1e6:g}M target")]
    planned = []
    for factor in args.factors:
        users = args.users * factor if args.grow == "users" else args.users
        days = args.days * factor if args.grow == "days" else args.days
        planned.append(_planned(work, users, days, args.seed, f"{factor}x"))
    return planned


def _planned(work: Path, users: int, days: int, seed: int, label: str) -> Archive:
    return Archive(work / f"sim-u{users}-d{days}-s{seed}", users, days, label)


def _given(path: Path) -> Archive:
    truth = _truth(path)
    if truth is None or not (path / "logs").is_dir():
        raise SystemExit(f"scale.py: {path} is not a `stealwatch simulate` output folder")
    users = len(truth["users"])
    days = len({p.name for p in (path / "logs").glob("dt=*")})
    return Archive(path, users, days, path.name)


def _truth(path: Path) -> dict | None:
    try:
        return json.loads((path / "truth.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_simulated(archive: Archive, seed: int, start: str) -> float:
    """Simulate ``archive`` unless a complete one is already there; the seconds it took."""
    if _truth(archive.path) is not None and (archive.path / "reference.parquet").exists():
        say(f"{archive.label}: reusing {archive.path}")
        return 0.0
    say(f"{archive.label}: simulating {archive.users:,} users x {archive.days} days")
    command = [
        *STEALWATCH,
        "simulate",
        "--out",
        str(archive.path),
        "--users",
        str(archive.users),
        "--days",
        str(archive.days),
        "--seed",
        str(seed),
        "--start",
        start,
        "--quiet",
    ]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scale.py: simulate failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - began
    say(f"{archive.label}: simulated {events_in(archive):,} events in {seconds:.0f} s")
    return seconds


def events_in(archive: Archive) -> int:
    truth = _truth(archive.path) or {"users": []}
    return sum(user["n_events"] for user in truth["users"])


# --- the audit in a child process ---------------------------------------------------------------


def audit_command(archive: Archive, out: Path, privacy: bool, extra: list[str]) -> list[str]:
    """The ``stealwatch audit`` arguments for ``archive``."""
    command = [
        "audit",
        "--logs",
        str(archive.logs),
        "--model",
        str(archive.path / "model.skops"),
        "--reference",
        str(archive.path / "reference.parquet"),
        "--out",
        str(out),
    ]
    if privacy:
        command += [
            "--train",
            str(archive.path / "train.parquet"),
            "--holdout",
            str(archive.path / "holdout.parquet"),
        ]
    return command + extra


def run_audit(
    archive: Archive, out: Path, arguments: list[str], max_rss_mib: float, mode: str = ""
) -> AuditRun:
    """Audit ``archive`` in a fresh process, watching the resident size of its process tree."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    result_file, log_file = out.parent / f"{out.name}.result.json", out.parent / f"{out.name}.log"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-c", _AUDIT_CHILD, str(result_file), *arguments]
    say(f"{archive.label}{mode}: stealwatch {shlex.join(arguments)}")
    began = time.perf_counter()
    with log_file.open("w") as log:
        child = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            watched = _watch(child, max_rss_mib)
        except MemoryLimitExceeded as exc:
            raise MemoryLimitExceeded(
                f"{archive.label}: {exc} after {time.perf_counter() - began:.0f} s, "
                f"in step {_running_step(log_file)}"
            ) from None
    seconds = time.perf_counter() - began
    if child.returncode != 0 or not result_file.exists():
        tail = log_file.read_text()[-3000:]
        raise SystemExit(f"scale.py: the audit failed (exit {child.returncode}):\n{tail}")
    result = json.loads(result_file.read_text())
    run = AuditRun(
        label=archive.label,
        archive=str(archive.path),
        events=_accepted(out, archive),
        days=archive.days,
        users=archive.users,
        seconds=seconds,
        peak_mib=result["peak_mib"],
        tree_peak_mib=max(watched.peak_mib, result["peak_mib"]),
        processes=watched.processes,
        cpu_seconds=watched.cpu_seconds,
        steps=step_seconds(result["steps"]),
        run_seconds=run_span(result["steps"]),
        hwm_after=result.get("hwm_after", {}),
        mode=mode.strip(),
    )
    say(
        f"{archive.label}{mode}: {run.events:,} events in {seconds:.1f} s, "
        f"{run.events_per_second:,.0f} events/s, peak RSS {run.peak_mib:,.0f} MiB"
    )
    return run


def _running_step(log_file: Path) -> str:
    """The step of the last "[scale] HH:MM:SS STEP_START" line the audit's child logged."""
    started = [
        line.split()[3]
        for line in log_file.read_text(errors="replace").splitlines()
        if line.startswith("[scale] ") and line.split()[2:3] == ["STEP_START"]
    ]
    return started[-1] if started else "(none started)"


def _accepted(out: Path, archive: Archive) -> int:
    """Records the audit read (its ingest summary), else the simulation's count."""
    try:
        return int(json.loads((out / "ingest_summary.json").read_text())["rows_read"])
    except (OSError, ValueError, KeyError):
        return events_in(archive)


def step_seconds(spans: dict[str, list[float]]) -> dict[str, float]:
    """Each Dagster step's seconds (first event to last), in the order they started; the steps
    of one dynamic or partitioned op (``name[key]``) merged into ``name[*]``, first start to
    last end (they may run side by side)."""
    merged: dict[str, list[float]] = {}
    for step, (start, end) in spans.items():
        name = step.split("[", 1)[0] + "[*]" if "[" in step else step
        span = merged.setdefault(name, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    ordered = sorted(merged.items(), key=lambda item: item[1][0])
    return {step: end - start for step, (start, end) in ordered}


def run_span(spans: dict[str, list[float]]) -> float:
    """Seconds from the first step's start to the last step's end."""
    if not spans:
        return 0.0
    return max(end for _, end in spans.values()) - min(start for start, _ in spans.values())


@dataclass
class Watched:
    """What the watcher saw of an audit's process tree."""

    peak_mib: float  # the largest sampled sum of resident sizes
    processes: int  # processes seen in the tree
    cpu_seconds: float  # user + system time of the whole tree


def _watch(child: subprocess.Popen, max_rss_mib: float) -> Watched:
    """Poll the child's process tree until it exits, then reap it with its resource usage.

    CPU time is the larger of the child's own usage with the descendants it waited for
    (``wait4``) and the sum over every process seen of its last sampled user + system time
    (Dagster's multiprocess steps are children of a forkserver nobody waits for). Stops the tree
    (its own session, started for it) when the summed RSS passes ``max_rss_mib``."""
    peak, cpu_seen = 0.0, {}
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            sampled = sum(cpu_seen.values())
            cpu = max(usage.ru_utime + usage.ru_stime, sampled)
            return Watched(peak, len(cpu_seen) or 1, cpu)
        tree = _descendants(child.pid)
        for member in tree:
            cpu_seen[member] = _cpu_seconds(member) or cpu_seen.get(member, 0.0)
        total = sum(_rss_mib(member) for member in tree)
        peak = max(peak, total)
        if total > max_rss_mib:
            os.killpg(child.pid, signal.SIGKILL)  # Dagster defers SIGTERM
            child.wait()
            raise MemoryLimitExceeded(f"the audit passed {max_rss_mib:,.0f} MiB ({total:,.0f})")
        time.sleep(POLL_SECONDS)


def _cpu_seconds(pid: int) -> float:
    """User + system seconds of one process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    if "VmRSS:" not in status:
        return 0.0
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


# --- DuckDB's bare load ------------------------------------------------------------------------


def bare_load(archive: Archive, work: Path) -> dict:
    """DuckDB's ``CREATE TABLE raw AS SELECT * FROM read_json(...)`` in a fresh process, as
    ``benchmarks/ingest.py`` measures it."""
    ingest = _sibling("ingest")
    database = work / "bare.duckdb"
    database.unlink(missing_ok=True)
    say(f"{archive.label}: DuckDB bare read_json of {archive.logs}")
    try:
        return ingest._child(ingest._BARE, str(archive.logs), str(database))
    finally:
        database.unlink(missing_ok=True)


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def offers_lake() -> bool:
    """Whether this checkout's ``stealwatch audit`` has the Parquet lake mode."""
    done = subprocess.run(
        [*STEALWATCH, "audit", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return "--lake" in done.stdout


# --- tables ------------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to line up."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def size_table(runs: list[AuditRun]) -> str:
    """One row per audit: events, time, rate, memory and cost growth against the first."""
    first = next(run for run in runs if not run.mode)
    headers = ["size", "days x users", "events", "wall s", "CPU s", "events/s", "peak RSS MiB"]
    headers += ["events ratio", "time ratio", "cost / linear", "CPU / linear"]
    rows = []
    for run in runs:
        events_ratio = run.events / first.events
        time_ratio = run.seconds / first.seconds
        memory = f"{run.peak_mib:,.0f}"
        if run.processes > 1:
            memory += f" (tree {run.tree_peak_mib:,.0f}, {run.processes} procs)"
        rows.append(
            [
                _name(run),
                f"{run.days} x {run.users:,}",
                f"{run.events:,}",
                f"{run.seconds:.1f}",
                f"{run.cpu_seconds:.1f}",
                f"{run.events_per_second:,.0f}",
                memory,
                f"{events_ratio:.2f}",
                f"{time_ratio:.2f}",
                f"{time_ratio / events_ratio:.2f}",
                f"{run.cpu_seconds / first.cpu_seconds / events_ratio:.2f}",
            ]
        )
    return format_table(headers, rows)


def step_table(runs: list[AuditRun]) -> str:
    """Seconds of every Dagster step per audit, each step's cost growth per event from the
    first to the last audit of the plain series (1.00 = linear), and the audit process's peak
    RSS by the end of each step of the last single-process audit (where the peak grows)."""
    steps: list[str] = []
    for run in runs:
        steps += [step for step in run.steps if step not in steps]
    headers = ["step", *(_name(run) for run in runs)]
    series = [run for run in runs if not run.mode]
    first, last = series[0], series[-1]
    show_growth = last is not first
    if show_growth:
        headers.append(f"{last.label} / {first.label} per event")
    single = [run for run in runs if run.processes == 1]  # where VmHWM is the whole audit's
    if single:
        headers.append(f"{_name(single[-1])} peak RSS MiB by its end")
    rows = []
    for step in [*steps, OUTSIDE]:
        cells = [f"{_step(run, step):.1f}" for run in runs]
        if show_growth:
            cells.append(_growth(_step(first, step), _step(last, step), last.events / first.events))
        if single:
            hwm = single[-1].hwm_after.get(step)
            cells.append(f"{hwm:,.0f}" if hwm is not None else "")
        rows.append([step, *cells])
    return format_table(headers, rows)


OUTSIDE = "outside the run (start-up, checks, exit)"


def _name(run: AuditRun) -> str:
    return f"{run.label} {run.mode}".strip()


def _step(run: AuditRun, step: str) -> float:
    if step == OUTSIDE:
        return run.seconds - run.run_seconds
    return run.steps.get(step, 0.0)


def _growth(first: float, last: float, events_ratio: float) -> str:
    if first < 0.5:
        return "-"
    return f"{last / first / events_ratio:.2f}"


def compare_table(run: AuditRun, bare: dict) -> str:
    """The whole audit against DuckDB's bare load of the same files."""
    rows = [
        [
            f"stealwatch audit (whole), {run.label}",
            f"{run.seconds:.1f}",
            f"{run.events_per_second:,.0f}",
            f"{run.peak_mib:,.0f}",
        ],
        [
            "DuckDB bare read_json",
            f"{bare['seconds']:.1f}",
            f"{bare['rows'] / bare['seconds']:,.0f}",
            f"{bare['peak_mib']:,.0f}",
        ],
        ["ratio (audit / bare)", f"{run.seconds / bare['seconds']:.2f}", "", ""],
    ]
    return format_table(["", "s", "events/s", "peak RSS MiB"], rows)


def ingest_seconds(run: AuditRun) -> float:
    """The seconds of the ingest steps (one ``events`` step, or the per-day partitions)."""
    return sum(run.steps.get(step, 0.0) for step in INGEST_STEPS)


def target_table(pairs: list[tuple[AuditRun, dict]]) -> str:
    """Per archive shape: the audit and its ingest against DuckDB's bare load of the same
    files, and the peak RSS, each against its target."""
    headers = [
        "shape",
        "events",
        "keys x days",
        "audit s",
        "bare load s",
        "ratio",
        "ingest s",
        "ingest ratio",
        "peak RSS GiB",
        "targets met",
    ]
    rows = []
    for run, bare in pairs:
        ratio = run.seconds / bare["seconds"]
        ingest = ingest_seconds(run)
        peak = max(run.peak_mib, run.tree_peak_mib) / 1024
        missed = [
            name
            for name, ok in (
                (f"ratio <= {TARGET_RATIO:g}", ratio <= TARGET_RATIO),
                (
                    f"ingest <= {TARGET_INGEST_RATIO:g}x",
                    ingest / bare["seconds"] <= TARGET_INGEST_RATIO,
                ),
                (f"peak <= {TARGET_PEAK_GIB:g} GiB", peak <= TARGET_PEAK_GIB),
            )
            if not ok
        ]
        rows.append(
            [
                run.label,
                f"{run.events:,}",
                f"{run.users:,} x {run.days}",
                f"{run.seconds:.1f}",
                f"{bare['seconds']:.1f}",
                f"{ratio:.2f}",
                f"{ingest:.1f}",
                f"{ingest / bare['seconds']:.2f}",
                f"{peak:.2f}",
                "yes" if not missed else "no: " + ", ".join(missed),
            ]
        )
    return format_table(headers, rows)


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = shlex.split(args.audit_args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    archives = sizes(args)
    max_rss_mib = args.max_rss_gib * 1024
    results: dict = {"runs": [], "simulate_seconds": {}, "audit_args": extra}
    runs: list[AuditRun] = []
    try:
        for archive in archives:
            seconds = ensure_simulated(archive, args.seed, args.start)
            results["simulate_seconds"][archive.label] = seconds
            out = work / f"out-{archive.path.name}"
            command = audit_command(archive, out, args.privacy, extra)
            runs.append(run_audit(archive, out, command, max_rss_mib))
            _tidy(out, args.keep_out)
        if args.lake_workers and not (args.events or args.shapes) and offers_lake():
            runs.append(_lake_run(archives[-1], work, args, extra, max_rss_mib))
    except MemoryLimitExceeded as exc:
        say(f"stopped: {exc}")
        results["stopped"] = str(exc)
    results["runs"] = [asdict(run) for run in runs]
    if runs:
        print()
        print(size_table(runs))
        print()
        print(step_table(runs))
    if args.shapes:
        results["shapes"] = _compare_shapes(archives, runs, work)
    elif args.events or args.bare:
        results["bare"] = _compare(archives, runs, work)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if runs and "stopped" not in results else 1


def _compare(archives: list[Archive], runs: list[AuditRun], work: Path) -> dict:
    """DuckDB's bare load of the largest archive, against its audit when that one finished."""
    largest = archives[-1] if len(archives) == 1 else max(archives, key=events_in)
    bare = bare_load(largest, work)
    audited = [run for run in runs if not run.mode and run.archive == str(largest.path)]
    print()
    if audited:
        print(compare_table(audited[0], bare))
    else:
        print(
            f"DuckDB bare read_json of {largest.label}: {bare['rows']:,} rows in "
            f"{bare['seconds']:.1f} s, peak RSS {bare['peak_mib']:,.0f} MiB "
            "(the audit did not finish)"
        )
    return bare


def _compare_shapes(archives: list[Archive], runs: list[AuditRun], work: Path) -> dict:
    """DuckDB's bare load of each shape's archive, against that archive's audit."""
    audited = {run.archive: run for run in runs if not run.mode}
    pairs, out = [], {}
    for archive in archives:
        run = audited.get(str(archive.path))
        if run is None:
            continue
        bare = bare_load(archive, work)
        pairs.append((run, bare))
        out[archive.label] = {"bare": bare, "ingest_seconds": ingest_seconds(run)}
    if pairs:
        print()
        print(target_table(pairs))
    return out


def _lake_run(
    archive: Archive, work: Path, args: argparse.Namespace, extra: list[str], max_rss_mib: float
) -> AuditRun:
    out = work / f"out-{archive.path.name}-lake"
    lake = work / f"lake-{archive.path.name}"
    shutil.rmtree(lake, ignore_errors=True)
    lake_args = ["--lake", str(lake), "--workers", str(args.lake_workers)]
    command = audit_command(archive, out, args.privacy, extra + lake_args)
    mode = f" lake/{args.lake_workers}w"
    try:
        return run_audit(archive, out, command, max_rss_mib, mode=mode)
    finally:
        _tidy(out, args.keep_out)
        if not args.keep_out:
            shutil.rmtree(lake, ignore_errors=True)


def _tidy(out: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
