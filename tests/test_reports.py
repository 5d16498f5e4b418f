"""Pages: hostile log strings escaped, self-contained, byte-identical reruns, investigate CLI."""

import json
import re
from pathlib import Path

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
