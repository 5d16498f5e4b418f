"""Canary (honey-trap) queries: the registry, matching in DuckDB on a simulated archive whose
truth says who sent a canary, incidents, pages and the ``--canaries`` option end to end."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from audits import risk, store
from audits.canaries import (
    DEFAULT_RTOL,
    DEFAULT_TOLERANCE,
    canary_incidents,
    find_hits,
    load_registry,
    parse_rule,
)
from audits.catalog import scan_archive
from audits.errors import InputError
from audits.simulation import simulate
from pipelines.cli import main


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the registry


def test_registry_reads_vectors_files_and_rules(tmp_path: Path) -> None:
    pl.DataFrame({"name": ["csv-a", "csv-b"], "f0": [1.0, 2.0], "f1": [3.0, 4.5]}).write_csv(
        tmp_path / "more.csv"
    )
    np.save(tmp_path / "more.npy", np.array([[7.0, 8.0]]))
    path = _write(
        tmp_path / "canaries.toml",
        'vectors = ["more.csv", "more.npy"]\nrtol = 0.0\n\n'
        '[[vector]]\nname = "inline"\nvalues = [0.5, -1e6]\ntolerance = 0.25\n\n'
        '[[rule]]\nname = "impossible"\nwhen = "f1 < -1e3 AND f0 == f1"\n\n'
        '[[rule]]\nname = "listed"\nall = ["f0 >= 2", "f1 != 3.5"]\n',
    )
    registry = load_registry(path)
    vectors = {v.name: v for v in registry.vectors}
    assert set(vectors) == {"inline", "csv-a", "csv-b", "more.npy#1"}
    assert vectors["inline"].tolerance == 0.25 and vectors["inline"].rtol == 0.0
    assert vectors["csv-b"].values == (2.0, 4.5)
    assert vectors["csv-a"].tolerance == DEFAULT_TOLERANCE and vectors["csv-a"].rtol == 0.0
    rules = {r.name: r for r in registry.rules}
    assert rules["impossible"].text == "f1 < -1000.0 and f0 == f1"
    assert rules["listed"].width == 2 and len(registry) == 6
    assert registry.table()["canary_kind"].to_list().count("rule") == 2


def test_default_tolerance_is_relative_and_absolute() -> None:
    from audits.canaries import VectorCanary

    lo, hi = VectorCanary("c", (1000.0, 0.0)).bounds()
    assert lo[0] == pytest.approx(1000.0 - 1000.0 * DEFAULT_RTOL)
    assert hi[1] == pytest.approx(DEFAULT_TOLERANCE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[vector]\nname=1", "is not valid TOML"),
        ('[[vector]]\nname = "a"\nvalues = [1, "x"]', "values must be a number"),
        ('[[vector]]\nname = "a"\nvalues = []', "needs values"),
        ('[[vector]]\nname = "a"\nvalues = [1]\ncolour = "red"', "unknown key 'colour'"),
        ('[[rule]]\nname = "r"\nwhen = "f1 <> 2"', "cannot read condition 'f1 <> 2'"),
        ("[[rule]]\nname = \"r\"\nwhen = \"__import__('os').system('x')\"", "cannot read"),
        ('[[rule]]\nname = "r"\nwhen = "f1 < 2 or f2 > 1"', "cannot read condition"),
        ('[[rule]]\nname = "r"', "needs one of when"),
        ('[[rule]]\nname = "a"\nwhen = "f0 < 1"\n[[rule]]\nname = "a"\nwhen = "f0 > 9"', "twice"),
        ('tolerance = -1\n[[rule]]\nname = "a"\nwhen = "f0 < 1"', "tolerance must be"),
        ('vectors = "absent.csv"', "canary vectors file not found"),
        ("# nothing", "no canaries"),
    ],
)
def test_a_bad_registry_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        load_registry(_write(tmp_path / "c.toml", text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_rule_grammar() -> None:
    (c,) = parse_rule("f12 >= -2.5e-3")
    assert (c.left, c.op, c.value, c.right_feature) == (12, ">=", -0.0025, None)
    first, second = parse_rule(" f0==f3 and f1 != 1 ")
    assert first.right_feature == 3 and second.value == 1.0
    with pytest.raises(InputError):
        parse_rule("f1 < nan")


# ---------------------------------------------------------------- a simulated archive


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    """A small simulated archive (its canaries.toml planted by the simulator) ingested into
    DuckDB the way the events asset does."""
    root = tmp_path_factory.mktemp("sim")
    truth = simulate(root, seed=5, days=1, users=20)
    con = store.connect(root.parent / f"{root.name}.duckdb")
    files, _ = scan_archive(root / "logs")
    for day in sorted({f.day for f in files}):
        store.ingest_day(con, day, [f for f in files if f.day == day])
    yield root, truth, con
    con.close()


def _window(truth: dict) -> tuple[dt.date, dt.date]:
    return dt.date.fromisoformat(truth["days"][0]), dt.date.fromisoformat(truth["days"][-1])


def test_the_simulator_plants_canaries_only_attackers_send(simulated) -> None:
    root, truth, _ = simulated
    canaries = truth["canaries"]
    roles = {u["user_id"]: (u["role"], u["kind"]) for u in truth["users"]}
    assert (root / canaries["registry"]).exists()
    assert canaries["scraper"] in canaries["senders"]
    assert roles[canaries["scraper"]] == ("attacker", "knockoff_random")
    assert canaries["senders"][canaries["scraper"]] >= canaries["vectors"] + canaries["rules"]
    assert all(roles[u][0] == "attacker" for u in canaries["senders"])
    assert roles[canaries["docs_tester"]] == ("benign", "regular")
    assert canaries["docs_tester"] not in canaries["senders"]


def test_matching_finds_exactly_the_senders_in_the_truth(simulated) -> None:
    root, truth, con = simulated
    registry = load_registry(root / "canaries.toml")
    hits = find_hits(con, _window(truth), registry)
    counts = dict(hits.group_by("user_id").agg(pl.col("event_id").n_unique()).iter_rows())
    assert counts == truth["canaries"]["senders"]
    scraper = hits.filter(pl.col("user_id") == truth["canaries"]["scraper"])
    assert set(scraper["canary"]) == {v.name for v in registry.vectors} | {"impossible-amount"}
    assert scraper.filter(pl.col("canary_kind") == "vector")["distance"].max() == 0.0


def test_tolerance_decides_what_is_near_enough(simulated, tmp_path: Path) -> None:
    """The scraper's first vector canary, moved: by 1e-7 relative it still matches (the default
    tolerance), moved further it does not, unless its tolerance says so; an exact-only registry
    matches only the logged value itself."""
    root, truth, con = simulated
    registry = load_registry(root / "canaries.toml")
    values = np.array(registry.vectors[0].values)

    def senders(text: str) -> set[str]:
        reg = load_registry(_write(tmp_path / "t.toml", text))
        return set(find_hits(con, _window(truth), reg)["user_id"].to_list())

    def vector(v, extra: str = "") -> str:
        return f'[[vector]]\nname = "moved"\nvalues = {[float(x) for x in v]}\n{extra}'

    scraper = {truth["canaries"]["scraper"]}
    assert senders(vector(values * (1 + 1e-7))) == scraper
    step = 1e-3 * float(np.abs(values).max())
    assert senders(vector(values + step)) == set()
    assert senders(vector(values + step, f"tolerance = {2 * step}")) == scraper
    assert senders(vector(values, "tolerance = 0.0\nrtol = 0.0")) == scraper
    assert senders(vector(values * (1 + 1e-7), "tolerance = 0.0\nrtol = 0.0")) == set()
    assert senders(vector(values[:-1])) == set()  # another width never matches


def test_canary_incidents_name_the_canaries_and_events(simulated) -> None:
    root, truth, con = simulated
    registry = load_registry(root / "canaries.toml")
    hits = find_hits(con, _window(truth), registry)
    table = canary_incidents(hits, registry.table())
    assert table["subject"].to_list() == sorted(truth["canaries"]["senders"])
    assert set(table["kind"]) == {"canary"} and set(table["severity"]) == {"high"}
    again = canary_incidents(hits.reverse(), registry.table())
    assert again["incident_id"].to_list() == table["incident_id"].to_list()
    row = table.filter(pl.col("subject") == truth["canaries"]["scraper"]).row(0, named=True)
    evidence = json.loads(row["evidence"])
    mine = hits.filter(pl.col("user_id") == row["subject"])
    assert {e["canary"] for e in evidence} == set(mine["canary"])
    assert {i for e in evidence for i in e["event_ids"]} == set(mine["event_id"])
    assert row["n_events"] == mine["event_id"].n_unique()


# ---------------------------------------------------------------- through `stealwatch audit`


def _records(root: Path) -> list[dict]:
    out = []
    for path in sorted(root.rglob("*.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    return out


def test_audit_with_canaries_makes_incidents_pages_and_a_risk_register(
    archive: Path, tmp_path: Path
) -> None:
    records = _records(archive)
    planted = records[5]
    hostile = "<script>alert(1)</script>"
    registry = _write(
        tmp_path / "canaries.toml",
        f'[[vector]]\nname = "{hostile}"\nvalues = {planted["features"]}\n\n'
        '[[rule]]\nname = "far-out"\nwhen = "f0 > 2.2 and f1 > 0"\n',
    )
    expected: dict[str, set[str]] = {}
    for r in records:
        f = r["features"]
        if f == planted["features"] or (f[0] > 2.2 and f[1] > 0):
            expected.setdefault(r["user_id"], set()).add(r["event_id"])
    assert planted["user_id"] in expected and len(expected) >= 2
    out = tmp_path / "out"
    args = ["audit", "--logs", str(archive), "--out", str(out), "--quiet"]
    assert main([*args, "--canaries", str(registry)]) == 0
    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    rows = con.sql(
        "SELECT incident_id, subject, evidence FROM incidents "
        "WHERE kind = 'canary' ORDER BY subject"
    ).fetchall()
    con.close()
    assert [r[1] for r in rows] == sorted(expected)
    for incident_id, subject, evidence in rows:
        ids = {i for e in json.loads(evidence) for i in e["event_ids"]}
        assert ids == expected[subject]
        page = (out / "incidents" / f"{incident_id}.html").read_text()
        assert "Canary queries" in page and sorted(ids)[0] in page
    report = (out / "report.html").read_text()
    assert "Canary queries" in report and "Risk register" in report
    assert hostile not in report and "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    register = pl.read_csv(out / "risk_register.csv")
    assert register.columns == list(risk.REGISTER_COLUMNS)
    threats = {r["threat"]: r for r in register.iter_rows(named=True)}
    assert list(threats) == list(risk.THREATS)
    canary = threats[risk.CANARY]
    assert canary["likelihood"] == "high" and f"{len(expected)} key(s)" in canary["evidence"]
    for threat in (risk.MEMBERSHIP, risk.TRAINING_LIKE, risk.BOUNDARY):  # no model given
        assert threats[threat]["likelihood"] == "not measured", threat
    assert "busiest key" in threats[risk.EXTRACTION]["control_in_place"]
    matrix = pl.read_csv(out / "attack_defence_matrix.csv")
    assert matrix.columns == ["attack", *risk.DEFENCES]
    caught = matrix.filter(pl.col("attack") == risk.CANARY)["canaries"][0]
    assert caught.startswith(f"caught {len(expected)} key(s)")
    assert main([*args, "--canaries", str(registry)]) == 0  # a rerun replaces, adds nothing
    con = duckdb.connect(str(out / "stealwatch.duckdb"), read_only=True)
    again = con.sql(
        "SELECT incident_id FROM incidents WHERE kind = 'canary' ORDER BY subject"
    ).fetchall()
    assert [r[0] for r in again] == [r[0] for r in rows]


def test_a_bad_registry_stops_the_audit_with_exit_2(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _write(tmp_path / "bad.toml", '[[rule]]\nname = "r"\nwhen = "f0 => 1"')
    code = main(
        ["audit", "--logs", str(archive), "--out", str(tmp_path / "o"), "--canaries", str(bad)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read condition" in err and len(err.splitlines()) == 1
