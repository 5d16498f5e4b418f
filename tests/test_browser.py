"""The demo report in headless Chromium: it renders, a screenshot is taken, the console is clean.

Chromium is installed (Debian's package) when missing, as CI machines start without it.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.browser
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]
CONSOLE = re.compile(r":CONSOLE[:(]")


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"])
    for step in steps:
        done = subprocess.run(
            step,
            capture_output=True,
            text=True,
            timeout=900,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        )
        assert done.returncode == 0, f"could not install chromium: {done.stderr[-500:]}"
    found = shutil.which("chromium")
    assert found, "chromium is not on PATH after installing it"
    return found


def screenshot(chromium: str, page: Path, png: Path, height: int = 2400) -> list[str]:
    """Render ``page``; returns the console messages Chromium logged."""
    done = subprocess.run(
        [chromium, *FLAGS, f"--window-size=1280,{height}", f"--screenshot={png}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert png.exists() and png.stat().st_size > 1_000, done.stderr[-1000:]
    return [line for line in done.stderr.splitlines() if CONSOLE.search(line)]


def test_the_console_check_can_fail(chromium: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><body><script>console.error('boom')</script>" + "x" * 100 + "</body></html>"
    )
    assert any("boom" in line for line in screenshot(chromium, bad, tmp_path / "bad.png", 400))


@pytest.fixture(scope="module")
def demo_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audits.simulation import simulate

    root = tmp_path_factory.mktemp("demo")
    simulate(root / "archive", seed=5, days=2, users=80, faults=True)
    out = root / "audit"
    args = [
        "audit",
        "--logs",
        str(root / "archive" / "logs"),
        "--model",
        str(root / "archive" / "model.skops"),
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    return out


def test_demo_pages_render_without_console_errors(
    chromium: str, demo_audit: Path, tmp_path: Path
) -> None:
    pages = [demo_audit / "report.html", *sorted((demo_audit / "incidents").glob("*.html"))[:3]]
    for page in pages:
        png = tmp_path / f"{page.stem}.png"
        assert screenshot(chromium, page, png) == [], page


def test_every_flagged_user_has_an_incident_page(demo_audit: Path) -> None:
    import duckdb
    import polars as pl

    from reports.pages import page_name

    flagged = set(
        pl.read_parquet(demo_audit / "user_scores.parquet").filter(pl.col("flagged"))["user_id"]
    )
    assert flagged, "the demo archive has attackers: some must be flagged"
    con = duckdb.connect(str(demo_audit / "stealwatch.duckdb"), read_only=True)
    covered = set()
    for incident_id, members in con.sql("SELECT incident_id, members FROM incidents").fetchall():
        assert (demo_audit / "incidents" / page_name(incident_id)).exists()
        covered |= set(members)
    assert flagged <= covered
