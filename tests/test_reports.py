"""Pages: hostile log strings escaped, self-contained, byte-identical reruns, investigate CLI."""

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.cli import main
from pipelines.commands.investigate import page_file_name
from reports.data import margins
from reports.pages import page_name
from tests.conftest import make_record, write_jsonl

HOSTILE = [
    "<script>alert(1)</script>",
    "'; DROP TABLE events; --",
    '"><img src=x onerror=alert(2)>',
]


@pytest.fixture
def hostile_audit(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    lines = []
    for i in range(300):
        record = make_record("2026-11-01", i, user=HOSTILE[i % 3])
        record["session_id"] = HOSTILE[(i + 1) % 3]
        record["prediction"] = HOSTILE[(i + 2) % 3] if i % 50 == 0 else i % 3
        lines.append(json.dumps(record))
    lines.append('{"event_id": "<b>bad</b>", "ts": "<script>x</script>"')  # quarantined raw text
    write_jsonl(root / "dt=2026-11-01" / "a.jsonl.gz", lines)
    out = tmp_path / "out"
    assert main(["audit", "--logs", str(root), "--out", str(out), "--quiet"]) == 0
    return out


def _assert_safe(html: str) -> None:
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)  # nothing external


def test_overview_escapes_log_strings_and_is_deterministic(hostile_audit: Path) -> None:
    report = hostile_audit / "report.html"
    first = report.read_bytes()
    _assert_safe(first.decode())
    assert (
        main(
            [
                "audit",
                "--logs",
                str(hostile_audit.parent / "logs"),
                "--out",
                str(hostile_audit),
                "--quiet",
            ]
        )
        == 0
    )
    assert report.read_bytes() == first


@pytest.mark.parametrize("user", HOSTILE)
def test_investigate_any_user_escapes_everything(hostile_audit: Path, user: str, capsys) -> None:
    out = hostile_audit / "inv"
    code = main(
        [
            "investigate",
            "--db",
            str(hostile_audit / "stealwatch.duckdb"),
            "--user",
            user,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    page = Path(capsys.readouterr().out.strip())
    assert page.parent == out and page.name == page_file_name(user)
    html = page.read_text()
    _assert_safe(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    sql_literal = "'" + user.replace("'", "''") + "'"
    assert (
        sql_literal.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&#39;")
        .replace('"', "&#34;")
        in html
    )


def test_investigate_errors_are_one_line(hostile_audit: Path, capsys) -> None:
    db = str(hostile_audit / "stealwatch.duckdb")
    cases = [
        (["--db", db, "--user", "nobody"], "has no events"),
        (["--db", str(hostile_audit / "missing.duckdb"), "--user", "x"], "database not found"),
        (
            ["--db", db, "--user", HOSTILE[0], "--start", "2026-11-05", "--end", "2026-11-01"],
            "is after --end",
        ),
    ]
    for args, message in cases:
        assert main(["investigate", *args, "--out", str(hostile_audit / "inv")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_page_names_are_safe() -> None:
    assert page_name("inc-0a1b2c") == "inc-0a1b2c.html"
    for hostile in [*HOSTILE, "../../etc/passwd", ".hidden", "x" * 200]:
        name = page_name(hostile)
        assert re.fullmatch(r"[0-9a-f]{16}\.html", name)


def test_margins_are_top1_minus_top2_in_row_order_whatever_the_widths():
    shown = pl.Series([[0.1, 0.7, 0.2], None, [], [1.0], [0.5, 0.5], [0.3, 0.6, 0.1], [0.9, 0.1]])
    assert margins(shown).round(6).tolist() == [0.5, 1.0, 0.0, 0.3, 0.8]
    assert margins(pl.Series([None], dtype=pl.List(pl.Float64))).tolist() == []


# ---------------------------------------------------------------- display of hostile ids (23.10)

SPOOFING = ["admin\u202egnp.exe", "ro\u200bot", "nul\x00byte", "bom\ufeffkey", "line\u2028sep"]


@pytest.mark.parametrize("user", SPOOFING)
def test_invisible_and_bidi_characters_are_shown_as_escapes(user: str) -> None:
    from reports.render import environment

    html = environment().from_string("{{ u|ident }}").render(u=user)
    hidden = [c for c in user if not c.isprintable()]
    assert hidden and not any(c in html for c in hidden)
    for char in hidden:
        assert f"\\u{ord(char):04x}" in html
    assert html.startswith(user[:2])


def test_spoofing_ids_are_visible_on_every_page(tmp_path: Path, capsys) -> None:
    root = tmp_path / "logs"
    lines = []
    for i in range(240):
        record = make_record("2026-11-01", i, user=SPOOFING[i % 2] if i % 4 else f"u{i % 7}")
        lines.append(json.dumps(record))
    write_jsonl(root / "dt=2026-11-01" / "a.jsonl.gz", lines)
    out = tmp_path / "out"
    assert main(["audit", "--logs", str(root), "--out", str(out), "--quiet"]) == 0
    db = str(out / "stealwatch.duckdb")
    assert main(["investigate", "--db", db, "--user", SPOOFING[0], "--out", str(out)]) == 0
    page = Path(capsys.readouterr().out.strip().splitlines()[-1])
    for html in (page.read_text(), (out / "report.html").read_text()):
        assert "\u202e" not in html and "\u200b" not in html
    assert "admin<span" in page.read_text() and "\\u202e" in page.read_text()


# ---------------------------------------------------------------- detector agreement (23.3)


def test_rank_correlation_of_a_constant_detector_is_nan_not_a_crash() -> None:
    from reports import charts
    from reports.pages import rank_correlation

    rng = np.random.default_rng(0)
    scores = np.column_stack([rng.random(50), np.full(50, 0.5), rng.random(50)])
    matrix = rank_correlation(scores)
    assert matrix.shape == (3, 3)
    assert np.isnan(matrix[1]).all() and np.isnan(matrix[:, 1]).all()
    assert matrix[0, 0] == pytest.approx(1.0) and -1 <= matrix[0, 2] <= 1
    two = rank_correlation(scores[:, :2])  # two detectors: still a matrix (spearmanr: a scalar)
    assert two.shape == (2, 2)
    assert "n/a" in charts.detector_agreement(["a", "flat", "b"], matrix)


def test_a_constant_detector_does_not_stop_the_report(monkeypatch) -> None:
    from reports import pages
    from reports.data import Scores

    frame = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(20)],
            "score": np.linspace(0, 1, 20),
            "flagged": [False] * 19 + [True],
            "score_iforest": np.linspace(0, 1, 20),
            "score_flat": [0.3] * 20,
        }
    )
    monkeypatch.setattr(pages.d, "hourly_activity", lambda *_: ([], [], []))
    charts = pages._overview_charts(None, None, Scores(frame, 0.9), [])
    assert charts["agreement"] is not None and "n/a" in charts["agreement"]


# ---------------------------------------------------------------- wording and charts


def test_numbers_never_show_minus_zero_and_counts_agree_in_number() -> None:
    from reports.render import number, percent, plural, when

    assert number(-0.0001, 3) == "0.000" and number(-0.5, 1) == "-0.5"
    assert percent(-0.00001) == "0.0%"
    assert plural(1, "user") == "1 user" and plural(3, "query", "queries") == "3 queries"
    assert when("2026-11-01T10:02:03.123456") == "2026-11-01 10:02:03"


def test_charts_keep_text_as_text_with_an_alternative_and_unique_ids() -> None:
    from reports import charts

    rng = np.random.default_rng(1)
    svgs = [
        charts.projection(rng.normal(size=(3000, 2)), rng.normal(size=(2000, 2))),
        charts.bars(["a", "b"], [1, 2], xlabel="x", ylabel="queries"),
        charts.bars(["a", "b", "c"], [1, 2, 3], xlabel="x", ylabel="queries"),
    ]
    ids = [i for svg in svgs for i in re.findall(r'\bid="([^"]+)"', svg)]
    assert len(ids) == len(set(ids))
    for svg in svgs:
        assert 'role="img"' in svg and "<title>" in svg and "<text" in svg
    assert len(svgs[0]) < 120_000  # 5,000 points drawn as one raster layer, not 5,000 paths
    assert "<image" in svgs[0]


# ---------------------------------------------------------------- the Dagster UI's instance


@pytest.mark.parametrize("home_exists", [True, False], ids=["home", "missing-home"])
def test_a_cli_audit_is_recorded_in_the_dagster_home_instance(
    tmp_path: Path, monkeypatch, home_exists: bool
) -> None:
    """Also when ``$DAGSTER_HOME`` does not exist yet: it is created, not a failed audit."""
    from dagster import AssetKey, DagsterInstance

    home = tmp_path / "dagster_home"
    if home_exists:
        home.mkdir()
        (home / "dagster.yaml").write_text((Path(__file__).parents[1] / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    root = tmp_path / "logs"
    lines = [json.dumps(make_record("2026-11-01", i, user=f"u{i % 9}")) for i in range(200)]
    write_jsonl(root / "dt=2026-11-01" / "a.jsonl.gz", lines)
    assert main(["audit", "--logs", str(root), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    with DagsterInstance.get() as instance:
        assert instance.get_latest_materialization_event(AssetKey("report")) is not None
        assert instance.get_runs()  # the run the UI lists


def test_closing_summary_names_the_privacy_gates_verdicts(tmp_path):
    import datetime as dt

    import duckdb

    from audits import tables
    from audits.privacy_results import privacy_frame
    from reports.pages import closing_summary

    window = (dt.date(2026, 11, 1), dt.date(2026, 11, 2))
    database = str(tmp_path / "store.duckdb")
    assert "privacy" not in closing_summary(":memory:", window, tmp_path)
    result = {"passed": False, "verdicts": {"membership": "pass", "extraction": "fail"}}
    with duckdb.connect(database) as con:
        tables.create(con, tables.INCIDENTS)
        tables.replace_all(con, tables.PRIVACY_AUDIT, privacy_frame(result))
    line = closing_summary(database, window, tmp_path)
    assert "privacy gate FAILED (membership pass, extraction fail)" in line
    with duckdb.connect(database) as con:
        tables.replace_all(con, tables.PRIVACY_AUDIT, privacy_frame(None))
    assert "privacy" not in closing_summary(database, window, tmp_path)


def test_a_stale_privacy_result_is_never_read(tmp_path):
    """A run that skips the privacy audit shows none, whatever an earlier run left: neither its
    gate files in the output folder nor its row in the store are read as this run's."""
    import duckdb
    from dagster import materialize

    from assets.privacy import privacy_audit
    from assets.resources import AuditConfig, StoreResource
    from assets.risk import risk_register
    from audits import tables
    from audits.privacy_results import privacy_frame

    root, out = tmp_path / "logs", tmp_path / "out"
    lines = [json.dumps(make_record("2026-11-01", i, user=f"u{i % 9}")) for i in range(200)]
    write_jsonl(root / "dt=2026-11-01" / "a.jsonl.gz", lines)
    assert main(["audit", "--logs", str(root), "--out", str(out), "--quiet"]) == 0
    database = str(out / "stealwatch.duckdb")
    stale = {"passed": False, "membership_auc": 0.987, "membership_auc_attack": "loss"}
    (out / "privacy").mkdir(exist_ok=True)
    (out / "privacy" / "privacy_audit.json").write_text(json.dumps(stale))
    with duckdb.connect(database) as con:  # as an earlier run with a model left it
        tables.replace_all(con, tables.PRIVACY_AUDIT, privacy_frame({**stale, "verdicts": {}}))
    audit = AuditConfig(logs=str(root), out_dir=str(out), start="2026-11-01", end="2026-11-01")
    resources = {"duckdb": StoreResource(database=database), "audit": audit}
    assert materialize([privacy_audit, risk_register], resources=resources).success
    register = (out / "risk_register.csv").read_text()
    assert "privacy audit did not run" in register and "0.987" not in register
    with duckdb.connect(database, read_only=True) as con:
        assert tables.read_all(con, tables.PRIVACY_AUDIT).height == 0


def test_a_window_too_small_to_score_exports_no_earlier_scores(tmp_path):
    """Re-audited with too few users to score, the window's file holds no earlier run's rows."""
    out = tmp_path / "out"
    for users, folder in ((9, "many"), (2, "few")):
        root = tmp_path / folder
        lines = [json.dumps(make_record("2026-11-01", i, user=f"u{i % users}")) for i in range(90)]
        write_jsonl(root / "dt=2026-11-01" / "a.jsonl.gz", lines)
        args = ["audit", "--logs", str(root), "--out", str(out), "--quiet", "--replace"]
        assert main(args) == 0
        scores = pl.read_parquet(out / "user_scores.parquet")
        assert scores.height == (9 if users == 9 else 0)


def test_svg_chart_labels_are_escaped() -> None:
    from reports import charts

    svg = charts.bars(["<script>", "\"&'"], [1, 2], xlabel="<b>day</b>", ylabel="queries")
    assert "<script>" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg and "&amp;" in svg and "&lt;b&gt;" in svg
