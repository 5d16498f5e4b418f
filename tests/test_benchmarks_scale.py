"""benchmarks/scale.py: argument parsing, the sizes it plans and its tables (nothing timed)."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize(
    ("text", "count"),
    [("10M", 10_000_000), ("500k", 500_000), ("1.5m", 1_500_000), ("2,000,000", 2_000_000)],
)
def test_counts_parse_with_units(scale, text, count):
    assert scale.parse_count(text) == count


@pytest.mark.parametrize("text", ["ten", "0", "-3M", ""])
def test_bad_counts_are_rejected(scale, text):
    with pytest.raises(argparse.ArgumentTypeError):
        scale.parse_count(text)


def test_bad_factors_exit_with_a_usage_error(scale, capsys):
    with pytest.raises(SystemExit) as exited:
        scale.build_parser().parse_args(["--factors", "1,x"])
    assert exited.value.code == 2
    assert "factors must be integers" in capsys.readouterr().err


def test_growth_in_days_keeps_the_users(scale, tmp_path):
    args = scale.build_parser().parse_args(
        ["--work", str(tmp_path), "--users", "300", "--days", "15"]
    )
    planned = scale.sizes(args)
    assert [(a.users, a.days, a.label) for a in planned] == [
        (300, 15, "1x"),
        (300, 30, "2x"),
        (300, 60, "4x"),
    ]
    assert len({a.path for a in planned}) == 3


def test_growth_in_users_keeps_the_days(scale, tmp_path):
    args = scale.build_parser().parse_args(
        ["--work", str(tmp_path), "--grow", "users", "--factors", "1,3"]
    )
    assert [(a.users, a.days) for a in scale.sizes(args)] == [(300, 15), (900, 15)]


def test_events_mode_plans_enough_days(scale, tmp_path):
    args = scale.build_parser().parse_args(["--work", str(tmp_path), "--events", "10M"])
    (archive,) = scale.sizes(args)
    assert archive.users * archive.days * scale.EVENTS_PER_USER_DAY >= 10_000_000


def test_audit_arguments_pass_through(scale, tmp_path):
    archive = scale.Archive(tmp_path / "sim", 10, 2, "1x")
    command = scale.audit_command(archive, tmp_path / "out", False, ["--lake", "L"])
    assert command[:3] == ["audit", "--logs", str(tmp_path / "sim" / "logs")]
    assert command[-2:] == ["--lake", "L"]
    assert "--train" not in command
    assert "--train" in scale.audit_command(archive, tmp_path / "out", True, [])


def test_partitioned_steps_merge_into_one_span(scale):
    spans = {
        "events": [0.0, 2.0],
        "ingest_day[2025_01_02]": [2.0, 5.0],
        "ingest_day[2025_01_01]": [2.5, 4.0],
        "report": [5.0, 6.0],
    }
    assert scale.step_seconds(spans) == {"events": 2.0, "ingest_day[*]": 3.0, "report": 1.0}
    assert scale.run_span(spans) == 6.0


def _run(scale, label, events, seconds, forensics, mode=""):
    return scale.AuditRun(
        label=label,
        archive="-",
        events=events,
        days=1,
        users=1,
        seconds=seconds,
        peak_mib=100.0,
        tree_peak_mib=100.0,
        processes=1,
        cpu_seconds=seconds * 2,
        steps={"events": seconds / 4, "forensics": forensics},
        run_seconds=seconds - 1,
        hwm_after={"forensics": 1000.0 + events},
        mode=mode,
    )


def test_tables_show_cost_growth_against_the_first_size(scale):
    runs = [
        _run(scale, "1x", 1000, 10.0, 5.0),
        _run(scale, "4x", 4000, 80.0, 40.0),
        _run(scale, "4x", 4000, 50.0, 30.0, mode="lake/2w"),
    ]
    sizes = scale.size_table(runs).splitlines()
    assert len({len(line) for line in sizes}) == 1  # columns line up
    assert sizes[3].split("|")[-3].strip() == "2.00"  # 8x the time for 4x the events
    assert "4x lake/2w" in sizes[4]
    steps = scale.step_table(runs)
    forensics = next(line for line in steps.splitlines() if line.startswith("| forensics"))
    assert forensics.split("|")[-3].strip() == "2.00"  # growth over the plain series only
    assert forensics.split("|")[-2].strip() == "5,000"  # the last audit's peak by its end
    assert scale.OUTSIDE in steps


def test_shapes_plan_the_many_keys_archive_and_the_year(scale, tmp_path):
    args = scale.build_parser().parse_args(["--work", str(tmp_path), "--shapes", "many-keys,year"])
    keys, year = scale.sizes(args)
    assert (keys.label, year.label) == ("many-keys", "year")
    assert keys.users >= 4_000 and keys.days == 5 and year.days == 365
    assert keys.users * keys.days * scale.EVENTS_PER_USER_DAY >= 2_500_000


def test_unknown_shapes_exit_with_a_usage_error(scale, capsys):
    with pytest.raises(SystemExit) as exited:
        scale.build_parser().parse_args(["--shapes", "many-keys,decade"])
    assert exited.value.code == 2
    assert "shapes are many-keys, year" in capsys.readouterr().err


def test_target_table_compares_audit_and_ingest_with_the_bare_load(scale):
    fast = _run(scale, "many-keys", 2_500_000, 20.0, 5.0)  # ingest (events) 5 s
    slow = _run(scale, "year", 11_000_000, 120.0, 60.0)
    slow.steps = {"ingest_day[*]": 40.0, "forensics": 60.0}
    table = scale.target_table([(fast, {"seconds": 5.0}), (slow, {"seconds": 10.0})])
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells[0][5:8] == ["4.00", "5.0", "1.00"] and cells[0][-1] == "yes"
    assert cells[1][5:8] == ["12.00", "40.0", "4.00"]
    assert cells[1][-1] == "no: ratio <= 4, ingest <= 1.5x"
